//! Given/when/then tests of the pure core: commands against a state built from events.

use super::decide::TargetUpdate;
use super::{Changes, Command, EventSink, NewEvent, Rejection, State, handle};
use shoal_shared::events::{Envelope, Event};
use shoal_shared::messages::{WorkerBody, WorkerMessage};
use shoal_shared::*;
use std::convert::Infallible;

/// An in-memory sink: applies events to a state and keeps them in order.
#[derive(Default)]
struct Memory {
    state: State,
    events: Vec<Event>,
}

impl EventSink for Memory {
    type Error = Infallible;
    fn state(&self) -> &State {
        &self.state
    }
    fn append(&mut self, e: NewEvent, _: Option<EventId>) -> Result<u64, Infallible> {
        let seq = self.events.len() as u64 + 1;
        let env = Envelope {
            seq,
            event_id: e.id,
            time: Timestamp(seq as i64),
            stream: e.event.stream(),
            event_type: e.event.event_type().into(),
            schema_version: 1,
            correlation_id: None,
            causation_id: None,
            payload: vec![],
            prev_hash: vec![],
            actor: None,
        };
        self.state.apply(&env, &e.event, &mut Changes::default());
        self.events.push(e.event);
        Ok(seq)
    }
}

fn pool(s: &str) -> PoolName {
    PoolName::parse(s).expect("valid")
}

fn default_pool() -> PoolName {
    pool("default")
}

fn target(name: &str, roles: &[&str], default: Option<&str>) -> Target {
    Target {
        name: TargetName::parse(name).expect("valid"),
        kind: TargetKind::AzureWebApp,
        environment: EnvironmentName::parse("prod").expect("valid"),
        roles: roles
            .iter()
            .map(|r| RoleName::parse(*r).expect("valid"))
            .collect(),
        endpoint: Some(format!("https://{name}")),
        default_pool: default.map(pool),
        health_check: None,
        health_interval_secs: None,
    }
}

fn step(name: &str, roles: &[&str], pool_name: Option<&str>) -> StepSpec {
    StepSpec {
        name: name.into(),
        action: Action::Noop,
        roles: roles
            .iter()
            .map(|r| RoleName::parse(*r).expect("valid"))
            .collect(),
        pool: pool_name.map(pool),
        timeout_secs: None,
        max_parallel: None,
        variables: Default::default(),
        sensitive_variables: Default::default(),
        retries: 0,
        retry_backoff_secs: None,
        max_attempts: None,
    }
}

/// Given: the default pool, pools eu-west and us-east, and targets.
fn given(targets: &[Target]) -> Memory {
    let mut m = Memory::default();
    for cmd in [
        Command::EnsureDefaultPool,
        Command::RegisterPool(Pool {
            name: pool("eu-west"),
            region: None,
            description: None,
        }),
        Command::RegisterPool(Pool {
            name: pool("us-east"),
            region: None,
            description: None,
        }),
    ]
    .into_iter()
    .chain(targets.iter().cloned().map(Command::RegisterTarget))
    {
        when(&mut m, cmd).expect("given commands are valid");
    }
    m.events.clear();
    m
}

fn when(m: &mut Memory, cmd: Command) -> Result<Vec<Event>, Rejection> {
    let before = m.events.len();
    let result = match handle(m, &default_pool(), &cmd) {
        Ok(r) => r.map(|_| m.events[before..].to_vec()),
        Err(never) => match never {},
    };
    // The counts kept event by event equal the counts recomputed from the tasks.
    let mut recounted = m.state.clone();
    recounted.recount();
    assert_eq!(
        recounted.progress, m.state.progress,
        "step counts drifted after {cmd:?}"
    );
    result
}

fn deploy(m: &mut Memory, steps: Vec<StepSpec>) -> (DeploymentId, Vec<Event>) {
    let id = DeploymentId::new();
    let spec = DeploymentSpec {
        project: "p".into(),
        environment: EnvironmentName::parse("prod").expect("valid"),
        steps,
        unhealthy_targets: UnhealthyTargets::Fail,
    };
    let events = when(m, Command::CreateDeployment { id, spec }).expect("valid deployment");
    (id, events)
}

fn finish(m: &mut Memory, task: TaskId, outcome: Outcome, code: i32) -> Vec<Event> {
    let t = m.state.tasks[&task].clone();
    let w1 = WorkerName::parse("w1").expect("valid");
    // A worker reports only on runs it started: w1 starts the attempt first, if it has not.
    let started = t
        .attempts
        .iter()
        .any(|r| r.attempt == t.attempt && r.worker.as_ref() == Some(&w1));
    if !started {
        let start = WorkerMessage {
            trace_parent: None,
            schema_version: 1,
            event_id: EventId::new(),
            worker: w1.clone(),
            pool: t.pool.clone(),
            sent_at: Timestamp(98),
            body: WorkerBody::TaskStarted {
                deployment: t.deployment,
                task,
                attempt: t.attempt,
                delivery: 1,
            },
        };
        let _ = when(m, Command::WorkerReport(start));
    }
    let report = WorkerMessage {
        trace_parent: None,
        schema_version: 1,
        event_id: EventId::new(),
        worker: WorkerName::parse("w1").expect("valid"),
        pool: t.pool.clone(),
        sent_at: Timestamp(99),
        body: WorkerBody::TaskFinished {
            deployment: t.deployment,
            task,
            attempt: t.attempt,
            delivery: 1,
            outcome,
            exit_code: Some(code),
            reason: None,
        },
    };
    when(m, Command::WorkerReport(report)).expect("reports are never rejected")
}

fn planned(events: &[Event]) -> Vec<(TaskId, PoolName, PoolRule)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::TaskPlanned {
                task, pool, rule, ..
            } => Some((*task, pool.clone(), *rule)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_deployment_records_every_routing_decision_and_plans_its_first_step() {
    let mut m = given(&[
        target("eu", &["web"], Some("eu-west")),
        target("plain", &["web"], None),
    ]);
    let (id, events) = deploy(
        &mut m,
        vec![
            step("a", &["web"], None),
            step("b", &["web"], Some("us-east")),
        ],
    );
    let Event::DeploymentCreated { steps, .. } = &events[0] else {
        panic!("{events:?}")
    };
    let routes: Vec<(Option<String>, String, PoolRule)> = steps
        .iter()
        .flat_map(|s| &s.tasks)
        .map(|t| {
            (
                t.target.as_ref().map(|t| t.to_string()),
                t.pool.to_string(),
                t.rule,
            )
        })
        .collect();
    assert_eq!(
        routes,
        [
            (Some("eu".into()), "eu-west".into(), PoolRule::TargetDefault),
            (
                Some("plain".into()),
                "default".into(),
                PoolRule::GlobalDefault
            ),
            (Some("eu".into()), "us-east".into(), PoolRule::Step),
            (Some("plain".into()), "us-east".into(), PoolRule::Step),
        ]
    );
    assert!(matches!(events[1], Event::DeploymentStarted { .. }));
    assert!(matches!(events[2], Event::StepStarted { step: 0, .. }));
    assert_eq!(planned(&events).len(), 2, "only the first step is planned");
    assert_eq!(m.state.deployments[&id].state, DeploymentState::Running);
    assert_eq!(m.state.outbox.len(), 2);
}

#[test]
fn the_next_step_starts_only_when_every_task_of_the_previous_succeeded() {
    let mut m = given(&[target("t1", &["web"], None), target("t2", &["web"], None)]);
    let (id, events) = deploy(
        &mut m,
        vec![step("a", &["web"], None), step("b", &[], None)],
    );
    let first = planned(&events);
    let after_one = finish(&mut m, first[0].0, Outcome::Succeeded, 0);
    assert!(planned(&after_one).is_empty(), "{after_one:?}");
    let after_two = finish(&mut m, first[1].0, Outcome::Succeeded, 0);
    assert!(matches!(
        after_two[1],
        Event::StepFinished {
            step: 0,
            state: StepState::Succeeded,
            ..
        }
    ));
    assert!(matches!(after_two[2], Event::StepStarted { step: 1, .. }));
    let second = planned(&after_two);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].2, PoolRule::GlobalDefault);
    let last = finish(&mut m, second[0].0, Outcome::Succeeded, 0);
    assert!(matches!(
        last.last(),
        Some(Event::DeploymentFinished {
            state: DeploymentState::Succeeded,
            ..
        })
    ));
    assert!(!m.state.active.contains(&id));
}

#[test]
fn a_failed_task_fails_its_step_and_the_deployment_with_the_exit_code() {
    let mut m = given(&[target("t1", &["web"], None)]);
    let (id, events) = deploy(
        &mut m,
        vec![step("a", &["web"], None), step("b", &[], None)],
    );
    let task = planned(&events)[0].0;
    let after = finish(&mut m, task, Outcome::Failed, 7);
    let Some(Event::DeploymentFinished { state, reason, .. }) = after.last() else {
        panic!("{after:?}")
    };
    assert_eq!(*state, DeploymentState::Failed);
    let reason = reason.clone().unwrap_or_default();
    assert!(
        reason.contains("exit code 7") && reason.contains("t1"),
        "{reason}"
    );
    assert_eq!(m.state.tasks[&task].exit_code, Some(7));
    assert_eq!(m.state.deployments[&id].steps[1].state, StepState::Skipped);
    let later = m.state.deployments[&id].steps[1].tasks[0];
    assert_eq!(m.state.tasks[&later].state, TaskState::Skipped);
}

#[test]
fn max_parallel_plans_the_next_task_as_one_finishes() {
    let mut m = given(&[
        target("t1", &["web"], None),
        target("t2", &["web"], None),
        target("t3", &["web"], None),
    ]);
    let mut s = step("a", &["web"], None);
    s.max_parallel = Some(2);
    let (_, events) = deploy(&mut m, vec![s]);
    let first = planned(&events);
    assert_eq!(first.len(), 2);
    let after = finish(&mut m, first[0].0, Outcome::Succeeded, 0);
    assert_eq!(planned(&after).len(), 1);
}

#[test]
fn a_result_of_a_superseded_attempt_or_a_repeated_outcome_changes_nothing() {
    let mut m = given(&[target("t1", &["web"], None)]);
    let (_, events) = deploy(&mut m, vec![step("a", &["web"], None)]);
    let task = planned(&events)[0].0;
    finish(&mut m, task, Outcome::Succeeded, 0);
    let before = m.state.clone();
    // A second outcome for the same attempt (e.g. a redelivered task run twice) is recorded
    // but not accepted: the task keeps its first outcome.
    let again = finish(&mut m, task, Outcome::Failed, 1);
    assert_eq!(again.len(), 1);
    assert_eq!(m.state, before);
}

#[test]
fn a_report_about_an_unknown_task_is_refused() {
    let mut m = given(&[]);
    let report = WorkerMessage {
        trace_parent: None,
        schema_version: 1,
        event_id: EventId::new(),
        worker: WorkerName::parse("w1").expect("valid"),
        pool: pool("eu-west"),
        sent_at: Timestamp(1),
        body: WorkerBody::TaskStarted {
            deployment: DeploymentId::new(),
            task: TaskId::new(),
            attempt: 1,
            delivery: 1,
        },
    };
    let Err(Rejection::Invalid(reason)) = when(&mut m, Command::WorkerReport(report)) else {
        panic!("accepted")
    };
    assert!(reason.contains("unknown task"), "{reason}");
}

#[test]
fn a_report_with_a_newer_schema_is_refused() {
    let mut m = given(&[]);
    let report = WorkerMessage {
        trace_parent: None,
        schema_version: 99,
        event_id: EventId::new(),
        worker: WorkerName::parse("w1").expect("valid"),
        pool: pool("eu-west"),
        sent_at: Timestamp(1),
        body: WorkerBody::Left { reason: "x".into() },
    };
    let Err(Rejection::Invalid(reason)) = when(&mut m, Command::WorkerReport(report)) else {
        panic!("accepted")
    };
    assert!(reason.contains("unknown schema version 99"), "{reason}");
}

#[test]
fn a_deployment_is_refused_for_its_first_wrong_field_in_reading_order() {
    let mut m = given(&[target("t1", &["web"], None)]);
    let refusal = |m: &mut Memory, environment: &str, steps: Vec<StepSpec>| {
        let spec = DeploymentSpec {
            project: "p".into(),
            environment: EnvironmentName::parse(environment).expect("valid"),
            steps,
            unhealthy_targets: UnhealthyTargets::Fail,
        };
        let cmd = Command::CreateDeployment {
            id: DeploymentId::new(),
            spec,
        };
        match when(m, cmd) {
            Err(Rejection::Invalid(message)) => message,
            other => panic!("not refused as invalid: {other:?}"),
        }
    };
    // An unknown environment comes before the missing steps.
    let message = refusal(&mut m, "qa", vec![]);
    assert!(message.starts_with("environment: "), "{message}");
    // An unknown pool comes before the step's other settings.
    let mut bad = step("a", &["web"], Some("mars"));
    bad.timeout_secs = Some(0);
    let message = refusal(&mut m, "prod", vec![bad]);
    assert!(message.starts_with("steps[0].pool: "), "{message}");
    // An earlier step's targets come before a later step's settings.
    let mut later = step("b", &["web"], None);
    later.timeout_secs = Some(0);
    let message = refusal(&mut m, "prod", vec![step("a", &["db"], None), later]);
    assert!(message.starts_with("steps[0].roles: "), "{message}");
    assert!(m.events.is_empty(), "{:?}", m.events);
}

#[test]
fn refusals_name_the_field_and_the_known_values() {
    let mut m = given(&[target("t1", &["web"], Some("eu-west"))]);
    let id = DeploymentId::new();
    let spec = |steps| DeploymentSpec {
        project: "p".into(),
        environment: EnvironmentName::parse("prod").expect("valid"),
        steps,
        unhealthy_targets: UnhealthyTargets::Fail,
    };
    let err = when(
        &mut m,
        Command::CreateDeployment {
            id,
            spec: spec(vec![step("a", &[], Some("eu-wset"))]),
        },
    )
    .expect_err("refused");
    assert_eq!(
        err.to_string(),
        "steps[0].pool: unknown pool \"eu-wset\" (known: default, eu-west, us-east)"
    );
    let err = when(
        &mut m,
        Command::CreateDeployment {
            id,
            spec: spec(vec![step("a", &["db"], None)]),
        },
    )
    .expect_err("refused");
    assert_eq!(
        err.to_string(),
        "steps[0].roles: no target in environment \"prod\" has any of the roles [db] (roles there: web)"
    );
    let err = when(
        &mut m,
        Command::RegisterTarget(target("t2", &["web"], Some("mars"))),
    )
    .expect_err("refused");
    assert!(
        err.to_string()
            .starts_with("default_pool: unknown pool \"mars\""),
        "{err}"
    );
    let err = when(
        &mut m,
        Command::UpdateTarget {
            name: TargetName::parse("zz").expect("valid"),
            update: TargetUpdate::default(),
        },
    )
    .expect_err("refused");
    assert!(matches!(err, Rejection::NotFound(_)));
    assert!(m.events.is_empty(), "a refused command appends nothing");
}

#[test]
fn a_target_update_that_changes_nothing_appends_nothing() {
    let mut m = given(&[target("t1", &["web"], Some("eu-west"))]);
    let update = TargetUpdate {
        default_pool: Some(Some(pool("eu-west"))),
        ..Default::default()
    };
    let events = when(
        &mut m,
        Command::UpdateTarget {
            name: TargetName::parse("t1").expect("valid"),
            update,
        },
    )
    .expect("valid");
    assert!(events.is_empty());
    let update = TargetUpdate {
        default_pool: Some(None),
        ..Default::default()
    };
    let events = when(
        &mut m,
        Command::UpdateTarget {
            name: TargetName::parse("t1").expect("valid"),
            update,
        },
    )
    .expect("valid");
    assert_eq!(events.len(), 1);
    assert_eq!(
        m.state.targets[&TargetName::parse("t1").expect("valid")]
            .target
            .default_pool,
        None
    );
}

fn report(
    m: &mut Memory,
    task: TaskId,
    worker: &str,
    body: impl FnOnce(DeploymentId, u32) -> WorkerBody,
) -> Vec<Event> {
    let t = m.state.tasks[&task].clone();
    let msg = WorkerMessage {
        trace_parent: None,
        schema_version: 1,
        event_id: EventId::new(),
        worker: WorkerName::parse(worker).expect("valid"),
        pool: t.pool.clone(),
        sent_at: Timestamp(50),
        body: body(t.deployment, t.attempt),
    };
    when(m, Command::WorkerReport(msg)).expect("reports are never rejected")
}

#[test]
fn a_redelivered_attempt_is_a_new_run_and_the_lost_one_stays_in_the_history() {
    let mut m = given(&[target("t1", &["web"], None)]);
    let (_, events) = deploy(&mut m, vec![step("a", &["web"], None)]);
    let task = planned(&events)[0].0;
    report(&mut m, task, "w1", |d, attempt| WorkerBody::TaskStarted {
        deployment: d,
        task,
        attempt,
        delivery: 1,
    });
    // w1 dies; the broker delivers the attempt to w2.
    report(&mut m, task, "w2", |d, attempt| WorkerBody::TaskStarted {
        deployment: d,
        task,
        attempt,
        delivery: 2,
    });
    let t = &m.state.tasks[&task];
    assert_eq!(
        (t.delivery, t.worker.as_ref().map(|w| w.as_str())),
        (2, Some("w2"))
    );
    let runs: Vec<(u32, TaskState, Option<&str>)> = t
        .attempts
        .iter()
        .map(|r| (r.delivery, r.state, r.worker.as_ref().map(|w| w.as_str())))
        .collect();
    assert_eq!(
        runs,
        [
            (1, TaskState::Lost, Some("w1")),
            (2, TaskState::Running, Some("w2"))
        ]
    );
    // A late start report of the lost run changes nothing.
    let before = m.state.clone();
    report(&mut m, task, "w1", |d, attempt| WorkerBody::TaskStarted {
        deployment: d,
        task,
        attempt,
        delivery: 1,
    });
    assert_eq!(m.state, before);
    report(&mut m, task, "w2", |d, attempt| WorkerBody::TaskFinished {
        deployment: d,
        task,
        attempt,
        delivery: 2,
        outcome: Outcome::Succeeded,
        exit_code: Some(0),
        reason: None,
    });
    let t = &m.state.tasks[&task];
    assert_eq!(t.state, TaskState::Succeeded);
    assert_eq!(t.attempts[1].state, TaskState::Succeeded);
    assert_eq!(t.attempts[0].state, TaskState::Lost);
}

#[test]
fn a_run_thought_lost_that_finishes_first_gives_the_outcome_and_the_later_run_is_still_recorded() {
    let mut m = given(&[target("t1", &["web"], None)]);
    let (_, events) = deploy(&mut m, vec![step("a", &["web"], None)]);
    let task = planned(&events)[0].0;
    let started = |d: u32| {
        move |dep, attempt| WorkerBody::TaskStarted {
            deployment: dep,
            task,
            attempt,
            delivery: d,
        }
    };
    let finished = |d: u32, outcome| {
        move |dep, attempt| WorkerBody::TaskFinished {
            deployment: dep,
            task,
            attempt,
            delivery: d,
            outcome,
            exit_code: Some(0),
            reason: None,
        }
    };
    report(&mut m, task, "w1", started(1));
    report(&mut m, task, "w2", started(2));
    // w1 was only cut off; it finishes first.
    report(&mut m, task, "w1", finished(1, Outcome::Succeeded));
    let t = &m.state.tasks[&task];
    assert_eq!(
        (t.state, t.delivery, t.worker.as_ref().map(|w| w.as_str())),
        (TaskState::Succeeded, 1, Some("w1"))
    );
    assert_eq!(t.attempts[0].state, TaskState::Succeeded);
    assert_eq!(t.attempts[1].state, TaskState::Running);
    // w2's run ends too: its end is in the history, the task keeps the first outcome.
    report(&mut m, task, "w2", finished(2, Outcome::Failed));
    let t = &m.state.tasks[&task];
    assert_eq!((t.state, t.delivery), (TaskState::Succeeded, 1));
    assert_eq!(t.attempts[1].state, TaskState::Failed);
}

fn started(task: TaskId, delivery: u32) -> impl FnOnce(DeploymentId, u32) -> WorkerBody {
    move |deployment, attempt| WorkerBody::TaskStarted {
        deployment,
        task,
        attempt,
        delivery,
    }
}

fn ended(
    task: TaskId,
    delivery: u32,
    outcome: Outcome,
) -> impl FnOnce(DeploymentId, u32) -> WorkerBody {
    move |deployment, attempt| WorkerBody::TaskFinished {
        deployment,
        task,
        attempt,
        delivery,
        outcome,
        exit_code: None,
        reason: Some("why".into()),
    }
}

#[test]
fn a_failed_attempt_with_retries_left_is_retried_after_its_backoff_as_a_new_attempt() {
    let mut m = given(&[target("t1", &["web"], None)]);
    let mut s = step("a", &["web"], None);
    s.retries = 1;
    s.retry_backoff_secs = Some(3);
    let (id, events) = deploy(&mut m, vec![s]);
    let task = planned(&events)[0].0;
    report(&mut m, task, "w1", started(task, 1));
    let events = report(&mut m, task, "w1", ended(task, 1, Outcome::TimedOut));
    // No deployment failure: the task waits for its retry.
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::DeploymentFinished { .. })),
        "{events:?}"
    );
    let t = &m.state.tasks[&task];
    assert_eq!(t.state, TaskState::RetryScheduled);
    let finished_at = m.events.len() as i64; // the memory sink's clock: one ms per event
    assert_eq!(t.retry_at, Some(Timestamp(finished_at + 3_000)));
    // A due command for another attempt changes nothing; the right one plans attempt 2.
    assert_eq!(
        when(&mut m, Command::RetryDue { task, attempt: 7 }).expect("ok"),
        []
    );
    let events = when(&mut m, Command::RetryDue { task, attempt: 1 }).expect("ok");
    assert!(
        matches!(&events[..], [Event::TaskPlanned { attempt: 2, .. }]),
        "{events:?}"
    );
    // The second failure uses up the retries: the deployment fails.
    report(&mut m, task, "w2", started(task, 1));
    let events = report(&mut m, task, "w2", ended(task, 1, Outcome::Failed));
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::DeploymentFinished {
                state: DeploymentState::Failed,
                ..
            }
        )),
        "{events:?}"
    );
    let t = &m.state.tasks[&task];
    let attempts: Vec<(u32, TaskState)> = t.attempts.iter().map(|r| (r.attempt, r.state)).collect();
    assert_eq!(attempts, [(1, TaskState::TimedOut), (2, TaskState::Failed)]);
    assert_eq!(m.state.deployments[&id].state, DeploymentState::Failed);
}

#[test]
fn a_cancelled_outcome_is_never_retried() {
    let mut m = given(&[target("t1", &["web"], None)]);
    let mut s = step("a", &["web"], None);
    s.retries = 3;
    let (_, events) = deploy(&mut m, vec![s]);
    let task = planned(&events)[0].0;
    report(&mut m, task, "w1", started(task, 1));
    report(&mut m, task, "w1", ended(task, 1, Outcome::Cancelled));
    assert_eq!(m.state.tasks[&task].state, TaskState::Cancelled);
}

#[test]
fn cancelling_stops_queued_tasks_at_once_and_ends_when_running_ones_have_stopped() {
    let mut m = given(&[
        target("t1", &["web"], None),
        target("t2", &["web"], None),
        target("t3", &["web"], None),
    ]);
    let (id, events) = deploy(
        &mut m,
        vec![step("a", &["web"], None), step("b", &[], None)],
    );
    let tasks: Vec<TaskId> = planned(&events).iter().map(|p| p.0).collect();
    report(&mut m, tasks[0], "w1", started(tasks[0], 1));
    let events = when(
        &mut m,
        Command::CancelDeployment {
            id,
            reason: Some("wrong build".into()),
        },
    )
    .expect("a running deployment can be cancelled");
    assert!(
        matches!(&events[..], [Event::DeploymentCancelRequested { reason, .. }] if reason == "wrong build"),
        "{events:?}"
    );
    let d = &m.state.deployments[&id];
    assert_eq!(d.state, DeploymentState::Cancelling);
    assert_eq!(m.state.tasks[&tasks[0]].state, TaskState::Running);
    for t in &tasks[1..] {
        assert_eq!(m.state.tasks[t].state, TaskState::Cancelled);
    }
    // Asking again changes nothing.
    assert_eq!(
        when(&mut m, Command::CancelDeployment { id, reason: None }).expect("idempotent"),
        []
    );
    // The running task's worker stops it: the deployment ends cancelled, the next step skipped.
    let events = report(
        &mut m,
        tasks[0],
        "w1",
        ended(tasks[0], 1, Outcome::Cancelled),
    );
    assert!(
        matches!(
            events.last(),
            Some(Event::DeploymentFinished {
                state: DeploymentState::Cancelled,
                ..
            })
        ),
        "{events:?}"
    );
    let d = &m.state.deployments[&id];
    let steps: Vec<StepState> = d.steps.iter().map(|s| s.state).collect();
    assert_eq!(steps, [StepState::Cancelled, StepState::Skipped]);
    assert_eq!(d.reason.as_deref(), Some("wrong build"));
    // An ended deployment cannot be cancelled; an unknown one is not found.
    assert!(matches!(
        when(&mut m, Command::CancelDeployment { id, reason: None }),
        Err(Rejection::Conflict(_))
    ));
    assert!(matches!(
        when(
            &mut m,
            Command::CancelDeployment {
                id: DeploymentId::new(),
                reason: None
            }
        ),
        Err(Rejection::NotFound(_))
    ));
}

#[test]
fn a_cancelled_task_whose_worker_never_confirms_is_given_up_after_the_grace_period() {
    let mut m = given(&[target("t1", &["web"], None)]);
    let (id, events) = deploy(&mut m, vec![step("a", &["web"], None)]);
    let task = planned(&events)[0].0;
    report(&mut m, task, "w1", started(task, 1));
    when(&mut m, Command::CancelDeployment { id, reason: None }).expect("ok");
    let events = when(&mut m, Command::CancelGraceExpired { deployment: id }).expect("ok");
    assert!(
        matches!(&events[..], [Event::TaskCancelled { reason, .. }, Event::DeploymentFinished { state: DeploymentState::Cancelled, .. }] if reason.contains("w1")),
        "{events:?}"
    );
    assert_eq!(m.state.tasks[&task].attempts[0].state, TaskState::Lost);
    // Too late: the worker's own report is still recorded in the history, nothing else moves.
    report(&mut m, task, "w1", ended(task, 1, Outcome::Cancelled));
    let t = &m.state.tasks[&task];
    assert_eq!(t.state, TaskState::Cancelled);
    assert_eq!(
        (
            t.attempts.len(),
            t.attempts[0].state,
            t.attempts[0].finished_at.is_some()
        ),
        (1, TaskState::Cancelled, true)
    );
}

#[test]
fn a_failing_step_cancels_its_queued_tasks() {
    let mut m = given(&[target("t1", &["web"], None), target("t2", &["web"], None)]);
    let (_, events) = deploy(&mut m, vec![step("a", &["web"], None)]);
    let tasks: Vec<TaskId> = planned(&events).iter().map(|p| p.0).collect();
    report(&mut m, tasks[0], "w1", started(tasks[0], 1));
    report(&mut m, tasks[0], "w1", ended(tasks[0], 1, Outcome::Failed));
    let t = &m.state.tasks[&tasks[1]];
    assert_eq!(t.state, TaskState::Cancelled);
    assert_eq!(
        t.reason.as_deref(),
        Some("not started: the deployment failed first")
    );
}

#[test]
fn an_attempt_given_up_after_lost_runs_fails_and_closes_the_open_run() {
    let mut m = given(&[target("t1", &["web"], None)]);
    let (id, events) = deploy(&mut m, vec![step("a", &["web"], None)]);
    let task = planned(&events)[0].0;
    report(&mut m, task, "w1", started(task, 1));
    report(&mut m, task, "w2", started(task, 2));
    report(&mut m, task, "w3", started(task, 3));
    // Delivery 4 is refused by w4 without running: every earlier run is lost.
    report(&mut m, task, "w4", ended(task, 4, Outcome::Failed));
    let t = &m.state.tasks[&task];
    let runs: Vec<(u32, TaskState)> = t.attempts.iter().map(|r| (r.delivery, r.state)).collect();
    assert_eq!(
        runs,
        [
            (1, TaskState::Lost),
            (2, TaskState::Lost),
            (3, TaskState::Lost),
            (4, TaskState::Failed)
        ]
    );
    assert_eq!(t.state, TaskState::Failed);
    assert_eq!(m.state.deployments[&id].state, DeploymentState::Failed);
}

/// Worker `name` of pool eu-west says it joined.
fn joined(name: &str) -> WorkerMessage {
    WorkerMessage {
        trace_parent: None,
        schema_version: 1,
        event_id: EventId::new(),
        worker: WorkerName::parse(name).expect("valid"),
        pool: pool("eu-west"),
        sent_at: Timestamp(1),
        body: WorkerBody::Joined {
            region: None,
            slots: 2,
            version: "0".into(),
        },
    }
}

#[test]
fn draining_a_worker_is_recorded_once_and_survives_its_rejoining() {
    let mut m = given(&[]);
    let join = joined("w1");
    when(&mut m, Command::WorkerReport(join.clone())).expect("ok");
    let w1 = WorkerName::parse("w1").expect("valid");
    let drain = |drain| Command::DrainWorker {
        worker: w1.clone(),
        drain,
    };
    assert_eq!(when(&mut m, drain(true)).expect("ok").len(), 1);
    assert_eq!(when(&mut m, drain(true)).expect("ok"), []);
    when(
        &mut m,
        Command::WorkerReport(WorkerMessage {
            trace_parent: None,
            event_id: EventId::new(),
            ..join
        }),
    )
    .expect("ok");
    assert!(m.state.workers[&w1].draining);
    assert!(matches!(
        &when(&mut m, drain(false)).expect("ok")[..],
        [Event::WorkerResumed { .. }]
    ));
    assert!(!m.state.workers[&w1].draining);
    assert!(matches!(
        when(
            &mut m,
            Command::DrainWorker {
                worker: WorkerName::parse("nobody").expect("valid"),
                drain: true
            }
        ),
        Err(Rejection::NotFound(_))
    ));
}

#[test]
fn a_worker_going_offline_and_back_is_recorded_once_each_and_never_for_one_that_left() {
    let mut m = given(&[]);
    let w1 = WorkerName::parse("w1").expect("valid");
    let presence = |online| Command::WorkerPresence {
        worker: w1.clone(),
        online,
        last_seen: Some(Timestamp(5)),
    };
    // Not joined: nothing to record.
    assert_eq!(when(&mut m, presence(false)).expect("ok"), []);
    let join = joined("w1");
    when(&mut m, Command::WorkerReport(join.clone())).expect("ok");
    assert!(m.state.workers[&w1].online());
    assert_eq!(when(&mut m, presence(true)).expect("ok"), []);
    assert!(matches!(
        &when(&mut m, presence(false)).expect("ok")[..],
        [Event::WorkerWentOffline {
            last_seen: Some(Timestamp(5)),
            ..
        }]
    ));
    assert_eq!(when(&mut m, presence(false)).expect("ok"), []);
    assert!(!m.state.workers[&w1].online());
    assert!(matches!(
        &when(&mut m, presence(true)).expect("ok")[..],
        [Event::WorkerCameOnline { .. }]
    ));
    let left = WorkerMessage {
        trace_parent: None,
        event_id: EventId::new(),
        body: WorkerBody::Left {
            reason: "stopped".into(),
        },
        ..join
    };
    when(&mut m, Command::WorkerReport(left)).expect("ok");
    assert!(!m.state.workers[&w1].online());
    assert_eq!(when(&mut m, presence(true)).expect("ok"), []);
    assert_eq!(when(&mut m, presence(false)).expect("ok"), []);
}

#[test]
fn a_targets_health_change_is_recorded_and_an_answer_that_changes_nothing_is_not() {
    let mut m = given(&[target("eu", &["web"], Some("eu-west"))]);
    let changes = |events: &[Event]| -> Vec<(Option<HealthState>, HealthState)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::TargetHealthChanged { from, to, .. } => Some((*from, *to)),
                _ => None,
            })
            .collect()
    };
    check(&mut m, "eu");
    let first = checked(&mut m, "eu", HealthState::Healthy, "ok");
    assert_eq!(changes(&first), [(None, HealthState::Healthy)]);
    check(&mut m, "eu");
    assert_eq!(
        changes(&checked(&mut m, "eu", HealthState::Healthy, "ok")),
        []
    );
    check(&mut m, "eu");
    let worse = checked(&mut m, "eu", HealthState::Unhealthy, "refused");
    assert_eq!(
        changes(&worse),
        [(Some(HealthState::Healthy), HealthState::Unhealthy)]
    );
    // The change follows the answer, caused by it.
    assert!(matches!(
        &worse[..],
        [
            Event::TargetHealthChecked { .. },
            Event::TargetHealthChanged { .. }
        ]
    ));
    // A late answer (its check no longer under way) only joins the history: no change.
    check(&mut m, "eu");
    let late = checked_report(&m, "eu");
    let name = TargetName::parse("eu").expect("valid");
    let pending = m.state.targets[&name]
        .pending_check
        .clone()
        .expect("pending");
    let deadline = Command::CheckDeadline {
        target: name,
        check: pending.check,
    };
    assert_eq!(
        changes(&when(&mut m, deadline).expect("ok")),
        [(Some(HealthState::Unhealthy), HealthState::Unavailable)]
    );
    assert_eq!(
        changes(&when(&mut m, Command::WorkerReport(late)).expect("ok")),
        []
    );
}

#[test]
fn a_repeated_run_after_the_task_ended_is_kept_in_the_history_without_changing_the_outcome() {
    let mut m = given(&[target("t1", &["web"], None)]);
    let (_, events) = deploy(&mut m, vec![step("a", &["web"], None)]);
    let task = planned(&events)[0].0;
    report(&mut m, task, "w1", started(task, 1));
    report(&mut m, task, "w1", ended(task, 1, Outcome::Succeeded));
    // The broker lost the ack in a crash and delivers the message again, as delivery 1.
    report(&mut m, task, "w2", started(task, 1));
    report(&mut m, task, "w2", ended(task, 1, Outcome::Cancelled));
    let t = &m.state.tasks[&task];
    assert_eq!(t.state, TaskState::Succeeded);
    assert_eq!(t.worker.as_ref().map(|w| w.as_str()), Some("w1"));
    let runs: Vec<(u32, TaskState, Option<&str>)> = t
        .attempts
        .iter()
        .map(|r| (r.delivery, r.state, r.worker.as_ref().map(|w| w.as_str())))
        .collect();
    assert_eq!(
        runs,
        [
            (1, TaskState::Succeeded, Some("w1")),
            (1, TaskState::Cancelled, Some("w2"))
        ]
    );
}

fn check(m: &mut Memory, name: &str) -> Vec<Event> {
    when(
        m,
        Command::CheckTarget {
            check: CheckId::new(),
            target: TargetName::parse(name).expect("valid"),
            trigger: shoal_shared::events::CheckTrigger::OnDemand,
            at: Timestamp(1_000),
            deadline_secs: 20,
        },
    )
    .expect("a target with an endpoint can be checked")
}

fn checked(m: &mut Memory, name: &str, health: HealthState, reason: &str) -> Vec<Event> {
    let target = TargetName::parse(name).expect("valid");
    let doc = &m.state.targets[&target];
    let (check, pool) = doc
        .pending_check
        .as_ref()
        .map_or((CheckId::new(), pool("default")), |p| {
            (p.check, p.pool.clone())
        });
    let msg = WorkerMessage {
        trace_parent: None,
        schema_version: 1,
        event_id: EventId::new(),
        worker: WorkerName::parse("w-eu").expect("valid"),
        pool,
        sent_at: Timestamp(2_000),
        body: WorkerBody::HealthChecked {
            check,
            target,
            task: None,
            state: health,
            reason: Some(reason.into()),
            duration_ms: 12,
        },
    };
    when(m, Command::WorkerReport(msg)).expect("reports are never rejected")
}

#[test]
fn a_check_runs_in_the_targets_default_pool_else_the_global_default_and_follows_a_pool_change() {
    let mut m = given(&[
        target("eu", &["web"], Some("eu-west")),
        target("plain", &["web"], None),
    ]);
    let routed = |events: &[Event]| match events {
        [
            Event::HealthCheckPlanned {
                pool, rule, probe, ..
            },
        ] => (pool.to_string(), *rule, probe.clone()),
        other => panic!("{other:?}"),
    };
    let (p, rule, probe) = routed(&check(&mut m, "eu"));
    assert_eq!((p.as_str(), rule), ("eu-west", PoolRule::TargetDefault));
    assert_eq!(
        probe,
        HealthCheck::Tcp {
            address: "eu:443".into(),
            timeout_secs: None
        }
    );
    let (p, rule, _) = routed(&check(&mut m, "plain"));
    assert_eq!((p.as_str(), rule), ("default", PoolRule::GlobalDefault));
    // A check already on its way to the same pool answers for a second request.
    assert_eq!(check(&mut m, "eu"), []);
    // After a change of default pool the next check goes to the new pool at once.
    when(
        &mut m,
        Command::UpdateTarget {
            name: TargetName::parse("eu").expect("valid"),
            update: TargetUpdate {
                default_pool: Some(Some(pool("us-east"))),
                ..Default::default()
            },
        },
    )
    .expect("valid update");
    let (p, rule, _) = routed(&check(&mut m, "eu"));
    assert_eq!((p.as_str(), rule), ("us-east", PoolRule::TargetDefault));
}

#[test]
fn results_become_the_targets_health_with_a_bounded_history() {
    let mut m = given(&[target("eu", &["web"], Some("eu-west"))]);
    let name = TargetName::parse("eu").expect("valid");
    assert_eq!(m.state.targets[&name].health_state(), HealthState::Unknown);
    check(&mut m, "eu");
    checked(&mut m, "eu", HealthState::HealthyWithWarnings, "disk 91%");
    let doc = &m.state.targets[&name];
    let h = doc.health.as_ref().expect("checked");
    assert_eq!(h.state, HealthState::HealthyWithWarnings);
    assert_eq!(h.worker.as_ref().map(|w| w.as_str()), Some("w-eu"));
    assert_eq!(h.pool.as_str(), "eu-west");
    assert_eq!(h.rule, Some(PoolRule::TargetDefault));
    assert_eq!(h.duration_ms, Some(12));
    assert!(doc.pending_check.is_none());
    for _ in 0..30 {
        check(&mut m, "eu");
        checked(&mut m, "eu", HealthState::Unhealthy, "refused");
    }
    // A late answer to a check no longer under way (called unavailable) joins the history
    // only.
    check(&mut m, "eu");
    let late = checked_report(&m, "eu");
    let deadline = Command::CheckDeadline {
        target: name.clone(),
        check: m.state.targets[&name]
            .pending_check
            .as_ref()
            .expect("pending")
            .check,
    };
    when(&mut m, deadline).expect("ok");
    when(&mut m, Command::WorkerReport(late)).expect("a late answer of the pool is taken");
    let doc = &m.state.targets[&name];
    assert_eq!(doc.health_state(), HealthState::Unavailable);
    assert_eq!(
        doc.health_history.last().map(|r| r.state),
        Some(HealthState::Healthy)
    );
    let doc = &m.state.targets[&name];
    assert_eq!(
        doc.health_history.len(),
        shoal_shared::health::HEALTH_HISTORY
    );
    assert_eq!(doc.health_state(), HealthState::Unavailable);
    // A report about a target nobody registered is refused.
    let msg = WorkerMessage {
        trace_parent: None,
        schema_version: 1,
        event_id: EventId::new(),
        worker: WorkerName::parse("w-eu").expect("valid"),
        pool: pool("eu-west"),
        sent_at: Timestamp(1),
        body: WorkerBody::HealthChecked {
            check: CheckId::new(),
            target: TargetName::parse("ghost").expect("valid"),
            task: None,
            state: HealthState::Healthy,
            reason: None,
            duration_ms: 1,
        },
    };
    let refused = when(&mut m, Command::WorkerReport(msg));
    assert!(
        matches!(&refused, Err(Rejection::Invalid(reason)) if reason.contains("unknown target \"ghost\"")),
        "{refused:?}"
    );
}

#[test]
fn a_check_no_worker_ran_before_its_deadline_makes_the_target_unavailable_naming_the_pool() {
    let mut m = given(&[target("eu", &["web"], Some("eu-west"))]);
    let name = TargetName::parse("eu").expect("valid");
    check(&mut m, "eu");
    let pending = m.state.targets[&name]
        .pending_check
        .clone()
        .expect("pending");
    // The deadline of another check changes nothing.
    let other = Command::CheckDeadline {
        target: name.clone(),
        check: CheckId::new(),
    };
    assert_eq!(when(&mut m, other).expect("ok"), []);
    let events = when(
        &mut m,
        Command::CheckDeadline {
            target: name.clone(),
            check: pending.check,
        },
    )
    .expect("ok");
    assert!(matches!(&events[..], [
            Event::HealthCheckUnavailable { reason, .. },
            Event::TargetHealthChanged { from: None, to: HealthState::Unavailable, .. },
        ] if reason.contains("pool \"eu-west\"")));
    let h = m.state.targets[&name].health.clone().expect("recorded");
    assert_eq!((h.state, h.worker), (HealthState::Unavailable, None));
    // A target without endpoint or check cannot be checked; an unknown one is not found.
    let mut bare = target("bare", &["web"], None);
    bare.endpoint = None;
    when(&mut m, Command::RegisterTarget(bare)).expect("valid");
    let refuse = |m: &mut Memory, name: &str| {
        when(
            m,
            Command::CheckTarget {
                check: CheckId::new(),
                target: TargetName::parse(name).expect("valid"),
                trigger: shoal_shared::events::CheckTrigger::Scheduled,
                at: Timestamp(1),
                deadline_secs: 1,
            },
        )
    };
    assert!(
        matches!(refuse(&mut m, "bare"), Err(Rejection::Conflict(e)) if e.contains("no health check"))
    );
    assert!(matches!(
        refuse(&mut m, "ghost"),
        Err(Rejection::NotFound(_))
    ));
}

fn deploy_with(
    m: &mut Memory,
    policy: UnhealthyTargets,
    steps: Vec<StepSpec>,
) -> (DeploymentId, Vec<Event>) {
    let id = DeploymentId::new();
    let spec = DeploymentSpec {
        project: "p".into(),
        environment: EnvironmentName::parse("prod").expect("valid"),
        steps,
        unhealthy_targets: policy,
    };
    let events = when(m, Command::CreateDeployment { id, spec }).expect("valid deployment");
    (id, events)
}

#[test]
fn an_unhealthy_target_stops_the_deployment_before_its_step_naming_it() {
    let mut m = given(&[
        target("good", &["web"], None),
        target("bad", &["web"], None),
    ]);
    check(&mut m, "bad");
    checked(&mut m, "bad", HealthState::Unhealthy, "connection refused");
    let (id, events) = deploy_with(
        &mut m,
        UnhealthyTargets::Fail,
        vec![step("a", &["web"], None)],
    );
    assert!(planned(&events).is_empty(), "{events:?}");
    let d = &m.state.deployments[&id];
    assert_eq!(d.state, DeploymentState::Failed);
    let reason = d.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("\"bad\" (connection refused)") && !reason.contains("good"),
        "{reason}"
    );
}

#[test]
fn skip_leaves_unhealthy_targets_out_and_runs_the_rest() {
    let mut m = given(&[
        target("good", &["web"], None),
        target("bad", &["web"], None),
    ]);
    check(&mut m, "bad");
    checked(&mut m, "bad", HealthState::Unhealthy, "connection refused");
    let (id, events) = deploy_with(
        &mut m,
        UnhealthyTargets::Skip,
        vec![step("a", &["web"], None), step("b", &["web"], None)],
    );
    let skipped: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::TargetSkipped { target, reason, .. } => Some(format!("{target}: {reason}")),
            _ => None,
        })
        .collect();
    assert_eq!(
        skipped,
        ["bad: unhealthy before step \"a\": connection refused"]
    );
    let tasks = planned(&events);
    assert_eq!(tasks.len(), 1);
    finish(&mut m, tasks[0].0, Outcome::Succeeded, 0);
    // Step b plans only the healthy target too, and the deployment succeeds.
    let b: Vec<TaskId> = m.state.deployments[&id].steps[1].tasks.clone();
    let runnable: Vec<&TaskId> = b
        .iter()
        .filter(|t| m.state.tasks[*t].state != TaskState::Skipped)
        .collect();
    assert_eq!(runnable.len(), 1);
    let t = *runnable[0];
    finish(&mut m, t, Outcome::Succeeded, 0);
    assert_eq!(m.state.deployments[&id].state, DeploymentState::Succeeded);
}

#[test]
fn a_health_check_step_that_finds_a_target_unhealthy_skips_it_or_fails() {
    for policy in [UnhealthyTargets::Skip, UnhealthyTargets::Fail] {
        let mut m = given(&[
            target("good", &["web"], None),
            target("bad", &["web"], None),
        ]);
        let mut hc = step("recheck", &["web"], None);
        hc.action = Action::HealthCheck;
        let (id, events) = deploy_with(&mut m, policy, vec![hc, step("deploy", &["web"], None)]);
        let tasks = planned(&events);
        let bad = tasks
            .iter()
            .find(|(t, _, _)| m.state.tasks[t].target.as_ref().map(|n| n.as_str()) == Some("bad"))
            .map(|(t, _, _)| *t)
            .expect("a check of bad");
        let good = tasks.iter().map(|p| p.0).find(|t| *t != bad).expect("good");
        finish(&mut m, good, Outcome::Succeeded, 0);
        let events = finish(&mut m, bad, Outcome::Failed, 1);
        let d = &m.state.deployments[&id];
        match policy {
            UnhealthyTargets::Skip => {
                assert!(
                    events
                        .iter()
                        .any(|e| matches!(e, Event::TargetSkipped { target, .. } if target.as_str() == "bad")),
                    "{events:?}"
                );
                assert_eq!(d.state, DeploymentState::Running);
                assert_eq!(d.steps[0].state, StepState::Succeeded);
                let deploy_states: Vec<TaskState> = d.steps[1]
                    .tasks
                    .iter()
                    .map(|t| m.state.tasks[t].state)
                    .collect();
                assert!(
                    deploy_states.contains(&TaskState::Skipped),
                    "{deploy_states:?}"
                );
                assert!(
                    deploy_states.contains(&TaskState::Planned),
                    "{deploy_states:?}"
                );
            }
            UnhealthyTargets::Fail => {
                assert_eq!(d.state, DeploymentState::Failed);
                assert!(d.reason.clone().unwrap_or_default().contains("\"bad\""));
            }
        }
    }
}

#[test]
fn a_repeat_of_an_attempt_given_up_for_a_retry_is_recorded_as_its_own_run() {
    let mut m = given(&[target("t1", &["web"], None)]);
    let mut s = step("a", &["web"], None);
    s.retries = 1;
    let (_, events) = deploy(&mut m, vec![s]);
    let task = planned(&events)[0].0;
    report(&mut m, task, "w1", started(task, 1));
    report(&mut m, task, "w1", ended(task, 1, Outcome::Failed));
    when(&mut m, Command::RetryDue { task, attempt: 1 }).expect("ok");
    // Attempt 2 is planned; a broker that lost its ack hands attempt 1 to w2.
    let msg = WorkerMessage {
        trace_parent: None,
        schema_version: 1,
        event_id: EventId::new(),
        worker: WorkerName::parse("w2").expect("valid"),
        pool: pool("default"),
        sent_at: Timestamp(60),
        body: WorkerBody::TaskStarted {
            deployment: m.state.tasks[&task].deployment,
            task,
            attempt: 1,
            delivery: 1,
        },
    };
    when(&mut m, Command::WorkerReport(msg.clone())).expect("ok");
    let t = &m.state.tasks[&task];
    assert_eq!((t.attempt, t.state), (2, TaskState::Planned));
    let runs: Vec<(u32, TaskState, Option<&str>)> = t
        .attempts
        .iter()
        .map(|r| (r.attempt, r.state, r.worker.as_ref().map(|w| w.as_str())))
        .collect();
    assert_eq!(
        runs,
        [
            (1, TaskState::Failed, Some("w1")),
            (2, TaskState::Planned, None),
            (1, TaskState::Running, Some("w2"))
        ]
    );
    // Its end closes that run and nothing else.
    let end = WorkerMessage {
        trace_parent: None,
        event_id: EventId::new(),
        body: WorkerBody::TaskFinished {
            deployment: t.deployment,
            task,
            attempt: 1,
            delivery: 1,
            outcome: Outcome::Cancelled,
            exit_code: None,
            reason: None,
        },
        ..msg
    };
    when(&mut m, Command::WorkerReport(end)).expect("ok");
    let t = &m.state.tasks[&task];
    assert_eq!((t.attempt, t.state), (2, TaskState::Planned));
    assert_eq!(t.attempts[2].state, TaskState::Cancelled);
}

#[test]
fn the_same_delivery_from_another_worker_while_running_is_a_new_run() {
    let mut m = given(&[target("t1", &["web"], None)]);
    let (_, events) = deploy(&mut m, vec![step("a", &["web"], None)]);
    let task = planned(&events)[0].0;
    report(&mut m, task, "w1", started(task, 1));
    report(&mut m, task, "w2", started(task, 1));
    let t = &m.state.tasks[&task];
    let runs: Vec<(TaskState, Option<&str>)> = t
        .attempts
        .iter()
        .map(|r| (r.state, r.worker.as_ref().map(|w| w.as_str())))
        .collect();
    assert_eq!(
        runs,
        [
            (TaskState::Lost, Some("w1")),
            (TaskState::Running, Some("w2"))
        ]
    );
}

#[test]
fn a_health_check_step_takes_no_pool_and_needs_targets_with_probes() {
    let mut m = given(&[target("eu", &["web"], Some("eu-west"))]);
    let spec = |s: StepSpec| DeploymentSpec {
        project: "p".into(),
        environment: EnvironmentName::parse("prod").expect("valid"),
        steps: vec![s],
        unhealthy_targets: UnhealthyTargets::Fail,
    };
    let mut pinned = step("recheck", &["web"], Some("us-east"));
    pinned.action = Action::HealthCheck;
    let e = when(
        &mut m,
        Command::CreateDeployment {
            id: DeploymentId::new(),
            spec: spec(pinned),
        },
    );
    assert!(matches!(e, Err(Rejection::Invalid(e)) if e.starts_with("steps[0].pool")));
    let mut bare = target("bare", &["db"], None);
    bare.endpoint = None;
    when(&mut m, Command::RegisterTarget(bare)).expect("valid");
    let mut s = step("recheck", &["db"], None);
    s.action = Action::HealthCheck;
    let e = when(
        &mut m,
        Command::CreateDeployment {
            id: DeploymentId::new(),
            spec: spec(s),
        },
    );
    assert!(matches!(e, Err(Rejection::Invalid(e)) if e.contains("\"bare\" has no health check")));
}

#[test]
fn a_failing_health_check_step_waits_for_its_other_checks_and_names_every_unhealthy_target() {
    let mut m = given(&[target("a", &["web"], None), target("b", &["web"], None)]);
    let mut hc = step("recheck", &["web"], None);
    hc.action = Action::HealthCheck;
    let (id, events) = deploy_with(&mut m, UnhealthyTargets::Fail, vec![hc]);
    let tasks: Vec<TaskId> = planned(&events).iter().map(|p| p.0).collect();
    finish(&mut m, tasks[0], Outcome::Failed, 1);
    assert_eq!(m.state.deployments[&id].state, DeploymentState::Running);
    finish(&mut m, tasks[1], Outcome::Failed, 1);
    let d = &m.state.deployments[&id];
    assert_eq!(d.state, DeploymentState::Failed);
    let reason = d.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("\"a\"") && reason.contains("\"b\""),
        "{reason}"
    );
}

#[test]
fn a_deployment_id_already_used_is_refused() {
    let mut m = given(&[target("web-1", &["web"], None)]);
    let (id, _) = deploy(&mut m, vec![step("a", &["web"], None)]);
    let spec = m.state.deployments[&id].spec.clone();
    assert!(matches!(
        when(&mut m, Command::CreateDeployment { id, spec }),
        Err(Rejection::Conflict(e)) if e.contains("already exists")
    ));
}

fn worker(s: &str) -> WorkerName {
    WorkerName::parse(s).expect("valid")
}

fn remove_pool(m: &mut Memory, name: &str, online: &[&str]) -> Result<Vec<Event>, Rejection> {
    let online = online.iter().map(|w| worker(w)).collect();
    when(
        m,
        Command::RemovePool {
            name: pool(name),
            online,
        },
    )
}

fn remove_target(m: &mut Memory, name: &str) -> Result<Vec<Event>, Rejection> {
    when(
        m,
        Command::RemoveTarget(TargetName::parse(name).expect("valid")),
    )
}

#[test]
fn a_pool_in_use_is_not_removed_and_the_refusal_names_every_use() {
    let mut m = given(&[target("shop-eu", &["web"], Some("eu-west"))]);
    let (d, _) = deploy(&mut m, vec![step("s", &[], Some("eu-west"))]);
    let before = m.events.len();

    let e = remove_pool(&mut m, "eu-west", &["eu-west-1"]);

    let Err(Rejection::Conflict(e)) = e else {
        panic!("expected a conflict, got {e:?}");
    };
    assert!(e.contains("pool \"eu-west\" is in use"), "{e}");
    assert!(e.contains("targets shop-eu"), "{e}");
    assert!(e.contains("workers online: eu-west-1"), "{e}");
    assert!(e.contains(&d.to_string()), "{e}");
    assert_eq!(m.events.len(), before);
}

#[test]
fn the_global_default_pool_and_an_unknown_pool_are_not_removed() {
    let mut m = given(&[]);

    let default = remove_pool(&mut m, "default", &[]);
    let unknown = remove_pool(&mut m, "ap-south", &[]);

    assert!(
        matches!(&default, Err(Rejection::Conflict(e)) if e.contains("global default pool")),
        "{default:?}"
    );
    assert!(
        matches!(&unknown, Err(Rejection::NotFound(e)) if e.contains("known: default, eu-west, us-east")),
        "{unknown:?}"
    );
}

#[test]
fn a_pool_nothing_uses_any_more_is_removed_and_its_name_can_be_registered_again() {
    let mut m = given(&[target("shop-eu", &["web"], Some("eu-west"))]);
    let (d, events) = deploy(&mut m, vec![step("s", &[], Some("eu-west"))]);
    let (task, ..) = planned(&events)[0].clone();
    finish(&mut m, task, Outcome::Succeeded, 0);
    assert!(!m.state.active.contains(&d));
    when(
        &mut m,
        Command::UpdateTarget {
            name: TargetName::parse("shop-eu").expect("valid"),
            update: TargetUpdate {
                default_pool: Some(None),
                ..TargetUpdate::default()
            },
        },
    )
    .expect("valid update");

    let removed = remove_pool(&mut m, "eu-west", &[]).expect("nothing uses it");

    assert_eq!(
        removed,
        vec![Event::PoolRemoved {
            pool: pool("eu-west")
        }]
    );
    assert!(!m.state.pools.contains_key(&pool("eu-west")));
    let step_there = when(
        &mut m,
        Command::CreateDeployment {
            id: DeploymentId::new(),
            spec: DeploymentSpec {
                project: "p".into(),
                environment: EnvironmentName::parse("prod").expect("valid"),
                steps: vec![step("s", &[], Some("eu-west"))],
                unhealthy_targets: UnhealthyTargets::Fail,
            },
        },
    );
    assert!(
        matches!(&step_there, Err(Rejection::Invalid(e)) if e.contains("eu-west")),
        "{step_there:?}"
    );
    when(
        &mut m,
        Command::RegisterPool(Pool {
            name: pool("eu-west"),
            region: None,
            description: None,
        }),
    )
    .expect("the name is free again");
}

#[test]
fn a_target_an_unfinished_deployment_uses_is_not_removed_and_the_refusal_names_it() {
    let mut m = given(&[target("shop-eu", &["web"], None)]);
    let (d, _) = deploy(&mut m, vec![step("s", &["web"], None)]);

    let e = remove_target(&mut m, "shop-eu");

    assert!(
        matches!(&e, Err(Rejection::Conflict(e))
            if e.contains("target \"shop-eu\" is in use") && e.contains(&d.to_string())),
        "{e:?}"
    );
    let unknown = remove_target(&mut m, "nope");
    assert!(
        matches!(&unknown, Err(Rejection::NotFound(e)) if e.contains("known: shop-eu")),
        "{unknown:?}"
    );
}

#[test]
fn a_target_no_unfinished_deployment_uses_is_removed_and_its_late_check_answer_is_ignored() {
    let mut m = given(&[target("shop-eu", &["web"], None)]);
    let (_, events) = deploy(&mut m, vec![step("s", &["web"], None)]);
    let (task, ..) = planned(&events)[0].clone();
    finish(&mut m, task, Outcome::Succeeded, 0);
    check(&mut m, "shop-eu");
    let late = checked_report(&m, "shop-eu");

    let removed = remove_target(&mut m, "shop-eu").expect("nothing uses it");

    let name = TargetName::parse("shop-eu").expect("valid");
    assert_eq!(
        removed,
        vec![Event::TargetRemoved {
            target: name.clone()
        }]
    );
    assert!(!m.state.targets.contains_key(&name));
    when(&mut m, Command::WorkerReport(late)).expect_err("an answer about no target is refused");
    assert!(!m.state.targets.contains_key(&name));
    let roles = deploy_result(&mut m);
    assert!(
        matches!(&roles, Err(Rejection::Invalid(_))),
        "a removed target is not chosen: {roles:?}"
    );
}

/// A worker's healthy answer to the target's pending check.
fn checked_report(m: &Memory, name: &str) -> WorkerMessage {
    let target = TargetName::parse(name).expect("valid");
    let p = m.state.targets[&target]
        .pending_check
        .clone()
        .expect("a check is pending");
    WorkerMessage {
        trace_parent: None,
        schema_version: 1,
        event_id: EventId::new(),
        worker: worker("w-eu"),
        pool: p.pool,
        sent_at: Timestamp(2_000),
        body: WorkerBody::HealthChecked {
            check: p.check,
            target,
            task: None,
            state: HealthState::Healthy,
            reason: None,
            duration_ms: 12,
        },
    }
}

fn deploy_result(m: &mut Memory) -> Result<Vec<Event>, Rejection> {
    when(
        m,
        Command::CreateDeployment {
            id: DeploymentId::new(),
            spec: DeploymentSpec {
                project: "p".into(),
                environment: EnvironmentName::parse("prod").expect("valid"),
                steps: vec![step("s", &["web"], None)],
                unhealthy_targets: UnhealthyTargets::Fail,
            },
        },
    )
}

#[test]
fn a_target_without_a_probe_is_told_how_to_set_one_with_the_cli() {
    let mut bare = target("bare", &["web"], None);
    bare.endpoint = None;
    let mut m = given(&[bare]);

    let e = when(
        &mut m,
        Command::CheckTarget {
            check: CheckId::new(),
            target: TargetName::parse("bare").expect("valid"),
            trigger: shoal_shared::events::CheckTrigger::OnDemand,
            at: Timestamp(1_000),
            deadline_secs: 20,
        },
    );

    assert!(
        matches!(&e, Err(Rejection::Conflict(e)) if e.contains("shoal target set-check bare --tcp")),
        "{e:?}"
    );
}

#[test]
fn a_target_whose_checks_are_switched_off_no_longer_stops_deployments() {
    let mut m = given(&[target("shop-eu", &["web"], None)]);
    check(&mut m, "shop-eu");
    checked(&mut m, "shop-eu", HealthState::Unhealthy, "no such host");
    let name = TargetName::parse("shop-eu").expect("valid");
    when(
        &mut m,
        Command::UpdateTarget {
            name: name.clone(),
            update: TargetUpdate {
                health_check: Some(Some(HealthCheck::Off)),
                ..TargetUpdate::default()
            },
        },
    )
    .expect("valid update");

    let (d, events) = deploy(&mut m, vec![step("s", &["web"], None)]);

    assert_eq!(m.state.targets[&name].health_state(), HealthState::Unknown);
    assert_eq!(m.state.targets[&name].target.probe(), None);
    assert_eq!(planned(&events).len(), 1, "{events:?}");
    assert_ne!(m.state.deployments[&d].state, DeploymentState::Failed);
}

#[test]
fn a_check_of_a_target_whose_checks_are_off_is_refused_saying_so() {
    let mut off = target("shop-eu", &["web"], None);
    off.health_check = Some(HealthCheck::Off);
    let mut m = given(&[off]);

    let e = when(
        &mut m,
        Command::CheckTarget {
            check: CheckId::new(),
            target: TargetName::parse("shop-eu").expect("valid"),
            trigger: shoal_shared::events::CheckTrigger::OnDemand,
            at: Timestamp(1_000),
            deadline_secs: 20,
        },
    );

    assert!(
        matches!(&e, Err(Rejection::Conflict(e))
            if e.contains("checks of target \"shop-eu\" are off")
                && e.contains("shoal target set-check shop-eu --tcp")),
        "{e:?}"
    );
    assert!(m.events.is_empty());
}

#[path = "report_tests.rs"]
mod report_tests;

// ---------------------------------------------------------------------------------------
// Sensitive variables

fn pool_key(letter: char) -> shoal_shared::secret::PoolKey {
    shoal_shared::secret::PoolKey::parse(format!("X{}", letter.to_string().repeat(55)))
        .expect("valid form")
}

fn secret_step(pool_name: &str) -> StepSpec {
    let mut s = step("migrate", &[], Some(pool_name));
    let sealed = shoal_shared::secret::Sealed {
        to: shoal_shared::secret::SealedFor::Planner,
        key: "k1".into(),
        from: String::new(),
        data: vec![7; 40],
    };
    s.sensitive_variables.insert("DB_PASSWORD".into(), sealed);
    s
}

#[test]
fn a_step_with_sensitive_variables_is_refused_for_a_pool_without_a_key() {
    let mut m = given(&[target("web-1", &["web"], None)]);
    let spec = DeploymentSpec {
        project: "p".into(),
        environment: EnvironmentName::parse("prod").expect("valid"),
        steps: vec![secret_step("eu-west")],
        unhealthy_targets: UnhealthyTargets::Fail,
    };
    let id = DeploymentId::new();
    let refused = when(&mut m, Command::CreateDeployment { id, spec });
    let Err(Rejection::Invalid(msg)) = refused else {
        panic!("not refused as invalid: {refused:?}");
    };
    assert!(msg.starts_with("steps[0].sensitive_variables: pool \"eu-west\" has no key"));
    assert!(msg.contains("shoal-planner pool-keygen --pool eu-west"));
    assert!(m.events.is_empty());
}

#[test]
fn with_a_pool_key_the_task_message_carries_the_values_as_the_log_holds_them() {
    let mut m = given(&[target("web-1", &["web"], None)]);
    let set = Command::SetPoolKey {
        pool: pool("eu-west"),
        key: pool_key('A'),
    };
    let events = when(&mut m, set.clone()).expect("key set");
    assert!(matches!(&events[..], [Event::PoolKeySet { pool: p, .. }] if p.as_str() == "eu-west"));
    assert_eq!(
        when(&mut m, set).expect("same key"),
        vec![],
        "same key: no event"
    );
    let step = secret_step("eu-west");
    let (id, _) = deploy(&mut m, vec![step.clone()]);
    let task = m.state.deployments[&id].steps[0].tasks[0];
    let msg = super::effects::task_message(&m.state, &task, 1, None).expect("planned");
    assert_eq!(msg.sensitive_variables, step.sensitive_variables);
    assert_eq!(msg.pool, pool("eu-west"));
}

#[test]
fn a_pool_key_is_set_only_on_a_known_pool_and_a_new_one_rotates_it() {
    let mut m = given(&[]);
    let unknown = Command::SetPoolKey {
        pool: pool("nowhere"),
        key: pool_key('A'),
    };
    assert!(matches!(
        when(&mut m, unknown),
        Err(Rejection::NotFound(msg)) if msg.contains("unknown pool \"nowhere\"")
    ));
    for letter in ['A', 'B'] {
        let set = Command::SetPoolKey {
            pool: pool("us-east"),
            key: pool_key(letter),
        };
        when(&mut m, set).expect("set");
    }
    assert_eq!(
        m.state.pools[&pool("us-east")].sealing_key,
        Some(pool_key('B'))
    );
}

fn manifest(id: &str, version: &str, content: &[u8]) -> shoal_shared::package::Manifest {
    use shoal_shared::package::{ChunkRef, Manifest, Sha256};
    Manifest {
        id: PackageId::parse(id).expect("valid"),
        version: version.parse().expect("valid"),
        size: content.len() as u64,
        sha256: Sha256::of(content),
        chunks: vec![ChunkRef {
            sha256: Sha256::of(content),
            size: u32::try_from(content.len()).expect("small"),
        }],
    }
}

fn record(manifest: shoal_shared::package::Manifest) -> Command {
    let manifest_sha256 = shoal_shared::package::encode_manifest(&manifest)
        .expect("encodes")
        .1;
    Command::RecordPackage {
        manifest,
        manifest_sha256,
        keep: 0,
    }
}

#[test]
fn a_package_version_is_recorded_once_and_never_changes() {
    let mut m = given(&[]);
    let v1 = manifest("web", "1.2.3", b"first");
    let events = when(&mut m, record(v1.clone())).expect("new version");
    assert!(matches!(&events[..], [Event::PackagePushed { manifest, .. }] if *manifest == v1));
    assert_eq!(
        when(&mut m, record(v1.clone())).expect("the same bytes again"),
        vec![],
        "pushing the same bytes again records nothing"
    );
    let other = manifest("web", "1.2.3", b"other bytes");
    let Err(Rejection::Conflict(why)) = when(&mut m, record(other)) else {
        panic!("other bytes under a recorded version must be refused");
    };
    assert!(
        why.contains("web 1.2.3") && why.contains("new version"),
        "{why}"
    );
    when(&mut m, record(manifest("web", "1.10.0", b"ten"))).expect("new");
    when(&mut m, record(manifest("api", "0.1.0", b"api"))).expect("new");
    let web = PackageId::parse("web").expect("valid");
    let versions: Vec<String> = m
        .state
        .package_versions(&web)
        .map(|d| d.manifest.version.to_string())
        .collect();
    assert_eq!(
        versions,
        ["1.2.3", "1.10.0"],
        "semantic order, one package only"
    );
}

#[test]
fn a_manifest_whose_chunks_do_not_add_up_is_refused() {
    let mut m = given(&[]);
    let mut bad = manifest("web", "1.0.0", b"content");
    bad.size += 1;
    let Err(Rejection::Invalid(why)) = when(&mut m, record(bad)) else {
        panic!("refused");
    };
    assert!(why.contains("add up"), "{why}");
}

#[test]
fn removing_a_version_names_the_versions_there_are() {
    let mut m = given(&[]);
    when(&mut m, record(manifest("web", "1.0.0", b"a"))).expect("new");
    let id = PackageId::parse("web").expect("valid");
    let Err(Rejection::NotFound(why)) = when(
        &mut m,
        Command::RemovePackage {
            id: id.clone(),
            version: "2.0.0".parse().expect("valid"),
        },
    ) else {
        panic!("no such version");
    };
    assert!(why.contains("1.0.0"), "{why}");
    let events = when(
        &mut m,
        Command::RemovePackage {
            id: id.clone(),
            version: "1.0.0".parse().expect("valid"),
        },
    )
    .expect("removed");
    assert!(matches!(&events[..], [Event::PackageRemoved { .. }]));
    assert_eq!(m.state.package_versions(&id).count(), 0);
    // A removed version never comes back with other bytes; with the same ones it may.
    let Err(Rejection::Conflict(_)) = when(&mut m, record(manifest("web", "1.0.0", b"b"))) else {
        panic!("other bytes under a removed version must be refused");
    };
    when(&mut m, record(manifest("web", "1.0.0", b"a"))).expect("the same bytes again");
    assert_eq!(m.state.package_versions(&id).count(), 1);
}

#[test]
fn a_package_step_records_its_version_carries_its_digests_and_holds_the_version() {
    let mut m = given(&[target("web-1", &["web"], None)]);
    let v1 = manifest("web", "1.2.0", b"one");
    let v2 = manifest("web", "1.3.0", b"two");
    when(&mut m, record(v1)).expect("new");
    when(&mut m, record(v2.clone())).expect("new");
    let mut s = step("deploy", &["web"], None);
    s.action = Action::DeployPackage {
        package: PackageRef {
            id: PackageId::parse("web").expect("valid"),
            version: "^1.2".into(),
        },
        script: "./install.sh".into(),
        shell: None,
    };
    let (id, events) = deploy(&mut m, vec![s]);
    let Some(Event::DeploymentCreated { steps, .. }) = events.first() else {
        panic!("{events:?}");
    };
    let resolved = steps[0].package.as_ref().expect("recorded");
    assert_eq!(
        resolved.version.to_string(),
        "1.3.0",
        "the newest in the range"
    );
    let (task, ..) = planned(&events)[0].clone();
    let msg = super::effects::task_message(&m.state, &task, 1, None).expect("a message");
    let spec = msg.package.expect("the task carries its package");
    let digest = shoal_shared::package::encode_manifest(&v2)
        .expect("encodes")
        .1;
    assert_eq!(
        (spec.version.to_string(), spec.sha256, spec.manifest_sha256),
        ("1.3.0".to_owned(), v2.sha256, digest)
    );
    let remove = Command::RemovePackage {
        id: PackageId::parse("web").expect("valid"),
        version: "1.3.0".parse().expect("valid"),
    };
    let Err(Rejection::Conflict(why)) = when(&mut m, remove.clone()) else {
        panic!("a version an unfinished deployment deploys must stay");
    };
    assert!(why.contains(&id.to_string()), "{why}");
    finish(&mut m, task, Outcome::Succeeded, 0);
    when(&mut m, remove).expect("removable once the deployment ended");
}

#[test]
fn a_retention_keeps_the_newest_versions_and_every_one_in_use() {
    let mut m = given(&[target("web-1", &["web"], None)]);
    let keep2 = |version: &str, content: &[u8]| {
        let Command::RecordPackage {
            manifest,
            manifest_sha256,
            ..
        } = record(manifest("web", version, content))
        else {
            unreachable!()
        };
        Command::RecordPackage {
            manifest,
            manifest_sha256,
            keep: 2,
        }
    };
    when(&mut m, keep2("1.0.0", b"a")).expect("new");
    // 1.0.0 is deployed by an unfinished deployment: it stays whatever the retention.
    let mut s = step("deploy", &["web"], None);
    s.action = Action::DeployPackage {
        package: PackageRef {
            id: PackageId::parse("web").expect("valid"),
            version: "1.0.0".into(),
        },
        script: "true".into(),
        shell: None,
    };
    let (_, events) = deploy(&mut m, vec![s]);
    when(&mut m, keep2("1.1.0", b"b")).expect("new");
    when(&mut m, keep2("1.2.0", b"c")).expect("new");
    let events_now = when(&mut m, keep2("1.3.0", b"d")).expect("new");
    let removed: Vec<String> = events_now
        .iter()
        .filter_map(|e| match e {
            Event::PackageRemoved { version, .. } => Some(version.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        removed,
        ["1.1.0"],
        "older than the newest two and not in use"
    );
    let web = PackageId::parse("web").expect("valid");
    let left: Vec<String> = (m.state.package_versions(&web))
        .map(|d| d.manifest.version.to_string())
        .collect();
    assert_eq!(left, ["1.0.0", "1.2.0", "1.3.0"]);
    // Once its deployment ends, the next push lets it go.
    let (task, ..) = planned(&events)[0].clone();
    finish(&mut m, task, Outcome::Succeeded, 0);
    let events_now = when(&mut m, keep2("1.4.0", b"e")).expect("new");
    let removed = events_now
        .iter()
        .filter(|e| matches!(e, Event::PackageRemoved { .. }))
        .count();
    assert_eq!(removed, 2, "1.0.0 and 1.2.0: {events_now:?}");
}

#[test]
fn the_feed_keeps_the_objects_of_the_versions_in_it_and_is_swept_when_one_leaves() {
    use shoal_shared::package::{ChunkRef, Sha256, chunk_object, encode_manifest, manifest_object};
    let mut m = given(&[]);
    let chunk = |b: &[u8]| ChunkRef {
        sha256: Sha256::of(b),
        size: u32::try_from(b.len()).expect("small"),
    };
    let two = |version: &str, tail: &[u8]| {
        let mut v = manifest("web", version, b"shared");
        v.chunks.push(chunk(tail));
        v.size += tail.len() as u64;
        v.sha256 = Sha256::of(&[b"shared".as_slice(), tail].concat());
        v
    };
    let (v1, v2) = (two("1.0.0", b"one"), two("2.0.0", b"two"));
    when(&mut m, record(v1.clone())).expect("new");
    when(&mut m, record(v2.clone())).expect("new");
    let events = when(
        &mut m,
        Command::RemovePackage {
            id: PackageId::parse("web").expect("valid"),
            version: "1.0.0".parse().expect("valid"),
        },
    )
    .expect("removed");

    let keep = super::package::feed_objects(m.state.packages.values());
    let digest = |v| manifest_object(&encode_manifest(v).expect("encodes").1);
    let want: std::collections::BTreeSet<String> = [
        chunk_object(&Sha256::of(b"shared")),
        chunk_object(&Sha256::of(b"two")),
        digest(&v2),
    ]
    .into();
    assert_eq!(keep, want, "a chunk 1.0.0 shares with 2.0.0 stays");
    assert!(!keep.contains(&digest(&v1)));
    let mut effects = Vec::new();
    super::effects::effects_of(
        &m.state,
        &events[0],
        Timestamp(1_700_000_000_000),
        &mut effects,
    );
    assert!(
        matches!(&effects[..], [super::effects::Effect::SweepFeed]),
        "{effects:?}"
    );
    let at_start = super::effects::pending_effects(&m.state, Timestamp(1_700_000_000_000));
    assert!(
        (at_start.iter()).any(|e| matches!(e, super::effects::Effect::SweepFeed)),
        "a push cut off by a stop is swept at the next start"
    );
}

#[test]
fn an_idempotency_key_makes_one_deployment_and_refuses_another_request() {
    use shoal_shared::events::IdempotencyKey;
    let mut m = given(&[target("t1", &["web"], None)]);
    let spec = DeploymentSpec {
        project: "p".into(),
        environment: EnvironmentName::parse("prod").expect("valid"),
        steps: vec![step("a", &["web"], None)],
        unhealthy_targets: UnhealthyTargets::Fail,
    };
    let key = |request: &str| IdempotencyKey {
        key: "token:ci/k1".into(),
        request: request.into(),
    };
    let create = |key: IdempotencyKey, at: i64| Command::Once {
        key,
        now: Timestamp(at),
        inner: Box::new(Command::CreateDeployment {
            id: DeploymentId::new(),
            spec: spec.clone(),
        }),
    };
    let events = when(&mut m, create(key("aa"), 1_000)).expect("new key");
    let Some(Event::DeploymentCreated { deployment, .. }) = events.first() else {
        panic!("created: {events:?}")
    };
    let first = *deployment;
    assert!(
        matches!(events.last(), Some(Event::IdempotencyKeyUsed { made, .. }) if *made == format!("deployment/{first}"))
    );
    assert_eq!(
        m.state.idempotency["token:ci/k1"].made,
        format!("deployment/{first}")
    );
    // Again: the first deployment, nothing new.
    assert!(matches!(
        when(&mut m, create(key("aa"), 2_000)),
        Err(Rejection::Replayed(made)) if made == format!("deployment/{first}")
    ));
    // Another request with the key: refused, naming the key and what it made.
    let refused = when(&mut m, create(key("bb"), 2_000));
    assert!(
        matches!(&refused, Err(Rejection::Conflict(e)) if e.contains("\"k1\"") && e.contains(&first.to_string())),
        "{refused:?}"
    );
    // A target too: the same key and request again is the target it made.
    let target_key = IdempotencyKey {
        key: "token:ci/t".into(),
        request: "tt".into(),
    };
    let register = Command::Once {
        key: target_key,
        now: Timestamp(3_000),
        inner: Box::new(Command::RegisterTarget(target("t2", &["web"], None))),
    };
    when(&mut m, register.clone()).expect("new key");
    assert!(
        matches!(when(&mut m, register), Err(Rejection::Replayed(made)) if made == "target/t2")
    );
    // Keys are forgotten a day after their use (by the records' times), as later keys come.
    let day = i64::try_from(super::idempotency::KEEP_MS).unwrap_or(0);
    let mut state = State::default();
    let mut changes = Changes::default();
    let use_key = |state: &mut State, changes: &mut Changes, k: &str, at: i64| {
        state.key_used(k, "aa", "deployment/x", Timestamp(at), changes);
    };
    use_key(&mut state, &mut changes, "a", 0);
    use_key(&mut state, &mut changes, "b", 10);
    use_key(&mut state, &mut changes, "c", day + 5);
    assert_eq!(state.idempotency.keys().collect::<Vec<_>>(), ["b", "c"]);
    assert!(
        changes
            .docs
            .contains(&super::DocKey::Idempotency("a".into()))
    );
    use_key(&mut state, &mut changes, "d", 2 * day + 6);
    assert_eq!(state.idempotency.keys().collect::<Vec<_>>(), ["d"]);
    assert_eq!(state.idempotency_expiry.len(), 1);
}
