//! Health probes of targets, run on the worker next to them: a TCP connection, an HTTP GET,
//! or a script (exit 0 healthy, 2 healthy with warnings, anything else unhealthy).

use crate::WorkerConfig;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use shoal_shared::{HealthCheck, HealthState};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub state: HealthState,
    pub reason: Option<String>,
    pub duration_ms: u64,
}

/// Output kept from a script probe for its reason.
const REASON_BYTES: usize = 512;

/// Runs a probe to its end or its timeout.
pub async fn run(
    probe: &HealthCheck,
    target: &str,
    endpoint: Option<&str>,
    config: &WorkerConfig,
) -> ProbeResult {
    let started = Instant::now();
    let timeout = Duration::from_secs(probe.timeout_secs());
    let (state, reason) = match probe {
        HealthCheck::Tcp { address, .. } => tcp(address, timeout).await,
        HealthCheck::Http {
            url, expect_status, ..
        } => http(url, expect_status.unwrap_or(200), timeout).await,
        HealthCheck::Script { script, .. } => {
            self::script(script, target, endpoint, config, timeout).await
        }
        // The planner sends no check of a target whose checks are off.
        HealthCheck::Off => (
            HealthState::Unknown,
            Some("checks of this target are off".to_owned()),
        ),
    };
    ProbeResult {
        state,
        reason,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}

async fn tcp(address: &str, timeout: Duration) -> (HealthState, Option<String>) {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(_)) => (HealthState::Healthy, None),
        Ok(Err(e)) => (
            HealthState::Unhealthy,
            Some(format!("cannot connect to {address}: {e}")),
        ),
        Err(_) => (
            HealthState::Unhealthy,
            Some(format!(
                "no connection to {address} within {} s",
                timeout.as_secs()
            )),
        ),
    }
}

async fn http(url: &str, expect: u16, timeout: Duration) -> (HealthState, Option<String>) {
    let client = match reqwest::Client::builder().timeout(timeout).build() {
        Ok(c) => c,
        Err(e) => {
            return (
                HealthState::Unhealthy,
                Some(format!("cannot make an HTTP client: {e}")),
            );
        }
    };
    match client.get(url).send().await {
        Ok(resp) if resp.status().as_u16() == expect => (HealthState::Healthy, None),
        Ok(resp) => (
            HealthState::Unhealthy,
            Some(format!(
                "GET {url} answered {}, expected {expect}",
                resp.status().as_u16()
            )),
        ),
        Err(e) => {
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                why.push_str(&format!(": {s}"));
                source = s.source();
            }
            let what = if e.is_timeout() {
                format!("GET {url} got no answer within {} s", timeout.as_secs())
            } else {
                format!("GET {url} failed: {why}")
            };
            (HealthState::Unhealthy, Some(what))
        }
    }
}

async fn script(
    script: &str,
    target: &str,
    endpoint: Option<&str>,
    config: &WorkerConfig,
    timeout: Duration,
) -> (HealthState, Option<String>) {
    let dir = config
        .work_dir
        .join("probes")
        .join(uuid::Uuid::new_v4().to_string());
    if let Err(e) = tokio::fs::create_dir_all(&dir).await {
        return (
            HealthState::Unhealthy,
            Some(format!("cannot create {}: {e}", dir.display())),
        );
    }
    let child = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(&dir)
        .env("SHOAL_TARGET", target)
        .env("SHOAL_TARGET_ENDPOINT", endpoint.unwrap_or(""))
        .env("SHOAL_POOL", config.pool.as_str())
        .env("SHOAL_WORKER", config.name.as_str())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let result = match child {
        Err(e) => (
            HealthState::Unhealthy,
            Some(format!("cannot start bash: {e}")),
        ),
        Ok(child) => {
            // Nothing a probe started outlives it, even when the probe is dropped half-way
            // (its task was cancelled or the worker stops).
            let _group = KillGroup(
                child
                    .id()
                    .and_then(|id| i32::try_from(id).ok())
                    .map(Pid::from_raw),
            );
            match tokio::time::timeout(timeout, child.wait_with_output()).await {
                Ok(Ok(out)) => {
                    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                    text.push_str(&String::from_utf8_lossy(&out.stderr));
                    let said = last_words(&text);
                    match out.status.code() {
                        Some(0) => (HealthState::Healthy, said),
                        Some(2) => (HealthState::HealthyWithWarnings, said),
                        code => {
                            let how = code.map_or_else(
                                || "was killed by a signal".to_owned(),
                                |c| format!("exited with code {c}"),
                            );
                            let why = said.map_or(String::new(), |s| format!(": {s}"));
                            (
                                HealthState::Unhealthy,
                                Some(format!("check script {how}{why}")),
                            )
                        }
                    }
                }
                Ok(Err(e)) => (
                    HealthState::Unhealthy,
                    Some(format!("lost track of the check script: {e}")),
                ),
                Err(_) => (
                    HealthState::Unhealthy,
                    Some(format!(
                        "check script timed out after {} s",
                        timeout.as_secs()
                    )),
                ),
            }
        }
    };
    let _ = tokio::fs::remove_dir_all(&dir).await;
    result
}

/// Kills a process group when dropped.
struct KillGroup(Option<Pid>);

impl Drop for KillGroup {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

/// The end of a probe's output, trimmed to a reason-sized piece.
fn last_words(text: &str) -> Option<String> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let start = text.len().saturating_sub(REASON_BYTES);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    Some(text[start..].replace('\n', " / "))
}
