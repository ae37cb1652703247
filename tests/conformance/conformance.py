#!/usr/bin/env python3
"""A client of shoal written from docs/WIRE.md alone (nats-py, msgpack, PyNaCl, jsonschema).

It follows the event feed from its first record as an integrator, checks every record
against docs/schemas, disconnects midway and resumes with no gap and no repeat, then runs
one task as a foreign worker: takes it from its pool's queue, verifies the planner's
signature, and reports it started and finished in MessagePack.

    python3 tests/conformance/conformance.py CONFIG.json

CONFIG (written by tests/tests/conformance.rs, which starts the installation):
    {"nats_url", "schemas", "head": <log sequence to follow to>, "planner_key": <.pub file>,
     "integrator": {"nkey", "ca", "cert", "key", "inbox_prefix", "consumer"},
     "worker": {"nkey", "ca", "cert", "key", "inbox_prefix", "pool", "name"}}
Exits 0 when everything holds; otherwise prints what did not and exits 1.
"""
import asyncio
import base64
import hashlib
import json
import pathlib
import ssl
import sys
import time
import uuid

import jsonschema
import msgpack
import nacl.signing
import nats


# Whether a frame of more than one record was read.
MULTI = [False]


def fail(why):
    print(f"CONFORMANCE FAILED: {why}", flush=True)
    sys.exit(1)


async def connect(url, ident):
    ctx = ssl.create_default_context(cafile=ident["ca"])
    ctx.load_cert_chain(ident["cert"], ident["key"])
    return await nats.connect(
        servers=[url],
        tls=ctx,
        nkeys_seed=ident["nkey"],
        inbox_prefix=ident["inbox_prefix"],
        allow_reconnect=False,
        connect_timeout=5,
    )


class Schemas:
    def __init__(self, root):
        root = pathlib.Path(root)
        self.record = jsonschema.Draft202012Validator(json.loads((root / "event-record.json").read_text()))
        self.data = {
            p.stem: jsonschema.Draft202012Validator(json.loads(p.read_text()))
            for p in (root / "events").glob("*.json")
        }

    def check(self, record):
        self.record.validate(record)
        kind = record["type"]
        if kind not in self.data:
            raise jsonschema.ValidationError(f"no schema for event type {kind}")
        self.data[kind].validate(record["data"])


async def read_feed(cfg, schemas, upto, stop_after=None, expect_first=1):
    """Reads the feed through the integrator's consumer from where it stands: the records'
    sequences, each checked; stops at `upto` or once `stop_after` records came. A message
    is a frame: consecutive records of one subject as JSON lines, Shoal-Seq and
    Shoal-Seq-Last naming the first and the last."""
    ident = cfg["integrator"]
    nc = await connect(cfg["nats_url"], ident)
    js = nc.jetstream()
    inbox = (ident["inbox_prefix"] + ".").encode()
    sub = await js.pull_subscribe_bind(durable=ident["consumer"], stream="SHOAL_EVENTS", inbox_prefix=inbox)
    seen = []
    last_frame = 0
    deadline = time.monotonic() + 60
    while (not seen or seen[-1] < upto) and (stop_after is None or len(seen) < stop_after):
        if time.monotonic() > deadline:
            fail(f"the feed stopped at {seen[-1] if seen else 'nothing'}, want {upto}")
        # Frames hold one record or more: to stop midway, take one at a time.
        want = 100 if stop_after is None else 1
        try:
            msgs = await sub.fetch(want, timeout=2)
        except nats.errors.TimeoutError:
            continue
        for m in msgs:
            stream_seq = m.metadata.sequence.stream
            if stream_seq <= last_frame:
                fail(f"frame {stream_seq} came after frame {last_frame}")
            last_frame = stream_seq
            first = int(m.headers["Shoal-Seq"])
            last = int(m.headers.get("Shoal-Seq-Last", first))
            records = [json.loads(line) for line in m.data.split(b"\n")]
            if [r["seq"] for r in records] != list(range(first, last + 1)):
                fail(f"frame {stream_seq} says records {first}..{last}, holds {[r['seq'] for r in records]}")
            if len(records) > 1:
                MULTI[0] = True
            for record in records:
                seq = record["seq"]
                if m.headers.get("Shoal-Event-Type") != record["type"]:
                    fail(f"record {seq}: its frame's headers and its body disagree")
                stream = record["stream"]
                kind, _, ident_ = stream.partition("/")
                subject = f"shoal.events.{kind}.{ident_ or '_'}.{record['type']}"
                if m.subject != subject:
                    fail(f"record {seq} came on {m.subject}, want {subject}")
                try:
                    schemas.check(record)
                except jsonschema.ValidationError as e:
                    fail(f"record {seq} ({record['type']}) does not match its schema: {e.message}")
                seen.append(seq)
            await m.ack_sync()
    await nc.close()
    if not seen:
        fail("the feed gave nothing")
    if seen[0] != expect_first:
        fail(f"the feed started at {seen[0]}, want {expect_first}")
    if seen != list(range(seen[0], seen[0] + len(seen))):
        fail(f"a gap or a repeat in {seen}")
    return seen


def b64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sha256(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.digest()


def verify(header, payload, kind, ident, pool, attempt, planner_key):
    """The planner's signature on a message, as WIRE.md "Signatures" says."""
    alg, key_id, key_hex = planner_key.split()
    fields = header.split(";")
    if fields[0] != "v2" or len(fields) != 8:
        fail(f"not a v2 signature: {header}")
    values = {}
    for name, field in zip("kieoaps", fields[1:]):
        if not field.startswith(name + "="):
            fail(f"signature field {name} missing in {header}")
        values[name] = field[2:]
    if b64url(values["k"]).hex() != key_id:
        fail("signed by another key than the planner's")
    if values["o"] != pool or values["a"] != str(attempt):
        fail(f"signed for pool {values['o']} attempt {values['a']}")
    now = int(time.time() * 1000)
    if not int(values["i"]) <= now + 120_000 or now > int(values["e"]):
        fail("the signature is not current")
    claims = (
        f"shoal-signature-v2;key={key_id};iat={values['i']};exp={values['e']};"
        f"kind={kind};pool={values['o']};id={ident};attempt={values['a']}"
    )
    node = sha256(b"\x00", claims.encode(), b"\n", sha256(payload))
    if values["p"]:
        path = b64url(values["p"])
        directions, hashes = path[0], path[1:]
        for level in range(len(hashes) // 32):
            sibling = hashes[32 * level: 32 * level + 32]
            node = sha256(b"\x01", sibling, node) if directions & (1 << level) else sha256(b"\x01", node, sibling)
    key = nacl.signing.VerifyKey(bytes.fromhex(key_hex))
    try:
        key.verify(b"shoal-signature-v2 root\n" + node, b64url(values["s"]))
    except nacl.exceptions.BadSignatureError:
        fail("the task's signature does not verify")


async def report(js, subject, worker, pool, body):
    msg = {
        "schema_version": 1,
        "event_id": uuid.uuid4().bytes,
        "worker": worker,
        "pool": pool,
        "sent_at": int(time.time() * 1000),
        "body": body,
    }
    data = msgpack.packb(msg, use_bin_type=True)
    ack = await js.publish(subject, data, headers={"Nats-Msg-Id": str(uuid.UUID(bytes=msg["event_id"]))})
    if ack.stream != "SHOAL_RESULTS":
        fail(f"a report was stored in {ack.stream}")


async def run_one_task(cfg):
    w = cfg["worker"]
    nc = await connect(cfg["nats_url"], w)
    js = nc.jetstream()
    inbox = (w["inbox_prefix"] + ".").encode()
    sub = await js.pull_subscribe_bind(durable=w["pool"], stream="SHOAL_TASKS", inbox_prefix=inbox)
    deadline = time.monotonic() + 60
    while True:
        if time.monotonic() > deadline:
            fail("no task came on the pool's queue")
        try:
            msgs = await sub.fetch(1, timeout=2)
            break
        except nats.errors.TimeoutError:
            continue
    m = msgs[0]
    task = msgpack.unpackb(m.data, raw=False)
    if task["schema_version"] != 1 or task["pool"] != w["pool"]:
        fail(f"a task of schema {task['schema_version']} for pool {task['pool']}")
    if len(task["task"]) != 16 or len(task["deployment"]) != 16:
        fail("ids are not 16-byte binaries")
    if task["action"] != {"type": "noop"}:
        fail(f"the action is {task['action']}, want a noop")
    task_id = str(uuid.UUID(bytes=task["task"]))
    planner_key = pathlib.Path(cfg["planner_key"]).read_text().strip()
    verify(m.headers["Shoal-Signature"], m.data, "task", task_id, w["pool"], task["attempt"], planner_key)
    subject = f"shoal.results.{w['pool']}.{w['name']}"
    ids = {"deployment": task["deployment"], "task": task["task"], "attempt": task["attempt"],
           "delivery": m.metadata.num_delivered}
    await report(js, subject, w["name"], w["pool"], {"TaskStarted": ids})
    await report(js, subject, w["name"], w["pool"], {"TaskFinished": {
        **ids, "outcome": "succeeded", "exit_code": 0, "reason": None}})
    await m.ack_sync()
    await nc.close()
    return task_id


async def main():
    cfg = json.loads(pathlib.Path(sys.argv[1]).read_text())
    schemas = Schemas(cfg["schemas"])
    head = cfg["head"]
    first = await read_feed(cfg, schemas, head, stop_after=max(1, head // 2))
    print(f"feed: records {first[0]}..{first[-1]}, then a disconnect", flush=True)
    rest = await read_feed(cfg, schemas, head, expect_first=first[-1] + 1)
    print(f"feed: resumed at {rest[0]}, records up to {rest[-1]}: no gap, no repeat", flush=True)
    print(f"feed: frames of more than one record: {'yes' if MULTI[0] else 'no'}", flush=True)
    task = await run_one_task(cfg)
    print(f"worker: ran task {task}, signature verified, reported started and finished", flush=True)
    print("CONFORMANCE OK", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
