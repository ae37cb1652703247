//! Task output followed live with the `shoal` binary against a real planner and worker:
//! `shoal logs -f` (a deployment's tasks, or one task, through retries and a planner restart)
//! and `shoal deploy --wait --logs`. Each line arrives while its task still runs, once, in
//! order, stderr marked; the exit code says how the task or deployment ended.

use serde_json::{Value, json};
use shoal_cli::exit;
use shoal_e2e::{Cluster, WAIT};
use shoal_shared::api::DeploymentDetail;
use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Numbered lines half a second apart, then one on stderr: about 2.5 s in all.
const SLOW: &str = "for i in 1 2 3 4 5; do echo line $i; sleep 0.5; done; echo oops >&2";

/// What `shoal logs -f ID` prints of [`SLOW`] as step `count` (no target).
const SLOW_LINES: [&str; 6] = [
    "count | line 1",
    "count | line 2",
    "count | line 3",
    "count | line 4",
    "count | line 5",
    "count ! oops",
];

/// A cluster with environment `prod` (environments come from registered targets); the steps
/// here have no roles, so each runs once, with no target, in pool `default`.
async fn cluster(planner_args: &[&str]) -> anyhow::Result<Cluster> {
    let c = Cluster::start(planner_args).await?;
    c.target("web-1", "prod", &["web"], None).await?;
    Ok(c)
}

fn deployment(step: Value) -> Value {
    json!({"project": "shop", "environment": "prod", "steps": [step]})
}

/// A `shoal` command running in the background: its stdout line by line as it comes.
struct Running {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Running {
    fn start(c: &Cluster, args: &[&str]) -> anyhow::Result<Running> {
        let mut child = c
            .shoal_command(args)?
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (tx, stdout) = mpsc::channel();
        let out = child.stdout.take();
        std::thread::spawn(move || {
            for line in out.into_iter().flat_map(|o| BufReader::new(o).lines()) {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let err = child.stderr.take();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut e) = err {
                let _ = e.read_to_string(&mut text);
            }
            text
        });
        Ok(Running {
            child,
            stdout,
            stderr: Some(stderr),
        })
    }

    /// Reads stdout until a line `wanted` accepts: that line, and every line read.
    fn line_where(
        &mut self,
        wanted: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<(String, Vec<String>)> {
        let deadline = Instant::now() + timeout;
        let mut read = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(line) = self.stdout.recv_timeout(left) else {
                break;
            };
            read.push(line.clone());
            if wanted(&line) {
                return Ok((line, read));
            }
        }
        anyhow::bail!("no such line in {timeout:?}; read:\n{}", read.join("\n"))
    }

    /// The lines printed and not read yet.
    fn pending(&self) -> Vec<String> {
        self.stdout.try_iter().collect()
    }

    /// Waits for the command to end: its exit code, the stdout lines not read yet, stderr.
    fn finish(mut self, timeout: Duration) -> anyhow::Result<(i32, Vec<String>, String)> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let printed = self.pending().join("\n");
                anyhow::bail!("still running after {timeout:?}; printed:\n{printed}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The reader ends with the pipe.
        let mut lines = Vec::new();
        while let Ok(line) = self.stdout.recv_timeout(Duration::from_secs(5)) {
            lines.push(line);
        }
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Ok((status.code().unwrap_or(-1), lines, stderr))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The deployment as the planner shows it now.
async fn detail(c: &Cluster, id: &str) -> anyhow::Result<DeploymentDetail> {
    Ok(c.api.get_as(&format!("/api/deployments/{id}")).await?)
}

/// Asserts that the deployment is still running: a line printed now was printed live.
async fn still_running(c: &Cluster, id: &str, seen: &[String]) -> anyhow::Result<()> {
    let d = detail(c, id).await?;
    assert!(
        !d.state.is_terminal(),
        "the first line came only once the deployment was {:?}; printed: {seen:?}",
        d.state
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_prints_each_line_live_once_in_order_and_exits_0() -> anyhow::Result<()> {
    let c = cluster(&[]).await?;
    let id = c
        .deploy(&deployment(json!({"name": "count",
            "action": {"type": "script", "script": SLOW}})))
        .await?;
    let mut cli = Running::start(&c, &["logs", "-f", &id])?;
    let (_, first) = cli.line_where(|l| l.contains("line"), WAIT)?;
    still_running(&c, &id, &first).await?;
    let early = cli.pending();
    assert!(
        !early
            .iter()
            .any(|l| l.contains("line 5") || l.contains("oops")),
        "the last lines were there with the first: {early:?}"
    );
    let (code, rest, stderr) = cli.finish(WAIT)?;
    let all: Vec<String> = [first, early, rest].concat();
    assert_eq!(all, SLOW_LINES, "stderr: {stderr}");
    assert_eq!(code, exit::OK, "{stderr}");
    assert!(
        stderr.contains(&format!("deployment {id}: succeeded")),
        "{stderr}"
    );
    // Once it has ended, the same command prints the same lines and ends at once.
    let (code, out, err) = c.shoal(&["logs", "-f", &id])?;
    assert_eq!(
        (code, out.lines().collect::<Vec<_>>()),
        (0, SLOW_LINES.to_vec()),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_task_followed_through_its_retry_exits_non_zero() -> anyhow::Result<()> {
    let c = cluster(&[]).await?;
    let script = "echo try-$SHOAL_ATTEMPT; sleep 0.5; echo bad >&2; exit 3";
    let id = c
        .deploy(&deployment(
            json!({"name": "fail", "retries": 1, "retry_backoff_secs": 1,
            "action": {"type": "script", "script": script}}),
        ))
        .await?;
    let task = c.task(&id, "fail").await?;
    let task = task["id"].as_str().unwrap_or_default().to_owned();
    // One task: followed past its first failed attempt to the end of its last.
    let cli = Running::start(&c, &["logs", "--follow", &id, &task])?;
    let (code, lines, stderr) = cli.finish(WAIT)?;
    assert_eq!(
        lines,
        [
            &format!("== task {task} (fail · (no target) · pool default)"),
            "1.1   try-1",
            "1.1 ! bad",
            "2.1   try-2",
            "2.1 ! bad",
        ],
        "{stderr}"
    );
    assert_eq!(code, exit::FAILED, "{stderr}");
    assert!(stderr.contains(&format!("task {task}: failed")), "{stderr}");
    // The whole deployment, once it has ended: each attempt after the first is named.
    let (code, out, err) = c.shoal(&["logs", "-f", &id])?;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "fail | try-1",
            "fail ! bad",
            "fail · attempt 2 | try-2",
            "fail · attempt 2 ! bad",
        ],
        "{err}"
    );
    assert_eq!(code, exit::FAILED, "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_wait_logs_shows_the_output_as_it_arrives() -> anyhow::Result<()> {
    let c = cluster(&[]).await?;
    let file = c.write_file(
        "count.toml",
        &format!(
            "project = \"shop\"\nenvironment = \"prod\"\n\n[[steps]]\nname = \"count\"\naction = {{ type = \"script\", script = \"{SLOW}\" }}\n"
        ),
    )?;
    let path = file.display().to_string();
    let mut cli = Running::start(&c, &["deploy", &path, "--wait", "--logs"])?;
    let (accepted, _) = cli.line_where(|l| l.ends_with(" accepted"), WAIT)?;
    let id = accepted
        .strip_prefix("deployment ")
        .and_then(|l| l.strip_suffix(" accepted"))
        .unwrap_or_default()
        .to_owned();
    let (_, before) = cli.line_where(|l| l == SLOW_LINES[0], WAIT)?;
    still_running(&c, &id, &before).await?;
    let (code, rest, stderr) = cli.finish(WAIT)?;
    let all: Vec<String> = [before, rest].concat();
    assert_eq!(code, exit::OK, "{}\n{stderr}", all.join("\n"));
    for wanted in SLOW_LINES {
        let times = all.iter().filter(|l| *l == wanted).count();
        assert_eq!(
            times,
            1,
            "{wanted:?} printed {times} times:\n{}",
            all.join("\n")
        );
    }
    let at = |wanted: &str| all.iter().position(|l| l == wanted);
    assert!(
        at(SLOW_LINES[0]) < at(SLOW_LINES[4]) && at(SLOW_LINES[4]) < at(SLOW_LINES[5]),
        "{}",
        all.join("\n")
    );
    assert!(
        all.iter().any(|l| l.contains("count: succeeded on ")),
        "the wait view is still there:\n{}",
        all.join("\n")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_wait_logs_of_a_failure_prints_its_output_once() -> anyhow::Result<()> {
    let c = cluster(&[]).await?;
    let file = c.write_file(
        "fail.toml",
        "project = \"shop\"\nenvironment = \"prod\"\n\n[[steps]]\nname = \"fail\"\naction = { type = \"script\", script = \"echo copying; echo disk-full >&2; exit 3\" }\n",
    )?;
    let path = file.display().to_string();
    let (code, out, err) = c.shoal(&["deploy", &path, "--wait", "--logs"])?;
    assert_eq!(code, exit::FAILED, "{out}\n{err}");
    // Streamed as it came; the failure's summary points at it rather than repeating it.
    for (wanted, text) in [
        ("fail | copying", "copying"),
        ("fail ! disk-full", "disk-full"),
    ] {
        assert!(
            out.lines().any(|l| l == wanted),
            "{wanted:?} missing:\n{out}"
        );
        let times = out.lines().filter(|l| l.contains(text)).count();
        assert_eq!(times, 1, "{text:?} printed {times} times:\n{out}");
    }
    assert!(
        out.lines()
            .any(|l| l == "  its output is above (attempt 1)"),
        "{out}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_resumes_after_a_planner_restart_without_losing_or_repeating_a_line()
-> anyhow::Result<()> {
    // A worker of its own: it runs on while the planner is away, its output waiting in the
    // broker.
    let mut c = cluster(&["--no-builtin-worker"]).await?;
    c.worker("w-1", "default", "local", &[])?;
    c.wait_online(&["w-1"]).await?;
    let script = "for i in $(seq 1 12); do echo line $i; sleep 0.5; done";
    let id = c
        .deploy(&deployment(json!({"name": "count",
            "action": {"type": "script", "script": script}})))
        .await?;
    let mut cli = Running::start(&c, &["logs", "-f", &id])?;
    let (_, before) = cli.line_where(|l| l.ends_with("line 2"), WAIT)?;
    c.stop_planner().await?;
    c.start_planner().await?;
    let (code, rest, stderr) = cli.finish(WAIT)?;
    let all: Vec<String> = [before, rest].concat();
    let wanted: Vec<String> = (1..=12).map(|i| format!("count | line {i}")).collect();
    assert_eq!(all, wanted, "{stderr}");
    assert_eq!(code, exit::OK, "{stderr}");
    Ok(())
}
