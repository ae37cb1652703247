//! shoal-trust: the trust bundle of a shoal broker. For a [`Topology`] (a hub, its region
//! leaf nodes and their pools, the planner, the built-in worker and named workers) it
//! writes into one directory:
//!
//! - `hub.conf` (or, for a clustered hub, `<node>.conf` per node), `leaf-<region>.conf`:
//!   nats-server configs with nkey users, permissions per identity, accounts (`SHOAL`, and
//!   `LEAFJAIL` for leaf nodes without credentials), limits and TLS with client certificates
//!   (`verify: true`) on client, leaf and route connections; a cluster's routes also need
//!   its password (`cluster.password`);
//! - `ca.pem` (+ `ca-key.pem`), a certificate per server and per identity;
//! - `identities/<id>.nk` (an nkey seed) and `identities/<id>.env` (the `SHOAL_NATS_*`
//!   variables of that identity);
//! - `topology.toml`, what the bundle was made for.
//!
//! Generating again into the same directory keeps every key, seed, password and
//! certificate and rewrites the configs: that is how a worker is added (then reload the
//! servers: `nats-server --signal reload=<pid>` or SIGHUP).
#![forbid(unsafe_code)]

pub mod files;
pub mod permissions;
pub mod pki;
pub mod render;
pub mod topology;

pub use topology::{Hub, HubCluster, HubNode, HubServer, Integrator, Region, Topology, Worker};

use files::{read_or, write_public, write_secret};
use render::User;
use shoal_shared::subjects::{BUILTIN_WORKER_NAME, Subjects};
use std::path::{Path, PathBuf};

/// Why a bundle could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{source_name}: {problem}")]
    Topology {
        source_name: String,
        problem: String,
    },
    #[error("cannot write or read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is damaged ({problem}); move it away to make a new one (identities using it must then be given the new one)", path.display())]
    BadFile { path: PathBuf, problem: String },
    #[error("cannot make a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("cannot make an nkey: {0}")]
    Nkey(String),
    #[error("cannot hash a region's password: {0}")]
    Hash(String),
}

/// Which server an identity connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Server {
    Hub,
    Leaf(String),
}

/// One identity of a bundle and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The planner: admin.
    Planner,
    /// The planner's built-in worker ([`BUILTIN_WORKER_NAME`] of the default pool).
    BuiltinWorker,
    /// A named worker.
    Worker(Worker),
    /// A system that follows the event feed, read-only.
    Integrator(String),
}

impl Identity {
    /// The file stem of its seed, certificate and env file.
    pub fn id(&self) -> String {
        match self {
            Identity::Planner => "planner".to_owned(),
            Identity::BuiltinWorker => BUILTIN_WORKER_NAME.to_owned(),
            Identity::Worker(w) => format!("worker.{}.{}", w.pool, w.name),
            Identity::Integrator(name) => format!("integrator.{name}"),
        }
    }
}

/// The files of one identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityFiles {
    pub nkey: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub env: PathBuf,
}

impl IdentityFiles {
    /// The files of `identity` in a bundle seen at `dir`.
    pub fn of(dir: &Path, identity: &Identity) -> IdentityFiles {
        let id = identity.id();
        let ids = dir.join("identities");
        IdentityFiles {
            nkey: ids.join(format!("{id}.nk")),
            ca: dir.join("ca.pem"),
            cert: ids.join(format!("{id}-cert.pem")),
            key: ids.join(format!("{id}-key.pem")),
            env: ids.join(format!("{id}.env")),
        }
    }
}

/// Reads `topology.toml` of a bundle.
///
/// # Errors
/// It is missing or invalid.
pub fn load_topology(dir: &Path) -> Result<Topology, TrustError> {
    let path = dir.join("topology.toml");
    let text = std::fs::read_to_string(&path).map_err(|source| TrustError::Io {
        path: path.clone(),
        source,
    })?;
    Topology::parse(&text, &path.display().to_string())
}

/// Adds a worker to the bundle in `dir` (made before) and writes it again; whether the
/// worker is new (then the servers must be reloaded).
///
/// # Errors
/// The worker does not fit the topology, or a file cannot be written.
pub fn add_worker(dir: &Path, worker: Worker) -> Result<bool, TrustError> {
    let mut t = load_topology(dir)?;
    let added = t
        .add_worker(worker)
        .map_err(|problem| TrustError::Topology {
            source_name: dir.join("topology.toml").display().to_string(),
            problem,
        })?;
    if added {
        generate(dir, &t)?;
    }
    Ok(added)
}

/// Writes (or completes) the bundle for `t` into `dir`, keeping every existing secret.
///
/// # Errors
/// The topology is invalid, or a file cannot be written.
pub fn generate(dir: &Path, t: &Topology) -> Result<(), TrustError> {
    let bad = |problem| TrustError::Topology {
        source_name: "topology".to_owned(),
        problem,
    };
    t.check().map_err(bad)?;
    let subjects = t.subjects().map_err(bad)?;
    let ids = dir.join("identities");
    std::fs::create_dir_all(&ids).map_err(|source| TrustError::Io {
        path: ids.clone(),
        source,
    })?;
    let dir = std::fs::canonicalize(dir).map_err(|source| TrustError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let m = t.mount_dir.clone().unwrap_or_else(|| dir.clone());
    let ca = pki::Ca::load_or_make(&dir)?;
    let keys = identities(&dir, t, &m, &ca)?;
    let passwords = servers(&dir, t, &ca)?;
    // The hub checks a leaf node's password against its bcrypt hash, so the hub's config
    // (and a copy of the broker's disk) does not hold the passwords themselves.
    let hashed = passwords
        .iter()
        .map(|pw| hashed_password(pw))
        .collect::<Result<Vec<_>, _>>()?;

    let on = |server: Server| keys.iter().filter(move |(_, i)| server_of(i) == server);
    let mut users: Vec<User<'_>> = on(Server::Hub)
        .map(|(k, i)| user(&subjects, "$JS.API", k, i, t))
        .collect();
    for (r, pw) in t.regions.iter().zip(&hashed) {
        users.push(User::Leaf {
            user: format!("leaf-{}", r.name),
            password: pw,
            permissions: permissions::region(&subjects, &t.hub.domain, &r.pools, r.any_pool),
        });
    }
    let route_password = match &t.hub.cluster {
        Some(_) => {
            let path = dir.join("cluster.password");
            Some(read_or(&path, || Ok(password()), true)?.trim().to_owned())
        }
        None => None,
    };
    for server in t.hub.servers() {
        let text = render::hub(t, &server, &m, &users, route_password.as_deref());
        write_secret(&dir.join(format!("{}.conf", server.name)), &text)?;
    }
    let api = Subjects::js_api_prefix(Some(&t.hub.domain));
    for (r, pw) in t.regions.iter().zip(&passwords) {
        let users: Vec<User<'_>> = on(Server::Leaf(r.name.clone()))
            .map(|(k, i)| user(&subjects, &api, k, i, t))
            .collect();
        let text = render::leaf(t, r, &m, pw, &users);
        write_secret(&dir.join(format!("leaf-{}.conf", r.name)), &text)?;
    }
    let text = toml::to_string(t).map_err(|e| bad(e.to_string()))?;
    write_public(&dir.join("topology.toml"), &text)
}

/// Every identity's seed, client certificate and env file (made when missing): each
/// identity with its public key.
fn identities(
    dir: &Path,
    t: &Topology,
    m: &Path,
    ca: &pki::Ca,
) -> Result<Vec<(String, Identity)>, TrustError> {
    let mut all = vec![Identity::Planner];
    if t.builtin_worker {
        all.push(Identity::BuiltinWorker);
    }
    all.extend(t.workers.iter().cloned().map(Identity::Worker));
    all.extend(
        t.integrators
            .iter()
            .map(|i| Identity::Integrator(i.name.clone())),
    );
    let mut keys = Vec::new();
    for identity in all {
        let files = IdentityFiles::of(dir, &identity);
        let public = seed(&files.nkey)?;
        ca.issue(&dir.join("identities"), &identity.id(), None)?;
        write_public(&files.env, &env(t, m, &identity))?;
        keys.push((public, identity));
    }
    Ok(keys)
}

/// The servers' certificates and the regions' passwords (made when missing): the
/// passwords, in the order of the regions.
fn servers(dir: &Path, t: &Topology, ca: &pki::Ca) -> Result<Vec<String>, TrustError> {
    let mut passwords = Vec::new();
    for r in &t.regions {
        let name = format!("leaf-{}", r.name);
        ca.issue(dir, &name, Some(&t.hosts))?;
        let path = dir.join(format!("{name}.password"));
        let pw = read_or(&path, || Ok(password()), true)?;
        passwords.push(pw.trim().to_owned());
    }
    for server in t.hub.servers() {
        let mut hosts = t.hosts.clone();
        if !hosts.contains(&server.host) {
            hosts.push(server.host.clone());
        }
        ca.issue(dir, &server.name, Some(&hosts))?;
    }
    Ok(passwords)
}

/// The server an identity connects to.
pub fn server_of(identity: &Identity) -> Server {
    match identity {
        Identity::Worker(Worker {
            region: Some(r), ..
        }) => Server::Leaf(r.clone()),
        _ => Server::Hub,
    }
}

fn user<'a>(
    subjects: &Subjects,
    api: &str,
    public_key: &'a str,
    identity: &Identity,
    t: &Topology,
) -> User<'a> {
    let (comment, permissions) = match identity {
        Identity::Planner => ("the planner (admin)".to_owned(), permissions::planner()),
        Identity::BuiltinWorker => (
            format!("the built-in worker, pool {}", t.default_pool),
            permissions::worker(subjects, api, &t.default_pool, BUILTIN_WORKER_NAME),
        ),
        Identity::Worker(w) => (
            format!("worker {} of pool {}", w.name, w.pool),
            permissions::worker(subjects, api, &w.pool, &w.name),
        ),
        Identity::Integrator(name) => {
            let role = t
                .integrators
                .iter()
                .find(|i| &i.name == name)
                .and_then(|i| i.role.as_deref());
            (
                match role {
                    Some(r) => {
                        format!("integrator {name} (reads the event feed, sends commands as {r})")
                    }
                    None => format!("integrator {name} (reads the event feed)"),
                },
                permissions::integrator(subjects, api, name, role),
            )
        }
    };
    User::Nkey {
        comment,
        public_key,
        permissions,
    }
}

/// The public key of the user seed at `path`, made first when missing.
fn seed(path: &Path) -> Result<String, TrustError> {
    let text = read_or(
        path,
        || {
            let pair = nkeys::KeyPair::new_user();
            pair.seed().map_err(|e| TrustError::Nkey(e.to_string()))
        },
        true,
    )?;
    let pair = nkeys::KeyPair::from_seed(text.trim()).map_err(|e| TrustError::BadFile {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })?;
    Ok(pair.public_key())
}

/// How much work one check of a hashed password is: nats-server's `mkpasswd` default. It is
/// paid once per leaf node connection.
const BCRYPT_COST: u32 = 11;

/// A password as nats-server reads a hashed one: bcrypt, `$2a$`.
fn hashed_password(password: &str) -> Result<String, TrustError> {
    bcrypt::hash_with_result(password, BCRYPT_COST)
        .map(|h| h.format_for_version(bcrypt::Version::TwoA))
        .map_err(|e| TrustError::Hash(e.to_string()))
}

/// A random password of 32 letters and digits (safe in a URL).
fn password() -> String {
    use rand::Rng as _;
    use rand::distr::Alphanumeric;
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// The env file of an identity: the `SHOAL_*` variables its process needs.
fn env(t: &Topology, m: &Path, identity: &Identity) -> String {
    let files = IdentityFiles::of(m, identity);
    let url = match server_of(identity) {
        Server::Hub => t.hub.client_urls(),
        Server::Leaf(r) => {
            let region = t.region(&r);
            let (host, port) = region.map_or(("127.0.0.1", 0), |x| (x.host.as_str(), x.port));
            format!("nats://{host}:{port}")
        }
    };
    let mut vars = vec![
        ("SHOAL_NATS_URL", url),
        ("SHOAL_NATS_NKEY", files.nkey.display().to_string()),
        ("SHOAL_NATS_CA", files.ca.display().to_string()),
        ("SHOAL_NATS_CERT", files.cert.display().to_string()),
        ("SHOAL_NATS_KEY", files.key.display().to_string()),
        ("SHOAL_SUBJECT_PREFIX", t.prefix.clone()),
    ];
    match identity {
        Identity::Planner => {
            vars.push(("SHOAL_DEFAULT_POOL", t.default_pool.clone()));
            if t.builtin_worker {
                let b = IdentityFiles::of(m, &Identity::BuiltinWorker);
                vars.push(("SHOAL_BUILTIN_WORKER_NKEY", b.nkey.display().to_string()));
            }
        }
        Identity::BuiltinWorker => {}
        Identity::Worker(w) => {
            vars.push(("SHOAL_POOL", w.pool.clone()));
            vars.push(("SHOAL_WORKER_NAME", w.name.clone()));
            if let Some(r) = &w.region {
                vars.push(("SHOAL_REGION", r.clone()));
                vars.push(("SHOAL_JS_DOMAIN", t.hub.domain.clone()));
            }
        }
        Identity::Integrator(name) => {
            let subjects = Subjects::new(&t.prefix).unwrap_or_default();
            let prefix = permissions::integrator_inbox_prefix(&subjects, name);
            vars.push(("SHOAL_NATS_INBOX_PREFIX", prefix));
            vars.push(("SHOAL_EVENTS_STREAM", subjects.events_stream()));
        }
    }
    let mut out = format!(
        "# NATS identity \"{}\" of a shoal trust bundle (no secret in this file: it names them)\n",
        identity.id()
    );
    for (k, v) in vars {
        out.push_str(&format!("{k}={v}\n"));
    }
    out
}

#[cfg(test)]
mod tests;
