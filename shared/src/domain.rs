//! The domain model: pools, targets, deployments, steps, actions and their states.

use crate::names::{EnvironmentName, PoolName, RegionName, RoleName, TargetName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The kind of a deployment target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", try_from = "String")]
pub enum TargetKind {
    AzureWebApp,
    AzureServiceFabric,
    AzureCloudService,
    CloudRegion,
    Kubernetes,
    Ssh,
    Offline,
}

impl TargetKind {
    /// Every kind, in the order shown to users.
    pub const ALL: [TargetKind; 7] = [
        TargetKind::AzureWebApp,
        TargetKind::AzureServiceFabric,
        TargetKind::AzureCloudService,
        TargetKind::CloudRegion,
        TargetKind::Kubernetes,
        TargetKind::Ssh,
        TargetKind::Offline,
    ];

    /// The kind's name as written in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::AzureWebApp => "azure-web-app",
            TargetKind::AzureServiceFabric => "azure-service-fabric",
            TargetKind::AzureCloudService => "azure-cloud-service",
            TargetKind::CloudRegion => "cloud-region",
            TargetKind::Kubernetes => "kubernetes",
            TargetKind::Ssh => "ssh",
            TargetKind::Offline => "offline",
        }
    }

    /// Parses a kind by its API name.
    ///
    /// # Errors
    /// An unknown kind; the message lists the known ones.
    pub fn parse(s: &str) -> Result<TargetKind, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = Self::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown target kind {s:?} (known: {})", known.join(", "))
            })
    }
}

impl TryFrom<String> for TargetKind {
    type Error = String;
    fn try_from(s: String) -> Result<TargetKind, String> {
        TargetKind::parse(&s)
    }
}

/// A worker pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub name: PoolName,
    pub region: Option<RegionName>,
    pub description: Option<String>,
}

/// A deployment target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub name: TargetName,
    pub kind: TargetKind,
    pub environment: EnvironmentName,
    pub roles: Vec<RoleName>,
    pub endpoint: Option<String>,
    pub default_pool: Option<PoolName>,
}

/// What a step does on a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    /// Runs a script with a shell (`bash` unless said otherwise) in a fresh directory.
    Script {
        script: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shell: Option<String>,
    },
    /// Does nothing and succeeds: exercises the whole dispatch path without starting a
    /// process. For testing and benchmarking.
    Noop,
}

/// One step of a deployment process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSpec {
    pub name: String,
    pub action: Action,
    /// Run once per target of the environment with any of these roles; empty: once, with no
    /// target.
    #[serde(default)]
    pub roles: Vec<RoleName>,
    /// Explicit pool (rule `step`).
    #[serde(default)]
    pub pool: Option<PoolName>,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// How many of the step's targets run at once; all when unset.
    #[serde(default)]
    pub max_parallel: Option<u32>,
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
}

/// A deployment as submitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentSpec {
    pub project: String,
    pub environment: EnvironmentName,
    pub steps: Vec<StepSpec>,
}

/// State of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl DeploymentState {
    /// Whether the deployment has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// State of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
}

/// State of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Its step has not started yet.
    Pending,
    /// Recorded for dispatch (the outbox), not yet confirmed by the broker.
    Planned,
    /// In its pool's queue.
    Dispatched,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    /// Never started: the deployment ended (failed or was cancelled) before its turn.
    Skipped,
    /// Only for a run in a task's history: its worker stopped without finishing it and the
    /// broker delivered the attempt again.
    Lost,
}

impl TaskState {
    /// Whether the task has ended.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::TimedOut | Self::Cancelled | Self::Skipped
        )
    }
}

/// How one attempt of a task ended on its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
}

impl Outcome {
    /// The task state this outcome leads to.
    pub fn task_state(self) -> TaskState {
        match self {
            Outcome::Succeeded => TaskState::Succeeded,
            Outcome::Failed => TaskState::Failed,
            Outcome::TimedOut => TaskState::TimedOut,
            Outcome::Cancelled => TaskState::Cancelled,
        }
    }
}

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// One line of task output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputLine {
    pub stream: OutputStream,
    pub at: crate::Timestamp,
    pub line: String,
}
