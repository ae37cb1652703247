//! Subject and stream names, built from a configurable prefix (default `shoal`).

use crate::ids::TaskId;
use crate::names::{NameError, PoolName, WorkerName, check_name};

/// `text` as one subject token: dots, wildcards, spaces and control characters become `_`,
/// and an empty text is `_`.
fn subject_token(text: &str) -> String {
    if text.is_empty() {
        return "_".to_owned();
    }
    text.chars()
        .map(|c| {
            if matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// The name of the planner's built-in worker when it has an identity of its own (a trust
/// bundle binds this name to the default pool).
pub const BUILTIN_WORKER_NAME: &str = "builtin-worker";

/// Builds every subject and stream name of one shoal installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Subjects {
            prefix: "shoal".to_owned(),
        }
    }
}

impl Subjects {
    /// Subjects under `prefix`.
    ///
    /// # Errors
    /// The prefix must be a safe subject token, like any name.
    pub fn new(prefix: &str) -> Result<Subjects, NameError> {
        check_name("subject prefix", prefix)?;
        Ok(Subjects {
            prefix: prefix.to_owned(),
        })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Work-queue stream of tasks, e.g. `SHOAL_TASKS`.
    pub fn tasks_stream(&self) -> String {
        format!(
            "{}_TASKS",
            self.prefix.to_ascii_uppercase().replace('-', "_")
        )
    }

    /// Object store bucket of the package feed's chunks, e.g. `SHOAL_PACKAGES` (its stream
    /// is `OBJ_SHOAL_PACKAGES`).
    pub fn packages_bucket(&self) -> String {
        format!(
            "{}_PACKAGES",
            self.prefix.to_ascii_uppercase().replace('-', "_")
        )
    }

    /// Stream of worker results, e.g. `SHOAL_RESULTS`.
    pub fn results_stream(&self) -> String {
        format!(
            "{}_RESULTS",
            self.prefix.to_ascii_uppercase().replace('-', "_")
        )
    }

    /// Stream of the event feed for integrators, e.g. `SHOAL_EVENTS`.
    pub fn events_stream(&self) -> String {
        format!(
            "{}_EVENTS",
            self.prefix.to_ascii_uppercase().replace('-', "_")
        )
    }

    /// Every subject of the event feed: `shoal.events.>`.
    pub fn events_all(&self) -> String {
        format!("{}.events.>", self.prefix)
    }

    /// The feed subject of a log record of `stream` (`<kind>/<id>`, e.g. `deployment/<id>`,
    /// or a kind alone such as `rejected`, whose id token is `_`) and type:
    /// `shoal.events.<kind>.<id>.<type>`. A character that cannot be in a subject token
    /// (none of shoal's names has one) becomes `_`.
    pub fn event(&self, stream: &str, event_type: &str) -> String {
        let (kind, id) = stream.split_once('/').unwrap_or((stream, "_"));
        format!(
            "{}.events.{}.{}.{}",
            self.prefix,
            subject_token(kind),
            subject_token(id),
            subject_token(event_type)
        )
    }

    /// Every command subject: `shoal.cmd.>` (the planner answers them).
    pub fn commands_all(&self) -> String {
        format!("{}.cmd.>", self.prefix)
    }

    /// The command subjects of an integrator with a role, without the command:
    /// `shoal.cmd.<role>.<name>` (its commands are `….deployment.create` and so on).
    pub fn commands_of(&self, role: &str, name: &str) -> String {
        format!("{}.cmd.{role}.{name}", self.prefix)
    }

    /// The inbox prefix an integrator's client must use: `_INBOX_<prefix>_integrator.<name>`
    /// (its first token is no worker's or region's, so no pool name can reach it). The
    /// planner answers an integrator's commands only on subjects under it.
    pub fn integrator_inbox_prefix(&self, name: &str) -> String {
        format!("_INBOX_{}_integrator.{name}", self.prefix)
    }

    /// `shoal.tasks.<pool>`.
    pub fn tasks(&self, pool: &PoolName) -> String {
        format!("{}.tasks.{pool}", self.prefix)
    }

    /// `shoal.tasks.*`, the task stream's subjects.
    pub fn tasks_all(&self) -> String {
        format!("{}.tasks.*", self.prefix)
    }

    /// The durable consumer of a pool's queue; pool names are valid consumer names.
    pub fn pool_consumer(&self, pool: &PoolName) -> String {
        pool.as_str().to_owned()
    }

    /// `shoal.results.<pool>.<worker>`.
    pub fn results(&self, pool: &PoolName, worker: &WorkerName) -> String {
        format!("{}.results.{pool}.{worker}", self.prefix)
    }

    /// `shoal.results.>`.
    pub fn results_all(&self) -> String {
        format!("{}.results.>", self.prefix)
    }

    /// The planner's durable consumer of results.
    pub fn results_consumer(&self) -> String {
        "planner".to_owned()
    }

    /// `shoal.heartbeat.<pool>.<worker>`.
    pub fn heartbeat(&self, pool: &PoolName, worker: &WorkerName) -> String {
        format!("{}.heartbeat.{pool}.{worker}", self.prefix)
    }

    /// `shoal.heartbeat.>`.
    pub fn heartbeat_all(&self) -> String {
        format!("{}.heartbeat.>", self.prefix)
    }

    /// `shoal.cancel.<pool>.<task>`; the payload is the last attempt cancelled
    /// ([`cancel_payload`]), empty for every attempt. Per pool, so that a worker may listen
    /// to its own pool's cancellations only.
    pub fn cancel(&self, pool: &PoolName, task: &TaskId) -> String {
        format!("{}.cancel.{pool}.{task}", self.prefix)
    }

    /// `shoal.cancel.<pool>.*`: every cancellation of a pool, for its workers to watch.
    pub fn cancel_pool(&self, pool: &PoolName) -> String {
        format!("{}.cancel.{pool}.*", self.prefix)
    }

    /// `shoal.cancel.>`: every cancellation.
    pub fn cancel_all(&self) -> String {
        format!("{}.cancel.>", self.prefix)
    }

    /// `shoal.drain-state.<pool>.<worker>`: a starting worker asks the planner (request and
    /// reply) whether it is to stay drained.
    pub fn drain_state(&self, pool: &PoolName, worker: &WorkerName) -> String {
        format!("{}.drain-state.{pool}.{worker}", self.prefix)
    }

    /// `shoal.drain-state.>`, answered by the planner.
    pub fn drain_state_all(&self) -> String {
        format!("{}.drain-state.>", self.prefix)
    }

    /// `shoal.control.<pool>.<worker>`: instructions to one worker (drain, resume).
    pub fn control(&self, pool: &PoolName, worker: &WorkerName) -> String {
        format!("{}.control.{pool}.{worker}", self.prefix)
    }

    /// Inbox prefix of a pool's workers, so per-pool permissions can allow exactly it.
    pub fn pool_inbox_prefix(&self, pool: &PoolName) -> String {
        format!("_INBOX_{}_{pool}", self.prefix)
    }

    /// Inbox prefix of one worker, `_INBOX_shoal.<pool>.<worker>`: its identity may
    /// subscribe `<prefix>.>` and nothing of another worker's replies (a shared `_INBOX.>`
    /// would let one worker read another pool's tasks).
    pub fn worker_inbox_prefix(&self, pool: &PoolName, worker: &WorkerName) -> String {
        format!("_INBOX_{}.{pool}.{worker}", self.prefix)
    }

    /// The JetStream API prefix a client of `domain` uses: `$JS.<domain>.API`, or `$JS.API`.
    pub fn js_api_prefix(domain: Option<&str>) -> String {
        domain.map_or_else(|| "$JS.API".to_owned(), |d| format!("$JS.{d}.API"))
    }
}

/// The pool and worker a worker's own subject names. The broker lets each worker publish only
/// on its own subjects, so this — not what a message says of itself — is who sent it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubjectOwner {
    pub pool: PoolName,
    pub worker: WorkerName,
}

impl std::fmt::Display for SubjectOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pool \"{}\", worker \"{}\"", self.pool, self.worker)
    }
}

/// What a worker publishes on, as the planner receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerSubject {
    /// `shoal.results.<pool>.<worker>`.
    Results(SubjectOwner),
    /// `shoal.heartbeat.<pool>.<worker>`.
    Heartbeat(SubjectOwner),
    /// `shoal.drain-state.<pool>.<worker>`.
    DrainState(SubjectOwner),
}

impl WorkerSubject {
    /// The pool and worker the subject names.
    pub fn owner(&self) -> &SubjectOwner {
        match self {
            WorkerSubject::Results(o)
            | WorkerSubject::Heartbeat(o)
            | WorkerSubject::DrainState(o) => o,
        }
    }
}

/// Why a subject is not one a worker publishes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error(
        "subject {subject:?} is not <prefix>.<results|heartbeat|drain-state>.<pool>.<worker> under prefix \"{prefix}\""
    )]
    NotAWorkerSubject { subject: String, prefix: String },
    #[error("subject {subject:?} names no valid pool or worker: {cause}")]
    BadName { subject: String, cause: NameError },
}

impl Subjects {
    /// Parses a subject a worker publishes on: exactly four tokens, this prefix, a known kind,
    /// and a valid pool and worker name.
    ///
    /// # Errors
    /// [`SubjectError`] saying which part is wrong.
    pub fn parse_worker_subject(&self, subject: &str) -> Result<WorkerSubject, SubjectError> {
        let not_one = || SubjectError::NotAWorkerSubject {
            subject: subject.to_owned(),
            prefix: self.prefix.clone(),
        };
        let mut tokens = subject.split('.');
        let (Some(prefix), Some(kind), Some(pool), Some(worker), None) = (
            tokens.next(),
            tokens.next(),
            tokens.next(),
            tokens.next(),
            tokens.next(),
        ) else {
            return Err(not_one());
        };
        if prefix != self.prefix {
            return Err(not_one());
        }
        let bad_name = |cause| SubjectError::BadName {
            subject: subject.to_owned(),
            cause,
        };
        let owner = SubjectOwner {
            pool: PoolName::parse(pool).map_err(bad_name)?,
            worker: WorkerName::parse(worker).map_err(bad_name)?,
        };
        match kind {
            "results" => Ok(WorkerSubject::Results(owner)),
            "heartbeat" => Ok(WorkerSubject::Heartbeat(owner)),
            "drain-state" => Ok(WorkerSubject::DrainState(owner)),
            _ => Err(not_one()),
        }
    }
}

/// The payload of a cancellation of every attempt of a task up to `attempt` (`None`: all).
pub fn cancel_payload(attempt: Option<u32>) -> String {
    attempt.map(|a| a.to_string()).unwrap_or_default()
}

/// The last attempt a cancellation payload cancels (`u32::MAX`: all); `None` when it is not
/// a cancellation payload.
pub fn parse_cancel_payload(payload: &[u8]) -> Option<u32> {
    if payload.is_empty() {
        return Some(u32::MAX);
    }
    std::str::from_utf8(payload).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_subject_has_kind_id_and_type_tokens() {
        let s = Subjects::default();
        assert_eq!(
            s.event("deployment/0191-ab", "TaskFinished"),
            "shoal.events.deployment.0191-ab.TaskFinished"
        );
        assert_eq!(
            s.event("rejected", "MessageRejected"),
            "shoal.events.rejected._.MessageRejected"
        );
        assert_eq!(s.event("a/b.c d>*", "T"), "shoal.events.a.b_c_d__.T");
        assert_eq!(s.event("x/", ""), "shoal.events.x._._");
        assert_eq!(s.events_stream(), "SHOAL_EVENTS");
        assert_eq!(s.events_all(), "shoal.events.>");
    }

    #[test]
    fn cancellation_payloads_name_the_last_attempt_or_all() {
        assert_eq!(
            parse_cancel_payload(cancel_payload(None).as_bytes()),
            Some(u32::MAX)
        );
        assert_eq!(
            parse_cancel_payload(cancel_payload(Some(3)).as_bytes()),
            Some(3)
        );
        assert_eq!(parse_cancel_payload(b"three"), None);
    }

    fn owner(pool: &str, worker: &str) -> SubjectOwner {
        SubjectOwner {
            pool: PoolName::parse(pool).expect("valid"),
            worker: WorkerName::parse(worker).expect("valid"),
        }
    }

    #[test]
    fn worker_subjects_parse_to_the_pool_and_worker_they_name() {
        let s = Subjects::default();
        let o = owner("eu-west", "w1");
        for (built, want) in [
            (
                s.results(&o.pool, &o.worker),
                WorkerSubject::Results(o.clone()),
            ),
            (
                s.heartbeat(&o.pool, &o.worker),
                WorkerSubject::Heartbeat(o.clone()),
            ),
            (
                s.drain_state(&o.pool, &o.worker),
                WorkerSubject::DrainState(o.clone()),
            ),
        ] {
            assert_eq!(s.parse_worker_subject(&built), Ok(want));
        }
        let acme = Subjects::new("acme").expect("valid");
        assert_eq!(
            acme.parse_worker_subject("acme.results.eu-west.w1"),
            Ok(WorkerSubject::Results(o))
        );
    }

    #[test]
    fn subjects_that_are_not_a_workers_own_do_not_parse() {
        let s = Subjects::default();
        for bad in [
            "shoal.results.eu-west",
            "shoal.results.eu-west.w1.extra",
            "shoal.results.>",
            "shoal.results.*.w1",
            "acme.results.eu-west.w1",
            "shoal.tasks.eu-west.w1",
            "shoal.control.eu-west.w1",
            "shoal.results..w1",
            "shoal.results.EU.w1",
            "",
        ] {
            assert!(s.parse_worker_subject(bad).is_err(), "{bad} parsed");
        }
        let err = s
            .parse_worker_subject("shoal.heartbeat.eu-west.W!")
            .expect_err("bad worker name");
        assert!(matches!(err, SubjectError::BadName { .. }), "{err}");
    }

    #[test]
    fn subjects_use_the_prefix_and_single_tokens() {
        let s = Subjects::default();
        let pool = PoolName::parse("eu-west").expect("valid");
        let worker = WorkerName::parse("w1").expect("valid");
        assert_eq!(s.tasks(&pool), "shoal.tasks.eu-west");
        assert_eq!(s.results(&pool, &worker), "shoal.results.eu-west.w1");
        assert_eq!(s.heartbeat(&pool, &worker), "shoal.heartbeat.eu-west.w1");
        assert_eq!(s.tasks_stream(), "SHOAL_TASKS");
        let task = TaskId(uuid::Uuid::nil());
        assert_eq!(
            s.cancel(&pool, &task),
            format!("shoal.cancel.eu-west.{task}")
        );
        assert_eq!(s.cancel_pool(&pool), "shoal.cancel.eu-west.*");
        assert_eq!(
            s.worker_inbox_prefix(&pool, &worker),
            "_INBOX_shoal.eu-west.w1"
        );
        let custom = Subjects::new("acme").expect("valid");
        assert_eq!(custom.tasks(&pool), "acme.tasks.eu-west");
        assert_eq!(custom.results_stream(), "ACME_RESULTS");
        assert!(Subjects::new("a.b").is_err());
    }
}
