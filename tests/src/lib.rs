//! Harness of the end-to-end tests: a [`Cluster`] of real processes (nats-server on a random
//! port with its own store dir, the planner, workers) in a temp dir, with helpers that poll
//! the API with deadlines instead of sleeping. On a failing test the processes' logs are
//! printed.
#![forbid(unsafe_code)]

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use shoal_cli::client::{ApiClient, ClientError};
use shoal_cli::local::{self, Proc};
use std::path::PathBuf;
use std::time::Duration;

pub mod checks;
pub mod compose;

pub use serde_json;
pub use shoal_cli::local::{Nats, free_port, free_ports};

/// Default deadline of a wait.
pub const WAIT: Duration = Duration::from_secs(60);

/// Real processes of one shoal installation.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nats: Nats,
    pub planner: Option<Proc>,
    pub api: ApiClient,
    pub http_port: u16,
    pub workers: Vec<Proc>,
    /// The other nodes of a clustered hub (the first is `nats`).
    pub hub_nodes: Vec<Nats>,
    /// What the planner is given when it is not `nats`' URL (every node of a cluster).
    planner_url: Option<String>,
    planner_args: Vec<String>,
}

impl Cluster {
    /// nats-server and a planner started with `planner_args` (e.g. `--no-builtin-worker`).
    ///
    /// # Errors
    /// A part did not come up.
    pub async fn start(planner_args: &[&str]) -> anyhow::Result<Cluster> {
        let dir = tempdir()?;
        let nats = Nats::start(dir.path()).await?;
        Cluster::start_on(dir, nats, planner_args).await
    }

    /// A planner on a broker the test made (e.g. a hub with leaf nodes) in `dir`.
    ///
    /// # Errors
    /// The planner did not come up.
    pub async fn start_on(
        dir: tempfile::TempDir,
        nats: Nats,
        planner_args: &[&str],
    ) -> anyhow::Result<Cluster> {
        let http_port = local::free_port()?;
        // Scheduled health checks are off unless a test asks for them: the targets' example
        // endpoints are unreachable, and a scheduled check would make them unhealthy (and
        // stop deployments) at a random moment.
        let mut planner_args: Vec<&str> = planner_args.to_vec();
        if !planner_args.contains(&"--health-interval-secs") {
            planner_args.extend(["--health-interval-secs", "0"]);
        }
        let data_dir = dir.path().join("planner-data");
        let mut c = Cluster {
            api: local::admin_client(http_port, &data_dir),
            dir,
            nats,
            planner: None,
            http_port,
            workers: Vec::new(),
            hub_nodes: Vec::new(),
            planner_url: None,
            planner_args: planner_args.iter().map(|s| (*s).to_owned()).collect(),
        };
        c.start_planner().await?;
        Ok(c)
    }

    /// A planner given every node of a clustered hub the test made in `dir`
    /// ([`local::NatsCluster`]): its first node is [`Cluster::nats`], the others
    /// [`Cluster::hub_nodes`].
    ///
    /// # Errors
    /// The planner did not come up.
    pub async fn start_on_cluster(
        dir: tempfile::TempDir,
        hub: local::NatsCluster,
        planner_args: &[&str],
    ) -> anyhow::Result<Cluster> {
        let url = hub.url();
        let mut nodes = hub.nodes.into_iter();
        let first = nodes.next().context("a cluster without nodes")?;
        let args: Vec<&str> = planner_args
            .iter()
            .copied()
            .chain(["--health-interval-secs", "0"])
            .collect();
        let http_port = local::free_port()?;
        let data_dir = dir.path().join("planner-data");
        let mut c = Cluster {
            api: local::admin_client(http_port, &data_dir),
            dir,
            nats: first,
            planner: None,
            http_port,
            workers: Vec::new(),
            hub_nodes: nodes.collect(),
            planner_url: Some(url),
            planner_args: args.iter().map(|s| (*s).to_owned()).collect(),
        };
        c.start_planner().await?;
        Ok(c)
    }

    /// The planner's data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("planner-data")
    }

    fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// Starts the planner (again) on the same data dir and port.
    ///
    /// # Errors
    /// It did not come up.
    pub async fn start_planner(&mut self) -> anyhow::Result<()> {
        let args: Vec<&str> = self.planner_args.iter().map(String::as_str).collect();
        let url = self.planner_url.clone().unwrap_or_else(|| self.nats.url());
        let p = local::start_planner(&self.logs(), &url, &self.data_dir(), self.http_port, &args)
            .await?;
        self.planner = Some(p);
        Ok(())
    }

    /// Stops the planner with SIGTERM and checks it exited 0.
    ///
    /// # Errors
    /// It did not stop cleanly.
    pub async fn stop_planner(&mut self) -> anyhow::Result<()> {
        if let Some(mut p) = self.planner.take() {
            let status = p.terminate(Duration::from_secs(30)).await?;
            if !status.success() {
                bail!("planner exited with {status}:\n{}", p.output());
            }
        }
        Ok(())
    }

    /// Registers a pool.
    ///
    /// # Errors
    /// The API refused.
    pub async fn pool(&self, name: &str, region: &str) -> anyhow::Result<()> {
        self.api
            .post("/api/pools", &json!({"name": name, "region": region}))
            .await?;
        Ok(())
    }

    /// Registers a pool with a key for sealing sensitive variables (made with
    /// `shoal-planner pool-keygen` in `<dir>/pool-keys`); answers the secret key file for
    /// the pool's workers (`--pool-key`).
    ///
    /// # Errors
    /// The key could not be made or the API refused.
    pub async fn pool_with_key(&self, name: &str, region: &str) -> anyhow::Result<PathBuf> {
        let (secret, public) = local::make_pool_key(&self.dir.path().join("pool-keys"), name)?;
        self.api
            .post(
                "/api/pools",
                &json!({"name": name, "region": region, "sealing_key": public}),
            )
            .await?;
        Ok(secret)
    }

    /// Registers a target.
    ///
    /// # Errors
    /// The API refused.
    pub async fn target(
        &self,
        name: &str,
        env: &str,
        roles: &[&str],
        default_pool: Option<&str>,
    ) -> anyhow::Result<()> {
        self.api
            .post(
                "/api/targets",
                &json!({"name": name, "kind": "azure-web-app", "environment": env, "roles": roles,
                        "endpoint": format!("https://{name}.example.invalid"), "default_pool": default_pool}),
            )
            .await?;
        Ok(())
    }

    /// Starts a worker process connected to another server (a region's leaf node).
    ///
    /// # Errors
    /// It could not be started.
    pub fn worker_via(
        &mut self,
        nats_url: &str,
        name: &str,
        pool: &str,
        region: &str,
        extra: &[&str],
    ) -> anyhow::Result<()> {
        // A test that passes its own --work-dir gets exactly that.
        let work = self.dir.path().join("work").join(name);
        let own = extra.contains(&"--work-dir");
        let p = local::start_worker(
            &self.logs(),
            nats_url,
            name,
            pool,
            Some(region),
            (!own).then_some(work.as_path()),
            extra,
        )?;
        self.workers.push(p);
        Ok(())
    }

    /// Starts a worker process connected to the cluster's broker.
    ///
    /// # Errors
    /// It could not be started.
    pub fn worker(
        &mut self,
        name: &str,
        pool: &str,
        region: &str,
        extra: &[&str],
    ) -> anyhow::Result<()> {
        let url = self.nats.url();
        self.worker_via(&url, name, pool, region, extra)
    }

    /// Waits until every named worker is online.
    ///
    /// # Errors
    /// Not all came online in time.
    pub async fn wait_online(&self, names: &[&str]) -> anyhow::Result<Value> {
        self.wait_status(names, "online").await
    }

    /// Waits until every named worker shows `status` (`online`, `draining`, …).
    ///
    /// # Errors
    /// Not all showed it in time.
    pub async fn wait_status(&self, names: &[&str], status: &str) -> anyhow::Result<Value> {
        self.wait_for(&format!("workers {status}"), WAIT, || async {
            let workers = self.api.get("/api/workers").await?;
            let shows = |n: &str| {
                workers
                    .as_array()
                    .is_some_and(|ws| ws.iter().any(|w| w["name"] == n && w["status"] == status))
            };
            Ok(names.iter().all(|n| shows(n)).then_some(workers))
        })
        .await
        .map_err(|e| {
            let logs: Vec<String> = self
                .workers
                .iter()
                .filter(|p| names.contains(&p.name.as_str()))
                .map(|p| format!("----- {} -----\n{}", p.name, tail(&p.output(), 30)))
                .collect();
            e.context(logs.join("\n"))
        })
    }

    /// Submits a deployment and returns its id.
    ///
    /// # Errors
    /// The API refused.
    pub async fn deploy(&self, body: &Value) -> anyhow::Result<String> {
        let created = self.api.post("/api/deployments", body).await?;
        Ok(created["id"]
            .as_str()
            .context("no id in answer")?
            .to_owned())
    }

    /// The output lines of a task (a task's JSON from a deployment), in order, every page.
    ///
    /// # Errors
    /// The API refused.
    pub async fn output(&self, deployment: &str, task: &Value) -> anyhow::Result<Vec<String>> {
        let task = task["id"].as_str().context("task without id")?;
        let lines = self.api.task_log(deployment, task).await?;
        Ok(lines.into_iter().map(|l| l.line).collect())
    }

    /// Waits until a deployment ends and returns it.
    ///
    /// # Errors
    /// It did not end within `timeout`: the error holds where each task stood and the
    /// processes' last log lines, so a failure in CI says why without a rerun.
    pub async fn finished(&self, id: &str, timeout: Duration) -> anyhow::Result<Value> {
        let every = Duration::from_millis(100);
        deployment_end(&self.api, id, timeout, every, async { self.log_tails() }).await
    }

    /// The last lines of the planner's and each worker's log.
    fn log_tails(&self) -> String {
        let procs = self.planner.iter().chain(self.workers.iter());
        procs
            .map(|p| format!("----- {} log -----\n{}", p.name, tail(&p.output(), 60)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Polls `check` until it yields a value or the deadline passes.
    ///
    /// # Errors
    /// The deadline passed (the last error, if any, is in the message).
    pub async fn wait_for<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        check: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
    {
        poll_every(what, timeout, Duration::from_millis(100), check).await
    }

    /// Runs `shoal-planner replay` on the data dir: (exit success, stdout + stderr).
    ///
    /// # Errors
    /// The binary could not be run.
    pub fn replay(&self) -> anyhow::Result<(bool, String)> {
        run_binary(
            "shoal-planner",
            &[
                "replay",
                "--data-dir",
                &self.data_dir().display().to_string(),
            ],
        )
    }

    /// Runs the `shoal` CLI against this cluster: (exit success, stdout + stderr).
    ///
    /// # Errors
    /// The binary could not be run.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<(bool, String)> {
        let mut all = vec!["--api", self.api.base()];
        all.extend_from_slice(args);
        let token = self.admin_token_file();
        run_binary_env("shoal", &all, &[("SHOAL_TOKEN_FILE", token.as_os_str())])
    }

    /// `shoal --api … args` as the admin, as a script runs it (no colour): (exit code,
    /// stdout, stderr).
    ///
    /// # Errors
    /// The binary cannot be run.
    pub fn shoal(&self, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
        let out = self.shoal_command(args)?.output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// The CLI `shoal` with `args`, pointed at the planner with the admin token, without
    /// colour: to run, or to start and read while it runs.
    ///
    /// # Errors
    /// The binary is not built.
    pub fn shoal_command(&self, args: &[&str]) -> anyhow::Result<std::process::Command> {
        let mut cmd = std::process::Command::new(local::find_binary("shoal")?);
        cmd.arg("--api")
            .arg(self.api.base())
            .args(args)
            .env("NO_COLOR", "1")
            .env("SHOAL_TOKEN_FILE", self.admin_token_file());
        Ok(cmd)
    }

    /// The file holding the planner's admin token (what [`Cluster::api`] sends).
    pub fn admin_token_file(&self) -> PathBuf {
        local::admin_token_file(&self.data_dir())
    }

    /// The planner's admin token.
    ///
    /// # Errors
    /// The planner has not made it (yet).
    pub fn admin_token(&self) -> anyhow::Result<String> {
        let file = self.admin_token_file();
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("no admin token in {}", file.display()))?;
        Ok(text.trim().to_owned())
    }

    /// Every event of the log (or of one stream), oldest first, read page by page.
    ///
    /// # Errors
    /// The API refused.
    pub async fn events(&self, stream: Option<&str>) -> anyhow::Result<Vec<Value>> {
        checks::events(&self.api, stream).await
    }

    /// A worker's process: the one of that name started last.
    ///
    /// # Panics
    /// No such worker was started.
    pub fn worker_proc(&mut self, name: &str) -> &mut Proc {
        self.workers
            .iter_mut()
            .rev()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no worker {name}"))
    }

    /// Kills a worker with SIGKILL (no drain, no goodbye).
    ///
    /// # Errors
    /// It could not be killed.
    pub async fn kill_worker(&mut self, name: &str) -> anyhow::Result<()> {
        self.worker_proc(name).kill().await
    }

    /// Kills the planner with SIGKILL.
    ///
    /// # Errors
    /// It could not be killed.
    pub async fn kill_planner(&mut self) -> anyhow::Result<()> {
        if let Some(mut p) = self.planner.take() {
            p.kill().await?;
        }
        Ok(())
    }

    /// The one task of a deployment's step on a target (or with no target), as the API
    /// shows it now.
    ///
    /// # Errors
    /// The API refused, or no such task.
    pub async fn task(&self, deployment: &str, step: &str) -> anyhow::Result<Value> {
        let d = self
            .api
            .get(&format!("/api/deployments/{deployment}"))
            .await?;
        tasks(&d)
            .into_iter()
            .find(|(s, _)| s == step)
            .map(|(_, t)| t)
            .with_context(|| format!("no task in step {step}"))
    }

    /// The installation's signing key file (its public key, `signing.key.pub` beside it, is
    /// what the cluster's workers trust).
    ///
    /// # Errors
    /// The key could not be made.
    pub fn signing_key_path(&self) -> anyhow::Result<PathBuf> {
        local::installation_signing_key(&self.logs())
    }

    /// Headers signing `payload` with the planner's key as the planner would, valid for an
    /// hour: for tests that publish what the planner publishes.
    ///
    /// # Errors
    /// The key could not be read.
    pub fn planner_signature(
        &self,
        binding: &shoal_shared::signed::Binding,
        payload: &[u8],
    ) -> anyhow::Result<async_nats::HeaderMap> {
        let text = std::fs::read_to_string(self.signing_key_path()?)?;
        let key = shoal_shared::signed::SigningKey::parse(&text)?;
        let value = key.sign(binding, payload, shoal_shared::Timestamp::now(), 3_600_000);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(shoal_shared::signed::SIGNATURE_HEADER, value.as_str());
        Ok(headers)
    }

    /// Writes a file into the cluster's temp dir.
    ///
    /// # Errors
    /// The file could not be written.
    pub fn write_file(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Logs in to the dashboard with `token` as its login form does: the value of the
    /// session cookie it gets.
    ///
    /// # Errors
    /// The login was refused or set no cookie.
    pub async fn dashboard_login(&self, token: &str) -> anyhow::Result<String> {
        let resp = browser()?
            .post(format!("{}/login", self.api.base()))
            .form(&[("token", token), ("next", "/")])
            .send()
            .await?;
        anyhow::ensure!(resp.status() == 303, "the login answered {}", resp.status());
        let set = resp
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        set.strip_prefix("shoal_session=")
            .and_then(|v| v.split(';').next())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .with_context(|| format!("no session cookie in {set:?}"))
    }

    /// Logs out of the dashboard session whose cookie is `cookie`, as its pages' button
    /// does (with the CSRF token a page of the session carries).
    ///
    /// # Errors
    /// No page, or the logout was refused.
    pub async fn dashboard_logout(&self, cookie: &str) -> anyhow::Result<()> {
        let (client, base) = (browser()?, self.api.base());
        let cookie = format!("shoal_session={cookie}");
        let page = client
            .get(format!("{base}/"))
            .header("cookie", &cookie)
            .header("accept", "text/html")
            .send()
            .await?
            .text()
            .await?;
        let csrf = page
            .split("<meta name=\"csrf-token\" content=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .with_context(|| format!("no CSRF token in the page: {page}"))?;
        let resp = client
            .post(format!("{base}/logout"))
            .header("cookie", &cookie)
            .form(&[("csrf", csrf)])
            .send()
            .await?;
        anyhow::ensure!(
            resp.status() == 303,
            "the logout answered {}",
            resp.status()
        );
        Ok(())
    }
}

/// An HTTP client that follows no redirect (a login's or logout's 303 is the answer).
fn browser() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut procs: Vec<&Proc> = self.workers.iter().collect();
            procs.extend(self.planner.iter());
            for p in procs {
                eprintln!("----- {} log -----\n{}", p.name, tail(&p.output(), 200));
            }
        }
    }
}

/// One line per task of a deployment document: step, target, state, attempt, delivery,
/// worker and reason.
/// Polls deployment `id` every `every` until it has ended (succeeded, failed or cancelled)
/// and returns it. When it did not end within `timeout`, the error says how it was last seen,
/// where each of its tasks stood, and then `logs` (the processes' last log lines).
///
/// # Errors
/// It did not end within `timeout`.
pub async fn deployment_end(
    api: &ApiClient,
    id: &str,
    timeout: Duration,
    every: Duration,
    logs: impl std::future::Future<Output = String>,
) -> anyhow::Result<Value> {
    let last = std::sync::Mutex::new(Value::Null);
    let done = poll_every("the deployment's end", timeout, every, || async {
        let d = api.get(&format!("/api/deployments/{id}")).await?;
        let ended = matches!(
            d["state"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        );
        if let Ok(mut l) = last.lock() {
            *l = d.clone();
        }
        Ok(ended.then_some(d))
    })
    .await;
    match done {
        Ok(d) => Ok(d),
        Err(e) => {
            let d = last.lock().map(|l| l.clone()).unwrap_or_default();
            Err(e.context(format!(
                "deployment {id} was last {}; its tasks:\n{}\n{}",
                d["state"],
                task_lines(&d),
                logs.await
            )))
        }
    }
}

pub(crate) fn task_lines(d: &Value) -> String {
    tasks(d)
        .iter()
        .map(|(step, t)| {
            format!(
                "  {step} {} {} attempt {} delivery {} worker {} {}",
                t["target"], t["state"], t["attempt"], t["delivery"], t["worker"], t["reason"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `check` every `every` until it yields a value or `timeout` passes: every wait of the
/// tests (a deadline, never a fixed sleep).
///
/// # Errors
/// The deadline passed (the last error, if any, is in the message).
pub async fn poll_every<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what} (last error: {last_err:?})");
        }
        tokio::time::sleep(every).await;
    }
}

/// A hub with JetStream (domain `hub`) that takes leaf nodes on a port of its own: the hub,
/// and that port for [`start_leaf`]. It runs from a trust bundle (TLS, nkey identities).
///
/// # Errors
/// The server did not start.
pub async fn start_hub(dir: &std::path::Path) -> anyhow::Result<(Nats, u16)> {
    Nats::start_hub(dir).await
}

/// A region's leaf node (`leaf-<region>`), connecting outbound to the hub's leaf port with
/// the region's identity of the hub's trust bundle.
///
/// # Errors
/// The server did not start.
pub async fn start_leaf(
    dir: &std::path::Path,
    region: &str,
    _leaf_port: u16,
) -> anyhow::Result<Nats> {
    Nats::start_leaf(dir, region).await
}

/// A temp dir for one test's processes.
///
/// # Errors
/// It could not be made.
pub fn tempdir() -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix("shoal-e2e-").tempdir()?)
}

pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs a shoal binary to its end.
///
/// # Errors
/// It could not be run.
pub fn run_binary(name: &str, args: &[&str]) -> anyhow::Result<(bool, String)> {
    run_binary_env(name, args, &[])
}

/// [`run_binary`] with more environment variables (e.g. the API token).
///
/// # Errors
/// It could not be run.
pub fn run_binary_env(
    name: &str,
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> anyhow::Result<(bool, String)> {
    let out = std::process::Command::new(local::find_binary(name)?)
        .args(args)
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .output()?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// The tasks of a deployment, flattened: (step name, task).
pub fn tasks(d: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for s in d["steps"].as_array().into_iter().flatten() {
        for t in s["tasks"].as_array().into_iter().flatten() {
            out.push((s["name"].as_str().unwrap_or_default().to_owned(), t.clone()));
        }
    }
    out
}

/// Asserts an API call failed with `status` and a message containing every `parts`.
///
/// # Panics
/// When it did not.
pub fn assert_api_error(result: Result<Value, ClientError>, status: u16, parts: &[&str]) {
    match result {
        Ok(v) => panic!("expected HTTP {status}, got success: {v}"),
        Err(e) => {
            assert_eq!(e.status(), Some(status), "wrong status for error: {e}");
            let text = e.to_string();
            for p in parts {
                assert!(text.contains(p), "error {text:?} does not mention {p:?}");
            }
        }
    }
}

/// Whether a process id is alive (also when it is another user's, which the signal check
/// answers with EPERM).
pub fn alive(pid: i32) -> bool {
    matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Ok(()) | Err(nix::errno::Errno::EPERM)
    )
}

/// A `.tar` of `files` (path, bytes), uncompressed: a change to one file changes only its
/// part of the archive, so a new version shares every other chunk with the old one.
///
/// # Errors
/// Writing the archive failed.
pub fn tar_of(files: &[(&str, &[u8])]) -> anyhow::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // Written into the header as is: `set_path` refuses `..`.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        tar.append(&h, *bytes)?;
    }
    Ok(tar.into_inner()?)
}
