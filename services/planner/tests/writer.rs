//! The writer on its own thread and its bounded hand-over, on a real sled log (and, for the
//! dispatcher, a real nats-server): the writer answers while the async runtime is blocked,
//! the dispatcher catches up from the outbox after its channel overflowed (publishing every
//! attempt exactly once), and dropped effects come back as a resync from the state.

use futures::StreamExt;
use serde_json::json;
use shoal_cli::local::Nats;
use shoal_planner::domain::Command;
use shoal_planner::domain::effects::Effect;
use shoal_planner::domain::state::TaskDoc;
use shoal_planner::log::handover::{TaskReceiver, task_channel};
use shoal_planner::log::writer::{THREAD_NAME, Writer, WriterHandle, WriterTask};
use shoal_planner::log::{EventLog, Proj};
use shoal_planner::{broker, dispatch};
use shoal_shared::messages::{TaskMessage, WIRE_SCHEMA_VERSION, WorkerBody, WorkerMessage};
use shoal_shared::subjects::Subjects;
use shoal_shared::{DeploymentId, EventId, PoolName, TaskState, Timestamp, WorkerName};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

struct Planner {
    log: EventLog,
    handle: WriterHandle,
    task: WriterTask,
    tasks: TaskReceiver,
    effects: mpsc::Receiver<Vec<Effect>>,
}

/// A writer on a fresh log whose task channel holds `tasks` messages and effects channel
/// `effects` batches.
fn start(dir: &std::path::Path, tasks: usize, effects: usize) -> Planner {
    let log = EventLog::open(&dir.join("log")).expect("log opens");
    let (tasks_tx, tasks_rx) = task_channel(tasks);
    let (effects_tx, effects_rx) = mpsc::channel(effects);
    let writer = Writer::open(
        log.clone(),
        PoolName::parse("default").expect("valid"),
        tasks_tx,
        effects_tx,
    )
    .expect("writer opens");
    let (handle, task) = writer.spawn(64).expect("writer thread");
    Planner {
        log,
        handle,
        task,
        tasks: tasks_rx,
        effects: effects_rx,
    }
}

async fn execute(h: &WriterHandle, cmd: Command) {
    tokio::time::timeout(WAIT, h.execute(cmd))
        .await
        .expect("answered in time")
        .expect("accepted");
}

/// The default pool and `n` targets with role `web`.
async fn targets(h: &WriterHandle, n: usize) {
    execute(h, Command::EnsureDefaultPool).await;
    for i in 0..n {
        let target = serde_json::from_value(json!({
            "name": format!("t{i}"), "kind": "cloud-region", "environment": "prod",
            "roles": ["web"],
        }))
        .expect("valid target");
        execute(h, Command::RegisterTarget(target)).await;
    }
}

/// A deployment of one no-op step over every `web` target.
async fn deploy(h: &WriterHandle) -> DeploymentId {
    let id = DeploymentId::new();
    let spec = serde_json::from_value(json!({
        "project": "p", "environment": "prod",
        "steps": [{"name": "s", "roles": ["web"], "action": {"type": "noop"}}],
    }))
    .expect("valid spec");
    execute(h, Command::CreateDeployment { id, spec }).await;
    id
}

fn report(task: &TaskMessage, body: WorkerBody) -> Command {
    Command::WorkerReport(WorkerMessage {
        trace_parent: None,
        schema_version: WIRE_SCHEMA_VERSION,
        event_id: EventId::new(),
        worker: WorkerName::parse("w1").expect("valid"),
        pool: task.pool.clone(),
        sent_at: Timestamp::now(),
        body,
    })
}

/// Drops the last handle and waits for the writer's thread to end.
async fn stop(handle: WriterHandle, task: WriterTask) {
    drop(handle);
    tokio::time::timeout(WAIT, task)
        .await
        .expect("writer ends once every handle is dropped")
        .expect("writer ok");
}

/// The only runtime thread is blocked while a command waits for its answer: a writer that
/// ran as a task of that runtime could not answer, the writer on its own thread does.
#[tokio::test(flavor = "current_thread")]
async fn the_writer_answers_while_the_runtime_thread_is_blocked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = start(dir.path(), 16, 16);
    let answer = p
        .handle
        .submit(Command::EnsureDefaultPool)
        .await
        .expect("queued");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(futures::executor::block_on(answer));
    });
    // Blocks this runtime's only thread (no `.await` until the answer is in).
    let answered = rx.recv_timeout(WAIT);
    assert!(
        matches!(answered, Ok(Ok(Ok(_)))),
        "the writer did not answer while the runtime was blocked: {answered:?}"
    );
    let threads = std::fs::read_dir("/proc/self/task")
        .expect("threads listed")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect::<Vec<_>>();
    assert!(
        threads.iter().any(|t| t == THREAD_NAME),
        "no thread named {THREAD_NAME}: {threads:?}"
    );
    stop(p.handle, p.task).await;
}

/// Attempt by attempt, the message ids seen on the task subjects.
async fn observe(mut sub: async_nats::Subscriber, wanted: usize) -> HashMap<String, usize> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    // Until every attempt is seen, and then a moment longer: a copy published twice would
    // arrive right behind the first.
    let quiet = Duration::from_millis(500);
    loop {
        let limit = if seen.len() < wanted {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        } else {
            quiet
        };
        match tokio::time::timeout(limit, sub.next()).await {
            Ok(Some(msg)) => {
                let id = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                    .map(|id| id.as_str().to_owned())
                    .expect("task messages carry a message id");
                *seen.entry(id).or_default() += 1;
            }
            Ok(None) => panic!("subscription ended"),
            Err(_) if seen.len() < wanted => panic!("only {} of {wanted} published", seen.len()),
            Err(_) => return seen,
        }
    }
}

/// The dispatcher's channel holds two messages while 60 attempts are planned with nothing
/// draining it: the writer owes the rest, and the dispatcher pages them from the outbox.
/// Every attempt is published exactly once and confirmed.
#[tokio::test]
async fn the_dispatcher_catches_up_from_the_outbox_after_its_channel_overflowed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let nats = Nats::start(dir.path()).await.expect("nats-server starts");
    let client = nats.connect().await.expect("connects");
    let js = async_nats::jetstream::new(client.clone());
    let subjects = Subjects::default();
    broker::ensure_streams(&js, &subjects, broker::DUPLICATE_WINDOW)
        .await
        .expect("streams");
    let observer = client
        .subscribe(subjects.tasks_all())
        .await
        .expect("subscribes");
    client.flush().await.expect("subscription registered");

    let p = start(dir.path(), 2, 16);
    targets(&p.handle, 30).await;
    deploy(&p.handle).await;
    deploy(&p.handle).await;
    let shutdown = CancellationToken::new();
    let master = shoal_runtime::secrets::MasterKey::create(&dir.path().join("master.key"))
        .expect("master key");
    let sealer = shoal_planner::secrets::Sealer::new(std::sync::Arc::new(master), p.log.clone());
    let dispatcher = tokio::spawn(dispatch::run(
        js.clone(),
        subjects.clone(),
        p.handle.clone(),
        p.tasks,
        sealer,
        shoal_planner::signing::Signer::new(
            shoal_shared::signed::SigningKey::generate().expect("random"),
            Duration::from_secs(3600),
        ),
        shutdown.clone(),
    ));

    let seen = observe(observer, 60).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let docs = loop {
        let docs = p.log.docs::<TaskDoc>(Proj::Tasks).expect("tasks read");
        if docs.iter().all(|t| t.state == TaskState::Dispatched) {
            break docs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every task was confirmed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(docs.len(), 60);
    for t in &docs {
        let id = format!("{}/1", t.id);
        assert_eq!(seen.get(&id), Some(&1), "attempt {id} published once");
    }
    assert_eq!(seen.len(), 60, "nothing else published");

    shutdown.cancel();
    tokio::time::timeout(WAIT, dispatcher)
        .await
        .expect("dispatcher stops")
        .expect("dispatcher ok");
    stop(p.handle, p.task).await;
}

/// The attempts planned before a restart (never published) are owed to the dispatcher at
/// start and paged from the outbox; one a worker already reported on is confirmed instead of
/// published again.
#[tokio::test]
async fn a_restarted_writer_owes_the_outbox_and_confirms_what_workers_reported() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = start(dir.path(), 64, 16);
    targets(&p.handle, 3).await;
    deploy(&p.handle).await;
    let mut p = p;
    let planned = p.tasks.ready(&p.handle).await;
    assert_eq!(planned.len(), 3);
    // A worker got the first one (the confirmation was lost with the process).
    let first = &planned[0];
    execute(
        &p.handle,
        report(
            first,
            WorkerBody::TaskStarted {
                deployment: first.deployment,
                task: first.task,
                attempt: first.attempt,
                delivery: 1,
            },
        ),
    )
    .await;
    drop(p.log);
    stop(p.handle, p.task).await;

    let (tasks_tx, mut tasks) = task_channel(64);
    let (effects_tx, _effects) = mpsc::channel(16);
    let log = reopen(&dir.path().join("log"));
    let mut writer = Writer::open(
        log.clone(),
        PoolName::parse("default").expect("valid"),
        tasks_tx,
        effects_tx,
    )
    .expect("writer opens");
    assert_eq!(
        writer.republish_outbox(),
        3,
        "every attempt is still in the outbox"
    );
    let (handle, task) = writer.spawn(64).expect("writer thread");
    let again = tasks.ready(&handle).await;
    let mut ids: Vec<_> = again.iter().map(|m| m.task).collect();
    ids.sort();
    let mut wanted: Vec<_> = planned[1..].iter().map(|m| m.task).collect();
    wanted.sort();
    assert_eq!(ids, wanted, "the two never started are published again");
    let first_doc = log
        .doc::<TaskDoc>(Proj::Tasks, first.task.as_bytes())
        .expect("reads")
        .expect("exists");
    assert_eq!(first_doc.state, TaskState::Running);
    assert!(
        log.read(0, usize::MAX)
            .expect("reads")
            .iter()
            .any(|e| e.event_type == "TaskDispatched"),
        "the started one is confirmed"
    );
    stop(handle, task).await;
}

/// Reopens a sled database closed a moment ago (its threads release the lock shortly after).
fn reopen(dir: &std::path::Path) -> EventLog {
    for _ in 0..100 {
        match EventLog::open(dir) {
            Ok(log) => return log,
            Err(e) if e.to_string().contains("could not acquire lock") => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot open the log: {e}"),
        }
    }
    panic!("the log's lock was not released within 2 s")
}

/// The effects channel holds one batch and nobody takes it: the next batch is dropped, and
/// once there is room the writer sends every effect derivable from its state.
#[tokio::test]
async fn dropped_effects_come_back_as_a_resync_from_the_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut p = start(dir.path(), 64, 1);
    targets(&p.handle, 1).await;
    // Registering pools and targets has effects of its own (consumers, health schedule):
    // take them, and any resync they caused, until the writer has nothing more to send.
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), p.effects.recv()).await
    {
    }
    // Two deployments, each with its task running, then cancelled: each cancellation asks
    // for a stop and a grace timer.
    let mut deployments = Vec::new();
    for _ in 0..2 {
        let id = deploy(&p.handle).await;
        let planned = p.tasks.ready(&p.handle).await;
        let t = &planned[0];
        execute(
            &p.handle,
            report(
                t,
                WorkerBody::TaskStarted {
                    deployment: t.deployment,
                    task: t.task,
                    attempt: t.attempt,
                    delivery: 1,
                },
            ),
        )
        .await;
        deployments.push(id);
    }
    for id in &deployments {
        execute(
            &p.handle,
            Command::CancelDeployment {
                id: *id,
                reason: None,
            },
        )
        .await;
    }
    // The first cancellation's batch fills the channel; the second's was dropped.
    let first = tokio::time::timeout(WAIT, p.effects.recv())
        .await
        .expect("in time")
        .expect("a batch");
    assert!(graces(&first).contains(&deployments[0]));
    let resync = tokio::time::timeout(WAIT, p.effects.recv())
        .await
        .expect("a resync once there is room")
        .expect("a batch");
    let mut got = graces(&resync);
    got.sort();
    let mut wanted = deployments.clone();
    wanted.sort();
    assert_eq!(
        got, wanted,
        "both cancellations' grace timers, from the state"
    );
    stop(p.handle, p.task).await;
}

/// The deployments whose cancellation grace timers a batch of effects sets.
fn graces(effects: &[Effect]) -> Vec<DeploymentId> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Schedule {
                cmd: Command::CancelGraceExpired { deployment },
                ..
            } => Some(*deployment),
            _ => None,
        })
        .collect()
}

/// A failed deployment's other running tasks are told to stop. No state can tell that again,
/// so when the batch carrying the stops is dropped (the runner is behind), the writer keeps
/// the stops and sends them with the resync.
#[tokio::test]
async fn the_stops_of_a_dropped_effects_batch_come_back_with_the_resync() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut p = start(dir.path(), 64, 1);
    targets(&p.handle, 2).await;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), p.effects.recv()).await
    {
    }
    deploy(&p.handle).await;
    let planned = p.tasks.ready(&p.handle).await;
    assert_eq!(planned.len(), 2, "both targets' tasks run at once");
    for t in &planned {
        let started = WorkerBody::TaskStarted {
            deployment: t.deployment,
            task: t.task,
            attempt: t.attempt,
            delivery: 1,
        };
        execute(&p.handle, report(t, started)).await;
    }
    // A pool's registration fills the channel (its consumer is an effect) ...
    let pool = serde_json::from_value(json!({"name": "filler"})).expect("valid pool");
    execute(&p.handle, Command::RegisterPool(pool)).await;
    // ... so the failure's batch, which stops the other running task, is dropped.
    let (failed, other) = (&planned[0], &planned[1]);
    let finished = WorkerBody::TaskFinished {
        deployment: failed.deployment,
        task: failed.task,
        attempt: failed.attempt,
        delivery: 1,
        outcome: shoal_shared::Outcome::Failed,
        exit_code: Some(1),
        reason: None,
    };
    execute(&p.handle, report(failed, finished)).await;
    let first = tokio::time::timeout(WAIT, p.effects.recv())
        .await
        .expect("in time")
        .expect("a batch");
    assert!(
        first.iter().any(|e| matches!(e, Effect::EnsureConsumer(_))),
        "the filler first: {first:?}"
    );
    let resync = tokio::time::timeout(WAIT, p.effects.recv())
        .await
        .expect("a resync once there is room")
        .expect("a batch");
    let stopped: Vec<_> = resync
        .iter()
        .filter_map(|e| match e {
            Effect::Cancel(stops) => Some(stops.iter().map(|s| s.task)),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(
        stopped.contains(&other.task),
        "the other running task is told to stop: {resync:?}"
    );
    stop(p.handle, p.task).await;
}
