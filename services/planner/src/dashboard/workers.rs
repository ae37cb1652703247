//! `GET /workers`: each pool (region, default or not) with its workers: status (online,
//! draining, offline, left), health, busy and total slots, free disk, last heartbeat; an
//! admin gets drain and resume buttons. Heartbeats are in no record, so the page reloads its
//! table every few seconds as well as at each worker event.

use super::html::{Markup, ago, badge, dash, html, markup, or_dash};
use super::{Ctx, Live, Nav, Page, PageError, PartQuery, durable};
use axum::response::Response;
use shoal_shared::PoolName;
use shoal_shared::api::{PoolView, WorkerStatus, WorkerView};
use shoal_shared::auth::Role;
use std::collections::BTreeMap;

const TYPES: &[&str] = &[
    "PoolRegistered",
    "PoolRemoved",
    "WorkerJoined",
    "WorkerLeft",
    "WorkerDrainRequested",
    "WorkerResumed",
    "WorkerWentOffline",
    "WorkerCameOnline",
    "TaskStarted",
    "TaskFinished",
];

/// `GET /workers` (`?part=pools`: the tables only, for the script).
pub(super) async fn show(ctx: Ctx, query: super::QueryOf<PartQuery>) -> Response {
    let part = super::or_default(query).part.is_some();
    let after = durable(&ctx.app);
    let pools = match tables(&ctx).await {
        Ok(p) => p,
        Err(e) => return ctx.error(e, Nav::Workers),
    };
    if part {
        return ctx.part(pools);
    }
    let body = markup!(
        "<h1>Pools and workers</h1><p class=\"lead\">Busy and total slots, free disk and the last heartbeat of each worker, every few seconds.</p><div id=\"pools\" data-live=\"/workers?part=pools\">{}</div>",
        pools
    );
    ctx.page(Page {
        title: "Pools and workers".to_owned(),
        nav: Nav::Workers,
        live: Live {
            stream: None,
            types: TYPES,
            after,
            poll_secs: 5,
        },
        body,
    })
}

async fn tables(ctx: &Ctx) -> Result<Markup, PageError> {
    let pools: Vec<PoolView> = ctx.get("/api/pools").await?;
    let workers: Vec<WorkerView> = ctx.get("/api/workers").await?;
    let mut by_pool: BTreeMap<&PoolName, Vec<&WorkerView>> = BTreeMap::new();
    for w in &workers {
        by_pool.entry(&w.pool).or_default().push(w);
    }
    let mut out = Markup::new();
    for p in &pools {
        let ws = by_pool.remove(&p.name).unwrap_or_default();
        out.push(&pool_section(ctx, Some(p), &p.name, &ws));
    }
    // Workers of a pool that was removed (or never registered) still show.
    for (name, ws) in by_pool {
        out.push(&pool_section(ctx, None, name, &ws));
    }
    if out.is_empty() {
        return Ok(markup!("<p class=\"empty\">No pool yet.</p>"));
    }
    Ok(out)
}

fn pool_section(
    ctx: &Ctx,
    pool: Option<&PoolView>,
    name: &PoolName,
    workers: &[&WorkerView],
) -> Markup {
    let (busy, slots) = workers
        .iter()
        .filter(|w| matches!(w.status, WorkerStatus::Online | WorkerStatus::Draining))
        .fold((0, 0), |(b, s), w| (b + w.busy_slots, s + w.slots));
    let facts = match pool {
        Some(p) => markup!(
            "<span class=\"kv\"><span class=\"k\">region</span> {}</span><span class=\"kv\"><span class=\"k\">online</span> <b>{}</b></span><span class=\"kv\"><span class=\"k\">slots busy</span> <b>{}</b> of {}</span>{}{}",
            or_dash(p.region.as_ref()),
            p.workers_online,
            busy,
            slots,
            if p.is_default {
                markup!("<span class=\"tag\">default pool</span>")
            } else {
                Markup::new()
            },
            p.description.as_ref().map_or_else(Markup::new, |d| markup!(
                "<span class=\"desc\">{}</span>",
                d
            ))
        ),
        None => markup!("<span class=\"tag warn\">not a registered pool</span>"),
    };
    let mut rows = Markup::new();
    for w in workers {
        rows.push(&worker_row(ctx, w));
    }
    let table = if workers.is_empty() {
        markup!("<p class=\"empty\">No worker has joined this pool.</p>")
    } else {
        let actions = if ctx.may(Role::Admin) {
            markup!("<th scope=\"col\">Maintenance</th>")
        } else {
            Markup::new()
        };
        markup!(
            "<table class=\"list workers\"><thead><tr><th scope=\"col\">Worker</th><th scope=\"col\">Region</th><th scope=\"col\">Status</th><th scope=\"col\">Health</th><th scope=\"col\">Busy slots</th><th scope=\"col\">Free disk</th><th scope=\"col\">Last seen</th><th scope=\"col\">Version</th>{}</tr></thead><tbody>{}</tbody></table>",
            actions,
            rows
        )
    };
    markup!(
        "<section class=\"pool\" aria-labelledby=\"pool-{}\"><h2 id=\"pool-{}\">{}</h2><p class=\"facts-line\">{}</p>{}</section>",
        name,
        name,
        name,
        facts,
        table
    )
}

fn worker_row(ctx: &Ctx, w: &WorkerView) -> Markup {
    let busy = if matches!(w.status, WorkerStatus::Online | WorkerStatus::Draining) {
        let pct = (u64::from(w.busy_slots) * 100)
            .checked_div(u64::from(w.slots))
            .unwrap_or(0)
            .min(100);
        markup!(
            "<span class=\"slots\"><b>{}</b> of {}</span><span class=\"bar\" aria-hidden=\"true\"><span class=\"fill w{}\"></span></span>",
            w.busy_slots,
            w.slots,
            pct / 10 * 10
        )
    } else {
        markup!("<span class=\"slots\">— of {}</span>", w.slots)
    };
    let disk = w.free_disk_mb.map_or_else(dash, |mb| {
        if mb >= 10_240 {
            markup!("{} GiB", mb / 1024)
        } else {
            markup!("{} MiB", mb)
        }
    });
    let seen = w.last_seen.map_or_else(dash, |t| ago(t, ctx.now));
    let mut notes = Markup::new();
    if w.drain_requested && w.status != WorkerStatus::Draining {
        html!(notes, "<span class=\"why\">drain requested</span>");
    }
    if let Some(r) = &w.not_ready_reason {
        html!(notes, "<span class=\"why\">{}</span>", r);
    }
    for warning in &w.warnings {
        html!(notes, "<span class=\"why warn\">{}</span>", warning);
    }
    let action = if !ctx.may(Role::Admin) {
        Markup::new()
    } else if w.status == WorkerStatus::Left {
        markup!("<td></td>")
    } else if w.drain_requested {
        markup!(
            "<td><button type=\"button\" id=\"resume-{}\" data-url=\"/api/workers/{}/resume\" data-done=\"Worker {} resumes taking tasks\">Resume</button></td>",
            w.name,
            w.name,
            w.name
        )
    } else {
        markup!(
            "<td><button type=\"button\" id=\"drain-{}\" data-url=\"/api/workers/{}/drain\" data-confirm=\"Drain worker {}? It finishes what it runs and takes no new tasks until resumed.\" data-done=\"Worker {} is draining\">Drain</button></td>",
            w.name,
            w.name,
            w.name,
            w.name
        )
    };
    markup!(
        "<tr data-worker=\"{}\" data-status=\"{}\"><th scope=\"row\">{}{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"mono\">{}</td>{}</tr>",
        w.name,
        super::html::name_of(&w.status),
        w.name,
        notes,
        or_dash(w.region.as_ref()),
        badge(&w.status),
        badge(&w.health),
        busy,
        disk,
        seen,
        w.version,
        action
    )
}
