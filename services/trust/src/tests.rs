//! The bundle on disk: what a run writes, and that a second run keeps every secret.

use super::*;

fn topology() -> Topology {
    let mut t = Topology::hub_only(Hub::local(4222, 7422));
    t.regions.push(Region::local("eu", 4223, &["eu-west"]));
    t.workers.push(Worker {
        pool: "eu-west".into(),
        name: "eu-west-1".into(),
        region: Some("eu".into()),
    });
    t
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn a_second_run_keeps_every_key_and_adding_a_worker_adds_only_its_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    generate(dir.path(), &topology()).expect("generated");
    let kept = [
        "ca-key.pem",
        "ca.pem",
        "hub-key.pem",
        "leaf-eu.password",
        "identities/planner.nk",
        "identities/builtin-worker.nk",
        "identities/worker.eu-west.eu-west-1.nk",
        "identities/worker.eu-west.eu-west-1-key.pem",
    ];
    let before: Vec<String> = kept.iter().map(|f| read(dir.path(), f)).collect();
    let added = add_worker(
        dir.path(),
        Worker {
            pool: "default".into(),
            name: "w2".into(),
            region: None,
        },
    )
    .expect("added");
    assert!(added);
    let after: Vec<String> = kept.iter().map(|f| read(dir.path(), f)).collect();
    assert_eq!(before, after);
    let hub = read(dir.path(), "hub.conf");
    let w2 = nkeys::KeyPair::from_seed(read(dir.path(), "identities/worker.default.w2.nk").trim())
        .expect("seed");
    assert!(hub.contains(&w2.public_key()), "{hub}");
    assert!(hub.contains("\"shoal.results.default.w2\""));
    let again = add_worker(
        dir.path(),
        Worker {
            pool: "default".into(),
            name: "w2".into(),
            region: None,
        },
    )
    .expect("no-op");
    assert!(!again);
}

#[test]
fn secrets_are_readable_by_their_owner_only_and_env_files_name_the_identity_files() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    generate(dir.path(), &topology()).expect("generated");
    for f in [
        "ca-key.pem",
        "hub.conf",
        "leaf-eu.conf",
        "identities/planner.nk",
    ] {
        let mode = std::fs::metadata(dir.path().join(f))
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f} is readable by others: {mode:o}");
    }
    let env = read(dir.path(), "identities/worker.eu-west.eu-west-1.env");
    assert!(
        env.contains("SHOAL_NATS_URL=nats://127.0.0.1:4223"),
        "{env}"
    );
    assert!(env.contains("SHOAL_JS_DOMAIN=hub"), "{env}");
    assert!(env.contains("worker.eu-west.eu-west-1.nk"), "{env}");
    let seed = read(dir.path(), "identities/worker.eu-west.eu-west-1.nk");
    assert!(!env.contains(seed.trim()), "a seed in an env file: {env}");
    let leaf = read(dir.path(), "leaf-eu.conf");
    assert!(
        leaf.contains("\"$JS.hub.API.CONSUMER.MSG.NEXT.SHOAL_TASKS.eu-west\""),
        "{leaf}"
    );
    let planner = read(dir.path(), "identities/planner.env");
    assert!(planner.contains("SHOAL_BUILTIN_WORKER_NKEY="), "{planner}");
}

#[test]
fn the_hub_holds_a_regions_password_only_as_a_bcrypt_hash_and_the_leaf_the_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    generate(dir.path(), &topology()).expect("generated");
    let password = read(dir.path(), "leaf-eu.password");
    let password = password.trim();
    let hub = read(dir.path(), "hub.conf");
    assert!(!hub.contains(password), "{hub}");
    let hash = hub
        .lines()
        .filter_map(|l| l.trim().strip_prefix("password: \""))
        .map(|l| l.trim_end_matches('"'))
        .next()
        .expect("a leaf password");
    assert!(hash.starts_with("$2a$11$"), "{hash}");
    assert!(bcrypt::verify(password, hash).expect("a bcrypt hash"));
    assert!(read(dir.path(), "leaf-eu.conf").contains(password));
}

fn clustered() -> Topology {
    let mut t = topology();
    let node = |name: &str, host: &str| HubNode {
        name: name.into(),
        host: host.into(),
        port: None,
        leaf_port: None,
        route_port: None,
        monitor_port: None,
        store_dir: None,
    };
    t.hub.cluster = Some(HubCluster {
        name: "shoal-hub".into(),
        port: 6222,
        nodes: vec![
            node("hub-1", "nats-hub-1"),
            node("hub-2", "nats-hub-2"),
            node("hub-3", "nats-hub-3"),
        ],
    });
    t.pid_dir = Some("/tmp".into());
    t
}

#[test]
fn a_clustered_hub_gets_a_config_per_node_with_tls_routes_to_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    generate(dir.path(), &clustered()).expect("generated");
    let password = read(dir.path(), "cluster.password");
    let password = password.trim();
    assert_eq!(password.len(), 32);
    for (n, others) in [
        ("hub-1", ["nats-hub-2", "nats-hub-3"]),
        ("hub-2", ["nats-hub-1", "nats-hub-3"]),
        ("hub-3", ["nats-hub-1", "nats-hub-2"]),
    ] {
        let conf = read(dir.path(), &format!("{n}.conf"));
        assert!(conf.contains(&format!("server_name: \"{n}\"")), "{conf}");
        assert!(conf.contains("pid_file: \"/tmp/"), "{conf}");
        let cluster = conf
            .split("\ncluster {")
            .nth(1)
            .and_then(|c| c.split("\nleafnodes {").next())
            .unwrap_or_else(|| panic!("no cluster block in {n}.conf:\n{conf}"));
        assert!(cluster.contains("name: \"shoal-hub\""), "{cluster}");
        assert!(cluster.contains("verify: true"), "{cluster}");
        assert!(cluster.contains(&format!("{n}-cert.pem")), "{cluster}");
        assert!(
            cluster.contains(&format!("password: \"{password}\"")),
            "{cluster}"
        );
        for other in others {
            let route = format!("nats-route://route:{password}@{other}:6222");
            assert!(
                cluster.contains(&route),
                "{n} has no route to {other}: {cluster}"
            );
        }
        assert!(
            !cluster.contains(&format!("@nats-hub-{}:", &n[4..])),
            "{cluster}"
        );
        assert!(dir.path().join(format!("{n}-cert.pem")).is_file());
    }
    assert!(!dir.path().join("hub.conf").exists());
    let leaf = read(dir.path(), "leaf-eu.conf");
    for host in ["nats-hub-1", "nats-hub-2", "nats-hub-3"] {
        assert!(leaf.contains(&format!("@{host}:7422\"")), "{leaf}");
    }
    let planner = read(dir.path(), "identities/planner.env");
    assert!(
        planner.contains(
            "SHOAL_NATS_URL=nats://nats-hub-1:4222,nats://nats-hub-2:4222,nats://nats-hub-3:4222"
        ),
        "{planner}"
    );
    // A second run keeps the cluster's password.
    generate(dir.path(), &clustered()).expect("again");
    assert_eq!(read(dir.path(), "cluster.password").trim(), password);
}

#[test]
fn a_cluster_with_one_node_or_a_node_twice_is_refused_naming_it() {
    let mut t = clustered();
    if let Some(c) = t.hub.cluster.as_mut() {
        c.nodes[2].name = "hub-1".into();
    }
    let e = t.check().expect_err("refused");
    assert!(e.contains("\"hub-1\" is listed twice"), "{e}");
    if let Some(c) = t.hub.cluster.as_mut() {
        c.nodes.truncate(1);
    }
    let e = t.check().expect_err("refused");
    assert!(e.contains("at least two"), "{e}");
    let mut t = clustered();
    if let Some(c) = t.hub.cluster.as_mut() {
        for n in &mut c.nodes {
            n.host = "127.0.0.1".into();
        }
    }
    let e = t.check().expect_err("same ports on one host");
    assert!(
        e.contains("hub node \"hub-2\"") && e.contains("127.0.0.1"),
        "{e}"
    );
}
