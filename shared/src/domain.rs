//! The domain model: pools, targets, deployments, steps, actions and their states.

use crate::health::{HealthCheck, UnhealthyTargets};
use crate::names::{EnvironmentName, PoolName, RegionName, RoleName, TargetName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The kind of a deployment target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Target {
    pub name: TargetName,
    pub kind: TargetKind,
    pub environment: EnvironmentName,
    pub roles: Vec<RoleName>,
    pub endpoint: Option<String>,
    pub default_pool: Option<PoolName>,
    /// The probe its health checks run; without one, a target with an endpoint gets
    /// [`HealthCheck::default_for`] its endpoint; [`HealthCheck::Off`]: no checks.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// Seconds between scheduled checks (the planner's default when unset).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub health_interval_secs: Option<u64>,
}

impl Target {
    /// The probe its checks run: the explicit one, else the default for its endpoint;
    /// none when checks are off ([`HealthCheck::Off`]).
    pub fn probe(&self) -> Option<HealthCheck> {
        match &self.health_check {
            Some(HealthCheck::Off) => None,
            Some(check) => Some(check.clone()),
            None => self.endpoint.as_deref().and_then(HealthCheck::default_for),
        }
    }
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
    /// Checks the health of the step's targets again (their probes) and applies the
    /// deployment's `unhealthy_targets` option to those found unhealthy.
    HealthCheck,
    /// Acquires a package from the feed (the worker fetches only the chunks its cache
    /// lacks), unpacks it into the task's directory and runs the script there.
    DeployPackage {
        package: PackageRef,
        script: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shell: Option<String>,
    },
}

/// The package a step deploys: an id and a version, exact (`1.2.3`) or a range (`^1.2`,
/// `>=1.0, <2`: the newest version in the feed that matches, chosen when the deployment is
/// accepted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PackageRef {
    pub id: crate::names::PackageId,
    pub version: String,
}

/// The version a step's package reference was resolved to when its deployment was
/// accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedPackage {
    pub id: crate::names::PackageId,
    pub version: semver::Version,
    pub sha256: crate::package::Sha256,
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
    /// Variables whose values are secret, each sealed with the planner's master key
    /// (`shoal_shared::secret`); shown as `********` everywhere.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sensitive_variables: BTreeMap<String, crate::secret::Sealed>,
    /// Extra attempts after one that failed or timed out (0: none). Each is a new attempt.
    #[serde(default)]
    pub retries: u32,
    /// Delay before the first retry ([`DEFAULT_RETRY_BACKOFF_SECS`] when unset); it doubles
    /// for each later retry, up to [`MAX_RETRY_BACKOFF_SECS`].
    #[serde(default)]
    pub retry_backoff_secs: Option<u64>,
    /// How many workers may start one attempt and stop without finishing it (died, were
    /// killed, lost their connection, or handed it back at a drain deadline) before the
    /// attempt fails ([`DEFAULT_MAX_ATTEMPTS`] when unset).
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

/// Delay before a step's first retry when it does not set `retry_backoff_secs`.
pub const DEFAULT_RETRY_BACKOFF_SECS: u64 = 5;
/// Longest delay between two attempts of a task.
pub const MAX_RETRY_BACKOFF_SECS: u64 = 300;
/// Runs of one attempt when a step does not set `max_attempts`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

impl StepSpec {
    /// The delay before attempt `next` (2 or later): the backoff doubled for each retry
    /// before it, capped at [`MAX_RETRY_BACKOFF_SECS`].
    pub fn retry_delay_ms(&self, next: u32) -> u64 {
        let base = self
            .retry_backoff_secs
            .unwrap_or(DEFAULT_RETRY_BACKOFF_SECS)
            .saturating_mul(1000);
        let doublings = next.saturating_sub(2).min(32);
        base.saturating_mul(1u64 << doublings)
            .min(MAX_RETRY_BACKOFF_SECS * 1000)
    }

    /// Runs allowed per attempt.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS)
    }
}

/// A deployment as submitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentSpec {
    pub project: String,
    pub environment: EnvironmentName,
    pub steps: Vec<StepSpec>,
    /// What to do with targets that are unhealthy before a step runs on them.
    #[serde(default)]
    pub unhealthy_targets: UnhealthyTargets,
}

/// State of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    Queued,
    Running,
    /// Cancellation was asked for; waiting for workers to stop what they run.
    Cancelling,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
    /// The deployment was cancelled while the step ran.
    Cancelled,
}

/// State of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Its step has not started yet.
    Pending,
    /// Recorded for dispatch (the outbox), not yet confirmed by the broker.
    Planned,
    /// In its pool's queue.
    Dispatched,
    Running,
    /// The last attempt failed; the next one is planned when its backoff has passed.
    RetryScheduled,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn step(backoff: Option<u64>) -> StepSpec {
        StepSpec {
            name: "s".into(),
            action: Action::Noop,
            roles: vec![],
            pool: None,
            timeout_secs: None,
            max_parallel: None,
            variables: BTreeMap::new(),
            sensitive_variables: BTreeMap::new(),
            retries: 10,
            retry_backoff_secs: backoff,
            max_attempts: None,
        }
    }

    #[test]
    fn a_step_without_sensitive_variables_encodes_as_before_them() {
        // What every step written before sensitive variables looks like: the same bytes.
        let bytes = crate::codec::encode(&step(None)).expect("encodes");
        assert!(!bytes.windows(9).any(|w| w == b"sensitive"));
        let back: StepSpec = crate::codec::decode("step", &bytes).expect("decodes");
        assert!(back.sensitive_variables.is_empty());
    }

    #[test]
    fn retry_delay_doubles_from_the_backoff_and_is_capped() {
        let s = step(Some(2));
        let delays: Vec<u64> = (2..=10).map(|n| s.retry_delay_ms(n)).collect();
        assert_eq!(
            delays,
            [
                2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 300_000
            ]
        );
        assert_eq!(s.retry_delay_ms(u32::MAX), MAX_RETRY_BACKOFF_SECS * 1000);
        assert_eq!(
            step(None).retry_delay_ms(2),
            DEFAULT_RETRY_BACKOFF_SECS * 1000
        );
        assert_eq!(step(Some(0)).retry_delay_ms(5), 0);
        assert_eq!(step(None).max_attempts(), DEFAULT_MAX_ATTEMPTS);
    }
}
