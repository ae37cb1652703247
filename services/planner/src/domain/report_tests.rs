//! Given/when/then tests of who may report what: a report is taken only about a task of the
//! sender's pool and an attempt that was planned, a health result only for a check sent to
//! the sender's pool, and a message only from the worker its subject names.

use super::*;
use crate::domain::report::impersonation;
use crate::domain::worker::{drain_state_refusal, heartbeat_refusal};
use shoal_shared::subjects::SubjectOwner;

fn owner(p: &str, w: &str) -> SubjectOwner {
    SubjectOwner {
        pool: pool(p),
        worker: worker(w),
    }
}

/// A running task of pool `eu-west` (on worker `w1`).
fn running_task(m: &mut Memory) -> TaskId {
    let (_, events) = deploy(m, vec![step("s", &["web"], Some("eu-west"))]);
    let task = planned(&events)[0].0;
    report(m, task, "w1", started(task, 1));
    task
}

fn finished_by(
    m: &Memory,
    task: TaskId,
    worker: &str,
    pool_name: &str,
    attempt: u32,
) -> WorkerMessage {
    let t = &m.state.tasks[&task];
    WorkerMessage {
        trace_parent: None,
        schema_version: 1,
        event_id: EventId::new(),
        worker: WorkerName::parse(worker).expect("valid"),
        pool: pool(pool_name),
        sent_at: Timestamp(60),
        body: WorkerBody::TaskFinished {
            deployment: t.deployment,
            task,
            attempt,
            delivery: 1,
            outcome: Outcome::Succeeded,
            exit_code: Some(0),
            reason: None,
        },
    }
}

#[test]
fn a_worker_of_another_pool_cannot_finish_a_running_task() {
    let mut m = given(&[target("t1", &["web"], None)]);
    let task = running_task(&mut m);
    let before = m.state.clone();
    let forged = finished_by(&m, task, "intruder", "us-east", 1);
    let refused = when(&mut m, Command::WorkerReport(forged));
    assert!(
        matches!(&refused, Err(Rejection::Invalid(r)) if r.contains("pool \"eu-west\"'s")),
        "{refused:?}"
    );
    assert_eq!(m.state, before, "the task still runs");
    assert_eq!(m.state.tasks[&task].state, TaskState::Running);
}

#[test]
fn a_worker_of_the_same_pool_cannot_finish_or_write_output_of_a_run_it_never_started() {
    let mut m = given(&[target("t1", &["web"], None)]);
    let task = running_task(&mut m);
    let before = m.state.clone();
    let forged = finished_by(&m, task, "w2", "eu-west", 1);
    let refused = when(&mut m, Command::WorkerReport(forged));
    assert!(
        matches!(&refused, Err(Rejection::Invalid(r)) if r.contains("never started")),
        "{refused:?}"
    );
    let mut output = finished_by(&m, task, "w2", "eu-west", 1);
    output.body = WorkerBody::TaskOutput {
        deployment: m.state.tasks[&task].deployment,
        task,
        attempt: 1,
        delivery: 1,
        first_line: 0,
        lines: vec![],
    };
    assert!(when(&mut m, Command::WorkerReport(output)).is_err());
    assert_eq!(m.state, before, "w1's run goes on untouched");
    // Ending a run it never started as not run (refused, cancelled) is still taken.
    let mut not_run = finished_by(&m, task, "w2", "eu-west", 1);
    if let WorkerBody::TaskFinished { outcome, .. } = &mut not_run.body {
        *outcome = Outcome::Failed;
    }
    assert!(when(&mut m, Command::WorkerReport(not_run)).is_ok());
}

#[test]
fn the_end_of_a_run_that_overtook_its_start_is_taken_and_the_late_start_changes_nothing() {
    // A planner killed after reading a start but before recording it gets the start again
    // only after the ack wait; the run's end arrives first.
    let mut m = given(&[target("t1", &["web"], None)]);
    let (_, events) = deploy(&mut m, vec![step("s", &["web"], Some("eu-west"))]);
    let task = planned(&events)[0].0;
    let end = finished_by(&m, task, "w1", "eu-west", 1);
    assert!(when(&mut m, Command::WorkerReport(end)).is_ok());
    assert_eq!(m.state.tasks[&task].state, TaskState::Succeeded);
    report(&mut m, task, "w1", started(task, 1));
    assert_eq!(m.state.tasks[&task].state, TaskState::Succeeded);
    // Another worker of the pool still cannot speak for w1's run once it is known.
    let forged = finished_by(&m, task, "w2", "eu-west", 1);
    assert!(when(&mut m, Command::WorkerReport(forged)).is_err());
}

#[test]
fn a_later_deliverys_end_is_not_refused_for_an_earlier_deliverys_worker() {
    // w1 started delivery 1 and died; w3's end of delivery 2 overtakes its own start.
    let mut m = given(&[target("t1", &["web"], None)]);
    let task = running_task(&mut m);
    let mut end = finished_by(&m, task, "w3", "eu-west", 1);
    if let WorkerBody::TaskFinished { delivery, .. } = &mut end.body {
        *delivery = 2;
    }
    assert!(when(&mut m, Command::WorkerReport(end)).is_ok());
    assert_eq!(m.state.tasks[&task].state, TaskState::Succeeded);
}

#[test]
fn a_report_on_an_attempt_never_planned_is_refused() {
    let mut m = given(&[target("t1", &["web"], None)]);
    let task = running_task(&mut m);
    let before = m.state.clone();
    for attempt in [0, 2, u32::MAX] {
        let forged = finished_by(&m, task, "w1", "eu-west", attempt);
        let refused = when(&mut m, Command::WorkerReport(forged));
        assert!(
            matches!(&refused, Err(Rejection::Invalid(r)) if r.contains("never planned")),
            "attempt {attempt}: {refused:?}"
        );
    }
    assert_eq!(m.state, before);
    // The real outcome of the planned attempt is still taken.
    let real = finished_by(&m, task, "w1", "eu-west", 1);
    when(&mut m, Command::WorkerReport(real)).expect("taken");
    assert_eq!(m.state.tasks[&task].state, TaskState::Succeeded);
}

#[test]
fn a_health_result_is_taken_only_from_the_pool_the_check_was_sent_to() {
    let mut m = given(&[target("eu", &["web"], Some("eu-west"))]);
    let name = TargetName::parse("eu").expect("valid");
    check(&mut m, "eu");
    let mut forged = checked_report(&m, "eu");
    forged.pool = pool("us-east");
    let refused = when(&mut m, Command::WorkerReport(forged));
    assert!(
        matches!(&refused, Err(Rejection::Invalid(r)) if r.contains("sent to pool \"eu-west\"")),
        "{refused:?}"
    );
    assert!(
        m.state.targets[&name].pending_check.is_some(),
        "still waiting"
    );
    // An answer to a check nobody planned is refused too.
    let mut unknown = checked_report(&m, "eu");
    if let WorkerBody::HealthChecked { check, .. } = &mut unknown.body {
        *check = CheckId::new();
    }
    let refused = when(&mut m, Command::WorkerReport(unknown));
    assert!(
        matches!(&refused, Err(Rejection::Invalid(r)) if r.contains("not waiting for")),
        "{refused:?}"
    );
    assert_eq!(m.state.targets[&name].health_state(), HealthState::Unknown);
    let real = checked_report(&m, "eu");
    when(&mut m, Command::WorkerReport(real)).expect("taken");
    assert_eq!(m.state.targets[&name].health_state(), HealthState::Healthy);
}

#[test]
fn a_message_claiming_another_worker_or_pool_than_its_subject_is_an_impersonation() {
    let from = owner("eu-west", "w1");
    assert_eq!(impersonation(&from, &pool("eu-west"), &worker("w1")), None);
    let other_worker = impersonation(&from, &pool("eu-west"), &worker("w2"));
    assert!(
        other_worker
            .as_deref()
            .is_some_and(|r| r.contains("worker \"w2\"") && r.contains("worker \"w1\"")),
        "{other_worker:?}"
    );
    assert!(impersonation(&from, &pool("us-east"), &worker("w1")).is_some());
    assert!(heartbeat_refusal(&from, &pool("us-east"), &worker("w1")).is_some());
    assert_eq!(
        heartbeat_refusal(&from, &pool("eu-west"), &worker("w1")),
        None
    );
}

#[test]
fn a_drain_state_question_naming_a_worker_of_another_pool_is_refused() {
    let from = owner("eu-west", "w1");
    assert_eq!(drain_state_refusal(&from, None), None);
    assert_eq!(drain_state_refusal(&from, Some(&pool("eu-west"))), None);
    assert!(drain_state_refusal(&from, Some(&pool("us-east"))).is_some());
}

#[test]
fn a_refusal_keeps_only_a_bounded_subject_claim_and_head() {
    let long = "x".repeat(10_000);
    let cmd = Command::RejectMessage {
        id: EventId::new(),
        subject: long.clone(),
        reason: long.clone(),
        bytes: long.clone().into_bytes(),
        claimed: Some(long),
    };
    let mut m = given(&[]);
    let events = when(&mut m, cmd).expect("recorded");
    let [
        Event::MessageRejected {
            subject,
            reason,
            size,
            head,
            claimed,
        },
    ] = events.as_slice()
    else {
        panic!("{events:?}")
    };
    assert_eq!(*size, 10_000);
    assert!(subject.chars().count() <= 257 && reason.chars().count() <= 1025);
    assert!(claimed.as_ref().is_some_and(|c| c.chars().count() <= 257));
    assert_eq!(head.len(), 256);
}
