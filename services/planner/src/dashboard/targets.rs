//! `GET /targets`: every target with its health now (state, reason, when, which worker of
//! which pool by which rule, a check under way); `GET /targets/{name}`: one target and its
//! health history, newest first. Both follow the targets' records.

use super::html::{
    Markup, badge, dash, duration_ms, html, label_of, markup, or_dash, time_or_dash,
};
use super::{Ctx, Live, Nav, Page, PageError, PartQuery, durable, segment};
use axum::extract::Path;
use axum::response::Response;
use serde::Deserialize;
use shoal_shared::api::{HealthHistory, TargetView};
use shoal_shared::{DeploymentId, TaskId};

const TYPES: &[&str] = &[
    "TargetRegistered",
    "TargetUpdated",
    "TargetRemoved",
    "HealthCheckPlanned",
    "TargetHealthChecked",
    "HealthCheckUnavailable",
    "TargetHealthChanged",
];

/// `GET /targets` (`?part=list`: the table only).
pub(super) async fn list(ctx: Ctx, query: super::QueryOf<PartQuery>) -> Response {
    let part = super::or_default(query).part.is_some();
    let after = durable(&ctx.app);
    let targets: Vec<TargetView> = match ctx.get("/api/targets").await {
        Ok(t) => t,
        Err(e) => return ctx.error(e, Nav::Targets),
    };
    let table = table(&targets);
    if part {
        return ctx.part(table);
    }
    let body = markup!(
        "<h1>Targets</h1><p class=\"lead\">Health now: the last check's answer, who ran it, and any check under way.</p><div id=\"targets\" data-live=\"/targets?part=list\">{}</div>",
        table
    );
    ctx.page(Page {
        title: "Targets".to_owned(),
        nav: Nav::Targets,
        live: Live {
            stream: None,
            types: TYPES,
            after,
            poll_secs: 30,
        },
        body,
    })
}

fn table(targets: &[TargetView]) -> Markup {
    if targets.is_empty() {
        return markup!("<p class=\"empty\">No target yet.</p>");
    }
    let mut rows = Markup::new();
    for t in targets {
        let h = &t.health;
        let checking = h.checking.as_ref().map_or_else(Markup::new, |c| {
            markup!(
                "<span class=\"why\">check under way in pool {}</span>",
                c.pool
            )
        });
        let ran_by = match (&h.worker, &h.pool) {
            (Some(w), Some(p)) => markup!("<b>{}</b> in {}", w, p),
            (None, Some(p)) => markup!("no worker of {}", p),
            _ => dash(),
        };
        html!(
            rows,
            "<tr data-target=\"{}\" data-health=\"{}\"><th scope=\"row\"><a href=\"/targets/{}\">{}</a></th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            t.target.name,
            super::html::name_of(&h.state),
            t.target.name,
            t.target.name,
            t.target.environment,
            label_of(&t.target.kind),
            t.target
                .roles
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            badge(&h.state),
            or_dash(h.reason.as_ref()),
            checking,
            time_or_dash(h.checked_at),
            ran_by,
            or_dash(h.rule.map(|r| label_of(&r)))
        );
    }
    markup!(
        "<table class=\"list targets\"><thead><tr><th scope=\"col\">Target</th><th scope=\"col\">Environment</th><th scope=\"col\">Kind</th><th scope=\"col\">Roles</th><th scope=\"col\">Health</th><th scope=\"col\">Reason</th><th scope=\"col\">Checked</th><th scope=\"col\">By</th><th scope=\"col\">Rule</th></tr></thead><tbody>{}</tbody></table>",
        rows
    )
}

/// `GET /targets/{name}` (`?part=history`: the history only).
pub(super) async fn show(
    ctx: Ctx,
    Path(name): Path<String>,
    query: super::QueryOf<PartQuery>,
) -> Response {
    let part = super::or_default(query).part.is_some();
    match page(&ctx, &name, part).await {
        Ok(r) => r,
        Err(e) => ctx.error(e, Nav::Targets),
    }
}

/// What `GET /api/tasks/{id}` answers (the deployment a health check's task belongs to).
#[derive(Deserialize)]
struct TaskRef {
    deployment: DeploymentId,
}

async fn page(ctx: &Ctx, name: &str, part: bool) -> Result<Response, PageError> {
    let after = durable(&ctx.app);
    let t: TargetView = ctx.get(&format!("/api/targets/{}", segment(name))).await?;
    let history: HealthHistory = ctx
        .get(&format!("/api/targets/{}/health", t.target.name))
        .await?;
    let history = history_table(ctx, &t, &history).await;
    if part {
        return Ok(ctx.part(history));
    }
    let target = &t.target;
    let body = markup!(
        "<div class=\"title-row\"><h1>{}</h1></div><dl class=\"facts\"><div><dt>Environment</dt><dd>{}</dd></div><div><dt>Kind</dt><dd>{}</dd></div><div><dt>Roles</dt><dd>{}</dd></div><div><dt>Endpoint</dt><dd class=\"mono\">{}</dd></div><div><dt>Default pool</dt><dd>{}</dd></div><div><dt>Registered</dt><dd>{}</dd></div></dl><h2>Health</h2><div id=\"history\" data-live=\"/targets/{}?part=history\">{}</div>",
        target.name,
        target.environment,
        label_of(&target.kind),
        target
            .roles
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        or_dash(target.endpoint.as_ref()),
        or_dash(target.default_pool.as_ref()),
        super::html::time(t.registered_at),
        target.name,
        history
    );
    Ok(ctx.page(Page {
        title: target.name.to_string(),
        nav: Nav::Targets,
        live: Live {
            stream: Some(format!("target/{}", target.name)),
            types: TYPES,
            after,
            poll_secs: 30,
        },
        body,
    }))
}

/// The health now, then every recorded check, newest first: when, state, which worker of
/// which pool by which rule, how long, why, and the deployment whose step ran it.
async fn history_table(ctx: &Ctx, t: &TargetView, h: &HealthHistory) -> Markup {
    let now = markup!(
        "<p class=\"health-now\">Now: {} {}{}</p>",
        badge(&h.state),
        or_dash(t.health.reason.as_ref()),
        h.checking.as_ref().map_or_else(Markup::new, |c| markup!(
            " <span class=\"why\">a check is under way in pool {}</span>",
            c.pool
        ))
    );
    if h.history.is_empty() {
        return markup!("{}<p class=\"empty\">Never checked.</p>", now);
    }
    let mut rows = Markup::new();
    for r in h.history.iter().rev() {
        let task = match r.task {
            Some(task) => task_link(ctx, task).await,
            None => dash(),
        };
        html!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            super::html::time(r.checked_at),
            badge(&r.state),
            or_dash(r.worker.as_ref()),
            r.pool,
            or_dash(r.rule.map(|x| label_of(&x))),
            r.duration_ms
                .map_or_else(dash, |ms| markup!("{}", duration_ms(ms))),
            or_dash(r.reason.as_ref()),
            task
        );
    }
    markup!(
        "{}<table class=\"list history\"><caption>Checks recorded: {}, newest first</caption><thead><tr><th scope=\"col\">When</th><th scope=\"col\">State</th><th scope=\"col\">Worker</th><th scope=\"col\">Pool</th><th scope=\"col\">Rule</th><th scope=\"col\">Took</th><th scope=\"col\">Reason</th><th scope=\"col\">Deployment step</th></tr></thead><tbody>{}</tbody></table>",
        now,
        h.history.len(),
        rows
    )
}

/// A link to the output of the health-check task that ran a check.
async fn task_link(ctx: &Ctx, task: TaskId) -> Markup {
    match ctx.get::<TaskRef>(&format!("/api/tasks/{task}")).await {
        Ok(r) => markup!(
            "<a href=\"/deployments/{}?task={}#output\">{}</a>",
            r.deployment,
            task,
            &r.deployment.to_string()[..8]
        ),
        Err(_) => markup!("<span class=\"mono\">{}</span>", task),
    }
}
