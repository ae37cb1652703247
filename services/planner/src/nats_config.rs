//! `shoal-planner nats-config`: writes (or completes) a trust bundle for the broker — the
//! hub's (or each hub node's, for a JetStream cluster) and each region's nats-server config,
//! certificates, an nkey and env file per identity — from a topology file, from flags, or
//! from the bundle's own `topology.toml`. Running it again keeps every key; `--worker` adds
//! workers to an existing bundle.

use anyhow::Context as _;
use shoal_trust::{Hub, HubCluster, HubNode, Region, Topology, Worker};
use std::path::PathBuf;

/// Write the NATS trust bundle (configs, certificates, identities) of a hub and its regions.
#[derive(Debug, clap::Args)]
pub struct NatsConfig {
    /// Directory to write the bundle into; an existing bundle there is completed, its keys
    /// kept.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Topology file (TOML: `[hub]`, `[[regions]]`, `[[workers]]`); default: the bundle's
    /// own `topology.toml`, else the flags below.
    #[arg(long, value_name = "FILE")]
    topology: Option<PathBuf>,
    /// Client port of the hub.
    #[arg(long, default_value_t = 4222)]
    hub_port: u16,
    /// Leaf-node port of the hub.
    #[arg(long, default_value_t = 7422)]
    leaf_port: u16,
    /// Host name clients and leaf nodes use for the hub (also put in its certificate).
    #[arg(long, default_value = "127.0.0.1")]
    hub_host: String,
    /// Address the servers listen on.
    #[arg(long, default_value = "127.0.0.1")]
    listen: String,
    /// A region: `NAME:PORT:POOL[,POOL…][@HOST]` (its leaf node's client port and pools).
    #[arg(long = "region", value_name = "SPEC")]
    regions: Vec<String>,
    /// A node of the hub as a JetStream cluster (give three, for streams replicated R3):
    /// `NAME@HOST`, or `NAME@HOST:PORT:LEAF_PORT:ROUTE_PORT` for nodes sharing a host.
    /// Each gets its own config (`<NAME>.conf`) and certificate; routes between them are
    /// TLS with the bundle's CA and the cluster's password. Other ports default to
    /// `--hub-port`, `--leaf-port` and `--route-port`.
    #[arg(long = "hub-node", value_name = "SPEC")]
    hub_nodes: Vec<String>,
    /// Route port of the hub's nodes (with `--hub-node`).
    #[arg(long, default_value_t = 6222)]
    route_port: u16,
    /// A worker identity: `POOL/NAME` on the hub, or `POOL/NAME@REGION` via a leaf node.
    #[arg(long = "worker", value_name = "SPEC")]
    workers: Vec<String>,
    /// An integrator identity: NAME reads the event feed (SHOAL_EVENTS) and nothing else;
    /// NAME:ROLE (deployer, admin) may also send commands over NATS with that role.
    #[arg(long = "integrator", value_name = "NAME[:ROLE]")]
    integrators: Vec<String>,
    /// More host names for the server certificates (e.g. container names).
    #[arg(long = "host", value_name = "NAME")]
    hosts: Vec<String>,
    /// Where the processes see the bundle (e.g. a container mount); paths in the configs
    /// and env files start with it.
    #[arg(long, value_name = "DIR")]
    mount_dir: Option<PathBuf>,
    /// The hub's JetStream store directory (default: `<bundle>/hub-store`).
    #[arg(long, value_name = "DIR")]
    store_dir: Option<PathBuf>,
    /// No built-in worker identity (the planner runs with --no-builtin-worker).
    #[arg(long)]
    no_builtin_worker: bool,
}

/// Writes the bundle; the summary to print.
///
/// # Errors
/// Bad input (named), or a file cannot be written.
pub fn run(args: NatsConfig) -> anyhow::Result<String> {
    let existing = args.out.join("topology.toml");
    let mut topology = match (&args.topology, existing.is_file()) {
        (Some(file), _) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the topology file {}", file.display()))?;
            Topology::parse(&text, &file.display().to_string())?
        }
        (None, true) => shoal_trust::load_topology(&args.out)?,
        (None, false) => from_flags(&args)?,
    };
    for spec in &args.workers {
        let worker = parse_worker(spec)?;
        topology
            .add_worker(worker)
            .map_err(|e| anyhow::anyhow!("--worker {spec}: {e}"))?;
    }
    for spec in &args.integrators {
        let (name, role) = spec
            .split_once(':')
            .map_or((spec.as_str(), None), |(n, r)| (n, Some(r.to_owned())));
        let integrator = shoal_trust::Integrator {
            name: name.to_owned(),
            role,
        };
        topology
            .add_integrator(integrator)
            .map_err(|e| anyhow::anyhow!("--integrator {spec}: {e}"))?;
    }
    shoal_trust::generate(&args.out, &topology)?;
    Ok(summary(&args.out, &topology))
}

fn from_flags(args: &NatsConfig) -> anyhow::Result<Topology> {
    let mut hub = Hub::local(args.hub_port, args.leaf_port);
    hub.host.clone_from(&args.hub_host);
    hub.listen.clone_from(&args.listen);
    hub.store_dir.clone_from(&args.store_dir);
    if !args.hub_nodes.is_empty() {
        let nodes = args
            .hub_nodes
            .iter()
            .map(|spec| parse_hub_node(spec))
            .collect::<anyhow::Result<Vec<_>>>()?;
        hub.cluster = Some(HubCluster {
            name: "shoal-hub".to_owned(),
            port: args.route_port,
            nodes,
        });
    }
    let mut t = Topology::hub_only(hub);
    t.hosts.clone_from(&args.hosts);
    if !t.hosts.contains(&args.hub_host) {
        t.hosts.push(args.hub_host.clone());
    }
    t.mount_dir.clone_from(&args.mount_dir);
    t.builtin_worker = !args.no_builtin_worker;
    for spec in &args.regions {
        let mut region = parse_region(spec)?;
        region.listen.clone_from(&args.listen);
        if !t.hosts.contains(&region.host) {
            t.hosts.push(region.host.clone());
        }
        t.regions.push(region);
    }
    t.check().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(t)
}

/// `NAME:PORT:POOL[,POOL…][@HOST]`.
fn parse_region(spec: &str) -> anyhow::Result<Region> {
    let bad = |why: &str| {
        anyhow::anyhow!(
            "--region {spec:?}: {why} (expected NAME:PORT:POOL[,POOL…][@HOST], e.g. eu:4223:eu-west,eu-central)"
        )
    };
    let (main, host) = spec
        .split_once('@')
        .map_or((spec, None), |(m, h)| (m, Some(h)));
    let mut parts = main.splitn(3, ':');
    let (Some(name), Some(port), Some(pools)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("missing parts"));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| bad(&format!("port {port:?} is not a number")))?;
    let pools: Vec<&str> = pools.split(',').filter(|p| !p.is_empty()).collect();
    let mut region = Region::local(name, port, &pools);
    if let Some(h) = host {
        region.host = h.to_owned();
    }
    Ok(region)
}

/// `NAME@HOST` or `NAME@HOST:PORT:LEAF_PORT:ROUTE_PORT`.
fn parse_hub_node(spec: &str) -> anyhow::Result<HubNode> {
    let bad = |why: &str| {
        anyhow::anyhow!(
            "--hub-node {spec:?}: {why} (expected NAME@HOST or NAME@HOST:PORT:LEAF_PORT:ROUTE_PORT, e.g. hub-1@nats-hub-1)"
        )
    };
    let (name, rest) = spec.split_once('@').ok_or_else(|| bad("no @HOST"))?;
    let mut parts = rest.split(':');
    let host = parts.next().unwrap_or_default();
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let ports: Vec<u16> = parts
        .map(|p| {
            p.parse()
                .map_err(|_| bad(&format!("port {p:?} is not a number")))
        })
        .collect::<anyhow::Result<_>>()?;
    let (port, leaf_port, route_port) = match ports[..] {
        [] => (None, None, None),
        [a, b, c] => (Some(a), Some(b), Some(c)),
        _ => return Err(bad("give all three ports or none")),
    };
    Ok(HubNode {
        name: name.to_owned(),
        host: host.to_owned(),
        port,
        leaf_port,
        route_port,
        monitor_port: None,
        store_dir: None,
    })
}

/// `POOL/NAME[@REGION]`.
fn parse_worker(spec: &str) -> anyhow::Result<Worker> {
    let (main, region) = spec
        .split_once('@')
        .map_or((spec, None), |(m, r)| (m, Some(r)));
    let Some((pool, name)) = main.split_once('/') else {
        anyhow::bail!(
            "--worker {spec:?}: expected POOL/NAME or POOL/NAME@REGION, e.g. eu-west/eu-west-1@eu"
        );
    };
    Ok(Worker {
        pool: pool.to_owned(),
        name: name.to_owned(),
        region: region.map(str::to_owned),
    })
}

fn summary(out: &std::path::Path, t: &Topology) -> String {
    let servers: Vec<String> = t
        .hub
        .servers()
        .iter()
        .map(|s| format!("{}.conf", s.name))
        .collect();
    let mut s = format!(
        "trust bundle written to {}:\n  {}",
        out.display(),
        servers.join(", ")
    );
    for r in &t.regions {
        s.push_str(&format!(", leaf-{}.conf", r.name));
    }
    s.push_str("\n  identities/planner.env");
    if t.builtin_worker {
        s.push_str(", identities/builtin-worker.env");
    }
    for w in &t.workers {
        s.push_str(&format!(", identities/worker.{}.{}.env", w.pool, w.name));
    }
    for i in &t.integrators {
        s.push_str(&format!(", identities/integrator.{}.env", i.name));
    }
    if t.hub.cluster.is_some() {
        s.push_str(&format!(
            "\nthe hub is a JetStream cluster of {} nodes: start each with `nats-server -c <node>.conf`\n\
             (and each leaf-<region>.conf); the identities' env files name every node\n\
             (SHOAL_NATS_URL={}), and the planner keeps its streams on 3 of them;",
            servers.len(),
            t.hub.client_urls()
        ));
    } else {
        s.push_str(
            "\nstart the servers with `nats-server -c hub.conf` (and each leaf-<region>.conf);",
        );
    }
    s.push_str(
        "\nafter adding a worker, reload them: `nats-server --signal reload=<pid>` (or SIGHUP).\n\
         Keep ca-key.pem, *.nk, *-key.pem, *.password and the .conf files secret.",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_specs_are_named_with_the_expected_form() {
        let e = parse_region("eu:x:eu-west").expect_err("bad port");
        assert!(e.to_string().contains("port \"x\""), "{e}");
        let e = parse_worker("eu-west-1").expect_err("no pool");
        assert!(e.to_string().contains("POOL/NAME"), "{e}");
        let r = parse_region("eu:4223:eu-west,eu-central@leaf-eu").expect("valid");
        assert_eq!(r.pools, ["eu-west", "eu-central"]);
        assert_eq!(r.host, "leaf-eu");
        let n = parse_hub_node("hub-1@nats-hub-1").expect("valid");
        assert_eq!(
            (n.name.as_str(), n.host.as_str(), n.port),
            ("hub-1", "nats-hub-1", None)
        );
        let n = parse_hub_node("hub-2@127.0.0.1:4223:7423:6223").expect("valid");
        assert_eq!(
            (n.port, n.leaf_port, n.route_port),
            (Some(4223), Some(7423), Some(6223))
        );
        let e = parse_hub_node("hub-3@h:1").expect_err("one port");
        assert!(e.to_string().contains("all three ports"), "{e}");
    }
}
