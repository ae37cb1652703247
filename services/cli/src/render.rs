//! Tables and progress lines for the terminal.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::Value;

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    t
}

fn items(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

pub fn pools(v: &Value) {
    let mut t = table(&["pool", "region", "workers online", "default", "description"]);
    for p in items(v) {
        t.add_row(vec![
            s(&p["name"]),
            s(&p["region"]),
            s(&p["workers_online"]),
            if p["is_default"] == true {
                "yes".into()
            } else {
                String::new()
            },
            s(&p["description"]),
        ]);
    }
    println!("{t}");
}

pub fn targets(v: &Value) {
    let mut t = table(&[
        "target",
        "kind",
        "environment",
        "roles",
        "default pool",
        "endpoint",
        "health",
        "checked",
    ]);
    for x in items(v) {
        let roles: Vec<String> = items(&x["roles"]).map(s).collect();
        t.add_row(vec![
            s(&x["name"]),
            s(&x["kind"]),
            s(&x["environment"]),
            roles.join(","),
            s(&x["default_pool"]),
            s(&x["endpoint"]),
            s(&x["health"]["state"]),
            s(&x["health"]["checked_at"]),
        ]);
    }
    println!("{t}");
}

pub fn target(x: &Value) {
    let roles: Vec<String> = items(&x["roles"]).map(s).collect();
    for (k, v) in [
        ("target", s(&x["name"])),
        ("kind", s(&x["kind"])),
        ("environment", s(&x["environment"])),
        ("roles", roles.join(", ")),
        ("endpoint", s(&x["endpoint"])),
        ("default pool", s(&x["default_pool"])),
        ("registered", s(&x["registered_at"])),
        ("updated", s(&x["updated_at"])),
        ("probe", compact(&x["probe"])),
        ("health", s(&x["health"]["state"])),
        ("reason", s(&x["health"]["reason"])),
        ("checked", s(&x["health"]["checked_at"])),
        (
            "checked by",
            format!(
                "{} in pool {} ({})",
                s(&x["health"]["worker"]),
                s(&x["health"]["pool"]),
                s(&x["health"]["rule"])
            ),
        ),
    ] {
        println!("{k:<13} {v}");
    }
}

/// A target's health history, oldest first.
pub fn health(v: &Value) {
    let mut t = table(&["checked", "state", "worker", "pool", "rule", "ms", "reason"]);
    for h in items(&v["history"]) {
        t.add_row(vec![
            s(&h["checked_at"]),
            s(&h["state"]),
            s(&h["worker"]),
            s(&h["pool"]),
            s(&h["rule"]),
            s(&h["duration_ms"]),
            s(&h["reason"]),
        ]);
    }
    println!("{t}");
    println!("{}: {}", s(&v["target"]), s(&v["state"]));
}

fn compact(v: &Value) -> String {
    if v.is_null() {
        "-".to_owned()
    } else {
        v.to_string()
    }
}

pub fn workers(v: &Value) {
    let mut t = table(&[
        "worker",
        "pool",
        "region",
        "status",
        "health",
        "busy/slots",
        "free disk MiB",
        "last seen",
    ]);
    for w in items(v) {
        let warnings: Vec<String> = items(&w["warnings"]).map(s).collect();
        let health = if warnings.is_empty() {
            s(&w["health"])
        } else {
            format!("{}: {}", s(&w["health"]), warnings.join("; "))
        };
        t.add_row(vec![
            s(&w["name"]),
            s(&w["pool"]),
            s(&w["region"]),
            s(&w["status"]),
            health,
            format!("{}/{}", s(&w["busy_slots"]), s(&w["slots"])),
            s(&w["free_disk_mb"]),
            s(&w["last_seen"]),
        ]);
    }
    println!("{t}");
}

pub fn deployments(v: &Value) {
    let mut t = table(&[
        "deployment",
        "project",
        "environment",
        "state",
        "steps",
        "created",
    ]);
    for d in items(v) {
        let steps: Vec<String> = items(&d["steps"])
            .map(|st| format!("{}:{}", s(&st["name"]), s(&st["state"])))
            .collect();
        t.add_row(vec![
            s(&d["id"]),
            s(&d["project"]),
            s(&d["environment"]),
            s(&d["state"]),
            steps.join(" "),
            s(&d["created_at"]),
        ]);
    }
    println!("{t}");
}

/// One line: the deployment's state and each step's.
pub fn progress(d: &Value) -> String {
    let steps: Vec<String> = items(&d["steps"])
        .map(|st| {
            let tasks: Vec<&Value> = items(&st["tasks"]).collect();
            let done = tasks.iter().filter(|t| t["state"] == "succeeded").count();
            format!(
                "{} {} ({done}/{})",
                s(&st["name"]),
                s(&st["state"]),
                tasks.len()
            )
        })
        .collect();
    format!("[{}] {}", s(&d["state"]), steps.join(" → "))
}

/// The task table of a deployment: where every task ran and why.
pub fn task_table(d: &Value) -> Table {
    let mut t = table(&[
        "step", "task", "target", "pool", "rule", "worker", "state", "exit", "note",
    ]);
    for st in items(&d["steps"]) {
        for x in items(&st["tasks"]) {
            let id = s(&x["id"]);
            let note = if x["waiting"].is_null() {
                s(&x["reason"])
            } else {
                s(&x["waiting"])
            };
            t.add_row(vec![
                s(&st["name"]),
                id.chars()
                    .rev()
                    .take(8)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect(),
                s(&x["target"]),
                s(&x["pool"]),
                s(&x["pool_rule"]),
                s(&x["worker"]),
                s(&x["state"]),
                s(&x["exit_code"]),
                if note == "-" { String::new() } else { note },
            ]);
        }
    }
    t
}

pub fn deployment(d: &Value) {
    println!(
        "deployment {}  project {}  environment {}",
        s(&d["id"]),
        s(&d["project"]),
        s(&d["environment"])
    );
    println!("state: {}", s(&d["state"]));
    if !d["reason"].is_null() {
        println!("reason: {}", s(&d["reason"]));
    }
    println!("{}", task_table(d));
}

pub fn events(v: &Value) {
    for e in items(v) {
        println!(
            "{:>6}  {}  {:<18}  {}  {}",
            s(&e["seq"]),
            s(&e["time"]),
            s(&e["type"]),
            s(&e["stream"]),
            e["data"]
        );
    }
}
