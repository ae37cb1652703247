//! The sled event log through the real writer: replay of any history equals the live
//! projections, the hash chain detects tampering, duplicates are dropped, and a reopened log
//! answers the same.

use proptest::prelude::*;
use shoal_planner::domain::Command;
use shoal_planner::domain::decide::TargetUpdate;
use shoal_planner::domain::state::DeploymentDoc;
use shoal_planner::log::handover::{TaskReceiver, task_channel};
use shoal_planner::log::writer::{WriteError, Writer, WriterHandle, WriterTask};
use shoal_planner::log::{EventLog, Proj};
use shoal_planner::replay::{ReplayError, replay};
use shoal_shared::messages::{TaskMessage, WorkerBody, WorkerMessage};
use shoal_shared::*;
use tokio::sync::mpsc;

#[derive(Debug, Clone)]
enum Op {
    Pool(u8),
    Target {
        name: u8,
        roles: Vec<u8>,
        pool: Option<u8>,
    },
    SetPool {
        name: u8,
        pool: Option<u8>,
    },
    RemoveTarget(u8),
    /// A pool removed, with a worker online or not.
    RemovePool(u8, bool),
    Deploy {
        steps: Vec<(Vec<u8>, Option<u8>, Option<u32>)>,
    },
    Dispatched(usize),
    Started(usize, u32),
    Output(usize, u8),
    Finished(usize, u8, bool),
    Cancel(usize),
    RetryDue(usize),
    GraceExpired(usize),
    Check(u8),
    Checked(u8, u8),
    CheckDeadline(u8),
    Garbage(Vec<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4).prop_map(Op::Pool),
        (
            0u8..5,
            proptest::collection::vec(0u8..3, 0..3),
            proptest::option::of(0u8..4)
        )
            .prop_map(|(name, roles, pool)| Op::Target { name, roles, pool }),
        (0u8..5, proptest::option::of(0u8..4)).prop_map(|(name, pool)| Op::SetPool { name, pool }),
        (0u8..5).prop_map(Op::RemoveTarget),
        (0u8..4, any::<bool>()).prop_map(|(p, online)| Op::RemovePool(p, online)),
        proptest::collection::vec(
            (
                proptest::collection::vec(0u8..3, 0..2),
                proptest::option::of(0u8..4),
                proptest::option::of(1u32..3)
            ),
            1..4
        )
        .prop_map(|steps| Op::Deploy { steps }),
        any::<usize>().prop_map(Op::Dispatched),
        (any::<usize>(), 1u32..4).prop_map(|(t, d)| Op::Started(t, d)),
        (any::<usize>(), 1u8..5).prop_map(|(t, n)| Op::Output(t, n)),
        (any::<usize>(), 0u8..4, any::<bool>()).prop_map(|(t, o, dup)| Op::Finished(t, o, dup)),
        any::<usize>().prop_map(Op::Cancel),
        any::<usize>().prop_map(Op::RetryDue),
        any::<usize>().prop_map(Op::GraceExpired),
        (0u8..5).prop_map(Op::Check),
        (0u8..5, 0u8..3).prop_map(|(t, s)| Op::Checked(t, s)),
        (0u8..5).prop_map(Op::CheckDeadline),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Op::Garbage),
    ]
}

fn pool(i: u8) -> PoolName {
    PoolName::parse(["default", "eu-west", "us-east", "nowhere"][i as usize % 4]).expect("valid")
}

fn role(i: u8) -> RoleName {
    RoleName::parse(["web", "db", "cache"][i as usize % 3]).expect("valid")
}

fn tname(i: u8) -> TargetName {
    TargetName::parse(format!("t{i}")).expect("valid")
}

struct Harness {
    log: EventLog,
    handle: WriterHandle,
    task: WriterTask,
    planned: TaskReceiver,
    tasks: Vec<TaskMessage>,
}

/// Reopens a sled database closed a moment ago: sled's background threads release the file
/// lock shortly after the last handle is dropped, not at once.
fn reopen<T, E: std::fmt::Debug>(open: impl Fn() -> Result<T, E>) -> T {
    for _ in 0..100 {
        match open() {
            Ok(db) => return db,
            Err(e) if format!("{e:?}").contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("cannot open the log: {e:?}"),
        }
    }
    panic!("the log's lock was not released within 2 s")
}

fn open(dir: &std::path::Path) -> Harness {
    open_with(dir, false)
}

/// A writer on `log` (global default pool `default`), and where its task messages arrive.
fn writer_on(log: &EventLog) -> (Result<Writer, shoal_planner::log::LogError>, TaskReceiver) {
    let (tx, planned) = task_channel(64);
    let (effects, _) = mpsc::channel(16);
    let writer = Writer::open(
        log.clone(),
        PoolName::parse("default").expect("valid"),
        tx,
        effects,
    );
    (writer, planned)
}

fn open_with(dir: &std::path::Path, keep_finished: bool) -> Harness {
    let log = reopen(|| EventLog::open(dir));
    let (writer, planned) = writer_on(&log);
    let writer = writer.expect("consistent").keep_finished(keep_finished);
    let (handle, task) = writer.spawn(64).expect("writer thread");
    Harness {
        log,
        handle,
        task,
        planned,
        tasks: Vec::new(),
    }
}

impl Harness {
    async fn run(&mut self, cmd: Command) {
        match self.handle.execute(cmd).await {
            Ok(_) | Err(WriteError::Rejected(_)) => {}
            Err(e) => panic!("writer failed: {e}"),
        }
        let planned = self.planned.ready(&self.handle).await;
        self.tasks.extend(planned);
    }

    fn task(&self, i: usize) -> Option<TaskMessage> {
        (!self.tasks.is_empty()).then(|| self.tasks[i % self.tasks.len()].clone())
    }

    async fn report(&mut self, t: &TaskMessage, body: WorkerBody, dup: bool) {
        let msg = WorkerMessage {
            trace_parent: None,
            schema_version: 1,
            event_id: EventId::new(),
            worker: WorkerName::parse("w1").expect("valid"),
            pool: t.pool.clone(),
            sent_at: Timestamp(7),
            body,
        };
        self.run(Command::WorkerReport(msg.clone())).await;
        if dup {
            self.run(Command::WorkerReport(msg)).await;
        }
    }

    async fn apply(&mut self, op: Op) {
        match op {
            Op::Pool(i) => {
                self.run(Command::RegisterPool(Pool {
                    name: pool(i),
                    region: None,
                    description: None,
                }))
                .await
            }
            Op::Target {
                name,
                roles,
                pool: p,
            } => {
                let target = Target {
                    name: tname(name),
                    kind: TargetKind::Kubernetes,
                    environment: EnvironmentName::parse("prod").expect("valid"),
                    roles: roles.into_iter().map(role).collect(),
                    endpoint: Some(format!("t{name}.internal:443")),
                    default_pool: p.map(pool),
                    health_check: None,
                    health_interval_secs: None,
                };
                self.run(Command::RegisterTarget(target)).await;
            }
            Op::SetPool { name, pool: p } => {
                let update = TargetUpdate {
                    default_pool: Some(p.map(pool)),
                    ..Default::default()
                };
                self.run(Command::UpdateTarget {
                    name: tname(name),
                    update,
                })
                .await;
            }
            Op::RemoveTarget(name) => self.run(Command::RemoveTarget(tname(name))).await,
            Op::RemovePool(p, online) => {
                let online = if online {
                    vec![WorkerName::parse("w1").expect("valid")]
                } else {
                    vec![]
                };
                self.run(Command::RemovePool {
                    name: pool(p),
                    online,
                })
                .await
            }
            Op::Deploy { steps } => {
                let unhealthy_targets = if steps.len() % 2 == 0 {
                    UnhealthyTargets::Skip
                } else {
                    UnhealthyTargets::Fail
                };
                let spec = DeploymentSpec {
                    project: "p".into(),
                    environment: EnvironmentName::parse("prod").expect("valid"),
                    unhealthy_targets,
                    steps: steps
                        .into_iter()
                        .enumerate()
                        .map(|(i, (roles, p, max_parallel))| StepSpec {
                            name: format!("s{i}"),
                            action: if i % 3 == 1 && !roles.is_empty() {
                                Action::HealthCheck
                            } else {
                                Action::Noop
                            },
                            roles: roles.into_iter().map(role).collect(),
                            pool: p.map(pool),
                            timeout_secs: None,
                            max_parallel,
                            variables: Default::default(),
                            sensitive_variables: Default::default(),
                            retries: u32::from(i % 2 == 0),
                            retry_backoff_secs: Some(0),
                            max_attempts: None,
                        })
                        .collect(),
                };
                self.run(Command::CreateDeployment {
                    id: DeploymentId::new(),
                    spec,
                })
                .await;
            }
            Op::Dispatched(i) => {
                if let Some(t) = self.task(i) {
                    self.run(Command::MarkDispatched {
                        deployment: t.deployment,
                        task: t.task,
                        attempt: t.attempt,
                        stream_seq: Some(i as u64),
                    })
                    .await;
                }
            }
            Op::Cancel(i) => {
                if let Some(t) = self.task(i) {
                    self.run(Command::CancelDeployment {
                        id: t.deployment,
                        reason: None,
                    })
                    .await;
                }
            }
            Op::RetryDue(i) => {
                if let Some(t) = self.task(i) {
                    self.run(Command::RetryDue {
                        task: t.task,
                        attempt: t.attempt,
                    })
                    .await;
                }
            }
            Op::Check(name) => {
                self.run(Command::CheckTarget {
                    check: CheckId::new(),
                    target: tname(name),
                    trigger: shoal_shared::events::CheckTrigger::OnDemand,
                    at: Timestamp(1_000),
                    deadline_secs: 5,
                })
                .await;
            }
            Op::Checked(name, s) => {
                let check = self.pending_check(name).unwrap_or_default();
                let msg = WorkerMessage {
                    trace_parent: None,
                    schema_version: 1,
                    event_id: EventId::new(),
                    worker: WorkerName::parse("w1").expect("valid"),
                    pool: pool(0),
                    sent_at: Timestamp(9),
                    body: WorkerBody::HealthChecked {
                        check,
                        target: tname(name),
                        task: None,
                        state: [
                            HealthState::Healthy,
                            HealthState::HealthyWithWarnings,
                            HealthState::Unhealthy,
                        ][s as usize % 3],
                        reason: Some("probe".into()),
                        duration_ms: 3,
                    },
                };
                self.run(Command::WorkerReport(msg)).await;
            }
            Op::CheckDeadline(name) => {
                if let Some(check) = self.pending_check(name) {
                    self.run(Command::CheckDeadline {
                        target: tname(name),
                        check,
                    })
                    .await;
                }
            }
            Op::GraceExpired(i) => {
                if let Some(t) = self.task(i) {
                    self.run(Command::CancelGraceExpired {
                        deployment: t.deployment,
                    })
                    .await;
                }
            }
            Op::Started(i, delivery) => {
                if let Some(t) = self.task(i) {
                    self.report(
                        &t,
                        WorkerBody::TaskStarted {
                            deployment: t.deployment,
                            task: t.task,
                            attempt: t.attempt,
                            delivery,
                        },
                        false,
                    )
                    .await;
                }
            }
            Op::Output(i, n) => {
                if let Some(t) = self.task(i) {
                    let lines = (0..n)
                        .map(|k| OutputLine {
                            stream: OutputStream::Stdout,
                            at: Timestamp(1),
                            line: format!("line {k}"),
                        })
                        .collect();
                    let body = WorkerBody::TaskOutput {
                        deployment: t.deployment,
                        task: t.task,
                        attempt: t.attempt,
                        delivery: 1,
                        first_line: 0,
                        lines,
                    };
                    self.report(&t, body, false).await;
                }
            }
            Op::Finished(i, o, dup) => {
                if let Some(t) = self.task(i) {
                    let outcome = [
                        Outcome::Succeeded,
                        Outcome::Succeeded,
                        Outcome::Failed,
                        Outcome::TimedOut,
                    ][o as usize % 4];
                    // A worker reports an outcome only of a run it started.
                    let start = WorkerBody::TaskStarted {
                        deployment: t.deployment,
                        task: t.task,
                        attempt: t.attempt,
                        delivery: 1,
                    };
                    self.report(&t, start, false).await;
                    let body = WorkerBody::TaskFinished {
                        deployment: t.deployment,
                        task: t.task,
                        attempt: t.attempt,
                        delivery: 1,
                        outcome,
                        exit_code: Some(i32::from(o)),
                        reason: None,
                    };
                    self.report(&t, body, dup).await;
                }
            }
            Op::Garbage(bytes) => {
                self.run(Command::RejectMessage {
                    id: EventId::new(),
                    subject: "shoal.results.x.y".into(),
                    reason: "malformed".into(),
                    bytes,
                    claimed: None,
                })
                .await;
            }
        }
    }

    fn pending_check(&self, name: u8) -> Option<CheckId> {
        self.log
            .doc::<shoal_planner::domain::state::TargetDoc>(
                Proj::Targets,
                tname(name).as_str().as_bytes(),
            )
            .ok()
            .flatten()
            .and_then(|t| t.pending_check.map(|p| p.check))
    }

    async fn close(self) -> EventLog {
        drop(self.handle);
        self.task.await.expect("writer ok");
        self.log
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The types of every event in the log, in order.
fn event_types(log: &EventLog) -> Vec<String> {
    log.read(0, usize::MAX)
        .expect("reads")
        .into_iter()
        .map(|e| e.event_type)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// The writer keeps only unfinished deployments in memory and reads finished ones back
    /// when a late report names them; it must decide exactly as a writer that keeps all.
    #[test]
    fn a_writer_that_forgets_finished_deployments_decides_the_same(ops in proptest::collection::vec(op(), 1..60)) {
        let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        runtime().block_on(async {
            let mut logs = Vec::new();
            for (dir, keep) in [(&a, false), (&b, true)] {
                let mut h = open_with(dir.path(), keep);
                h.run(Command::EnsureDefaultPool).await;
                for op in ops.clone() {
                    h.apply(op).await;
                }
                logs.push(h.close().await);
            }
            assert_eq!(event_types(&logs[0]), event_types(&logs[1]));
        });
    }

    #[test]
    fn replay_of_any_history_equals_the_live_projections(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().expect("tempdir");
        runtime().block_on(async {
            let mut h = open(dir.path());
            h.run(Command::EnsureDefaultPool).await;
            for op in ops {
                h.apply(op).await;
            }
            // Only unfinished deployments and their tasks stay in the writer's memory.
            let unfinished: Vec<DeploymentDoc> = h
                .log
                .docs::<DeploymentDoc>(Proj::Deployments)
                .expect("reads")
                .into_iter()
                .filter(|d| !d.state.is_terminal())
                .collect();
            let tasks: usize = unfinished.iter().flat_map(|d| &d.steps).map(|s| s.tasks.len()).sum();
            let (held, held_tasks, _) = h.handle.in_memory();
            assert_eq!((held, held_tasks), (unfinished.len(), tasks), "deployments and tasks in memory");
            let log = h.close().await;
            let report = replay(&log, false).expect("replay equals live");
            assert_eq!(report.events, log.len().expect("head"));
            // A reopened writer loads the same state and appends after the same head.
            let state_before = log.load_state().expect("loads");
            drop(log);
            let h = open(dir.path());
            let again = h.log.load_state().expect("loads");
            assert_eq!(state_before, again);
            h.close().await;
        });
    }
}

#[tokio::test]
async fn a_changed_record_breaks_the_chain_at_the_next_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = open(dir.path());
    h.run(Command::EnsureDefaultPool).await;
    for i in 1..3 {
        h.apply(Op::Pool(i)).await;
    }
    let log = h.close().await;
    assert_eq!(log.len().expect("head"), 3);
    drop(log);
    {
        let db = reopen(|| sled::open(dir.path()));
        let tree = db.open_tree("shoal").expect("tree");
        // Flip a byte inside record 2's payload, wherever its chunk is.
        let mut changed = false;
        for kv in tree.scan_prefix(b"e") {
            let (key, value) = kv.expect("read");
            let mut chunk = value.to_vec();
            let mut at = 0;
            while at < chunk.len() {
                let len = u32::from_be_bytes(chunk[at..at + 4].try_into().expect("4")) as usize;
                let record = &chunk[at + 4..at + 4 + len];
                let env: shoal_shared::events::Envelope =
                    shoal_shared::codec::decode("record", record).expect("decodes");
                if env.seq == 2 {
                    // A byte in the middle of the event's payload, wherever the envelope's
                    // fields put it.
                    let p = &env.payload;
                    let start = record
                        .windows(p.len())
                        .position(|w| w == p.as_slice())
                        .expect("the payload is in the record");
                    chunk[at + 4 + start + p.len() / 2] ^= 1;
                    changed = true;
                }
                at += 4 + len;
            }
            if changed {
                tree.insert(key, chunk).expect("write");
                break;
            }
        }
        assert!(changed, "record 2 found");
        db.flush().expect("flush");
    }
    let log = reopen(|| EventLog::open(dir.path()));
    match replay(&log, false) {
        Err(ReplayError::Chain { seq: 3, .. }) | Err(ReplayError::Log(_)) => {}
        other => panic!("tampering not detected: {other:?}"),
    }
}

#[tokio::test]
async fn a_changed_projection_is_reported_and_rebuild_repairs_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = open(dir.path());
    h.run(Command::EnsureDefaultPool).await;
    h.apply(Op::Pool(1)).await;
    let log = h.close().await;
    drop(log);
    {
        let db = reopen(|| sled::open(dir.path()));
        let tree = db.open_tree("shoal").expect("tree");
        tree.insert(Proj::Pools.key(b"eu-west"), b"junk".to_vec())
            .expect("write");
        db.flush().expect("flush");
    }
    let log = reopen(|| EventLog::open(dir.path()));
    let err = replay(&log, false).expect_err("difference found");
    assert!(
        err.to_string().contains("projection \"pools\" differs")
            && err.to_string().contains("eu-west"),
        "{err}"
    );
    replay(&log, true).expect("rebuild");
    replay(&log, false).expect("equal after rebuild");
}

/// The default pool, one target and a deployment of one step with one task on it.
async fn one_task_deployment(h: &mut Harness) {
    h.run(Command::EnsureDefaultPool).await;
    h.apply(Op::Target {
        name: 1,
        roles: vec![0],
        pool: None,
    })
    .await;
    h.apply(Op::Deploy {
        steps: vec![(vec![0], None, None)],
    })
    .await;
}

/// A log holding [`one_task_deployment`], closed, and its head.
async fn closed_log_with_one_deployment(dir: &std::path::Path) -> (EventLog, u64) {
    let mut h = open(dir);
    one_task_deployment(&mut h).await;
    let log = h.close().await;
    let head = log.head().expect("head").seq;
    (log, head)
}

#[tokio::test]
async fn a_repeated_worker_report_is_appended_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = open(dir.path());
    one_task_deployment(&mut h).await;
    let before = h.log.len().expect("head");
    h.apply(Op::Finished(0, 0, true)).await;
    let log = h.close().await;
    let finished = log
        .read(before as u64, 100)
        .expect("reads")
        .into_iter()
        .filter(|e| e.event_type == "TaskFinished")
        .count();
    assert_eq!(finished, 1);
}

/// A replay that stops while it rewrites the projections leaves them marked behind the log:
/// the writer refuses to start on them until a rebuild finishes.
#[tokio::test]
async fn projections_left_behind_by_an_unfinished_replay_stop_the_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, head) = closed_log_with_one_deployment(dir.path()).await;
    assert_eq!(log.checkpoint().expect("checkpoint"), head);
    log.set_checkpoint(0).expect("marked");
    let refused = writer_on(&log)
        .0
        .err()
        .expect("the writer refuses projections behind the log");
    assert!(
        refused.to_string().contains("replay --rebuild"),
        "{refused}"
    );
    replay(&log, true).expect("rebuild");
    assert_eq!(log.checkpoint().expect("checkpoint"), head);
    assert!(
        writer_on(&log).0.is_ok(),
        "the writer starts after the rebuild"
    );
}

/// A log written before the checkpoint record was kept only during replay carries one equal
/// to the head. Opened now, that record goes, so the batches written from then on (which no
/// longer update it) do not leave the projections looking behind.
#[tokio::test]
async fn a_checkpoint_record_from_an_earlier_version_does_not_stop_the_next_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, head) = closed_log_with_one_deployment(dir.path()).await;
    drop(log);
    {
        let db = reopen(|| sled::open(dir.path()));
        let tree = db.open_tree("shoal").expect("tree");
        tree.insert(b"mcheckpoint", &head.to_be_bytes())
            .expect("written as an earlier version did");
        db.flush().expect("flushed");
    }
    let mut h = open(dir.path());
    h.apply(Op::Pool(1)).await;
    let log = h.close().await;
    assert!(log.head().expect("head").seq > head);
    drop(log);
    let h = open(dir.path());
    assert_eq!(
        h.log.checkpoint().expect("checkpoint"),
        h.log.head().expect("head").seq
    );
    h.close().await;
}

/// The stream of the first deployment among `records`.
fn a_deployment_stream(records: &[shoal_shared::events::Envelope]) -> String {
    records
        .iter()
        .find(|e| e.stream.starts_with("deployment/"))
        .expect("a deployment stream")
        .stream
        .clone()
}

/// The records of a chunk (4-byte big-endian length, then the record), as the log frames them.
fn framed(chunk: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < chunk.len() {
        let len = u32::from_be_bytes(chunk[at..at + 4].try_into().expect("4 bytes")) as usize;
        out.push(chunk[at + 4..at + 4 + len].to_vec());
        at += 4 + len;
    }
    out
}

/// A log written by an earlier version (one sled tree per kind of record) is moved into the
/// one tree when it is opened: the same records and chain, the same projections, every stream
/// readable, and the old trees gone.
#[tokio::test]
async fn a_log_in_the_earlier_layout_is_moved_over_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = open(dir.path());
    one_task_deployment(&mut h).await;
    for op in [
        Op::Dispatched(0),
        Op::Started(0, 1),
        Op::Output(0, 3),
        Op::Finished(0, 0, true),
    ] {
        h.apply(op).await;
    }
    let log = h.close().await;
    let records = log.read(0, usize::MAX).expect("reads");
    assert!(records.len() > 5, "a history to move");
    let stream = a_deployment_stream(&records);
    let in_stream = log.read_stream(&stream, 0, usize::MAX).expect("reads");
    let state = log.load_state().expect("loads");
    drop(log);
    {
        let db = reopen(|| sled::open(dir.path()));
        let tree = db.open_tree("shoal").expect("tree");
        let events = db.open_tree("log.events").expect("tree");
        let ids = db.open_tree("log.event_ids").expect("tree");
        let meta = db.open_tree("log.meta").expect("tree");
        for kv in tree.iter() {
            let (k, v) = kv.expect("reads");
            match k[0] {
                b'e' => {
                    for record in framed(&v) {
                        let env: shoal_shared::events::Envelope =
                            shoal_shared::codec::decode("record", &record).expect("decodes");
                        events.insert(env.seq.to_be_bytes(), record).expect("write");
                    }
                }
                b'i' => {
                    ids.insert(&k[1..], v).expect("write");
                }
                b'm' => {
                    meta.insert(&k[1..], v).expect("write");
                }
                b'p' => {
                    let p = Proj::ALL
                        .into_iter()
                        .find(|p| p.key(b"")[..] == k[..2])
                        .expect("a known projection");
                    db.open_tree(format!("proj.{}", p.name()))
                        .expect("tree")
                        .insert(&k[2..], v)
                        .expect("write");
                }
                _ => {}
            }
        }
        drop(tree);
        db.drop_tree("shoal").expect("drop");
        db.flush().expect("flush");
    }
    let log = reopen(|| EventLog::open(dir.path()));
    assert_eq!(log.read(0, usize::MAX).expect("reads"), records);
    assert_eq!(
        log.read_stream(&stream, 0, usize::MAX).expect("reads"),
        in_stream
    );
    assert_eq!(log.load_state().expect("loads"), state);
    replay(&log, false).expect("replay equals the moved projections");
    drop(log);
    let db = reopen(|| sled::open(dir.path()));
    assert!(
        !db.tree_names()
            .iter()
            .any(|n| n.starts_with(b"log.") || n.starts_with(b"proj.")),
        "old trees are dropped: {:?}",
        db.tree_names()
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect::<Vec<_>>()
    );
}

/// Reads page after page (each at most `limit` records, after the last one read) until a page
/// is empty.
fn page_all(
    limit: usize,
    read: impl Fn(u64) -> Vec<shoal_shared::events::Envelope>,
) -> Vec<shoal_shared::events::Envelope> {
    let mut paged: Vec<shoal_shared::events::Envelope> = Vec::new();
    loop {
        let page = read(paged.last().map_or(0, |e| e.seq));
        assert!(
            page.len() <= limit,
            "a page of {} for a limit of {limit}",
            page.len()
        );
        if page.is_empty() {
            return paged;
        }
        paged.extend(page);
    }
}

/// Paging through the log and through one stream, a few records at a time, gives exactly the
/// records read at once, whatever chunk boundaries fall in between.
#[tokio::test]
async fn paging_through_the_log_and_a_stream_misses_and_repeats_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = open(dir.path());
    h.run(Command::EnsureDefaultPool).await;
    for i in 0..4 {
        h.apply(Op::Target {
            name: i,
            roles: vec![0],
            pool: None,
        })
        .await;
    }
    for _ in 0..3 {
        h.apply(Op::Deploy {
            steps: vec![(vec![0], None, None), (vec![0], None, None)],
        })
        .await;
    }
    for i in 0..6 {
        h.apply(Op::Dispatched(i)).await;
        h.apply(Op::Started(i, 1)).await;
        h.apply(Op::Finished(i, 0, false)).await;
    }
    let log = h.close().await;
    let all = log.read(0, usize::MAX).expect("reads");
    assert_eq!(all.len() as u64, log.len().expect("head"));
    for limit in [1, 3, 7] {
        let paged = page_all(limit, |after| log.read(after, limit).expect("reads"));
        assert_eq!(paged, all, "paging the log by {limit}");
    }
    let stream = a_deployment_stream(&all);
    let whole: Vec<_> = all.iter().filter(|e| e.stream == stream).cloned().collect();
    assert_eq!(
        log.read_stream(&stream, 0, usize::MAX).expect("reads"),
        whole
    );
    // A name with NUL bytes is no stream: it reads as empty, not as another stream's rows.
    let mangled = format!("{stream}\0\0\0\0");
    assert_eq!(log.read_stream(&mangled, 0, 10).expect("reads"), vec![]);
    assert_eq!(
        log.read_stream("deployment/\0", 0, 10).expect("reads"),
        vec![]
    );
    for limit in [1, 2, 5] {
        let paged = page_all(limit, |after| {
            log.read_stream(&stream, after, limit).expect("reads")
        });
        assert_eq!(paged, whole, "paging stream {stream} by {limit}");
    }
}
