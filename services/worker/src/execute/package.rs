//! The first part of a `deploy_package` step: acquire the package (chunks from the cache or
//! the feed, waiting for a feed that does not answer within the task's timeout), say in the
//! task's output what moved, and unpack it into `<task dir>/package`, where the script runs.

use super::unpack::unpack;
use super::{OutputSink, Stops, TaskResult};
use crate::packages::{Acquired, Acquirer};
use crate::report::Reporter;
use shoal_shared::messages::{PackageSpec, TaskMessage, WorkerBody};
use shoal_shared::package::Acquisition;
use shoal_shared::{Outcome, OutputStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long acquisition waits for a feed that does not answer, when the task has no timeout.
const WAIT_WITHOUT_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest pause between two tries.
const RETRY_MAX: Duration = Duration::from_secs(10);

/// A package unpacked for its script.
#[derive(Debug)]
pub(super) struct Unpacked {
    pub dir: PathBuf,
    /// When the task's timeout ends (it counts from before the acquisition).
    pub deadline: Option<tokio::time::Instant>,
    id: String,
    version: String,
}

impl Unpacked {
    /// What the script is told about its package.
    pub fn env(&self) -> [(&'static str, String); 3] {
        [
            ("SHOAL_PACKAGE_ID", self.id.clone()),
            ("SHOAL_PACKAGE_VERSION", self.version.clone()),
            ("SHOAL_PACKAGE_PATH", self.dir.display().to_string()),
        ]
    }
}

/// What a `deploy_package` task needs beyond its script: its package, the feed and cache,
/// and where to report the acquisition.
#[derive(Debug, Clone, Copy)]
pub(super) struct Package<'a> {
    pub spec: &'a PackageSpec,
    pub acquirer: &'a Acquirer,
    pub reporter: &'a Reporter,
    /// Most bytes the package may unpack to.
    pub unpack_limit: u64,
}

/// Acquires and unpacks the package into `dir` (reporting what the acquisition moved); the
/// task's result if it cannot.
pub(super) async fn prepare(
    package: &Package<'_>,
    task: &TaskMessage,
    delivery: u32,
    dir: &Path,
    sink: &OutputSink,
    stops: &Stops,
) -> Result<Unpacked, TaskResult> {
    let Package {
        spec,
        acquirer,
        reporter,
        unpack_limit,
    } = *package;
    let began = std::time::Instant::now();
    let deadline =
        (task.timeout_secs).map(|t| tokio::time::Instant::now() + Duration::from_secs(t));
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| TaskResult::failed(format!("cannot create {}: {e}", dir.display())))?;
    let archive = dir.join(format!("{}-{}.package", spec.id, spec.version));
    let give_up = deadline.unwrap_or_else(|| tokio::time::Instant::now() + WAIT_WITHOUT_TIMEOUT);
    let acquired = acquire(spec, acquirer, give_up, &archive, sink, stops).await?;
    say(sink, &summary(spec, &acquired)).await;
    reporter
        .send(WorkerBody::PackageAcquired {
            deployment: task.deployment,
            task: task.task,
            attempt: task.attempt,
            delivery,
            acquired: Acquisition {
                id: spec.id.clone(),
                version: spec.version.clone(),
                chunks_fetched: acquired.chunks_fetched as u64,
                bytes_fetched: acquired.bytes_fetched,
                chunks_cached: acquired.chunks_cached as u64,
                bytes_cached: acquired.bytes_cached,
                duration_ms: u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX),
            },
        })
        .await;
    let into = dir.join("package");
    let (from, to) = (archive.clone(), into.clone());
    let unpacked = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&to).map_err(|e| e.to_string())?;
        unpack(&from, &to, unpack_limit)
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    let _ = tokio::fs::remove_file(&archive).await;
    match unpacked {
        Ok(files) => {
            say(
                sink,
                &format!("package unpacked: {files} files in {}", into.display()),
            )
            .await;
            Ok(Unpacked {
                dir: into,
                deadline,
                id: spec.id.to_string(),
                version: spec.version.to_string(),
            })
        }
        Err(e) => Err(TaskResult::failed(format!(
            "package {} {} not unpacked: {e}",
            spec.id, spec.version
        ))),
    }
}

/// Acquires, trying again while the feed does not answer, until the task's timeout.
async fn acquire(
    spec: &PackageSpec,
    acquirer: &Acquirer,
    give_up: tokio::time::Instant,
    archive: &Path,
    sink: &OutputSink,
    stops: &Stops,
) -> Result<Acquired, TaskResult> {
    let mut pause = Duration::from_secs(1);
    loop {
        let tried = tokio::select! {
            r = acquirer.acquire(spec, archive) => r,
            () = tokio::time::sleep_until(give_up) => return Err(TaskResult {
                outcome: Outcome::TimedOut,
                exit_code: None,
                reason: Some(format!("timed out acquiring package {} {}", spec.id, spec.version)),
                interrupted: false,
            }),
            () = stops.cancel.cancelled() => return Err(stopped("cancelled while acquiring its package", false)),
            () = stops.kill.cancelled() => return Err(stopped("the worker stopped while acquiring the package", true)),
        };
        let e = match tried {
            Ok(a) => return Ok(a),
            Err(e) => e,
        };
        let failed = || {
            TaskResult::failed(format!(
                "package {} {} not acquired: {}",
                spec.id, spec.version, e.reason
            ))
        };
        if !e.retry || tokio::time::Instant::now() + pause > give_up {
            return Err(failed());
        }
        say(
            sink,
            &format!(
                "package feed: {}; trying again in {} s",
                e.reason,
                pause.as_secs()
            ),
        )
        .await;
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RETRY_MAX);
    }
}

fn stopped(reason: &str, interrupted: bool) -> TaskResult {
    TaskResult {
        outcome: Outcome::Cancelled,
        exit_code: None,
        reason: Some(reason.to_owned()),
        interrupted,
    }
}

/// One output line of what the acquisition moved: "from cache" when nothing was fetched.
fn summary(spec: &PackageSpec, a: &Acquired) -> String {
    if a.chunks_fetched == 0 {
        return format!(
            "package {} {} ({} bytes) from cache: {} chunks, nothing fetched",
            spec.id, spec.version, spec.size, a.chunks_cached
        );
    }
    format!(
        "package {} {} ({} bytes): {} chunks ({} bytes) fetched from the feed, {} chunks ({} bytes) from cache",
        spec.id,
        spec.version,
        spec.size,
        a.chunks_fetched,
        a.bytes_fetched,
        a.chunks_cached,
        a.bytes_cached
    )
}

async fn say(sink: &OutputSink, line: &str) {
    sink.line(OutputStream::Stdout, format!("[shoal] {line}"))
        .await;
}
