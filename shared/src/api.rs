//! The planner's HTTP API as types: every JSON body it answers with and every request body
//! it accepts. The planner serializes these and the CLI deserializes them, so the two cannot
//! drift apart. Field names, order, `null`s and enum spellings here *are* the wire format
//! users and scripts read: change them only as a change of the API.
//!
//! Answer types accept unknown fields (a newer planner may add some); request types refuse
//! them, so a typo in a request is an error naming the field rather than silently ignored.

use crate::auth::{Actor, Role};
use crate::health::{HealthCheck, HealthState, UnhealthyTargets};
use crate::ids::{CheckId, DeploymentId, EventId, TaskId};
use crate::names::{
    EnvironmentName, PackageId, PoolName, RegionName, RoleName, TargetName, TokenName, WorkerName,
};
use crate::package::Sha256;
use crate::resolve::PoolRule;
use crate::time::Timestamp;
use crate::{DeploymentState, OutputStream, StepState, Target, TargetKind, TaskState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use utoipa::ToSchema;

// ---------------------------------------------------------------------------------------
// Errors

/// The body of every error answer (4xx, 5xx): what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

// ---------------------------------------------------------------------------------------
// Pools

/// `POST /api/pools`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePool {
    pub name: PoolName,
    #[serde(default)]
    pub region: Option<RegionName>,
    #[serde(default)]
    pub description: Option<String>,
    /// The public key its sensitive variables are sealed to (`shoal-planner pool-keygen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealing_key: Option<crate::secret::PoolKey>,
}

/// `PUT /api/pools/{name}/key`: the public key a pool's sensitive variables are sealed to
/// from now on (set or rotated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPoolKey {
    pub key: crate::secret::PoolKey,
}

/// A pool as the API shows it (`GET /api/pools`, and the answer to `POST`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolView {
    pub name: PoolName,
    pub region: Option<RegionName>,
    pub description: Option<String>,
    pub registered_at: Timestamp,
    pub is_default: bool,
    pub workers_online: usize,
    /// The public key its sensitive variables are sealed to; none: steps with sensitive
    /// variables cannot run there.
    #[serde(default)]
    pub sealing_key: Option<crate::secret::PoolKey>,
}

// ---------------------------------------------------------------------------------------
// Targets

/// `POST /api/targets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTarget {
    pub name: TargetName,
    pub kind: TargetKind,
    pub environment: EnvironmentName,
    #[serde(default)]
    pub roles: Vec<RoleName>,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub default_pool: Option<PoolName>,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    #[serde(default)]
    #[schema(minimum = 1)]
    pub health_interval_secs: Option<u64>,
}

/// `PUT /api/targets/{name}`: absent fields stay as they are; `null` clears an optional one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<TargetKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<EnvironmentName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<RoleName>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub endpoint: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_pool: Option<Option<PoolName>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub health_check: Option<Option<HealthCheck>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1)]
    pub health_interval_secs: Option<Option<u64>>,
}

/// Deserializes a field that may be absent (`None`, with `#[serde(default)]`), `null`
/// (`Some(None)`) or set (`Some(Some(_))`).
///
/// # Errors
/// The value is neither `null` nor a `T`.
pub fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    <Option<T> as Deserialize>::deserialize(d).map(Some)
}

/// A target as the API shows it: its definition, the probe its checks run, and its health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TargetView {
    #[serde(flatten)]
    pub target: Target,
    pub registered_at: Timestamp,
    pub updated_at: Timestamp,
    /// The probe checks run: the explicit `health_check`, or the default for the endpoint.
    pub probe: Option<HealthCheck>,
    pub health: HealthView,
}

/// A target's health now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthView {
    pub state: HealthState,
    pub reason: Option<String>,
    pub checked_at: Option<Timestamp>,
    pub worker: Option<WorkerName>,
    pub pool: Option<PoolName>,
    pub rule: Option<PoolRule>,
    pub duration_ms: Option<u64>,
    pub check: Option<CheckId>,
    /// A check on its way: its id and pool.
    pub checking: Option<CheckingView>,
}

/// A check on its way (also the answer to `POST /api/targets/{name}/health-check`, where a
/// check a fast worker already answered has no deadline any more).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckingView {
    pub check: CheckId,
    pub pool: PoolName,
    pub rule: Option<PoolRule>,
    pub deadline_at: Option<Timestamp>,
}

/// One result of a health check of a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthRecordView {
    pub check: CheckId,
    pub state: HealthState,
    pub reason: Option<String>,
    pub checked_at: Timestamp,
    /// The worker that ran it (none when no worker did: `unavailable`).
    pub worker: Option<WorkerName>,
    pub pool: PoolName,
    pub rule: Option<PoolRule>,
    pub duration_ms: Option<u64>,
    /// The `health_check` step task that ran it, if any.
    pub task: Option<TaskId>,
}

/// `GET /api/targets/{name}/health`: the history, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthHistory {
    pub target: TargetName,
    pub state: HealthState,
    pub checking: Option<CheckingView>,
    pub history: Vec<HealthRecordView>,
}

// ---------------------------------------------------------------------------------------
// Deployments

/// `POST /api/deployments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDeployment {
    #[schema(pattern = "\\S")]
    pub project: String,
    pub environment: EnvironmentName,
    #[schema(min_items = 1)]
    pub steps: Vec<StepRequest>,
    #[serde(default)]
    pub unhealthy_targets: UnhealthyTargets,
}

/// One step of [`CreateDeployment`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepRequest {
    #[schema(pattern = "\\S")]
    pub name: String,
    pub action: ActionRequest,
    #[serde(default)]
    pub roles: Vec<RoleName>,
    #[serde(default)]
    pub pool: Option<PoolName>,
    #[serde(default)]
    #[schema(minimum = 1)]
    pub timeout_secs: Option<u64>,
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_parallel: Option<u32>,
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// Variables whose values are secret: sealed by the planner before they are recorded,
    /// given to the script like the others, and shown as `********` everywhere.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sensitive_variables: BTreeMap<String, crate::secret::SecretString>,
    #[serde(default)]
    #[schema(maximum = 100)]
    pub retries: u32,
    #[serde(default)]
    pub retry_backoff_secs: Option<u64>,
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_attempts: Option<u32>,
}

/// What a step does, as a request names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionRequest {
    Script {
        script: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shell: Option<String>,
    },
    Noop {},
    HealthCheck {},
    /// `{"type": "deploy_package", "package": {"id": "web", "version": "1.2.3"}, "script": …}`:
    /// the version exact or a range (`^1.2`), resolved when the deployment is accepted.
    DeployPackage {
        package: crate::domain::PackageRef,
        script: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shell: Option<String>,
    },
}

/// The answer to `POST /api/deployments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Created {
    pub id: DeploymentId,
}

/// `POST /api/deployments/{id}/cancel` (the body is optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// A deployment in a list (`GET /api/deployments`, and the answer to a cancel).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeploymentSummary {
    pub id: DeploymentId,
    pub project: String,
    pub environment: EnvironmentName,
    pub state: DeploymentState,
    pub reason: Option<String>,
    pub created_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub steps: Vec<StepSummary>,
}

/// A step in a [`DeploymentSummary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StepSummary {
    pub name: String,
    pub state: StepState,
    /// How many tasks the step has.
    pub tasks: usize,
}

/// A deployment with every task (`GET /api/deployments/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeploymentDetail {
    pub id: DeploymentId,
    pub project: String,
    pub environment: EnvironmentName,
    pub state: DeploymentState,
    pub reason: Option<String>,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub steps: Vec<StepDetail>,
}

/// A step of a [`DeploymentDetail`] with its tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StepDetail {
    pub index: u32,
    pub name: String,
    pub state: StepState,
    /// Extra attempts a task of the step gets after one that failed or timed out (its
    /// `retries`): a task runs at most `retries + 1` attempts. 0 from a planner before it.
    #[serde(default)]
    pub retries: u32,
    pub tasks: Vec<TaskView>,
}

/// A task as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskView {
    pub id: TaskId,
    pub target: Option<TargetName>,
    pub endpoint: Option<String>,
    pub pool: PoolName,
    pub pool_rule: PoolRule,
    pub state: TaskState,
    /// Why the task is not moving, when it waits for something.
    pub waiting: Option<String>,
    pub worker: Option<WorkerName>,
    pub attempt: u32,
    /// The run of the attempt that counts (broker delivery; above 1 after a lost run).
    pub delivery: u32,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub planned_at: Option<Timestamp>,
    pub dispatched_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub output_lines: u64,
    /// When the next attempt is planned (state `retry_scheduled`).
    pub retry_at: Option<Timestamp>,
    pub attempts: Vec<AttemptView>,
}

/// One run of a task: an attempt as delivered to one worker. An attempt delivered again (its
/// worker died) has several runs; every earlier one is `lost`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AttemptView {
    pub attempt: u32,
    /// The broker's delivery count of the attempt (0 until a worker starts it).
    pub delivery: u32,
    pub worker: Option<WorkerName>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub state: TaskState,
    pub exit_code: Option<i32>,
}

/// `GET /api/tasks/{id}`: which deployment a task belongs to (what `shoal audit explain`
/// starts from).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskRef {
    pub id: TaskId,
    pub deployment: DeploymentId,
    pub step: String,
    pub target: Option<TargetName>,
    pub pool: PoolName,
    pub state: TaskState,
}

// ---------------------------------------------------------------------------------------
// Task logs

/// Lines of a task log answered when a request does not say how many.
pub const LOG_PAGE_DEFAULT: usize = 1_000;
/// Most lines of a task log answered at once.
pub const LOG_PAGE_MAX: usize = 10_000;

/// `GET /api/deployments/{id}/tasks/{task}/log?after=&limit=`: one page of a task's output,
/// oldest first: `limit` lines, or fewer when they hold about 4 MiB already (then `more`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskLog {
    pub task: TaskId,
    pub state: TaskState,
    pub lines: Vec<LogLine>,
    /// Where this page ends: pass it as `after` for the lines that follow (also those written
    /// later, while the task runs). `null` when neither this page nor `after` had a line.
    #[serde(default)]
    pub next: Option<LogCursor>,
    /// Whether lines after this page were already stored when it was read.
    #[serde(default)]
    pub more: bool,
}

/// One line of a task's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogLine {
    pub attempt: u32,
    /// The run of the attempt (broker delivery); above 1 when an earlier run's worker died.
    pub run: u32,
    pub stream: OutputStream,
    pub at: Timestamp,
    pub line: String,
}

/// A position in a task's output, written `<attempt>.<run>.<line>` (the line numbered from
/// 0 within its run). Lines are ordered by attempt, then run, then line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogCursor {
    pub attempt: u32,
    pub run: u32,
    pub line: u64,
}

impl fmt::Display for LogCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.attempt, self.run, self.line)
    }
}

impl LogCursor {
    /// Parses `<attempt>.<run>.<line>`.
    ///
    /// # Errors
    /// Anything else; the message says what a cursor looks like.
    pub fn parse(s: &str) -> Result<LogCursor, String> {
        let bad =
            || format!("\"{s}\" is not a log cursor (<attempt>.<run>.<line>, as `next` gives it)");
        let mut parts = s.split('.');
        let (Some(a), Some(r), Some(l), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        Ok(LogCursor {
            attempt: a.parse().map_err(|_| bad())?,
            run: r.parse().map_err(|_| bad())?,
            line: l.parse().map_err(|_| bad())?,
        })
    }
}

impl Serialize for LogCursor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LogCursor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        LogCursor::parse(&text).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------
// Workers

/// A worker as the API shows it (`GET /api/workers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkerView {
    pub name: WorkerName,
    pub pool: PoolName,
    pub region: Option<RegionName>,
    pub slots: u32,
    pub busy_slots: u32,
    pub status: WorkerStatus,
    /// Maintenance drain asked for (it survives restarts of the worker) until resumed.
    pub drain_requested: bool,
    pub health: WorkerHealth,
    pub warnings: Vec<String>,
    /// Online and able to take its pool's tasks: it sees its pool's queue consumer (workers
    /// that do not report it count as ready while online). Absent from older planners: true.
    #[serde(default = "yes")]
    pub ready: bool,
    /// Why an online worker is not ready, with what to do (e.g. start it with `--js-domain`,
    /// or register its pool).
    #[serde(default)]
    pub not_ready_reason: Option<String>,
    pub free_disk_mb: Option<u64>,
    pub last_seen: Option<Timestamp>,
    pub joined_at: Timestamp,
    pub left_at: Option<Timestamp>,
    pub version: String,
}

fn yes() -> bool {
    true
}

/// Whether a worker takes work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkerStatus {
    Online,
    /// Online, taking no new tasks.
    Draining,
    /// Missed too many heartbeats.
    Offline,
    /// Said goodbye.
    Left,
}

/// How a worker says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkerHealth {
    Healthy,
    /// Healthy, with `warnings`.
    HealthyWithWarnings,
    /// Online but cannot take its pool's tasks (`not_ready_reason` says why).
    NotReady,
    Offline,
}

/// The answer to `POST /api/workers/{name}/drain|resume`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DrainView {
    pub name: WorkerName,
    pub drain_requested: bool,
}

// ---------------------------------------------------------------------------------------
// Events and status

/// One record of the log as the API shows it (`GET /api/events`): the event's fields are
/// under `data`, as JSON, since every event type has its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    pub seq: u64,
    pub event_id: EventId,
    pub time: Timestamp,
    pub stream: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: u16,
    pub correlation_id: Option<uuid::Uuid>,
    pub causation_id: Option<uuid::Uuid>,
    pub data: serde_json::Value,
    /// SHA-256 of the previous record, hex.
    pub prev_hash: String,
    /// Who caused it (`token:<name>`, `worker:<name>`, `planner`); none on records written
    /// before actors were kept.
    #[serde(default)]
    pub actor: Option<Actor>,
}

impl EventView {
    /// How the API shows a record: the event's fields under `data` (sensitive values masked,
    /// as every JSON rendering does), a token's hash left out.
    pub fn of(env: crate::events::Envelope) -> EventView {
        let data = match crate::codec::decode::<crate::events::Event>("event payload", &env.payload)
        {
            Ok(event) => match serde_json::to_value(&event) {
                Ok(serde_json::Value::Object(mut m)) if m.len() == 1 => {
                    let mut data = m.remove(&env.event_type).unwrap_or(serde_json::Value::Null);
                    // A token's hash stays in the log (replay rebuilds the token store from
                    // it) but is shown to no one: the API says which token, never what it
                    // hashes to.
                    if env.event_type.starts_with("Token")
                        && let Some(fields) = data.as_object_mut()
                    {
                        fields.remove("hash");
                    }
                    data
                }
                Ok(other) => other,
                Err(e) => serde_json::json!({ "undisplayable": e.to_string() }),
            },
            Err(e) => serde_json::json!({ "undecodable": e.to_string() }),
        };
        EventView {
            seq: env.seq,
            event_id: env.event_id,
            time: env.time,
            stream: env.stream,
            event_type: env.event_type,
            schema_version: env.schema_version,
            correlation_id: env.correlation_id,
            causation_id: env.causation_id,
            data,
            prev_hash: crate::hex::encode(&env.prev_hash),
            actor: env.actor,
        }
    }
}

/// [`EventView`] with its `data` as JSON text already written.
#[derive(Serialize)]
struct RawView<'a> {
    seq: u64,
    event_id: crate::ids::EventId,
    time: crate::time::Timestamp,
    stream: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    schema_version: u16,
    correlation_id: Option<uuid::Uuid>,
    causation_id: Option<uuid::Uuid>,
    data: &'a serde_json::value::RawValue,
    prev_hash: String,
    actor: &'a Option<Actor>,
}

impl EventView {
    /// The JSON of [`EventView::of`], written without building the view's JSON tree (the
    /// event feed writes one per record): the same document.
    ///
    /// # Errors
    /// Only if the record cannot be written as JSON.
    pub fn json_of(env: &crate::events::Envelope) -> Result<Vec<u8>, serde_json::Error> {
        let event = crate::codec::decode::<crate::events::Event>("event payload", &env.payload);
        // A token's hash is left out: those few records go through the view.
        let inner = match &event {
            Ok(e) if !env.event_type.starts_with("Token") => {
                let text = serde_json::to_string(e)?;
                // `{"<Type>":<data>}`: the data is what follows the first colon, but the brace.
                let start = text.find(':').map_or(0, |i| i + 1);
                let end = text.len().saturating_sub(1);
                (start < end).then(|| text[start..end].to_owned())
            }
            _ => None,
        };
        let Some(inner) = inner else {
            return serde_json::to_vec(&EventView::of(env.clone()));
        };
        let data = serde_json::value::RawValue::from_string(inner)?;
        serde_json::to_vec(&RawView {
            seq: env.seq,
            event_id: env.event_id,
            time: env.time,
            stream: &env.stream,
            event_type: &env.event_type,
            schema_version: env.schema_version,
            correlation_id: env.correlation_id,
            causation_id: env.causation_id,
            data: &data,
            prev_hash: crate::hex::encode(&env.prev_hash),
            actor: &env.actor,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Integrations

/// A webhook as listed (`GET /api/webhooks`, and the answer to a resume).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebhookView {
    pub name: TokenName,
    pub url: String,
    /// Event types it wants; empty: every type.
    pub types: Vec<String>,
    /// Projects whose deployments' records it wants; empty: every project.
    pub projects: Vec<String>,
    /// Environments whose deployments' records it wants; empty: every environment.
    pub environments: Vec<String>,
    /// Every record up to this sequence is delivered or not wanted.
    pub delivered_through: u64,
    /// Why deliveries stopped, until resumed; none while it delivers.
    pub paused: Option<String>,
    /// Failed attempts in a row (of the record being delivered).
    pub failing: u32,
    pub created_at: Timestamp,
}

/// The answer to `POST /api/webhooks`: the webhook and the secret its deliveries are signed
/// with, shown this once (the planner keeps it sealed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub webhook: WebhookView,
    pub secret: String,
}

/// The answer to `PUT /api/feed/consumers/{name}`: the integrator's durable consumer of the
/// event feed and where it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FeedConsumerView {
    pub integrator: String,
    /// The feed's JetStream stream.
    pub stream: String,
    /// The consumer's durable name, `feed-<integrator>`.
    pub consumer: String,
    /// It delivers the records after this sequence.
    pub after: u64,
    /// The subject of the feed it delivers; none: all of it.
    pub filter: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Tokens

/// `POST /api/tokens`: a new API token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub name: TokenName,
    pub role: Role,
}

/// The answer to `POST /api/tokens`: the token itself, shown this once (the planner keeps
/// only its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    pub name: TokenName,
    pub role: Role,
    pub token: String,
}

/// `GET /api/tokens`: a token as listed (never its value nor its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub name: TokenName,
    pub role: Role,
    pub created_at: Timestamp,
    pub created_by: Actor,
}

// ---------------------------------------------------------------------------------------
// Packages

/// `GET /api/packages/{id}/{version}`, and each version in `GET /api/packages[/{id}]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PackageView {
    pub id: PackageId,
    #[schema(schema_with = schema::version)]
    pub version: semver::Version,
    /// Bytes of the whole file.
    pub size: u64,
    /// SHA-256 of the whole file.
    pub sha256: Sha256,
    /// How many content-defined chunks it is stored as.
    pub chunks: usize,
    pub pushed_at: Timestamp,
    /// Its acquisitions by workers, per pool: bytes fetched from the feed against bytes
    /// used (fetched plus served from the workers' caches).
    #[serde(default)]
    pub acquired: BTreeMap<PoolName, crate::package::Acquisitions>,
}

/// The answer to `PUT /api/packages/{id}/{version}` (201 when the version is new, 200 when
/// the same bytes were in the feed already): the version, and what the push stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PushedPackage {
    pub package: PackageView,
    /// Chunks the feed did not hold before this push.
    pub new_chunks: usize,
    /// Bytes of those chunks: what crossed to the broker.
    pub new_bytes: u64,
}

/// `GET /api/status`: what the planner holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StatusView {
    /// The last durable record's sequence.
    pub log_seq: u64,
    /// Unfinished deployments the writer keeps in memory (finished ones stay on disk).
    pub deployments_in_memory: usize,
    pub tasks_in_memory: usize,
}

pub mod schema;
#[cfg(test)]
mod tests;
