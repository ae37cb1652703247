//! Subject and stream names, built from a configurable prefix (default `shoal`).

use crate::ids::TaskId;
use crate::names::{NameError, PoolName, WorkerName, check_name};

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

    /// Stream of worker results, e.g. `SHOAL_RESULTS`.
    pub fn results_stream(&self) -> String {
        format!(
            "{}_RESULTS",
            self.prefix.to_ascii_uppercase().replace('-', "_")
        )
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
