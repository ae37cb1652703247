//! `POST|GET /api/deployments`, `GET /api/deployments/{id}`, its cancellation and a task's
//! log.

use super::{ApiError, AppState, JsonBody};
use crate::domain::Command;
use crate::domain::state::{AttemptDoc, DeploymentDoc, TaskDoc};
use crate::log::Proj;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use shoal_shared::{
    Action, DeploymentId, DeploymentSpec, DeploymentState, EnvironmentName, OutputStream, PoolName,
    PoolRule, RoleName, StepSpec, StepState, TargetName, TaskId, TaskState, Timestamp, WorkerName,
};
use std::collections::{BTreeMap, HashMap};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateDeployment {
    project: String,
    environment: EnvironmentName,
    steps: Vec<StepRequest>,
    #[serde(default)]
    unhealthy_targets: shoal_shared::UnhealthyTargets,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StepRequest {
    name: String,
    action: ActionRequest,
    #[serde(default)]
    roles: Vec<RoleName>,
    #[serde(default)]
    pool: Option<PoolName>,
    #[serde(default)]
    timeout_secs: Option<u64>,
    #[serde(default)]
    max_parallel: Option<u32>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    retries: u32,
    #[serde(default)]
    retry_backoff_secs: Option<u64>,
    #[serde(default)]
    max_attempts: Option<u32>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum ActionRequest {
    Script {
        script: String,
        #[serde(default)]
        shell: Option<String>,
    },
    Noop {},
    HealthCheck {},
}

impl From<CreateDeployment> for DeploymentSpec {
    fn from(r: CreateDeployment) -> DeploymentSpec {
        DeploymentSpec {
            project: r.project,
            environment: r.environment,
            unhealthy_targets: r.unhealthy_targets,
            steps: r
                .steps
                .into_iter()
                .map(|s| StepSpec {
                    name: s.name,
                    action: match s.action {
                        ActionRequest::Script { script, shell } => Action::Script { script, shell },
                        ActionRequest::Noop {} => Action::Noop,
                        ActionRequest::HealthCheck {} => Action::HealthCheck,
                    },
                    roles: s.roles,
                    pool: s.pool,
                    timeout_secs: s.timeout_secs,
                    max_parallel: s.max_parallel,
                    variables: s.variables,
                    retries: s.retries,
                    retry_backoff_secs: s.retry_backoff_secs,
                    max_attempts: s.max_attempts,
                })
                .collect(),
        }
    }
}

#[derive(Serialize)]
pub struct Created {
    id: DeploymentId,
}

pub(super) async fn create(
    State(app): State<AppState>,
    JsonBody(req): JsonBody<CreateDeployment>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let id = DeploymentId::new();
    app.writer
        .execute(Command::CreateDeployment {
            id,
            spec: req.into(),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(Created { id })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<usize>,
}

/// A deployment in a list.
#[derive(Serialize)]
pub struct Summary {
    id: DeploymentId,
    project: String,
    environment: EnvironmentName,
    state: DeploymentState,
    reason: Option<String>,
    created_at: Timestamp,
    finished_at: Option<Timestamp>,
    steps: Vec<StepSummary>,
}

#[derive(Serialize)]
pub struct StepSummary {
    name: String,
    state: StepState,
    tasks: usize,
}

pub(super) async fn list(
    State(app): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Summary>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(50).clamp(1, 10_000);
    // Ids are time-ordered: newest first is the key order reversed.
    let docs: Vec<DeploymentDoc> = app.log.docs_rev(Proj::Deployments, limit)?;
    let out = docs.into_iter().map(summary).collect();
    Ok(Json(out))
}

fn summary(d: DeploymentDoc) -> Summary {
    Summary {
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

/// A deployment with every task.
#[derive(Serialize)]
pub struct Detail {
    id: DeploymentId,
    project: String,
    environment: EnvironmentName,
    state: DeploymentState,
    reason: Option<String>,
    created_at: Timestamp,
    started_at: Option<Timestamp>,
    finished_at: Option<Timestamp>,
    steps: Vec<StepDetail>,
}

#[derive(Serialize)]
pub struct StepDetail {
    index: u32,
    name: String,
    state: StepState,
    tasks: Vec<TaskView>,
}

/// A task as the API shows it.
#[derive(Serialize)]
pub struct TaskView {
    id: TaskId,
    target: Option<TargetName>,
    endpoint: Option<String>,
    pool: PoolName,
    pool_rule: PoolRule,
    state: TaskState,
    /// Why the task is not moving, when it waits for something.
    waiting: Option<String>,
    worker: Option<WorkerName>,
    attempt: u32,
    /// The run of the attempt that counts (broker delivery; above 1 after a lost run).
    delivery: u32,
    exit_code: Option<i32>,
    reason: Option<String>,
    planned_at: Option<Timestamp>,
    dispatched_at: Option<Timestamp>,
    started_at: Option<Timestamp>,
    finished_at: Option<Timestamp>,
    output_lines: u64,
    /// When the next attempt is planned (state `retry_scheduled`).
    retry_at: Option<Timestamp>,
    attempts: Vec<AttemptDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CancelRequest {
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /api/deployments/{id}/cancel` (body optional: `{"reason": "..."}`). Answers 202
/// once the request is in the log; the deployment ends `cancelled` when its workers have
/// stopped what they run.
pub(super) async fn cancel(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Summary>), ApiError> {
    let d = load(&app, &id)?;
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        super::parse_body::<CancelRequest>(&body)?.reason
    };
    app.writer
        .execute(Command::CancelDeployment { id: d.id, reason })
        .await?;
    let d = load(&app, &d.id.to_string())?;
    Ok((StatusCode::ACCEPTED, Json(summary(d))))
}

pub(super) async fn show(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Detail>, ApiError> {
    let d = load(&app, &id)?;
    let online = app.liveness.online_per_pool(Timestamp::now());
    let mut steps = Vec::with_capacity(d.steps.len());
    for (index, s) in d.steps.iter().enumerate() {
        let mut tasks = Vec::with_capacity(s.tasks.len());
        for t in &s.tasks {
            if let Some(doc) = app.log.doc::<TaskDoc>(Proj::Tasks, t.as_bytes())? {
                tasks.push(task_view(doc, &online));
            }
        }
        steps.push(StepDetail {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            name: s.name.clone(),
            state: s.state,
            tasks,
        });
    }
    Ok(Json(Detail {
        id: d.id,
        project: d.project,
        environment: d.environment,
        state: d.state,
        reason: d.reason,
        created_at: d.created_at,
        started_at: d.started_at,
        finished_at: d.finished_at,
        steps,
    }))
}

fn task_view(t: TaskDoc, online: &HashMap<PoolName, usize>) -> TaskView {
    let waiting =
        matches!(t.state, TaskState::Planned | TaskState::Dispatched).then(|| {
            match online.get(&t.pool).copied().unwrap_or(0) {
                0 => format!("waiting for a worker in pool {}", t.pool),
                _ => format!("queued in pool {}", t.pool),
            }
        });
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
        attempts: t.attempts,
    }
}

/// One line of a task's output.
#[derive(Serialize)]
pub struct LogLine {
    attempt: u32,
    /// The run of the attempt (broker delivery); above 1 when an earlier run's worker died.
    run: u32,
    stream: OutputStream,
    at: Timestamp,
    line: String,
}

#[derive(Serialize)]
pub struct TaskLog {
    task: TaskId,
    state: TaskState,
    lines: Vec<LogLine>,
}

pub(super) async fn task_log(
    State(app): State<AppState>,
    Path((id, task)): Path<(String, String)>,
) -> Result<Json<TaskLog>, ApiError> {
    let d = load(&app, &id)?;
    let task_id = TaskId::parse(&task).map_err(|_| {
        ApiError::bad_request(format!("task: \"{task}\" is not a task id (a UUID)"))
    })?;
    let doc: TaskDoc = app
        .log
        .doc(Proj::Tasks, task_id.as_bytes())?
        .filter(|t: &TaskDoc| t.deployment == d.id)
        .ok_or_else(|| ApiError::not_found(format!("deployment {} has no task {task_id}", d.id)))?;
    let lines = app
        .log
        .task_output(&task_id)?
        .into_iter()
        .map(|(attempt, run, l)| LogLine {
            attempt,
            run,
            stream: l.stream,
            at: l.at,
            line: l.line,
        })
        .collect();
    Ok(Json(TaskLog {
        task: task_id,
        state: doc.state,
        lines,
    }))
}

fn load(app: &AppState, id: &str) -> Result<DeploymentDoc, ApiError> {
    let id = DeploymentId::parse(id).map_err(|_| {
        ApiError::bad_request(format!("id: \"{id}\" is not a deployment id (a UUID)"))
    })?;
    app.log
        .doc(Proj::Deployments, id.as_bytes())?
        .ok_or_else(|| ApiError::not_found(format!("unknown deployment {id}")))
}
