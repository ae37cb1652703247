#!/usr/bin/env python3
"""Writes the JSON Schemas of the event feed from the Rust source of the events.

docs/schemas/event-record.json: a record as the feed, GET /api/events, SSE and webhooks
carry it. docs/schemas/events/<Type>.json: the `data` of each event type: its fields,
which are always present (every field but those the encoder skips when empty), and their
JSON types; nested structures are objects (docs/WIRE.md says what they hold).

    python3 docs/schemas/generate.py          # writes the files
    python3 docs/schemas/generate.py --check  # exits 1 when a file is not what it writes
"""
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
EVENTS = ROOT / "shared" / "src" / "events.rs"
OUT = ROOT / "docs" / "schemas"

UUID = {"type": "string", "format": "uuid"}
TIME = {"type": "string", "format": "date-time"}
NAME = {"type": "string", "pattern": "^[a-z0-9_-]{1,63}$"}
INT = {"type": "integer", "minimum": 0}


def enum(*values):
    return {"type": "string", "enum": list(values)}


TYPES = {
    "u16": INT, "u32": INT, "u64": INT, "i32": {"type": "integer"},
    "bool": {"type": "boolean"},
    "String": {"type": "string"},
    "Timestamp": TIME,
    "DeploymentId": UUID, "TaskId": UUID, "CheckId": UUID, "EventId": UUID,
    "PoolName": NAME, "WorkerName": NAME, "TargetName": NAME, "TokenName": NAME,
    "PackageId": NAME, "RegionName": NAME,
    "semver::Version": {"type": "string"},
    "crate::package::Sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    "crate::secret::PoolKey": {"type": "string", "pattern": "^X[A-Z2-7]{55}$"},
    "crate::secret::Sealed": {"const": "********"},
    "PoolRule": enum("step", "target_default", "global_default"),
    "Outcome": enum("succeeded", "failed", "timed_out", "cancelled"),
    "HealthState": enum("unknown", "healthy", "healthy_with_warnings", "unhealthy", "unavailable"),
    "DeploymentState": enum("queued", "running", "cancelling", "succeeded", "failed", "cancelled"),
    "StepState": enum("pending", "running", "succeeded", "failed", "skipped", "cancelled"),
    "CheckTrigger": enum("scheduled", "on_demand"),
    "Role": enum("viewer", "deployer", "admin"),
    "Actor": {"type": "string", "pattern": "^(planner|(token|worker|integrator):[a-z0-9_-]{1,63})$"},
    "OutputLine": {
        "type": "object",
        "required": ["stream", "at", "line"],
        "properties": {"stream": enum("stdout", "stderr"), "at": TIME, "line": {"type": "string"}},
    },
    "IdempotencyKey": {
        "type": "object",
        "required": ["key", "request"],
        "properties": {"key": {"type": "string"}, "request": {"type": "string"}},
    },
}


def json_type(rust):
    rust = rust.strip().rstrip(",")
    m = re.fullmatch(r"Option<(.*)>", rust)
    if m:
        inner = json_type(m.group(1))
        return {"anyOf": [inner, {"type": "null"}]}
    m = re.fullmatch(r"Vec<(.*)>", rust)
    if m:
        if m.group(1) == "u8":  # bytes: an array of numbers in JSON
            return {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}}
        return {"type": "array", "items": json_type(m.group(1))}
    if rust in TYPES:
        return TYPES[rust]
    # Structures and enums with data (Target, DeploymentSpec, Manifest, HealthCheck, …).
    return {"type": "object"}


def variants(text):
    """(name, [(field, rust type, always present)]) of each variant of `pub enum Event`."""
    body = text[text.index("pub enum Event {"):]
    body = body[: body.index("\n}\n")]
    out, current, skip = [], None, False
    for line in body.splitlines()[1:]:
        s = line.strip()
        if not s or s.startswith("///") or s.startswith("//"):
            continue
        m = re.fullmatch(r"([A-Z][A-Za-z]*) \{ ?(.*?)\s?\}?,?", s)
        if m and line.startswith("    ") and not line.startswith("        "):
            current = (m.group(1), [])
            out.append(current)
            inline = m.group(2).strip().rstrip("}").strip()
            if inline:
                for f in inline.split(","):
                    if ":" in f:
                        name, ty = f.split(":", 1)
                        current[1].append((name.strip(), ty.strip(), True))
            continue
        if s.startswith("#[serde("):
            skip = skip or "skip_serializing_if" in s
            continue
        m = re.fullmatch(r"([a-z0-9_]+): (.+),", s)
        if m and current is not None:
            current[1].append((m.group(1), m.group(2), not skip))
            skip = False
    return out


def schema_of(name, fields):
    props, required = {}, []
    for field, rust, always in fields:
        # A token's hash stays in the log but is never shown.
        if name.startswith("Token") and field == "hash":
            continue
        props[field] = json_type(rust)
        if always:
            required.append(field)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://shoal.invalid/schemas/events/{name}.json",
        "title": f"{name}: the data of the event",
        "type": "object",
        "required": required,
        "properties": props,
        "additionalProperties": False,
    }


RECORD = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://shoal.invalid/schemas/event-record.json",
    "title": "A record of the log as the feed, GET /api/events, SSE and webhooks carry it",
    "type": "object",
    "required": ["seq", "event_id", "time", "stream", "type", "schema_version",
                 "correlation_id", "causation_id", "data", "prev_hash", "actor"],
    "properties": {
        "seq": {"type": "integer", "minimum": 1},
        "event_id": UUID,
        "time": TIME,
        "stream": {"type": "string", "pattern": "^[a-z]+(/[A-Za-z0-9_.-]+)?$"},
        "type": {"type": "string"},
        "schema_version": {"type": "integer", "minimum": 1},
        "correlation_id": {"anyOf": [UUID, {"type": "null"}]},
        "causation_id": {"anyOf": [UUID, {"type": "null"}]},
        "data": {"type": "object"},
        "prev_hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "actor": {"anyOf": [TYPES["Actor"], {"type": "null"}]},
    },
    "additionalProperties": False,
}


def files():
    text = EVENTS.read_text()
    out = {OUT / "event-record.json": RECORD}
    for name, fields in variants(text):
        out[OUT / "events" / f"{name}.json"] = schema_of(name, fields)
    return out


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for path, schema in files().items():
        text = json.dumps(schema, indent=2, sort_keys=True) + "\n"
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print("schemas out of date (run python3 docs/schemas/generate.py):", *stale, sep="\n  ")
        sys.exit(1)


if __name__ == "__main__":
    main()
