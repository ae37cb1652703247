//! README's quick start as a user runs it: `shoal demo` starts the whole secured system
//! (broker with TLS and an nkey per process, signing, sealed secrets, tokens), routes a
//! deployment by all three rules, and stops everything again.

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use shoal_cli::local;
use std::time::Duration;

/// Longer than the demo's own two-minute wait for its deployment.
const DEMO_TIMEOUT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_routes_a_deployment_by_all_three_rules_with_security_on() -> anyhow::Result<()> {
    let mut cmd = tokio::process::Command::new(local::find_binary("shoal")?);
    // Its own process group, so a demo that hangs is stopped with its planner, workers and
    // broker, not only the `shoal` process.
    cmd.arg("demo")
        .env("NO_COLOR", "1")
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let group = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    let out = match tokio::time::timeout(DEMO_TIMEOUT, child.wait_with_output()).await {
        Ok(out) => out?,
        Err(_) => {
            if let Some(group) = group {
                let _ = killpg(group, Signal::SIGKILL);
            }
            anyhow::bail!("`shoal demo` did not end within {DEMO_TIMEOUT:?}");
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("TLS with client certificates, an nkey identity per process"),
        "{text}"
    );
    // The task table names each task's rule: the step's pool, the target's, the global one.
    for rule in ["step", "target_default", "global_default"] {
        assert!(
            text.contains(&format!("┆ {rule} ")),
            "no task by {rule}:\n{text}"
        );
    }
    // A task's output in each pool: the secret was opened there, and printed masked.
    for pool in ["default", "eu-west", "us-east"] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("pool {pool:<8}")))
            .unwrap_or_default();
        assert!(
            line.ends_with("connecting with DB_PASSWORD=********"),
            "no masked secret from pool {pool}:\n{text}"
        );
    }
    // A package deployed twice: each worker fetches it once, then deploys it from cache.
    assert!(
        text.contains("package site 1.0.0 pushed to the feed"),
        "{text}"
    );
    assert!(text.contains("deployed (succeeded):"), "{text}");
    assert!(text.contains("deployed again (succeeded):"), "{text}");
    let again = text.split("deployed again").nth(1).unwrap_or_default();
    assert!(
        again.matches("from cache: ").count() >= 2 && again.contains("nothing fetched"),
        "the single-worker pools deploy the second time from cache:\n{text}"
    );
    // The demo's password is `demo-<hex>-<pid>`: nowhere in what it printed, nowhere on disk.
    assert!(!text.contains("DB_PASSWORD=demo-"), "{text}");
    assert!(text.contains("in clear in 0 files"), "{text}");
    let last = text
        .lines()
        .rfind(|l| l.starts_with("deployment "))
        .unwrap_or_default();
    assert!(last.ends_with(": succeeded"), "{last}\n{text}");
    assert!(
        text.contains("stopping workers, planner and nats-server"),
        "{text}"
    );
    Ok(())
}
