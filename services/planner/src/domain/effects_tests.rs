//! Given/when/then tests of the effect decisions: a state built through `domain::handle`,
//! then a command at a known time, then the effects its events ask for (found by what they
//! are, never by position).

use super::*;
use crate::domain::decide::TargetUpdate;
use crate::domain::{Changes, EventSink, NewEvent, Rejection, handle};
use shoal_shared::events::{CheckTrigger, Envelope};
use shoal_shared::messages::{WorkerBody, WorkerMessage};
use shoal_shared::*;
use std::convert::Infallible;

/// The writer in miniature: applies every event at `now` and collects what it asks for.
struct World {
    state: State,
    now: Timestamp,
    seq: u64,
    effects: Vec<Effect>,
}

impl EventSink for World {
    type Error = Infallible;
    fn state(&self) -> &State {
        &self.state
    }
    fn append(&mut self, e: NewEvent, _: Option<EventId>) -> Result<u64, Infallible> {
        self.seq += 1;
        let env = Envelope {
            seq: self.seq,
            event_id: e.id,
            time: self.now,
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
        effects_of(&self.state, &e.event, self.now, &mut self.effects);
        Ok(self.seq)
    }
}

const T0: Timestamp = Timestamp(1_700_000_000_000);

fn pool(s: &str) -> PoolName {
    PoolName::parse(s).expect("valid")
}

fn name(s: &str) -> TargetName {
    TargetName::parse(s).expect("valid")
}

fn target(n: &str, endpoint: Option<&str>) -> Target {
    Target {
        name: name(n),
        kind: TargetKind::AzureWebApp,
        environment: EnvironmentName::parse("prod").expect("valid"),
        roles: [RoleName::parse("web").expect("valid")].into(),
        endpoint: endpoint.map(str::to_owned),
        default_pool: None,
        health_check: None,
        health_interval_secs: None,
    }
}

fn step(retries: u32) -> StepSpec {
    StepSpec {
        name: "a".into(),
        action: Action::Noop,
        roles: [RoleName::parse("web").expect("valid")].into(),
        pool: None,
        timeout_secs: None,
        max_parallel: None,
        variables: Default::default(),
        sensitive_variables: Default::default(),
        retries,
        retry_backoff_secs: Some(3),
        max_attempts: None,
    }
}

/// Given: the default pool and targets `t1` and `t2` (with endpoints, so with probes).
fn given() -> World {
    let mut w = World {
        state: State::default(),
        now: T0,
        seq: 0,
        effects: vec![],
    };
    when(&mut w, Command::EnsureDefaultPool).expect("valid");
    for t in ["t1", "t2"] {
        let endpoint = format!("https://{t}.example");
        when(&mut w, Command::RegisterTarget(target(t, Some(&endpoint)))).expect("valid");
    }
    w
}

/// When: a command at the world's time; then: the effects of its events.
fn when(w: &mut World, cmd: Command) -> Result<Vec<Effect>, Rejection> {
    w.effects.clear();
    match handle(w, &pool("default"), &cmd) {
        Ok(r) => r.map(|_| std::mem::take(&mut w.effects)),
        Err(never) => match never {},
    }
}

/// A deployment of one step on both targets, its tasks stored by the broker at stream
/// sequences 11 and 12.
fn deployed(w: &mut World, retries: u32) -> (DeploymentId, [TaskId; 2]) {
    let id = DeploymentId::new();
    let spec = DeploymentSpec {
        project: "p".into(),
        environment: EnvironmentName::parse("prod").expect("valid"),
        steps: vec![step(retries)],
        unhealthy_targets: UnhealthyTargets::Fail,
    };
    when(w, Command::CreateDeployment { id, spec }).expect("valid");
    let tasks: Vec<TaskId> = w.state.deployments[&id].steps[0].tasks.clone();
    for (task, seq) in tasks.iter().zip([11, 12]) {
        let cmd = Command::MarkDispatched {
            deployment: id,
            task: *task,
            attempt: 1,
            stream_seq: Some(seq),
        };
        let effects = when(w, cmd).expect("valid");
        assert!(
            effects.is_empty(),
            "a normal dispatch asks for nothing: {effects:?}"
        );
    }
    (id, [tasks[0], tasks[1]])
}

fn report(w: &mut World, worker: &str, body: WorkerBody) -> Vec<Effect> {
    let msg = WorkerMessage {
        trace_parent: None,
        schema_version: 1,
        event_id: EventId::new(),
        worker: WorkerName::parse(worker).expect("valid"),
        pool: pool("default"),
        sent_at: w.now,
        body,
    };
    when(w, Command::WorkerReport(msg)).expect("reports are never rejected")
}

fn started(w: &mut World, deployment: DeploymentId, task: TaskId, attempt: u32) -> Vec<Effect> {
    let body = WorkerBody::TaskStarted {
        deployment,
        task,
        attempt,
        delivery: 1,
    };
    report(w, "w1", body)
}

fn finished(
    w: &mut World,
    deployment: DeploymentId,
    task: TaskId,
    outcome: Outcome,
) -> Vec<Effect> {
    let body = WorkerBody::TaskFinished {
        deployment,
        task,
        attempt: w.state.tasks[&task].attempt,
        delivery: 1,
        outcome,
        exit_code: Some(1),
        reason: None,
    };
    report(w, "w1", body)
}

/// Every task told to stop.
fn stops(effects: &[Effect]) -> Vec<&Stop> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Cancel(stops) => Some(stops),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Every command submitted later, with its time.
fn scheduled(effects: &[Effect]) -> Vec<(Timestamp, &Command)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Schedule { at, cmd } => Some((*at, cmd)),
            _ => None,
        })
        .collect()
}

fn health_schedule(effects: &[Effect], of: &str) -> Option<Option<CheckEvery>> {
    effects.iter().find_map(|e| match e {
        Effect::ScheduleHealth { target, every } if *target == name(of) => Some(*every),
        _ => None,
    })
}

#[test]
fn a_registered_pool_gets_its_queue_consumer() {
    let mut w = given();
    let pool_spec = Pool {
        name: pool("eu-west"),
        region: None,
        description: None,
    };
    let effects = when(&mut w, Command::RegisterPool(pool_spec)).expect("valid");
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::EnsureConsumer(p) if *p == pool("eu-west"))),
        "{effects:?}"
    );
}

#[test]
fn the_default_pool_gets_its_queue_consumer_when_it_is_first_registered() {
    let mut w = World {
        state: State::default(),
        now: T0,
        seq: 0,
        effects: vec![],
    };
    let effects = when(&mut w, Command::EnsureDefaultPool).expect("valid");
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::EnsureConsumer(p) if *p == pool("default"))),
        "{effects:?}"
    );
    let again = when(&mut w, Command::EnsureDefaultPool).expect("valid");
    assert!(again.is_empty(), "nothing new: {again:?}");
}

#[test]
fn a_registered_target_with_a_probe_is_scheduled_at_the_planner_interval_or_its_own() {
    let mut w = given();
    let plain = when(
        &mut w,
        Command::RegisterTarget(target("t3", Some("https://t3"))),
    )
    .expect("ok");
    assert_eq!(
        health_schedule(&plain, "t3"),
        Some(Some(CheckEvery::PlannerInterval))
    );
    let mut own = target("t4", Some("https://t4"));
    own.health_interval_secs = Some(45);
    let effects = when(&mut w, Command::RegisterTarget(own)).expect("ok");
    assert_eq!(
        health_schedule(&effects, "t4"),
        Some(Some(CheckEvery::Secs(45)))
    );
}

#[test]
fn a_registered_target_without_a_probe_is_not_scheduled() {
    let mut w = given();
    let effects = when(&mut w, Command::RegisterTarget(target("t3", None))).expect("ok");
    assert_eq!(health_schedule(&effects, "t3"), Some(None));
}

#[test]
fn an_updated_target_is_rescheduled_and_one_that_loses_its_probe_is_unscheduled() {
    let mut w = given();
    let update = |u: TargetUpdate| Command::UpdateTarget {
        name: name("t1"),
        update: u,
    };
    let effects = when(
        &mut w,
        update(TargetUpdate {
            health_interval_secs: Some(Some(30)),
            ..Default::default()
        }),
    )
    .expect("ok");
    assert_eq!(
        health_schedule(&effects, "t1"),
        Some(Some(CheckEvery::Secs(30)))
    );
    let effects = when(
        &mut w,
        update(TargetUpdate {
            endpoint: Some(None),
            ..Default::default()
        }),
    )
    .expect("ok");
    assert_eq!(health_schedule(&effects, "t1"), Some(None));
}

#[test]
fn cancelling_stops_running_tasks_takes_queued_ones_off_the_queue_and_waits_out_a_grace() {
    let mut w = given();
    let (id, [running, queued]) = deployed(&mut w, 0);
    started(&mut w, id, running, 1);
    w.now = T0.plus_millis(5_000);
    let effects = when(&mut w, Command::CancelDeployment { id, reason: None }).expect("ok");
    let stops = stops(&effects);
    let stop = |task| stops.iter().find(|s| s.task == task).copied();
    assert_eq!(
        stop(running),
        Some(&Stop {
            task: running,
            pool: pool("default"),
            upto: u32::MAX,
            // Its message must come back if its worker dies.
            queued: None,
        })
    );
    assert_eq!(
        stop(queued),
        Some(&Stop {
            task: queued,
            pool: pool("default"),
            upto: u32::MAX,
            queued: Some((12, 1)),
        })
    );
    let grace = scheduled(&effects);
    assert!(
        grace.iter().any(
            |(at, cmd)| *at == w.now.plus_millis(CANCEL_GRACE_SECS * 1000)
                && matches!(cmd, Command::CancelGraceExpired { deployment } if *deployment == id)
        ),
        "{effects:?}"
    );
}

#[test]
fn a_task_that_starts_after_its_deployment_was_cancelled_is_told_to_stop() {
    let mut w = given();
    let (id, [task, _]) = deployed(&mut w, 0);
    when(&mut w, Command::CancelDeployment { id, reason: None }).expect("ok");
    let effects = started(&mut w, id, task, 1);
    assert_eq!(
        stops(&effects),
        [&Stop {
            task,
            pool: pool("default"),
            upto: u32::MAX,
            queued: None,
        }]
    );
}

#[test]
fn a_task_stored_after_it_was_cancelled_is_taken_off_the_queue() {
    let mut w = given();
    let id = DeploymentId::new();
    let spec = DeploymentSpec {
        project: "p".into(),
        environment: EnvironmentName::parse("prod").expect("valid"),
        steps: vec![step(0)],
        unhealthy_targets: UnhealthyTargets::Fail,
    };
    when(&mut w, Command::CreateDeployment { id, spec }).expect("valid");
    let task = w.state.deployments[&id].steps[0].tasks[0];
    when(&mut w, Command::CancelDeployment { id, reason: None }).expect("ok");
    let cmd = Command::MarkDispatched {
        deployment: id,
        task,
        attempt: 1,
        stream_seq: Some(40),
    };
    let effects = when(&mut w, cmd).expect("ok");
    assert_eq!(
        stops(&effects),
        [&Stop {
            task,
            pool: pool("default"),
            upto: u32::MAX,
            queued: Some((40, 1)),
        }]
    );
}

#[test]
fn a_failed_attempt_with_retries_left_schedules_its_retry_from_now() {
    let mut w = given();
    let (id, [task, _]) = deployed(&mut w, 1);
    started(&mut w, id, task, 1);
    w.now = T0.plus_millis(60_000);
    let effects = finished(&mut w, id, task, Outcome::Failed);
    let retries: Vec<(Timestamp, &Command)> = scheduled(&effects)
        .into_iter()
        .filter(|(_, cmd)| matches!(cmd, Command::RetryDue { .. }))
        .collect();
    let [(at, Command::RetryDue { task: t, attempt })] = retries.as_slice() else {
        panic!("one retry expected: {effects:?}")
    };
    assert_eq!((*t, *attempt), (task, 1));
    assert_eq!(
        *at,
        w.now.plus_millis(3_000),
        "the step's backoff after now"
    );
}

#[test]
fn a_run_of_an_attempt_already_given_up_for_a_retry_is_stopped_up_to_that_attempt() {
    let mut w = given();
    let (id, [task, _]) = deployed(&mut w, 1);
    started(&mut w, id, task, 1);
    finished(&mut w, id, task, Outcome::Failed);
    // A second delivery of attempt 1 (its first worker was thought lost) starts late.
    let body = WorkerBody::TaskStarted {
        deployment: id,
        task,
        attempt: 1,
        delivery: 2,
    };
    let effects = report(&mut w, "w2", body);
    assert_eq!(
        stops(&effects),
        [&Stop {
            task,
            pool: pool("default"),
            upto: 1,
            queued: None,
        }]
    );
}

#[test]
fn a_failed_deployment_stops_its_other_running_tasks_without_a_grace() {
    let mut w = given();
    let (id, [first, second]) = deployed(&mut w, 0);
    started(&mut w, id, first, 1);
    started(&mut w, id, second, 1);
    let effects = finished(&mut w, id, first, Outcome::Failed);
    assert_eq!(
        stops(&effects),
        [&Stop {
            task: second,
            pool: pool("default"),
            upto: u32::MAX,
            queued: None,
        }]
    );
    assert!(
        !scheduled(&effects)
            .iter()
            .any(|(_, c)| matches!(c, Command::CancelGraceExpired { .. })),
        "{effects:?}"
    );
}

#[test]
fn a_planned_check_is_published_and_its_deadline_watched() {
    let mut w = given();
    let check = CheckId::new();
    let cmd = Command::CheckTarget {
        check,
        target: name("t1"),
        trigger: CheckTrigger::OnDemand,
        at: w.now,
        deadline_secs: 30,
    };
    let effects = when(&mut w, cmd).expect("ok");
    let published: Vec<&CheckMessage> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::PublishCheck(c) => Some(c),
            _ => None,
        })
        .collect();
    let [msg] = published.as_slice() else {
        panic!("one check published: {effects:?}")
    };
    assert_eq!(
        (msg.check, &msg.target, &msg.pool),
        (check, &name("t1"), &pool("default"))
    );
    assert_eq!(msg.endpoint.as_deref(), Some("https://t1.example"));
    assert!(msg.deadline_at > w.now.plus_millis(29_999), "{msg:?}");
    assert!(
        scheduled(&effects)
            .iter()
            .any(|(at, c)| *at == msg.deadline_at
                && matches!(c, Command::CheckDeadline { target, check: id }
                if *target == name("t1") && *id == check)),
        "{effects:?}"
    );
}

#[test]
fn draining_and_resuming_a_worker_tells_it() {
    let mut w = given();
    let joined = WorkerBody::Joined {
        region: None,
        slots: 2,
        version: "1".into(),
    };
    report(&mut w, "w1", joined);
    let worker = WorkerName::parse("w1").expect("valid");
    for drain in [true, false] {
        let cmd = Command::DrainWorker {
            worker: worker.clone(),
            drain,
        };
        let effects = when(&mut w, cmd).expect("ok");
        assert!(
            effects.iter().any(|e| matches!(e,
                Effect::Control { worker: w, pool: p, drain: d }
                    if *w == worker && *p == pool("default") && *d == drain)),
            "drain {drain}: {effects:?}"
        );
    }
}

#[test]
fn after_a_restart_everything_still_due_is_derived_from_the_state() {
    let mut w = given();
    when(&mut w, Command::RegisterTarget(target("bare", None))).expect("ok");
    // A retry waiting for its backoff.
    let (retrying, [task, _]) = deployed(&mut w, 1);
    started(&mut w, retrying, task, 1);
    finished(&mut w, retrying, task, Outcome::Failed);
    let retry_at = w.state.tasks[&task].retry_at.expect("scheduled");
    // A deployment being cancelled, one task still running.
    let (cancelling, [running, _]) = deployed(&mut w, 0);
    started(&mut w, cancelling, running, 1);
    when(
        &mut w,
        Command::CancelDeployment {
            id: cancelling,
            reason: None,
        },
    )
    .expect("ok");
    // A check not yet answered.
    let check = CheckId::new();
    let cmd = Command::CheckTarget {
        check,
        target: name("t2"),
        trigger: CheckTrigger::Scheduled,
        at: w.now,
        deadline_secs: 30,
    };
    when(&mut w, cmd).expect("ok");

    let restarted = T0.plus_millis(600_000);
    let due = pending_effects(&w.state, restarted);

    assert!(
        due.iter()
            .any(|e| matches!(e, Effect::EnsureConsumer(p) if *p == pool("default")))
    );
    assert_eq!(
        health_schedule(&due, "t1"),
        Some(Some(CheckEvery::PlannerInterval))
    );
    assert_eq!(health_schedule(&due, "bare"), Some(None));
    let later = scheduled(&due);
    assert!(
        later.iter().any(|(at, c)| *at == retry_at
            && matches!(c, Command::RetryDue { task: t, attempt: 1 } if *t == task)),
        "{due:?}"
    );
    assert!(
        later.iter().any(|(at, c)| *at == restarted.plus_millis(CANCEL_GRACE_SECS * 1000)
            && matches!(c, Command::CancelGraceExpired { deployment } if *deployment == cancelling)),
        "a fresh grace from the restart: {due:?}"
    );
    assert!(stops(&due).iter().any(|s| s.task == running), "{due:?}");
    assert!(
        due.iter()
            .any(|e| matches!(e, Effect::PublishCheck(c) if c.check == check)),
        "{due:?}"
    );
    assert!(
        later
            .iter()
            .any(|(_, c)| matches!(c, Command::CheckDeadline { check: id, .. } if *id == check)),
        "{due:?}"
    );
}

#[test]
fn a_planned_attempt_s_message_carries_its_pool_action_and_planning_time() {
    let mut w = given();
    let (_, [task, _]) = deployed(&mut w, 2);
    let msg = task_message(&w.state, &task, 1, Some(123)).expect("a planned task");
    assert_eq!((msg.task, msg.attempt), (task, 1));
    assert_eq!(msg.pool, pool("default"));
    assert_eq!(msg.action, Action::Noop);
    assert_eq!(msg.max_deliveries, step(2).max_attempts());
    assert_eq!(msg.planned_at_us, 123);
    let after_restart = task_message(&w.state, &task, 1, None).expect("a planned task");
    assert_eq!(after_restart.planned_at_us, T0.millis() * 1000);
    assert!(task_message(&w.state, &TaskId::new(), 1, None).is_none());
}

#[test]
fn a_removed_target_leaves_the_health_schedule_and_is_not_scheduled_again_at_start() {
    let mut w = given();

    let effects = when(&mut w, Command::RemoveTarget(name("t1"))).expect("nothing uses it");

    assert_eq!(health_schedule(&effects, "t1"), Some(None));
    let at_start = pending_effects(&w.state, T0);
    assert_eq!(health_schedule(&at_start, "t1"), None, "{at_start:?}");
    assert!(health_schedule(&at_start, "t2").is_some());
}

#[test]
fn a_removed_pool_has_its_queue_consumer_deleted_and_not_made_again_at_start() {
    let mut w = given();
    let pool_spec = Pool {
        name: pool("eu-west"),
        region: None,
        description: None,
    };
    when(&mut w, Command::RegisterPool(pool_spec)).expect("valid");

    let effects = when(
        &mut w,
        Command::RemovePool {
            name: pool("eu-west"),
            online: vec![],
        },
    )
    .expect("nothing uses it");

    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::RemoveConsumer(p) if *p == pool("eu-west"))),
        "{effects:?}"
    );
    let at_start = pending_effects(&w.state, T0);
    assert!(
        !at_start
            .iter()
            .any(|e| matches!(e, Effect::EnsureConsumer(p) if *p == pool("eu-west"))),
        "{at_start:?}"
    );
}
