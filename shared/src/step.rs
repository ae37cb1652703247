//! A submitted deployment, parsed: [`ValidDeployment::parse`] turns a [`DeploymentSpec`]
//! into typed steps or says which field is wrong and why.
//!
//! The wire and log keep carrying [`DeploymentSpec`] and [`StepSpec`] unchanged (their
//! MessagePack and JSON encodings are fixed by existing logs); a valid deployment converts
//! back into exactly the spec it was parsed from. Checks that need the planner's registered
//! environments, pools and targets ask a [`Registry`], in the order the fields are read, so
//! the first problem reported is always the first one in the request.

use crate::domain::{Action, DeploymentSpec, PackageRef, ResolvedPackage, StepSpec, Target};
use crate::health::UnhealthyTargets;
use crate::names::{EnvironmentName, PackageId, PoolName, RoleName, TargetName};
use crate::package::Sha256;
use crate::secret::Sealed;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::num::{NonZeroU32, NonZeroU64};

/// Most bytes of script plus variables a step may carry, so every task message stays well
/// under the broker's default 1 MiB payload limit.
pub const MAX_STEP_BYTES: usize = 256 * 1024;

/// Most retries a step may ask for.
pub const MAX_RETRIES: u32 = 100;

/// Shells a script step may name.
pub const SHELLS: [&str; 2] = ["bash", "sh"];

/// A shell a script step may name (one of [`SHELLS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shell {
    /// `bash`, also what a script without a shell runs with.
    Bash,
    /// `sh`.
    Sh,
}

impl Shell {
    /// The shell's name as written in a step.
    pub fn as_str(self) -> &'static str {
        match self {
            Shell::Bash => SHELLS[0],
            Shell::Sh => SHELLS[1],
        }
    }

    /// Parses a shell by name.
    ///
    /// # Errors
    /// [`Problem::UnsupportedShell`] for anything but [`SHELLS`].
    pub fn parse(name: &str) -> Result<Shell, Problem> {
        [Shell::Bash, Shell::Sh]
            .into_iter()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| Problem::UnsupportedShell {
                shell: name.to_owned(),
            })
    }
}

/// What a valid step does on a worker: [`Action`] with its shell parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepAction {
    /// Runs a script; `None`: the worker's default shell (`bash`).
    Script {
        script: String,
        shell: Option<Shell>,
    },
    /// Does nothing and succeeds.
    Noop,
    /// Checks the health of the step's targets again.
    HealthCheck,
    /// Deploys a package version (resolved against the feed) with a script.
    DeployPackage {
        package: ResolvedPackage,
        /// The version as the step gave it.
        asked: String,
        script: String,
        shell: Option<Shell>,
    },
}

/// What a deployment is checked against beyond itself: the planner's registered
/// environments, pools and targets.
pub trait Registry {
    /// Whether the environment is known (has registered targets).
    fn has_environment(&self, environment: &EnvironmentName) -> bool;
    /// Every known environment, in order, for the message when one is not.
    fn environments(&self) -> Vec<EnvironmentName>;
    /// Whether the pool is registered.
    fn has_pool(&self, pool: &PoolName) -> bool;
    /// Every registered pool, in order, for the message when one is not.
    fn pools(&self) -> Vec<PoolName>;
    /// The targets of an environment, in name order.
    fn targets_in(&self, environment: &EnvironmentName) -> Vec<&Target>;
    /// The versions of a package in the feed, with their digests (none: unknown package).
    fn package_versions(&self, id: &PackageId) -> Vec<(semver::Version, Sha256)>;
    /// The ids of the packages in the feed.
    fn package_ids(&self) -> Vec<PackageId>;
}

/// Whether a step with these roles runs on the target (it has any of them).
pub fn runs_on(roles: &[RoleName], target: &Target) -> bool {
    target.roles.iter().any(|r| roles.contains(r))
}

/// What is wrong with one field of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("must not be empty")]
    Empty,
    #[error("must be at least 1")]
    Zero,
    #[error(
        "unknown environment \"{environment}\" (known: {}); environments come from registered targets",
        join(known)
    )]
    UnknownEnvironment {
        environment: EnvironmentName,
        known: Vec<EnvironmentName>,
    },
    #[error(
        "package version {0:?} is neither a version (1.2.3) nor a range (^1.2, ~1.2.3, >=1.0, <2)"
    )]
    BadVersion(String),
    #[error("unknown package \"{id}\" (in the feed: {})", join(known))]
    UnknownPackage {
        id: PackageId,
        known: Vec<PackageId>,
    },
    #[error(
        "package \"{id}\" has no version matching {asked} (versions in the feed: {})",
        join(versions)
    )]
    NoSuchVersion {
        id: PackageId,
        asked: String,
        versions: Vec<semver::Version>,
    },
    #[error("a deployment needs at least one step")]
    NoSteps,
    #[error("duplicate step name \"{0}\"")]
    DuplicateName(String),
    #[error("unknown pool \"{pool}\" (known: {})", join(known))]
    UnknownPool {
        pool: PoolName,
        known: Vec<PoolName>,
    },
    #[error("unsupported shell \"{shell}\" (supported: {})", SHELLS.join(", "))]
    UnsupportedShell { shell: String },
    #[error(
        "script and variables are {0} bytes; the limit is {MAX_STEP_BYTES} (every task carries them through the broker); ship large files as packages instead"
    )]
    TooLarge(usize),
    #[error("{0} is more than the limit of {MAX_RETRIES}")]
    TooManyRetries(u32),
    #[error(
        "\"{0}\" is not a valid environment variable name (letters, digits and '_', not starting with a digit)"
    )]
    BadVariable(String),
    #[error("\"{0}\" is reserved; SHOAL_* variables are set by the worker")]
    ReservedVariable(String),
    #[error("\"{0}\" is both in variables and in sensitive_variables; give it once")]
    VariableTwice(String),
    #[error(
        "a health_check step checks each target from its own pool (its default pool, else the global default); remove pool"
    )]
    CheckWithPool,
    #[error("a health_check step checks targets; give it roles")]
    CheckWithoutRoles,
    #[error("target \"{0}\" has no health check and no endpoint to probe")]
    NotProbeable(TargetName),
    #[error(
        "no target in environment \"{environment}\" has any of the roles [{}] (roles there: {})",
        join(roles),
        join(roles_there)
    )]
    NoTargets {
        environment: EnvironmentName,
        roles: Vec<RoleName>,
        roles_there: Vec<RoleName>,
    },
}

/// Why a deployment was refused: the field (`steps[1].pool`) and what is wrong with it.
/// Shown as `field: problem`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct SpecError {
    /// The path of the field in the request: `project`, `steps[0].pool`, `steps[0]`.
    pub field: String,
    pub problem: Problem,
}

/// A step of a [`ValidDeployment`]: every setting checked, the shell parsed, the limits
/// made non-zero by type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidStep {
    name: String,
    action: StepAction,
    roles: Vec<RoleName>,
    pool: Option<PoolName>,
    timeout_secs: Option<NonZeroU64>,
    max_parallel: Option<NonZeroU32>,
    variables: BTreeMap<String, String>,
    sensitive_variables: BTreeMap<String, Sealed>,
    retries: u32,
    retry_backoff_secs: Option<u64>,
    max_attempts: Option<NonZeroU32>,
}

impl ValidStep {
    /// Its name, not empty and unique in its deployment.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// What it does, with its shell parsed.
    pub fn action(&self) -> &StepAction {
        &self.action
    }
    /// The package version it deploys, resolved against the feed.
    pub fn package(&self) -> Option<&ResolvedPackage> {
        match &self.action {
            StepAction::DeployPackage { package, .. } => Some(package),
            _ => None,
        }
    }

    /// Whether it checks its targets' health ([`Action::HealthCheck`]).
    pub fn checks_health(&self) -> bool {
        self.action == StepAction::HealthCheck
    }
    /// The roles it runs on: empty for once, with no target.
    pub fn roles(&self) -> &[RoleName] {
        &self.roles
    }
    /// Its explicit pool, registered when it was parsed.
    pub fn pool(&self) -> Option<&PoolName> {
        self.pool.as_ref()
    }
    /// Its timeout, if it sets one.
    pub fn timeout_secs(&self) -> Option<NonZeroU64> {
        self.timeout_secs
    }
    /// How many of its targets run at once; all when unset.
    pub fn max_parallel(&self) -> Option<NonZeroU32> {
        self.max_parallel
    }
    /// Valid environment variable names, none of them `SHOAL_*`.
    pub fn variables(&self) -> &BTreeMap<String, String> {
        &self.variables
    }
    /// Its sensitive variables, sealed; valid names, none of them `SHOAL_*` or also in
    /// [`ValidStep::variables`].
    pub fn sensitive_variables(&self) -> &BTreeMap<String, Sealed> {
        &self.sensitive_variables
    }
    /// At most [`MAX_RETRIES`].
    pub fn retries(&self) -> u32 {
        self.retries
    }
    /// Delay before the first retry, if it sets one.
    pub fn retry_backoff_secs(&self) -> Option<u64> {
        self.retry_backoff_secs
    }
    /// Runs allowed per attempt, if it sets them.
    pub fn max_attempts(&self) -> Option<NonZeroU32> {
        self.max_attempts
    }

    /// Parses the settings of the step at `field` (`steps[i]`) that need nothing but the
    /// step itself and the registered pools; `names` holds the names of the steps before it.
    fn parse(
        field: &str,
        step: &StepSpec,
        names: &mut BTreeSet<String>,
        registry: &impl Registry,
    ) -> Result<ValidStep, SpecError> {
        Self::parse_fields(step, names, registry).map_err(|(sub, problem)| SpecError {
            field: format!("{field}{sub}"),
            problem,
        })
    }

    /// [`ValidStep::parse`], with the failing field relative to the step.
    fn parse_fields(
        step: &StepSpec,
        names: &mut BTreeSet<String>,
        registry: &impl Registry,
    ) -> Result<ValidStep, Fault> {
        check_name_and_pool(step, names, registry)?;
        let action = parse_action(&step.action, registry)?;
        let size = step_bytes(step);
        if size > MAX_STEP_BYTES {
            return Err(("", Problem::TooLarge(size)));
        }
        let zero = |sub: &'static str| move || (sub, Problem::Zero);
        let timeout_secs = step
            .timeout_secs
            .map(|n| NonZeroU64::new(n).ok_or_else(zero(".timeout_secs")))
            .transpose()?;
        let max_parallel = step
            .max_parallel
            .map(|n| NonZeroU32::new(n).ok_or_else(zero(".max_parallel")))
            .transpose()?;
        let max_attempts = step
            .max_attempts
            .map(|n| NonZeroU32::new(n).ok_or_else(zero(".max_attempts")))
            .transpose()?;
        if step.retries > MAX_RETRIES {
            return Err((".retries", Problem::TooManyRetries(step.retries)));
        }
        check_variables(step.variables.keys()).map_err(|p| (".variables", p))?;
        check_variables(step.sensitive_variables.keys())
            .map_err(|p| (".sensitive_variables", p))?;
        if let Some(twice) = step
            .sensitive_variables
            .keys()
            .find(|k| step.variables.contains_key(*k))
        {
            let problem = Problem::VariableTwice(twice.clone());
            return Err((".sensitive_variables", problem));
        }
        if action == StepAction::HealthCheck {
            if step.pool.is_some() {
                return Err((".pool", Problem::CheckWithPool));
            }
            if step.roles.is_empty() {
                return Err((".roles", Problem::CheckWithoutRoles));
            }
        }
        Ok(ValidStep {
            name: step.name.clone(),
            action,
            roles: step.roles.clone(),
            pool: step.pool.clone(),
            timeout_secs,
            max_parallel,
            variables: step.variables.clone(),
            sensitive_variables: step.sensitive_variables.clone(),
            retries: step.retries,
            retry_backoff_secs: step.retry_backoff_secs,
            max_attempts,
        })
    }

    /// Checks the step against the targets of its environment: it must run on at least one,
    /// and a health check step must be able to probe each of them.
    fn check_targets(
        &self,
        field: &str,
        environment: &EnvironmentName,
        targets: &[&Target],
    ) -> Result<(), SpecError> {
        if self.roles.is_empty() {
            return Ok(());
        }
        let mut matching = targets.iter().filter(|t| runs_on(&self.roles, t));
        if self.checks_health()
            && let Some(t) = matching.clone().find(|t| t.probe().is_none())
        {
            return Err(SpecError {
                field: field.to_owned(),
                problem: Problem::NotProbeable(t.name.clone()),
            });
        }
        if matching.next().is_none() {
            let there: BTreeSet<&RoleName> = targets.iter().flat_map(|t| &t.roles).collect();
            return Err(SpecError {
                field: format!("{field}.roles"),
                problem: Problem::NoTargets {
                    environment: environment.clone(),
                    roles: self.roles.clone(),
                    roles_there: there.into_iter().cloned().collect(),
                },
            });
        }
        Ok(())
    }
}

impl From<ValidStep> for StepSpec {
    /// The spec it was parsed from, field for field.
    fn from(s: ValidStep) -> StepSpec {
        StepSpec {
            name: s.name,
            action: match s.action {
                StepAction::Script { script, shell } => Action::Script {
                    script,
                    shell: shell.map(|s| s.as_str().to_owned()),
                },
                StepAction::Noop => Action::Noop,
                StepAction::HealthCheck => Action::HealthCheck,
                StepAction::DeployPackage {
                    package,
                    asked,
                    script,
                    shell,
                } => Action::DeployPackage {
                    package: PackageRef {
                        id: package.id,
                        version: asked,
                    },
                    script,
                    shell: shell.map(|s| s.as_str().to_owned()),
                },
            },
            roles: s.roles,
            pool: s.pool,
            timeout_secs: s.timeout_secs.map(NonZeroU64::get),
            max_parallel: s.max_parallel.map(NonZeroU32::get),
            variables: s.variables,
            sensitive_variables: s.sensitive_variables,
            retries: s.retries,
            retry_backoff_secs: s.retry_backoff_secs,
            max_attempts: s.max_attempts.map(NonZeroU32::get),
        }
    }
}

/// A deployment that may be planned: a project, a known environment, and at least one step,
/// each valid and able to run on the environment's targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidDeployment {
    project: String,
    environment: EnvironmentName,
    steps: Vec<ValidStep>,
    unhealthy_targets: UnhealthyTargets,
}

impl ValidDeployment {
    /// Parses a submitted deployment against what the registry knows.
    ///
    /// # Errors
    /// The first field that is wrong, in the order the request is read.
    pub fn parse(
        spec: &DeploymentSpec,
        registry: &impl Registry,
    ) -> Result<ValidDeployment, SpecError> {
        let at = |field: &str, problem: Problem| SpecError {
            field: field.to_owned(),
            problem,
        };
        if spec.project.trim().is_empty() {
            return Err(at("project", Problem::Empty));
        }
        if !registry.has_environment(&spec.environment) {
            let environment = spec.environment.clone();
            let known = registry.environments();
            return Err(at(
                "environment",
                Problem::UnknownEnvironment { environment, known },
            ));
        }
        if spec.steps.is_empty() {
            return Err(at("steps", Problem::NoSteps));
        }
        let targets = registry.targets_in(&spec.environment);
        let mut names = BTreeSet::new();
        let mut steps = Vec::with_capacity(spec.steps.len());
        for (i, step) in spec.steps.iter().enumerate() {
            let field = format!("steps[{i}]");
            let step = ValidStep::parse(&field, step, &mut names, registry)?;
            step.check_targets(&field, &spec.environment, &targets)?;
            steps.push(step);
        }
        Ok(ValidDeployment {
            project: spec.project.clone(),
            environment: spec.environment.clone(),
            steps,
            unhealthy_targets: spec.unhealthy_targets,
        })
    }

    /// Its project, not blank.
    pub fn project(&self) -> &str {
        &self.project
    }
    /// Its environment, known when it was parsed.
    pub fn environment(&self) -> &EnvironmentName {
        &self.environment
    }
    /// Its steps, at least one.
    pub fn steps(&self) -> &[ValidStep] {
        &self.steps
    }
    /// What to do with targets that are unhealthy before a step runs on them.
    pub fn unhealthy_targets(&self) -> UnhealthyTargets {
        self.unhealthy_targets
    }
}

impl From<ValidDeployment> for DeploymentSpec {
    /// The spec it was parsed from, field for field.
    fn from(d: ValidDeployment) -> DeploymentSpec {
        DeploymentSpec {
            project: d.project,
            environment: d.environment,
            steps: d.steps.into_iter().map(StepSpec::from).collect(),
            unhealthy_targets: d.unhealthy_targets,
        }
    }
}

/// A problem with a field of a step, the field relative to the step (`.pool`).
type Fault = (&'static str, Problem);

/// The step's name is not blank and not taken by an earlier step; its pool is registered.
fn check_name_and_pool(
    step: &StepSpec,
    names: &mut BTreeSet<String>,
    registry: &impl Registry,
) -> Result<(), Fault> {
    if step.name.trim().is_empty() {
        return Err((".name", Problem::Empty));
    }
    if !names.insert(step.name.clone()) {
        return Err((".name", Problem::DuplicateName(step.name.clone())));
    }
    if let Some(pool) = &step.pool
        && !registry.has_pool(pool)
    {
        let known = registry.pools();
        let pool = pool.clone();
        return Err((".pool", Problem::UnknownPool { pool, known }));
    }
    Ok(())
}

fn parse_action(action: &Action, registry: &impl Registry) -> Result<StepAction, Fault> {
    let shell = |shell: &Option<String>| {
        (shell.as_deref().map(Shell::parse).transpose()).map_err(|p| (".action.shell", p))
    };
    Ok(match action {
        Action::Script { script, shell: s } => StepAction::Script {
            script: script.clone(),
            shell: shell(s)?,
        },
        Action::Noop => StepAction::Noop,
        Action::HealthCheck => StepAction::HealthCheck,
        Action::DeployPackage {
            package,
            script,
            shell: s,
        } => StepAction::DeployPackage {
            package: resolve_package(package, registry)?,
            asked: package.version.clone(),
            script: script.clone(),
            shell: shell(s)?,
        },
    })
}

/// The version a package reference names: the exact version, or the newest in the feed
/// that matches the range.
fn resolve_package(r: &PackageRef, registry: &impl Registry) -> Result<ResolvedPackage, Fault> {
    // A version is exact, build metadata included; anything else is a range (which, as in
    // Cargo, matches a pre-release only when the range names one of its version).
    let matches: Box<dyn Fn(&semver::Version) -> bool> = match semver::Version::parse(&r.version) {
        Ok(exact) => Box::new(move |v| *v == exact),
        Err(_) => {
            let range = semver::VersionReq::parse(&r.version).map_err(|_| {
                let problem = Problem::BadVersion(r.version.clone());
                (".action.package.version", problem)
            })?;
            Box::new(move |v| range.matches(v))
        }
    };
    let versions = registry.package_versions(&r.id);
    if versions.is_empty() {
        let known = registry.package_ids();
        let problem = Problem::UnknownPackage {
            id: r.id.clone(),
            known,
        };
        return Err((".action.package.id", problem));
    }
    let newest = versions
        .iter()
        .filter(|(v, _)| matches(v))
        .max_by(|a, b| a.0.cmp(&b.0));
    let Some((version, sha256)) = newest else {
        let problem = Problem::NoSuchVersion {
            id: r.id.clone(),
            asked: r.version.clone(),
            versions: {
                let mut all: Vec<semver::Version> = versions.into_iter().map(|(v, _)| v).collect();
                all.sort();
                all
            },
        };
        return Err((".action.package.version", problem));
    };
    Ok(ResolvedPackage {
        id: r.id.clone(),
        version: version.clone(),
        sha256: *sha256,
    })
}

/// What every task of the step carries through the broker: script plus variables.
fn step_bytes(step: &StepSpec) -> usize {
    let script = match &step.action {
        Action::Script { script, .. } | Action::DeployPackage { script, .. } => script.len(),
        Action::Noop | Action::HealthCheck => 0,
    };
    let variables: usize = step.variables.iter().map(|(k, v)| k.len() + v.len()).sum();
    let sensitive: usize = (step.sensitive_variables.iter())
        .map(|(k, v)| k.len() + v.len())
        .sum();
    script + variables + sensitive
}

fn check_variables<'a>(mut names: impl Iterator<Item = &'a String> + Clone) -> Result<(), Problem> {
    if let Some(bad) = names.clone().find(|k| !is_env_name(k)) {
        return Err(Problem::BadVariable(bad.clone()));
    }
    if let Some(bad) = names.find(|k| k.starts_with("SHOAL_")) {
        return Err(Problem::ReservedVariable(bad.clone()));
    }
    Ok(())
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Items joined by `, `, or `none`.
fn join<T: fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".to_owned();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;
