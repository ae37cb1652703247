//! The trust bundle of a local installation's brokers (`<dir>/nats-trust`, made with
//! shoal-trust): the hub and its leaf nodes run from its configs, with TLS and an nkey user
//! per process. Tests start workers with any name at any time: the first start of a worker
//! binds its name to its pool in the bundle, rewrites the configs, reloads the servers
//! (SIGHUP) and polls until the new identity is let in, with a deadline.
//!
//! The servers are found by their client port (a process-wide registry), so that
//! [`super::start_planner`] and [`super::start_worker`] keep their signatures: given a URL
//! of a server started here, they add the identity's flags themselves.

use anyhow::{Context as _, bail};
use shoal_trust::{Hub, Identity, IdentityFiles, Region, Server, Topology, Worker};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// How long a new identity may take to be let in after the reload.
const ACCEPTED_WITHIN: Duration = Duration::from_secs(15);

/// How long a server may take to reload its config after SIGHUP.
const RELOADED_WITHIN: Duration = Duration::from_secs(10);
/// What nats-server logs once a reload is done.
const RELOADED: &str = "Reloaded server configuration";

/// A server started here from a bundle.
#[derive(Debug, Clone)]
struct Registered {
    port: u16,
    bundle: PathBuf,
    server: Server,
    /// Its pid file and its log (where a reload is confirmed).
    pid_file: PathBuf,
    log: PathBuf,
}

/// The servers started here, by client port.
static SERVERS: Mutex<Vec<Registered>> = Mutex::new(Vec::new());
/// One change of a bundle at a time (tests run in parallel in one process).
static CHANGING: Mutex<()> = Mutex::new(());

/// The bundle dir of an installation in `dir`.
pub fn bundle_dir(dir: &Path) -> PathBuf {
    dir.join("nats-trust")
}

/// `<bundle>/hub.conf`.
pub fn hub_config(dir: &Path) -> String {
    bundle_dir(dir).join("hub.conf").display().to_string()
}

/// Registers the server of `bundle` on `port`, whose process is named `name` in `dir`'s
/// logs (see [`super::Nats`]).
fn register(dir: &Path, name: &str, port: u16, bundle: PathBuf, server: Server) {
    let pid_name = match &server {
        Server::Hub => "hub".to_owned(),
        Server::Leaf(r) => format!("leaf-{r}"),
    };
    register_as(dir, name, &pid_name, port, bundle, server);
}

/// [`register`] with the name of its pid file (`<pid_name>.pid` in the bundle).
fn register_as(dir: &Path, name: &str, pid_name: &str, port: u16, bundle: PathBuf, server: Server) {
    let entry = Registered {
        port,
        pid_file: bundle.join(format!("{pid_name}.pid")),
        log: dir.join("logs").join(format!("{name}.log")),
        bundle,
        server,
    };
    if let Ok(mut all) = SERVERS.lock() {
        all.retain(|r| r.port != port);
        all.push(entry);
    }
}

/// The bundle and server of a URL of a server started here (of a list of a cluster's
/// nodes, the last one).
pub fn server_of(url: &str) -> Option<(PathBuf, Server)> {
    let port: u16 = url.rsplit(':').next()?.trim_end_matches('/').parse().ok()?;
    let all = SERVERS.lock().ok()?;
    all.iter()
        .find(|r| r.port == port)
        .map(|r| (r.bundle.clone(), r.server.clone()))
}

/// Writes the hub's bundle (new ports; an earlier bundle in `dir` keeps its keys) and
/// registers the hub: its client and leaf ports. `leafs`: a hub for leaf nodes (its store
/// in `<dir>/hub`, else `<dir>/nats-store` as a stand-alone server's).
///
/// # Errors
/// No free port, or the bundle cannot be written.
pub fn start_hub_bundle(dir: &Path, leafs: bool) -> anyhow::Result<(u16, u16)> {
    let name = if leafs { "hub" } else { "nats-server" };
    let _changing = CHANGING.lock();
    let [port, leaf_port] = super::free_ports()?;
    let bundle = bundle_dir(dir);
    let mut hub = Hub::local(port, leaf_port);
    hub.store_dir = Some(dir.join(if leafs { "hub" } else { "nats-store" }));
    let topology = match shoal_trust::load_topology(&bundle) {
        Ok(mut t) => {
            t.hub = hub;
            t
        }
        Err(_) => Topology::hub_only(hub),
    };
    shoal_trust::generate(&bundle, &topology)?;
    register(dir, name, port, bundle, Server::Hub);
    Ok((port, leaf_port))
}

/// Writes the bundle of a hub made of a JetStream cluster of `nodes` servers on loopback
/// (`hub-1`…, each on free ports, its store in `<dir>/hub-<n>`), and registers every node:
/// each node's name, client port and config path.
///
/// # Errors
/// No free port, or the bundle cannot be written.
pub fn start_cluster_bundle(
    dir: &Path,
    nodes: usize,
) -> anyhow::Result<Vec<(String, u16, String)>> {
    let _changing = CHANGING.lock();
    let bundle = bundle_dir(dir);
    let mut hub = Hub::local(0, 0);
    let mut all = Vec::new();
    for i in 1..=nodes {
        let [port, leaf_port, route_port] = super::free_ports()?;
        let name = format!("hub-{i}");
        all.push(shoal_trust::HubNode {
            store_dir: Some(dir.join(&name)),
            name,
            host: "127.0.0.1".to_owned(),
            port: Some(port),
            leaf_port: Some(leaf_port),
            route_port: Some(route_port),
            monitor_port: None,
        });
    }
    hub.cluster = Some(shoal_trust::HubCluster {
        name: "shoal-hub".to_owned(),
        port: 0,
        nodes: all,
    });
    let topology = match shoal_trust::load_topology(&bundle) {
        Ok(mut t) => {
            t.hub = hub;
            t
        }
        Err(_) => Topology::hub_only(hub),
    };
    shoal_trust::generate(&bundle, &topology)?;
    let mut out = Vec::new();
    for s in topology.hub.servers() {
        register_as(dir, &s.name, &s.name, s.port, bundle.clone(), Server::Hub);
        let config = bundle.join(format!("{}.conf", s.name));
        out.push((s.name, s.port, config.display().to_string()));
    }
    Ok(out)
}

/// The name, client port and config path of a server of the bundle in `dir`, registered.
///
/// # Errors
/// No bundle in `dir`, or no such region in it.
pub fn bundle_server(dir: &Path, server: &Server) -> anyhow::Result<(String, u16, String)> {
    let bundle = bundle_dir(dir);
    let t = shoal_trust::load_topology(&bundle)?;
    let (name, port) = match server {
        Server::Hub => ("hub".to_owned(), t.hub.port),
        Server::Leaf(r) => {
            let region = t
                .region(r)
                .with_context(|| format!("no region {r} in the bundle"))?;
            (format!("leaf-{r}"), region.port)
        }
    };
    register(dir, &name, port, bundle.clone(), server.clone());
    let config = bundle.join(format!("{name}.conf")).display().to_string();
    Ok((name, port, config))
}

/// Adds region `name` (its leaf node on `port`, any pool) to the bundle in `dir`, reloads
/// the hub and registers the leaf node; its config's path.
///
/// # Errors
/// No hub bundle in `dir`, or it cannot be written.
pub fn add_region(dir: &Path, name: &str, port: u16) -> anyhow::Result<String> {
    let _changing = CHANGING.lock();
    let bundle = bundle_dir(dir);
    let mut t = shoal_trust::load_topology(&bundle)
        .context("a leaf node needs the hub's trust bundle: start the hub first")?;
    t.regions.retain(|r| r.name != name);
    let mut region = Region::local(name, port, &[]);
    region.any_pool = true;
    t.regions.push(region);
    shoal_trust::generate(&bundle, &t)?;
    reload(&bundle)?;
    let server = Server::Leaf(name.to_owned());
    register(dir, &format!("leaf-{name}"), port, bundle.clone(), server);
    Ok(bundle
        .join(format!("leaf-{name}.conf"))
        .display()
        .to_string())
}

/// Reloads every running server of the bundle (SIGHUP) and waits until each has logged
/// that it re-read its config, so that what was added is in force when this returns.
///
/// # Errors
/// A server did not confirm the reload in time.
fn reload(bundle: &Path) -> anyhow::Result<()> {
    let servers: Vec<Registered> = SERVERS
        .lock()
        .map(|all| all.iter().filter(|r| r.bundle == bundle).cloned().collect())
        .unwrap_or_default();
    let mut waiting = Vec::new();
    for r in servers {
        let Some(pid) = std::fs::read_to_string(&r.pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        else {
            continue;
        };
        // A stale pid file may name another process by now.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "nats-server" {
            continue;
        }
        let before = reloads(&r.log);
        let hup = nix::sys::signal::Signal::SIGHUP;
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), hup).is_ok() {
            waiting.push((r, before));
        }
    }
    let deadline = std::time::Instant::now() + RELOADED_WITHIN;
    for (r, before) in waiting {
        while reloads(&r.log) <= before {
            if std::time::Instant::now() > deadline {
                bail!(
                    "{} did not reload its config within {RELOADED_WITHIN:?} (see {})",
                    r.pid_file.display(),
                    r.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

/// How many reloads a server's log tells of.
fn reloads(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .map(|t| t.matches(RELOADED).count())
        .unwrap_or(0)
}

fn flag_value<'a>(extra: &[&'a str], flag: &str) -> Option<&'a str> {
    extra
        .iter()
        .position(|a| *a == flag)
        .and_then(|i| extra.get(i + 1).copied())
}

fn identity_args(files: &IdentityFiles) -> Vec<String> {
    let mut args = Vec::new();
    for (flag, path) in [
        ("--nats-nkey", &files.nkey),
        ("--nats-ca", &files.ca),
        ("--nats-cert", &files.cert),
        ("--nats-key", &files.key),
    ] {
        args.push(flag.to_owned());
        args.push(path.display().to_string());
    }
    args
}

/// The planner's identity flags for a server started here (none for any other server, or
/// when `extra` names credentials of its own), with its built-in worker's own identity. A
/// `--default-pool` in `extra` rebinds the built-in worker to that pool first.
pub fn planner_identity_args(url: &str, extra: &[&str]) -> Vec<String> {
    let Some((bundle, _)) = server_of(url) else {
        return Vec::new();
    };
    if extra.contains(&"--nats-nkey") {
        return Vec::new();
    }
    if let Some(pool) = flag_value(extra, "--default-pool")
        && let Err(e) = rebind_default_pool(&bundle, pool)
    {
        eprintln!("warning: the built-in worker keeps its pool in the trust bundle: {e:#}");
    }
    let mut args = identity_args(&IdentityFiles::of(&bundle, &Identity::Planner));
    args.push("--builtin-worker-nkey".to_owned());
    let builtin = IdentityFiles::of(&bundle, &Identity::BuiltinWorker);
    args.push(builtin.nkey.display().to_string());
    args
}

fn rebind_default_pool(bundle: &Path, pool: &str) -> anyhow::Result<()> {
    let _changing = CHANGING.lock();
    let mut t = shoal_trust::load_topology(bundle)?;
    if t.default_pool == pool {
        return Ok(());
    }
    t.default_pool = pool.to_owned();
    shoal_trust::generate(bundle, &t)?;
    reload(bundle)
}

/// A worker's identity flags for a server started here: its name is bound to `pool` (and
/// to the region of that server) in the bundle first, the servers reloaded, and the new
/// identity polled until it is let in. None for any other server, when `extra` names
/// credentials of its own, or when the name or pool is invalid (the worker then says so).
pub fn worker_identity_args(url: &str, name: &str, pool: &str, extra: &[&str]) -> Vec<String> {
    if extra.contains(&"--nats-nkey") {
        return Vec::new();
    }
    let Some((bundle, worker, files)) = worker_on(url, name, pool) else {
        return Vec::new();
    };
    match bind_worker(&bundle, worker) {
        Ok(false) => identity_args(&files),
        Ok(true) => {
            if let Err(e) = wait_until_accepted(url, &files) {
                eprintln!("warning: {e:#}");
            }
            identity_args(&files)
        }
        Err(_) => Vec::new(),
    }
}

/// Worker `name` of `pool` on the server at `url` (in that server's region), with its
/// bundle and identity files; `None` for a server not started here.
fn worker_on(url: &str, name: &str, pool: &str) -> Option<(PathBuf, Worker, IdentityFiles)> {
    let (bundle, server) = server_of(url)?;
    let worker = Worker {
        pool: pool.to_owned(),
        name: name.to_owned(),
        region: match server {
            Server::Hub => None,
            Server::Leaf(r) => Some(r),
        },
    };
    let files = IdentityFiles::of(&bundle, &Identity::Worker(worker.clone()));
    Some((bundle, worker, files))
}

/// A client holding the credentials of worker `name` of `pool` on a server started here
/// (bound first if new, with its own inbox prefix): what an attacker who stole that worker's
/// files can do.
///
/// # Errors
/// Not a server started here, or the identity is not let in.
pub async fn worker_client(
    url: &str,
    name: &str,
    pool: &str,
) -> anyhow::Result<async_nats::Client> {
    let (bundle, worker, files) =
        worker_on(url, name, pool).context("not a server started by the harness")?;
    let (u, f) = (url.to_owned(), files.clone());
    tokio::task::spawn_blocking(move || match bind_worker(&bundle, worker)? {
        true => wait_until_accepted(&u, &f),
        false => Ok(()),
    })
    .await??;
    let subjects = shoal_shared::subjects::Subjects::default();
    let inbox = subjects.worker_inbox_prefix(
        &shoal_shared::PoolName::parse(pool)?,
        &shoal_shared::WorkerName::parse(name)?,
    );
    Ok(client_options(&files)?
        .custom_inbox_prefix(inbox)
        .connect(servers(url))
        .await?)
}

/// A client with the read-only identity of integrator `name` on the hub started here (added
/// to the bundle first, the servers reloaded), with its own inbox prefix; and that
/// identity's files (e.g. for a client in another language).
///
/// # Errors
/// Not a server started here, or the identity is not let in.
pub async fn integrator_client(
    url: &str,
    name: &str,
) -> anyhow::Result<(async_nats::Client, IdentityFiles)> {
    integrator_client_as(url, name, None).await
}

/// [`integrator_client`] for an integrator that may send commands over NATS with `role`.
///
/// # Errors
/// Not a server started here, or the identity is not let in.
pub async fn integrator_client_as(
    url: &str,
    name: &str,
    role: Option<&str>,
) -> anyhow::Result<(async_nats::Client, IdentityFiles)> {
    let (bundle, _) = server_of(url).context("not a server started by the harness")?;
    let files = IdentityFiles::of(&bundle, &Identity::Integrator(name.to_owned()));
    let (u, f) = (url.to_owned(), files.clone());
    let integrator = shoal_trust::Integrator {
        name: name.to_owned(),
        role: role.map(str::to_owned),
    };
    tokio::task::spawn_blocking(move || {
        let added = {
            let _changing = CHANGING.lock();
            let mut t = shoal_trust::load_topology(&bundle)?;
            let added = t
                .add_integrator(integrator)
                .map_err(|e| anyhow::anyhow!("cannot add the integrator: {e}"))?;
            if added {
                shoal_trust::generate(&bundle, &t)?;
                reload(&bundle)?;
            }
            added
        };
        if added {
            wait_until_accepted(&u, &f)?;
        }
        anyhow::Ok(())
    })
    .await??;
    let subjects = shoal_shared::subjects::Subjects::default();
    let inbox = shoal_trust::permissions::integrator_inbox_prefix(&subjects, name);
    let client = client_options(&files)?
        .custom_inbox_prefix(inbox)
        .connect(servers(url))
        .await?;
    Ok((client, files))
}

/// Binds `worker`'s name to its pool and region (a test may reuse a name in another pool:
/// the older binding goes); whether the bundle changed (and the servers were reloaded).
fn bind_worker(bundle: &Path, worker: Worker) -> anyhow::Result<bool> {
    let _changing = CHANGING.lock();
    let mut t = shoal_trust::load_topology(bundle)?;
    if t.workers.contains(&worker) {
        return Ok(false);
    }
    t.workers.retain(|w| w.name != worker.name);
    t.add_worker(worker)
        .map_err(|e| anyhow::anyhow!("cannot bind the worker: {e}"))?;
    shoal_trust::generate(bundle, &t)?;
    reload(bundle)?;
    Ok(true)
}

/// The servers of a URL that may list a cluster's nodes, comma-separated.
fn servers(url: &str) -> Vec<String> {
    url.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The options of a client with `files`' identity.
///
/// # Errors
/// The seed cannot be read.
pub fn client_options(files: &IdentityFiles) -> anyhow::Result<async_nats::ConnectOptions> {
    let seed = std::fs::read_to_string(&files.nkey)
        .with_context(|| format!("cannot read {}", files.nkey.display()))?;
    Ok(async_nats::ConnectOptions::new()
        .nkey(seed.trim().to_owned())
        .add_root_certificates(files.ca.clone())
        .add_client_certificate(files.cert.clone(), files.key.clone())
        .require_tls(true))
}

/// The options of a client with the planner's (admin) identity for a server started here;
/// plain options for any other.
///
/// # Errors
/// The seed cannot be read.
pub fn admin_options(url: &str) -> anyhow::Result<async_nats::ConnectOptions> {
    match server_of(url) {
        Some((bundle, _)) => client_options(&IdentityFiles::of(&bundle, &Identity::Planner)),
        None => Ok(async_nats::ConnectOptions::new()),
    }
}

/// A client with the planner's (admin) identity for a server started here; a plain client
/// for any other.
///
/// # Errors
/// It cannot connect.
pub async fn admin_client(url: &str) -> anyhow::Result<async_nats::Client> {
    Ok(admin_options(url)?.connect(servers(url)).await?)
}

/// Polls until a client with `files`' identity is let into `url` (the server has reloaded),
/// for at most [`ACCEPTED_WITHIN`]. Runs on a thread of its own: its callers are not async.
fn wait_until_accepted(url: &str, files: &IdentityFiles) -> anyhow::Result<()> {
    let (url, files) = (url.to_owned(), files.clone());
    let polling = std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let deadline = tokio::time::Instant::now() + ACCEPTED_WITHIN;
            loop {
                let connecting = client_options(&files)?.connect(servers(&url));
                let last = match tokio::time::timeout(Duration::from_secs(2), connecting).await {
                    Ok(Ok(client)) => {
                        drop(client);
                        return Ok(());
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "no answer within 2 s".to_owned(),
                };
                if tokio::time::Instant::now() > deadline {
                    bail!(
                        "the identity {} is not let into {url} after {ACCEPTED_WITHIN:?} (last: {last})",
                        files.nkey.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    });
    polling
        .join()
        .map_err(|_| anyhow::anyhow!("the identity poll panicked"))?
}
