//! Messages on the wire between the planner and the workers.

use crate::domain::{Action, Outcome, OutputLine};
use crate::health::{HealthCheck, HealthState};
use crate::ids::{CheckId, DeploymentId, EventId, TaskId};
use crate::names::{PoolName, RegionName, TargetName, WorkerName};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Schema version of [`TaskMessage`], [`WorkerMessage`] and [`Heartbeat`] written by this build.
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
