//! The reporter against a real nats-server: reports handed in together leave as batches,
//! every report is stored exactly once, each sender's reports stay in the order sent, a
//! report too large for a batch goes alone, and a broker restart loses nothing.

use async_nats::jetstream;
use shoal_cli::local::Nats;
use shoal_shared::messages::{KIND_HEADER, KIND_REPORT_BATCH, WorkerBody, decode_results};
use shoal_shared::{
    DeploymentId, EventId, OutputLine, OutputStream, PoolName, TaskId, Timestamp, WorkerName,
};
use shoal_worker::WorkerConfig;
use shoal_worker::report::Reporter;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

struct Broker {
    nats: Nats,
    _dir: tempfile::TempDir,
    js: jetstream::Context,
    config: WorkerConfig,
}

async fn broker() -> anyhow::Result<Broker> {
    let dir = tempfile::tempdir()?;
    let nats = Nats::start(dir.path()).await?;
    let client = nats.connect().await?;
    let js = jetstream::new(client);
    let config = WorkerConfig::new(
        WorkerName::parse("w1")?,
        PoolName::parse("default")?,
        dir.path().join("work"),
    );
    js.create_stream(jetstream::stream::Config {
        name: config.subjects.results_stream(),
        subjects: vec![config.subjects.results_all()],
        ..Default::default()
    })
    .await?;
    Ok(Broker {
        nats,
        _dir: dir,
        js,
        config,
    })
}

/// One task's output chunk: `first_line` says which sender and which of its reports it is.
fn chunk(task: TaskId, n: u64, line: String) -> WorkerBody {
    WorkerBody::TaskOutput {
        deployment: DeploymentId(task.0),
        task,
        attempt: 1,
        delivery: 1,
        first_line: n,
        lines: vec![OutputLine {
            stream: OutputStream::Stdout,
            at: Timestamp::now(),
            line,
        }],
    }
}

/// `senders` tasks each send `per_sender` reports one after the other, all at once.
async fn send_all(reporter: &Reporter, senders: usize, per_sender: u64) -> Vec<TaskId> {
    let tasks: Vec<TaskId> = (0..senders).map(|_| TaskId::new()).collect();
    let mut running = tokio::task::JoinSet::new();
    for task in tasks.clone() {
        let reporter = reporter.clone();
        running.spawn(async move {
            for n in 0..per_sender {
                assert!(
                    reporter.send(chunk(task, n, format!("line {n}"))).await,
                    "report {n} of {task} not stored"
                );
            }
        });
    }
    while let Some(done) = tokio::time::timeout(WAIT, running.join_next())
        .await
        .expect("senders finish in time")
    {
        done.expect("a sender panicked");
    }
    tasks
}

/// What the stream holds.
struct Stored {
    messages: usize,
    batches: usize,
    largest_batch: usize,
    /// Every report in stream order: task, `first_line`, event id, whether it came in a batch.
    reports: Vec<(TaskId, u64, EventId, bool)>,
    /// Whether each message was a batch, in stream order.
    kinds: Vec<bool>,
}

async fn stored(b: &Broker) -> anyhow::Result<Stored> {
    let mut stream = b.js.get_stream(b.config.subjects.results_stream()).await?;
    let last = stream.info().await?.state.last_sequence;
    let mut out = Stored {
        messages: 0,
        batches: 0,
        largest_batch: 0,
        reports: Vec::new(),
        kinds: Vec::new(),
    };
    for seq in 1..=last {
        let msg = stream.get_raw_message(seq).await?;
        let kind = msg.headers.get(KIND_HEADER).map(|v| v.as_str().to_owned());
        let reports = decode_results(kind.as_deref(), &msg.payload)?;
        let is_batch = kind.as_deref() == Some(KIND_REPORT_BATCH);
        anyhow::ensure!(
            is_batch || reports.len() == 1,
            "a plain message holds one report"
        );
        anyhow::ensure!(!reports.is_empty(), "no empty batches");
        out.messages += 1;
        out.kinds.push(is_batch);
        if is_batch {
            out.batches += 1;
            out.largest_batch = out.largest_batch.max(reports.len());
        }
        for r in reports {
            if let WorkerBody::TaskOutput {
                task, first_line, ..
            } = r.body
            {
                out.reports.push((task, first_line, r.event_id, is_batch));
            }
        }
    }
    Ok(out)
}

/// Every sender's reports are there exactly once and in the order sent.
fn assert_complete_and_in_order(s: &Stored, expected: &[(TaskId, u64)]) {
    let ids: HashSet<EventId> = s.reports.iter().map(|r| r.2).collect();
    assert_eq!(ids.len(), s.reports.len(), "a report was stored twice");
    let mut next: HashMap<TaskId, u64> = HashMap::new();
    for (task, n, ..) in &s.reports {
        let expected = next.entry(*task).or_default();
        assert_eq!(n, expected, "task {task}: report {n} stored out of order");
        *expected += 1;
    }
    for (task, count) in expected {
        assert_eq!(next.get(task), Some(count), "task {task}: reports missing");
    }
    assert_eq!(next.len(), expected.len(), "reports of unknown senders");
}

fn each(tasks: &[TaskId], count: u64) -> Vec<(TaskId, u64)> {
    tasks.iter().map(|t| (*t, count)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reports_leave_in_batches_complete_and_in_order() -> anyhow::Result<()> {
    let b = broker().await?;
    let reporter = Reporter::new(b.js.clone(), &b.config, CancellationToken::new());
    let tasks = send_all(&reporter, 200, 25).await;
    let s = stored(&b).await?;
    assert_complete_and_in_order(&s, &each(&tasks, 25));
    assert!(
        s.batches > 0 && s.messages < s.reports.len() / 2,
        "reports handed in together share messages: {} messages, {} batches, {} reports",
        s.messages,
        s.batches,
        s.reports.len()
    );
    assert!(s.largest_batch <= 256, "batches are capped");

    // A lone report, with nothing in flight, goes at once as a plain message.
    let task = TaskId::new();
    assert!(
        tokio::time::timeout(WAIT, reporter.send(chunk(task, 0, "alone".into()))).await?,
        "stored"
    );
    let s = stored(&b).await?;
    assert_eq!(s.kinds.last(), Some(&false), "a lone report is not a batch");
    assert_eq!(s.reports.last().map(|r| r.0), Some(task));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_too_large_for_a_batch_goes_alone_between_batches() -> anyhow::Result<()> {
    let b = broker().await?;
    let reporter = Reporter::new(b.js.clone(), &b.config, CancellationToken::new());
    let big_task = TaskId::new();
    let (small, big) = tokio::join!(send_all(&reporter, 50, 10), async {
        // 600 KiB: more than a batch may hold, less than the broker's 1 MiB limit.
        let line = "x".repeat(600 * 1024);
        let mut stored = Vec::new();
        for n in 0..3 {
            stored.push(reporter.send(chunk(big_task, n, line.clone())).await);
        }
        stored
    });
    assert_eq!(big, [true, true, true]);
    let s = stored(&b).await?;
    let mut expected = each(&small, 10);
    expected.push((big_task, 3));
    assert_complete_and_in_order(&s, &expected);
    assert!(
        s.reports.iter().filter(|r| r.0 == big_task).all(|r| !r.3),
        "each large report went alone"
    );
    assert!(s.batches > 0, "the small ones were still batched");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_sent_while_the_broker_restarts_are_stored_once_and_in_order() -> anyhow::Result<()>
{
    let mut b = broker().await?;
    let reporter = Reporter::new(b.js.clone(), &b.config, CancellationToken::new());
    // Some reports stored before the outage, the rest retried across it.
    let before = send_all(&reporter, 20, 5).await;
    b.nats.stop().await?;
    let during = {
        let reporter = reporter.clone();
        tokio::spawn(async move { send_all(&reporter, 50, 10).await })
    };
    // The outage itself: senders are retrying meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.nats.restart().await?;
    let during = tokio::time::timeout(WAIT, during).await??;
    let s = stored(&b).await?;
    let mut expected = each(&before, 5);
    expected.extend(each(&during, 10));
    assert_complete_and_in_order(&s, &expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_shutdown_a_report_the_broker_cannot_store_is_given_up() -> anyhow::Result<()> {
    let mut b = broker().await?;
    let shutdown = CancellationToken::new();
    let reporter = Reporter::new(b.js.clone(), &b.config, shutdown.clone());
    b.nats.stop().await?;
    shutdown.cancel();
    let task = TaskId::new();
    let stored = tokio::time::timeout(WAIT, reporter.send(chunk(task, 0, "late".into()))).await?;
    assert!(!stored, "not stored, and the sender is told so");
    Ok(())
}
