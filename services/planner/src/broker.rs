//! JetStream set-up: the task work queue with one durable pull consumer per pool, filtered on
//! exactly that pool's subject (nats-server 2.9 ignores `filter_subjects`), and the results
//! stream the planner consumes, and the event feed's stream it publishes its log to. Every
//! stream is kept on as many servers as [`StreamReplicas`] resolves to for the broker found:
//! one on a single server, three on a cluster.

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
    #[error("cannot read the task stream's replica count: {0}")]
    Replicas(String),
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
            BrokerError::Replicas(_) => false,
        };
        if answered {
            BrokerFailure::Refused
        } else {
            BrokerFailure::Unavailable
        }
    }
}

/// How many servers keep a copy of each of the planner's streams (`--stream-replicas`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamReplicas {
    /// One on a single server, [`CLUSTER_REPLICAS`] on a cluster (the server's INFO names
    /// its cluster).
    #[default]
    Auto,
    /// This many (1 to [`MAX_REPLICAS`]).
    Fixed(usize),
}

/// Replicas of each stream on a JetStream cluster: a majority (two of three) keeps a stream
/// writable and its acknowledged messages through the loss of any one server.
pub const CLUSTER_REPLICAS: usize = 3;
/// The most replicas JetStream keeps of a stream.
pub const MAX_REPLICAS: usize = 5;

impl std::str::FromStr for StreamReplicas {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "auto" {
            return Ok(StreamReplicas::Auto);
        }
        match s.parse::<usize>() {
            Ok(n) if (1..=MAX_REPLICAS).contains(&n) => Ok(StreamReplicas::Fixed(n)),
            _ => Err(format!(
                "{s:?} is neither `auto` nor a replica count from 1 to {MAX_REPLICAS}"
            )),
        }
    }
}

impl std::fmt::Display for StreamReplicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamReplicas::Auto => f.write_str("auto"),
            StreamReplicas::Fixed(n) => write!(f, "{n}"),
        }
    }
}

impl StreamReplicas {
    /// The replica count for the server `info` describes, and why, in words for the log.
    pub fn resolve(self, info: &async_nats::ServerInfo) -> (usize, String) {
        match (self, &info.cluster) {
            (StreamReplicas::Fixed(n), _) => (n, format!("R{n}, as --stream-replicas says")),
            (StreamReplicas::Auto, Some(cluster)) if !cluster.is_empty() => (
                CLUSTER_REPLICAS,
                format!(
                    "R{CLUSTER_REPLICAS}: server \"{}\" is a node of the JetStream cluster \
                     \"{cluster}\", so each stream is kept on {CLUSTER_REPLICAS} servers and \
                     survives the loss of one (--stream-replicas sets another count)",
                    info.server_name
                ),
            ),
            (StreamReplicas::Auto, _) => (
                1,
                format!(
                    "R1: server \"{}\" is a single server, so each stream is kept once; \
                     nats-server 2.9 syncs its file store to disk every 60 s, so a crash of \
                     its host can lose the last minute of acknowledged tasks and reports. Run \
                     a 3-node cluster (README, \"Containers\") to keep every stream on 3 servers",
                    info.server_name
                ),
            ),
        }
    }
}

/// Where one stream is kept: its replica count, and on a cluster its leader and the other
/// servers (as the broker reported them just after the set-up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub stream: String,
    pub replicas: usize,
    pub leader: Option<String>,
    pub others: Vec<String>,
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} R{}", self.stream, self.replicas)?;
        if let Some(leader) = &self.leader {
            write!(f, " (leader {leader}")?;
            if !self.others.is_empty() {
                write!(f, ", replicas {}", self.others.join(", "))?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

fn placement(info: &stream::Info) -> Placement {
    let cluster = info.cluster.as_ref();
    Placement {
        stream: info.config.name.clone(),
        replicas: info.config.num_replicas.max(1),
        leader: cluster.and_then(|c| c.leader.clone()),
        others: cluster
            .map(|c| c.replicas.iter().map(|p| p.name.clone()).collect())
            .unwrap_or_default(),
    }
}

/// The replica count of the task stream, which the planner sets up first: the event feed's
/// stream and the package feed's bucket are kept as safely as the tasks.
///
/// # Errors
/// The stream cannot be read (e.g. while a cluster elects its leader): never guessed, since
/// a guess of 1 would have the caller scale a replicated stream down.
pub async fn task_stream_replicas(
    js: &jetstream::Context,
    subjects: &Subjects,
) -> Result<usize, BrokerError> {
    let mut stream = js
        .get_stream(subjects.tasks_stream())
        .await
        .map_err(BrokerError::TaskStream)?;
    let info = stream
        .info()
        .await
        .map_err(|e| BrokerError::Replicas(e.to_string()))?;
    Ok(info.config.num_replicas.max(1))
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
/// `shoal.events.>`, direct gets allowed (an integrator reads one frame of records by its
/// stream sequence), and a short de-duplication window ([`EVENTS_DUPLICATE_WINDOW`]):
/// exactness comes from each publish expecting the stream's last sequence, and the publisher
/// resumes after the stream's last frame, so the window only answers a publish retried at
/// once as a duplicate; a long one would make the broker remember every id of minutes of
/// frames.
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
        num_replicas: task_stream_replicas(js, subjects).await?,
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
        (
            c.max_age,
            c.max_bytes,
            c.duplicate_window,
            c.allow_direct,
            c.num_replicas.max(1),
        ) == (
            config.max_age,
            config.max_bytes,
            config.duplicate_window,
            config.allow_direct,
            config.num_replicas,
        )
    });
    if !same {
        js.update_stream(config).await.map_err(refused)?;
    }
    Ok(())
}

/// Creates the task and result streams on a single server (one replica) if they do not
/// exist; see [`ensure_streams_replicated`].
///
/// # Errors
/// The broker refused or did not answer.
pub async fn ensure_streams(
    js: &jetstream::Context,
    subjects: &Subjects,
    task_window: Duration,
) -> Result<(), BrokerError> {
    ensure_streams_replicated(js, subjects, task_window, 1)
        .await
        .map(|_| ())
}

/// Creates the task and result streams, each kept on `replicas` servers, if they do not
/// exist, and the planner's results consumer (which follows its stream's replicas). The
/// task stream remembers message ids for `task_window` (see
/// [`crate::signing::Signer::replay_window`]); an existing stream is updated to that window
/// and replica count (a cluster moves the copies). Where each stream is kept, as the broker
/// reports it.
///
/// # Errors
/// The broker refused (a replica count the broker cannot keep: more than its servers, or
/// more than one on a single server) or did not answer.
pub async fn ensure_streams_replicated(
    js: &jetstream::Context,
    subjects: &Subjects,
    task_window: Duration,
    replicas: usize,
) -> Result<Vec<Placement>, BrokerError> {
    let tasks = stream::Config {
        name: subjects.tasks_stream(),
        description: Some("shoal task queue: one subject and one consumer per pool".into()),
        subjects: vec![subjects.tasks_all()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: task_window,
        num_replicas: replicas,
        ..Default::default()
    };
    let results = stream::Config {
        name: subjects.results_stream(),
        description: Some("shoal worker reports to the planner".into()),
        subjects: vec![subjects.results_all()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: replicas,
        ..Default::default()
    };
    let mut placements = Vec::new();
    let mut results_stream = None;
    for config in [tasks, results] {
        let name = config.name.clone();
        let refused = |cause| BrokerError::CreateStream {
            stream: name.clone(),
            cause,
        };
        let mut stream = js
            .get_or_create_stream(config.clone())
            .await
            .map_err(refused)?;
        let now = stream
            .info()
            .await
            .map(|i| (i.config.duplicate_window, i.config.num_replicas.max(1)))
            .ok();
        if now != Some((config.duplicate_window, replicas)) {
            js.update_stream(config).await.map_err(refused)?;
        }
        if let Ok(info) = stream.info().await {
            placements.push(placement(info));
        }
        results_stream = Some(stream);
    }
    let Some(results) = results_stream else {
        return Ok(placements);
    };
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
    Ok(placements)
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
