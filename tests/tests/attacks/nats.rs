//! Attacks on the broker, against real processes: a hub and two region leaf nodes (`eu`
//! serving pool `eu-west`, `us` serving `us-east`) running from a trust bundle made by
//! shoal-trust, with TLS and an nkey identity per process, and a planner. Each test plays an
//! attacker — no credentials, a leaf node without credentials, or pool `eu-west`'s worker
//! `eu-west-1` — and checks that the server refused and nothing happened.

use async_nats::jetstream;
use futures::StreamExt as _;
use shoal_cli::local::trust::{bundle_dir, client_options};
use shoal_e2e::{Cluster, Nats, free_ports, tempdir};
use shoal_trust::{Hub, Identity, IdentityFiles, Region, Server, Topology, Worker};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a refused request is given before it counts as not answered.
const REFUSED_WITHIN: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(30);

struct Broker {
    c: Cluster,
    eu: Nats,
    _us: Nats,
}

fn worker(pool: &str, name: &str, region: &str) -> Worker {
    Worker {
        pool: pool.into(),
        name: name.into(),
        region: Some(region.into()),
    }
}

/// The bundle, the hub, both leaf nodes, a planner, and pools `eu-west` and `us-east`
/// (their consumers made by the planner).
async fn broker() -> anyhow::Result<Broker> {
    let dir = tempdir()?;
    let [hub, leafs, eu, us] = free_ports()?;
    let mut t = Topology::hub_only(Hub::local(hub, leafs));
    t.hub.store_dir = Some(dir.path().join("hub-store"));
    t.regions.push(Region::local("eu", eu, &["eu-west"]));
    t.regions.push(Region::local("us", us, &["us-east"]));
    t.workers.push(worker("eu-west", "eu-west-1", "eu"));
    t.workers.push(worker("eu-west", "eu-west-2", "eu"));
    t.workers.push(worker("us-east", "us-east-1", "us"));
    shoal_trust::generate(&bundle_dir(dir.path()), &t)?;
    let hub = Nats::start_bundle_server(dir.path(), &Server::Hub).await?;
    let eu = Nats::start_bundle_server(dir.path(), &Server::Leaf("eu".into())).await?;
    let us = Nats::start_bundle_server(dir.path(), &Server::Leaf("us".into())).await?;
    let c = Cluster::start_on(dir, hub, &["--no-builtin-worker"]).await?;
    c.pool("eu-west", "eu").await?;
    c.pool("us-east", "us").await?;
    let b = Broker { c, eu, _us: us };
    let js = jetstream::new(b.c.nats.connect().await?);
    b.c.wait_for("both pools' consumers", WAIT, || async {
        let stream = js.get_stream("SHOAL_TASKS").await?;
        let eu = stream.consumer_info("eu-west").await.is_ok();
        let us = stream.consumer_info("us-east").await.is_ok();
        Ok((eu && us).then_some(()))
    })
    .await?;
    Ok(b)
}

impl Broker {
    fn files(&self, w: Worker) -> IdentityFiles {
        IdentityFiles::of(&bundle_dir(self.c.dir.path()), &Identity::Worker(w))
    }

    /// `eu-west-1` connected to its leaf node as it would be, and the errors the server
    /// sends it.
    async fn eu_west_1(
        &self,
    ) -> anyhow::Result<(async_nats::Client, mpsc::UnboundedReceiver<String>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let client = client_options(&self.files(worker("eu-west", "eu-west-1", "eu")))?
            .custom_inbox_prefix("_INBOX_shoal.eu-west.eu-west-1")
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = event {
                        let _ = tx.send(e.to_string());
                    }
                }
            })
            .connect(self.eu.url())
            .await?;
        Ok((client, rx))
    }

    /// The admin's view of a pool's consumer: messages waiting and delivered.
    async fn pending(&self, pool: &str) -> anyhow::Result<(u64, usize)> {
        let js = jetstream::new(self.c.nats.connect().await?);
        let stream = js.get_stream("SHOAL_TASKS").await?;
        let info = stream.consumer_info(pool).await?;
        Ok((info.num_pending, info.num_ack_pending))
    }

    /// A task message in `pool`'s queue, published by the admin.
    async fn queue_task(&self, pool: &str) -> anyhow::Result<()> {
        let js = jetstream::new(self.c.nats.connect().await?);
        js.publish(format!("shoal.tasks.{pool}"), "not a real task".into())
            .await?
            .await?;
        Ok(())
    }
}

/// Waits for the server's permission violation naming `subject`.
async fn refused(errors: &mut mpsc::UnboundedReceiver<String>, subject: &str) -> String {
    let deadline = tokio::time::Instant::now() + REFUSED_WITHIN;
    loop {
        match tokio::time::timeout_at(deadline, errors.recv()).await {
            Ok(Some(e)) if e.contains("Permissions Violation") && e.contains(subject) => return e,
            Ok(Some(_)) => {}
            _ => panic!("no permission violation for {subject:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_credentials_cannot_connect_and_a_plain_text_client_is_refused()
-> anyhow::Result<()> {
    let b = broker().await?;
    let url = b.c.nats.url();
    // Plain text, no credentials: the client is not even let past the TLS requirement.
    let plain = tokio::time::timeout(WAIT, async_nats::connect(&url)).await?;
    assert!(plain.is_err(), "a plain-text client connected");
    // Plain text spoken by hand: no PONG ever comes back.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", b.c.nats.port)).await?;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut info = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, raw.read(&mut info)).await??;
    assert!(String::from_utf8_lossy(&info[..n]).contains("\"tls_required\":true"));
    let _ = raw
        .write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
        .await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(REFUSED_WITHIN, raw.read_to_end(&mut answer)).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("PONG"),
        "a plain-text client was answered: {}",
        String::from_utf8_lossy(&answer)
    );
    // TLS with the CA and a client certificate, but no nkey: refused.
    let files = b.files(worker("eu-west", "eu-west-1", "eu"));
    let no_nkey = async_nats::ConnectOptions::new()
        .add_root_certificates(files.ca.clone())
        .add_client_certificate(files.cert.clone(), files.key.clone())
        .require_tls(true)
        .connect(&url);
    let no_nkey = tokio::time::timeout(WAIT, no_nkey).await?;
    assert!(no_nkey.is_err(), "a client without an nkey connected");
    // The CA but no client certificate: refused, and said so in words.
    let auth = shoal_runtime::nats_auth::NatsAuth {
        nkey: Some(files.nkey.clone()),
        ca: Some(files.ca.clone()),
        cert: None,
        key: None,
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut heard = Vec::new();
    let connecting =
        shoal_runtime::nats::connect_as(&url, "attacker", &auth, None, &shutdown, |p| {
            heard.push(p.to_owned());
            shutdown.cancel();
        });
    let result = tokio::time::timeout(WAIT, connecting).await?;
    assert!(result.is_err(), "a client without a certificate connected");
    assert!(
        heard
            .iter()
            .any(|p| p.contains("the server requires a client certificate")),
        "{heard:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_a_worker_cannot_pull_or_ack_pool_b_consumer() -> anyhow::Result<()> {
    let b = broker().await?;
    b.queue_task("us-east").await?;
    let (client, mut errors) = b.eu_west_1().await?;
    let next = "$JS.hub.API.CONSUMER.MSG.NEXT.SHOAL_TASKS.us-east";
    let pull = client.request(next, "{\"batch\":1,\"expires\":1000000000}".into());
    let pulled = tokio::time::timeout(REFUSED_WITHIN, pull).await;
    assert!(!matches!(pulled, Ok(Ok(_))), "pool B's task was pulled");
    refused(&mut errors, next).await;
    let ack = "$JS.ACK.SHOAL_TASKS.us-east.1.1.1.0.0";
    client.publish(ack, "+TERM".into()).await?;
    client.flush().await?;
    refused(&mut errors, ack).await;
    // The task waits in pool B's queue, never delivered.
    assert_eq!(b.pending("us-east").await?, (1, 0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_a_worker_cannot_read_the_task_subjects_or_pool_b_cancellations() -> anyhow::Result<()>
{
    let b = broker().await?;
    let (client, mut errors) = b.eu_west_1().await?;
    let mut tasks = client.subscribe("shoal.tasks.>").await?;
    refused(&mut errors, "shoal.tasks.>").await;
    let mut cancels = client.subscribe("shoal.cancel.us-east.*").await?;
    refused(&mut errors, "shoal.cancel.us-east.*").await;
    let mut inboxes = client.subscribe("_INBOX.>").await?;
    refused(&mut errors, "_INBOX.>").await;
    b.queue_task("eu-west").await?;
    let admin = b.c.nats.connect().await?;
    admin
        .publish(
            "shoal.cancel.us-east.00000000-0000-0000-0000-000000000000",
            "".into(),
        )
        .await?;
    admin.flush().await?;
    let got = tokio::time::timeout(REFUSED_WITHIN, async {
        tokio::select! {
            m = tasks.next() => m,
            m = cancels.next() => m,
            m = inboxes.next() => m,
        }
    })
    .await;
    assert!(!matches!(got, Ok(Some(_))), "the worker read {got:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_a_worker_cannot_publish_pool_b_or_another_worker_results_or_heartbeats()
-> anyhow::Result<()> {
    let b = broker().await?;
    let admin = b.c.nats.connect().await?;
    let mut results = admin.subscribe("shoal.results.>").await?;
    let mut beats = admin.subscribe("shoal.heartbeat.>").await?;
    admin.flush().await?;
    let (client, mut errors) = b.eu_west_1().await?;
    for subject in [
        "shoal.results.us-east.us-east-1",
        "shoal.heartbeat.us-east.us-east-1",
        "shoal.results.eu-west.eu-west-2",
        "shoal.heartbeat.eu-west.eu-west-2",
    ] {
        client.publish(subject, "forged".into()).await?;
        client.flush().await?;
        refused(&mut errors, subject).await;
    }
    // Its own subject goes through, so the silence above is the refusal.
    client
        .publish("shoal.heartbeat.eu-west.eu-west-1", "own".into())
        .await?;
    client.flush().await?;
    let first = tokio::time::timeout(WAIT, beats.next()).await?;
    assert_eq!(
        first.map(|m| m.subject.to_string()).as_deref(),
        Some("shoal.heartbeat.eu-west.eu-west-1")
    );
    let forged = tokio::time::timeout(Duration::from_millis(500), results.next()).await;
    assert!(forged.is_err(), "a forged result arrived: {forged:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cannot_create_delete_or_purge_streams_or_consumers() -> anyhow::Result<()> {
    let b = broker().await?;
    b.queue_task("eu-west").await?;
    let (client, mut errors) = b.eu_west_1().await?;
    for subject in [
        "$JS.hub.API.STREAM.CREATE.EVIL",
        "$JS.hub.API.STREAM.DELETE.SHOAL_TASKS",
        "$JS.hub.API.STREAM.PURGE.SHOAL_TASKS",
        "$JS.hub.API.STREAM.NAMES",
        "$JS.hub.API.STREAM.MSG.GET.SHOAL_TASKS",
        "$JS.hub.API.CONSUMER.DELETE.SHOAL_TASKS.us-east",
        "$JS.hub.API.CONSUMER.CREATE.SHOAL_TASKS",
        "$JS.hub.API.CONSUMER.DURABLE.CREATE.SHOAL_TASKS.evil",
    ] {
        let answer =
            tokio::time::timeout(REFUSED_WITHIN, client.request(subject, "{}".into())).await;
        assert!(!matches!(answer, Ok(Ok(_))), "{subject} was answered");
        refused(&mut errors, subject).await;
    }
    // Everything is still there.
    assert_eq!(b.pending("eu-west").await?, (1, 0));
    b.pending("us-east").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_may_read_the_package_feed_and_nothing_else_of_it() -> anyhow::Result<()> {
    let b = broker().await?;
    // The planner made the feed's bucket at start; the admin puts an object in it.
    let admin = jetstream::new(b.c.nats.connect().await?);
    let store = admin.get_object_store("SHOAL_PACKAGES").await?;
    store.put("genuine", &mut &b"package bytes"[..]).await?;
    let (client, mut errors) = b.eu_west_1().await?;
    let js = jetstream::with_domain(client.clone(), "hub");
    let stream = js.get_stream_no_info("OBJ_SHOAL_PACKAGES").await?;
    let meta = stream
        .direct_get_last_for_subject("$O.SHOAL_PACKAGES.M.Z2VudWluZQ==")
        .await?;
    assert!(
        String::from_utf8_lossy(&meta.payload).contains("genuine"),
        "a worker reads the feed"
    );
    for subject in [
        "$O.SHOAL_PACKAGES.C.forged",
        "$O.SHOAL_PACKAGES.M.Z2VudWluZQ==",
        "$JS.hub.API.STREAM.PURGE.OBJ_SHOAL_PACKAGES",
        "$JS.hub.API.STREAM.DELETE.OBJ_SHOAL_PACKAGES",
        "$JS.hub.API.STREAM.MSG.DELETE.OBJ_SHOAL_PACKAGES",
        "$JS.hub.API.CONSUMER.CREATE.OBJ_SHOAL_PACKAGES",
        "$JS.hub.API.DIRECT.GET.SHOAL_TASKS",
        "$JS.hub.API.DIRECT.GET.SHOAL_RESULTS.shoal.results.us-east.us-east-1",
    ] {
        let answer =
            tokio::time::timeout(REFUSED_WITHIN, client.request(subject, "{}".into())).await;
        assert!(!matches!(answer, Ok(Ok(_))), "{subject} was answered");
        refused(&mut errors, subject).await;
    }
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut store.get("genuine").await?, &mut bytes).await?;
    assert_eq!(bytes, b"package bytes", "the object is as the admin put it");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_claiming_another_pool_is_refused_and_logs_the_subject_and_its_identity()
-> anyhow::Result<()> {
    let mut b = broker().await?;
    // eu-west-1's identity, started as a worker of us-east (through the us leaf node, which
    // does not know this identity, then through its own, which binds it to eu-west).
    let files = b.files(worker("eu-west", "eu-west-1", "eu"));
    let eu_url = b.eu.url();
    let args: Vec<String> = vec![
        "--nats-nkey".into(),
        files.nkey.display().to_string(),
        "--nats-ca".into(),
        files.ca.display().to_string(),
        "--nats-cert".into(),
        files.cert.display().to_string(),
        "--nats-key".into(),
        files.key.display().to_string(),
        "--js-domain".into(),
        "hub".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    b.c.worker_via(&eu_url, "eu-west-1", "us-east", "eu", &args)?;
    let p = b.c.worker_proc("eu-west-1");
    let identity = shoal_runtime::nats_auth::NatsAuth {
        nkey: Some(files.nkey.clone()),
        ..Default::default()
    }
    .seed()?
    .map(|(_, public)| public)
    .unwrap_or_default();
    // Its first report (Joined) is refused, and so is every retry: it says so each time.
    p.wait_for_output(
        "permission to publish \"shoal.results.us-east.eu-west-1\"",
        WAIT,
    )
    .await?;
    let log = p.output();
    assert!(
        log.contains(&identity),
        "the log does not name the identity:\n{log}"
    );
    assert!(
        log.contains("permission to subscribe \"_INBOX_shoal.us-east.eu-west-1."),
        "{log}"
    );
    // Nothing of it reached the planner.
    let workers = b.c.api.get("/api/workers").await?;
    assert!(
        !workers.to_string().contains("eu-west-1"),
        "the planner heard of it: {workers}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_node_without_credentials_gets_nothing() -> anyhow::Result<()> {
    let b = broker().await?;
    rogue_leaf_gets_nothing(&b, "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_node_with_the_region_password_hash_from_the_hubs_config_gets_nothing()
-> anyhow::Result<()> {
    let b = broker().await?;
    // An attacker with the hub's disk reads hub.conf: the region's password is only there as
    // its bcrypt hash, and the hash does not pass for the password.
    let hub = std::fs::read_to_string(bundle_dir(b.c.dir.path()).join("hub.conf"))?;
    let hash = hub
        .lines()
        .find_map(|l| l.trim().strip_prefix("password: \""))
        .map(|l| l.trim_end_matches('"').to_owned())
        .ok_or_else(|| anyhow::anyhow!("no region password in hub.conf:\n{hub}"))?;
    anyhow::ensure!(hash.starts_with("$2a$"), "not a bcrypt hash: {hash}");
    let leaf_user = hub
        .lines()
        .find_map(|l| l.trim().strip_prefix("user: \"leaf-"))
        .map(|l| format!("leaf-{}", l.trim_end_matches('"')))
        .ok_or_else(|| anyhow::anyhow!("no region user in hub.conf"))?;
    rogue_leaf_gets_nothing(&b, &format!("{leaf_user}:{}@", hash.replace('/', "%2F"))).await
}

/// A rogue leaf node with a certificate of the CA (stolen from a region), logging in with
/// `userinfo` (`user:password@`, or nothing): it sees nothing, pulls nothing, and what it
/// publishes arrives nowhere.
async fn rogue_leaf_gets_nothing(b: &Broker, userinfo: &str) -> anyhow::Result<()> {
    let dir = b.c.dir.path();
    let bundle = bundle_dir(dir);
    let t = shoal_trust::load_topology(&bundle)?;
    let config = format!(
        "leafnodes {{ remotes: [ {{ url: \"nats-leaf://{userinfo}127.0.0.1:{}\", tls: {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\" }} }} ] }}\n",
        t.hub.leaf_port,
        bundle.join("leaf-eu-cert.pem").display(),
        bundle.join("leaf-eu-key.pem").display(),
        bundle.join("ca.pem").display(),
    );
    let mut rogue = Nats::start_with_config(dir, "rogue", &config).await?;
    let log = dir.join("logs").join("rogue.log");
    let deadline = tokio::time::Instant::now() + WAIT;
    // Let in (to nothing: the hub's empty LEAFJAIL) or turned away: either is an answer.
    while !std::fs::read_to_string(&log).is_ok_and(|l| {
        l.contains("Leafnode connection created") || l.contains("Authorization Violation")
    }) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rogue leaf node never connected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let attacker = async_nats::connect(rogue.url()).await?;
    let mut everything = attacker.subscribe(">").await?;
    attacker.flush().await?;
    b.queue_task("eu-west").await?;
    let admin = b.c.nats.connect().await?;
    let mut results = admin.subscribe("shoal.results.>").await?;
    admin.flush().await?;
    admin
        .publish("shoal.heartbeat.eu-west.eu-west-1", "beat".into())
        .await?;
    admin.flush().await?;
    let seen = tokio::time::timeout(REFUSED_WITHIN, everything.next()).await;
    assert!(seen.is_err(), "the rogue leaf node saw {seen:?}");
    let pull = attacker.request(
        "$JS.hub.API.CONSUMER.MSG.NEXT.SHOAL_TASKS.eu-west",
        "{\"batch\":1}".into(),
    );
    let pulled = tokio::time::timeout(REFUSED_WITHIN, pull).await;
    assert!(
        !matches!(pulled, Ok(Ok(_))),
        "the rogue leaf node pulled a task"
    );
    attacker
        .publish("shoal.results.eu-west.eu-west-1", "forged".into())
        .await?;
    attacker.flush().await?;
    let forged = tokio::time::timeout(Duration::from_millis(500), results.next()).await;
    assert!(
        forged.is_err(),
        "a forged result from the rogue leaf arrived"
    );
    assert_eq!(b.pending("eu-west").await?, (1, 0));
    rogue.stop().await?;
    Ok(())
}
