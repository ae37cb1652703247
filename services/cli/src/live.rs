//! Task output as it arrives (`shoal logs -f`, `shoal deploy --wait --logs`): a deployment's
//! records read from the planner's event stream from its first one on, so the output already
//! there and the output to come are one sequence (no line twice, none lost between the two),
//! until the task followed, or every task of the deployment, has ended.
//!
//! [`Tracker`] (when following ends) and [`Printer`] (what is printed) are plain functions of
//! the records; [`OutputFollower`] reads them and asks the planner what the records alone do
//! not say: whether a failed attempt is retried.

use crate::{render, watch};
use anyhow::Context as _;
use shoal_cli::client::ApiClient;
use shoal_cli::exit;
use shoal_cli::follow::EventFollower;
use shoal_shared::api::{DeploymentDetail, EventView, TaskView};
use shoal_shared::events::Event;
use shoal_shared::{DeploymentState, OutputLine, OutputStream, TaskId};
use std::collections::HashMap;
use tokio::sync::mpsc;

/// The records read: output, and what tells that a task or the deployment ended.
const TYPES: &str = "TaskStarted,TaskOutput,TaskFinished,TaskCancelled,DeploymentFinished";

/// What is followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every task of the deployment, each line labelled with its task.
    Deployment,
    /// One task, its lines as `shoal logs ID TASK` prints them.
    Task(TaskId),
}

impl Scope {
    fn holds(self, task: TaskId) -> bool {
        match self {
            Scope::Deployment => true,
            Scope::Task(t) => t == task,
        }
    }
}

/// What a record means for the end of following.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    Nothing,
    /// The followed task's `attempt` ended; only the planner knows whether it is retried.
    Ask {
        attempt: u32,
    },
    /// Everything followed has ended.
    Ended,
}

/// Which followed tasks run, and whether the deployment has finished.
#[derive(Debug)]
pub(crate) struct Tracker {
    scope: Scope,
    /// Followed tasks started and not ended, with their attempt.
    running: HashMap<TaskId, u32>,
    /// Per task, the last attempt that ended: a late report of it starts nothing.
    ended: HashMap<TaskId, u32>,
    /// How the deployment finished, and why, once it has.
    finished: Option<(DeploymentState, Option<String>)>,
}

impl Tracker {
    pub(crate) fn new(scope: Scope) -> Tracker {
        Tracker {
            scope,
            running: HashMap::new(),
            ended: HashMap::new(),
            finished: None,
        }
    }

    /// Takes in the next record of the deployment.
    pub(crate) fn see(&mut self, event: &Event) -> Seen {
        match event {
            Event::TaskStarted { task, attempt, .. } if self.scope.holds(*task) => {
                if self.ended.get(task).is_none_or(|a| a < attempt) {
                    self.running.insert(*task, *attempt);
                }
                Seen::Nothing
            }
            Event::TaskFinished { task, attempt, .. }
            | Event::TaskCancelled { task, attempt, .. }
                if self.scope.holds(*task) =>
            {
                self.task_ended(*task, *attempt)
            }
            Event::DeploymentFinished { state, reason, .. } => {
                self.finished = Some((*state, reason.clone()));
                if self.running.is_empty() {
                    Seen::Ended
                } else {
                    Seen::Nothing
                }
            }
            _ => Seen::Nothing,
        }
    }

    fn task_ended(&mut self, task: TaskId, attempt: u32) -> Seen {
        if self.running.get(&task).is_some_and(|a| *a <= attempt) {
            self.running.remove(&task);
        }
        let last = self.ended.entry(task).or_insert(attempt);
        *last = (*last).max(attempt);
        match (self.scope, &self.finished) {
            // A finished deployment retries nothing.
            (_, Some(_)) if self.running.is_empty() => Seen::Ended,
            (Scope::Task(_), None) => Seen::Ask { attempt },
            _ => Seen::Nothing,
        }
    }

    /// How the deployment finished, and why, once it has.
    pub(crate) fn finished(&self) -> Option<&(DeploymentState, Option<String>)> {
        self.finished.as_ref()
    }
}

/// Turns output records into the lines printed.
#[derive(Debug)]
pub(crate) struct Printer {
    scope: Scope,
    /// Per task, `step · target`.
    labels: HashMap<TaskId, String>,
    /// The widest label, so the lines start in one column.
    width: usize,
    /// Per run (task, attempt, run), the lines printed: a record sent again prints nothing.
    printed: HashMap<(TaskId, u32, u32), u64>,
}

impl Printer {
    pub(crate) fn new(d: &DeploymentDetail, scope: Scope) -> Printer {
        let labels: HashMap<TaskId, String> = d
            .steps
            .iter()
            .flat_map(|s| s.tasks.iter().map(move |t| (t.id, watch::label(s, t))))
            .collect();
        let width = labels
            .values()
            .map(|l| l.chars().count())
            .max()
            .unwrap_or(0);
        Printer {
            scope,
            labels,
            width,
            printed: HashMap::new(),
        }
    }

    /// The lines to print for a record: a followed task's output not printed yet.
    pub(crate) fn lines(&mut self, event: &Event) -> Vec<String> {
        let Event::TaskOutput {
            task,
            attempt,
            delivery,
            first_line,
            lines,
            ..
        } = event
        else {
            return Vec::new();
        };
        if !self.scope.holds(*task) {
            return Vec::new();
        }
        let run = (*task, *attempt, (*delivery).max(1));
        let printed = self.printed.entry(run).or_insert(0);
        let skip = printed.saturating_sub(*first_line);
        let fresh: Vec<&OutputLine> = lines
            .iter()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
            .collect();
        *printed = (*printed).max(first_line.saturating_add(lines.len() as u64));
        fresh.into_iter().map(|l| self.line(run, l)).collect()
    }

    fn line(&self, (task, attempt, run): (TaskId, u32, u32), l: &OutputLine) -> String {
        if let Scope::Task(_) = self.scope {
            return render::log_line(attempt, run, l.stream, &l.line);
        }
        let mut label = self
            .labels
            .get(&task)
            .cloned()
            .unwrap_or_else(|| task.to_string());
        if attempt > 1 || run > 1 {
            label.push_str(&format!(" · attempt {attempt}"));
        }
        if run > 1 {
            label.push_str(&format!(" run {run}"));
        }
        let mark = match l.stream {
            OutputStream::Stderr => '!',
            OutputStream::Stdout => '|',
        };
        format!("{label:<width$} {mark} {}", l.line, width = self.width)
    }
}

/// What following gave next.
#[derive(Debug)]
pub(crate) enum Followed {
    /// Output lines, as printed.
    Lines(Vec<String>),
    /// Everything followed has ended: the exit code (as `deploy --wait`'s) and how it ended.
    Ended { code: i32, summary: String },
}

/// Follows a deployment's task output from its first line until what is followed has ended.
pub(crate) struct OutputFollower {
    api: ApiClient,
    id: String,
    scope: Scope,
    events: EventFollower,
    tracker: Tracker,
    printer: Printer,
}

impl OutputFollower {
    pub(crate) fn new(api: &ApiClient, d: &DeploymentDetail, scope: Scope) -> OutputFollower {
        let query = format!("stream=deployment/{}&type={TYPES}", d.id);
        OutputFollower {
            api: api.clone(),
            id: d.id.to_string(),
            scope,
            events: EventFollower::new(api, &query, 0),
            tracker: Tracker::new(scope),
            printer: Printer::new(d, scope),
        }
    }

    /// The next lines of output, or the end.
    ///
    /// # Errors
    /// The planner could not be followed or read (see [`EventFollower::next`]).
    pub(crate) async fn next(&mut self) -> anyhow::Result<Followed> {
        loop {
            let event = event_of(self.events.next().await?)?;
            let seen = self.tracker.see(&event);
            let lines = self.printer.lines(&event);
            if !lines.is_empty() {
                return Ok(Followed::Lines(lines));
            }
            let done = match seen {
                Seen::Nothing => None,
                Seen::Ask { attempt } => self.task_ended(attempt).await?,
                Seen::Ended => Some(self.ending().await?),
            };
            if let Some(done) = done {
                return Ok(done);
            }
        }
    }

    /// How following ends: the deployment's end, or the followed task's as the planner has
    /// it.
    async fn ending(&mut self) -> anyhow::Result<Followed> {
        if let (Scope::Deployment, Some((state, reason))) = (self.scope, self.tracker.finished()) {
            let why = reason.as_ref().map_or(String::new(), |r| format!(": {r}"));
            return Ok(Followed::Ended {
                code: exit::for_deployment(*state),
                summary: format!("deployment {}: {}{why}", self.id, render::s(state)),
            });
        }
        Ok(task_end(&self.task_now().await?))
    }

    /// The end of the followed task, when the planner says it ended with `attempt` (a
    /// later attempt, or a retry to come, means it goes on).
    async fn task_ended(&mut self, attempt: u32) -> anyhow::Result<Option<Followed>> {
        let t = self.task_now().await?;
        Ok((t.state.is_terminal() && t.attempt <= attempt).then(|| task_end(&t)))
    }

    /// The followed task as the planner shows it now. (`&mut`, here and in its callers: the
    /// open stream is not `Sync`, so a shared borrow held over an await could not be sent to
    /// another thread, as `deploy --wait --logs` does.)
    async fn task_now(&mut self) -> anyhow::Result<TaskView> {
        let Scope::Task(id) = self.scope else {
            anyhow::bail!("no single task is followed");
        };
        let d: DeploymentDetail = self
            .api
            .get_as(&format!("/api/deployments/{}", self.id))
            .await?;
        let found = d
            .steps
            .into_iter()
            .flat_map(|s| s.tasks)
            .find(|t| t.id == id);
        found.with_context(|| format!("no task {id} in deployment {}", self.id))
    }
}

/// The end of following one task: its exit code and how it ended.
fn task_end(t: &TaskView) -> Followed {
    let how = match (t.exit_code, &t.reason) {
        (_, Some(why)) => format!(": {why}"),
        (Some(code), None) => format!(": exit code {code}"),
        (None, None) => String::new(),
    };
    Followed::Ended {
        code: exit::for_task(t.state),
        summary: format!("task {}: {}{how}", t.id, render::s(&t.state)),
    }
}

/// The event a record of the stream holds.
fn event_of(view: EventView) -> anyhow::Result<Event> {
    let seq = view.seq;
    let mut tagged = serde_json::Map::new();
    tagged.insert(view.event_type, view.data);
    serde_json::from_value(serde_json::Value::Object(tagged))
        .with_context(|| format!("cannot read record {seq} of the event stream"))
}

/// Follows every task's output of deployment `id` on a task of its own, handing the lines
/// over as they come (`deploy --wait --logs`); the channel closes when following ends.
pub(crate) fn spawn(api: &ApiClient, id: &str) -> mpsc::Receiver<Vec<String>> {
    let (tx, rx) = mpsc::channel(64);
    let (api, id) = (api.clone(), id.to_owned());
    tokio::spawn(async move {
        if let Err(e) = forward(&api, &id, &tx).await {
            // Output is helpful, not essential: the wait goes on without it.
            let _ = tx
                .send(vec![format!("(cannot follow the output: {e:#})")])
                .await;
        }
    });
    rx
}

async fn forward(api: &ApiClient, id: &str, tx: &mpsc::Sender<Vec<String>>) -> anyhow::Result<()> {
    let d: DeploymentDetail = api.get_as(&format!("/api/deployments/{id}")).await?;
    let mut f = OutputFollower::new(api, &d, Scope::Deployment);
    while let Followed::Lines(lines) = f.next().await? {
        if tx.send(lines).await.is_err() {
            // The wait has ended.
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
