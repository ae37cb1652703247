//! `POST|GET /api/deployments`, `GET /api/deployments/{id}`, its cancellation and a task's
//! log.

use super::auth::Caller;
use super::{ApiError, AppState};
use crate::domain::Command;
use crate::domain::state::{AttemptDoc, DeploymentDoc, TaskDoc};
use crate::liveness::PoolLoad;
use crate::log::{EventLog, Proj};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use shoal_runtime::secrets::{self, MasterKey};
use shoal_shared::api::{
    ActionRequest, AttemptView, CancelRequest, CreateDeployment, Created, DeploymentDetail,
    DeploymentSummary, ErrorBody, LOG_PAGE_DEFAULT, LOG_PAGE_MAX, LogCursor, LogLine, StepDetail,
    StepSummary, TaskLog, TaskRef, TaskView,
};
use shoal_shared::{Action, DeploymentId, DeploymentSpec, PoolName, StepSpec, TaskId, TaskState};
use std::collections::{BTreeMap, HashMap};

/// The deployment a request asks for, its sensitive values sealed with the master key
/// (bound to deployment `id`, their step and their name) before anything records them.
fn spec_of(
    id: DeploymentId,
    r: CreateDeployment,
    key: &MasterKey,
) -> Result<DeploymentSpec, ApiError> {
    let mut steps = Vec::with_capacity(r.steps.len());
    for s in r.steps {
        let scope = secrets::rest_scope(&id, &s.name);
        let mut sealed = BTreeMap::new();
        for (name, value) in &s.sensitive_variables {
            let v = key
                .seal(&scope, name, value)
                .map_err(|e| ApiError::internal("sealing a sensitive variable", &e))?;
            sealed.insert(name.clone(), v);
        }
        steps.push(StepSpec {
            name: s.name,
            action: match s.action {
                ActionRequest::Script { script, shell } => Action::Script { script, shell },
                ActionRequest::Noop {} => Action::Noop,
                ActionRequest::HealthCheck {} => Action::HealthCheck,
                ActionRequest::DeployPackage {
                    package,
                    script,
                    shell,
                } => Action::DeployPackage {
                    package,
                    script,
                    shell,
                },
            },
            roles: s.roles,
            pool: s.pool,
            timeout_secs: s.timeout_secs,
            max_parallel: s.max_parallel,
            variables: s.variables,
            sensitive_variables: sealed,
            retries: s.retries,
            retry_backoff_secs: s.retry_backoff_secs,
            max_attempts: s.max_attempts,
        });
    }
    Ok(DeploymentSpec {
        project: r.project,
        environment: r.environment,
        unhealthy_targets: r.unhealthy_targets,
        steps,
    })
}

/// `POST /api/deployments`. With an `Idempotency-Key` header, the same request sent again
/// with the same key gets the first answer (and `Idempotent-Replayed: true`) instead of a
/// second deployment; another request with that key is refused (409).
#[utoipa::path(
    post,
    path = "/api/deployments",
    tag = "deployments",
    operation_id = "create_deployment",
    request_body = CreateDeployment,
    params(super::openapi::IdempotencyKey),
    responses(
        (status = 201, description = "Accepted: its id (the same key again: the first answer).",
         body = Created, headers(("Idempotent-Replayed" = String,
            description = "`true` when this is the key's first answer again"))),
        (status = 400, description = "An invalid deployment (the message names the field and \
            the known values).", body = ErrorBody),
        (status = 409, description = "The idempotency key was used for another request.",
         body = ErrorBody),
        (status = 413, description = "The body is over 1 MiB.", body = ErrorBody),
    ),
)]
pub(super) async fn create(
    State(app): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    super::RawBody(body): super::RawBody,
) -> Result<axum::response::Response, ApiError> {
    let idempotency = super::idempotency::key_of(&headers, &caller, &body, &app.master_key)?;
    let req: CreateDeployment = super::parse_body(&body)?;
    let id = DeploymentId::new();
    let spec = spec_of(id, req, &app.master_key)?;
    let cmd = super::idempotency::once(idempotency, Command::CreateDeployment { id, spec });
    let made = super::idempotency::replayed(app.writer.execute_as(caller.actor(), cmd).await)?;
    let Some(made) = made else {
        return Ok(super::idempotency::created(false, Created { id }));
    };
    let first = made
        .strip_prefix("deployment/")
        .and_then(|d| DeploymentId::parse(d).ok())
        .ok_or_else(|| ApiError::conflict(format!("the key made {made}, not a deployment")))?;
    Ok(super::idempotency::created(true, Created { id: first }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// How many, newest first (default 50, at most 10,000).
    limit: Option<usize>,
}

/// `GET /api/deployments?limit=`: the newest deployments first.
#[utoipa::path(
    get,
    path = "/api/deployments",
    tag = "deployments",
    operation_id = "list_deployments",
    params(ListQuery),
    responses(
        (status = 200, description = "The newest deployments first.",
         body = Vec<DeploymentSummary>),
        (status = 400, description = "An unknown or invalid parameter.", body = ErrorBody),
    ),
)]
pub(super) async fn list(
    State(app): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<DeploymentSummary>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(50).clamp(1, 10_000);
    // Ids are time-ordered: newest first is the key order reversed.
    let docs: Vec<DeploymentDoc> = app
        .read(move |log| Ok(log.docs_rev(Proj::Deployments, limit)?))
        .await?;
    let out = docs.into_iter().map(summary).collect();
    Ok(Json(out))
}

fn summary(d: DeploymentDoc) -> DeploymentSummary {
    DeploymentSummary {
        id: d.id,
        project: d.project,
        environment: d.environment,
        state: d.state,
        reason: d.reason,
        created_at: d.created_at,
        finished_at: d.finished_at,
        steps: d
            .steps
            .iter()
            .map(|s| StepSummary {
                name: s.name.clone(),
                state: s.state,
                tasks: s.tasks.len(),
            })
            .collect(),
    }
}

/// `POST /api/deployments/{id}/cancel` (body optional: `{"reason": "..."}`). Answers 202
/// once the request is in the log; the deployment ends `cancelled` when its workers have
/// stopped what they run.
#[utoipa::path(
    post,
    path = "/api/deployments/{id}/cancel",
    tag = "deployments",
    operation_id = "cancel_deployment",
    params(("id" = DeploymentId, Path, description = "The deployment.")),
    request_body = Option<CancelRequest>,
    responses(
        (status = 202, description = "Cancelling: the deployment.", body = DeploymentSummary),
        (status = 400, description = "An id that is not one, or an invalid body.",
         body = ErrorBody),
        (status = 404, description = "No such deployment.", body = ErrorBody),
        (status = 409, description = "The deployment has ended.", body = ErrorBody),
        (status = 413, description = "The body is over 1 MiB.", body = ErrorBody),
    ),
)]
pub(super) async fn cancel(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    super::RawBody(body): super::RawBody,
) -> Result<(StatusCode, Json<DeploymentSummary>), ApiError> {
    let id = parse_id(&id)?;
    let d = load(&app, id).await?;
    // No body, or `null`, is no reason.
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        super::parse_body::<Option<CancelRequest>>(&body)?.and_then(|r| r.reason)
    };
    app.writer
        .execute_as(
            caller.actor(),
            Command::CancelDeployment { id: d.id, reason },
        )
        .await?;
    let d = load(&app, d.id).await?;
    Ok((StatusCode::ACCEPTED, Json(summary(d))))
}

/// `GET /api/deployments/{id}`: the deployment with every task.
#[utoipa::path(
    get,
    path = "/api/deployments/{id}",
    tag = "deployments",
    operation_id = "show_deployment",
    params(("id" = DeploymentId, Path, description = "The deployment.")),
    responses(
        (status = 200, description = "The deployment.", body = DeploymentDetail),
        (status = 400, description = "An id that is not one.", body = ErrorBody),
        (status = 404, description = "No such deployment.", body = ErrorBody),
    ),
)]
pub(super) async fn show(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeploymentDetail>, ApiError> {
    let id = parse_id(&id)?;
    let (d, tasks) = app
        .read(move |log| {
            let d = find(log, id)?;
            let mut tasks = HashMap::new();
            for t in d.steps.iter().flat_map(|s| &s.tasks) {
                if let Some(doc) = log.doc::<TaskDoc>(Proj::Tasks, t.as_bytes())? {
                    tasks.insert(*t, doc);
                }
            }
            Ok((d, tasks))
        })
        .await?;
    Ok(Json(detail(&app, d, tasks)))
}

/// A deployment with its tasks' documents.
fn detail(
    app: &AppState,
    d: DeploymentDoc,
    mut tasks: HashMap<TaskId, TaskDoc>,
) -> DeploymentDetail {
    let pools = app.liveness.load_per_pool(shoal_shared::Timestamp::now());
    let steps = d
        .steps
        .iter()
        .enumerate()
        .map(|(index, s)| StepDetail {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            name: s.name.clone(),
            state: s.state,
            retries: d.spec.steps.get(index).map_or(0, |spec| spec.retries),
            tasks: s
                .tasks
                .iter()
                .filter_map(|t| tasks.remove(t))
                .map(|doc| task_view(doc, &pools))
                .collect(),
        })
        .collect();
    DeploymentDetail {
        id: d.id,
        project: d.project,
        environment: d.environment,
        state: d.state,
        reason: d.reason,
        created_at: d.created_at,
        started_at: d.started_at,
        finished_at: d.finished_at,
        steps,
    }
}

/// Why a task that is planned or in its pool's queue has not started: no worker of the pool
/// online, every slot of its workers busy, or just its turn in the queue.
fn waiting_reason(pool: &PoolName, load: Option<&PoolLoad>) -> String {
    match load {
        None => format!("waiting for a worker in pool {pool}"),
        Some(l) if l.workers > 0 && l.busy >= l.slots => format!(
            "queued in pool {pool}: all {} slots of its {} online worker(s) busy",
            l.slots, l.workers
        ),
        Some(_) => format!("queued in pool {pool}"),
    }
}

fn task_view(t: TaskDoc, pools: &HashMap<PoolName, PoolLoad>) -> TaskView {
    let waiting = matches!(t.state, TaskState::Planned | TaskState::Dispatched)
        .then(|| waiting_reason(&t.pool, pools.get(&t.pool)));
    TaskView {
        id: t.id,
        target: t.target,
        endpoint: t.endpoint,
        pool: t.pool,
        pool_rule: t.pool_rule,
        state: t.state,
        waiting,
        worker: t.worker,
        attempt: t.attempt,
        delivery: t.delivery,
        exit_code: t.exit_code,
        reason: t.reason,
        planned_at: t.planned_at,
        dispatched_at: t.dispatched_at,
        started_at: t.started_at,
        finished_at: t.finished_at,
        output_lines: t.output_lines,
        retry_at: t.retry_at,
        attempts: t.attempts.into_iter().map(attempt_view).collect(),
    }
}

fn attempt_view(a: AttemptDoc) -> AttemptView {
    AttemptView {
        attempt: a.attempt,
        delivery: a.delivery,
        worker: a.worker,
        started_at: a.started_at,
        finished_at: a.finished_at,
        state: a.state,
        exit_code: a.exit_code,
    }
}

/// `?after=&limit=` of a task log.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Where the page starts: the `next` of the page before (none or empty: the first line).
    #[param(value_type = Option<LogCursor>)]
    after: Option<String>,
    /// Most lines (default 1,000, at most 10,000).
    #[param(minimum = 1, maximum = 10_000)]
    limit: Option<usize>,
}

/// Where a page of a task log starts and how long it is.
#[derive(Debug, PartialEq, Eq)]
struct LogPage {
    after: Option<LogCursor>,
    limit: usize,
}

/// The page a task log request asks for; every error names the parameter and what it takes.
fn log_page(
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<LogPage, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::bad_request(format!(
            "{}; parameters: after (a cursor, as `next` gives it), limit (1-{LOG_PAGE_MAX})",
            e.body_text()
        ))
    })?;
    let limit = q.limit.unwrap_or(LOG_PAGE_DEFAULT);
    if limit == 0 || limit > LOG_PAGE_MAX {
        return Err(ApiError::bad_request(format!(
            "limit: must be between 1 and {LOG_PAGE_MAX}"
        )));
    }
    let after = q
        .after
        .filter(|a| !a.is_empty())
        .map(|a| LogCursor::parse(&a))
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("after: {e}")))?;
    Ok(LogPage { after, limit })
}

/// `GET /api/deployments/{id}/tasks/{task}/log?after=&limit=`: a page of the task's output,
/// oldest first; `next` is the `after` of the page that follows.
#[utoipa::path(
    get,
    path = "/api/deployments/{id}/tasks/{task}/log",
    tag = "deployments",
    operation_id = "task_log",
    params(
        ("id" = DeploymentId, Path, description = "The deployment."),
        ("task" = TaskId, Path, description = "One of its tasks."),
        LogQuery,
    ),
    responses(
        (status = 200, description = "A page of the task's output.", body = TaskLog),
        (status = 400, description = "An id that is not one, or an invalid parameter.",
         body = ErrorBody),
        (status = 404, description = "No such deployment, or no such task of it.",
         body = ErrorBody),
    ),
)]
pub(super) async fn task_log(
    State(app): State<AppState>,
    Path((id, task)): Path<(String, String)>,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TaskLog>, ApiError> {
    let id = parse_id(&id)?;
    let task_id = TaskId::parse(&task).map_err(|_| {
        ApiError::bad_request(format!("task: \"{task}\" is not a task id (a UUID)"))
    })?;
    let page = log_page(query)?;
    let (doc, (lines, more)) = app
        .read(move |log| {
            let d = find(log, id)?;
            let doc: TaskDoc = log
                .doc(Proj::Tasks, task_id.as_bytes())?
                .filter(|t: &TaskDoc| t.deployment == d.id)
                .ok_or_else(|| {
                    ApiError::not_found(format!("deployment {} has no task {task_id}", d.id))
                })?;
            Ok((doc, log.task_output_page(&task_id, page.after, page.limit)?))
        })
        .await?;
    let next = lines.last().map(|(c, _)| *c).or(page.after);
    let lines = lines
        .into_iter()
        .map(|(c, l)| LogLine {
            attempt: c.attempt,
            run: c.run,
            stream: l.stream,
            at: l.at,
            line: l.line,
        })
        .collect();
    Ok(Json(TaskLog {
        task: task_id,
        state: doc.state,
        lines,
        next,
        more,
    }))
}

/// `GET /api/tasks/{id}`: which deployment a task belongs to (what `shoal audit explain`
/// starts from).
#[utoipa::path(
    get,
    path = "/api/tasks/{id}",
    tag = "deployments",
    operation_id = "task_ref",
    params(("id" = TaskId, Path, description = "The task.")),
    responses(
        (status = 200, description = "The task's deployment, step, target and pool.",
         body = TaskRef),
        (status = 400, description = "An id that is not one.", body = ErrorBody),
        (status = 404, description = "No such task.", body = ErrorBody),
    ),
)]
pub(super) async fn task_ref(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskRef>, ApiError> {
    let task = uuid::Uuid::parse_str(&id)
        .map(TaskId)
        .map_err(|_| ApiError::bad_request(format!("id: \"{id}\" is not a task id (a UUID)")))?;
    let doc = app
        .read(move |log| Ok(log.doc::<TaskDoc>(Proj::Tasks, task.as_bytes())?))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unknown task {task}")))?;
    Ok(Json(TaskRef {
        id: doc.id,
        deployment: doc.deployment,
        step: doc.step_name,
        target: doc.target,
        pool: doc.pool,
        state: doc.state,
    }))
}

fn parse_id(id: &str) -> Result<DeploymentId, ApiError> {
    DeploymentId::parse(id)
        .map_err(|_| ApiError::bad_request(format!("id: \"{id}\" is not a deployment id (a UUID)")))
}

async fn load(app: &AppState, id: DeploymentId) -> Result<DeploymentDoc, ApiError> {
    app.read(move |log| find(log, id)).await
}

fn find(log: &EventLog, id: DeploymentId) -> Result<DeploymentDoc, ApiError> {
    log.doc(Proj::Deployments, id.as_bytes())?
        .ok_or_else(|| ApiError::not_found(format!("unknown deployment {id}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::state::Row;
    use crate::log::{BatchWrite, row_write};
    use shoal_shared::{OutputLine, OutputStream, Timestamp};

    fn query(after: Option<&str>, limit: Option<usize>) -> Result<LogPage, ApiError> {
        log_page(Ok(Query(LogQuery {
            after: after.map(str::to_owned),
            limit,
        })))
    }

    #[test]
    fn a_waiting_task_says_whether_its_pool_has_no_worker_no_free_slot_or_a_queue() {
        let pool = PoolName::parse("ap-south".to_owned()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            waiting_reason(&pool, None),
            "waiting for a worker in pool ap-south"
        );
        let busy = PoolLoad {
            workers: 2,
            slots: 4,
            busy: 4,
        };
        assert_eq!(
            waiting_reason(&pool, Some(&busy)),
            "queued in pool ap-south: all 4 slots of its 2 online worker(s) busy"
        );
        let free = PoolLoad { busy: 3, ..busy };
        assert_eq!(
            waiting_reason(&pool, Some(&free)),
            "queued in pool ap-south"
        );
    }

    fn message(e: ApiError) -> String {
        format!("{} {}", e.status.as_u16(), e.message)
    }

    #[test]
    fn a_log_page_is_the_default_size_from_the_start_unless_asked() {
        assert_eq!(
            query(None, None).ok(),
            Some(LogPage {
                after: None,
                limit: LOG_PAGE_DEFAULT
            })
        );
        let page = query(Some("2.1.9"), Some(LOG_PAGE_MAX)).ok();
        assert_eq!(
            page,
            Some(LogPage {
                after: Some(LogCursor {
                    attempt: 2,
                    run: 1,
                    line: 9
                }),
                limit: LOG_PAGE_MAX
            })
        );
    }

    #[test]
    fn a_bad_page_is_refused_naming_the_parameter_and_its_range() {
        for limit in [0, LOG_PAGE_MAX + 1] {
            let e = message(
                query(None, Some(limit))
                    .err()
                    .unwrap_or(ApiError::not_found("")),
            );
            assert_eq!(e, "400 limit: must be between 1 and 10000");
        }
        let e = message(
            query(Some("7"), None)
                .err()
                .unwrap_or(ApiError::not_found("")),
        );
        assert!(e.starts_with("400 after: \"7\" is not a log cursor"), "{e}");
    }

    /// Writes `lines` output lines of `task` for each (attempt, run).
    fn write_output(log: &EventLog, task: TaskId, runs: &[(u32, u32)], lines: u64) {
        write_lines(log, task, runs, lines, "");
    }

    /// As [`write_output`], each line followed by `pad`.
    fn write_lines(log: &EventLog, task: TaskId, runs: &[(u32, u32)], lines: u64, pad: &str) {
        let mut batch = BatchWrite::default();
        for &(attempt, delivery) in runs {
            for line_no in 0..lines {
                let row = Row::Output {
                    task,
                    attempt,
                    delivery,
                    line_no,
                    line: OutputLine {
                        stream: OutputStream::Stdout,
                        at: Timestamp(0),
                        line: format!("{attempt}.{delivery} line {line_no}{pad}"),
                    },
                };
                let (p, key, value) = row_write(&row).unwrap_or_else(|e| panic!("{e}"));
                batch.proj.push((p, key, Some(value)));
            }
        }
        log.write(&batch).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn pages_of_a_task_log_give_every_line_once_in_order() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let log = EventLog::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let (task, before, after) = (TaskId::new(), TaskId::new(), TaskId::new());
        // Neighbours in key order on both sides must not leak into the pages.
        let mut ids = [task, before, after];
        ids.sort();
        let [before, task, after] = ids;
        write_output(&log, before, &[(1, 1)], 5);
        write_output(&log, task, &[(1, 1), (1, 2), (2, 1)], 7);
        write_output(&log, after, &[(1, 1)], 5);
        let all = log.task_output(&task).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(all.len(), 21);

        let mut paged = Vec::new();
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let (lines, more) = log
                .task_output_page(&task, cursor, 4)
                .unwrap_or_else(|e| panic!("{e}"));
            pages += 1;
            assert!(lines.len() == 4 || !more, "a short page is the last");
            cursor = lines.last().map(|(c, _)| *c).or(cursor);
            paged.extend(lines);
            if !more {
                break;
            }
        }
        assert_eq!(pages, 6);
        let expected: Vec<(u32, u32, OutputLine)> = paged
            .iter()
            .map(|(c, l)| (c.attempt, c.run, l.clone()))
            .collect();
        assert_eq!(expected, all);
        // Past the end: nothing, and nothing more.
        let (rest, more) = log
            .task_output_page(&task, cursor, 4)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(rest.is_empty() && !more);
        // A page exactly as long as what is left says there is no more.
        let (lines, more) = log
            .task_output_page(&task, None, 21)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((lines.len(), more), (21, false));
    }

    #[test]
    fn a_page_of_long_lines_ends_after_about_four_mib() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let log = EventLog::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let task = TaskId::new();
        // 100 lines of 64 KiB: 6.4 MiB.
        write_lines(&log, task, &[(1, 1)], 100, &"x".repeat(64 * 1024));
        let (first, more) = log
            .task_output_page(&task, None, LOG_PAGE_MAX)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            more && first.len() == 64,
            "{} lines, more: {more}",
            first.len()
        );
        let after = first.last().map(|(c, _)| *c);
        let (rest, more) = log
            .task_output_page(&task, after, LOG_PAGE_MAX)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !more && rest.len() == 36,
            "{} lines, more: {more}",
            rest.len()
        );
    }
}
