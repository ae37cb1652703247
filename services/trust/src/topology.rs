//! The topology a trust bundle is made for: the hub (one server, or a JetStream cluster of
//! hub nodes), its regions (leaf nodes) with the pools they serve, and the named workers.
//! Read from and written to `topology.toml` in the bundle directory, so that a later run
//! (adding a worker) starts from what was generated.

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
    /// Where the servers write their pid files; default: the bundle directory (seen at
    /// `mount_dir`). A bundle mounted read-only needs another place (e.g. `/tmp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_dir: Option<PathBuf>,
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
    /// A JetStream cluster of hub nodes in place of one server: each node gets its own
    /// config (`<node>.conf`) and certificate, clients and leaf nodes are given every node,
    /// and the planner replicates its streams over them. `host`, `port`, `leaf_port`,
    /// `store_dir` and `monitor_port` above are then the nodes' defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<HubCluster>,
}

/// The hub as a JetStream cluster (nats-server `cluster {}` with routes between the nodes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubCluster {
    /// The cluster's name (every node's `cluster.name`).
    #[serde(default = "default_cluster_name")]
    pub name: String,
    /// Port of the routes between the nodes (each node's default).
    #[serde(default = "default_route_port")]
    pub port: u16,
    /// The nodes; three for streams replicated R3 (a majority survives one lost node).
    pub nodes: Vec<HubNode>,
}

/// One server of a clustered hub. Unset ports and dirs are the hub's (or the cluster's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubNode {
    /// Its `server_name` (unique in the cluster, which JetStream requires), and the name of
    /// its config (`<name>.conf`), certificate and pid file.
    pub name: String,
    /// Host name clients, leaf nodes and the other nodes use to reach it (also in its
    /// certificate).
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaf_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor_port: Option<u16>,
    /// Its JetStream store; default: the hub's `store_dir`, else `<bundle>/<name>-store`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_dir: Option<PathBuf>,
}

/// One server of the hub as it is run: the hub itself, or a node of its cluster with every
/// default filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubServer {
    /// `hub`, or the node's name.
    pub name: String,
    pub host: String,
    pub port: u16,
    pub leaf_port: u16,
    /// The routes' port (a clustered node only).
    pub route_port: Option<u16>,
    pub monitor_port: Option<u16>,
    /// None: `<bundle>/hub-store` (one server) or `<bundle>/<name>-store` (a node).
    pub store_dir: Option<PathBuf>,
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
fn default_cluster_name() -> String {
    "shoal-hub".to_owned()
}
fn default_route_port() -> u16 {
    6222
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
            cluster: None,
        }
    }

    /// The servers of the hub: itself alone, or each node of its cluster with the hub's
    /// (and the cluster's) defaults filled in.
    pub fn servers(&self) -> Vec<HubServer> {
        let Some(c) = &self.cluster else {
            return vec![HubServer {
                name: "hub".to_owned(),
                host: self.host.clone(),
                port: self.port,
                leaf_port: self.leaf_port,
                route_port: None,
                monitor_port: self.monitor_port,
                store_dir: self.store_dir.clone(),
            }];
        };
        c.nodes
            .iter()
            .map(|n| HubServer {
                name: n.name.clone(),
                host: n.host.clone(),
                port: n.port.unwrap_or(self.port),
                leaf_port: n.leaf_port.unwrap_or(self.leaf_port),
                route_port: Some(n.route_port.unwrap_or(c.port)),
                monitor_port: n.monitor_port.or(self.monitor_port),
                store_dir: n.store_dir.clone().or_else(|| self.store_dir.clone()),
            })
            .collect()
    }

    /// The client URLs of the hub, comma-separated (every node of a cluster): what the
    /// planner and the hub's other clients are given.
    pub fn client_urls(&self) -> String {
        let urls: Vec<String> = self
            .servers()
            .iter()
            .map(|s| format!("nats://{}:{}", s.host, s.port))
            .collect();
        urls.join(",")
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
            pid_dir: None,
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
        let mut ports: BTreeSet<(String, u16)> = BTreeSet::new();
        self.check_cluster()?;
        for s in self.hub.servers() {
            let mut own = vec![("port", s.port), ("leaf_port", s.leaf_port)];
            own.extend(s.route_port.map(|p| ("route_port", p)));
            own.extend(s.monitor_port.map(|p| ("monitor_port", p)));
            for (what, port) in own {
                if !ports.insert((s.host.clone(), port)) {
                    let server = if self.hub.cluster.is_some() {
                        format!("hub node \"{}\"", s.name)
                    } else {
                        "hub".to_owned()
                    };
                    return Err(format!(
                        "{what} {port} of {server} is used twice on host {}",
                        s.host
                    ));
                }
            }
        }
        let mut regions = BTreeSet::new();
        for r in &self.regions {
            RegionName::parse(r.name.as_str()).map_err(|e| format!("region: {e}"))?;
            if !regions.insert(r.name.as_str()) {
                return Err(format!("region \"{}\" is listed twice", r.name));
            }
            if !ports.insert((r.host.clone(), r.port)) {
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

    /// A cluster's name and nodes: names valid and unique (JetStream requires a unique
    /// `server_name`), at least two nodes.
    fn check_cluster(&self) -> Result<(), String> {
        let Some(c) = &self.hub.cluster else {
            return Ok(());
        };
        shoal_shared::names::check_name("cluster", &c.name)
            .map_err(|e| format!("hub.cluster.name: {e}"))?;
        if c.nodes.len() < 2 {
            return Err(format!(
                "hub.cluster has {} node(s): a cluster needs at least two (three for streams \
                 replicated R3); remove [hub.cluster] for a single server",
                c.nodes.len()
            ));
        }
        let mut names = BTreeSet::new();
        for n in &c.nodes {
            shoal_shared::names::check_name("hub node", &n.name)
                .map_err(|e| format!("hub.cluster.nodes: {e}"))?;
            if !names.insert(n.name.as_str()) {
                return Err(format!(
                    "hub node \"{}\" is listed twice (each node needs its own server name)",
                    n.name
                ));
            }
            if n.name.starts_with("leaf-") {
                return Err(format!(
                    "hub node \"{}\": names starting with leaf- are the regions' leaf nodes'",
                    n.name
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
