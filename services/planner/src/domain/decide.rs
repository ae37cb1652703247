//! Commands and the events they produce, or why they are refused. [`decide`] only
//! dispatches: each command is decided by its aggregate's module (`pool`, `target`,
//! `deployment`, `task`, `worker`, `token`, `session`, `package`, `report`).

use super::state::State;
use super::{
    audit, deployment, idempotency, package, pool, report, session, target, task, token, webhook,
    worker,
};
use shoal_shared::auth::{Actor, Role};
use shoal_shared::events::{CheckTrigger, Event};
use shoal_shared::messages::WorkerMessage;
use shoal_shared::secret::PoolKey;
use shoal_shared::{
    CheckId, DeploymentId, DeploymentSpec, EnvironmentName, EventId, HealthCheck, Pool, PoolName,
    RoleName, Target, TargetKind, TargetName, TaskId, Timestamp, TokenName, WorkerName,
};

/// Limits of a step, checked when a deployment is parsed (`shoal_shared::step`).
pub use shoal_shared::step::{MAX_RETRIES, MAX_STEP_BYTES, SHELLS};

/// What the planner is asked to do. Every change of state goes through one of these.
#[derive(Debug, Clone)]
pub enum Command {
    /// Registers the global default pool if the log does not have it yet.
    EnsureDefaultPool,
    RegisterPool(Pool),
    /// Sets (or rotates) the public key a pool's sensitive variables are sealed to.
    SetPoolKey {
        pool: PoolName,
        key: PoolKey,
    },
    RegisterTarget(Target),
    UpdateTarget {
        name: TargetName,
        update: TargetUpdate,
    },
    /// Removes a target no unfinished deployment uses.
    RemoveTarget(TargetName),
    /// Removes a pool nothing uses. `online`: the pool's workers online now, from the
    /// caller's liveness view (heartbeats are not in the log, so the core cannot know).
    RemovePool {
        name: PoolName,
        online: Vec<WorkerName>,
    },
    CreateDeployment {
        id: DeploymentId,
        spec: DeploymentSpec,
    },
    /// `inner`, once per idempotency key: the same request with the key again is answered
    /// with what the first made, another request with it is refused. `now`: keys expire.
    Once {
        key: shoal_shared::events::IdempotencyKey,
        now: Timestamp,
        inner: Box<Command>,
    },
    /// The broker stored this task attempt (at `stream_seq`, when known).
    MarkDispatched {
        deployment: DeploymentId,
        task: TaskId,
        attempt: u32,
        stream_seq: Option<u64>,
    },
    /// Cancels a deployment: queued tasks never start, running ones are told to stop.
    CancelDeployment {
        id: DeploymentId,
        reason: Option<String>,
    },
    /// The backoff of a failed attempt has passed: plan the next one.
    RetryDue {
        task: TaskId,
        attempt: u32,
    },
    /// Workers had [`CANCEL_GRACE_SECS`] to confirm that a cancelled deployment's tasks
    /// stopped; whatever still runs is given up on.
    CancelGraceExpired {
        deployment: DeploymentId,
    },
    /// The planner stopped (`online: false`) or started hearing a worker's heartbeats;
    /// `last_seen`: when it last heard one.
    WorkerPresence {
        worker: WorkerName,
        online: bool,
        last_seen: Option<Timestamp>,
    },
    /// Maintenance: a worker stops taking tasks (`drain`) or takes them again.
    DrainWorker {
        worker: WorkerName,
        drain: bool,
    },
    /// Check a target's health on a worker of its pool, unless a check already on its way
    /// to that pool can still answer. `at` is now; the check must be answered within
    /// `deadline_secs` plus its probe's timeout.
    CheckTarget {
        /// The id of the check if a new one is planned.
        check: CheckId,
        target: TargetName,
        trigger: CheckTrigger,
        at: Timestamp,
        deadline_secs: u64,
    },
    /// A check's deadline passed: if it is still unanswered, the target is `unavailable`.
    CheckDeadline {
        target: TargetName,
        check: CheckId,
    },
    /// A new API token, given as the SHA-256 (hex) of its value.
    CreateToken {
        name: TokenName,
        role: Role,
        hash: String,
        created_by: Actor,
    },
    /// The first admin token, made only while the log has no token at all.
    BootstrapAdmin {
        hash: String,
    },
    /// An API token stops working.
    RevokeToken(TokenName),
    /// A dashboard login at `now`: session `id` for the token whose SHA-256 (hex) is
    /// `token_hash`, lasting at most until `ends_by`.
    StartSession {
        id: String,
        token_hash: String,
        now: Timestamp,
        ends_by: Timestamp,
    },
    /// A dashboard logout.
    EndSession(String),
    /// A package version whose chunks and manifest are stored in the feed.
    RecordPackage {
        manifest: shoal_shared::package::Manifest,
        manifest_sha256: shoal_shared::package::Sha256,
        /// Versions of the package to keep (`--package-retention`); 0: every one.
        keep: u32,
    },
    /// A package version leaves the feed.
    RemovePackage {
        id: shoal_shared::PackageId,
        version: semver::Version,
    },
    /// The planner signed that record `seq` of its log has `hash` (an audit head).
    RecordHeadSignature {
        seq: u64,
        hash: [u8; 32],
        key_id: String,
        signature: Vec<u8>,
    },
    /// An admin (re)made an integrator's consumer of the event feed.
    RecordFeedConsumer {
        integrator: String,
        consumer: String,
        after: u64,
        filter: Option<String>,
    },
    CreateWebhook(super::webhook::NewWebhook),
    /// A delivery attempt of record `seq` to a webhook, and how it went.
    RecordWebhookAttempt {
        name: TokenName,
        seq: u64,
        attempt: u32,
        outcome: super::webhook::Attempt,
    },
    /// Deliveries to a paused webhook start again (from the record it gave up on), or the
    /// webhook goes.
    ResumeWebhook(TokenName),
    RemoveWebhook(TokenName),
    /// A fact reported by a worker.
    WorkerReport(WorkerMessage),
    /// A message that was refused (undecodable, on the wrong subject, claiming another
    /// sender, or a report the core refused); recorded so nothing is lost. The id makes a
    /// redelivered copy a duplicate. `claimed`: who the message said it was from.
    RejectMessage {
        id: EventId,
        subject: String,
        reason: String,
        bytes: Vec<u8>,
        claimed: Option<String>,
    },
    /// Refusals on `subject` past the ones recorded in full in a minute, only counted.
    CountRejections {
        subject: String,
        count: u64,
        first_at: Timestamp,
        last_at: Timestamp,
    },
}

impl Command {
    /// The id of the fact this command records, when it comes from outside and may arrive
    /// more than once; the writer drops commands whose id is already in the log.
    pub fn fact_id(&self) -> Option<EventId> {
        match self {
            Command::WorkerReport(m) => Some(m.event_id),
            Command::RejectMessage { id, .. } => Some(*id),
            _ => None,
        }
    }
}

/// A change to a target; `None` leaves a field as it is, `Some(None)` clears an optional one.
#[derive(Debug, Clone, Default)]
pub struct TargetUpdate {
    pub kind: Option<TargetKind>,
    pub environment: Option<EnvironmentName>,
    pub roles: Option<Vec<RoleName>>,
    pub endpoint: Option<Option<String>>,
    pub default_pool: Option<Option<PoolName>>,
    pub health_check: Option<Option<HealthCheck>>,
    pub health_interval_secs: Option<Option<u64>>,
}

/// Why a command was refused; tells the caller what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The input is wrong (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// The thing does not exist (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The request clashes with the current state (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// The request was made before with the same idempotency key: what it made, which is
    /// the answer again.
    #[error("the request was made before: it made {0}")]
    Replayed(String),
}

/// An event to append, with its id (a worker's own id for reported facts).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub id: EventId,
    pub event: Event,
}

impl NewEvent {
    /// An event with a fresh id.
    pub fn new(event: Event) -> NewEvent {
        NewEvent {
            id: EventId::new(),
            event,
        }
    }
}

/// How long workers have to confirm that a cancelled deployment's running tasks stopped.
pub const CANCEL_GRACE_SECS: u64 = 30;

/// Turns a command into events, checking it against the current state.
///
/// # Errors
/// A [`Rejection`] saying what is wrong and what is known.
pub fn decide(
    state: &State,
    default_pool: &PoolName,
    cmd: &Command,
) -> Result<Vec<NewEvent>, Rejection> {
    match cmd {
        Command::EnsureDefaultPool => Ok(pool::ensure_default(state, default_pool)),
        Command::RegisterPool(p) => pool::register(state, p),
        Command::SetPoolKey { pool, key } => pool::set_key(state, pool, key),
        Command::RegisterTarget(t) => target::register(state, t),
        Command::UpdateTarget { name, update } => target::update(state, name, update),
        Command::RemoveTarget(name) => target::remove(state, name),
        Command::RemovePool { name, online } => pool::remove(state, default_pool, name, online),
        Command::CreateDeployment { id, spec } => {
            deployment::create(state, default_pool, *id, spec)
        }
        Command::Once { key, now, inner } => {
            idempotency::once(state, key, *now, || decide(state, default_pool, inner))
        }
        Command::MarkDispatched {
            deployment,
            task,
            attempt,
            stream_seq,
        } => Ok(task::mark_dispatched(
            state,
            *deployment,
            *task,
            *attempt,
            *stream_seq,
        )),
        Command::CancelDeployment { id, reason } => deployment::cancel(state, *id, reason.as_ref()),
        Command::RetryDue { task, attempt } => Ok(task::retry_due(state, *task, *attempt)),
        Command::CancelGraceExpired { deployment } => {
            Ok(deployment::grace_expired(state, *deployment))
        }
        Command::CheckTarget {
            check,
            target,
            trigger,
            at,
            deadline_secs,
        } => target::check(
            state,
            default_pool,
            *check,
            target,
            *trigger,
            *at,
            *deadline_secs,
        ),
        Command::CheckDeadline { target, check } => Ok(target::deadline(state, target, *check)),
        Command::DrainWorker { worker, drain } => worker::drain(state, worker, *drain),
        Command::WorkerPresence {
            worker,
            online,
            last_seen,
        } => Ok(worker::presence(state, worker, *online, *last_seen)),
        Command::CreateToken {
            name,
            role,
            hash,
            created_by,
        } => token::create(state, name, *role, hash, created_by),
        Command::BootstrapAdmin { hash } => token::bootstrap(state, hash),
        Command::RevokeToken(name) => token::revoke(state, name),
        Command::StartSession {
            id,
            token_hash,
            now,
            ends_by,
        } => session::start(state, id, token_hash, (*now, *ends_by)),
        Command::EndSession(id) => Ok(session::end(state, id)),
        Command::RecordPackage {
            manifest,
            manifest_sha256,
            keep,
        } => package::record(state, manifest, *manifest_sha256, *keep),
        Command::RemovePackage { id, version } => package::remove(state, id, version),
        Command::RecordHeadSignature {
            seq,
            hash,
            key_id,
            signature,
        } => Ok(audit::head_signed(*seq, hash, key_id, signature)),
        Command::RecordFeedConsumer {
            integrator,
            consumer,
            after,
            filter,
        } => Ok(audit::feed_consumer_set(
            integrator, consumer, *after, filter,
        )),
        Command::CreateWebhook(w) => webhook::create(state, w),
        Command::RecordWebhookAttempt {
            name,
            seq,
            attempt,
            outcome,
        } => Ok(webhook::attempt(state, name, *seq, *attempt, outcome)),
        Command::ResumeWebhook(name) => webhook::resume_or_remove(state, name, false),
        Command::RemoveWebhook(name) => webhook::resume_or_remove(state, name, true),
        Command::WorkerReport(msg) => Ok(vec![report::report(state, msg)?]),
        Command::RejectMessage {
            id,
            subject,
            reason,
            bytes,
            claimed,
        } => Ok(vec![NewEvent {
            id: *id,
            event: rejected(subject, reason, bytes, claimed.as_deref()),
        }]),
        Command::CountRejections {
            subject,
            count,
            first_at,
            last_at,
        } => Ok(vec![NewEvent::new(Event::RejectionsCounted {
            subject: bounded_subject(subject),
            count: *count,
            first_at: *first_at,
            last_at: *last_at,
        })]),
    }
}

/// Bytes of a refused message kept in its record, for diagnosis.
pub const HEAD_BYTES: usize = 256;
/// Characters of a refused message's subject (or reason, or claim) kept in its record: a
/// subject can be as long as the broker allows, and a flood must not write kilobytes each.
pub const TEXT_CHARS: usize = 256;

/// The event recording a message that was refused, with its first bytes.
pub fn rejected(subject: &str, reason: &str, bytes: &[u8], claimed: Option<&str>) -> Event {
    Event::MessageRejected {
        subject: bounded_subject(subject),
        reason: bounded(reason, 4 * TEXT_CHARS),
        size: bytes.len() as u64,
        head: bytes[..bytes.len().min(HEAD_BYTES)].to_vec(),
        claimed: claimed.map(|c| bounded(c, TEXT_CHARS)),
    }
}

/// A subject as recorded: at most [`TEXT_CHARS`] characters.
pub fn bounded_subject(subject: &str) -> String {
    bounded(subject, TEXT_CHARS)
}

/// At most `max` characters of `text`, with `…` when cut.
fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}

/// Items joined by `, ` for a message, or `none`.
pub(super) fn join<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let v: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(", ")
    }
}
