//! A worker stops on SIGTERM or SIGINT whatever its connection does (never connected, or its
//! broker gone after it ran), and every connection problem it logs names the URL.

use nix::sys::signal::Signal;
use shoal_cli::local::{Nats, Proc, free_port};
use std::path::Path;
use std::time::Duration;

/// How long a test waits for a line in the worker's log.
const WAIT: Duration = Duration::from_secs(30);
/// The worker's drain deadline in these tests; it must have stopped by then.
const DRAIN_SECS: u64 = 3;

fn start_worker(dir: &Path, url: &str) -> anyhow::Result<Proc> {
    let trusted = dir.join("trusted-keys");
    let key = shoal_shared::signed::SigningKey::generate()?;
    std::fs::write(&trusted, key.public().to_line())?;
    let mut args: Vec<String> = [
        "--nats-url",
        url,
        "--name",
        "w1",
        "--drain-timeout",
        &DRAIN_SECS.to_string(),
        "--work-dir",
        &dir.join("work").display().to_string(),
        "--trusted-keys",
        &trusted.display().to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    // Its identity, when the broker is one of the harness's (secured) servers.
    args.extend(shoal_cli::local::trust::worker_identity_args(
        url,
        "w1",
        "default",
        &[],
    ));
    let bin = Path::new(env!("CARGO_BIN_EXE_shoal-worker"));
    Proc::spawn("worker", bin, &args, &dir.join("logs"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_never_reached_nats_stops_on_sigterm_and_names_the_url() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let url = format!("nats://127.0.0.1:{}", free_port()?);
    let mut worker = start_worker(dir.path(), &url)?;
    worker
        .wait_for_output(
            &format!("cannot reach NATS at {url}: connection refused"),
            WAIT,
        )
        .await?;
    worker
        .stops_within(Signal::SIGTERM, Duration::from_secs(DRAIN_SECS))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_never_reached_nats_stops_on_sigint() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!("nats://127.0.0.1:{}", free_port()?);
    let mut worker = start_worker(dir.path(), &url)?;
    worker
        .wait_for_output(&format!("cannot reach NATS at {url}"), WAIT)
        .await?;
    worker
        .stops_within(Signal::SIGINT, Duration::from_secs(DRAIN_SECS))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_broker_is_gone_stops_on_sigterm_and_names_the_url() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut nats = Nats::start(dir.path()).await?;
    let url = nats.url();
    let mut worker = start_worker(dir.path(), &url)?;
    // The worker says which broker it is on, then (no planner made its queue) looks for it.
    worker
        .wait_for_output(&format!("connected to NATS at {url}: server"), WAIT)
        .await?;
    worker.wait_for_output("nats-server 2.", WAIT).await?;
    nats.kill().await?;
    worker
        .wait_for_output(&format!("lost the connection to NATS at {url}"), WAIT)
        .await?;
    worker
        .wait_for_output(
            &format!("cannot reach NATS at {url}: connection refused"),
            WAIT,
        )
        .await?;
    worker
        .stops_within(Signal::SIGTERM, Duration::from_secs(DRAIN_SECS))
        .await
}
