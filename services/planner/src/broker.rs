//! JetStream set-up: the task work queue with one durable pull consumer per pool, filtered on
//! exactly that pool's subject (nats-server 2.9 ignores `filter_subjects`), and the results
//! stream the planner consumes, and the event feed's stream it publishes its log to.

use async_nats::jetstream::context::{CreateStreamError, CreateStreamErrorKind, GetStreamError};
use async_nats::jetstream::stream::{ConsumerError, ConsumerErrorKind};
use async_nats::jetstream::{self, consumer, stream};
use shoal_shared::PoolName;
use shoal_shared::subjects::Subjects;
use std::time::Duration;

/// How long a worker report may go unacknowledged before it is redelivered: a planner that
/// died while appending it is noticed this long after.
pub const RESULT_ACK_WAIT: Duration = Duration::from_secs(10);
/// JetStream de-duplication window for task and result messages.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Why the broker's set-up failed; each variant keeps the broker's own error. All are
/// infrastructure failures: the caller retries with backoff, and [`BrokerError::kind`] says
/// whether the broker did not answer or refused.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot create stream {stream}: {cause}")]
    CreateStream {
        stream: String,
        cause: CreateStreamError,
    },
    #[error("cannot create the planner's results consumer: {0}")]
    ResultsConsumer(ConsumerError),
    #[error("task stream unavailable: {0}")]
    TaskStream(GetStreamError),
    #[error("cannot create the queue consumer of pool {pool}: {cause}")]
    PoolConsumer {
        pool: PoolName,
        cause: ConsumerError,
    },
}

// The messages include the broker's error, so it is not also a `source` (an error chain
// would print it twice); it stays in the variant for callers that look at its kind.

/// What a [`BrokerError`] tells the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerFailure {
    /// No answer: the broker is down, JetStream is off, or the request timed out. Waiting
    /// helps.
    Unavailable,
    /// The broker answered no (an existing stream or consumer of another configuration, a
    /// missing stream, a refused permission): an operator must act, or the planner must set
    /// up what is missing first.
    Refused,
}

impl BrokerError {
    /// Whether the broker did not answer or refused.
    pub fn kind(&self) -> BrokerFailure {
        let answered = match self {
            BrokerError::CreateStream { cause, .. } => matches!(
                cause.kind(),
                CreateStreamErrorKind::JetStream(_)
                    | CreateStreamErrorKind::NotFound
                    | CreateStreamErrorKind::EmptyStreamName
                    | CreateStreamErrorKind::InvalidStreamName
                    | CreateStreamErrorKind::DomainAndExternalSet
            ),
            BrokerError::ResultsConsumer(cause) | BrokerError::PoolConsumer { cause, .. } => {
                !matches!(
                    cause.kind(),
                    ConsumerErrorKind::TimedOut | ConsumerErrorKind::Request
                )
            }
            BrokerError::TaskStream(cause) => !matches!(
                cause.kind(),
                jetstream::context::GetStreamErrorKind::Request
            ),
        };
        if answered {
            BrokerFailure::Refused
        } else {
            BrokerFailure::Unavailable
        }
    }
}

/// The event feed's de-duplication window (see [`ensure_events_stream`]).
pub const EVENTS_DUPLICATE_WINDOW: Duration = Duration::from_secs(5);

/// How the event feed's stream (`SHOAL_EVENTS`) keeps events: the oldest go once either
/// limit is passed (zero: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventsRetention {
    pub max_age: Duration,
    pub max_bytes: u64,
}

impl Default for EventsRetention {
    /// 30 days, 1 GiB.
    fn default() -> Self {
        EventsRetention {
            max_age: Duration::from_secs(30 * 24 * 3600),
            max_bytes: 1 << 30,
        }
    }
}

/// Creates the event feed's stream, or brings an existing one to `retention`: limits
/// retention (every integrator reads every event; none is removed by being read), subjects
/// `shoal.events.>`, direct gets allowed (an integrator reads one record by its stream
/// sequence), and a short de-duplication window ([`EVENTS_DUPLICATE_WINDOW`]): exactness
/// comes from each publish expecting the stream's last sequence, and the publisher resumes
/// after the stream's last record, so the window only answers a publish retried at once as
/// a duplicate; a long one would make the broker remember every id of minutes of records.
///
/// # Errors
/// The broker refused or did not answer.
pub async fn ensure_events_stream(
    js: &jetstream::Context,
    subjects: &Subjects,
    retention: EventsRetention,
) -> Result<(), BrokerError> {
    let window = if retention.max_age.is_zero() {
        EVENTS_DUPLICATE_WINDOW
    } else {
        EVENTS_DUPLICATE_WINDOW.min(retention.max_age)
    };
    let config = stream::Config {
        name: subjects.events_stream(),
        description: Some(
            "shoal event feed: every record of the planner's event log, in log order".into(),
        ),
        subjects: vec![subjects.events_all()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        max_age: retention.max_age,
        max_bytes: i64::try_from(retention.max_bytes)
            .ok()
            .filter(|b| *b > 0)
            .unwrap_or(-1),
        duplicate_window: window,
        allow_direct: true,
        ..Default::default()
    };
    let refused = |cause| BrokerError::CreateStream {
        stream: subjects.events_stream(),
        cause,
    };
    let mut stream = js
        .get_or_create_stream(config.clone())
        .await
        .map_err(refused)?;
    let now = stream.info().await.map(|i| i.config.clone()).ok();
    let same = now.is_some_and(|c| {
        (c.max_age, c.max_bytes, c.duplicate_window, c.allow_direct)
            == (
                config.max_age,
                config.max_bytes,
                config.duplicate_window,
                config.allow_direct,
            )
    });
    if !same {
        js.update_stream(config).await.map_err(refused)?;
    }
    Ok(())
}

/// Creates the task and result streams if they do not exist. The task stream remembers message ids for `task_window` (see
/// [`crate::signing::Signer::replay_window`]); an existing stream is updated to it.
///
/// # Errors
/// The broker refused or did not answer.
pub async fn ensure_streams(
    js: &jetstream::Context,
    subjects: &Subjects,
    task_window: Duration,
) -> Result<(), BrokerError> {
    let tasks = stream::Config {
        name: subjects.tasks_stream(),
        description: Some("shoal task queue: one subject and one consumer per pool".into()),
        subjects: vec![subjects.tasks_all()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: task_window,
        ..Default::default()
    };
    let refused = |cause| BrokerError::CreateStream {
        stream: subjects.tasks_stream(),
        cause,
    };
    let mut stream = js
        .get_or_create_stream(tasks.clone())
        .await
        .map_err(refused)?;
    let window = stream.info().await.map(|i| i.config.duplicate_window).ok();
    if window != Some(task_window) {
        js.update_stream(tasks).await.map_err(refused)?;
    }
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
        .map_err(|cause| BrokerError::CreateStream {
            stream: subjects.results_stream(),
            cause,
        })?;
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
        .map_err(BrokerError::ResultsConsumer)?;
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
) -> Result<(), BrokerError> {
    let stream = js
        .get_stream(subjects.tasks_stream())
        .await
        .map_err(BrokerError::TaskStream)?;
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
        .map_err(|cause| BrokerError::PoolConsumer {
            pool: pool.clone(),
            cause,
        })?;
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

/// Deletes the queue consumer of a removed pool, retrying with backoff until it is gone,
/// the broker says it does not exist, or `shutdown`. Messages still in the pool's subject
/// stay in the stream (nothing of an unused pool should be there: checks past their deadline
/// are taken off the queue) and would reach a consumer made for a pool of the same name.
pub async fn remove_pool_consumer_retrying(
    js: jetstream::Context,
    subjects: Subjects,
    pool: PoolName,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let name = subjects.pool_consumer(&pool);
    let mut delay = Duration::from_millis(500);
    loop {
        let deleted = match js.get_stream(subjects.tasks_stream()).await {
            Ok(stream) => stream
                .delete_consumer(&name)
                .await
                .map(|_| ())
                .map_err(|e| match e.kind() {
                    stream::ConsumerErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND =>
                    {
                        None
                    }
                    _ => Some(e.to_string()),
                }),
            Err(e) => Err(Some(e.to_string())),
        };
        match deleted {
            Ok(()) | Err(None) => {
                tracing::info!(pool = %pool, "queue consumer of the removed pool is gone");
                return;
            }
            Err(Some(e)) => {
                tracing::warn!(error = %e, pool = %pool, "queue consumer of a removed pool not deleted yet; retrying")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}
