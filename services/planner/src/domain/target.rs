//! Deployment targets: the target document with its health (the pending check, the last
//! result, a bounded history), how target and health-check events change it, and the
//! commands that register, update and remove targets and plan and time out their checks.

use super::decide::{NewEvent, Rejection, TargetUpdate, join};
use super::state::{Changes, DocKey, State};
use serde::{Deserialize, Serialize};
use shoal_shared::events::{CheckTrigger, Event};
use shoal_shared::health::HEALTH_HISTORY;
use shoal_shared::{
    CheckId, HealthCheck, HealthState, PoolName, PoolRule, Target, TargetName, TaskId, Timestamp,
    WorkerName, resolve_pool,
};

/// A registered target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetDoc {
    #[serde(flatten)]
    pub target: Target,
    pub registered_at: Timestamp,
    pub updated_at: Timestamp,
    /// The last health check's result; `None`: never checked (`unknown`).
    #[serde(default)]
    pub health: Option<HealthRecord>,
    /// The last [`HEALTH_HISTORY`] results, oldest first.
    #[serde(default)]
    pub health_history: Vec<HealthRecord>,
    /// A check planned and not yet answered.
    #[serde(default)]
    pub pending_check: Option<PendingCheck>,
}

/// One result of a health check of a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthRecord {
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

/// A health check on its way to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCheck {
    pub check: CheckId,
    pub pool: PoolName,
    pub rule: PoolRule,
    pub probe: HealthCheck,
    pub trigger: CheckTrigger,
    pub planned_at: Timestamp,
    pub deadline_at: Timestamp,
}

impl TargetDoc {
    fn new(target: Target, at: Timestamp) -> TargetDoc {
        TargetDoc {
            target,
            registered_at: at,
            updated_at: at,
            health: None,
            health_history: Vec::new(),
            pending_check: None,
        }
    }

    /// A worker's answer. Only the answer to the check under way, or a deployment's own
    /// check, becomes the target's health; a late answer (to a check already called
    /// unavailable, or replaced after a pool change) only joins the history.
    fn checked(&mut self, mut record: HealthRecord) {
        let pending = self.pending_check.take_if(|p| p.check == record.check);
        let counts = pending.is_some() || record.task.is_some();
        record.rule = pending.map(|p| p.rule).or(record.rule);
        if counts {
            self.record_health(record);
        } else {
            self.record_history(record);
        }
    }

    /// No worker answered the check in time: the target is `unavailable`.
    fn unavailable(&mut self, check: CheckId, pool: &PoolName, reason: &str, at: Timestamp) {
        let rule = self
            .pending_check
            .take_if(|p| p.check == check)
            .map(|p| p.rule);
        self.record_health(HealthRecord {
            check,
            state: HealthState::Unavailable,
            reason: Some(reason.to_owned()),
            checked_at: at,
            worker: None,
            pool: pool.clone(),
            rule,
            duration_ms: None,
            task: None,
        });
    }

    /// Makes a result the target's health and keeps it in the bounded history.
    fn record_health(&mut self, record: HealthRecord) {
        self.health = Some(record.clone());
        self.record_history(record);
    }

    /// Keeps a result in the bounded history only.
    fn record_history(&mut self, record: HealthRecord) {
        self.health_history.push(record);
        let excess = self.health_history.len().saturating_sub(HEALTH_HISTORY);
        self.health_history.drain(..excess);
    }

    /// The target's health state (`unknown` when never checked, or when its checks are
    /// off: an old result no longer says anything, so it must not stop deployments).
    pub fn health_state(&self) -> HealthState {
        if self.target.health_check == Some(HealthCheck::Off) {
            return HealthState::Unknown;
        }
        self.health
            .as_ref()
            .map_or(HealthState::Unknown, |h| h.state)
    }
}

impl State {
    /// How target and health-check events change the state.
    pub(super) fn apply_target(&mut self, at: Timestamp, event: &Event, changes: &mut Changes) {
        let name = match event {
            Event::TargetRegistered { target } => {
                let doc = TargetDoc::new(target.clone(), at);
                self.targets.insert(target.name.clone(), doc);
                &target.name
            }
            Event::TargetUpdated { target } => {
                let Some(doc) = self.targets.get_mut(&target.name) else {
                    return;
                };
                doc.target = target.clone();
                doc.updated_at = at;
                &target.name
            }
            Event::TargetRemoved { target } => {
                // The writer deletes the document of a key the state no longer holds.
                self.targets.remove(target);
                target
            }
            Event::HealthCheckPlanned {
                check,
                target,
                pool,
                rule,
                probe,
                trigger,
                deadline_at,
            } => {
                let Some(doc) = self.targets.get_mut(target) else {
                    return;
                };
                doc.pending_check = Some(PendingCheck {
                    check: *check,
                    pool: pool.clone(),
                    rule: *rule,
                    probe: probe.clone(),
                    trigger: *trigger,
                    planned_at: at,
                    deadline_at: *deadline_at,
                });
                target
            }
            Event::TargetHealthChecked { target, .. } => {
                if !self.health_checked(event) {
                    return;
                }
                target
            }
            Event::HealthCheckUnavailable {
                check,
                target,
                pool,
                reason,
            } => {
                let Some(doc) = self.targets.get_mut(target) else {
                    return;
                };
                doc.unavailable(*check, pool, reason, at);
                target
            }
            _ => return,
        };
        changes.docs.insert(DocKey::Target(name.clone()));
    }

    /// `TargetHealthChecked`: records a worker's answer; false when the target is unknown.
    fn health_checked(&mut self, event: &Event) -> bool {
        let Event::TargetHealthChecked {
            check,
            target,
            task,
            worker,
            pool,
            state,
            reason,
            duration_ms,
            at,
        } = event
        else {
            return false;
        };
        // A step's own check was routed like its task.
        let step_rule = task.and_then(|t| self.tasks.get(&t)).map(|t| t.pool_rule);
        let Some(doc) = self.targets.get_mut(target) else {
            return false;
        };
        doc.checked(HealthRecord {
            check: *check,
            state: *state,
            reason: reason.clone(),
            checked_at: *at,
            worker: Some(worker.clone()),
            pool: pool.clone(),
            rule: step_rule,
            duration_ms: Some(*duration_ms),
            task: *task,
        });
        true
    }

    /// The target, or a rejection naming the known ones.
    fn known_target(&self, target: &TargetName) -> Result<&TargetDoc, Rejection> {
        self.targets.get(target).ok_or_else(|| {
            Rejection::NotFound(format!(
                "unknown target \"{target}\" (known: {})",
                join(self.targets.keys())
            ))
        })
    }
}

/// The target whose health an event may change, the check, and the target's health state
/// before the event (`None`: never checked).
pub(super) type HealthBefore = (TargetName, CheckId, Option<HealthState>);

/// What [`health_changed`] compares against, read before a check's answer (or its deadline)
/// is applied.
pub(super) fn health_before(state: &State, event: &Event) -> Option<HealthBefore> {
    let (Event::TargetHealthChecked { target, check, .. }
    | Event::HealthCheckUnavailable { target, check, .. }) = event
    else {
        return None;
    };
    let doc = state.targets.get(target)?;
    Some((target.clone(), *check, doc.health.as_ref().map(|h| h.state)))
}

/// `TargetHealthChanged` when the event applied since [`health_before`] made the target's
/// health another state (a late answer that only joined the history changes nothing).
pub(super) fn health_changed(state: &State, before: HealthBefore) -> Option<Event> {
    let (target, check, from) = before;
    let to = state.targets.get(&target)?.health.as_ref()?.state;
    (from != Some(to)).then_some(Event::TargetHealthChanged {
        target,
        check,
        from,
        to,
    })
}

/// `RegisterTarget`: a new target; a name already taken is refused.
pub(super) fn register(state: &State, target: &Target) -> Result<Vec<NewEvent>, Rejection> {
    if state.targets.contains_key(&target.name) {
        return Err(Rejection::Conflict(format!(
            "name: target \"{0}\" already exists; change it with `shoal target set-pool {0}` or `shoal target set-check {0}` (PUT /api/targets/{0}), or remove it with `shoal target rm {0}`",
            target.name
        )));
    }
    check_target(state, target)?;
    Ok(vec![NewEvent::new(Event::TargetRegistered {
        target: target.clone(),
    })])
}

/// `UpdateTarget`: the target with the update applied; nothing when nothing changes.
pub(super) fn update(
    state: &State,
    name: &TargetName,
    update: &TargetUpdate,
) -> Result<Vec<NewEvent>, Rejection> {
    let doc = state.known_target(name)?;
    let target = update.applied_to(&doc.target);
    check_target(state, &target)?;
    if target == doc.target {
        return Ok(vec![]);
    }
    Ok(vec![NewEvent::new(Event::TargetUpdated { target })])
}

/// `RemoveTarget`: removes a target no unfinished deployment uses; refused while one does,
/// naming the deployments.
pub(super) fn remove(state: &State, name: &TargetName) -> Result<Vec<NewEvent>, Rejection> {
    state.known_target(name)?;
    let deployments: std::collections::BTreeSet<_> = state
        .tasks
        .values()
        .filter(|t| t.target.as_ref() == Some(name) && state.active.contains(&t.deployment))
        .map(|t| t.deployment)
        .collect();
    if !deployments.is_empty() {
        return Err(Rejection::Conflict(format!(
            "target \"{name}\" is in use by unfinished deployments {} (wait for them or `shoal cancel ID`)",
            join(&deployments)
        )));
    }
    Ok(vec![NewEvent::new(Event::TargetRemoved {
        target: name.clone(),
    })])
}

impl TargetUpdate {
    /// The target with every field this update sets replaced.
    fn applied_to(&self, target: &Target) -> Target {
        let mut t = target.clone();
        if let Some(kind) = self.kind {
            t.kind = kind;
        }
        if let Some(env) = &self.environment {
            t.environment = env.clone();
        }
        if let Some(roles) = &self.roles {
            t.roles = roles.clone();
        }
        if let Some(endpoint) = &self.endpoint {
            t.endpoint = endpoint.clone();
        }
        if let Some(pool) = &self.default_pool {
            t.default_pool = pool.clone();
        }
        if let Some(check) = &self.health_check {
            t.health_check = check.clone();
        }
        if let Some(secs) = self.health_interval_secs {
            t.health_interval_secs = secs;
        }
        t
    }
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
            state.known_pools()
        )));
    }
    Ok(())
}

/// `CheckTarget`: plans a check on a worker of the target's pool (rules 2 and 3), unless
/// a check already on its way to that pool with the same probe can still answer. `at` is
/// now, given by the caller: the core reads no clock.
pub(super) fn check(
    state: &State,
    default_pool: &PoolName,
    check: CheckId,
    target: &TargetName,
    trigger: CheckTrigger,
    at: Timestamp,
    deadline_secs: u64,
) -> Result<Vec<NewEvent>, Rejection> {
    let doc = state.known_target(target)?;
    let Some(probe) = doc.target.probe() else {
        if doc.target.health_check == Some(HealthCheck::Off) {
            return Err(Rejection::Conflict(format!(
                "checks of target \"{target}\" are off; set a probe with `shoal target set-check {target} --tcp HOST:PORT` (or --http URL, --script S)"
            )));
        }
        return Err(Rejection::Conflict(format!(
            "target \"{target}\" has no health check and no endpoint to probe; set one with `shoal target set-check {target} --tcp HOST:PORT` (or --http URL, --script S)"
        )));
    };
    let (pool, rule) = resolve_pool(None, doc.target.default_pool.as_ref(), default_pool);
    if let Some(p) = &doc.pending_check
        && p.pool == pool
        && p.probe == probe
        && p.deadline_at > at
    {
        return Ok(vec![]);
    }
    let deadline_at = at.plus_millis(
        deadline_secs
            .saturating_add(probe.timeout_secs())
            .saturating_mul(1000),
    );
    Ok(vec![NewEvent::new(Event::HealthCheckPlanned {
        check,
        target: target.clone(),
        pool,
        rule,
        probe,
        trigger,
        deadline_at,
    })])
}

/// `CheckDeadline`: a check still unanswered at its deadline makes the target
/// `unavailable`; an answered or replaced one changes nothing.
pub(super) fn deadline(state: &State, target: &TargetName, check: CheckId) -> Vec<NewEvent> {
    let pending = state
        .targets
        .get(target)
        .and_then(|t| t.pending_check.as_ref());
    let Some(p) = pending.filter(|p| p.check == check) else {
        return vec![];
    };
    let secs = p.deadline_at.millis_since(p.planned_at) / 1000;
    vec![NewEvent::new(Event::HealthCheckUnavailable {
        check,
        target: target.clone(),
        pool: p.pool.clone(),
        reason: format!(
            "no worker of pool \"{}\" ran the check within {secs} s; is a worker of the pool online?",
            p.pool
        ),
    })]
}
