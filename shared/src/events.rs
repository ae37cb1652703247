//! The facts recorded in the event log, and the envelope each is stored in.
//!
//! Every event type carries a schema version. Events are named in the past tense; the log
//! stores them MessagePack-encoded inside an [`Envelope`] that chains to the previous record.

use crate::auth::{Actor, Role};
use crate::domain::{DeploymentSpec, DeploymentState, Outcome, OutputLine, StepState, Target};
use crate::health::{HealthCheck, HealthState};
use crate::ids::{CheckId, DeploymentId, EventId, TaskId};
use crate::names::{PackageId, PoolName, RegionName, TargetName, TokenName, WorkerName};
use crate::package::Manifest;
use crate::resolve::PoolRule;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// Why a health check ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckTrigger {
    /// The target's interval came round.
    Scheduled,
    /// Someone asked (`POST /api/targets/{name}/health-check`).
    OnDemand,
}

/// The routing decision for one task, made when the deployment is accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedTask {
    pub task: TaskId,
    pub target: Option<TargetName>,
    pub endpoint: Option<String>,
    pub pool: PoolName,
    pub rule: PoolRule,
}

/// The tasks of one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStep {
    pub tasks: Vec<PlannedTask>,
    /// The package version a `deploy_package` step was resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<crate::domain::ResolvedPackage>,
}

/// The idempotency key a request came with: `<who>/<key>` and a fingerprint of the request
/// (an HMAC under the planner's master key, hex: it can be compared, but not used to test
/// guesses of the request's sensitive values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyKey {
    pub key: String,
    pub request: String,
}

/// The name of every event type, as [`Event::event_type`] gives it.
pub const EVENT_TYPES: [&str; 47] = [
    "PoolRegistered",
    "TargetRegistered",
    "TargetUpdated",
    "TargetRemoved",
    "PoolRemoved",
    "PoolKeySet",
    "LogHeadSigned",
    "FeedConsumerSet",
    "IdempotencyKeyUsed",
    "WebhookCreated",
    "WebhookDelivered",
    "WebhookAttemptFailed",
    "WebhookPaused",
    "WebhookResumed",
    "WebhookRemoved",
    "WorkerWentOffline",
    "WorkerCameOnline",
    "TargetHealthChanged",
    "DeploymentCreated",
    "DeploymentStarted",
    "StepStarted",
    "TaskPlanned",
    "TaskDispatched",
    "TaskStarted",
    "TaskOutput",
    "TaskFinished",
    "TaskCancelled",
    "HealthCheckPlanned",
    "TargetHealthChecked",
    "HealthCheckUnavailable",
    "TargetSkipped",
    "DeploymentCancelRequested",
    "StepFinished",
    "DeploymentFinished",
    "WorkerJoined",
    "WorkerLeft",
    "WorkerDrainRequested",
    "WorkerResumed",
    "TokenCreated",
    "TokenRevoked",
    "SessionStarted",
    "SessionEnded",
    "PackagePushed",
    "PackageRemoved",
    "PackageAcquired",
    "MessageRejected",
    "RejectionsCounted",
];

/// Checks that each of `types` is an event type; the first that is not, named with the known
/// ones.
///
/// # Errors
/// A name that is no event type's.
pub fn check_types<S: AsRef<str>>(types: &[S]) -> Result<(), String> {
    match types.iter().find(|t| !EVENT_TYPES.contains(&t.as_ref())) {
        Some(bad) => Err(format!(
            "unknown event type \"{}\" (known: {})",
            bad.as_ref(),
            EVENT_TYPES.join(", ")
        )),
        None => Ok(()),
    }
}

/// Every fact shoal records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    PoolRegistered {
        pool: PoolName,
        region: Option<RegionName>,
        description: Option<String>,
    },
    TargetRegistered {
        target: Target,
    },
    /// The target's new definition, whole.
    TargetUpdated {
        target: Target,
    },
    /// The target is gone: no longer checked, chosen by deployments or listed. Its name
    /// may be registered again, as a new target.
    TargetRemoved {
        target: TargetName,
    },
    /// The public key the pool's sensitive variables are sealed to from now on (set or
    /// rotated); the pool's workers hold its secret key.
    PoolKeySet {
        pool: PoolName,
        key: crate::secret::PoolKey,
    },
    /// The pool is gone: no longer routed to, its queue consumer deleted. Its name may be
    /// registered again.
    PoolRemoved {
        pool: PoolName,
    },
    DeploymentCreated {
        deployment: DeploymentId,
        spec: DeploymentSpec,
        steps: Vec<PlannedStep>,
    },
    DeploymentStarted {
        deployment: DeploymentId,
    },
    StepStarted {
        deployment: DeploymentId,
        step: u32,
    },
    /// The outbox entry: this attempt is to be published to its pool's queue.
    TaskPlanned {
        deployment: DeploymentId,
        task: TaskId,
        attempt: u32,
        pool: PoolName,
        rule: PoolRule,
    },
    /// The broker stored the task message.
    TaskDispatched {
        deployment: DeploymentId,
        task: TaskId,
        attempt: u32,
        /// Where the broker stored the message, so a cancellation can remove it.
        #[serde(default)]
        stream_seq: Option<u64>,
    },
    TaskStarted {
        deployment: DeploymentId,
        task: TaskId,
        attempt: u32,
        /// Broker delivery of this attempt: a run; above 1 an earlier run was lost.
        #[serde(default)]
        delivery: u32,
        worker: WorkerName,
        pool: PoolName,
        at: Timestamp,
    },
    TaskOutput {
        deployment: DeploymentId,
        task: TaskId,
        attempt: u32,
        #[serde(default)]
        delivery: u32,
        worker: WorkerName,
        /// Index of the first line within this run's output.
        first_line: u64,
        lines: Vec<OutputLine>,
    },
    TaskFinished {
        deployment: DeploymentId,
        task: TaskId,
        attempt: u32,
        #[serde(default)]
        delivery: u32,
        worker: WorkerName,
        outcome: Outcome,
        exit_code: Option<i32>,
        reason: Option<String>,
        at: Timestamp,
    },
    /// The planner gave up on a running task of a cancelled deployment: no worker confirmed
    /// that it stopped.
    TaskCancelled {
        deployment: DeploymentId,
        task: TaskId,
        attempt: u32,
        reason: String,
    },
    /// Someone asked to cancel the deployment: queued tasks are cancelled now, running ones
    /// are told to stop.
    DeploymentCancelRequested {
        deployment: DeploymentId,
        reason: String,
    },
    StepFinished {
        deployment: DeploymentId,
        step: u32,
        state: StepState,
    },
    DeploymentFinished {
        deployment: DeploymentId,
        state: DeploymentState,
        reason: Option<String>,
    },
    WorkerJoined {
        worker: WorkerName,
        pool: PoolName,
        region: Option<RegionName>,
        slots: u32,
        version: String,
        at: Timestamp,
    },
    WorkerLeft {
        worker: WorkerName,
        pool: PoolName,
        reason: String,
        at: Timestamp,
    },
    /// A health check of a target was planned, routed like the target's steps without an
    /// explicit pool (its default pool, else the global default).
    HealthCheckPlanned {
        check: CheckId,
        target: TargetName,
        pool: PoolName,
        rule: PoolRule,
        probe: HealthCheck,
        trigger: CheckTrigger,
        deadline_at: Timestamp,
    },
    /// A worker ran a probe of the target.
    TargetHealthChecked {
        check: CheckId,
        target: TargetName,
        /// The `health_check` step task that ran it, if any.
        task: Option<TaskId>,
        worker: WorkerName,
        pool: PoolName,
        state: HealthState,
        reason: Option<String>,
        duration_ms: u64,
        at: Timestamp,
    },
    /// No worker of the pool ran the check before its deadline.
    HealthCheckUnavailable {
        check: CheckId,
        target: TargetName,
        pool: PoolName,
        reason: String,
    },
    /// A deployment leaves a target out from here on, because it is unhealthy
    /// (`unhealthy_targets: skip`).
    TargetSkipped {
        deployment: DeploymentId,
        target: TargetName,
        reason: String,
    },
    /// The worker is to take no new tasks (maintenance) until resumed.
    WorkerDrainRequested {
        worker: WorkerName,
        pool: PoolName,
    },
    WorkerResumed {
        worker: WorkerName,
        pool: PoolName,
    },
    /// The planner stopped hearing a worker's heartbeats: `last_seen` is the last one it
    /// received (`None`: none since the planner started).
    WorkerWentOffline {
        worker: WorkerName,
        pool: PoolName,
        last_seen: Option<Timestamp>,
    },
    /// A worker's heartbeats reach the planner again.
    WorkerCameOnline {
        worker: WorkerName,
        pool: PoolName,
    },
    /// A target's health changed: a check's answer (or its deadline passing unanswered,
    /// `unavailable`) made it `to`. `from`: `None` when it had never been checked.
    TargetHealthChanged {
        target: TargetName,
        check: CheckId,
        from: Option<HealthState>,
        to: HealthState,
    },
    /// The planner signed that record `seq` of its log has `hash` (the SHA-256 of its stored
    /// bytes, hex) with its key `key_id`: every record the chain links to it is vouched for
    /// by that key (see `audit`).
    LogHeadSigned {
        seq: u64,
        hash: String,
        key_id: String,
        /// Ed25519, hex.
        signature: String,
    },
    /// An integrator's durable consumer of the event feed was (re)made by an admin: it
    /// delivers the records after `after` (on `filter`, a subject of the feed, if set).
    FeedConsumerSet {
        integrator: String,
        consumer: String,
        after: u64,
        filter: Option<String>,
    },
    /// A webhook subscription: records of these types (all when empty), of deployments of
    /// these projects and environments (any when empty), are POSTed to `url`, signed with
    /// the secret (sealed), from the record after `after` on.
    WebhookCreated {
        name: TokenName,
        url: String,
        types: Vec<String>,
        projects: Vec<String>,
        environments: Vec<String>,
        secret: crate::secret::Sealed,
        after: u64,
    },
    /// A delivery of record `seq` to the webhook was answered 2xx.
    WebhookDelivered {
        name: TokenName,
        seq: u64,
        attempt: u32,
        status: u16,
    },
    /// A delivery failed; it is tried again after `retry_in_ms`.
    WebhookAttemptFailed {
        name: TokenName,
        seq: u64,
        attempt: u32,
        status: Option<u16>,
        error: String,
        retry_in_ms: u64,
    },
    /// The webhook gave up on record `seq` after `attempts` and is paused: nothing more is
    /// sent until it is resumed, then from that record on.
    WebhookPaused {
        name: TokenName,
        seq: u64,
        attempts: u32,
        reason: String,
    },
    WebhookResumed {
        name: TokenName,
    },
    WebhookRemoved {
        name: TokenName,
    },
    /// A request with an idempotency key made `made` (the stream of what it made, e.g.
    /// `deployment/<id>`, `target/<name>`): the same request with the key again gets that.
    IdempotencyKeyUsed {
        key: String,
        request: String,
        made: String,
    },
    /// An API token was made. Only the SHA-256 of the token (hex) is kept; the token itself
    /// was shown once, to whoever made it.
    TokenCreated {
        name: TokenName,
        role: Role,
        hash: String,
        created_by: Actor,
    },
    /// An API token no longer opens anything.
    TokenRevoked {
        name: TokenName,
        hash: String,
    },
    /// A dashboard login with token `token` opened session `session` (128 random bits in
    /// hex: not a credential, the cookie also carries a MAC only the planner can make). It
    /// lasts until a logout, or at most until `ends_by`.
    SessionStarted {
        token: TokenName,
        session: String,
        ends_by: Timestamp,
    },
    /// A dashboard session ended by a logout: its cookie, wherever a copy of it is, no longer
    /// opens anything.
    SessionEnded {
        token: TokenName,
        session: String,
    },
    /// A version of a package is in the feed: every chunk it names was stored first.
    PackagePushed {
        manifest: Manifest,
        /// SHA-256 of the manifest as stored in the feed (see `package::encode_manifest`).
        manifest_sha256: crate::package::Sha256,
    },
    /// A worker acquired a deploy_package task's package (see `package::Acquisition`).
    PackageAcquired {
        deployment: DeploymentId,
        task: TaskId,
        attempt: u32,
        delivery: u32,
        worker: WorkerName,
        pool: PoolName,
        acquired: crate::package::Acquisition,
        at: Timestamp,
    },
    /// A version of a package left the feed.
    PackageRemoved {
        id: PackageId,
        version: semver::Version,
    },
    /// A message on a shoal subject that could not be accepted; kept so nothing is lost.
    MessageRejected {
        subject: String,
        reason: String,
        size: u64,
        /// The first bytes of the message, for diagnosis.
        #[serde(with = "serde_bytes")]
        head: Vec<u8>,
        /// Who the message said it came from (e.g. `pool "eu-west", worker "w2"`), when it
        /// said and that is part of why it was refused; `None` in logs written before.
        #[serde(default)]
        claimed: Option<String>,
    },
    /// More messages on `subject` were refused in one minute than are recorded in full:
    /// these were only counted. A flood of bad messages costs one of these per subject and
    /// minute, not an event each.
    RejectionsCounted {
        subject: String,
        count: u64,
        first_at: Timestamp,
        last_at: Timestamp,
    },
}

impl Event {
    /// The event's type name, as recorded in the envelope.
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::PoolRegistered { .. } => "PoolRegistered",
            Event::TargetRegistered { .. } => "TargetRegistered",
            Event::TargetUpdated { .. } => "TargetUpdated",
            Event::TargetRemoved { .. } => "TargetRemoved",
            Event::PoolRemoved { .. } => "PoolRemoved",
            Event::PoolKeySet { .. } => "PoolKeySet",
            Event::LogHeadSigned { .. } => "LogHeadSigned",
            Event::FeedConsumerSet { .. } => "FeedConsumerSet",
            Event::IdempotencyKeyUsed { .. } => "IdempotencyKeyUsed",
            Event::WebhookCreated { .. } => "WebhookCreated",
            Event::WebhookDelivered { .. } => "WebhookDelivered",
            Event::WebhookAttemptFailed { .. } => "WebhookAttemptFailed",
            Event::WebhookPaused { .. } => "WebhookPaused",
            Event::WebhookResumed { .. } => "WebhookResumed",
            Event::WebhookRemoved { .. } => "WebhookRemoved",
            Event::WorkerWentOffline { .. } => "WorkerWentOffline",
            Event::WorkerCameOnline { .. } => "WorkerCameOnline",
            Event::TargetHealthChanged { .. } => "TargetHealthChanged",
            Event::DeploymentCreated { .. } => "DeploymentCreated",
            Event::DeploymentStarted { .. } => "DeploymentStarted",
            Event::StepStarted { .. } => "StepStarted",
            Event::TaskPlanned { .. } => "TaskPlanned",
            Event::TaskDispatched { .. } => "TaskDispatched",
            Event::TaskStarted { .. } => "TaskStarted",
            Event::TaskOutput { .. } => "TaskOutput",
            Event::TaskFinished { .. } => "TaskFinished",
            Event::TaskCancelled { .. } => "TaskCancelled",
            Event::HealthCheckPlanned { .. } => "HealthCheckPlanned",
            Event::TargetHealthChecked { .. } => "TargetHealthChecked",
            Event::HealthCheckUnavailable { .. } => "HealthCheckUnavailable",
            Event::TargetSkipped { .. } => "TargetSkipped",
            Event::DeploymentCancelRequested { .. } => "DeploymentCancelRequested",
            Event::StepFinished { .. } => "StepFinished",
            Event::DeploymentFinished { .. } => "DeploymentFinished",
            Event::WorkerJoined { .. } => "WorkerJoined",
            Event::WorkerLeft { .. } => "WorkerLeft",
            Event::WorkerDrainRequested { .. } => "WorkerDrainRequested",
            Event::WorkerResumed { .. } => "WorkerResumed",
            Event::TokenCreated { .. } => "TokenCreated",
            Event::TokenRevoked { .. } => "TokenRevoked",
            Event::SessionStarted { .. } => "SessionStarted",
            Event::SessionEnded { .. } => "SessionEnded",
            Event::PackagePushed { .. } => "PackagePushed",
            Event::PackageRemoved { .. } => "PackageRemoved",
            Event::PackageAcquired { .. } => "PackageAcquired",
            Event::MessageRejected { .. } => "MessageRejected",
            Event::RejectionsCounted { .. } => "RejectionsCounted",
        }
    }

    /// The schema version of this event type. Bump it when a type's fields change
    /// incompatibly, and teach the decoder the old shape.
    pub fn schema_version(&self) -> u16 {
        1
    }

    /// The deployment this event belongs to, if any.
    pub fn deployment(&self) -> Option<DeploymentId> {
        match self {
            Event::DeploymentCreated { deployment, .. }
            | Event::DeploymentStarted { deployment }
            | Event::StepStarted { deployment, .. }
            | Event::TaskPlanned { deployment, .. }
            | Event::TaskDispatched { deployment, .. }
            | Event::TaskStarted { deployment, .. }
            | Event::TaskOutput { deployment, .. }
            | Event::TaskFinished { deployment, .. }
            | Event::TaskCancelled { deployment, .. }
            | Event::TargetSkipped { deployment, .. }
            | Event::DeploymentCancelRequested { deployment, .. }
            | Event::StepFinished { deployment, .. }
            | Event::DeploymentFinished { deployment, .. }
            | Event::PackageAcquired { deployment, .. } => Some(*deployment),
            Event::PoolRegistered { .. }
            | Event::TargetRegistered { .. }
            | Event::TargetUpdated { .. }
            | Event::TargetRemoved { .. }
            | Event::PoolRemoved { .. }
            | Event::PoolKeySet { .. }
            | Event::WorkerJoined { .. }
            | Event::WorkerLeft { .. }
            | Event::WorkerDrainRequested { .. }
            | Event::WorkerResumed { .. }
            | Event::WorkerWentOffline { .. }
            | Event::WorkerCameOnline { .. }
            | Event::TargetHealthChanged { .. }
            | Event::LogHeadSigned { .. }
            | Event::FeedConsumerSet { .. }
            | Event::IdempotencyKeyUsed { .. }
            | Event::WebhookCreated { .. }
            | Event::WebhookDelivered { .. }
            | Event::WebhookAttemptFailed { .. }
            | Event::WebhookPaused { .. }
            | Event::WebhookResumed { .. }
            | Event::WebhookRemoved { .. }
            | Event::HealthCheckPlanned { .. }
            | Event::TargetHealthChecked { .. }
            | Event::HealthCheckUnavailable { .. }
            | Event::TokenCreated { .. }
            | Event::TokenRevoked { .. }
            | Event::SessionStarted { .. }
            | Event::SessionEnded { .. }
            | Event::PackagePushed { .. }
            | Event::PackageRemoved { .. }
            | Event::MessageRejected { .. }
            | Event::RejectionsCounted { .. } => None,
        }
    }

    /// The stream this event belongs to, e.g. `deployment/<id>`.
    pub fn stream(&self) -> String {
        if let Some(deployment) = self.deployment() {
            return format!("deployment/{deployment}");
        }
        match self {
            Event::PoolRegistered { pool, .. }
            | Event::PoolRemoved { pool }
            | Event::PoolKeySet { pool, .. } => {
                format!("pool/{pool}")
            }
            Event::TargetRegistered { target } | Event::TargetUpdated { target } => {
                format!("target/{}", target.name)
            }
            Event::TargetRemoved { target }
            | Event::HealthCheckPlanned { target, .. }
            | Event::TargetHealthChecked { target, .. }
            | Event::HealthCheckUnavailable { target, .. }
            | Event::TargetHealthChanged { target, .. } => format!("target/{target}"),
            Event::WorkerJoined { worker, .. }
            | Event::WorkerLeft { worker, .. }
            | Event::WorkerDrainRequested { worker, .. }
            | Event::WorkerResumed { worker, .. }
            | Event::WorkerWentOffline { worker, .. }
            | Event::WorkerCameOnline { worker, .. } => {
                format!("worker/{worker}")
            }
            Event::TokenCreated { name, .. } | Event::TokenRevoked { name, .. } => {
                format!("token/{name}")
            }
            Event::SessionStarted { token, .. } | Event::SessionEnded { token, .. } => {
                format!("token/{token}")
            }
            Event::PackagePushed { manifest, .. } => format!("package/{}", manifest.id),
            Event::PackageRemoved { id, .. } => format!("package/{id}"),
            Event::LogHeadSigned { .. } => "audit".to_owned(),
            Event::FeedConsumerSet { integrator, .. } => format!("feed/{integrator}"),
            Event::IdempotencyKeyUsed { .. } => "idempotency".to_owned(),
            Event::WebhookCreated { name, .. }
            | Event::WebhookDelivered { name, .. }
            | Event::WebhookAttemptFailed { name, .. }
            | Event::WebhookPaused { name, .. }
            | Event::WebhookResumed { name }
            | Event::WebhookRemoved { name } => format!("webhook/{name}"),
            _ => "rejected".to_owned(),
        }
    }
}

/// One record of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub seq: u64,
    pub event_id: EventId,
    pub time: Timestamp,
    pub stream: String,
    pub event_type: String,
    pub schema_version: u16,
    pub correlation_id: Option<uuid::Uuid>,
    pub causation_id: Option<uuid::Uuid>,
    /// The MessagePack encoding of the [`Event`].
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// SHA-256 of the previous record's stored bytes (zeros for the first record).
    #[serde(with = "serde_bytes")]
    pub prev_hash: Vec<u8>,
    /// Who caused the event: the API token of the request, the reporting worker, or the
    /// planner. Records written before actors were kept have none.
    #[serde(default)]
    pub actor: Option<Actor>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};

    #[test]
    fn event_types_names_every_variant() {
        // serde names every variant when it refuses an unknown one.
        let e = serde_json::from_str::<Event>(r#"{"NoSuchEvent": null}"#)
            .expect_err("no such variant")
            .to_string();
        let mut variants: Vec<&str> = e.split('`').skip(3).step_by(2).collect();
        variants.sort_unstable();
        let mut listed = EVENT_TYPES.to_vec();
        listed.sort_unstable();
        assert_eq!(variants, listed, "{e}");
    }

    /// A record as written before actors were kept.
    #[derive(Serialize)]
    struct Before {
        seq: u64,
        event_id: EventId,
        time: Timestamp,
        stream: String,
        event_type: String,
        schema_version: u16,
        correlation_id: Option<uuid::Uuid>,
        causation_id: Option<uuid::Uuid>,
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
        #[serde(with = "serde_bytes")]
        prev_hash: Vec<u8>,
    }

    #[test]
    fn a_record_written_before_actors_decodes_with_none() {
        let old = Before {
            seq: 1,
            event_id: EventId::new(),
            time: Timestamp(7),
            stream: "pool/default".into(),
            event_type: "PoolRegistered".into(),
            schema_version: 1,
            correlation_id: None,
            causation_id: None,
            payload: vec![1, 2, 3],
            prev_hash: vec![0; 32],
        };
        let bytes = encode(&old).unwrap_or_else(|e| panic!("{e}"));
        let env: Envelope = decode("record", &bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(env.actor, None);
        assert_eq!((env.seq, env.payload), (1, vec![1, 2, 3]));
    }

    #[test]
    fn an_actor_is_kept_in_the_record() {
        let env = Envelope {
            seq: 2,
            event_id: EventId::new(),
            time: Timestamp(7),
            stream: "token/ci".into(),
            event_type: "TokenRevoked".into(),
            schema_version: 1,
            correlation_id: None,
            causation_id: None,
            payload: vec![],
            prev_hash: vec![0; 32],
            actor: Some(Actor::Planner),
        };
        let bytes = encode(&env).unwrap_or_else(|e| panic!("{e}"));
        let back: Envelope = decode("record", &bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, env);
    }
}
