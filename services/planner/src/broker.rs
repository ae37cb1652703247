//! JetStream set-up: the task work queue with one durable pull consumer per pool, filtered on
//! exactly that pool's subject (nats-server 2.9 ignores `filter_subjects`), and the results
//! stream the planner consumes.

use async_nats::jetstream::{self, consumer, stream};
use shoal_shared::PoolName;
use shoal_shared::subjects::Subjects;
use std::time::Duration;

/// The same for worker reports not acknowledged by a planner that died.
pub const RESULT_ACK_WAIT: Duration = Duration::from_secs(10);
/// JetStream de-duplication window for task and result messages.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Creates the task and result streams if they do not exist.
///
/// # Errors
/// The broker refused or did not answer.
pub async fn ensure_streams(js: &jetstream::Context, subjects: &Subjects) -> anyhow::Result<()> {
    js.get_or_create_stream(stream::Config {
        name: subjects.tasks_stream(),
        description: Some("shoal task queue: one subject and one consumer per pool".into()),
        subjects: vec![subjects.tasks_all()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("cannot create stream {}: {e}", subjects.tasks_stream()))?;
    let results = js
        .get_or_create_stream(stream::Config {
            name: subjects.results_stream(),
            description: Some("shoal worker reports to the planner".into()),
            subjects: vec![subjects.results_all()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("cannot create stream {}: {e}", subjects.results_stream()))?;
    results
        .get_or_create_consumer(
            &subjects.results_consumer(),
            consumer::pull::Config {
                durable_name: Some(subjects.results_consumer()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: RESULT_ACK_WAIT,
                max_ack_pending: 20_000,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the planner's results consumer: {e}"))?;
    Ok(())
}

/// Creates the durable consumer of a pool's queue, or brings an existing one to this
/// configuration (a changed ack wait takes effect at once).
///
/// # Errors
/// The broker refused or did not answer.
pub async fn ensure_pool_consumer(
    js: &jetstream::Context,
    subjects: &Subjects,
    pool: &PoolName,
    ack_wait: Duration,
) -> anyhow::Result<()> {
    let stream = js
        .get_stream(subjects.tasks_stream())
        .await
        .map_err(|e| anyhow::anyhow!("task stream unavailable: {e}"))?;
    let name = subjects.pool_consumer(pool);
    let config = consumer::pull::Config {
        durable_name: Some(name.clone()),
        description: Some(format!("tasks of pool {pool}")),
        filter_subject: subjects.tasks(pool),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        max_ack_pending: 10_000,
        ..Default::default()
    };
    // On nats-server 2.9 a create with the name of an existing consumer updates it.
    stream
        .create_consumer(config)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the queue consumer of pool {pool}: {e}"))?;
    Ok(())
}

/// Like [`ensure_pool_consumer`], retrying with backoff until it succeeds or `shutdown`: a
/// pool registered while the broker is away gets its queue once the broker is back.
pub async fn ensure_pool_consumer_retrying(
    js: jetstream::Context,
    subjects: Subjects,
    pool: PoolName,
    ack_wait: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut delay = Duration::from_millis(500);
    loop {
        match ensure_pool_consumer(&js, &subjects, &pool, ack_wait).await {
            Ok(()) => {
                tracing::info!(pool = %pool, "queue consumer of the pool is ready");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, pool = %pool, "queue consumer not created yet; retrying")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}
