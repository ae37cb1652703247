//! Traces across the broker: a deployment request's W3C trace context travels to the task
//! message (a NATS header), the worker's pull and run, and the report back, and the planner's
//! ingest of that report joins the worker's run: one trace id links them all, exported over
//! OTLP/HTTP to a collector (here, one started by the test that keeps what it receives).

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use shoal_e2e::serde_json::json;
use shoal_e2e::{Cluster, WAIT};
use std::sync::{Arc, Mutex};

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace: String,
    id: String,
    parent: String,
}

type Spans = Arc<Mutex<Vec<Span>>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn spans_of(req: &ExportTraceServiceRequest) -> Vec<Span> {
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| a.value.as_ref())
            .map(|v| format!("{:?}", v.value))
            .unwrap_or_default();
        for s in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
            out.push(Span {
                service: service.clone(),
                name: s.name.clone(),
                trace: hex(&s.trace_id),
                id: hex(&s.span_id),
                parent: hex(&s.parent_span_id),
            });
        }
    }
    out
}

/// An OTLP/HTTP collector on a free port: every span it receives.
async fn collector() -> anyhow::Result<(String, Spans)> {
    let spans: Spans = Arc::default();
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                if let Ok(req) = ExportTraceServiceRequest::decode(body.as_ref())
                    && let Ok(mut k) = kept.lock()
                {
                    k.extend(spans_of(&req));
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, spans))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_links_the_request_the_workers_run_and_the_ingest_of_its_report()
-> anyhow::Result<()> {
    let (otlp, spans) = collector().await?;
    let mut c = Cluster::start(&["--no-builtin-worker", "--otlp-endpoint", &otlp]).await?;
    c.pool("eu", "eu-west").await?;
    c.target("t1", "prod", &["web"], Some("eu")).await?;
    c.worker("w-eu", "eu", "eu-west", &["--otlp-endpoint", &otlp])?;
    c.wait_online(&["w-eu"]).await?;

    // The caller's own trace: the deployment's spans must join it.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let answer = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/api/deployments", c.http_port))
        .bearer_auth(c.admin_token()?)
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .json(&json!({"project": "p", "environment": "prod", "steps": [
            {"name": "hello", "roles": ["web"], "action": {"type": "script", "script": "echo hi"}}]}))
        .send()
        .await?;
    assert_eq!(answer.status(), 201);
    let said = answer
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(said.contains(trace), "the answer names its trace: {said:?}");
    let id = answer.json::<shoal_e2e::serde_json::Value>().await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(c.finished(&id, WAIT).await?["state"], "succeeded");

    let names = [
        "POST /api/deployments",
        "decide",
        "commit",
        "publish",
        "pull",
        "run",
        "ingest",
    ];
    let seen = c
        .wait_for("every span of the deployment's trace", WAIT, || async {
            let all = spans.lock().map(|s| s.clone()).unwrap_or_default();
            let ours: Vec<Span> = all.into_iter().filter(|s| s.trace == trace).collect();
            let has = |n: &str| ours.iter().any(|s| s.name == n);
            Ok(names.iter().all(|n| has(n)).then_some(ours))
        })
        .await?;
    let one = |name: &str| seen.iter().find(|s| s.name == name).cloned();
    let (pull, run) = (one("pull"), one("run"));
    let (Some(pull), Some(run)) = (pull, run) else {
        anyhow::bail!("no pull or run span: {seen:#?}");
    };
    assert!(
        pull.service.contains("shoal-worker") && run.service.contains("shoal-worker"),
        "{seen:#?}"
    );
    assert_eq!(
        run.parent, pull.id,
        "the run is part of the pull: {seen:#?}"
    );
    let publish = seen
        .iter()
        .find(|s| s.name == "publish" && s.id == pull.parent);
    assert!(
        publish.is_some_and(|p| p.service.contains("shoal-planner")),
        "the pull follows the planner's publish: {seen:#?}"
    );
    // The planner's ingest of the run's reports is a child of the run.
    assert!(
        seen.iter().any(|s| s.name == "ingest"
            && s.parent == run.id
            && s.service.contains("shoal-planner")),
        "an ingest span of the run's report: {seen:#?}"
    );
    Ok(())
}
