//! Tables and progress lines for the terminal, from the API's answers. State words are
//! coloured only when [`shoal_cli::colour::stdout`] says so.

use comfy_table::{Cell, Color, Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;
use serde_json::Value;
use shoal_cli::colour::{self, Tone};
use shoal_cli::ids;
use shoal_shared::api::{
    DeploymentDetail, DeploymentSummary, EventView, HealthHistory, HealthRecordView, PoolView,
    TargetView, WorkerView,
};
use shoal_shared::{OutputStream, TaskState};

/// A field as the API spells it (names, states, times), `-` for none.
pub fn s<T: Serialize + ?Sized>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::Null) | Err(_) => "-".to_owned(),
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
    }
}

/// A line of a task's output as `shoal logs` prints it: `attempt.run`, `!` for stderr.
pub fn log_line(attempt: u32, run: u32, stream: OutputStream, line: &str) -> String {
    // attempt.run: a run above 1 is a redelivery after a worker was lost.
    match stream {
        OutputStream::Stderr => format!("{attempt}.{run} ! {line}"),
        OutputStream::Stdout => format!("{attempt}.{run}   {line}"),
    }
}

fn table(header: &[&str]) -> Table {
    table_coloured(header, colour::stdout())
}

/// A table that styles its cells when `on`, and never otherwise (comfy-table alone would
/// style on any terminal, `NO_COLOR` or not).
fn table_coloured(header: &[&str], on: bool) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    if on {
        t.enforce_styling();
    } else {
        t.force_no_tty();
    }
    t
}

/// A state as the API spells it, in the colour of its tone (the table decides whether
/// colours show).
fn state<T: Serialize + ?Sized>(v: &T) -> Cell {
    let text = s(v);
    let cell = Cell::new(&text);
    match colour::tone(&text) {
        Some(Tone::Good) => cell.fg(Color::Green),
        Some(Tone::Bad) => cell.fg(Color::Red),
        Some(Tone::Busy) => cell.fg(Color::Yellow),
        Some(Tone::Quiet) => cell.fg(Color::DarkGrey),
        None => cell,
    }
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
            Cell::new(s(&x.target.name)),
            Cell::new(s(&x.target.kind)),
            Cell::new(s(&x.target.environment)),
            Cell::new(joined(&x.target.roles, ",")),
            Cell::new(s(&x.target.default_pool)),
            Cell::new(s(&x.target.endpoint)),
            state(&x.health.state),
            Cell::new(s(&x.health.checked_at)),
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
            Cell::new(s(&h.checked_at)),
            state(&h.state),
            Cell::new(s(&h.worker)),
            Cell::new(s(&h.pool)),
            Cell::new(s(&h.rule)),
            Cell::new(s(&h.duration_ms)),
            Cell::new(s(&h.reason)),
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
        // Why it is not ready first: it is what keeps the worker from taking tasks.
        let why: Vec<&str> = w
            .not_ready_reason
            .iter()
            .chain(&w.warnings)
            .map(String::as_str)
            .collect();
        let health = if why.is_empty() {
            state(&w.health)
        } else {
            Cell::new(format!("{}: {}", s(&w.health), why.join("; ")))
        };
        t.add_row(vec![
            Cell::new(s(&w.name)),
            Cell::new(s(&w.pool)),
            Cell::new(s(&w.region)),
            state(&w.status),
            health,
            Cell::new(format!("{}/{}", w.busy_slots, w.slots)),
            Cell::new(s(&w.free_disk_mb)),
            Cell::new(s(&w.last_seen)),
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
            Cell::new(s(&d.id)),
            Cell::new(&d.project),
            Cell::new(s(&d.environment)),
            state(&d.state),
            Cell::new(steps.join(" ")),
            Cell::new(s(&d.created_at)),
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
    // The shortest prefix that tells this deployment's tasks apart: what `logs` takes back.
    let task_ids: Vec<String> = d
        .steps
        .iter()
        .flat_map(|st| st.tasks.iter().map(|x| x.id.to_string()))
        .collect();
    let short = ids::short_len(&task_ids);
    for st in &d.steps {
        for x in &st.tasks {
            let id = x.id.to_string();
            let note = x.waiting.as_ref().or(x.reason.as_ref());
            t.add_row(vec![
                Cell::new(&st.name),
                Cell::new(ids::shorten(&id, short)),
                Cell::new(s(&x.target)),
                Cell::new(s(&x.pool)),
                Cell::new(s(&x.pool_rule)),
                Cell::new(s(&x.worker)),
                state(&x.state),
                Cell::new(s(&x.exit_code)),
                // A note that is just "-" is as good as none.
                Cell::new(note.filter(|n| *n != "-").cloned().unwrap_or_default()),
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
        let actor = e.actor.as_ref().map_or("-".to_owned(), ToString::to_string);
        println!(
            "{:>6}  {}  {:<18}  {}  by {}  {}",
            e.seq,
            s(&e.time),
            e.event_type,
            e.stream,
            actor,
            e.data
        );
    }
}

/// `shoal token list`.
pub fn tokens(v: &[shoal_shared::api::TokenView]) {
    if v.is_empty() {
        println!("no tokens");
        return;
    }
    let mut t = table(&["name", "role", "created", "created by"]);
    for k in v {
        t.add_row(vec![
            k.name.to_string(),
            k.role.to_string(),
            s(&k.created_at),
            k.created_by.to_string(),
        ]);
    }
    println!("{t}");
}

/// `shoal package list`.
pub fn packages(v: &[shoal_shared::api::PackageView]) {
    if v.is_empty() {
        println!("no packages in the feed (`shoal package push FILE --id ID --version X.Y.Z`)");
        return;
    }
    let mut t = table(&["package", "version", "bytes", "chunks", "sha-256", "pushed"]);
    for p in v {
        let sha = p.sha256.to_hex();
        t.add_row(vec![
            p.id.to_string(),
            p.version.to_string(),
            p.size.to_string(),
            p.chunks.to_string(),
            sha[..12].to_owned(),
            s(&p.pushed_at),
        ]);
    }
    println!("{t}");
}

/// `shoal package stats`: per version and pool, what crossed from the feed against what the
/// tasks used.
pub fn package_stats(v: &[shoal_shared::api::PackageView]) {
    let rows: Vec<_> = v
        .iter()
        .flat_map(|p| p.acquired.iter().map(move |(pool, a)| (p, pool, a)))
        .collect();
    if rows.is_empty() {
        println!("no package has been acquired by a worker yet");
        return;
    }
    let mut t = table(&[
        "package",
        "version",
        "pool",
        "acquisitions",
        "bytes used",
        "fetched",
        "from cache",
        "saved",
    ]);
    for (p, pool, a) in rows {
        let used = a.bytes_used();
        let saved = match used {
            0 => "-".to_owned(),
            _ => format!("{:.1}%", 100.0 * a.bytes_cached as f64 / used as f64),
        };
        t.add_row(vec![
            p.id.to_string(),
            p.version.to_string(),
            pool.to_string(),
            a.count.to_string(),
            used.to_string(),
            a.bytes_fetched.to_string(),
            a.bytes_cached.to_string(),
            saved,
        ]);
    }
    println!("{t}");
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

    #[test]
    fn state_words_are_coloured_only_when_the_table_is() {
        for on in [true, false] {
            let mut t = table_coloured(&["state"], on);
            t.add_row(vec![state("failed")]);
            let text = t.to_string();
            assert_eq!(text.contains('\x1b'), on, "colour {on}:\n{text}");
            assert!(text.contains("failed"), "{text}");
        }
    }
}
