//! A span around every API request (target `shoal::trace`, exported when the planner has an
//! OTLP endpoint): the root of a deployment's trace, or a child of the caller's when the
//! request carries a W3C `traceparent`. The answer says its trace in `traceparent`.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use shoal_runtime::telemetry::{TRACE, TRACEPARENT, set_parent, traceparent};
use tracing::Instrument as _;

/// Runs the request inside its span.
pub(super) async fn request(req: Request, next: Next) -> Response {
    // An unknown path is not a span name (it would be one name per path anyone tries).
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // Probes and scrapes come every few seconds and tell nothing about a deployment.
    if route == "/healthz" || route == "/metrics" {
        return next.run(req).await;
    }
    let name = format!("{} {route}", req.method());
    let span =
        tracing::trace_span!(target: TRACE, "http.request", otel.name = %name, http.route = %route);
    let incoming = req.headers().get(TRACEPARENT).and_then(|v| v.to_str().ok());
    set_parent(&span, incoming);
    let trace = traceparent(&span);
    let mut answer = next.run(req).instrument(span).await;
    if let Some(tp) = trace.and_then(|t| t.parse().ok()) {
        answer.headers_mut().insert(TRACEPARENT, tp);
    }
    answer
}
