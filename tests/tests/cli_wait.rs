//! `shoal deploy --wait` as a user watches it: why a task waits, retries as they happen, the
//! output of a task that failed, Ctrl-C, and the deployment file's forms (JSON, `--var`).

use shoal_e2e::Cluster;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A cluster with environment `prod` (environments come from registered targets); the
/// steps here have no roles, so they run once, with no target.
async fn cluster() -> anyhow::Result<Cluster> {
    let c = Cluster::start(&[]).await?;
    c.target("web-1", "prod", &["web"], None).await?;
    Ok(c)
}

/// A file's path as an argument.
fn arg(p: &std::path::Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_task_shows_the_tail_of_its_output_and_its_exit_code() -> anyhow::Result<()> {
    let c = cluster().await?;
    // 30 lines on stdout and then one on stderr: only the last 20 are shown. The two are
    // separate pipes, read as they come; the pause makes the stderr line the last one read.
    let file = c.write_file(
        "fail.toml",
        r#"
project = "shop"
environment = "prod"

[[steps]]
name = "migrate"
action = { type = "script", script = "for i in $(seq 1 30); do echo line-$i; done; sleep 0.3; echo disk-full >&2; exit 3" }
"#,
    )?;
    let (ok, out) = c.cli(&["deploy", &arg(&file), "--wait"])?;
    assert!(!ok, "{out}");
    assert!(
        out.contains("migrate failed in pool default: exit code 3"),
        "the exit code is named:\n{out}"
    );
    assert!(
        out.contains("  | line-30") && out.contains("  ! disk-full") && out.contains("  | line-12"),
        "the tail of the output, stderr marked:\n{out}"
    );
    assert!(
        !out.contains("line-11\n"),
        "no more than 20 lines of the tail:\n{out}"
    );
    assert!(
        out.contains("attempts (1 of 1 allowed; retries: 0)") && out.contains("shoal logs "),
        "its attempts and where the rest is:\n{out}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_task_shows_each_attempt_as_it_happens() -> anyhow::Result<()> {
    let c = cluster().await?;
    let file = c.write_file(
        "retry.toml",
        r#"
project = "shop"
environment = "prod"

[[steps]]
name = "flaky"
retries = 2
retry_backoff_secs = 1
action = { type = "script", script = "echo try-$SHOAL_ATTEMPT; exit 4" }
"#,
    )?;
    let (ok, out) = c.cli(&["deploy", &arg(&file), "--wait"])?;
    assert!(!ok, "{out}");
    // Each failed attempt is told as it happens: with its retry's wait, or on its own line
    // when the retry came before the CLI looked again.
    for k in [1, 2] {
        assert!(
            out.lines().any(|l| l.starts_with(&format!(
                "  flaky: attempt {k} failed (exit code 4); retry in"
            )) || l.starts_with(&format!("flaky: attempt {k} of 3 failed on"))),
            "attempt {k} is not told:\n{out}"
        );
    }
    for expected in [
        "(attempt 3 of 3)",
        "attempts (3 of 3 allowed; retries: 2): 1 failed",
        "flaky failed in pool default: exit code 4",
    ] {
        assert!(out.contains(expected), "{expected:?} missing in:\n{out}");
    }
    Ok(())
}

/// Output of a running CLI, line by line, and its process.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(c: &Cluster, args: &[&str]) -> anyhow::Result<Running> {
        let mut child = c
            .shoal_command(args)?
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (tx, lines) = mpsc::channel();
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Running {
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// Waits for a line containing `text`.
    fn wait_line(&mut self, text: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                let hit = line.contains(text);
                self.seen.push(line);
                if hit {
                    return Ok(());
                }
            }
        }
        anyhow::bail!("no line with {text:?} in:\n{}", self.seen.join("\n"))
    }

    /// Waits for the process to end: its exit code and all it printed.
    fn finish(&mut self, timeout: Duration) -> anyhow::Result<(Option<i32>, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                // The readers end with the pipes.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
                    self.seen.push(line);
                }
                return Ok((status.code(), self.seen.join("\n")));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                anyhow::bail!("still running after {timeout:?}:\n{}", self.seen.join("\n"));
            }
            while let Ok(line) = self.lines.try_recv() {
                self.seen.push(line);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_without_a_worker_says_so_and_ctrl_c_leaves_the_deployment_running()
-> anyhow::Result<()> {
    let c = cluster().await?;
    c.pool("ap-south", "ap").await?;
    let file = c.write_file(
        "stuck.toml",
        r#"
project = "shop"
environment = "prod"

[[steps]]
name = "deploy-ap"
pool = "ap-south"
action = { type = "script", script = "echo hi" }
"#,
    )?;
    let mut cli = Running::start(&c, &["deploy", &arg(&file), "--wait"])?;
    cli.wait_line(
        "deploy-ap: waiting for a worker in pool ap-south",
        Duration::from_secs(30),
    )?;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(cli.child.id())?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
    let (code, out) = cli.finish(Duration::from_secs(10))?;
    assert_eq!(code, Some(130), "{out}");
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("deployment ")?.strip_suffix(" accepted"))
        .unwrap_or_default()
        .to_owned();
    assert!(!id.is_empty(), "{out}");
    assert!(
        out.contains(&format!(
            "interrupted: stopped following deployment {id}; it goes on in the planner"
        )),
        "{out}"
    );
    assert!(
        out.contains("  deploy-ap: waiting for a worker in pool ap-south"),
        "what is left:\n{out}"
    );
    assert!(
        out.contains(&format!(
            "cancel it:  shoal --api {} cancel {id}",
            c.api.base()
        )),
        "the exact command to cancel it:\n{out}"
    );
    let d: shoal_shared::api::DeploymentDetail =
        c.api.get_as(&format!("/api/deployments/{id}")).await?;
    assert_eq!(d.state, shoal_shared::DeploymentState::Running);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_deployment_and_vars_reach_the_script() -> anyhow::Result<()> {
    let c = cluster().await?;
    let body = r#"{
  "project": "shop",
  "environment": "prod",
  "steps": [
    {"name": "greet", "variables": {"GREETING": "hello"},
     "action": {"type": "script", "script": "echo \"said $GREETING $WHO\""}},
    {"name": "notify", "variables": {"GREETING": "hello"},
     "action": {"type": "script", "script": "echo \"said $GREETING $WHO\""}}
  ]
}"#;
    // By extension, and by content when the name says nothing.
    for name in ["deploy.json", "deployment"] {
        let file = c.write_file(name, body)?;
        let (ok, out) = c.cli(&[
            "deploy",
            &arg(&file),
            "--var",
            "WHO=world",
            "--var",
            "notify.GREETING=bye",
            "--wait",
        ])?;
        assert!(ok, "{out}");
        let id = out.split_whitespace().nth(1).unwrap_or_default().to_owned();
        let (ok, logs) = c.cli(&["logs", &id])?;
        assert!(
            ok && logs.contains("said hello world") && logs.contains("said bye world"),
            "{name}:\n{logs}"
        );
    }
    let file = c.write_file("deploy.json", body)?;
    let (ok, out) = c.cli(&["deploy", &arg(&file), "--var", "nope.X=1"])?;
    assert!(
        !ok && out.contains("no step \"nope\" (steps: greet, notify)"),
        "{out}"
    );
    let (ok, out) = c.cli(&["deploy", &arg(&file), "--var", "X"])?;
    assert!(!ok && out.contains("expected KEY=VALUE"), "{out}");
    Ok(())
}
