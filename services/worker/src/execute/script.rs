//! Script steps: the script is written into a fresh per-task directory and run with the
//! chosen shell in its own process group, so a timeout or cancellation ends every process
//! it started (SIGTERM, then SIGKILL after a grace period).

use super::secrets::Opened;
use super::{OutputSink, Stops, TaskResult};
use crate::WorkerConfig;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use shoal_shared::messages::TaskMessage;
use shoal_shared::{Outcome, OutputStream};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// Time between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Longest output line; longer lines are split into pieces of this size.
const MAX_LINE: usize = 64 * 1024;
/// How long a pipe may stay silent after the step's processes are gone before it is left.
const READER_GRACE: Duration = Duration::from_secs(2);
/// How long a pipe is read at most after the step's processes are gone (an escaped process
/// that keeps writing).
const READER_CAP: Duration = Duration::from_secs(30);

/// What to run: one delivery of a task's script, with its opened sensitive variables.
pub(super) struct Run<'a> {
    pub task: &'a TaskMessage,
    pub delivery: u32,
    pub script: &'a str,
    pub shell: &'a str,
    pub secrets: &'a Opened,
    /// The package to acquire and unpack first (`deploy_package`).
    pub package: Option<super::package::Package<'a>>,
}

impl<'a> Run<'a> {
    /// A script run (`bash` unless another shell is named), without a package.
    pub fn of(
        task: &'a TaskMessage,
        delivery: u32,
        script: &'a str,
        shell: Option<&'a str>,
        secrets: &'a Opened,
    ) -> Run<'a> {
        Run {
            task,
            delivery,
            script,
            shell: shell.unwrap_or("bash"),
            secrets,
            package: None,
        }
    }
}

pub(super) async fn run(
    run: Run<'_>,
    config: &WorkerConfig,
    sink: &OutputSink,
    stops: &Stops,
) -> TaskResult {
    let Run {
        task,
        delivery,
        script,
        shell,
        secrets,
        package,
    } = run;
    let dir = config
        .work_dir
        .join("tasks")
        .join(format!("{}-{}-{delivery}", task.task, task.attempt));
    let result = match package {
        None => {
            run_in(
                task, script, shell, secrets, config, sink, stops, &dir, None,
            )
            .await
        }
        Some(package) => {
            match super::package::prepare(&package, task, delivery, &dir, sink, stops).await {
                Ok(env) => {
                    run_in(
                        task,
                        script,
                        shell,
                        secrets,
                        config,
                        sink,
                        stops,
                        &dir,
                        Some(&env),
                    )
                    .await
                }
                Err(result) => result,
            }
        }
    };
    if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
        tracing::debug!(error = %e, dir = %dir.display(), "task directory not removed");
    }
    result
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; the parts of `Run` and where it runs"
)]
async fn run_in(
    task: &TaskMessage,
    script: &str,
    shell: &str,
    secrets: &Opened,
    config: &WorkerConfig,
    sink: &OutputSink,
    stops: &Stops,
    dir: &std::path::Path,
    package: Option<&super::package::Unpacked>,
) -> TaskResult {
    if let Err(e) = tokio::fs::create_dir_all(dir).await {
        return TaskResult::failed(format!(
            "cannot create task directory {}: {e}",
            dir.display()
        ));
    }
    let path = dir.join("script.sh");
    if let Err(e) = tokio::fs::write(&path, script).await {
        return TaskResult::failed(format!("cannot write script to {}: {e}", path.display()));
    }
    let mut cmd = Command::new(shell);
    if let Some(p) = package {
        cmd.envs(p.env());
    }
    cmd.arg(&path)
        .current_dir(package.map_or(dir, |p| p.dir.as_path()))
        .envs(&task.variables)
        .envs(secrets.env())
        .env("SHOAL_DEPLOYMENT_ID", task.deployment.to_string())
        .env("SHOAL_TASK_ID", task.task.to_string())
        .env("SHOAL_STEP", &task.step_name)
        .env(
            "SHOAL_TARGET",
            task.target.as_ref().map_or("", |t| t.as_str()),
        )
        .env(
            "SHOAL_TARGET_ENDPOINT",
            task.endpoint.as_deref().unwrap_or(""),
        )
        .env("SHOAL_POOL", task.pool.as_str())
        .env("SHOAL_WORKER", config.name.as_str())
        .env(
            "SHOAL_REGION",
            config.region.as_ref().map_or("", |r| r.as_str()),
        )
        .env("SHOAL_ATTEMPT", task.attempt.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return TaskResult::failed(format!("cannot start {shell}: {e}")),
    };
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    // Cancelled once every process of the step is gone; from then on a pipe that stays
    // silent for READER_GRACE is given up (something escaped the group and holds it open).
    let gone = CancellationToken::new();
    let readers = async {
        tokio::join!(
            read_lines(stdout, OutputStream::Stdout, sink, &gone),
            read_lines(stderr, OutputStream::Stderr, sink, &gone)
        )
    };
    // A package step's timeout counts from before its package was acquired.
    let timeout = match package.and_then(|p| p.deadline) {
        Some(d) => Some(d.saturating_duration_since(tokio::time::Instant::now())),
        None => task.timeout_secs.map(Duration::from_secs),
    };
    let supervise = async {
        let ended = tokio::select! {
            status = child.wait() => Ended::Exited(status),
            () = sleep_opt(timeout) => Ended::TimedOut,
            () = stops.kill.cancelled() => Ended::Interrupted,
            () = stops.cancel.cancelled() => Ended::Cancelled,
        };
        // Whatever happened, no process of this step outlives it.
        if let Some(pgid) = pgid {
            if !matches!(ended, Ended::Exited(_)) {
                let _ = killpg(pgid, Signal::SIGTERM);
                grace(&mut child, pgid).await;
            }
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        let _ = child.wait().await;
        gone.cancel();
        ended
    };
    let (ended, (out_escaped, err_escaped)) = tokio::join!(supervise, readers);
    if out_escaped || err_escaped {
        tracing::warn!(task.id = %task.task, "a process of the step escaped its process group and keeps its output open; output after this point is not collected");
    }
    match ended {
        Ended::Exited(Ok(status)) => {
            let code = status.code();
            if status.success() {
                TaskResult {
                    outcome: Outcome::Succeeded,
                    exit_code: code,
                    reason: None,
                    interrupted: false,
                }
            } else {
                let reason = match code {
                    Some(c) => format!("script exited with code {c}"),
                    None => "script was killed by a signal".to_owned(),
                };
                TaskResult {
                    outcome: Outcome::Failed,
                    exit_code: code,
                    reason: Some(reason),
                    interrupted: false,
                }
            }
        }
        Ended::Exited(Err(e)) => {
            TaskResult::failed(format!("lost track of the script process: {e}"))
        }
        Ended::TimedOut => TaskResult {
            outcome: Outcome::TimedOut,
            exit_code: None,
            reason: Some(format!(
                "timed out after {} s; its processes were terminated",
                task.timeout_secs.unwrap_or(0)
            )),
            interrupted: false,
        },
        Ended::Cancelled => TaskResult {
            outcome: Outcome::Cancelled,
            exit_code: None,
            reason: Some("cancelled: its processes were terminated".to_owned()),
            interrupted: false,
        },
        Ended::Interrupted => TaskResult {
            outcome: Outcome::Cancelled,
            exit_code: None,
            reason: Some("the worker stopped before the task ended".to_owned()),
            interrupted: true,
        },
    }
}

/// Waits until every process of the group has exited after SIGTERM, at most [`KILL_GRACE`].
/// The shell itself usually dies at once; its children are what need the time.
async fn grace(child: &mut tokio::process::Child, pgid: Pid) {
    let deadline = tokio::time::Instant::now() + KILL_GRACE;
    let mut reaped = false;
    while tokio::time::Instant::now() < deadline && killpg(pgid, None).is_ok() {
        if reaped {
            tokio::time::sleep(Duration::from_millis(50)).await;
        } else {
            tokio::select! {
                _ = child.wait() => reaped = true,
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
}

enum Ended {
    Exited(std::io::Result<std::process::ExitStatus>),
    TimedOut,
    Interrupted,
    Cancelled,
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Reads a pipe line by line into the sink until it closes. Once `gone` is cancelled (the
/// step's processes are gone) a pipe silent for [`READER_GRACE`] is left; returns whether
/// that happened. Waiting on the sink is never cut short, so no written line is lost.
async fn read_lines<R: AsyncRead + Unpin>(
    pipe: Option<R>,
    stream: OutputStream,
    sink: &OutputSink,
    gone: &CancellationToken,
) -> bool {
    let Some(pipe) = pipe else { return false };
    let mut reader = BufReader::new(pipe);
    let mut line: Vec<u8> = Vec::new();
    let mut escaped = false;
    let mut cap: Option<tokio::time::Instant> = None;
    loop {
        // `fill_buf` is cancel-safe: nothing read is lost when the select drops it.
        let filled = if gone.is_cancelled() {
            let cap = *cap.get_or_insert_with(|| tokio::time::Instant::now() + READER_CAP);
            let wait = READER_GRACE.min(cap.saturating_duration_since(tokio::time::Instant::now()));
            match tokio::time::timeout(wait, reader.fill_buf()).await {
                Ok(r) => r,
                Err(_) => {
                    escaped = true;
                    break;
                }
            }
        } else {
            tokio::select! {
                r = reader.fill_buf() => r,
                () = gone.cancelled() => continue,
            }
        };
        let buf = match filled {
            Ok([]) | Err(_) => break,
            Ok(buf) => buf,
        };
        let room = MAX_LINE - line.len();
        let (take, complete) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) if i <= room => (i + 1, true),
            // No newline within reach: a full piece is emitted only once a byte after it is
            // known not to be the newline, so a line of exactly MAX_LINE stays one line.
            _ => (buf.len().min(room), buf.len() > room),
        };
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if complete {
            emit(&mut line, stream, sink).await;
        }
    }
    if !line.is_empty() {
        emit(&mut line, stream, sink).await;
    }
    escaped
}

async fn emit(line: &mut Vec<u8>, stream: OutputStream, sink: &OutputSink) {
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    sink.line(stream, String::from_utf8_lossy(line).into_owned())
        .await;
    line.clear();
}
