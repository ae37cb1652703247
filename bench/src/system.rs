//! A shoal installation made of real processes for one scenario: nats-server on a free port
//! with a temp store dir (or a 3-node JetStream cluster of them, every stream R3), the
//! `shoal-planner` binary (no built-in worker), and `shoal-worker`
//! processes spread over the pools; plus an observer that timestamps, on the benchmark's own
//! clock, every task message and every worker report the broker carries, and the reading of
//! the planner's event log after it stopped.

use crate::stats::us_to_ms;
use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use serde::Serialize;
use serde_json::{Value, json};
use shoal_cli::client::ApiClient;
use shoal_cli::local::{self, Nats, NatsCluster, Proc};
use shoal_planner::log::{EventLog, decode_event};
use shoal_shared::events::Event;
use shoal_shared::messages::{KIND_HEADER, TaskMessage, WorkerBody, decode_results};
use shoal_shared::{DeploymentState, Outcome, TaskId, Timestamp, codec};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a scenario's installation is made.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub pools: usize,
    pub workers: usize,
    pub slots: u32,
    /// The planner signs and the workers verify (the default); off, both run with their
    /// insecure switches, to measure what signing costs.
    pub signing: bool,
    /// The planner publishes the event feed (the default); off, `--no-event-feed`, to
    /// measure what it costs.
    pub feed: bool,
}

/// The broker of an installation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Broker {
    /// One nats-server: the planner keeps each stream once (R1).
    Single,
    /// A JetStream cluster of this many nodes on this machine: the planner keeps each
    /// stream on three (R3); workers are spread over the nodes.
    Cluster(usize),
}

/// The broker's processes: one server, or a cluster's nodes.
struct Servers {
    nodes: Vec<Nats>,
}

impl Servers {
    async fn start(dir: &Path, broker: Broker) -> anyhow::Result<Servers> {
        let nodes = match broker {
            Broker::Single => vec![Nats::start(dir).await?],
            Broker::Cluster(n) => NatsCluster::start(dir, n).await?.nodes,
        };
        Ok(Servers { nodes })
    }

    /// What the planner is given: every node of a cluster.
    fn planner_url(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(Nats::url).collect();
        urls.join(",")
    }

    /// The server the `i`th client connects to (a cluster's nodes in turn).
    fn url(&self, i: usize) -> String {
        self.nodes
            .get(i % self.nodes.len().max(1))
            .map(Nats::url)
            .unwrap_or_default()
    }

    fn pids(&self) -> Vec<Option<i32>> {
        self.nodes.iter().map(Nats::pid).collect()
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        for n in &mut self.nodes {
            n.stop().await?;
        }
        Ok(())
    }
}

/// The running installation.
pub struct Shoal {
    dir: tempfile::TempDir,
    nats: Servers,
    planner: Option<Proc>,
    workers: Vec<Proc>,
    pub api: ApiClient,
    pub layout: Layout,
}

impl Shoal {
    /// Starts nats-server, the planner, registers `bench-0…` pools and starts the workers
    /// (worker `i` serves pool `i mod pools`), and waits until every worker is online.
    ///
    /// # Errors
    /// A part did not come up.
    pub async fn start(layout: Layout) -> anyhow::Result<Shoal> {
        Shoal::start_on(Broker::Single, layout).await
    }

    /// Like [`Shoal::start`] on the given broker.
    ///
    /// # Errors
    /// A part did not come up.
    pub async fn start_on(broker: Broker, layout: Layout) -> anyhow::Result<Shoal> {
        let dir = tempfile::Builder::new().prefix("shoal-bench-").tempdir()?;
        Shoal::start_in_on(dir, broker, layout).await
    }

    /// Like [`Shoal::start`] in a given directory (whose `planner-data` may hold a log).
    ///
    /// # Errors
    /// A part did not come up.
    pub async fn start_in(dir: tempfile::TempDir, layout: Layout) -> anyhow::Result<Shoal> {
        Shoal::start_in_on(dir, Broker::Single, layout).await
    }

    async fn start_in_on(
        dir: tempfile::TempDir,
        broker: Broker,
        layout: Layout,
    ) -> anyhow::Result<Shoal> {
        let nats = Servers::start(dir.path(), broker).await?;
        let http_port = local::free_port()?;
        let mut planner_args = vec!["--no-builtin-worker"];
        if !layout.signing {
            planner_args.push("--insecure-no-signing");
        }
        if !layout.feed {
            planner_args.push("--no-event-feed");
        }
        let planner = local::start_planner(
            &dir.path().join("logs"),
            &nats.planner_url(),
            &dir.path().join("planner-data"),
            http_port,
            &planner_args,
        )
        .await?;
        let mut shoal = Shoal {
            api: local::admin_client(http_port, &dir.path().join("planner-data")),
            dir,
            nats,
            planner: Some(planner),
            workers: Vec::new(),
            layout,
        };
        for p in 0..layout.pools {
            shoal
                .api
                .post("/api/pools", &json!({"name": pool(p), "region": "bench"}))
                .await
                .with_context(|| format!("cannot register pool {}", pool(p)))?;
        }
        let slots = layout.slots.to_string();
        let mut worker_args = vec!["--slots", slots.as_str()];
        if !layout.signing {
            worker_args.push("--insecure-accept-unsigned");
        }
        for w in 0..layout.workers {
            let name = format!("w{w}");
            let work = shoal.dir.path().join("work").join(&name);
            shoal.workers.push(local::start_worker(
                &shoal.dir.path().join("logs"),
                &shoal.nats.url(w),
                &name,
                &pool(w % layout.pools.max(1)),
                Some("bench"),
                Some(&work),
                &worker_args,
            )?);
        }
        shoal.wait_online().await?;
        if matches!(broker, Broker::Cluster(_)) {
            shoal.wait_pulling().await?;
        }
        Ok(shoal)
    }

    /// Waits until every worker's pull request is waiting at its pool's consumer. On a
    /// cluster a worker's first pull can reach the consumer before it has a leader; it is
    /// then never answered and the client gives it up after about 5 s: measured from then,
    /// the first tasks would wait that long (checked: the first deployment after a pool is
    /// made takes 6 s, the next 0.2 s).
    async fn wait_pulling(&self) -> anyhow::Result<()> {
        let client = shoal_cli::local::trust::admin_client(&self.nats_url()).await?;
        let js = async_nats::jetstream::new(client);
        let stream = js
            .get_stream("SHOAL_TASKS")
            .await
            .map_err(|e| anyhow::anyhow!("no task stream: {e}"))?;
        let pools = self.layout.pools.max(1);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        for p in 0..pools {
            let workers = (0..self.layout.workers).filter(|w| w % pools == p).count();
            let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
                .get_consumer(&pool(p))
                .await
                .map_err(|e| anyhow::anyhow!("no consumer of pool {}: {e}", pool(p)))?;
            loop {
                let waiting = consumer.info().await.map_or(0, |i| i.num_waiting);
                if waiting >= workers {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    bail!(
                        "pool {}: {waiting} pull requests wait at its consumer, not {workers}",
                        pool(p)
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// A URL of the broker (of a cluster, its first node, which carries every subject).
    pub fn nats_url(&self) -> String {
        self.nats.url(0)
    }

    /// Where the planner keeps its log.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("planner-data")
    }

    /// The planner's resident memory now, in MiB.
    pub fn planner_rss_mib(&self) -> Option<f64> {
        self.planner
            .as_ref()
            .and_then(Proc::pid)
            .and_then(crate::machine::rss_mib)
    }

    /// The CPU time the broker, the planner and the workers have used so far, in seconds.
    pub fn cpu_seconds(&self) -> CpuByPart {
        let of = |pid: Option<i32>| pid.and_then(crate::machine::cpu_seconds).unwrap_or(0.0);
        CpuByPart {
            broker: self.nats.pids().into_iter().map(of).sum(),
            planner: of(self.planner.as_ref().and_then(Proc::pid)),
            workers: self.workers.iter().map(|w| of(w.pid())).sum(),
        }
    }

    async fn wait_online(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let online = self
                .api
                .get("/api/workers")
                .await
                .ok()
                .and_then(|v| v.as_array().cloned())
                .map_or(0, |ws| {
                    ws.iter().filter(|w| w["status"] == "online").count()
                });
            if online >= self.layout.workers {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                let logs: Vec<String> = self
                    .workers
                    .iter()
                    .take(3)
                    .map(|p| format!("----- {} -----\n{}", p.name, p.output()))
                    .collect();
                bail!(
                    "only {online} of {} workers online after 60 s\n{}",
                    self.layout.workers,
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Registers `count` targets in environment `bench` with role `bench`, target `j` in pool
    /// `j mod pools`, a few requests at a time.
    ///
    /// # Errors
    /// The API refused one.
    pub async fn targets(&self, count: usize) -> anyhow::Result<()> {
        let pools = self.layout.pools.max(1);
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..count)
            .map(|j| {
                let api = self.api.clone();
                async move {
                    api.post(
                        "/api/targets",
                        &json!({"name": format!("t{j}"), "kind": "cloud-region",
                                "environment": "bench", "roles": ["bench"],
                                "default_pool": pool(j % pools)}),
                    )
                    .await
                    .with_context(|| format!("cannot register target t{j}"))?;
                    Ok(())
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Submits a deployment and returns its id.
    ///
    /// # Errors
    /// The API refused it.
    pub async fn deploy(api: &ApiClient, body: &Value) -> anyhow::Result<String> {
        let created = api.post("/api/deployments", body).await?;
        created["id"]
            .as_str()
            .map(str::to_owned)
            .context("the planner answered a deployment without an id")
    }

    /// Waits until the planner has taken in every worker report: its results consumer has
    /// nothing pending or unacknowledged, and it acknowledges a report only once it is in the
    /// log. Asks the broker, not the planner, so waiting does not load what is measured.
    ///
    /// # Errors
    /// Not within `timeout`.
    pub async fn wait_ingested(&self, timeout: Duration) -> anyhow::Result<()> {
        let client = shoal_cli::local::trust::admin_client(&self.nats_url()).await?;
        let js = async_nats::jetstream::new(client);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
            .get_stream("SHOAL_RESULTS")
            .await
            .map_err(|e| anyhow::anyhow!("no results stream: {e}"))?
            .get_consumer("planner")
            .await
            .map_err(|e| anyhow::anyhow!("no results consumer: {e}"))?;
        loop {
            let info = consumer
                .info()
                .await
                .map_err(|e| anyhow::anyhow!("results consumer info: {e}"))?;
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "the planner still has {} reports pending and {} unacknowledged after {timeout:?}",
                    info.num_pending,
                    info.num_ack_pending
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until the event feed holds the log's last record: the feed's frames and the
    /// log's records then. A feed that falls behind under load catches up after the tasks
    /// finished; its cost is only counted whole once it has.
    ///
    /// # Errors
    /// The planner or the broker did not answer, or the feed did not catch up in `timeout`.
    pub async fn wait_feed(&self, timeout: Duration) -> anyhow::Result<(u64, u64)> {
        let client = shoal_cli::local::trust::admin_client(&self.nats_url()).await?;
        let js = async_nats::jetstream::new(client);
        let deadline = tokio::time::Instant::now() + timeout;
        let head = self.api.get("/api/status").await?["log_seq"]
            .as_u64()
            .unwrap_or(0);
        loop {
            let held = match js.get_stream("SHOAL_EVENTS").await {
                Ok(mut stream) => {
                    let frames = stream.info().await?.state.last_sequence;
                    let last = match stream.get_raw_message(frames).await {
                        Ok(m) => shoal_planner::event_feed::frame_last_seq(&m.headers).unwrap_or(0),
                        Err(_) => 0,
                    };
                    (frames, last)
                }
                Err(_) => (0, 0),
            };
            if held.1 >= head {
                return Ok((held.0, held.1));
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "the event feed holds records up to {} of {head} after {timeout:?}",
                    held.1
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the workers and the planner (SIGTERM, each must exit cleanly), reads the
    /// planner's log, and stops the broker.
    ///
    /// # Errors
    /// A process did not stop cleanly or the log cannot be read.
    pub async fn stop(mut self) -> anyhow::Result<LogFacts> {
        let mut verified = Some((0, 0));
        for w in &mut self.workers {
            w.terminate(Duration::from_secs(30)).await?;
            let counts = verify_counts(&w.output());
            if counts.is_none() && self.layout.signing {
                eprintln!(
                    "note: a worker did not log what it verified (is RUST_LOG below info?); verifications per task are not known"
                );
            }
            verified = verified
                .zip(counts)
                .map(|((m, s), (m2, s2))| (m + m2, s + s2));
        }
        if let Some(mut p) = self.planner.take() {
            let status = p.terminate(Duration::from_secs(60)).await?;
            if !status.success() {
                bail!("planner exited with {status}:\n{}", p.output());
            }
        }
        let mut facts = LogFacts::read(&self.data_dir().join("log")).await?;
        facts.workers_verified = verified;
        self.nats.stop().await?;
        Ok(facts)
    }
}

/// What a stopped worker's last line about verification says: messages verified, and the
/// Ed25519 verifications they took; none if it said nothing (it does not verify, or logs
/// below info).
fn verify_counts(output: &str) -> Option<(u64, u64)> {
    let line = output
        .lines()
        .rev()
        .find(|l| l.contains(" signature checks"))?;
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.split('=').next_back()?.parse().ok())
        .collect();
    match numbers[..] {
        [.., messages, signatures] => Some((messages, signatures)),
        _ => None,
    }
}

/// CPU time used by each part of an installation: seconds, or µs per task where the field
/// holding it says so.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuByPart {
    pub broker: f64,
    pub planner: f64,
    pub workers: f64,
}

impl CpuByPart {
    /// Each part's figure through `f` (e.g. seconds to µs per task).
    pub fn map(self, f: impl Fn(f64) -> f64) -> CpuByPart {
        CpuByPart {
            broker: f(self.broker),
            planner: f(self.planner),
            workers: f(self.workers),
        }
    }

    /// All parts together.
    pub fn total(&self) -> f64 {
        self.broker + self.planner + self.workers
    }
}

/// The name of pool `p`.
pub fn pool(p: usize) -> String {
    format!("bench-{p}")
}

/// The request body of a deployment with one step over every `bench` target.
pub fn over_targets(action: &Value) -> Value {
    json!({"project": "bench", "environment": "bench",
           "steps": [{"name": "bench", "roles": ["bench"], "action": action}]})
}

/// What the planner's log says about tasks: when each was planned and finished (the log's
/// millisecond times), and how it ended.
#[derive(Debug, Default)]
pub struct LogFacts {
    pub events: u64,
    pub planned_ms: HashMap<TaskId, i64>,
    pub finished_ms: HashMap<TaskId, (i64, Outcome)>,
    /// Deployments that ended `succeeded`.
    pub deployments_succeeded: usize,
    /// Messages the workers verified, and the Ed25519 verifications that took (none when a
    /// worker did not say).
    pub workers_verified: Option<(u64, u64)>,
}

impl LogFacts {
    /// Ed25519 verifications the workers made per task, of `tasks`, to four places.
    pub fn signatures_per_task(&self, tasks: usize) -> Option<f64> {
        let (_, signatures) = self.workers_verified?;
        #[expect(clippy::cast_precision_loss, reason = "a ratio")]
        let ratio = signatures as f64 / tasks.max(1) as f64;
        Some((ratio * 1e4).round() / 1e4)
    }

    /// Reads a stopped planner's log (waiting for sled to release its lock).
    ///
    /// # Errors
    /// The log cannot be opened or read.
    pub async fn read(dir: &Path) -> anyhow::Result<LogFacts> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let log = loop {
            match EventLog::open(dir) {
                Ok(log) => break log,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e).context("cannot open the planner's log"),
            }
        };
        let mut facts = LogFacts::default();
        for record in log.records() {
            let (_, env) = record?;
            facts.events += 1;
            match decode_event(&env)? {
                Event::TaskPlanned { task, .. } => {
                    facts.planned_ms.entry(task).or_insert(env.time.millis());
                }
                Event::TaskFinished { task, outcome, .. } => {
                    facts
                        .finished_ms
                        .entry(task)
                        .or_insert((env.time.millis(), outcome));
                }
                Event::DeploymentFinished {
                    state: DeploymentState::Succeeded,
                    ..
                } => facts.deployments_succeeded += 1,
                _ => {}
            }
        }
        Ok(facts)
    }

    /// Tasks that succeeded according to the log.
    pub fn succeeded(&self) -> usize {
        self.finished_ms
            .values()
            .filter(|(_, o)| *o == Outcome::Succeeded)
            .count()
    }

    /// Fails unless the log says that `tasks` tasks and `deployments` deployments succeeded.
    ///
    /// # Errors
    /// Fewer succeeded.
    pub fn ensure_all_succeeded(&self, tasks: usize, deployments: usize) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.succeeded() == tasks,
            "{} of {tasks} tasks succeeded in the log",
            self.succeeded()
        );
        anyhow::ensure!(
            self.deployments_succeeded == deployments,
            "{} of {deployments} deployments succeeded in the log",
            self.deployments_succeeded
        );
        Ok(())
    }

    /// The last `TaskFinished` time, in µs since the epoch.
    pub fn last_finished_us(&self) -> i64 {
        self.finished_ms
            .values()
            .map(|(t, _)| *t)
            .max()
            .unwrap_or(0)
            * 1000
    }

    /// Planned → finished in the log, per task, in ms (tasks planned at or after `from_us`).
    pub fn end_to_end_ms(&self, from_us: i64) -> Vec<f64> {
        self.finished_ms
            .iter()
            .filter_map(|(task, (fin, _))| {
                let planned = *self.planned_ms.get(task)?;
                (planned * 1000 >= from_us - 999).then(|| us_to_ms((fin - planned) * 1000))
            })
            .collect()
    }
}

/// Times seen on the wire for one task, µs since the epoch.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen {
    /// From the task message (`planned_at_us`, stamped by the planner's writer).
    pub planned_us: i64,
    /// When the observer received the task message (it is on the broker).
    pub queued_us: i64,
    /// When the observer received the worker's `TaskStarted` report.
    pub started_us: i64,
    /// When the observer received the worker's `TaskFinished` report.
    pub finished_us: i64,
}

/// Subscribes (core NATS, so it takes nothing from the queues) to every task message and
/// every worker report, and stamps them on arrival.
pub struct Observer {
    seen: Arc<Mutex<HashMap<TaskId, Seen>>>,
    finished: Arc<std::sync::atomic::AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _client: async_nats::Client,
}

impl Observer {
    /// Starts observing the default subjects on `url`.
    ///
    /// # Errors
    /// The broker is unreachable.
    pub async fn start(url: &str) -> anyhow::Result<Observer> {
        let client = shoal_cli::local::trust::admin_options(url)?
            .subscription_capacity(1 << 20)
            .connect(url)
            .await?;
        let seen: Arc<Mutex<HashMap<TaskId, Seen>>> = Arc::default();
        let finished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut task_sub = client.subscribe("shoal.tasks.>").await?;
        let mut result_sub = client.subscribe("shoal.results.>").await?;
        client.flush().await?;
        let s = seen.clone();
        let tasks_task = tokio::spawn(async move {
            while let Some(msg) = task_sub.next().await {
                let now = Timestamp::now_micros();
                if let Ok(t) = codec::decode::<TaskMessage>("task", &msg.payload) {
                    let mut seen = lock(&s);
                    let e = seen.entry(t.task).or_default();
                    e.planned_us = t.planned_at_us;
                    if e.queued_us == 0 {
                        e.queued_us = now;
                    }
                }
            }
        });
        let (s, f) = (seen.clone(), finished.clone());
        let results_task = tokio::spawn(async move {
            while let Some(msg) = result_sub.next().await {
                let now = Timestamp::now_micros();
                let kind = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(KIND_HEADER))
                    .map(|v| v.as_str());
                let Ok(reports) = decode_results(kind, &msg.payload) else {
                    continue;
                };
                for report in reports {
                    match report.body {
                        WorkerBody::TaskStarted { task, .. } => {
                            let mut seen = lock(&s);
                            let e = seen.entry(task).or_default();
                            if e.started_us == 0 {
                                e.started_us = now;
                            }
                        }
                        WorkerBody::TaskFinished { task, .. } => {
                            let mut seen = lock(&s);
                            let e = seen.entry(task).or_default();
                            if e.finished_us == 0 {
                                e.finished_us = now;
                                f.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                        _ => {}
                    }
                }
            }
        });
        Ok(Observer {
            seen,
            finished,
            tasks: vec![tasks_task, results_task],
            _client: client,
        })
    }

    /// Waits until `count` tasks were reported finished.
    ///
    /// # Errors
    /// Not within `timeout`.
    pub async fn wait_finished(&self, count: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let n = self.finished.load(std::sync::atomic::Ordering::Relaxed);
            if n >= count {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("only {n} of {count} tasks reported finished after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Schedule-to-start (planned → the worker's `TaskStarted` seen) per task planned at or
    /// after `from_us`, in ms; and how many tasks lack one of the two times.
    pub fn schedule_to_start_ms(&self, from_us: i64) -> (Vec<f64>, usize) {
        let seen = lock(&self.seen);
        let mut out = Vec::with_capacity(seen.len());
        let mut missing = 0;
        for s in seen.values() {
            if s.planned_us == 0 || s.started_us == 0 {
                missing += 1;
            } else if s.planned_us >= from_us {
                out.push(us_to_ms(s.started_us - s.planned_us));
            }
        }
        (out, missing)
    }

    /// Writes the times of every task planned at or after `from_us` as CSV, in µs since the
    /// epoch: planned, on the broker, started, finished (0: not seen), in order of planning.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write_trace(&self, path: &std::path::Path, from_us: i64) -> std::io::Result<()> {
        use std::fmt::Write as _;
        let seen = lock(&self.seen);
        let mut rows: Vec<&Seen> = seen.values().filter(|s| s.planned_us >= from_us).collect();
        rows.sort_by_key(|s| s.planned_us);
        let mut out = String::from("planned_us,queued_us,started_us,finished_us\n");
        for s in rows {
            let _ = writeln!(
                out,
                "{},{},{},{}",
                s.planned_us, s.queued_us, s.started_us, s.finished_us
            );
        }
        std::fs::write(path, out)
    }

    /// Schedule-to-start in two parts, per task planned at or after `from_us`, in ms:
    /// planned → the task message seen on the broker (the writer's commit and flush, the
    /// dispatcher's publish), and seen on the broker → the worker's `TaskStarted` seen (the
    /// pull, the worker, its report).
    pub fn phases_ms(&self, from_us: i64) -> (Vec<f64>, Vec<f64>) {
        let seen = lock(&self.seen);
        seen.values()
            .filter(|s| {
                s.planned_us >= from_us && s.planned_us > 0 && s.queued_us > 0 && s.started_us > 0
            })
            .map(|s| {
                (
                    us_to_ms(s.queued_us - s.planned_us),
                    us_to_ms(s.started_us - s.queued_us),
                )
            })
            .unzip()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
