//! `GET /`: the deployments, newest first, with their steps' states; `GET /deployments/{id}`:
//! one deployment as its steps × targets grid (each cell: state, pool and the rule that chose
//! it, worker, attempt), its cancel button for a deployer, and a followed task's output
//! (`?task=`), stderr marked. Both follow the event stream; a task's new output lines arrive
//! in its `TaskOutput` records and are appended by the script.

use super::html::{Markup, badge, dash, duration_ms, html, label_of, markup, or_dash, time};
use super::{Ctx, Live, Nav, Page, PageError, durable};
use axum::extract::Path;
use axum::response::Response;
use serde::Deserialize;
use shoal_shared::api::{DeploymentDetail, DeploymentSummary, LogCursor, StepDetail, TaskLog};
use shoal_shared::api::{LOG_PAGE_MAX, TaskView};
use shoal_shared::auth::Role;
use shoal_shared::{OutputStream, TargetName, TaskId};
use std::collections::{BTreeSet, HashMap};

/// Deployments a list shows unless asked for more.
const LIST: usize = 50;
/// Lines of a task's output a page shows (its last ones).
const SHOWN_LINES: usize = 2_000;
/// Pages of a task's log read at most for one page view.
const MAX_LOG_PAGES: usize = 5;

/// What changes the list.
const LIST_TYPES: &[&str] = &[
    "DeploymentCreated",
    "DeploymentStarted",
    "DeploymentCancelRequested",
    "DeploymentFinished",
    "StepStarted",
    "StepFinished",
];

/// What changes a deployment's page, and last a task's output (for a page that follows one).
const FOLLOWING_TYPES: &[&str] = &[
    "DeploymentStarted",
    "DeploymentCancelRequested",
    "DeploymentFinished",
    "StepStarted",
    "StepFinished",
    "TaskPlanned",
    "TaskDispatched",
    "TaskStarted",
    "TaskFinished",
    "TaskCancelled",
    "TargetSkipped",
    "TaskOutput",
];

/// The same but a task's output.
const DEPLOYMENT_TYPES: &[&str] = match FOLLOWING_TYPES.split_last() {
    Some((_, rest)) => rest,
    None => &[],
};

#[derive(Debug, Deserialize, Default)]
pub(super) struct ListQuery {
    part: Option<String>,
    limit: Option<usize>,
}

/// `GET /`.
pub(super) async fn list(ctx: Ctx, query: super::QueryOf<ListQuery>) -> Response {
    let q = super::or_default(query);
    let limit = q.limit.unwrap_or(LIST).clamp(1, 1_000);
    let after = durable(&ctx.app);
    let deployments: Vec<DeploymentSummary> =
        match ctx.get(&format!("/api/deployments?limit={limit}")).await {
            Ok(d) => d,
            Err(e) => return ctx.error(e, Nav::Deployments),
        };
    let table = list_table(&ctx, &deployments, limit);
    if q.part.is_some() {
        return ctx.part(table);
    }
    let body = markup!(
        "<h1>Deployments</h1><p class=\"lead\">Newest first; states change as they happen.</p><section id=\"deployments\" data-live=\"/?part=list&amp;limit={}\" aria-label=\"Deployments\">{}</section>",
        limit,
        table
    );
    ctx.page(Page {
        title: "Deployments".to_owned(),
        nav: Nav::Deployments,
        live: Live {
            stream: None,
            types: LIST_TYPES,
            after,
            poll_secs: 30,
        },
        body,
    })
}

fn list_table(ctx: &Ctx, deployments: &[DeploymentSummary], limit: usize) -> Markup {
    if deployments.is_empty() {
        return markup!(
            "<p class=\"empty\">No deployment yet. <code>shoal deploy</code> or <code>POST /api/deployments</code> starts one.</p>"
        );
    }
    let mut rows = Markup::new();
    for d in deployments {
        let mut steps = Markup::new();
        for s in &d.steps {
            html!(
                steps,
                "<li class=\"step s-{}\" title=\"{}: {} ({} tasks)\"><span class=\"step-name\">{}</span> {}</li>",
                super::html::name_of(&s.state),
                s.name,
                label_of(&s.state),
                s.tasks,
                s.name,
                badge(&s.state)
            );
        }
        let took = match d.finished_at {
            Some(f) => markup!("{}", duration_ms(f.millis_since(d.created_at))),
            None => markup!(
                "<span class=\"running-for\">{} so far</span>",
                duration_ms(ctx.now.millis_since(d.created_at))
            ),
        };
        let reason = d.reason.as_ref().map_or_else(Markup::new, |r| {
            markup!("<div class=\"reason\">{}</div>", r)
        });
        html!(
            rows,
            "<tr class=\"s-{}\" data-deployment=\"{}\"><td>{}</td><td><a class=\"row-link\" href=\"/deployments/{}\">{}</a>{}</td><td>{}</td><td><ol class=\"steps\">{}</ol></td><td>{}</td><td>{}</td><td class=\"mono\">{}</td></tr>",
            super::html::name_of(&d.state),
            d.id,
            badge(&d.state),
            d.id,
            d.project,
            reason,
            d.environment,
            steps,
            time(d.created_at),
            took,
            short_id(&d.id.to_string())
        );
    }
    let more = if deployments.len() >= limit {
        markup!(
            "<p><a href=\"/?limit={}\">Show {} more</a></p>",
            limit + LIST,
            LIST
        )
    } else {
        Markup::new()
    };
    markup!(
        "<table class=\"list deployments\"><thead><tr><th scope=\"col\">State</th><th scope=\"col\">Project</th><th scope=\"col\">Environment</th><th scope=\"col\">Steps</th><th scope=\"col\">Created</th><th scope=\"col\">Took</th><th scope=\"col\">Id</th></tr></thead><tbody>{}</tbody></table>{}",
        rows,
        more
    )
}

fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

#[derive(Debug, Deserialize, Default)]
pub(super) struct ShowQuery {
    part: Option<String>,
    task: Option<String>,
}

/// `GET /deployments/{id}` (`?task=` follows a task's output; `?part=head|grid|task`: one
/// part, for the script).
pub(super) async fn show(
    ctx: Ctx,
    Path(id): Path<String>,
    query: super::QueryOf<ShowQuery>,
) -> Response {
    let q = super::or_default(query);
    match page(&ctx, &id, q).await {
        Ok(r) => r,
        Err(e) => ctx.error(e, Nav::Deployments),
    }
}

async fn page(ctx: &Ctx, id: &str, q: ShowQuery) -> Result<Response, PageError> {
    let after = durable(&ctx.app);
    let d: DeploymentDetail = ctx
        .get(&format!("/api/deployments/{}", super::segment(id)))
        .await?;
    let task = match q.task.as_deref().filter(|t| !t.is_empty()) {
        Some(t) => Some(
            TaskId::parse(t)
                .map_err(|_| PageError::not_found(format!("\"{t}\" is not a task id")))?,
        ),
        None => None,
    };
    let followed = task
        .map(|t| {
            find_task(&d, t)
                .ok_or_else(|| PageError::not_found(format!("deployment {} has no task {t}", d.id)))
        })
        .transpose()?;
    let task_q = task.map_or_else(String::new, |t| format!("&task={t}"));
    match q.part.as_deref() {
        Some("head") => return Ok(ctx.part(head(ctx, &d))),
        Some("grid") => return Ok(ctx.part(grid(&d, task))),
        Some("task") => {
            if let Some((step, t)) = followed {
                return Ok(ctx.part(task_head(&d, step, t)));
            }
        }
        _ => {}
    }
    let output = match followed {
        Some((step, t)) => {
            let (lines, next, skipped) = read_output(ctx, &d, t).await?;
            markup!(
                "<section class=\"output\" id=\"output\" aria-labelledby=\"output-title\"><div id=\"task-head\" data-live=\"/deployments/{}?part=task{}\">{}</div>{}<ol class=\"log\" id=\"log\" tabindex=\"0\" aria-label=\"Output\" data-task=\"{}\" data-next=\"{}\">{}</ol></section>",
                d.id,
                task_q,
                task_head(&d, step, t),
                skipped,
                t.id,
                next.map(|c| c.to_string()).unwrap_or_default(),
                lines
            )
        }
        None => Markup::new(),
    };
    let body = markup!(
        "<div id=\"deployment-head\" data-live=\"/deployments/{}?part=head\">{}</div><section class=\"grid-wrap\" aria-label=\"Steps by target\"><div id=\"grid\" data-live=\"/deployments/{}?part=grid{}\">{}</div></section>{}",
        d.id,
        head(ctx, &d),
        d.id,
        task_q,
        grid(&d, task),
        output
    );
    Ok(ctx.page(Page {
        title: format!("{} → {}", d.project, d.environment),
        nav: Nav::Deployments,
        live: Live {
            stream: Some(format!("deployment/{}", d.id)),
            types: if followed.is_some() {
                FOLLOWING_TYPES
            } else {
                DEPLOYMENT_TYPES
            },
            after,
            poll_secs: 30,
        },
        body,
    }))
}

fn find_task(d: &DeploymentDetail, task: TaskId) -> Option<(&StepDetail, &TaskView)> {
    d.steps
        .iter()
        .find_map(|s| s.tasks.iter().find(|t| t.id == task).map(|t| (s, t)))
}

/// The deployment's title, state, times and buttons.
fn head(ctx: &Ctx, d: &DeploymentDetail) -> Markup {
    let cancel = if ctx.may(Role::Deployer) && !d.state.is_terminal() {
        markup!(
            "<button type=\"button\" class=\"danger\" id=\"cancel\" data-url=\"/api/deployments/{}/cancel\" data-confirm=\"Cancel the deployment of {} to {}? Queued tasks are cancelled, running ones are told to stop.\" data-done=\"Cancellation requested\">Cancel deployment</button>",
            d.id,
            d.project,
            d.environment
        )
    } else {
        Markup::new()
    };
    let reason = d
        .reason
        .as_ref()
        .map_or_else(Markup::new, |r| markup!("<p class=\"reason\">{}</p>", r));
    let took = match (d.started_at, d.finished_at) {
        (_, Some(f)) => duration_ms(f.millis_since(d.created_at)),
        (Some(s), None) => format!("{} so far", duration_ms(ctx.now.millis_since(s))),
        (None, None) => "not started".to_owned(),
    };
    markup!(
        "<div class=\"title-row\"><h1>{} <span class=\"arrow\" aria-hidden=\"true\">→</span><span class=\"visually-hidden\"> to </span> {} {}</h1><div class=\"actions\">{}<a class=\"button\" href=\"/deployments/{}/audit\">Audit trail</a></div></div>{}<dl class=\"facts\"><div><dt>Id</dt><dd class=\"mono\">{}</dd></div><div><dt>Created</dt><dd>{}</dd></div><div><dt>Finished</dt><dd>{}</dd></div><div><dt>Took</dt><dd>{}</dd></div></dl>",
        d.project,
        d.environment,
        badge(&d.state),
        cancel,
        d.id,
        reason,
        d.id,
        time(d.created_at),
        super::html::time_or_dash(d.finished_at),
        took
    )
}

/// The steps × targets grid: a row per target (a step without roles runs once, on no
/// target), a column per step.
fn grid(d: &DeploymentDetail, selected: Option<TaskId>) -> Markup {
    let rows: BTreeSet<Option<&TargetName>> = d
        .steps
        .iter()
        .flat_map(|s| s.tasks.iter().map(|t| t.target.as_ref()))
        .collect();
    let mut cells: HashMap<(u32, Option<&TargetName>), &TaskView> = HashMap::new();
    for s in &d.steps {
        for t in &s.tasks {
            cells.insert((s.index, t.target.as_ref()), t);
        }
    }
    let mut head = Markup::new();
    for s in &d.steps {
        html!(
            head,
            "<th scope=\"col\"><span class=\"step-name\">{}</span> {}<span class=\"retries\">{}</span></th>",
            s.name,
            badge(&s.state),
            if s.retries > 0 {
                format!(" up to {} attempts", s.retries + 1)
            } else {
                String::new()
            }
        );
    }
    let mut body = Markup::new();
    for row in &rows {
        let name = row.map_or_else(
            || markup!("<span class=\"none\">(no target)</span>"),
            |t| markup!("<a href=\"/targets/{}\">{}</a>", t, t),
        );
        let mut tds = Markup::new();
        for s in &d.steps {
            match cells.get(&(s.index, *row)) {
                Some(t) => tds.push(&cell(d, s, t, selected == Some(t.id))),
                None => html!(tds, "<td class=\"cell empty\">{}</td>", dash()),
            }
        }
        html!(body, "<tr><th scope=\"row\">{}</th>{}</tr>", name, tds);
    }
    if rows.is_empty() {
        return markup!("<p class=\"empty\">This deployment has no tasks.</p>");
    }
    markup!(
        "<table class=\"grid\"><thead><tr><th scope=\"col\">Target</th>{}</tr></thead><tbody>{}</tbody></table>",
        head,
        body
    )
}

/// One task: a link to its output, with what it is and where it runs.
fn cell(d: &DeploymentDetail, s: &StepDetail, t: &TaskView, selected: bool) -> Markup {
    let state = super::html::name_of(&t.state);
    let target = t.target.as_ref().map_or("no target", TargetName::as_str);
    let worker = t
        .worker
        .as_ref()
        .map_or_else(dash, |w| markup!("<b>{}</b>", w));
    let attempt = if t.attempt == 0 {
        dash()
    } else {
        markup!("<b>{}</b> of {}", t.attempt, s.retries + 1)
    };
    let mut extra = Markup::new();
    if let Some(w) = &t.waiting {
        html!(extra, "<span class=\"why\">{}</span>", w);
    }
    if let Some(r) = t.reason.as_ref().filter(|_| t.waiting.is_none()) {
        html!(extra, "<span class=\"why\">{}</span>", r);
    }
    if let Some(code) = t.exit_code.filter(|c| *c != 0) {
        html!(extra, "<span class=\"why\">exit code {}</span>", code);
    }
    markup!(
        "<td class=\"cell s-{}{}\" data-task=\"{}\" data-state=\"{}\"><a id=\"cell-{}\" href=\"/deployments/{}?task={}#output\"{} aria-label=\"{} on {}: {}, pool {}, worker {}, attempt {}\"><span class=\"badge s-{}\">{}</span><span class=\"kv\"><span class=\"k\">pool</span> <b>{}</b> <span class=\"rule\">{}</span></span><span class=\"kv\"><span class=\"k\">worker</span> {}</span><span class=\"kv\"><span class=\"k\">attempt</span> {}</span>{}</a></td>",
        state,
        if selected { " selected" } else { "" },
        t.id,
        state,
        t.id,
        d.id,
        t.id,
        if selected {
            markup!(" aria-current=\"true\"")
        } else {
            Markup::new()
        },
        s.name,
        target,
        label_of(&t.state),
        t.pool,
        t.worker.as_ref().map_or("none yet", |w| w.as_str()),
        t.attempt,
        state,
        label_of(&t.state),
        t.pool,
        label_of(&t.pool_rule),
        worker,
        attempt,
        extra
    )
}

/// The followed task's title and facts.
fn task_head(d: &DeploymentDetail, s: &StepDetail, t: &TaskView) -> Markup {
    let target = t.target.as_ref().map_or("no target", TargetName::as_str);
    let exit = t
        .exit_code
        .map_or_else(dash, |c| markup!("<span class=\"mono\">{}</span>", c));
    let took = match (t.started_at, t.finished_at) {
        (Some(s), Some(f)) => markup!("{}", duration_ms(f.millis_since(s))),
        _ => dash(),
    };
    markup!(
        "<div class=\"title-row\"><h2 id=\"output-title\">Output of {} on {} {}</h2><div class=\"actions\"><a class=\"button\" href=\"/deployments/{}\">Close</a></div></div><dl class=\"facts\"><div><dt>Worker</dt><dd>{}</dd></div><div><dt>Pool</dt><dd>{} ({})</dd></div><div><dt>Attempt</dt><dd>{} of {}</dd></div><div><dt>Exit code</dt><dd>{}</dd></div><div><dt>Took</dt><dd>{}</dd></div><div><dt>Task</dt><dd class=\"mono\">{}</dd></div></dl>",
        s.name,
        target,
        badge(&t.state),
        d.id,
        or_dash(t.worker.as_ref()),
        t.pool,
        label_of(&t.pool_rule),
        t.attempt,
        s.retries + 1,
        exit,
        took,
        t.id
    )
}

/// The task's output as list items (at most its last [`SHOWN_LINES`]), where it ends, and a
/// note when earlier lines are left out. A long run is read from its tail (the task knows how
/// many lines its current run has), so a page never reads a whole long log to show its end;
/// earlier attempts' output shows when the current run is short.
async fn read_output(
    ctx: &Ctx,
    d: &DeploymentDetail,
    t: &TaskView,
) -> Result<(Markup, Option<LogCursor>, Markup), PageError> {
    let shown = u64::try_from(SHOWN_LINES).unwrap_or(u64::MAX);
    // The cursor just before the current run's last lines, and the one before the run.
    let tail = LogCursor {
        attempt: t.attempt,
        run: t.delivery,
        line: t.output_lines.saturating_sub(shown + 1),
    };
    let run_start = LogCursor {
        attempt: t.attempt,
        run: t.delivery.saturating_sub(1),
        line: u64::MAX,
    };
    let long_run = t.output_lines > shown;
    let mut from = long_run.then_some(tail);
    let mut left_out = long_run;
    let mut lines = std::collections::VecDeque::new();
    let mut after = from;
    let mut pages = 0;
    loop {
        let cursor = after.map_or_else(String::new, |c| format!("&after={c}"));
        let page: TaskLog = ctx
            .get(&format!(
                "/api/deployments/{}/tasks/{}/log?limit={LOG_PAGE_MAX}{cursor}",
                d.id, t.id
            ))
            .await?;
        pages += 1;
        after = page.next.or(after);
        lines.extend(page.lines);
        while lines.len() > SHOWN_LINES {
            lines.pop_front();
            left_out = true;
        }
        if !page.more {
            break;
        }
        if pages >= MAX_LOG_PAGES {
            // Earlier attempts wrote more than a page should read: start again at the
            // current run.
            if from.is_some() {
                break;
            }
            from = Some(run_start);
            after = from;
            lines.clear();
            left_out = true;
        }
    }
    let mut out = Markup::new();
    let mut run = None;
    for l in &lines {
        if run != Some((l.attempt, l.run)) {
            run = Some((l.attempt, l.run));
            html!(
                out,
                "<li class=\"sep\">attempt {}{}</li>",
                l.attempt,
                if l.run > 1 {
                    format!(", run {}", l.run)
                } else {
                    String::new()
                }
            );
        }
        out.push(&line(l.stream, &l.line));
    }
    let skipped = if left_out {
        markup!(
            "<p class=\"note\">Earlier lines are left out; <code>shoal logs {} {}</code> prints them all.</p>",
            d.id,
            t.id
        )
    } else if lines.is_empty() {
        markup!("<p class=\"note\" id=\"no-output\">No output yet.</p>")
    } else {
        Markup::new()
    };
    Ok((out, after, skipped))
}

/// One output line; stderr marked in words, not only in colour.
fn line(stream: OutputStream, text: &str) -> Markup {
    match stream {
        OutputStream::Stdout => markup!(
            "<li class=\"line out\"><span class=\"stream\">out</span><span class=\"text\">{}</span></li>",
            text
        ),
        OutputStream::Stderr => markup!(
            "<li class=\"line err\"><span class=\"stream\">err</span><span class=\"text\">{}</span></li>",
            text
        ),
    }
}
