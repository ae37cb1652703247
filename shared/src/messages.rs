//! Messages on the wire between the planner and the workers.

use crate::codec::{self, CodecError};
use crate::domain::{Action, Outcome, OutputLine};
use crate::health::{HealthCheck, HealthState};
use crate::ids::{CheckId, DeploymentId, EventId, TaskId};
use crate::names::{PoolName, RegionName, TargetName, WorkerName};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Schema version of [`TaskMessage`], [`WorkerMessage`], [`WorkerBatch`] and [`Heartbeat`]
/// written by this build.
pub const WIRE_SCHEMA_VERSION: u16 = 1;

/// One attempt of a task, published to `shoal.tasks.<pool>` with message id `<task>/<attempt>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMessage {
    pub schema_version: u16,
    pub deployment: DeploymentId,
    pub task: TaskId,
    pub attempt: u32,
    pub step_index: u32,
    pub step_name: String,
    pub target: Option<TargetName>,
    pub endpoint: Option<String>,
    pub pool: PoolName,
    pub action: Action,
    pub variables: BTreeMap<String, String>,
    pub timeout_secs: Option<u64>,
    pub planned_at: Timestamp,
    /// Deliveries of this attempt a worker may start; a later one is reported failed without
    /// running (its earlier workers all stopped without a result). 0: no limit.
    #[serde(default)]
    pub max_deliveries: u32,
    /// The target's probe, for a `health_check` step.
    #[serde(default)]
    pub probe: Option<HealthCheck>,
    /// When the attempt was planned, in microseconds since the Unix epoch: `planned_at` at a
    /// precision that latency measurements (`shoal-bench`) need. 0 from older planners.
    #[serde(default)]
    pub planned_at_us: i64,
    /// The step's sensitive variables, each sealed for the workers of `pool` (the planner's
    /// dispatcher re-seals what the log holds for its master key). A worker that cannot open
    /// one refuses the task.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sensitive_variables: BTreeMap<String, crate::secret::Sealed>,
    /// The package a `deploy_package` step deploys. The signature over this message binds
    /// the manifest's digest, the manifest binds every chunk's and the whole file's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<PackageSpec>,
    /// The W3C trace context of the deployment that planned it, inside the planner only: on
    /// the wire it travels in the message's `traceparent` header, outside what is signed.
    #[serde(skip)]
    pub trace_parent: Option<String>,
}

/// The package version a task deploys: what the worker fetches from the feed and checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageSpec {
    pub id: crate::names::PackageId,
    pub version: semver::Version,
    pub size: u64,
    /// SHA-256 of the whole file.
    pub sha256: crate::package::Sha256,
    /// SHA-256 of the encoded manifest (its name in the feed: [`crate::package::manifest_object`]).
    pub manifest_sha256: crate::package::Sha256,
}

/// Header of a message on `shoal.tasks.<pool>` saying what its payload is; absent: a
/// [`TaskMessage`].
pub const KIND_HEADER: &str = "Shoal-Kind";
/// [`KIND_HEADER`] value of a [`CheckMessage`].
pub const KIND_HEALTH_CHECK: &str = "health-check";

/// A health check of a target, published to `shoal.tasks.<pool>` with message id
/// `check/<id>` and header `Shoal-Kind: health-check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckMessage {
    pub schema_version: u16,
    pub check: CheckId,
    pub target: TargetName,
    pub pool: PoolName,
    pub endpoint: Option<String>,
    pub probe: HealthCheck,
    pub planned_at: Timestamp,
    /// A worker that gets it later does not run it: the planner has already called the
    /// target `unavailable`, and a newer check will follow.
    pub deadline_at: Timestamp,
}

impl CheckMessage {
    /// The JetStream message id.
    pub fn message_id(&self) -> String {
        format!("check/{}", self.check)
    }
}

impl TaskMessage {
    /// The JetStream message id, so a re-published attempt is de-duplicated by the broker.
    pub fn message_id(&self) -> String {
        format!("{}/{}", self.task, self.attempt)
    }
}

/// A fact reported by a worker on `shoal.results.<pool>.<worker>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerMessage {
    pub schema_version: u16,
    /// Unique per fact; the planner's log de-duplicates on it.
    pub event_id: EventId,
    pub worker: WorkerName,
    pub pool: PoolName,
    pub sent_at: Timestamp,
    pub body: WorkerBody,
    /// The W3C trace context of the worker's run of the task, when the worker exports
    /// traces: the planner's ingest of the report joins that trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
}

/// [`KIND_HEADER`] value of a [`WorkerBatch`] on `shoal.results.<pool>.<worker>`; absent: a
/// single [`WorkerMessage`].
pub const KIND_REPORT_BATCH: &str = "report-batch";

/// Reports of one worker that were ready together, sent as one message on
/// `shoal.results.<pool>.<worker>` with header `Shoal-Kind: report-batch` (one publish and
/// one broker store for all of them). The planner records them in order and acknowledges the
/// message once all are in its log; each keeps its own event id, so a redelivered batch is
/// de-duplicated report by report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerBatch {
    pub schema_version: u16,
    pub reports: Vec<WorkerMessage>,
}

/// The JetStream message id of a [`WorkerBatch`] whose first report is `first`: that report
/// is in this batch only, so the id names the batch on every retry and the broker
/// de-duplicates a re-sent one.
pub fn batch_message_id(first: EventId) -> String {
    format!("batch/{first}")
}

/// Encodes reports as a [`WorkerBatch`] without copying them: the same bytes as encoding a
/// `WorkerBatch` that owns them.
///
/// # Errors
/// Only for values serde cannot represent (not the case for shoal's own types).
pub fn encode_batch(reports: &[&WorkerMessage]) -> Result<Vec<u8>, CodecError> {
    /// [`WorkerBatch`], borrowing its reports; the field names and order must stay the same.
    #[derive(Serialize)]
    struct Borrowed<'a> {
        schema_version: u16,
        reports: &'a [&'a WorkerMessage],
    }
    codec::encode(&Borrowed {
        schema_version: WIRE_SCHEMA_VERSION,
        reports,
    })
}

/// Why a message on `shoal.results.<pool>.<worker>` holds no report the planner can read.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(
        "report batch has unknown schema version {found} (this build reads up to {WIRE_SCHEMA_VERSION}); upgrade the planner"
    )]
    UnknownBatchSchema { found: u16 },
    #[error(
        "unknown message kind \"{0}\" on a results subject (this build reads a single report or \"{KIND_REPORT_BATCH}\"); upgrade the planner"
    )]
    UnknownKind(String),
}

/// The reports in one message on `shoal.results.<pool>.<worker>`, in the order sent: a
/// [`WorkerBatch`] when `kind` (its [`KIND_HEADER`]) says so, else a single
/// [`WorkerMessage`] (what workers before batching send, and what a lone report is sent as).
///
/// # Errors
/// Undecodable bytes, a batch of an unknown schema version, or an unknown kind: the whole
/// message is unreadable.
pub fn decode_results(
    kind: Option<&str>,
    payload: &[u8],
) -> Result<Vec<WorkerMessage>, ResultsError> {
    match kind {
        None => Ok(vec![codec::decode::<WorkerMessage>(
            "worker report",
            payload,
        )?]),
        Some(KIND_REPORT_BATCH) => {
            let batch = codec::decode::<WorkerBatch>("worker report batch", payload)?;
            if batch.schema_version > WIRE_SCHEMA_VERSION {
                return Err(ResultsError::UnknownBatchSchema {
                    found: batch.schema_version,
                });
            }
            Ok(batch.reports)
        }
        Some(other) => Err(ResultsError::UnknownKind(other.to_owned())),
    }
}

/// What a worker reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerBody {
    Joined {
        region: Option<RegionName>,
        slots: u32,
        version: String,
    },
    Left {
        reason: String,
    },
    /// A task message the worker could not accept (malformed, unknown schema, wrong pool);
    /// the worker terminated it so it is not redelivered forever.
    Rejected {
        subject: String,
        reason: String,
        #[serde(with = "serde_bytes")]
        head: Vec<u8>,
        size: u64,
    },
    TaskStarted {
        deployment: DeploymentId,
        task: TaskId,
        attempt: u32,
        /// How many times the broker has delivered this attempt (1 = first run); more
        /// means an earlier run's worker died or stopped without finishing it.
        #[serde(default)]
        delivery: u32,
    },
    TaskOutput {
        deployment: DeploymentId,
        task: TaskId,
        attempt: u32,
        #[serde(default)]
        delivery: u32,
        first_line: u64,
        lines: Vec<OutputLine>,
    },
    TaskFinished {
        deployment: DeploymentId,
        task: TaskId,
        attempt: u32,
        #[serde(default)]
        delivery: u32,
        outcome: Outcome,
        exit_code: Option<i32>,
        reason: Option<String>,
    },
    /// A `deploy_package` task's package was acquired: what came from the feed and what
    /// from the worker's cache.
    PackageAcquired {
        deployment: DeploymentId,
        task: TaskId,
        attempt: u32,
        #[serde(default)]
        delivery: u32,
        acquired: crate::package::Acquisition,
    },
    /// A probe ran: a scheduled or asked-for check, or one of a `health_check` step
    /// (`task`, with a check id of the worker's own).
    HealthChecked {
        check: CheckId,
        target: TargetName,
        task: Option<TaskId>,
        state: HealthState,
        reason: Option<String>,
        duration_ms: u64,
    },
}

/// Liveness and load of a worker, on core NATS `shoal.heartbeat.<pool>.<worker>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub schema_version: u16,
    pub worker: WorkerName,
    pub pool: PoolName,
    pub region: Option<RegionName>,
    pub slots: u32,
    pub busy: u32,
    pub interval_ms: u64,
    pub sent_at: Timestamp,
    /// The worker is draining: it takes no new tasks.
    #[serde(default)]
    pub draining: bool,
    /// Free space where tasks run, in MiB.
    #[serde(default)]
    pub free_disk_mb: Option<u64>,
    /// What the worker finds wrong with itself (e.g. little free disk); empty: healthy.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The worker sees its pool's queue consumer and can take tasks. `None`: not known yet
    /// (its first lookup has not ended), or a worker older than this field.
    #[serde(default)]
    pub ready: Option<bool>,
    /// Why the worker is not ready, in words a user can act on.
    #[serde(default)]
    pub not_ready_reason: Option<String>,
}

/// An instruction to one worker, on core NATS `shoal.control.<pool>.<worker>`. The wanted
/// state is also in the log and compared with every heartbeat, so a lost message is sent
/// again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerControl {
    pub schema_version: u16,
    pub worker: WorkerName,
    /// Stop taking tasks (maintenance) or take them again.
    pub drain: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A heartbeat as workers before readiness sent it.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct HeartbeatBeforeReadiness {
        schema_version: u16,
        worker: WorkerName,
        pool: PoolName,
        region: Option<RegionName>,
        slots: u32,
        busy: u32,
        interval_ms: u64,
        sent_at: Timestamp,
        draining: bool,
        free_disk_mb: Option<u64>,
        warnings: Vec<String>,
    }

    fn old() -> HeartbeatBeforeReadiness {
        HeartbeatBeforeReadiness {
            schema_version: WIRE_SCHEMA_VERSION,
            worker: WorkerName::parse("eu-1").expect("valid"),
            pool: PoolName::parse("eu-west").expect("valid"),
            region: None,
            slots: 4,
            busy: 1,
            interval_ms: 2000,
            sent_at: Timestamp(7),
            draining: false,
            free_disk_mb: Some(100),
            warnings: vec![],
        }
    }

    #[test]
    fn an_older_workers_heartbeat_decodes_with_readiness_unknown() {
        let bytes = codec::encode(&old()).expect("encodes");
        let beat: Heartbeat = codec::decode("heartbeat", &bytes).expect("decodes");
        assert_eq!(beat.ready, None);
        assert_eq!(beat.not_ready_reason, None);
        assert_eq!(
            (beat.slots, beat.busy, beat.free_disk_mb),
            (4, 1, Some(100))
        );
    }

    #[test]
    fn a_not_ready_heartbeat_keeps_its_reason_and_older_planners_still_read_it() {
        let o = old();
        let beat = Heartbeat {
            schema_version: o.schema_version,
            worker: o.worker.clone(),
            pool: o.pool.clone(),
            region: None,
            slots: 4,
            busy: 1,
            interval_ms: 2000,
            sent_at: Timestamp(7),
            draining: false,
            free_disk_mb: Some(100),
            warnings: vec![],
            ready: Some(false),
            not_ready_reason: Some("no consumer".into()),
        };
        let bytes = codec::encode(&beat).expect("encodes");
        assert_eq!(
            codec::decode::<Heartbeat>("heartbeat", &bytes).expect("decodes"),
            beat
        );
        let read: HeartbeatBeforeReadiness = codec::decode("heartbeat", &bytes).expect("decodes");
        assert_eq!(read, o);
    }
}
