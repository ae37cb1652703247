//! The topology a trust bundle is made for: the hub, its regions (leaf nodes) with the pools
//! they serve, and the named workers. Read from and written to `topology.toml` in the bundle
//! directory, so that a later run (adding a worker) starts from what was generated.

use crate::TrustError;
use serde::{Deserialize, Serialize};
use shoal_shared::subjects::{BUILTIN_WORKER_NAME, Subjects};
use shoal_shared::{PoolName, RegionName, WorkerName};
use std::collections::BTreeSet;
use std::path::PathBuf;

/// A hub, its regions and its workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Subject prefix of the installation.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Host names and addresses put into every server certificate besides `127.0.0.1` and
    /// `localhost` (e.g. `nats-hub` in docker-compose).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Where the processes see the bundle directory (a container mount); default: where it
    /// is written. Every path in the configs and env files starts with it.
    #[serde(default)]
    pub mount_dir: Option<PathBuf>,
    /// The pool of the planner's built-in worker.
    #[serde(default = "default_pool")]
    pub default_pool: String,
    /// Whether the planner runs a built-in worker (it gets an identity of its own).
    #[serde(default = "yes")]
    pub builtin_worker: bool,
    pub hub: Hub,
    #[serde(default)]
    pub regions: Vec<Region>,
    #[serde(default)]
    pub workers: Vec<Worker>,
    /// Integrators: systems that follow the event feed (`SHOAL_EVENTS`), each with an
    /// identity on the hub; one with a role may also send commands over NATS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub integrators: Vec<Integrator>,
}

/// The hub: JetStream (domain [`Hub::domain`]), clients and leaf nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hub {
    /// Address the hub listens on (clients and leaf nodes).
    #[serde(default = "loopback")]
    pub listen: String,
    /// Host name clients and leaf nodes use to reach the hub (in env files and leaf remotes).
    #[serde(default = "loopback")]
    pub host: String,
    #[serde(default = "default_client_port")]
    pub port: u16,
    #[serde(default = "default_leaf_port")]
    pub leaf_port: u16,
    #[serde(default = "default_domain")]
    pub domain: String,
    /// JetStream store; default `<bundle>/hub-store`.
    #[serde(default)]
    pub store_dir: Option<PathBuf>,
    /// Monitoring port (`/healthz`), on 127.0.0.1 only; none by default.
    #[serde(default)]
    pub monitor_port: Option<u16>,
}

/// A region: one leaf node, connecting outbound to the hub, that its workers connect to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    pub name: String,
    #[serde(default = "loopback")]
    pub listen: String,
    /// Host name the region's workers use to reach its leaf node.
    #[serde(default = "loopback")]
    pub host: String,
    pub port: u16,
    /// The pools served in this region: the upper limit of what the leaf node may carry.
    #[serde(default)]
    pub pools: Vec<String>,
    /// Let the leaf node carry any pool's subjects (test harnesses that make pools on the
    /// fly); the per-worker users on the leaf node still bind each worker to its pool.
    #[serde(default)]
    pub any_pool: bool,
    /// Monitoring port (`/healthz`), on 127.0.0.1 only; none by default.
    #[serde(default)]
    pub monitor_port: Option<u16>,
}

/// A worker bound to its pool and name (and the region whose leaf node it connects to).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Worker {
    pub pool: String,
    pub name: String,
    #[serde(default)]
    pub region: Option<String>,
}

/// An integrator: its name and the API role its NATS commands carry (`deployer`, `admin`;
/// none: it only reads the feed). Written as a table, or as its name alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "IntegratorRepr", into = "IntegratorRepr")]
pub struct Integrator {
    pub name: String,
    pub role: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum IntegratorRepr {
    Name(String),
    Table {
        name: String,
        #[serde(default)]
        role: Option<String>,
    },
}

impl From<IntegratorRepr> for Integrator {
    fn from(r: IntegratorRepr) -> Integrator {
        match r {
            IntegratorRepr::Name(name) => Integrator { name, role: None },
            IntegratorRepr::Table { name, role } => Integrator { name, role },
        }
    }
}

impl From<Integrator> for IntegratorRepr {
    fn from(i: Integrator) -> IntegratorRepr {
        IntegratorRepr::Table {
            name: i.name,
            role: i.role,
        }
    }
}

fn default_prefix() -> String {
    "shoal".to_owned()
}
fn default_pool() -> String {
    "default".to_owned()
}
fn yes() -> bool {
    true
}
fn loopback() -> String {
    "127.0.0.1".to_owned()
}
fn default_client_port() -> u16 {
    4222
}
fn default_leaf_port() -> u16 {
    7422
}
fn default_domain() -> String {
    "hub".to_owned()
}

impl Hub {
    /// A hub on loopback with the given ports.
    pub fn local(port: u16, leaf_port: u16) -> Hub {
        Hub {
            listen: loopback(),
            host: loopback(),
            port,
            leaf_port,
            domain: default_domain(),
            store_dir: None,
            monitor_port: None,
        }
    }
}

impl Region {
    /// A region on loopback serving `pools`.
    pub fn local(name: &str, port: u16, pools: &[&str]) -> Region {
        Region {
            name: name.to_owned(),
            listen: loopback(),
            host: loopback(),
            port,
            pools: pools.iter().map(|p| (*p).to_owned()).collect(),
            any_pool: false,
            monitor_port: None,
        }
    }
}

impl Topology {
    /// A hub alone, with the built-in worker of pool `default`.
    pub fn hub_only(hub: Hub) -> Topology {
        Topology {
            prefix: default_prefix(),
            hosts: Vec::new(),
            mount_dir: None,
            default_pool: default_pool(),
            builtin_worker: true,
            hub,
            regions: Vec::new(),
            workers: Vec::new(),
            integrators: Vec::new(),
        }
    }

    /// Parses `topology.toml` text.
    ///
    /// # Errors
    /// Not valid TOML of this shape, or a name, region or port is wrong.
    pub fn parse(text: &str, source: &str) -> Result<Topology, TrustError> {
        let topology: Topology = toml::from_str(text).map_err(|e| TrustError::Topology {
            source_name: source.to_owned(),
            problem: e.to_string(),
        })?;
        topology.check().map_err(|problem| TrustError::Topology {
            source_name: source.to_owned(),
            problem,
        })?;
        Ok(topology)
    }

    /// The subjects of the installation.
    ///
    /// # Errors
    /// The prefix is not a safe subject token.
    pub fn subjects(&self) -> Result<Subjects, String> {
        Subjects::new(&self.prefix).map_err(|e| format!("prefix: {e}"))
    }

    /// The region named `name`.
    pub fn region(&self, name: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// Adds a worker unless it is there; whether it was added.
    ///
    /// # Errors
    /// The worker is invalid in this topology (bad name, unknown region, pool not served by
    /// the region, a name already bound to another pool).
    pub fn add_worker(&mut self, worker: Worker) -> Result<bool, String> {
        if self.workers.contains(&worker) {
            return Ok(false);
        }
        self.workers.push(worker);
        if let Err(e) = self.check() {
            self.workers.pop();
            return Err(e);
        }
        Ok(true)
    }

    /// Adds an integrator, or gives it this role; whether the bundle changes.
    ///
    /// # Errors
    /// The name is not a valid name, or the role not a role.
    pub fn add_integrator(&mut self, integrator: Integrator) -> Result<bool, String> {
        if self.integrators.contains(&integrator) {
            return Ok(false);
        }
        let before = self.integrators.clone();
        self.integrators.retain(|i| i.name != integrator.name);
        self.integrators.push(integrator);
        if let Err(e) = self.check() {
            self.integrators = before;
            return Err(e);
        }
        Ok(true)
    }

    /// Checks names, regions, pools and ports; the first problem, in words.
    ///
    /// # Errors
    /// What is wrong, naming the bad value.
    pub fn check(&self) -> Result<(), String> {
        self.subjects()?;
        PoolName::parse(self.default_pool.as_str()).map_err(|e| format!("default_pool: {e}"))?;
        check_token("hub.domain", &self.hub.domain)?;
        // Servers on one host (the same `host`) cannot share a port; in containers each
        // server has a host of its own.
        let mut ports = BTreeSet::new();
        let hub_host = self.hub.host.as_str();
        for (what, port) in [
            ("hub.port", self.hub.port),
            ("hub.leaf_port", self.hub.leaf_port),
        ] {
            if !ports.insert((hub_host, port)) {
                return Err(format!("{what} {port} is used twice"));
            }
        }
        let mut regions = BTreeSet::new();
        for r in &self.regions {
            RegionName::parse(r.name.as_str()).map_err(|e| format!("region: {e}"))?;
            if !regions.insert(r.name.as_str()) {
                return Err(format!("region \"{}\" is listed twice", r.name));
            }
            if !ports.insert((r.host.as_str(), r.port)) {
                return Err(format!(
                    "port {} of region \"{}\" is used twice",
                    r.port, r.name
                ));
            }
            for p in &r.pools {
                PoolName::parse(p.as_str())
                    .map_err(|e| format!("pool of region \"{}\": {e}", r.name))?;
            }
        }
        self.check_workers()?;
        let mut integrators = BTreeSet::new();
        for i in &self.integrators {
            shoal_shared::names::check_name("integrator", &i.name)
                .map_err(|e| format!("integrator: {e}"))?;
            if !integrators.insert(i.name.as_str()) {
                return Err(format!("integrator \"{}\" is listed twice", i.name));
            }
            if let Some(role) = &i.role
                && !matches!(role.as_str(), "viewer" | "deployer" | "admin")
            {
                return Err(format!(
                    "integrator \"{}\": role \"{role}\" is none of viewer, deployer, admin",
                    i.name
                ));
            }
        }
        Ok(())
    }

    fn check_workers(&self) -> Result<(), String> {
        let mut names = BTreeSet::new();
        if self.builtin_worker {
            names.insert(BUILTIN_WORKER_NAME);
        }
        for w in &self.workers {
            PoolName::parse(w.pool.as_str()).map_err(|e| format!("worker \"{}\": {e}", w.name))?;
            WorkerName::parse(w.name.as_str()).map_err(|e| format!("worker: {e}"))?;
            if !names.insert(w.name.as_str()) {
                return Err(format!(
                    "worker name \"{}\" is used twice (every worker has its own identity{})",
                    w.name,
                    if w.name == BUILTIN_WORKER_NAME {
                        "; this name is the built-in worker's"
                    } else {
                        ""
                    }
                ));
            }
            let Some(region) = &w.region else { continue };
            let Some(r) = self.region(region) else {
                let known: Vec<&str> = self.regions.iter().map(|r| r.name.as_str()).collect();
                return Err(format!(
                    "worker \"{}\": unknown region \"{region}\" (known: {})",
                    w.name,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ));
            };
            if !r.any_pool && !r.pools.contains(&w.pool) {
                return Err(format!(
                    "worker \"{}\": region \"{region}\" does not serve pool \"{}\" (its pools: {}); add the pool to the region",
                    w.name,
                    w.pool,
                    r.pools.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// A JetStream domain is a single subject token.
fn check_token(what: &str, value: &str) -> Result<(), String> {
    shoal_shared::names::check_name("domain", value).map_err(|e| format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        let mut t = Topology::hub_only(Hub::local(4222, 7422));
        t.regions.push(Region::local("eu", 4223, &["eu-west"]));
        t
    }

    #[test]
    fn a_worker_of_a_pool_its_region_does_not_serve_is_refused_naming_both() {
        let mut t = topology();
        let e = t
            .add_worker(Worker {
                pool: "us-east".into(),
                name: "w1".into(),
                region: Some("eu".into()),
            })
            .expect_err("refused");
        assert!(e.contains("\"eu\"") && e.contains("\"us-east\""), "{e}");
        assert!(t.workers.is_empty());
    }

    #[test]
    fn an_unknown_region_is_named_with_the_known_ones() {
        let mut t = topology();
        let e = t
            .add_worker(Worker {
                pool: "eu-west".into(),
                name: "w1".into(),
                region: Some("us".into()),
            })
            .expect_err("refused");
        assert!(e.contains("unknown region \"us\" (known: eu)"), "{e}");
    }

    #[test]
    fn a_worker_name_is_bound_once_and_adding_it_again_changes_nothing() {
        let mut t = topology();
        let w = Worker {
            pool: "eu-west".into(),
            name: "w1".into(),
            region: Some("eu".into()),
        };
        assert_eq!(t.add_worker(w.clone()), Ok(true));
        assert_eq!(t.add_worker(w), Ok(false));
        let other_pool = Worker {
            pool: "default".into(),
            name: "w1".into(),
            region: None,
        };
        assert!(t.add_worker(other_pool).is_err());
    }

    #[test]
    fn a_topology_file_names_the_bad_value() {
        let e = Topology::parse("[hub]\nport = 4222\nleaf_port = 4222\n", "t.toml")
            .expect_err("refused");
        assert!(e.to_string().contains("4222"), "{e}");
        let e = Topology::parse("[hub]\n[[regions]]\nname = \"e u\"\nport = 1\n", "t.toml")
            .expect_err("refused");
        assert!(e.to_string().contains("t.toml"), "{e}");
    }
}
