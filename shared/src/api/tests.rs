//! Every API type against the JSON it stands for: serialized, it is exactly that JSON (names,
//! `null`s, spellings); deserialized from that JSON, it is the same value again.

use super::*;
use crate::HealthCheck;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::fmt::Debug;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T, wire: &Value) {
    let written = serde_json::to_value(value).unwrap_or(Value::Null);
    assert_eq!(&written, wire, "serialized");
    let read: T = match serde_json::from_value(wire.clone()) {
        Ok(v) => v,
        Err(e) => panic!("{wire} does not parse: {e}"),
    };
    assert_eq!(&read, value, "deserialized");
}

fn pool(s: &str) -> PoolName {
    PoolName::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

fn worker(s: &str) -> WorkerName {
    WorkerName::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

fn target_name(s: &str) -> TargetName {
    TargetName::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

fn env(s: &str) -> EnvironmentName {
    EnvironmentName::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

fn region(s: &str) -> RegionName {
    RegionName::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

fn role(s: &str) -> RoleName {
    RoleName::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

const T0: Timestamp = Timestamp(1_764_000_000_000);
const T0_TEXT: &str = "2025-11-24T16:00:00.000Z";

fn ids() -> (DeploymentId, TaskId, CheckId) {
    let u = |s| uuid::Uuid::parse_str(s).unwrap_or_default();
    (
        DeploymentId(u("019ac3a0-0000-7000-8000-000000000001")),
        TaskId(u("019ac3a0-0000-7000-8000-000000000002")),
        CheckId(u("019ac3a0-0000-7000-8000-000000000003")),
    )
}

#[test]
fn an_error_body_is_one_error_field() {
    round_trip(
        &ErrorBody {
            error: "unknown pool \"x\"".into(),
        },
        &json!({"error": "unknown pool \"x\""}),
    );
}

#[test]
fn a_pool_request_and_answer() {
    round_trip(
        &CreatePool {
            name: pool("eu-west"),
            region: Some(region("eu")),
            description: None,
            sealing_key: None,
        },
        &json!({"name": "eu-west", "region": "eu", "description": null}),
    );
    let bare: CreatePool =
        serde_json::from_value(json!({"name": "eu-west"})).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bare.region, None);
    assert!(serde_json::from_value::<CreatePool>(json!({"name": "a", "zone": 1})).is_err());
    round_trip(
        &PoolView {
            name: pool("default"),
            region: None,
            description: Some("built in".into()),
            registered_at: T0,
            is_default: true,
            workers_online: 2,
            sealing_key: None,
        },
        &json!({"name": "default", "region": null, "description": "built in",
                "registered_at": T0_TEXT, "is_default": true, "workers_online": 2,
                "sealing_key": null}),
    );
}

#[test]
fn a_target_request_update_and_answer() {
    let probe = HealthCheck::Tcp {
        address: "db:5432".into(),
        timeout_secs: None,
    };
    round_trip(
        &CreateTarget {
            name: target_name("web-1"),
            kind: TargetKind::AzureWebApp,
            environment: env("prod"),
            roles: vec![role("web")],
            endpoint: None,
            default_pool: Some(pool("eu-west")),
            health_check: Some(probe.clone()),
            health_interval_secs: None,
        },
        &json!({"name": "web-1", "kind": "azure-web-app", "environment": "prod", "roles": ["web"],
                "endpoint": null, "default_pool": "eu-west",
                "health_check": {"type": "tcp", "address": "db:5432"},
                "health_interval_secs": null}),
    );
    // Absent stays, null clears, a value sets.
    round_trip(
        &UpdateTarget {
            default_pool: Some(None),
            endpoint: Some(Some("https://x.example".into())),
            ..UpdateTarget::default()
        },
        &json!({"default_pool": null, "endpoint": "https://x.example"}),
    );
    round_trip(&UpdateTarget::default(), &json!({}));

    let (_, task, check) = ids();
    let checking = CheckingView {
        check,
        pool: pool("eu-west"),
        rule: Some(PoolRule::TargetDefault),
        deadline_at: Some(T0),
    };
    round_trip(
        &checking,
        &json!({"check": check.to_string(), "pool": "eu-west", "rule": "target_default",
                "deadline_at": T0_TEXT}),
    );
    let view = TargetView {
        target: Target {
            name: target_name("web-1"),
            kind: TargetKind::Kubernetes,
            environment: env("prod"),
            roles: vec![],
            endpoint: Some("https://k8s.example".into()),
            default_pool: None,
            health_check: None,
            health_interval_secs: Some(30),
        },
        registered_at: T0,
        updated_at: T0,
        probe: Some(probe),
        health: HealthView {
            state: HealthState::HealthyWithWarnings,
            reason: Some("slow".into()),
            checked_at: Some(T0),
            worker: Some(worker("eu-1")),
            pool: Some(pool("eu-west")),
            rule: Some(PoolRule::GlobalDefault),
            duration_ms: Some(12),
            check: Some(check),
            checking: Some(checking.clone()),
        },
    };
    round_trip(
        &view,
        &json!({"name": "web-1", "kind": "kubernetes", "environment": "prod", "roles": [],
                "endpoint": "https://k8s.example", "default_pool": null, "health_check": null,
                "health_interval_secs": 30, "registered_at": T0_TEXT, "updated_at": T0_TEXT,
                "probe": {"type": "tcp", "address": "db:5432"},
                "health": {"state": "healthy_with_warnings", "reason": "slow",
                           "checked_at": T0_TEXT, "worker": "eu-1", "pool": "eu-west",
                           "rule": "global_default", "duration_ms": 12,
                           "check": check.to_string(),
                           "checking": serde_json::to_value(&checking).unwrap_or_default()}}),
    );
    round_trip(
        &HealthHistory {
            target: target_name("web-1"),
            state: HealthState::Unavailable,
            checking: None,
            history: vec![HealthRecordView {
                check,
                state: HealthState::Unavailable,
                reason: Some("no worker".into()),
                checked_at: T0,
                worker: None,
                pool: pool("eu-west"),
                rule: None,
                duration_ms: None,
                task: Some(task),
            }],
        },
        &json!({"target": "web-1", "state": "unavailable", "checking": null, "history": [
            {"check": check.to_string(), "state": "unavailable", "reason": "no worker",
             "checked_at": T0_TEXT, "worker": null, "pool": "eu-west", "rule": null,
             "duration_ms": null, "task": task.to_string()}]}),
    );
}

#[test]
fn a_deployment_request_and_its_answers() {
    let (id, task, _) = ids();
    round_trip(
        &CreateDeployment {
            project: "shop".into(),
            environment: env("prod"),
            steps: vec![
                StepRequest {
                    name: "deploy".into(),
                    action: ActionRequest::Script {
                        script: "echo hi".into(),
                        shell: None,
                    },
                    roles: vec![role("web")],
                    pool: None,
                    timeout_secs: Some(60),
                    max_parallel: None,
                    variables: BTreeMap::from([("A".to_owned(), "1".to_owned())]),
                    sensitive_variables: BTreeMap::new(),
                    retries: 1,
                    retry_backoff_secs: None,
                    max_attempts: None,
                },
                StepRequest {
                    name: "check".into(),
                    action: ActionRequest::HealthCheck {},
                    roles: vec![],
                    pool: Some(pool("eu-west")),
                    timeout_secs: None,
                    max_parallel: Some(2),
                    variables: BTreeMap::new(),
                    sensitive_variables: BTreeMap::new(),
                    retries: 0,
                    retry_backoff_secs: Some(5),
                    max_attempts: Some(3),
                },
            ],
            unhealthy_targets: UnhealthyTargets::Skip,
        },
        &json!({"project": "shop", "environment": "prod", "unhealthy_targets": "skip", "steps": [
            {"name": "deploy", "action": {"type": "script", "script": "echo hi"},
             "roles": ["web"], "pool": null, "timeout_secs": 60, "max_parallel": null,
             "variables": {"A": "1"}, "retries": 1, "retry_backoff_secs": null,
             "max_attempts": null},
            {"name": "check", "action": {"type": "health_check"}, "roles": [],
             "pool": "eu-west", "timeout_secs": null, "max_parallel": 2, "variables": {},
             "retries": 0, "retry_backoff_secs": 5, "max_attempts": 3}]}),
    );
    let short: CreateDeployment = serde_json::from_value(json!({"project": "p",
        "environment": "prod", "steps": [{"name": "n", "action": {"type": "noop"}}]}))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(short.steps[0].action, ActionRequest::Noop {});
    round_trip(&Created { id }, &json!({"id": id.to_string()}));
    round_trip(&CancelRequest { reason: None }, &json!({"reason": null}));
    round_trip(
        &DeploymentSummary {
            id,
            project: "shop".into(),
            environment: env("prod"),
            state: DeploymentState::Cancelling,
            reason: None,
            created_at: T0,
            finished_at: None,
            steps: vec![StepSummary {
                name: "deploy".into(),
                state: StepState::Running,
                tasks: 3,
            }],
        },
        &json!({"id": id.to_string(), "project": "shop", "environment": "prod",
                "state": "cancelling", "reason": null, "created_at": T0_TEXT,
                "finished_at": null,
                "steps": [{"name": "deploy", "state": "running", "tasks": 3}]}),
    );
    let attempt = AttemptView {
        attempt: 1,
        delivery: 2,
        worker: Some(worker("eu-1")),
        started_at: Some(T0),
        finished_at: None,
        state: TaskState::Lost,
        exit_code: None,
    };
    let attempt_json = json!({"attempt": 1, "delivery": 2, "worker": "eu-1",
        "started_at": T0_TEXT, "finished_at": null, "state": "lost", "exit_code": null});
    round_trip(&attempt, &attempt_json);
    round_trip(
        &DeploymentDetail {
            id,
            project: "shop".into(),
            environment: env("prod"),
            state: DeploymentState::Running,
            reason: None,
            created_at: T0,
            started_at: Some(T0),
            finished_at: None,
            steps: vec![StepDetail {
                index: 0,
                name: "deploy".into(),
                state: StepState::Running,
                retries: 2,
                tasks: vec![TaskView {
                    id: task,
                    target: Some(target_name("web-1")),
                    endpoint: None,
                    pool: pool("eu-west"),
                    pool_rule: PoolRule::Step,
                    state: TaskState::RetryScheduled,
                    waiting: None,
                    worker: Some(worker("eu-1")),
                    attempt: 1,
                    delivery: 2,
                    exit_code: Some(3),
                    reason: Some("exit code 3".into()),
                    planned_at: Some(T0),
                    dispatched_at: Some(T0),
                    started_at: Some(T0),
                    finished_at: Some(T0),
                    output_lines: 7,
                    retry_at: Some(T0),
                    attempts: vec![attempt],
                }],
            }],
        },
        &json!({"id": id.to_string(), "project": "shop", "environment": "prod",
                "state": "running", "reason": null, "created_at": T0_TEXT,
                "started_at": T0_TEXT, "finished_at": null, "steps": [
            {"index": 0, "name": "deploy", "state": "running", "retries": 2, "tasks": [
                {"id": task.to_string(), "target": "web-1", "endpoint": null, "pool": "eu-west",
                 "pool_rule": "step", "state": "retry_scheduled", "waiting": null,
                 "worker": "eu-1", "attempt": 1, "delivery": 2, "exit_code": 3,
                 "reason": "exit code 3", "planned_at": T0_TEXT, "dispatched_at": T0_TEXT,
                 "started_at": T0_TEXT, "finished_at": T0_TEXT, "output_lines": 7,
                 "retry_at": T0_TEXT, "attempts": [attempt_json]}]}]}),
    );
}

#[test]
fn a_task_log_page_carries_its_cursor() {
    let (_, task, _) = ids();
    let next = LogCursor {
        attempt: 2,
        run: 1,
        line: 999,
    };
    round_trip(
        &TaskLog {
            task,
            state: TaskState::Running,
            lines: vec![LogLine {
                attempt: 2,
                run: 1,
                stream: OutputStream::Stderr,
                at: T0,
                line: "oops".into(),
            }],
            next: Some(next),
            more: true,
        },
        &json!({"task": task.to_string(), "state": "running", "lines": [
            {"attempt": 2, "run": 1, "stream": "stderr", "at": T0_TEXT, "line": "oops"}],
            "next": "2.1.999", "more": true}),
    );
    // What planners before paging answered still reads.
    let old: TaskLog = serde_json::from_value(
        json!({"task": task.to_string(), "state": "succeeded", "lines": []}),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((old.next, old.more), (None, false));
}

#[test]
fn a_log_cursor_is_attempt_run_line_and_nothing_else() {
    let c = LogCursor {
        attempt: 1,
        run: 2,
        line: 3,
    };
    assert_eq!(c.to_string(), "1.2.3");
    assert_eq!(LogCursor::parse("1.2.3"), Ok(c));
    for bad in [
        "",
        "1.2",
        "1.2.3.4",
        "a.2.3",
        "1.-2.3",
        "1..3",
        "4294967296.1.1",
    ] {
        let e = LogCursor::parse(bad).err().unwrap_or_default();
        assert!(e.contains("not a log cursor"), "{bad}: {e}");
    }
    assert!(
        LogCursor {
            attempt: 1,
            run: 9,
            line: 9
        } < LogCursor {
            attempt: 2,
            run: 1,
            line: 0
        }
    );
}

#[test]
fn a_worker_and_its_drain_answer() {
    round_trip(
        &WorkerView {
            name: worker("eu-1"),
            pool: pool("eu-west"),
            region: Some(region("eu")),
            slots: 4,
            busy_slots: 1,
            status: WorkerStatus::Draining,
            drain_requested: true,
            health: WorkerHealth::HealthyWithWarnings,
            warnings: vec!["disk".into()],
            ready: true,
            not_ready_reason: None,
            free_disk_mb: Some(100),
            last_seen: Some(T0),
            joined_at: T0,
            left_at: None,
            version: "0.1.0".into(),
        },
        &json!({"name": "eu-1", "pool": "eu-west", "region": "eu", "slots": 4, "busy_slots": 1,
                "status": "draining", "drain_requested": true,
                "health": "healthy_with_warnings", "warnings": ["disk"], "ready": true,
                "not_ready_reason": null, "free_disk_mb": 100,
                "last_seen": T0_TEXT, "joined_at": T0_TEXT, "left_at": null,
                "version": "0.1.0"}),
    );
    for (s, text) in [
        (WorkerStatus::Online, "online"),
        (WorkerStatus::Offline, "offline"),
        (WorkerStatus::Left, "left"),
    ] {
        round_trip(&s, &json!(text));
    }
    round_trip(&WorkerHealth::Healthy, &json!("healthy"));
    round_trip(&WorkerHealth::Offline, &json!("offline"));
    round_trip(&WorkerHealth::NotReady, &json!("not_ready"));
    round_trip(
        &DrainView {
            name: worker("eu-1"),
            drain_requested: false,
        },
        &json!({"name": "eu-1", "drain_requested": false}),
    );
}

#[test]
fn an_event_and_the_status() {
    let (id, _, _) = ids();
    round_trip(
        &EventView {
            seq: 7,
            event_id: EventId(id.0),
            time: T0,
            stream: format!("deployment/{id}"),
            event_type: "DeploymentCreated".into(),
            schema_version: 1,
            correlation_id: Some(id.0),
            causation_id: None,
            data: json!({"id": id.to_string()}),
            prev_hash: "00ff".into(),
            actor: Some(crate::auth::Actor::Token(
                crate::names::TokenName::parse("ci").unwrap_or_else(|e| panic!("{e}")),
            )),
        },
        &json!({"seq": 7, "event_id": id.to_string(), "time": T0_TEXT,
                "stream": format!("deployment/{id}"), "type": "DeploymentCreated",
                "schema_version": 1, "correlation_id": id.to_string(), "causation_id": null,
                "data": {"id": id.to_string()}, "prev_hash": "00ff", "actor": "token:ci"}),
    );
    round_trip(
        &StatusView {
            log_seq: 12,
            deployments_in_memory: 1,
            tasks_in_memory: 3,
        },
        &json!({"log_seq": 12, "deployments_in_memory": 1, "tasks_in_memory": 3}),
    );
}

#[test]
fn a_worker_from_a_planner_before_readiness_reads_as_ready() {
    let v: WorkerView = serde_json::from_value(
        json!({"name": "eu-1", "pool": "eu-west", "region": null, "slots": 4, "busy_slots": 0,
               "status": "online", "drain_requested": false, "health": "healthy",
               "warnings": [], "free_disk_mb": null, "last_seen": null,
               "joined_at": T0_TEXT, "left_at": null, "version": "0.1.0"}),
    )
    .expect("decodes");
    assert!(v.ready);
    assert_eq!(v.not_ready_reason, None);
}

#[test]
fn a_step_request_takes_sensitive_variables_in_clear_and_never_shows_them_in_debug() {
    let body = json!({"name": "s", "action": {"type": "noop"},
                      "sensitive_variables": {"DB_PASSWORD": "hunter2"}});
    let step: StepRequest = serde_json::from_value(body.clone()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        step.sensitive_variables
            .get("DB_PASSWORD")
            .map(|v| v.expose()),
        Some("hunter2")
    );
    assert!(!format!("{step:?}").contains("hunter2"));
    // What the CLI sends is what it read.
    assert_eq!(
        serde_json::to_value(&step).expect("json")["sensitive_variables"],
        body["sensitive_variables"]
    );
}
