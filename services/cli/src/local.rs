//! A local shoal installation made of real processes: `nats-server` on a free port with its
//! own store dir, the planner and workers. Used by `shoal demo` and by the end-to-end tests,
//! which stop, kill and restart its parts. Secure by default: the broker runs from a trust
//! bundle ([`trust`]) with TLS and an nkey identity per process, and the planner and workers
//! started here are given theirs.

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::process::{Child, Command};

pub mod trust;

/// Where nats-server is looked for besides `PATH`.
const NATS_SERVER_PATHS: [&str; 2] = ["/usr/sbin/nats-server", "/usr/bin/nats-server"];

/// How to install nats-server, for error messages.
pub const NATS_INSTALL_HINT: &str = "nats-server is not installed: install it with `sudo apt-get install -y nats-server` \
     (Debian/Ubuntu) or from https://github.com/nats-io/nats-server/releases, then run this again";

/// Finds the `nats-server` binary.
///
/// # Errors
/// Not on `PATH` nor in the usual places; the message says how to install it.
pub fn find_nats_server() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    NATS_SERVER_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!(NATS_INSTALL_HINT))
}

/// Finds a shoal binary (`shoal-planner`, `shoal-worker`) next to the running executable or
/// one directory up (test executables live in `target/<profile>/deps`).
///
/// # Errors
/// Not built; the message says how to build it.
pub fn find_binary(name: &str) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("SHOAL_BIN_DIR") {
        let p = PathBuf::from(dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let mut dir = exe.parent().map(Path::to_path_buf);
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent().map(Path::to_path_buf);
    }
    bail!(
        "{name} not found next to {}; build every binary first with `cargo build --release` \
         (or `cargo build` for debug builds), or set SHOAL_BIN_DIR",
        exe.display()
    )
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests on one machine).
///
/// # Errors
/// No port could be bound.
pub fn free_port() -> anyhow::Result<u16> {
    let [port] = free_ports()?;
    Ok(port)
}

/// `N` different free TCP ports on 127.0.0.1: all are held until each is found, so two calls
/// of [`free_port`] in a row cannot hand out the same one twice.
///
/// # Errors
/// No free port.
pub fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let held = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a free port"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (port, l) in ports.iter_mut().zip(&held) {
        *port = l.local_addr()?.port();
    }
    Ok(ports)
}

/// Waits until something accepts connections on `port`.
///
/// # Errors
/// Nothing listened within `timeout`.
pub async fn wait_for_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port} after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A child process with its output in a log file.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `program args…`, output to `<log_dir>/<name>.log`.
    ///
    /// # Errors
    /// The program cannot be started.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log_dir: &Path,
    ) -> anyhow::Result<Proc> {
        std::fs::create_dir_all(log_dir)?;
        let log = log_dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        // Children run in the installation's directory, so relative paths stay inside it.
        let cwd = log_dir.parent().unwrap_or(log_dir);
        let child = Command::new(program)
            .args(args)
            .current_dir(cwd)
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,async_nats=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// The process id, while it runs (`shoal-bench` reads its memory use from `/proc`).
    pub fn pid(&self) -> Option<i32> {
        self.child.id().and_then(|p| i32::try_from(p).ok())
    }

    /// Sends a signal (ignored when it has exited).
    pub fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }

    /// SIGTERM, then waits up to `timeout` (SIGKILL after that).
    ///
    /// # Errors
    /// Waiting failed.
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(Signal::SIGTERM);
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.child.kill().await?;
                bail!(
                    "{} did not stop within {timeout:?} of SIGTERM; killed it",
                    self.name
                )
            }
        }
    }

    /// Waits until the process's output (stdout and stderr) contains `text`, for at most
    /// `within`.
    ///
    /// # Errors
    /// It did not in time; the error carries the output.
    pub async fn wait_for_output(&self, text: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        while !self.output().contains(text) {
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "no {text:?} in the output of {} after {within:?}:\n{}",
                    self.name,
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Sends `signal` and waits until the process has exited cleanly, for at most `within`;
    /// one still running then is killed, and the error carries its output.
    ///
    /// # Errors
    /// It did not stop in time, or it exited with a failure.
    pub async fn stops_within(&mut self, signal: Signal, within: Duration) -> anyhow::Result<()> {
        self.signal(signal);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.try_status()? {
                anyhow::ensure!(
                    status.success(),
                    "{} exited with {status}:\n{}",
                    self.name,
                    self.output()
                );
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                let out = self.output();
                self.kill().await?;
                bail!(
                    "{} did not stop within {within:?} of {signal}:\n{out}",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, and waits for it to be gone.
    ///
    /// # Errors
    /// Waiting failed.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// Whether it has exited, and how.
    ///
    /// # Errors
    /// Waiting failed.
    pub fn try_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// The process's output so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A nats-server on a free port: a stand-alone JetStream server with a store dir of its own,
/// or one made from a configuration (a hub, a region's leaf node).
#[derive(Debug)]
pub struct Nats {
    pub port: u16,
    name: String,
    args: Vec<String>,
    log_dir: PathBuf,
    proc: Option<Proc>,
}

impl Nats {
    /// Starts a JetStream server with its store under `dir` and waits until it accepts
    /// connections. It runs from a trust bundle made in `<dir>/nats-trust`: TLS with client
    /// certificates and an nkey identity per process ([`trust`]).
    ///
    /// # Errors
    /// nats-server is missing or does not come up.
    pub async fn start(dir: &Path) -> anyhow::Result<Nats> {
        let (port, _) = trust::start_hub_bundle(dir, false)?;
        let config = trust::hub_config(dir);
        Nats::launch(dir, "nats-server", port, vec!["-c".into(), config]).await
    }

    /// A hub (JetStream domain `hub`) from the trust bundle in `<dir>/nats-trust`, taking
    /// leaf nodes on a port of its own: the hub and that port, for [`Nats::start_leaf`].
    ///
    /// # Errors
    /// nats-server is missing or does not come up.
    pub async fn start_hub(dir: &Path) -> anyhow::Result<(Nats, u16)> {
        let (port, leaf_port) = trust::start_hub_bundle(dir, true)?;
        let config = trust::hub_config(dir);
        let hub = Nats::launch(dir, "hub", port, vec!["-c".into(), config]).await?;
        Ok((hub, leaf_port))
    }

    /// The leaf node of `region` (`leaf-<region>`), added to the hub's trust bundle (the hub
    /// is reloaded with the region's user) and connecting outbound to the hub over TLS.
    ///
    /// # Errors
    /// nats-server is missing or does not come up.
    pub async fn start_leaf(dir: &Path, region: &str) -> anyhow::Result<Nats> {
        let port = free_port()?;
        let config = trust::add_region(dir, region, port)?;
        Nats::launch(
            dir,
            &format!("leaf-{region}"),
            port,
            vec!["-c".into(), config],
        )
        .await
    }

    /// One server of a trust bundle made beforehand in `<dir>/nats-trust` (the hub, or a
    /// region's leaf node), on the port its topology gives it.
    ///
    /// # Errors
    /// No bundle there, nats-server is missing or does not come up.
    pub async fn start_bundle_server(
        dir: &Path,
        server: &shoal_trust::Server,
    ) -> anyhow::Result<Nats> {
        let (name, port, config) = trust::bundle_server(dir, server)?;
        Nats::launch(dir, &name, port, vec!["-c".into(), config]).await
    }

    /// A client of this server with the planner's (admin) identity, for tests that look at
    /// or write to the broker directly.
    ///
    /// # Errors
    /// It cannot connect.
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        trust::admin_client(&self.url()).await
    }

    /// Starts a server named `name` from a configuration; `config` gets the listen address
    /// and port prepended, and may refer to `{dir}` (a directory of this server's own).
    ///
    /// # Errors
    /// nats-server is missing, refuses the configuration, or does not come up.
    pub async fn start_with_config(dir: &Path, name: &str, config: &str) -> anyhow::Result<Nats> {
        let port = free_port()?;
        let own = dir.join(name);
        std::fs::create_dir_all(&own)?;
        let text = format!(
            "listen: 127.0.0.1:{port}\nserver_name: {name}\n{}",
            config.replace("{dir}", &own.display().to_string())
        );
        let file = dir.join(format!("{name}.conf"));
        std::fs::write(&file, text)?;
        Nats::launch(
            dir,
            name,
            port,
            vec!["-c".into(), file.display().to_string()],
        )
        .await
    }

    async fn launch(dir: &Path, name: &str, port: u16, args: Vec<String>) -> anyhow::Result<Nats> {
        let mut nats = Nats {
            port,
            name: name.to_owned(),
            args,
            log_dir: dir.join("logs"),
            proc: None,
        };
        nats.restart().await?;
        Ok(nats)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.proc.as_ref().and_then(Proc::pid)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it again (same port, same store) after a stop or kill.
    ///
    /// # Errors
    /// It does not come up.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let bin = find_nats_server()?;
        self.proc = Some(Proc::spawn(&self.name, &bin, &self.args, &self.log_dir)?);
        wait_for_port(self.port, Duration::from_secs(10)).await
    }

    /// Stops it cleanly.
    ///
    /// # Errors
    /// It did not stop.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.terminate(Duration::from_secs(10)).await?;
        }
        Ok(())
    }

    /// Kills it (SIGKILL).
    ///
    /// # Errors
    /// Waiting failed.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.kill().await?;
        }
        Ok(())
    }
}

/// A hub made of a JetStream cluster of nats-servers on loopback (`hub-1`…, from one trust
/// bundle, routes over TLS), whose nodes a test or benchmark can kill and restart one by one.
#[derive(Debug)]
pub struct NatsCluster {
    pub nodes: Vec<Nats>,
}

impl NatsCluster {
    /// Starts `nodes` servers from a cluster bundle made in `<dir>/nats-trust` and waits until
    /// each accepts connections (JetStream elects its leaders a moment later; the planner
    /// waits for that).
    ///
    /// # Errors
    /// nats-server is missing or a node does not come up.
    pub async fn start(dir: &Path, nodes: usize) -> anyhow::Result<NatsCluster> {
        let servers = trust::start_cluster_bundle(dir, nodes)?;
        let mut started = Vec::new();
        for (name, port, config) in servers {
            started.push(Nats::launch(dir, &name, port, vec!["-c".into(), config]).await?);
        }
        let cluster = NatsCluster { nodes: started };
        cluster.wait_for_jetstream(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// Waits until JetStream answers (the nodes have routed and elected their meta leader):
    /// a stream asked for before then is a request that times out (10 s for the planner).
    ///
    /// # Errors
    /// It did not answer within `timeout`.
    pub async fn wait_for_jetstream(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let client = self.connect().await?;
        let js = async_nats::jetstream::new(client);
        loop {
            // Any answer of JetStream's API will do: "no such stream" is one.
            let asked =
                tokio::time::timeout(Duration::from_millis(500), js.get_stream("SHOAL_PROBE"))
                    .await;
            let answered = match &asked {
                Ok(Ok(_)) => true,
                Ok(Err(e)) => matches!(
                    e.kind(),
                    async_nats::jetstream::context::GetStreamErrorKind::JetStream(_)
                ),
                Err(_) => false,
            };
            if answered {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("JetStream of the cluster does not answer after {timeout:?} ({asked:?})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every node's URL, comma-separated (what the planner is given).
    pub fn url(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(Nats::url).collect();
        urls.join(",")
    }

    /// A client with the planner's (admin) identity, on any node.
    ///
    /// # Errors
    /// It cannot connect.
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        let urls: Vec<String> = self.nodes.iter().map(Nats::url).collect();
        Ok(trust::admin_options(&self.url())?.connect(urls).await?)
    }

    /// Stops every node.
    ///
    /// # Errors
    /// One did not stop.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        for n in &mut self.nodes {
            n.stop().await?;
        }
        Ok(())
    }
}

/// Arguments of a planner process.
pub fn planner_args(
    nats_url: &str,
    data_dir: &Path,
    http_port: u16,
    extra: &[&str],
) -> Vec<String> {
    let mut args = vec![
        "--nats-url".to_owned(),
        nats_url.to_owned(),
        "--data-dir".to_owned(),
        data_dir.display().to_string(),
        "--http-addr".to_owned(),
        format!("127.0.0.1:{http_port}"),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.extend(trust::planner_identity_args(nats_url, extra));
    args
}

/// The admin token a planner with this data dir made at its first start.
pub fn admin_token_file(data_dir: &Path) -> PathBuf {
    data_dir.join(shoal_shared::auth::ADMIN_TOKEN_FILE)
}

/// A client of the planner on `127.0.0.1:http_port` that sends the admin token of its data
/// dir (read at every request, so it works from before the planner has made it).
pub fn admin_client(http_port: u16, data_dir: &Path) -> crate::client::ApiClient {
    crate::client::ApiClient::new(&format!("http://127.0.0.1:{http_port}"))
        .with_token_file(admin_token_file(data_dir))
}

/// Starts a planner and waits until its API answers (to its admin token).
///
/// # Errors
/// The binary is missing or the planner does not come up (its log is in the error).
pub async fn start_planner(
    log_dir: &Path,
    nats_url: &str,
    data_dir: &Path,
    http_port: u16,
    extra: &[&str],
) -> anyhow::Result<Proc> {
    let bin = find_binary("shoal-planner")?;
    let mut args = planner_args(nats_url, data_dir, http_port, extra);
    args.extend(signing_args(log_dir, extra)?);
    let mut p = Proc::spawn("planner", &bin, &args, log_dir)?;
    let client = admin_client(http_port, data_dir);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if client.get("/api/pools").await.is_ok() {
            return Ok(p);
        }
        if let Some(status) = p.try_status()? {
            bail!(
                "planner exited with {status} before it was ready:\n{}",
                p.output()
            );
        }
        if tokio::time::Instant::now() > deadline {
            bail!("planner not ready after 30 s:\n{}", p.output());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a worker process of `pool` named `name`, with its own work dir when given (else
/// the worker's default, relative to the installation's directory).
///
/// # Errors
/// The binary is missing or cannot be started.
pub fn start_worker(
    log_dir: &Path,
    nats_url: &str,
    name: &str,
    pool: &str,
    region: Option<&str>,
    work_dir: Option<&Path>,
    extra: &[&str],
) -> anyhow::Result<Proc> {
    let bin = find_binary("shoal-worker")?;
    let mut args = vec![
        "--nats-url".to_owned(),
        nats_url.to_owned(),
        "--name".to_owned(),
        name.to_owned(),
        "--pool".to_owned(),
        pool.to_owned(),
    ];
    if let Some(dir) = work_dir {
        args.push("--work-dir".to_owned());
        args.push(dir.display().to_string());
    }
    if let Some(r) = region {
        args.push("--region".to_owned());
        args.push(r.to_owned());
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.extend(trust::worker_identity_args(nats_url, name, pool, extra));
    args.extend(trust_args(log_dir, extra)?);
    Proc::spawn(name, &bin, &args, log_dir)
}

/// Makes a pool's key pair for sealing sensitive variables with `shoal-planner pool-keygen`
/// into `dir`: (the secret key file for the pool's workers' `--pool-key`, the public key to
/// register with the pool).
///
/// # Errors
/// The binary is missing or failed.
pub fn make_pool_key(dir: &Path, pool: &str) -> anyhow::Result<(PathBuf, String)> {
    run_planner(&[
        "pool-keygen".as_ref(),
        "--pool".as_ref(),
        pool.as_ref(),
        "--out".as_ref(),
        dir.as_os_str(),
    ])?;
    let public = std::fs::read_to_string(dir.join(format!("{pool}.xpub")))?;
    Ok((dir.join(format!("{pool}.xkey")), public.trim().to_owned()))
}

/// The files under `dir` (recursively) whose bytes contain `needle`: how the demo and the
/// tests show that a sensitive value is nowhere on disk in clear.
///
/// # Errors
/// A directory or file could not be read.
pub fn files_containing(dir: &Path, needle: &[u8]) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", d.display())),
        };
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                todo.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(path);
            }
        }
    }
    Ok(found)
}

/// The installation's signing key: `<log_dir>/keys/signing.key`, made (with `shoal-planner
/// keygen`) the first time a planner or worker of the installation starts. Its public key,
/// `signing.key.pub` beside it, is what every worker trusts.
///
/// # Errors
/// `shoal-planner keygen` is missing or failed.
pub fn installation_signing_key(log_dir: &Path) -> anyhow::Result<PathBuf> {
    /// Planner and workers of one installation may start at once: one keygen at a time.
    static KEYGEN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let key = log_dir.join("keys").join("signing.key");
    let _one = KEYGEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !key.with_extension("key.pub").exists() {
        run_planner(&["keygen".as_ref(), "--out".as_ref(), key.as_os_str()])?;
    }
    Ok(key)
}

/// Runs `shoal-planner` with `args` to its end.
///
/// # Errors
/// The binary is missing, or it failed (its standard error is in the message).
fn run_planner(args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
    let shown = args
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let out = std::process::Command::new(find_binary("shoal-planner")?)
        .args(args)
        .output()
        .with_context(|| format!("cannot run shoal-planner {shown}"))?;
    if !out.status.success() {
        bail!(
            "shoal-planner {shown} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `--signing-key` of the installation's key, unless the caller chose (or switched off)
/// signing itself.
fn signing_args(log_dir: &Path, extra: &[&str]) -> anyhow::Result<Vec<String>> {
    if extra
        .iter()
        .any(|a| matches!(*a, "--signing-key" | "--insecure-no-signing"))
    {
        return Ok(vec![]);
    }
    let key = installation_signing_key(log_dir)?;
    Ok(vec!["--signing-key".to_owned(), key.display().to_string()])
}

/// `--trusted-keys` of the installation's public key, unless the caller chose (or switched
/// off) trust itself.
fn trust_args(log_dir: &Path, extra: &[&str]) -> anyhow::Result<Vec<String>> {
    if extra
        .iter()
        .any(|a| matches!(*a, "--trusted-keys" | "--insecure-accept-unsigned"))
    {
        return Ok(vec![]);
    }
    let key = installation_signing_key(log_dir)?;
    let public = key.with_extension("key.pub");
    Ok(vec![
        "--trusted-keys".to_owned(),
        public.display().to_string(),
    ])
}
