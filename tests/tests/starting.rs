//! A command run while the planner is still starting (here: its broker is not up yet) says
//! once what the planner waits for and is answered once it is ready, instead of failing with
//! the start-up 503. The README's walk-through runs `shoal pool add` right after starting the
//! planner and relies on it.

use shoal_cli::local::{Proc, find_binary, find_nats_server, free_ports, planner_args};
use std::process::Stdio;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_command_waits_for_a_starting_planner_and_says_what_it_waits_for() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // The broker's port is chosen now; the broker starts only later.
    let [nats_port, http_port] = free_ports()?;
    let url = format!("nats://127.0.0.1:{nats_port}");
    let args = planner_args(&url, &dir.path().join("data"), http_port, &[]);
    let mut planner = Proc::spawn(
        "planner",
        &find_binary("shoal-planner")?,
        &args,
        &dir.path().join("logs"),
    )?;
    let api = format!("http://127.0.0.1:{http_port}");
    shoal_cli::local::wait_for_port(http_port, WAIT).await?;
    let cli = tokio::process::Command::new(find_binary("shoal")?)
        .args(["--api", &api, "pool", "list"])
        // Read at every try: the planner makes its admin token only once it is past the broker.
        .env(
            "SHOAL_TOKEN_FILE",
            shoal_cli::local::admin_token_file(&dir.path().join("data")),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    // The command is waiting (the planner answers 503 until it reaches the broker) ...
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // ... when the broker comes up on that port.
    let store = dir.path().join("nats");
    let nats_args: Vec<String> = vec![
        "-js".into(),
        "-a".into(),
        "127.0.0.1".into(),
        "-p".into(),
        nats_port.to_string(),
        "-sd".into(),
        store.display().to_string(),
    ];
    let mut nats = Proc::spawn(
        "nats",
        &find_nats_server()?,
        &nats_args,
        &dir.path().join("logs"),
    )?;
    let out = tokio::time::timeout(WAIT, cli.wait_with_output()).await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the command failed: {}\nstdout: {stdout}\nstderr: {stderr}\nplanner:\n{}",
        out.status,
        planner.output()
    );
    assert!(
        stderr.contains("the planner is starting") && stderr.contains(&url),
        "it did not say what the planner waited for: {stderr}"
    );
    assert_eq!(
        stderr.matches("the planner is starting").count(),
        1,
        "said more than once: {stderr}"
    );
    assert!(stdout.contains("default"), "the pools: {stdout}");
    planner.kill().await?;
    nats.kill().await?;
    Ok(())
}
