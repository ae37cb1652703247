//! A starting planner answers at once: until it is ready, every request gets 503 saying what
//! it waits for (NATS unreachable, or JetStream off), SIGTERM stops it at once, and once
//! connected it says which broker it is on.

use nix::sys::signal::Signal;
use shoal_cli::client::{ApiClient, ClientError};
use shoal_cli::local::{Nats, Proc, free_port};
use std::path::Path;
use std::time::Duration;

/// How long a test waits for an answer or a log line.
const WAIT: Duration = Duration::from_secs(30);
/// How soon a planner must have stopped after SIGTERM while starting.
const STOP: Duration = Duration::from_secs(3);

struct Planner {
    proc: Proc,
    api: ApiClient,
}

fn start_planner(dir: &Path, url: &str) -> anyhow::Result<Planner> {
    let port = free_port()?;
    let args: Vec<String> = shoal_cli::local::planner_args(url, &dir.join("data"), port, &[]);
    let bin = Path::new(env!("CARGO_BIN_EXE_shoal-planner"));
    Ok(Planner {
        proc: Proc::spawn("planner", bin, &args, &dir.join("logs"))?,
        api: ApiClient::new(&format!("http://127.0.0.1:{port}")),
    })
}

/// The planner's first answer other than "cannot connect".
async fn first_answer(p: &Planner) -> anyhow::Result<Result<serde_json::Value, ClientError>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match p.api.get("/api/pools").await {
            Err(ClientError::Unreachable { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            answer => return Ok(answer),
        }
    }
}

/// Waits until the 503's message contains `text` (start-up may go through other states
/// first), and returns the message.
async fn starting_message(p: &Planner, text: &str) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answer = tokio::time::timeout(Duration::from_secs(2), first_answer(p)).await;
        let message = match answer {
            Ok(Ok(Err(ClientError::Api {
                status: 503,
                message,
            }))) => message,
            other => anyhow::bail!("not a 503 at once: {other:?}\n{}", p.proc.output()),
        };
        if message.contains(text) {
            return Ok(message);
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("no {text:?} in the 503 after {WAIT:?}: {message}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planner_that_cannot_reach_nats_answers_503_naming_the_url_and_stops_at_once()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!("nats://127.0.0.1:{}", free_port()?);
    let mut p = start_planner(dir.path(), &url)?;
    let message = starting_message(&p, "connection refused").await?;
    assert!(
        message.starts_with(&format!(
            "the planner is starting: cannot reach NATS at {url}: connection refused"
        )),
        "{message}"
    );
    // Each 503 closes its connection, so no client is left holding one when the real API
    // takes the port over.
    let head = raw_answer_head(p.api.base()).await?;
    assert!(
        head.starts_with("HTTP/1.1 503") && head.contains("connection: close"),
        "{head}"
    );
    let out = p.proc.output();
    assert!(
        out.contains(&format!("cannot reach NATS at {url}")) && !out.contains("JetStream"),
        "the log names the URL and does not blame JetStream:\n{out}"
    );
    p.proc.stops_within(Signal::SIGTERM, STOP).await
}

/// The status line and headers, lower-cased, of a plain HTTP/1.1 GET with keep-alive.
async fn raw_answer_head(base: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET /api/pools HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut answer)).await??;
    let text = String::from_utf8_lossy(&answer).to_lowercase();
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    Ok(head.replace("http/1.1", "HTTP/1.1"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planner_on_a_server_without_jetstream_says_so() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let nats = Nats::start_with_config(dir.path(), "plain", "").await?;
    let url = nats.url();
    let mut p = start_planner(dir.path(), &url)?;
    let message = starting_message(&p, "JetStream is not enabled").await?;
    assert!(
        message.contains(&format!("connected to NATS at {url}")),
        "{message}"
    );
    assert!(message.contains("-js"), "says how to enable it: {message}");
    p.proc
        .wait_for_output("JetStream is not enabled there", WAIT)
        .await?;
    assert!(
        !p.proc.output().contains("cannot reach NATS"),
        "{}",
        p.proc.output()
    );
    p.proc.stops_within(Signal::SIGTERM, STOP).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planner_says_at_start_which_broker_it_is_on() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let nats = Nats::start_with_config(
        dir.path(),
        "shoal-hub",
        "jetstream { store_dir: \"{dir}\" }",
    )
    .await?;
    let url = nats.url();
    let mut p = start_planner(dir.path(), &url)?;
    p.proc.wait_for_output("planner ready", WAIT).await?;
    let out = p.proc.output();
    assert!(
        out.contains(&format!(
            "connected to NATS at {url}: server \"shoal-hub\" (nats-server 2."
        )),
        "{out}"
    );
    assert!(out.contains("server.id=N"), "{out}");
    assert!(out.contains("JetStream on"), "{out}");
    p.proc.stops_within(Signal::SIGTERM, STOP).await
}
