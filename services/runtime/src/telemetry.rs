//! Logging and tracing set-up of the shoal binaries: human-readable lines on stderr, coloured
//! only on a terminal, filtered by `RUST_LOG` (default `info`, NATS client internals at
//! `warn`); and, when an OTLP endpoint is given, the spans of a deployment's path (target
//! [`TRACE`]: the API request, decide, commit, publish, pull, run, ingest) exported to it.
//!
//! A trace crosses the broker as W3C trace context (`traceparent`): in a NATS header on task
//! messages, in the report a worker sends back. Without an endpoint those spans are disabled
//! at their call sites and cost nothing.

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The target of the spans that are exported (`tracing::info_span!(target: TRACE, …)`).
pub const TRACE: &str = "shoal::trace";

/// The W3C trace-context header.
pub const TRACEPARENT: &str = "traceparent";

/// The longest `traceparent` read (version 00 is 55 characters; later versions may append).
const MAX_TRACEPARENT: usize = 256;

/// Flushes the exported spans when dropped (keep it until the process ends).
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("traces: the last spans were not exported: {e}");
        }
    }
}

/// Installs the global subscriber: log lines, and spans exported to `otlp` (an OTLP/HTTP
/// endpoint such as `http://collector:4318`; JSON when `OTEL_EXPORTER_OTLP_PROTOCOL` is
/// `http/json`, else protobuf) as `service`.
///
/// # Panics
/// Never: an exporter that cannot be built is reported and left out.
#[must_use]
pub fn init(service: &'static str, otlp: Option<&str>) -> Telemetry {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,async_nats=warn".into()),
        );
    let provider = otlp.and_then(|endpoint| match provider(service, endpoint) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("traces: cannot export to {endpoint}: {e}; going on without traces");
            None
        }
    });
    let spans = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service))
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target(TRACE, tracing::Level::TRACE),
            )
    });
    tracing_subscriber::registry().with(logs).with(spans).init();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    Telemetry { provider }
}

fn provider(service: &'static str, endpoint: &str) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig as _};
    let json = std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").is_ok_and(|p| p == "http/json");
    let traces = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(if json {
            Protocol::HttpJson
        } else {
            Protocol::HttpBinary
        })
        .with_endpoint(traces)
        .build()
        .map_err(|e| e.to_string())?;
    let batches = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(Duration::from_millis(500))
                .build(),
        )
        .build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(batches)
        .with_resource(resource)
        .build())
}

/// The `traceparent` of `span`, if it is exported (`None` without an endpoint).
#[must_use]
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` a child of the span `traceparent` names (ignored when it is malformed).
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    // Anyone may send one (an HTTP header, a worker's report): nothing is parsed for a span
    // that is not exported, nor anything longer than a trace context can be.
    let Some(tp) = traceparent.filter(|t| t.len() <= MAX_TRACEPARENT) else {
        return;
    };
    if span.is_disabled() {
        return;
    }
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), tp.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// A span named `name` (its `otel.name`) in the trace `parent` names; a disabled span when
/// there is no parent (only traced work is traced) or no exporter.
#[must_use]
pub fn child_span(name: &'static str, parent: Option<&str>) -> tracing::Span {
    let Some(p) = parent else {
        return tracing::Span::none();
    };
    let span = tracing::trace_span!(target: TRACE, "shoal", otel.name = name);
    set_parent(&span, Some(p));
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exported_spans_have_a_trace_context_and_join_their_parent() {
        let _t = init("test", Some("http://127.0.0.1:9"));
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let span = child_span("decide", Some(parent));
        let tp = traceparent(&span).expect("an exported span has a trace context");
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{tp}"
        );
        assert!(!tp.contains("00f067aa0ba902b7"), "its own span id: {tp}");
        assert_eq!(
            child_span("decide", None).id(),
            None,
            "untraced work has no span"
        );
        let long = format!("{parent}{}", "-".repeat(1000));
        assert!(
            traceparent(&child_span("decide", Some(&long)))
                .is_some_and(|t| !t.contains("4bf92f35")),
            "an overlong context is not read"
        );
    }
}
