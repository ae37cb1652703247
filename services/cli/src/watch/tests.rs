//! What a followed deployment looks like, line by line, from the API's answers.

use super::*;
use shoal_shared::api::{AttemptView, StepDetail, TaskView};
use shoal_shared::resolve::PoolRule;
use shoal_shared::{PoolName, TargetName, WorkerName};

const NOW: Timestamp = Timestamp(1_700_000_000_000);

fn pool(name: &str) -> PoolName {
    PoolName::parse(name.to_owned()).unwrap_or_else(|e| panic!("{e}"))
}

fn worker(name: &str) -> WorkerName {
    WorkerName::parse(name.to_owned()).unwrap_or_else(|e| panic!("{e}"))
}

fn task(state: TaskState) -> TaskView {
    TaskView {
        id: TaskId::new(),
        target: Some(TargetName::parse("web-ap".to_owned()).unwrap_or_else(|e| panic!("{e}"))),
        endpoint: None,
        pool: pool("ap-south"),
        pool_rule: PoolRule::TargetDefault,
        state,
        waiting: None,
        worker: None,
        attempt: 1,
        delivery: 0,
        exit_code: None,
        reason: None,
        planned_at: None,
        dispatched_at: None,
        started_at: None,
        finished_at: None,
        output_lines: 0,
        retry_at: None,
        attempts: Vec::new(),
    }
}

fn step(retries: u32, tasks: Vec<TaskView>) -> StepDetail {
    StepDetail {
        index: 0,
        name: "deploy".into(),
        state: StepState::Running,
        retries,
        tasks,
    }
}

fn attempt(n: u32, state: TaskState, exit_code: Option<i32>) -> AttemptView {
    AttemptView {
        attempt: n,
        delivery: 1,
        worker: Some(worker("ap-1")),
        started_at: Some(NOW),
        finished_at: Some(NOW),
        state,
        exit_code,
    }
}

#[test]
fn a_queued_task_says_why_it_waits_as_the_planner_does() {
    let mut t = task(TaskState::Dispatched);
    t.waiting = Some("waiting for a worker in pool ap-south".into());
    let s = step(0, vec![t.clone()]);
    assert_eq!(
        task_status(&s, &t, NOW),
        "waiting for a worker in pool ap-south"
    );
}

#[test]
fn a_retry_shows_the_failed_attempt_the_countdown_and_the_next_attempt() {
    let mut t = task(TaskState::RetryScheduled);
    t.exit_code = Some(3);
    t.reason = Some("script exited with code 3".into());
    t.retry_at = Some(NOW.plus_millis(4_200));
    t.attempts = vec![attempt(1, TaskState::Failed, Some(3))];
    let s = step(2, vec![t.clone()]);
    assert_eq!(
        task_status(&s, &t, NOW),
        "attempt 1 failed (exit code 3); retry in 5 s (attempt 2 of 3)"
    );
    assert_eq!(
        ended_run(&s, &t, &t.attempts[0]).as_deref(),
        Some("deploy · web-ap: attempt 1 of 3 failed on ap-1 (exit code 3); retrying")
    );
}

#[test]
fn the_last_attempt_of_a_failed_task_is_told_with_its_failure_not_as_a_retry() {
    let mut t = task(TaskState::Failed);
    t.attempt = 2;
    t.attempts = vec![
        attempt(1, TaskState::Failed, Some(3)),
        attempt(2, TaskState::Failed, Some(4)),
    ];
    let s = step(1, vec![t.clone()]);
    assert!(ended_run(&s, &t, &t.attempts[0]).is_some());
    assert_eq!(ended_run(&s, &t, &t.attempts[1]), None);
}

#[test]
fn a_failure_shows_exit_code_attempts_and_the_output_tail_with_stderr_marked() {
    let mut t = task(TaskState::Failed);
    t.worker = Some(worker("ap-1"));
    t.exit_code = Some(3);
    t.reason = Some("script exited with code 3".into());
    t.attempts = vec![attempt(1, TaskState::Failed, Some(3))];
    let s = step(0, vec![t.clone()]);
    let line = |stream, text: &str| LogLine {
        attempt: 1,
        run: 1,
        stream,
        at: NOW,
        line: text.into(),
    };
    let tail = VecDeque::from(vec![
        line(OutputStream::Stdout, "copying files"),
        line(OutputStream::Stderr, "disk full"),
    ]);
    let out = failure("d-1", &s, &t, Some(&tail));
    assert_eq!(
        out[0],
        "deploy · web-ap failed in pool ap-south: exit code 3"
    );
    assert_eq!(
        out[1],
        "  attempts (1 of 1 allowed; retries: 0): 1 failed on ap-1 (exit code 3)"
    );
    assert_eq!(&out[3..5], ["  | copying files", "  ! disk full"]);
    assert_eq!(out[5], format!("  all of it: shoal logs d-1 {}", t.id));
}

#[test]
fn a_failure_followed_with_its_output_does_not_repeat_the_tail() {
    let mut t = task(TaskState::Failed);
    t.exit_code = Some(3);
    t.attempts = vec![attempt(1, TaskState::Failed, Some(3))];
    let s = step(0, vec![t.clone()]);
    let out = failure("d-1", &s, &t, None);
    assert_eq!(
        &out[2..],
        [
            "  its output is above (attempt 1)".to_owned(),
            format!("  all of it: shoal logs d-1 {}", t.id)
        ]
    );
}

#[test]
fn an_interruption_names_what_is_left_and_the_command_to_cancel() {
    let mut t = task(TaskState::Dispatched);
    t.waiting = Some("waiting for a worker in pool ap-south".into());
    let d = DeploymentDetail {
        id: shoal_shared::DeploymentId::new(),
        project: "shop".into(),
        environment: shoal_shared::EnvironmentName::parse("prod".to_owned())
            .unwrap_or_else(|e| panic!("{e}")),
        state: shoal_shared::DeploymentState::Running,
        reason: None,
        created_at: NOW,
        started_at: Some(NOW),
        finished_at: None,
        steps: vec![step(0, vec![t])],
    };
    let out = interrupted("d-1", Some(&d), " --api http://h:1");
    assert!(out[0].contains("goes on in the planner"), "{out:?}");
    assert!(
        out.contains(&"  deploy · web-ap: waiting for a worker in pool ap-south".to_owned()),
        "{out:?}"
    );
    assert_eq!(
        out.last().map(String::as_str),
        Some("cancel it:  shoal --api http://h:1 cancel d-1")
    );
}

#[test]
fn a_big_deployment_keeps_the_block_short_enough_to_redraw() {
    let mut running = step(0, (0..30).map(|_| task(TaskState::Running)).collect());
    running.name = "deploy".into();
    let mut pending = step(0, (0..30).map(|_| task(TaskState::Pending)).collect());
    pending.name = "verify".into();
    pending.state = StepState::Pending;
    let d = DeploymentDetail {
        id: shoal_shared::DeploymentId::new(),
        project: "shop".into(),
        environment: shoal_shared::EnvironmentName::parse("prod".to_owned())
            .unwrap_or_else(|e| panic!("{e}")),
        state: shoal_shared::DeploymentState::Running,
        reason: None,
        created_at: NOW,
        started_at: Some(NOW),
        finished_at: None,
        steps: vec![running, pending],
    };
    let lines = block(&d, NOW);
    // Progress, 8 tasks and a summary of the running step, one line for the pending one.
    assert_eq!(lines.len(), 1 + BLOCK_TASKS_PER_STEP + 1 + 1, "{lines:#?}");
    assert_eq!(lines[9], "  deploy · … 22 more tasks (0 ended)");
    assert_eq!(lines[10], "  verify: pending (30 tasks)");
}
