//! Commands and the events they produce, or why they are refused.

use super::state::State;
use shoal_shared::events::{CheckTrigger, Event, PlannedStep, PlannedTask};
use shoal_shared::messages::{WIRE_SCHEMA_VERSION, WorkerBody, WorkerMessage};
use shoal_shared::{
    Action, CheckId, DeploymentId, DeploymentSpec, DeploymentState, EnvironmentName, EventId,
    HealthCheck, Pool, PoolName, RoleName, Target, TargetKind, TargetName, TaskId, TaskState,
    Timestamp, WorkerName, resolve_pool,
};
use std::collections::BTreeSet;

/// What the planner is asked to do. Every change of state goes through one of these.
#[derive(Debug, Clone)]
pub enum Command {
    /// Registers the global default pool if the log does not have it yet.
    EnsureDefaultPool,
    RegisterPool(Pool),
    RegisterTarget(Target),
    UpdateTarget {
        name: TargetName,
        update: TargetUpdate,
    },
    CreateDeployment {
        id: DeploymentId,
        spec: DeploymentSpec,
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
    /// A fact reported by a worker.
    WorkerReport(WorkerMessage),
    /// A message that could not be decoded; recorded so nothing is lost. The id makes a
    /// redelivered copy a duplicate.
    RejectMessage {
        id: EventId,
        subject: String,
        reason: String,
        bytes: Vec<u8>,
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

/// Most bytes of script plus variables a step may carry, so every task message stays well
/// under the broker's default 1 MiB payload limit.
pub const MAX_STEP_BYTES: usize = 256 * 1024;

/// Most retries a step may ask for.
pub const MAX_RETRIES: u32 = 100;

/// How long workers have to confirm that a cancelled deployment's running tasks stopped.
pub const CANCEL_GRACE_SECS: u64 = 30;

/// Shells a script step may name.
pub const SHELLS: [&str; 2] = ["bash", "sh"];

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
        Command::EnsureDefaultPool => Ok(if state.pools.contains_key(default_pool) {
            vec![]
        } else {
            vec![NewEvent::new(Event::PoolRegistered {
                pool: default_pool.clone(),
                region: None,
                description: Some("global default pool".to_owned()),
            })]
        }),
        Command::RegisterPool(pool) => {
            if state.pools.contains_key(&pool.name) {
                return Err(Rejection::Invalid(format!(
                    "name: pool \"{}\" already exists (known: {})",
                    pool.name,
                    known_pools(state)
                )));
            }
            Ok(vec![NewEvent::new(Event::PoolRegistered {
                pool: pool.name.clone(),
                region: pool.region.clone(),
                description: pool.description.clone(),
            })])
        }
        Command::RegisterTarget(target) => {
            if state.targets.contains_key(&target.name) {
                return Err(Rejection::Invalid(format!(
                    "name: target \"{0}\" already exists; change it with `shoal target set-pool {0}` or PUT /api/targets/{0}",
                    target.name
                )));
            }
            check_target(state, target)?;
            Ok(vec![NewEvent::new(Event::TargetRegistered {
                target: target.clone(),
            })])
        }
        Command::UpdateTarget { name, update } => {
            let Some(doc) = state.targets.get(name) else {
                return Err(Rejection::NotFound(format!(
                    "unknown target \"{name}\" (known: {})",
                    join(state.targets.keys())
                )));
            };
            let mut target = doc.target.clone();
            if let Some(kind) = update.kind {
                target.kind = kind;
            }
            if let Some(env) = &update.environment {
                target.environment = env.clone();
            }
            if let Some(roles) = &update.roles {
                target.roles = roles.clone();
            }
            if let Some(endpoint) = &update.endpoint {
                target.endpoint = endpoint.clone();
            }
            if let Some(pool) = &update.default_pool {
                target.default_pool = pool.clone();
            }
            if let Some(check) = &update.health_check {
                target.health_check = check.clone();
            }
            if let Some(secs) = update.health_interval_secs {
                target.health_interval_secs = secs;
            }
            check_target(state, &target)?;
            if target == doc.target {
                return Ok(vec![]);
            }
            Ok(vec![NewEvent::new(Event::TargetUpdated { target })])
        }
        Command::CreateDeployment { id, spec } => {
            if state.deployments.contains_key(id) {
                return Err(Rejection::Conflict(format!(
                    "deployment {id} already exists"
                )));
            }
            let steps = plan(state, default_pool, spec)?;
            Ok(vec![NewEvent::new(Event::DeploymentCreated {
                deployment: *id,
                spec: spec.clone(),
                steps,
            })])
        }
        Command::MarkDispatched {
            deployment,
            task,
            attempt,
            stream_seq,
        } => Ok(if state.outbox.contains(&(*task, *attempt)) {
            vec![NewEvent::new(Event::TaskDispatched {
                deployment: *deployment,
                task: *task,
                attempt: *attempt,
                stream_seq: *stream_seq,
            })]
        } else {
            vec![]
        }),
        Command::CancelDeployment { id, reason } => {
            let Some(d) = state.deployments.get(id) else {
                return Err(Rejection::NotFound(format!("unknown deployment {id}")));
            };
            match d.state {
                DeploymentState::Cancelling => Ok(vec![]),
                s if s.is_terminal() => Err(Rejection::Conflict(format!(
                    "deployment {id} has already ended ({}); only a queued or running deployment can be cancelled",
                    format!("{s:?}").to_lowercase()
                ))),
                _ => Ok(vec![NewEvent::new(Event::DeploymentCancelRequested {
                    deployment: *id,
                    reason: reason
                        .clone()
                        .filter(|r| !r.trim().is_empty())
                        .unwrap_or_else(|| "cancelled on request".to_owned()),
                })]),
            }
        }
        Command::RetryDue { task, attempt } => Ok(match state.tasks.get(task) {
            Some(t) if t.state == TaskState::RetryScheduled && t.attempt == *attempt => {
                vec![NewEvent::new(Event::TaskPlanned {
                    deployment: t.deployment,
                    task: *task,
                    attempt: attempt + 1,
                    pool: t.pool.clone(),
                    rule: t.pool_rule,
                })]
            }
            _ => vec![],
        }),
        Command::CancelGraceExpired { deployment } => {
            let Some(d) = state
                .deployments
                .get(deployment)
                .filter(|d| d.state == DeploymentState::Cancelling)
            else {
                return Ok(vec![]);
            };
            Ok(d.steps
                .iter()
                .flat_map(|s| &s.tasks)
                .filter_map(|t| state.tasks.get(t))
                .filter(|t| t.state == TaskState::Running)
                .map(|t| {
                    let on = t
                        .worker
                        .as_ref()
                        .map_or_else(String::new, |w| format!(" on worker \"{w}\""));
                    NewEvent::new(Event::TaskCancelled {
                        deployment: *deployment,
                        task: t.id,
                        attempt: t.attempt,
                        reason: format!(
                            "no worker confirmed within {CANCEL_GRACE_SECS} s that it stopped; its last run{on} may still be going"
                        ),
                    })
                })
                .collect())
        }
        Command::CheckTarget {
            check,
            target,
            trigger,
            at,
            deadline_secs,
        } => {
            let doc = known_target(state, target)?;
            let Some(probe) = doc.target.probe() else {
                return Err(Rejection::Conflict(format!(
                    "target \"{target}\" has no health check and no endpoint to probe; set one (PUT /api/targets/{target} with \"health_check\")"
                )));
            };
            let (pool, rule) = resolve_pool(None, doc.target.default_pool.as_ref(), default_pool);
            if let Some(p) = &doc.pending_check
                && p.pool == pool
                && p.probe == probe
                && p.deadline_at > *at
            {
                return Ok(vec![]);
            }
            let deadline_at = at.plus_millis(
                deadline_secs
                    .saturating_add(probe.timeout_secs())
                    .saturating_mul(1000),
            );
            Ok(vec![NewEvent::new(Event::HealthCheckPlanned {
                check: *check,
                target: target.clone(),
                pool,
                rule,
                probe,
                trigger: *trigger,
                deadline_at,
            })])
        }
        Command::CheckDeadline { target, check } => Ok(
            match state
                .targets
                .get(target)
                .and_then(|t| t.pending_check.as_ref())
            {
                Some(p) if p.check == *check => {
                    let secs = p.deadline_at.millis_since(p.planned_at) / 1000;
                    vec![NewEvent::new(Event::HealthCheckUnavailable {
                        check: *check,
                        target: target.clone(),
                        pool: p.pool.clone(),
                        reason: format!(
                            "no worker of pool \"{}\" ran the check within {secs} s; is a worker of the pool online?",
                            p.pool
                        ),
                    })]
                }
                _ => vec![],
            },
        ),
        Command::DrainWorker { worker, drain } => {
            let Some(w) = state.workers.get(worker) else {
                return Err(Rejection::NotFound(format!(
                    "unknown worker \"{worker}\" (known: {})",
                    join(state.workers.keys())
                )));
            };
            Ok(if w.draining == *drain {
                vec![]
            } else if *drain {
                vec![NewEvent::new(Event::WorkerDrainRequested {
                    worker: worker.clone(),
                    pool: w.pool.clone(),
                })]
            } else {
                vec![NewEvent::new(Event::WorkerResumed {
                    worker: worker.clone(),
                    pool: w.pool.clone(),
                })]
            })
        }
        Command::WorkerReport(msg) => Ok(vec![report(state, msg)]),
        Command::RejectMessage {
            id,
            subject,
            reason,
            bytes,
        } => Ok(vec![NewEvent {
            id: *id,
            event: rejected(subject, reason, bytes),
        }]),
    }
}

/// The event recording a message that was refused, with its first bytes.
pub fn rejected(subject: &str, reason: &str, bytes: &[u8]) -> Event {
    Event::MessageRejected {
        subject: subject.to_owned(),
        reason: reason.to_owned(),
        size: bytes.len() as u64,
        head: bytes[..bytes.len().min(256)].to_vec(),
    }
}

fn report(state: &State, msg: &WorkerMessage) -> NewEvent {
    let id = msg.event_id;
    let subject = format!("results.{}.{}", msg.pool, msg.worker);
    if msg.schema_version > WIRE_SCHEMA_VERSION {
        let reason = format!(
            "unknown schema version {} from worker \"{}\" (this planner reads up to {WIRE_SCHEMA_VERSION}); upgrade the planner",
            msg.schema_version, msg.worker
        );
        return NewEvent {
            id,
            event: rejected(&subject, &reason, &[]),
        };
    }
    let task_known = |task: &TaskId, deployment: &DeploymentId| {
        state
            .tasks
            .get(task)
            .is_some_and(|t| t.deployment == *deployment)
    };
    let worker = msg.worker.clone();
    let event = match &msg.body {
        WorkerBody::Joined {
            region,
            slots,
            version,
        } => Event::WorkerJoined {
            worker,
            pool: msg.pool.clone(),
            region: region.clone(),
            slots: *slots,
            version: version.clone(),
            at: msg.sent_at,
        },
        WorkerBody::Rejected {
            subject,
            reason,
            head,
            size,
        } => Event::MessageRejected {
            subject: subject.clone(),
            reason: format!("worker \"{}\" rejected it: {reason}", msg.worker),
            size: *size,
            head: head.clone(),
        },
        WorkerBody::Left { reason } => Event::WorkerLeft {
            worker,
            pool: msg.pool.clone(),
            reason: reason.clone(),
            at: msg.sent_at,
        },
        WorkerBody::HealthChecked { target, .. } if !state.targets.contains_key(target) => {
            let reason = format!(
                "worker \"{}\" reported a health check of unknown target \"{target}\"",
                msg.worker
            );
            rejected(&subject, &reason, &[])
        }
        WorkerBody::HealthChecked {
            check,
            target,
            task,
            state: health,
            reason,
            duration_ms,
        } => Event::TargetHealthChecked {
            check: *check,
            target: target.clone(),
            task: *task,
            worker,
            pool: msg.pool.clone(),
            state: *health,
            reason: reason.clone(),
            duration_ms: *duration_ms,
            at: msg.sent_at,
        },
        WorkerBody::TaskStarted {
            deployment, task, ..
        }
        | WorkerBody::TaskOutput {
            deployment, task, ..
        }
        | WorkerBody::TaskFinished {
            deployment, task, ..
        } if !task_known(task, deployment) => {
            let reason = format!(
                "worker \"{}\" reported on unknown task {task} of deployment {deployment}",
                msg.worker
            );
            rejected(&subject, &reason, &[])
        }
        WorkerBody::TaskStarted {
            deployment,
            task,
            attempt,
            delivery,
        } => Event::TaskStarted {
            deployment: *deployment,
            task: *task,
            attempt: *attempt,
            delivery: *delivery,
            worker,
            pool: msg.pool.clone(),
            at: msg.sent_at,
        },
        WorkerBody::TaskOutput {
            deployment,
            task,
            attempt,
            delivery,
            first_line,
            lines,
        } => Event::TaskOutput {
            deployment: *deployment,
            task: *task,
            attempt: *attempt,
            delivery: *delivery,
            worker,
            first_line: *first_line,
            lines: lines.clone(),
        },
        WorkerBody::TaskFinished {
            deployment,
            task,
            attempt,
            delivery,
            outcome,
            exit_code,
            reason,
        } => Event::TaskFinished {
            deployment: *deployment,
            task: *task,
            attempt: *attempt,
            delivery: *delivery,
            worker,
            outcome: *outcome,
            exit_code: *exit_code,
            reason: reason.clone(),
            at: msg.sent_at,
        },
    };
    NewEvent { id, event }
}

fn known_target<'a>(
    state: &'a State,
    target: &TargetName,
) -> Result<&'a super::state::TargetDoc, Rejection> {
    state.targets.get(target).ok_or_else(|| {
        Rejection::NotFound(format!(
            "unknown target \"{target}\" (known: {})",
            join(state.targets.keys())
        ))
    })
}

fn check_target(state: &State, target: &Target) -> Result<(), Rejection> {
    if let Some(check) = &target.health_check {
        check
            .validate()
            .map_err(|e| Rejection::Invalid(format!("health_check.{e}")))?;
    }
    if target.health_interval_secs == Some(0) {
        return Err(Rejection::Invalid(
            "health_interval_secs: must be at least 1".to_owned(),
        ));
    }
    if let Some(pool) = &target.default_pool
        && !state.pools.contains_key(pool)
    {
        return Err(Rejection::Invalid(format!(
            "default_pool: unknown pool \"{pool}\" (known: {}); register it first (`shoal pool add {pool}`, POST /api/pools)",
            known_pools(state)
        )));
    }
    Ok(())
}

fn known_pools(state: &State) -> String {
    join(state.pools.keys())
}

fn join<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let v: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(", ")
    }
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Validates a deployment and decides, for every step and target, which pool runs it.
fn plan(
    state: &State,
    default_pool: &PoolName,
    spec: &DeploymentSpec,
) -> Result<Vec<PlannedStep>, Rejection> {
    let invalid = |msg: String| Err(Rejection::Invalid(msg));
    if spec.project.trim().is_empty() {
        return invalid("project: must not be empty".to_owned());
    }
    if !state.environments().contains(&spec.environment) {
        return invalid(format!(
            "environment: unknown environment \"{}\" (known: {}); environments come from registered targets",
            spec.environment,
            join(state.environments())
        ));
    }
    if spec.steps.is_empty() {
        return invalid("steps: a deployment needs at least one step".to_owned());
    }
    let env_targets: Vec<&Target> = state
        .targets
        .values()
        .map(|t| &t.target)
        .filter(|t| t.environment == spec.environment)
        .collect();
    let mut names = BTreeSet::new();
    let mut planned = Vec::with_capacity(spec.steps.len());
    for (i, step) in spec.steps.iter().enumerate() {
        let at = format!("steps[{i}]");
        if step.name.trim().is_empty() {
            return invalid(format!("{at}.name: must not be empty"));
        }
        if !names.insert(step.name.as_str()) {
            return invalid(format!("{at}.name: duplicate step name \"{}\"", step.name));
        }
        if let Some(pool) = &step.pool
            && !state.pools.contains_key(pool)
        {
            return invalid(format!(
                "{at}.pool: unknown pool \"{pool}\" (known: {})",
                known_pools(state)
            ));
        }
        if let Action::Script {
            shell: Some(shell), ..
        } = &step.action
            && !SHELLS.contains(&shell.as_str())
        {
            return invalid(format!(
                "{at}.action.shell: unsupported shell \"{shell}\" (supported: {})",
                SHELLS.join(", ")
            ));
        }
        let size = match &step.action {
            Action::Script { script, .. } => script.len(),
            Action::Noop | Action::HealthCheck => 0,
        } + step
            .variables
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
        if size > MAX_STEP_BYTES {
            return invalid(format!(
                "{at}: script and variables are {size} bytes; the limit is {MAX_STEP_BYTES} (every task carries them through the broker); ship large files as packages instead"
            ));
        }
        if step.timeout_secs == Some(0) {
            return invalid(format!("{at}.timeout_secs: must be at least 1"));
        }
        if step.max_parallel == Some(0) {
            return invalid(format!("{at}.max_parallel: must be at least 1"));
        }
        if step.max_attempts == Some(0) {
            return invalid(format!("{at}.max_attempts: must be at least 1"));
        }
        if step.retries > MAX_RETRIES {
            return invalid(format!(
                "{at}.retries: {} is more than the limit of {MAX_RETRIES}",
                step.retries
            ));
        }
        if let Some(bad) = step.variables.keys().find(|k| !is_env_name(k)) {
            return invalid(format!(
                "{at}.variables: \"{bad}\" is not a valid environment variable name (letters, digits and '_', not starting with a digit)"
            ));
        }
        if let Some(bad) = step.variables.keys().find(|k| k.starts_with("SHOAL_")) {
            return invalid(format!(
                "{at}.variables: \"{bad}\" is reserved; SHOAL_* variables are set by the worker"
            ));
        }
        if step.action == Action::HealthCheck {
            if step.pool.is_some() {
                return invalid(format!(
                    "{at}.pool: a health_check step checks each target from its own pool (its default pool, else the global default); remove pool"
                ));
            }
            if step.roles.is_empty() {
                return invalid(format!(
                    "{at}.roles: a health_check step checks targets; give it roles"
                ));
            }
            if let Some(t) = env_targets
                .iter()
                .filter(|t| t.roles.iter().any(|r| step.roles.contains(r)))
                .find(|t| t.probe().is_none())
            {
                return invalid(format!(
                    "{at}: target \"{}\" has no health check and no endpoint to probe",
                    t.name
                ));
            }
        }
        let tasks = if step.roles.is_empty() {
            let (pool, rule) = resolve_pool(step.pool.as_ref(), None, default_pool);
            vec![PlannedTask {
                task: TaskId::new(),
                target: None,
                endpoint: None,
                pool,
                rule,
            }]
        } else {
            let matching: Vec<&&Target> = env_targets
                .iter()
                .filter(|t| t.roles.iter().any(|r| step.roles.contains(r)))
                .collect();
            if matching.is_empty() {
                let roles_there: BTreeSet<&RoleName> =
                    env_targets.iter().flat_map(|t| &t.roles).collect();
                return invalid(format!(
                    "{at}.roles: no target in environment \"{}\" has any of the roles [{}] (roles there: {})",
                    spec.environment,
                    join(&step.roles),
                    join(roles_there)
                ));
            }
            matching
                .into_iter()
                .map(|t| {
                    let (pool, rule) =
                        resolve_pool(step.pool.as_ref(), t.default_pool.as_ref(), default_pool);
                    PlannedTask {
                        task: TaskId::new(),
                        target: Some(t.name.clone()),
                        endpoint: t.endpoint.clone(),
                        pool,
                        rule,
                    }
                })
                .collect()
        };
        planned.push(PlannedStep { tasks });
    }
    Ok(planned)
}
