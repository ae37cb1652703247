//! The exit codes of `shoal`, in one table (README "Exit codes" is this table): what a
//! script can tell from `$?` without reading the output, and the mapping of errors and
//! deployment states to them.

use crate::client::ClientError;
use crate::ids::IdError;
use shoal_shared::{DeploymentState, TaskState};

/// It did what was asked (`--wait`: the deployment succeeded, the target is healthy).
pub const OK: i32 = 0;
/// Any other error: a file that cannot be read, an answer this CLI cannot read, …
pub const ERROR: i32 = 1;
/// The command line is wrong (clap's own code): unknown flag, missing or malformed value.
pub const USAGE: i32 = 2;
/// What was waited for failed: the deployment ended `failed`, the target is not healthy;
/// or what was checked is not sound: an audit export does not verify.
pub const FAILED: i32 = 3;
/// The deployment waited for ended `cancelled` (by someone else than this command).
pub const CANCELLED: i32 = 4;
/// A wait gave up at its time limit; the work may still go on.
pub const TIMED_OUT: i32 = 5;
/// The planner could not be reached (not running, wrong `--api`).
pub const UNREACHABLE: i32 = 6;
/// The request was refused (HTTP 4xx, or an id or value this CLI refused before sending):
/// unknown or ambiguous id, invalid field, conflict.
pub const REFUSED: i32 = 7;
/// The planner failed to carry out the request (HTTP 5xx).
pub const PLANNER_FAILED: i32 = 8;
/// Interrupted by Ctrl-C (SIGINT); the deployment itself goes on.
pub const INTERRUPTED: i32 = 130;

/// Every code with what it means, for `--help`-like listings and the README's table.
pub const TABLE: &[(i32, &str)] = &[
    (OK, "ok (with --wait: succeeded, healthy)"),
    (ERROR, "any other error"),
    (USAGE, "usage error (unknown flag, malformed value)"),
    (
        FAILED,
        "the deployment failed / the target is not healthy / the audit export does not verify",
    ),
    (CANCELLED, "the deployment was cancelled"),
    (TIMED_OUT, "a wait gave up at its time limit"),
    (UNREACHABLE, "the planner cannot be reached"),
    (
        REFUSED,
        "the request was refused (HTTP 4xx, unknown or ambiguous id)",
    ),
    (PLANNER_FAILED, "the planner failed (HTTP 5xx)"),
    (INTERRUPTED, "interrupted (Ctrl-C)"),
];

/// A request this CLI refuses before sending it, as the planner would with a 4xx: exits
/// [`REFUSED`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The exit code of a command that ended with `e`.
pub fn code_of(e: &anyhow::Error) -> i32 {
    if let Some(e) = e.downcast_ref::<ClientError>() {
        return code_of_client(e);
    }
    if e.downcast_ref::<IdError>().is_some() || e.downcast_ref::<Refused>().is_some() {
        return REFUSED;
    }
    ERROR
}

/// The exit code of a failed request.
pub fn code_of_client(e: &ClientError) -> i32 {
    match e {
        ClientError::Unreachable { .. } => UNREACHABLE,
        ClientError::Api { status, .. } if (400..500).contains(status) => REFUSED,
        ClientError::Api { status, .. } if *status >= 500 => PLANNER_FAILED,
        ClientError::Api { .. } | ClientError::Answer { .. } => ERROR,
    }
}

/// The exit code of waiting for a deployment that is now in `state`.
pub fn for_deployment(state: DeploymentState) -> i32 {
    match state {
        DeploymentState::Succeeded => OK,
        DeploymentState::Failed => FAILED,
        DeploymentState::Cancelled => CANCELLED,
        // Not ended: the wait stopped before it did.
        DeploymentState::Queued | DeploymentState::Running | DeploymentState::Cancelling => {
            TIMED_OUT
        }
    }
}

/// The exit code of following one task (`shoal logs -f ID TASK`) that is now in `state`: as
/// [`for_deployment`], a task that never ran (skipped) counting as failed.
pub fn for_task(state: TaskState) -> i32 {
    match state {
        TaskState::Succeeded => OK,
        TaskState::Failed | TaskState::TimedOut | TaskState::Skipped => FAILED,
        TaskState::Cancelled => CANCELLED,
        TaskState::Pending
        | TaskState::Planned
        | TaskState::Dispatched
        | TaskState::Running
        | TaskState::RetryScheduled
        | TaskState::Lost => TIMED_OUT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_distinct_and_in_the_table() {
        let mut codes: Vec<i32> = TABLE.iter().map(|(c, _)| *c).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), TABLE.len(), "two meanings share a code");
        assert_eq!(codes.len(), 10);
    }
}
