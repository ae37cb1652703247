//! Following a deployment in the terminal (`deploy --wait`, `cancel --wait`, the demo): each
//! task's state and why it waits, retries and lost runs as they happen, the tail of a failed
//! task's output, and what is left running when the user stops following with Ctrl-C.
//!
//! On a terminal the task lines are one block redrawn in place; anything worth keeping
//! (retries, failures, with `--logs` the tasks' output) is printed above it. When stdout is not a terminal only changes are
//! appended, one line each, so a CI log of the run stays readable.

use crate::render;
use shoal_cli::client::ApiClient;
use shoal_shared::api::{AttemptView, DeploymentDetail, LogCursor, LogLine, StepDetail, TaskView};
use shoal_shared::{OutputStream, StepState, TaskId, TaskState, Timestamp};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;
use tokio::sync::mpsc;

/// The exit code of a command the user interrupted with Ctrl-C (128 + SIGINT), as shells use.
pub(crate) const EXIT_INTERRUPTED: i32 = 130;

/// Lines of a failed task's output shown when it fails.
const TAIL_LINES: usize = 20;

/// Task lines shown per step in the redrawn block; the rest are summed up in one line, so
/// the block stays shorter than a terminal (a block taller than the screen cannot be
/// redrawn in place).
const BLOCK_TASKS_PER_STEP: usize = 8;

/// Up to this many tasks in all, every step shows its tasks; above, only running steps do
/// and the others are one line each.
const BLOCK_TASKS: usize = 24;

/// How often the deployment is read.
pub(crate) const POLL: Duration = Duration::from_millis(300);

/// How long, once the deployment has ended, its last output lines are waited for (`--logs`):
/// they are in the log before its end, so they come at once unless a task still runs.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// A task's place in its deployment, as the user reads it: `step · target`.
pub(crate) fn label(step: &StepDetail, t: &TaskView) -> String {
    match &t.target {
        Some(target) => format!("{} · {target}", step.name),
        None => step.name.clone(),
    }
}

/// "attempt k of n", or nothing for a step without retries.
fn attempt_of(attempt: u32, step: &StepDetail) -> Option<String> {
    (step.retries > 0).then(|| format!("attempt {attempt} of {}", step.retries + 1))
}

/// ` (a, b)` of the parts there are.
fn parens(parts: &[Option<String>]) -> String {
    let parts: Vec<&str> = parts.iter().flatten().map(String::as_str).collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// How an attempt or task ended: its exit code, or the reason when it has none.
fn ending(exit_code: Option<i32>, reason: Option<&str>) -> String {
    match (exit_code, reason) {
        (Some(code), Some(why)) if !why.contains(&code.to_string()) => {
            format!("exit code {code}: {why}")
        }
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(why)) => why.to_owned(),
        (None, None) => "no exit code".to_owned(),
    }
}

/// Seconds until `at` (rounded up), 0 when it has passed.
fn secs_until(at: Timestamp, now: Timestamp) -> u64 {
    u64::try_from(at.millis().saturating_sub(now.millis()))
        .unwrap_or(0)
        .div_ceil(1000)
}

/// What a task is doing now and, when it is not moving, why: the planner's `waiting` reason
/// (no worker of its pool online, all busy, queued), the retry's countdown, where it runs.
pub(crate) fn task_status(step: &StepDetail, t: &TaskView, now: Timestamp) -> String {
    let attempt = attempt_of(t.attempt, step);
    // A run above 1: the broker delivered the attempt again after a worker was lost.
    let run = (t.delivery > 1).then(|| format!("run {}", t.delivery));
    let worker = t.worker.as_ref().map_or("-", |w| w.as_str());
    match t.state {
        TaskState::Pending => "pending".to_owned(),
        TaskState::Planned | TaskState::Dispatched => {
            let why = t
                .waiting
                .clone()
                .unwrap_or_else(|| format!("queued in pool {}", t.pool));
            format!("{why}{}", parens(&[attempt]))
        }
        TaskState::Running => format!(
            "running on {worker} in pool {}{}",
            t.pool,
            parens(&[attempt, run])
        ),
        TaskState::RetryScheduled => {
            let next = attempt_of(t.attempt + 1, step);
            let when = t.retry_at.map_or("soon".to_owned(), |at| {
                format!("in {} s", secs_until(at, now))
            });
            format!(
                "attempt {} failed ({}); retry {when}{}",
                t.attempt,
                ending(t.exit_code, t.reason.as_deref()),
                parens(&[next])
            )
        }
        TaskState::Succeeded => format!("succeeded on {worker}{}", parens(&[attempt])),
        TaskState::Failed | TaskState::TimedOut => format!(
            "{} on {worker}: {}{}",
            render::s(&t.state).replace('_', " "),
            ending(t.exit_code, t.reason.as_deref()),
            parens(&[attempt])
        ),
        TaskState::Cancelled | TaskState::Skipped | TaskState::Lost => {
            let why = t
                .reason
                .as_deref()
                .map_or(String::new(), |r| format!(": {r}"));
            format!("{}{why}", render::s(&t.state))
        }
    }
}

/// What a change of the status is measured by: everything but the retry's countdown, so a
/// log is not written a line a second while a task waits for its retry.
fn status_key(t: &TaskView) -> String {
    format!(
        "{:?} {} {} {:?} {:?}",
        t.state, t.attempt, t.delivery, t.waiting, t.worker
    )
}

/// The redrawn block: the progress line, then every step in order with its tasks.
pub(crate) fn block(d: &DeploymentDetail, now: Timestamp) -> Vec<String> {
    let mut out = vec![render::progress(d)];
    let all: usize = d.steps.iter().map(|s| s.tasks.len()).sum();
    let width = d
        .steps
        .iter()
        .flat_map(|s| s.tasks.iter().map(move |t| label(s, t).chars().count()))
        .max()
        .unwrap_or(0);
    for step in &d.steps {
        if all > BLOCK_TASKS && step.state != StepState::Running {
            out.push(format!(
                "  {}: {} ({} tasks)",
                step.name,
                render::s(&step.state),
                step.tasks.len()
            ));
            continue;
        }
        for t in step.tasks.iter().take(BLOCK_TASKS_PER_STEP) {
            out.push(format!(
                "  {:<width$}  {}",
                label(step, t),
                task_status(step, t, now)
            ));
        }
        let rest = &step.tasks[step.tasks.len().min(BLOCK_TASKS_PER_STEP)..];
        if !rest.is_empty() {
            let done = rest.iter().filter(|t| t.state.is_terminal()).count();
            out.push(format!(
                "  {} · … {} more tasks ({done} ended)",
                step.name,
                rest.len()
            ));
        }
    }
    out
}

/// A line for each run of a task that ended without ending the task: an attempt that failed
/// and is retried, or a run lost with its worker and delivered again.
fn ended_run(step: &StepDetail, t: &TaskView, a: &AttemptView) -> Option<String> {
    let last = t.attempts.iter().map(|x| x.attempt).max().unwrap_or(0);
    let worker = a.worker.as_ref().map_or("-", |w| w.as_str());
    let of = attempt_of(a.attempt, step).unwrap_or_else(|| format!("attempt {}", a.attempt));
    match a.state {
        TaskState::Lost => Some(format!(
            "{}: {of}, run {}: worker {worker} stopped without finishing it; the broker delivers it again",
            label(step, t),
            a.delivery
        )),
        // The last attempt of an ended task is told with the task's failure.
        TaskState::Failed | TaskState::TimedOut
            if a.attempt < last || t.state == TaskState::RetryScheduled =>
        {
            Some(format!(
                "{}: {of} {} on {worker} ({}); retrying",
                label(step, t),
                render::s(&a.state).replace('_', " "),
                ending(a.exit_code, None)
            ))
        }
        _ => None,
    }
}

/// The lines of a task's output from its `attempt` on, at most the last `n`.
async fn output_tail(
    api: &ApiClient,
    deployment: &str,
    task: &TaskId,
    attempt: u32,
    n: usize,
) -> anyhow::Result<VecDeque<LogLine>> {
    // Strictly before every line of `attempt`, so earlier attempts are not read at all.
    let after = attempt
        .checked_sub(1)
        .filter(|a| *a > 0)
        .map(|a| LogCursor {
            attempt: a,
            run: u32::MAX,
            line: u64::MAX,
        });
    let mut tail = VecDeque::with_capacity(n + 1);
    api.task_log_pages(deployment, &task.to_string(), after, |lines| {
        for l in lines {
            tail.push_back(l);
            if tail.len() > n {
                tail.pop_front();
            }
        }
    })
    .await?;
    Ok(tail)
}

/// What is printed when a task has failed or timed out: how it ended, each attempt, and the
/// tail of the last attempt's output (stderr lines marked `!`); `None` when the output was
/// printed as it came (`--logs`), so that it is not repeated.
pub(crate) fn failure(
    deployment: &str,
    step: &StepDetail,
    t: &TaskView,
    tail: Option<&VecDeque<LogLine>>,
) -> Vec<String> {
    let mut out = vec![format!(
        "{} {} in pool {}: {}",
        label(step, t),
        render::s(&t.state).replace('_', " "),
        t.pool,
        ending(t.exit_code, t.reason.as_deref())
    )];
    let allowed = step.retries + 1;
    let runs: Vec<String> = t
        .attempts
        .iter()
        .map(|a| {
            let run = if a.delivery > 1 {
                format!(" run {}", a.delivery)
            } else {
                String::new()
            };
            format!(
                "{}{run} {} on {} ({})",
                a.attempt,
                render::s(&a.state).replace('_', " "),
                a.worker.as_ref().map_or("-", |w| w.as_str()),
                ending(a.exit_code, None)
            )
        })
        .collect();
    out.push(format!(
        "  attempts ({} of {allowed} allowed; retries: {}): {}",
        t.attempt,
        step.retries,
        runs.join("; ")
    ));
    let Some(tail) = tail else {
        out.push(format!("  its output is above (attempt {})", t.attempt));
        out.push(format!("  all of it: shoal logs {deployment} {}", t.id));
        return out;
    };
    if tail.is_empty() {
        out.push(format!("  attempt {} wrote no output", t.attempt));
    } else {
        let lines = match tail.len() {
            1 => "line".to_owned(),
            n => format!("{n} lines"),
        };
        out.push(format!(
            "  its last {lines} of output (attempt {}; \"!\" marks stderr):",
            t.attempt
        ));
        for l in tail {
            let mark = if l.stream == OutputStream::Stderr {
                '!'
            } else {
                '|'
            };
            out.push(format!("  {mark} {}", l.line));
        }
    }
    out.push(format!("  all of it: shoal logs {deployment} {}", t.id));
    out
}

/// What the user sees of one deployment while it is followed.
pub(crate) struct Watch<'a> {
    api: &'a ApiClient,
    id: String,
    /// Stdout is a terminal: redraw the block in place.
    tty: bool,
    /// The block on screen now (terminal only).
    drawn: Vec<String>,
    /// Per task, the status last appended (not a terminal).
    shown: HashMap<TaskId, String>,
    /// The last progress line appended (not a terminal).
    progress: String,
    /// Runs already told as ended: (task, attempt, run).
    told: HashSet<(TaskId, u32, u32)>,
    /// Tasks whose failure was already shown.
    failed: HashSet<TaskId>,
    /// The tasks' output lines as they arrive (`--logs`), until they end.
    output: Option<mpsc::Receiver<Vec<String>>>,
    /// The tasks' output is printed as it arrives: a failure does not repeat its tail.
    logs: bool,
}

impl<'a> Watch<'a> {
    /// Follows deployment `id`, printing to stdout.
    pub(crate) fn new(api: &'a ApiClient, id: &str) -> Watch<'a> {
        Watch {
            api,
            id: id.to_owned(),
            tty: std::io::stdout().is_terminal(),
            drawn: Vec::new(),
            shown: HashMap::new(),
            progress: String::new(),
            told: HashSet::new(),
            failed: HashSet::new(),
            output: None,
            logs: false,
        }
    }

    /// The same watch, also printing the output lines `lines` hands over (above the block
    /// on a terminal).
    pub(crate) fn with_output(mut self, lines: mpsc::Receiver<Vec<String>>) -> Watch<'a> {
        self.output = Some(lines);
        self.logs = true;
        self
    }

    /// Polls the deployment until it ends, showing it as it goes; its last state.
    ///
    /// # Errors
    /// The planner could not be read.
    pub(crate) async fn run(&mut self) -> anyhow::Result<DeploymentDetail> {
        loop {
            let d: DeploymentDetail = self
                .api
                .get_as(&format!("/api/deployments/{}", self.id))
                .await?;
            if d.state.is_terminal() {
                self.drain_output().await;
            }
            if self.tty {
                let lasting = self.lasting(&d).await;
                self.redraw(&lasting, block(&d, Timestamp::now()));
            } else {
                // Each change first, then what it means (a retry, a failure's output).
                self.append(&d);
                for l in self.lasting(&d).await {
                    println!("{l}");
                }
            }
            if d.state.is_terminal() {
                return Ok(d);
            }
            self.pause().await;
        }
    }

    /// Waits [`POLL`], printing the output lines that arrive meanwhile.
    async fn pause(&mut self) {
        let until = tokio::time::Instant::now() + POLL;
        while let Some(rx) = self.output.as_mut() {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return,
                lines = rx.recv() => match lines {
                    Some(lines) => self.show_output(&lines),
                    None => self.output = None,
                },
            }
        }
        tokio::time::sleep_until(until).await;
    }

    /// Once the deployment has ended: prints the output lines still on their way.
    async fn drain_output(&mut self) {
        let Some(mut rx) = self.output.take() else {
            return;
        };
        let until = tokio::time::Instant::now() + OUTPUT_DRAIN;
        while let Ok(Some(lines)) = tokio::time::timeout_at(until, rx.recv()).await {
            self.show_output(&lines);
        }
    }

    /// Output lines: above the block on a terminal, appended otherwise.
    fn show_output(&mut self, lines: &[String]) {
        if self.tty {
            let block = self.drawn.clone();
            self.redraw(lines, block);
        } else {
            for l in lines {
                println!("{l}");
            }
        }
    }

    /// The lines to keep from this reading: runs that ended without ending their task, and
    /// tasks that failed, with the tail of their output.
    async fn lasting(&mut self, d: &DeploymentDetail) -> Vec<String> {
        let mut out = Vec::new();
        for step in &d.steps {
            for t in &step.tasks {
                for a in &t.attempts {
                    let run = (t.id, a.attempt, a.delivery);
                    if self.told.contains(&run) {
                        continue;
                    }
                    // A run not (yet) worth telling is looked at again next time.
                    if let Some(line) = ended_run(step, t, a) {
                        self.told.insert(run);
                        out.push(line);
                    }
                }
                if matches!(t.state, TaskState::Failed | TaskState::TimedOut)
                    && self.failed.insert(t.id)
                {
                    let tail = self.failure_tail(t, &mut out).await;
                    out.extend(failure(&self.id, step, t, tail.as_ref()));
                }
            }
        }
        out
    }

    /// The tail of a failed task's output to show; `None` when it was printed as it came.
    async fn failure_tail(&self, t: &TaskView, out: &mut Vec<String>) -> Option<VecDeque<LogLine>> {
        if self.logs {
            return None;
        }
        // Output is helpful, not essential: a failure to read it is said, not fatal.
        let tail = output_tail(self.api, &self.id, &t.id, t.attempt, TAIL_LINES)
            .await
            .unwrap_or_else(|e| {
                out.push(format!("(cannot read the output of task {}: {e})", t.id));
                VecDeque::new()
            });
        Some(tail)
    }

    /// Terminal: clears the block, prints the lasting lines, draws the block again.
    fn redraw(&mut self, lasting: &[String], block: Vec<String>) {
        // Unchanged: drawing it again would only flicker.
        if lasting.is_empty() && block == self.drawn {
            return;
        }
        // A terminal that does not say its size (0) is taken as wide.
        let width = comfy_table::Table::new()
            .width()
            .filter(|w| *w >= 20)
            .map_or(200, usize::from);
        let mut out = std::io::stdout().lock();
        let mut text = String::new();
        if !self.drawn.is_empty() {
            // To the first column of the block's first line, then clear to the end.
            text.push_str(&format!("\x1b[{}F\x1b[J", self.drawn.len()));
        }
        for l in lasting {
            text.push_str(l);
            text.push('\n');
        }
        for l in &block {
            // A line the terminal wraps would be two and spoil the count: cut it to fit.
            let cut: String = l.chars().take(width.saturating_sub(1).max(1)).collect();
            text.push_str(&cut);
            text.push('\n');
        }
        self.drawn = block;
        // A terminal that went away is no reason to stop following.
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    }

    /// Not a terminal: the progress line and each task's status, when they changed.
    fn append(&mut self, d: &DeploymentDetail) {
        let progress = render::progress(d);
        if progress != self.progress {
            println!("{progress}");
            self.progress = progress;
        }
        let now = Timestamp::now();
        for step in &d.steps {
            for t in &step.tasks {
                let key = status_key(t);
                // Pending is where every task starts: nothing to tell yet.
                let first_pending =
                    t.state == TaskState::Pending && !self.shown.contains_key(&t.id);
                if !first_pending && self.shown.get(&t.id) != Some(&key) {
                    println!("  {}: {}", label(step, t), task_status(step, t, now));
                    self.shown.insert(t.id, key);
                    if t.state == TaskState::RetryScheduled {
                        // That line told the failed attempt already.
                        let failed = t.attempts.iter().filter(|a| a.attempt == t.attempt);
                        self.told
                            .extend(failed.map(|a| (t.id, a.attempt, a.delivery)));
                    }
                }
            }
        }
    }
}

/// Told after Ctrl-C: the deployment goes on in the planner; what still runs (when the
/// planner answers quickly) and the commands to follow or cancel it. `api_flag` is the
/// `--api …` the commands need, if any.
pub(crate) fn interrupted(id: &str, d: Option<&DeploymentDetail>, api_flag: &str) -> Vec<String> {
    let mut out = vec![format!(
        "interrupted: stopped following deployment {id}; it goes on in the planner"
    )];
    if let Some(d) = d {
        let now = Timestamp::now();
        let open: Vec<String> = d
            .steps
            .iter()
            .flat_map(|s| s.tasks.iter().map(move |t| (s, t)))
            .filter(|(_, t)| !t.state.is_terminal())
            .map(|(s, t)| format!("  {}: {}", label(s, t), task_status(s, t, now)))
            .collect();
        if d.state.is_terminal() {
            out.push(format!("it has ended meanwhile: {}", render::s(&d.state)));
        } else {
            let tasks = match open.len() {
                1 => "1 task".to_owned(),
                n => format!("{n} tasks"),
            };
            out.push(format!("still to do ({}, {tasks}):", render::s(&d.state)));
            out.extend(open);
        }
    }
    out.push(format!("follow it:  shoal{api_flag} deployment show {id}"));
    out.push(format!("cancel it:  shoal{api_flag} cancel {id}"));
    out
}

#[cfg(test)]
mod tests;
