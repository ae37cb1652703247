//! When following output ends, and the lines it prints, from the records alone.

use super::*;
use shoal_shared::api::StepDetail;
use shoal_shared::resolve::PoolRule;
use shoal_shared::{
    DeploymentId, EnvironmentName, Outcome, PoolName, StepState, TargetName, TaskState, Timestamp,
    WorkerName,
};

const NOW: Timestamp = Timestamp(1_700_000_000_000);

fn parsed<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn worker() -> WorkerName {
    parsed(WorkerName::parse("eu-1".to_owned()))
}

fn task(target: Option<&str>) -> TaskView {
    TaskView {
        id: TaskId::new(),
        target: target.map(|t| parsed(TargetName::parse(t.to_owned()))),
        endpoint: None,
        pool: parsed(PoolName::parse("eu-west".to_owned())),
        pool_rule: PoolRule::TargetDefault,
        state: TaskState::Running,
        waiting: None,
        worker: None,
        attempt: 1,
        delivery: 1,
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

fn deployment(tasks: Vec<TaskView>) -> DeploymentDetail {
    DeploymentDetail {
        id: DeploymentId::new(),
        project: "shop".into(),
        environment: parsed(EnvironmentName::parse("prod".to_owned())),
        state: DeploymentState::Running,
        reason: None,
        created_at: NOW,
        started_at: Some(NOW),
        finished_at: None,
        steps: vec![StepDetail {
            index: 0,
            name: "deploy".into(),
            state: StepState::Running,
            retries: 1,
            tasks,
        }],
    }
}

fn started(d: &DeploymentDetail, task: TaskId, attempt: u32) -> Event {
    Event::TaskStarted {
        deployment: d.id,
        task,
        attempt,
        delivery: 1,
        worker: worker(),
        pool: parsed(PoolName::parse("eu-west".to_owned())),
        at: NOW,
    }
}

fn finished(d: &DeploymentDetail, task: TaskId, attempt: u32, outcome: Outcome) -> Event {
    Event::TaskFinished {
        deployment: d.id,
        task,
        attempt,
        delivery: 1,
        worker: worker(),
        outcome,
        exit_code: Some(0),
        reason: None,
        at: NOW,
    }
}

fn deployment_finished(d: &DeploymentDetail, state: DeploymentState) -> Event {
    Event::DeploymentFinished {
        deployment: d.id,
        state,
        reason: None,
    }
}

fn output(d: &DeploymentDetail, task: TaskId, first_line: u64, lines: &[(bool, &str)]) -> Event {
    Event::TaskOutput {
        deployment: d.id,
        task,
        attempt: 1,
        delivery: 1,
        worker: worker(),
        first_line,
        lines: lines
            .iter()
            .map(|(err, line)| OutputLine {
                stream: if *err {
                    OutputStream::Stderr
                } else {
                    OutputStream::Stdout
                },
                at: NOW,
                line: (*line).to_owned(),
            })
            .collect(),
    }
}

#[test]
fn following_a_deployment_ends_when_it_finished_and_no_task_still_runs() {
    let (a, b) = (task(Some("web-1")), task(Some("web-2")));
    let d = deployment(vec![a.clone(), b.clone()]);
    let mut t = Tracker::new(Scope::Deployment);
    assert_eq!(t.see(&started(&d, a.id, 1)), Seen::Nothing);
    assert_eq!(t.see(&started(&d, b.id, 1)), Seen::Nothing);
    assert_eq!(
        t.see(&finished(&d, a.id, 1, Outcome::Failed)),
        Seen::Nothing
    );
    // The step failed with task a: the deployment ends while b still runs.
    assert_eq!(
        t.see(&deployment_finished(&d, DeploymentState::Failed)),
        Seen::Nothing
    );
    assert_eq!(
        t.see(&finished(&d, b.id, 1, Outcome::Succeeded)),
        Seen::Ended
    );
    assert_eq!(t.finished().map(|(s, _)| *s), Some(DeploymentState::Failed));
}

#[test]
fn a_deployment_that_ran_nothing_ends_with_its_finish() {
    let d = deployment(vec![task(None)]);
    let mut t = Tracker::new(Scope::Deployment);
    assert_eq!(
        t.see(&deployment_finished(&d, DeploymentState::Cancelled)),
        Seen::Ended
    );
}

#[test]
fn a_followed_task_asks_the_planner_whether_its_attempt_was_the_last() {
    let (a, b) = (task(Some("web-1")), task(Some("web-2")));
    let d = deployment(vec![a.clone(), b.clone()]);
    let mut t = Tracker::new(Scope::Task(a.id));
    assert_eq!(t.see(&started(&d, a.id, 1)), Seen::Nothing);
    // Another task's end is not the followed one's.
    assert_eq!(
        t.see(&finished(&d, b.id, 1, Outcome::Failed)),
        Seen::Nothing
    );
    assert_eq!(
        t.see(&finished(&d, a.id, 1, Outcome::Failed)),
        Seen::Ask { attempt: 1 }
    );
    assert_eq!(t.see(&started(&d, a.id, 2)), Seen::Nothing);
    // The deployment ended, but the followed task still runs: its output goes on.
    assert_eq!(
        t.see(&deployment_finished(&d, DeploymentState::Failed)),
        Seen::Nothing
    );
    assert_eq!(
        t.see(&finished(&d, a.id, 2, Outcome::Succeeded)),
        Seen::Ended
    );
}

#[test]
fn a_late_start_report_of_an_ended_attempt_does_not_hold_following_open() {
    let a = task(None);
    let d = deployment(vec![a.clone()]);
    let mut t = Tracker::new(Scope::Deployment);
    t.see(&started(&d, a.id, 1));
    t.see(&finished(&d, a.id, 1, Outcome::Succeeded));
    t.see(&started(&d, a.id, 1));
    assert_eq!(
        t.see(&deployment_finished(&d, DeploymentState::Succeeded)),
        Seen::Ended
    );
}

#[test]
fn lines_of_a_deployment_are_labelled_aligned_and_stderr_is_marked() {
    let (a, b) = (task(Some("web-1")), task(None));
    let d = deployment(vec![a.clone(), b.clone()]);
    let mut p = Printer::new(&d, Scope::Deployment);
    assert_eq!(
        p.lines(&output(&d, a.id, 0, &[(false, "line 1"), (true, "oops")])),
        vec!["deploy · web-1 | line 1", "deploy · web-1 ! oops"]
    );
    assert_eq!(
        p.lines(&output(&d, b.id, 0, &[(false, "hi")])),
        vec!["deploy         | hi"]
    );
    assert!(p.lines(&started(&d, a.id, 1)).is_empty());
}

#[test]
fn lines_of_one_task_are_printed_as_shoal_logs_prints_them() {
    let (a, b) = (task(Some("web-1")), task(Some("web-2")));
    let d = deployment(vec![a.clone(), b.clone()]);
    let mut p = Printer::new(&d, Scope::Task(a.id));
    assert_eq!(
        p.lines(&output(&d, a.id, 0, &[(false, "line 1"), (true, "oops")])),
        vec!["1.1   line 1", "1.1 ! oops"]
    );
    assert!(
        p.lines(&output(&d, b.id, 0, &[(false, "other")]))
            .is_empty()
    );
}

#[test]
fn output_sent_twice_is_printed_once() {
    let a = task(None);
    let d = deployment(vec![a.clone()]);
    let mut p = Printer::new(&d, Scope::Task(a.id));
    assert_eq!(
        p.lines(&output(&d, a.id, 0, &[(false, "1"), (false, "2")]))
            .len(),
        2
    );
    assert!(
        p.lines(&output(&d, a.id, 0, &[(false, "1"), (false, "2")]))
            .is_empty()
    );
    assert_eq!(
        p.lines(&output(&d, a.id, 1, &[(false, "2"), (false, "3")])),
        vec!["1.1   3"]
    );
}

#[test]
fn a_record_of_the_stream_reads_as_its_event() {
    let d = deployment(vec![task(None)]);
    let event = deployment_finished(&d, DeploymentState::Succeeded);
    let json = parsed(serde_json::to_value(&event));
    let data = json["DeploymentFinished"].clone();
    let view: EventView = parsed(serde_json::from_value(serde_json::json!({
        "seq": 9, "event_id": shoal_shared::EventId::new(), "time": NOW,
        "stream": format!("deployment/{}", d.id), "type": "DeploymentFinished",
        "schema_version": 1, "correlation_id": null, "causation_id": null,
        "data": data, "prev_hash": "00"
    })));
    assert_eq!(parsed(event_of(view)), event);
}
