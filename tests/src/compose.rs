//! shoal in containers for the container tests: `docker-compose.yml` run by `docker compose`
//! (or Debian's `docker-compose`, which reads the same file) under a project of its own, from
//! a clean state (`down -v` first), with the API on a free port of the host's loopback. The
//! image is prepared by `deploy/test-images.sh` (cached: made again only when the binaries
//! or the Dockerfile changed). Containers are killed, cut off their networks and restarted
//! through the engine's CLI; on a failing test the services' last log lines are printed,
//! and the project is taken down (volumes too) unless `SHOAL_KEEP_CONTAINERS` is set.

use anyhow::{Context as _, bail};
use serde_json::Value;
use shoal_cli::client::ApiClient;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Command;

/// The engine's CLI and the compose command this machine has.
#[derive(Debug, Clone)]
pub struct Engine {
    compose: Vec<String>,
}

/// The repository (where docker-compose.yml is).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn runs(program: &str, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The container engine and compose command, or why there is no engine (the caller says it
/// skips, and why).
///
/// # Errors
/// The engine is there but compose is not (a failure, not a reason to skip).
pub fn engine() -> anyhow::Result<Result<Engine, String>> {
    let version = std::process::Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output();
    match version {
        Err(e) => {
            return Ok(Err(format!(
                "no container engine: `docker` cannot be run ({e})"
            )));
        }
        Ok(o) if !o.status.success() => {
            return Ok(Err(format!(
                "no container engine: `docker version` cannot reach one ({})",
                String::from_utf8_lossy(&o.stderr).trim()
            )));
        }
        Ok(_) => {}
    }
    let compose: Vec<String> = if runs("docker", &["compose", "version"]) {
        vec!["docker".into(), "compose".into()]
    } else if runs("docker-compose", &["version"]) {
        vec!["docker-compose".into()]
    } else {
        bail!(
            "a container engine answers but neither `docker compose` nor `docker-compose` is \
             installed (apt-get install docker-compose)"
        );
    };
    Ok(Ok(Engine { compose }))
}

/// Makes the image the tests run (deploy/test-images.sh, cached) from the binaries this
/// test runs with.
///
/// # Errors
/// The script failed (its output is in the message).
pub fn prepare_images() -> anyhow::Result<()> {
    let planner = shoal_cli::local::find_binary("shoal-planner")?;
    let bins = planner.parent().context("the binaries' directory")?;
    let out = std::process::Command::new("bash")
        .arg("deploy/test-images.sh")
        .arg(bins)
        .current_dir(repo())
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!(
        "{}",
        text.lines()
            .filter(|l| l.starts_with("test-images") || l.starts_with("base-images"))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    );
    if !out.status.success() {
        bail!("deploy/test-images.sh failed:\n{text}");
    }
    Ok(())
}

/// One container's state as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub id: String,
    pub service: String,
    /// `running`, `exited`, …
    pub status: String,
    pub exit_code: i64,
    /// `healthy`, `starting`, `unhealthy`, or empty without a health check.
    pub health: String,
}

/// A running compose project of docker-compose.yml.
pub struct Compose {
    engine: Engine,
    pub project: String,
    pub api: ApiClient,
    pub api_port: u16,
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Compose {
    /// `up -d` from a clean state (the project's containers and volumes removed first), with
    /// `env` for the file's variables (SHOAL_TASK_ACK_WAIT_SECS, …), then waits until every
    /// service is healthy or, for the one-shot ones, has exited 0.
    ///
    /// # Errors
    /// A service did not come up (the error names it, with its log).
    pub async fn up(engine: Engine, env: &[(&str, &str)]) -> anyhow::Result<Compose> {
        let api_port = crate::free_port()?;
        let dir = crate::tempdir()?;
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        env.push(("SHOAL_API_PORT".into(), api_port.to_string()));
        let token = dir.path().join("admin.token");
        let c = Compose {
            engine,
            project: format!("shoalct{}", std::process::id()),
            api: ApiClient::new(&format!("http://127.0.0.1:{api_port}"))
                .with_token_file(token.clone()),
            api_port,
            env,
            _dir: dir,
        };
        c.remove_stale_projects().await;
        c.compose(&["down", "-v", "--remove-orphans", "-t", "1"])
            .await?;
        c.compose(&["up", "-d"]).await?;
        c.wait_healthy(Duration::from_secs(120)).await?;
        let text = c
            .exec_service("planner", &["cat", "/data/admin.token"])
            .await?;
        std::fs::write(&token, text.trim())?;
        Ok(c)
    }

    /// Takes down what test runs that are gone (killed before their `Drop`) left running:
    /// projects `shoalct<pid>` whose process no longer runs.
    async fn remove_stale_projects(&self) {
        let Ok(text) = self
            .docker(&[
                "ps",
                "-a",
                "--format",
                "{{.Label \"com.docker.compose.project\"}}",
            ])
            .await
        else {
            return;
        };
        let mut stale: Vec<&str> = text
            .lines()
            .filter(|p| {
                p.strip_prefix("shoalct")
                    .and_then(|pid| pid.parse::<i32>().ok())
                    .is_some_and(|pid| !crate::alive(pid))
            })
            .collect();
        stale.sort_unstable();
        stale.dedup();
        for project in stale {
            eprintln!("removing the containers a gone test run left: project {project}");
            let mut cmd = Command::new(&self.engine.compose[0]);
            cmd.args(&self.engine.compose[1..])
                .args(["-p", project, "-f", "docker-compose.yml"])
                .args(["down", "-v", "--remove-orphans", "-t", "1"])
                .current_dir(repo())
                .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let _ = output(cmd, "compose down").await;
        }
    }

    /// Runs compose with `args` for this project; its standard output.
    ///
    /// # Errors
    /// It failed (its output is in the message).
    pub async fn compose(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.engine.compose[0]);
        cmd.args(&self.engine.compose[1..])
            .args(["-p", &self.project, "-f", "docker-compose.yml"])
            .args(args)
            .current_dir(repo())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        output(
            cmd,
            &format!("{} {}", self.engine.compose.join(" "), args.join(" ")),
        )
        .await
    }

    /// Runs `docker args…`; its standard output.
    ///
    /// # Errors
    /// It failed.
    pub async fn docker(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new("docker");
        cmd.args(args);
        output(cmd, &format!("docker {}", args.join(" "))).await
    }

    /// Every container of the project with its state.
    ///
    /// # Errors
    /// The engine did not answer.
    pub async fn states(&self) -> anyhow::Result<Vec<State>> {
        let filter = format!("label=com.docker.compose.project={}", self.project);
        let ids = self.docker(&["ps", "-aq", "--filter", &filter]).await?;
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec![
            "inspect",
            "-f",
            "{{.Id}} {{index .Config.Labels \"com.docker.compose.service\"}} {{.State.Status}} {{.State.ExitCode}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
        ];
        args.extend(ids);
        let text = self.docker(&args).await?;
        Ok(text
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some(State {
                    id: w.next()?.to_owned(),
                    service: w.next()?.to_owned(),
                    status: w.next()?.to_owned(),
                    exit_code: w.next()?.parse().ok()?,
                    health: w.next().unwrap_or_default().to_owned(),
                })
            })
            .collect())
    }

    /// Waits until every long-running container is running and healthy and every one-shot
    /// one (`nats-config`, `keys`, `pools`) exited 0.
    ///
    /// # Errors
    /// Not within `timeout`, or a one-shot failed; the error names the services and holds
    /// their logs.
    pub async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<Vec<State>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let states = self.states().await?;
            let mut bad = Vec::new();
            for s in &states {
                let one_shot = matches!(s.service.as_str(), "nats-config" | "keys" | "pools");
                let ok = if one_shot {
                    s.status == "exited" && s.exit_code == 0
                } else {
                    s.status == "running" && s.health == "healthy"
                };
                if one_shot && s.status == "exited" && s.exit_code != 0 {
                    bail!(
                        "{} exited with {}:\n{}",
                        s.service,
                        s.exit_code,
                        self.logs(&s.service).await
                    );
                }
                if !ok {
                    bad.push(s.clone());
                }
            }
            if bad.is_empty() && !states.is_empty() {
                return Ok(states);
            }
            if tokio::time::Instant::now() > deadline {
                let mut text = String::new();
                for s in &bad {
                    text.push_str(&format!(
                        "----- {} is {} {} -----\n{}\n",
                        s.service,
                        s.status,
                        s.health,
                        crate::tail(&self.logs(&s.service).await, 40)
                    ));
                }
                bail!("not every service is healthy after {timeout:?}:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The containers of a service (ids), running or not.
    ///
    /// # Errors
    /// The engine did not answer.
    pub async fn containers(&self, service: &str) -> anyhow::Result<Vec<String>> {
        let ids = self.compose(&["ps", "-q", service]).await?;
        Ok(ids.split_whitespace().map(str::to_owned).collect())
    }

    /// The one container of a service.
    ///
    /// # Errors
    /// None, or several.
    pub async fn container(&self, service: &str) -> anyhow::Result<String> {
        let mut all = self.containers(service).await?;
        match all.len() {
            1 => Ok(all.remove(0)),
            n => bail!("service {service} has {n} containers"),
        }
    }

    /// `docker exec` in a container; its standard output.
    ///
    /// # Errors
    /// The command failed.
    pub async fn exec(&self, container: &str, cmd: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["exec", container];
        args.extend_from_slice(cmd);
        self.docker(&args).await
    }

    /// `exec` in the one container of a service.
    ///
    /// # Errors
    /// The command failed.
    pub async fn exec_service(&self, service: &str, cmd: &[&str]) -> anyhow::Result<String> {
        let id = self.container(service).await?;
        self.exec(&id, cmd).await
    }

    /// The log of a service's containers (standard output and error), or why there is none.
    pub async fn logs(&self, service: &str) -> String {
        self.compose(&["logs", "--no-color", service])
            .await
            .unwrap_or_else(|e| format!("(no log: {e:#})"))
    }

    /// The engine's name of one of the file's networks.
    pub fn network(&self, name: &str) -> String {
        format!("{}_{name}", self.project)
    }

    /// A hub node's JetStream report (`/jsz` with streams and their config), asked inside its
    /// container (the monitoring port listens on its loopback only).
    ///
    /// # Errors
    /// The node did not answer.
    pub async fn jsz(&self, service: &str) -> anyhow::Result<Value> {
        let text = self
            .exec_service(
                service,
                &[
                    "curl",
                    "-fsS",
                    "http://127.0.0.1:8222/jsz?accounts=true&streams=true&config=true",
                ],
            )
            .await?;
        Ok(serde_json::from_str(&text)?)
    }

    /// The last lines of every service's log.
    pub async fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        let mut services: Vec<String> = self
            .states()
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.service)
            .collect();
        services.sort();
        services.dedup();
        for s in services {
            out.push_str(&format!(
                "----- {s} -----\n{}\n",
                crate::tail(&self.logs(&s).await, lines)
            ));
        }
        out
    }

    /// Waits until a deployment ends and returns it.
    ///
    /// # Errors
    /// It did not end within `timeout`: the error says where each task stood, with the
    /// services' last log lines.
    pub async fn finished(&self, id: &str, timeout: Duration) -> anyhow::Result<Value> {
        let every = Duration::from_millis(200);
        crate::deployment_end(&self.api, id, timeout, every, self.log_tails(40)).await
    }
}

impl Compose {
    /// A blocking compose command for this project (for `Drop`).
    fn compose_blocking(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        std::process::Command::new(&self.engine.compose[0])
            .args(&self.engine.compose[1..])
            .args(["-p", &self.project, "-f", "docker-compose.yml"])
            .args(args)
            .current_dir(repo())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Ok(out) = self.compose_blocking(&["logs", "--no-color", "--tail", "60"])
        {
            eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        }
        if std::env::var_os("SHOAL_KEEP_CONTAINERS").is_some() {
            eprintln!(
                "SHOAL_KEEP_CONTAINERS: project {} left running",
                self.project
            );
            return;
        }
        let _ = self.compose_blocking(&["down", "-v", "--remove-orphans", "-t", "1"]);
    }
}

async fn output(mut cmd: Command, shown: &str) -> anyhow::Result<String> {
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.kill_on_drop(true).output())
        .await
        .with_context(|| format!("`{shown}` did not end within 180 s"))?
        .with_context(|| format!("cannot run `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `check` every 200 ms until it yields a value or `timeout` passes.
///
/// # Errors
/// The deadline passed (the last error, if any, is in the message).
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    crate::poll_every(what, timeout, Duration::from_millis(200), check).await
}
