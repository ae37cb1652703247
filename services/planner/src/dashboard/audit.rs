//! `GET /deployments/{id}/audit`: a deployment's audit trail, with its chain verified. The
//! page makes the export `shoal audit export --deployment` gets (the records from the
//! deployment's first to its last, as stored, and the planner's signature of the last one's
//! hash) and checks it with `shoal_shared::audit::verify`, the check `shoal audit verify`
//! makes offline, against the planner's own public key, while it reads it; the records it
//! shows are the verified ones of the deployment, as the API shows them (sensitive values
//! masked). Viewers see it: it shows nothing `GET /api/events` does not, and a verdict.

use super::html::{Markup, html, markup};
use super::{Ctx, Nav, Page, PageError, segment};
use crate::audit::Range;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::Response;
use shoal_shared::DeploymentId;
use shoal_shared::api::{DeploymentDetail, EventView};
use shoal_shared::audit::{Bad, Line, Verified, verify};
use shoal_shared::signed::TrustedKeys;
use std::io::{BufRead, Read};
use tokio::sync::mpsc;

/// Records of the deployment a page lists at most (the check covers them all).
const SHOWN: usize = 5_000;

/// One record of the trail as shown.
struct Shown {
    seq: u64,
    hash: String,
    event: EventView,
}

/// What the check found.
enum Verdict {
    Verified(Verified),
    Broken(Bad),
    /// The planner signs nothing (`--insecure-no-signing`).
    Unsigned,
}

/// `GET /deployments/{id}/audit`.
pub(super) async fn show(ctx: Ctx, Path(id): Path<String>) -> Response {
    match page(&ctx, &id).await {
        Ok(r) => r,
        Err(e) => ctx.error(e, Nav::Deployments),
    }
}

async fn page(ctx: &Ctx, id: &str) -> Result<Response, PageError> {
    // The deployment as its viewer may read it (and a 404 worded by the API).
    let d: DeploymentDetail = ctx
        .get(&format!("/api/deployments/{}", segment(id)))
        .await?;
    let (verdict, shown, in_scope) = check(ctx, d.id).await?;
    let verdict_html = match &verdict {
        Verdict::Verified(v) => markup!(
            "<div class=\"verdict ok\" role=\"status\" id=\"verdict\" data-verified=\"true\"><h2>✓ Chain verified</h2><p>Records {} to {} ({} records, {} of this deployment) each hold the hash of the one before, their bytes match what they show, and the last one's hash is signed by the planner's key <span class=\"mono\">{}</span>{}.</p></div>",
            v.first,
            v.last,
            v.records,
            v.in_scope,
            v.key_id,
            if v.signatures_inside > 0 {
                format!(
                    "; {} signed head(s) inside checked too",
                    v.signatures_inside
                )
            } else {
                String::new()
            }
        ),
        Verdict::Broken(bad) => markup!(
            "<div class=\"verdict bad\" role=\"alert\" id=\"verdict\" data-verified=\"false\"><h2>✗ The chain does not verify</h2><p>{}</p></div>",
            bad.to_string()
        ),
        Verdict::Unsigned => markup!(
            "<div class=\"verdict bad\" role=\"alert\" id=\"verdict\" data-verified=\"false\"><h2>Not verifiable</h2><p>This planner signs nothing (--insecure-no-signing): its records cannot be vouched for.</p></div>"
        ),
    };
    let mut rows = Markup::new();
    for r in &shown {
        html!(
            rows,
            "<tr><td class=\"mono\">{}</td><td>{}</td><td><b>{}</b></td><td class=\"actor\">{}</td><td class=\"summary\">{}</td><td class=\"mono\" title=\"{}\">{}</td></tr>",
            r.seq,
            super::html::time(r.event.time),
            r.event.event_type,
            r.event
                .actor
                .as_ref()
                .map_or_else(|| "—".to_owned(), ToString::to_string),
            summary(&r.event.data),
            r.hash,
            r.hash.get(..12).unwrap_or(&r.hash)
        );
    }
    let more = if in_scope > shown.len() {
        markup!(
            "<p class=\"note\">The first {} of its {} records; <code>shoal audit export --deployment {}</code> has them all.</p>",
            shown.len(),
            in_scope,
            d.id
        )
    } else {
        Markup::new()
    };
    let body = markup!(
        "<div class=\"title-row\"><h1>Audit trail: {} → {}</h1><div class=\"actions\"><a class=\"button\" href=\"/deployments/{}\">Back to the deployment</a></div></div>{}<p class=\"hint\">Check it yourself, offline: <code>shoal audit export --deployment {} --out audit.jsonl</code>, then <code>shoal audit verify audit.jsonl --key signing.key.pub</code>.</p><table class=\"list audit\"><thead><tr><th scope=\"col\">Seq</th><th scope=\"col\">Time</th><th scope=\"col\">Event</th><th scope=\"col\">Actor</th><th scope=\"col\">Data</th><th scope=\"col\">Hash</th></tr></thead><tbody>{}</tbody></table>{}",
        d.project,
        d.environment,
        d.id,
        verdict_html,
        d.id,
        rows,
        more
    );
    Ok(ctx.page(Page {
        title: format!("Audit of {} → {}", d.project, d.environment),
        nav: Nav::Deployments,
        live: super::Live::off(),
        body,
    }))
}

/// Audit trails checked at once.
const CHECKS: usize = 2;
static CHECKING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CHECKS);

/// Exports the deployment's range of the log and verifies the export as it is written (two
/// blocking threads and a bounded channel: the range can be long and is never held whole);
/// the verdict, the deployment's records (the first [`SHOWN`]) and how many it has.
async fn check(ctx: &Ctx, id: DeploymentId) -> Result<(Verdict, Vec<Shown>, usize), PageError> {
    // A check reads the log from the deployment's first record to its last and goes on when
    // its reader leaves: at most [`CHECKS`] at once, so that viewers cannot take every
    // blocking thread the API's reads need.
    let Ok(_turn) = CHECKING.try_acquire() else {
        return Err(PageError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{CHECKS} audit trails are being checked; try again in a moment"),
        ));
    };
    let app = &ctx.app;
    let Some(public) = app.signer.key().map(|k| k.public()) else {
        return Ok((Verdict::Unsigned, Vec::new(), 0));
    };
    let stream = format!("deployment/{id}");
    let durable = super::durable(app);
    let scope = stream.clone();
    let bounds = match app.read(move |log| Ok(log.stream_bounds(&scope)?)).await {
        Ok(b) => b,
        Err(e) => return Err(PageError::of_api(e).await),
    };
    let Some((first, last)) = bounds else {
        return Err(PageError::not_found(format!(
            "no record of deployment {id} in the log"
        )));
    };
    let range = Range {
        from: first,
        to: last.min(durable),
        scope: Some(stream),
        deployment: Some(id),
    };
    let (tx, rx) = mpsc::channel::<String>(64);
    let (log, signer) = (app.log.clone(), app.signer.clone());
    let writing = tokio::task::spawn_blocking(move || {
        let Some(key) = signer.key() else {
            return Ok(());
        };
        crate::audit::export(&log, key, &range, &tx)
    });
    let checking = tokio::task::spawn_blocking(move || {
        let trusted = TrustedKeys::of([public]);
        let mut reader = Tee::new(rx);
        let verdict = match verify(&mut reader, Some(&trusted)) {
            Ok(v) => Verdict::Verified(v),
            Err(bad) => Verdict::Broken(bad),
        };
        // Whatever the check stopped at, the writer must not wait on a full channel.
        reader.drain();
        (verdict, reader.kept, reader.in_scope)
    });
    let (written, checked) = tokio::join!(writing, checking);
    let (verdict, kept, in_scope) = match checked {
        Ok(c) => c,
        Err(e) => return Err(PageError::internal("verifying an audit export", &e).await),
    };
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(PageError::internal("exporting the audit trail", &e).await),
        Err(e) => return Err(PageError::internal("exporting the audit trail", &e).await),
    }
    Ok((verdict, kept, in_scope))
}

/// The export's lines as one stream of bytes for the check, keeping the deployment's
/// records (in scope) as they pass.
struct Tee {
    rx: mpsc::Receiver<String>,
    line: String,
    at: usize,
    kept: Vec<Shown>,
    in_scope: usize,
}

impl Tee {
    fn new(rx: mpsc::Receiver<String>) -> Tee {
        Tee {
            rx,
            line: String::new(),
            at: 0,
            kept: Vec::new(),
            in_scope: 0,
        }
    }

    fn keep(&mut self, line: &str) {
        // Cheap test first: most records of a busy log are other streams'.
        if !line.contains("\"in_scope\":true") {
            return;
        }
        if let Ok(Line::Record {
            seq,
            hash,
            in_scope: true,
            event,
            ..
        }) = serde_json::from_str::<Line>(line)
        {
            self.in_scope += 1;
            if self.kept.len() < SHOWN {
                self.kept.push(Shown { seq, hash, event });
            }
        }
    }

    /// Reads what is left of the export.
    fn drain(&mut self) {
        while self.rx.blocking_recv().is_some() {}
    }
}

impl Read for Tee {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Tee {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.at >= self.line.len() {
            self.at = 0;
            self.line = match self.rx.blocking_recv() {
                Some(next) => {
                    self.keep(&next);
                    next
                }
                None => String::new(),
            };
        }
        Ok(&self.line.as_bytes()[self.at..])
    }

    fn consume(&mut self, n: usize) {
        self.at += n;
    }
}

/// An event's fields on one line: scalars as they are, lists and objects by their size,
/// each value cut at 100 characters (a deployment's record holds its whole spec).
fn summary(data: &serde_json::Value) -> String {
    let Some(fields) = data.as_object() else {
        return cut(&data.to_string());
    };
    fields
        .iter()
        .filter(|(k, _)| k.as_str() != "deployment")
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => cut(s),
                serde_json::Value::Array(a) => format!("[{} items]", a.len()),
                serde_json::Value::Object(o) if o.len() > 3 => format!("{{{} fields}}", o.len()),
                other => cut(&other.to_string()),
            };
            format!("{k}={v}")
        })
        .collect::<Vec<_>>()
        .join("  ")
}

fn cut(s: &str) -> String {
    match s.char_indices().nth(100) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_names_fields_and_cuts_long_values() {
        let data = serde_json::json!({
            "deployment": "d", "task": "t", "attempt": 2, "lines": [1, 2, 3],
            "reason": "x".repeat(150)
        });
        let s = summary(&data);
        assert!(
            s.starts_with("attempt=2  lines=[3 items]  reason=xxx"),
            "{s}"
        );
        assert!(s.ends_with("…  task=t"), "{s}");
        assert!(!s.contains("deployment="));
    }
}
