//! Tables and progress lines for the terminal, from the API's answers.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;
use serde_json::Value;
use shoal_shared::TaskState;
use shoal_shared::api::{
    DeploymentDetail, DeploymentSummary, EventView, HealthHistory, HealthRecordView, PoolView,
    TargetView, WorkerView,
};

/// A field as the API spells it (names, states, times), `-` for none.
pub fn s<T: Serialize + ?Sized>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::Null) | Err(_) => "-".to_owned(),
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
    }
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    t
}

fn joined<T: Serialize>(items: &[T], sep: &str) -> String {
    items.iter().map(s).collect::<Vec<_>>().join(sep)
}

pub fn pools(v: &[PoolView]) {
    let mut t = table(&["pool", "region", "workers online", "default", "description"]);
    for p in v {
        t.add_row(vec![
            s(&p.name),
            s(&p.region),
            s(&p.workers_online),
            if p.is_default {
                "yes".into()
            } else {
                String::new()
            },
            s(&p.description),
        ]);
    }
    println!("{t}");
}

pub fn targets(v: &[TargetView]) {
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
    for x in v {
        t.add_row(vec![
            s(&x.target.name),
            s(&x.target.kind),
            s(&x.target.environment),
            joined(&x.target.roles, ","),
            s(&x.target.default_pool),
            s(&x.target.endpoint),
            s(&x.health.state),
            s(&x.health.checked_at),
        ]);
    }
    println!("{t}");
}

pub fn target(x: &TargetView) {
    let h = &x.health;
    for (k, v) in [
        ("target", s(&x.target.name)),
        ("kind", s(&x.target.kind)),
        ("environment", s(&x.target.environment)),
        ("roles", joined(&x.target.roles, ", ")),
        ("endpoint", s(&x.target.endpoint)),
        ("default pool", s(&x.target.default_pool)),
        ("registered", s(&x.registered_at)),
        ("updated", s(&x.updated_at)),
        ("probe", compact(&x.probe)),
        ("health", s(&h.state)),
        ("reason", s(&h.reason)),
        ("checked", s(&h.checked_at)),
        (
            "checked by",
            format!("{} in pool {} ({})", s(&h.worker), s(&h.pool), s(&h.rule)),
        ),
    ] {
        println!("{k:<13} {v}");
    }
}

/// A target's health history, oldest first.
pub fn health(v: &HealthHistory) {
    let mut t = table(&["checked", "state", "worker", "pool", "rule", "ms", "reason"]);
    for h in &v.history {
        t.add_row(vec![
            s(&h.checked_at),
            s(&h.state),
            s(&h.worker),
            s(&h.pool),
            s(&h.rule),
            s(&h.duration_ms),
            s(&h.reason),
        ]);
    }
    println!("{t}");
    println!("{}: {}", s(&v.target), s(&v.state));
}

/// The result of one check of target `name`, as `target check --wait` prints it: who ran
/// it, or, when no worker did, what happened instead (the planner's reason names the pool
/// and the deadline).
pub fn check_result(name: &str, r: &HealthRecordView) -> String {
    let reason = r.reason.as_deref();
    match (&r.worker, r.duration_ms) {
        (Some(worker), ms) => format!(
            "{name}: {}{} (worker {worker}, pool {}{})",
            s(&r.state),
            reason.map_or(String::new(), |why| format!(": {why}")),
            r.pool,
            ms.map_or(String::new(), |ms| format!(", {ms} ms"))
        ),
        (None, _) => format!(
            "{name}: {}: {}",
            s(&r.state),
            reason.map_or_else(
                || format!("no worker of pool {} ran the check", r.pool),
                str::to_owned
            )
        ),
    }
}

/// A value as one line of JSON, `-` for none.
fn compact<T: Serialize>(v: &Option<T>) -> String {
    match serde_json::to_value(v) {
        Ok(Value::Null) | Err(_) => "-".to_owned(),
        Ok(v) => v.to_string(),
    }
}

pub fn workers(v: &[WorkerView]) {
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
    for w in v {
        let health = if w.warnings.is_empty() {
            s(&w.health)
        } else {
            format!("{}: {}", s(&w.health), w.warnings.join("; "))
        };
        t.add_row(vec![
            s(&w.name),
            s(&w.pool),
            s(&w.region),
            s(&w.status),
            health,
            format!("{}/{}", w.busy_slots, w.slots),
            s(&w.free_disk_mb),
            s(&w.last_seen),
        ]);
    }
    println!("{t}");
}

pub fn deployments(v: &[DeploymentSummary]) {
    let mut t = table(&[
        "deployment",
        "project",
        "environment",
        "state",
        "steps",
        "created",
    ]);
    for d in v {
        let steps: Vec<String> = d
            .steps
            .iter()
            .map(|st| format!("{}:{}", st.name, s(&st.state)))
            .collect();
        t.add_row(vec![
            s(&d.id),
            d.project.clone(),
            s(&d.environment),
            s(&d.state),
            steps.join(" "),
            s(&d.created_at),
        ]);
    }
    println!("{t}");
}

/// One line: the deployment's state and each step's.
pub fn progress(d: &DeploymentDetail) -> String {
    let steps: Vec<String> = d
        .steps
        .iter()
        .map(|st| {
            let done = st
                .tasks
                .iter()
                .filter(|t| t.state == TaskState::Succeeded)
                .count();
            format!("{} {} ({done}/{})", st.name, s(&st.state), st.tasks.len())
        })
        .collect();
    format!("[{}] {}", s(&d.state), steps.join(" → "))
}

/// The task table of a deployment: where every task ran and why.
pub fn task_table(d: &DeploymentDetail) -> Table {
    let mut t = table(&[
        "step", "task", "target", "pool", "rule", "worker", "state", "exit", "note",
    ]);
    for st in &d.steps {
        for x in &st.tasks {
            let id = x.id.to_string();
            let note = x.waiting.as_ref().or(x.reason.as_ref());
            t.add_row(vec![
                st.name.clone(),
                id.get(id.len().saturating_sub(8)..)
                    .unwrap_or_default()
                    .to_owned(),
                s(&x.target),
                s(&x.pool),
                s(&x.pool_rule),
                s(&x.worker),
                s(&x.state),
                s(&x.exit_code),
                // A note that is just "-" is as good as none.
                note.filter(|n| *n != "-").cloned().unwrap_or_default(),
            ]);
        }
    }
    t
}

pub fn deployment(d: &DeploymentDetail) {
    println!(
        "deployment {}  project {}  environment {}",
        s(&d.id),
        d.project,
        s(&d.environment)
    );
    println!("state: {}", s(&d.state));
    if let Some(reason) = &d.reason {
        println!("reason: {reason}");
    }
    println!("{}", task_table(d));
}

pub fn events(v: &[EventView]) {
    for e in v {
        println!(
            "{:>6}  {}  {:<18}  {}  {}",
            e.seq,
            s(&e.time),
            e.event_type,
            e.stream,
            e.data
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_shared::{CheckId, HealthState, PoolName, Timestamp, WorkerName};

    fn record(worker: Option<&str>, state: HealthState, reason: Option<&str>) -> HealthRecordView {
        HealthRecordView {
            check: CheckId::new(),
            state,
            reason: reason.map(str::to_owned),
            checked_at: Timestamp(1),
            worker: worker.map(|w| WorkerName::parse(w).expect("valid")),
            pool: PoolName::parse("ap-south").expect("valid"),
            rule: None,
            duration_ms: worker.map(|_| 12),
            task: None,
        }
    }

    #[test]
    fn a_check_no_worker_ran_says_what_happened_instead_of_empty_fields() {
        let why = "no worker of pool \"ap-south\" ran the check within 30 s; is a worker of the pool online?";
        let line = check_result("shop", &record(None, HealthState::Unavailable, Some(why)));
        assert_eq!(line, format!("shop: unavailable: {why}"));
        assert!(
            !line.contains("null") && !line.contains("worker -"),
            "{line}"
        );
        let bare = check_result("shop", &record(None, HealthState::Unavailable, None));
        assert_eq!(
            bare,
            "shop: unavailable: no worker of pool ap-south ran the check"
        );
    }

    #[test]
    fn a_check_a_worker_ran_names_the_worker_pool_and_duration() {
        let line = check_result("shop", &record(Some("w1"), HealthState::Healthy, None));
        assert_eq!(line, "shop: healthy (worker w1, pool ap-south, 12 ms)");
    }
}
