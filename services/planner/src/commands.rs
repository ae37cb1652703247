//! Commands over NATS: request/reply on `shoal.cmd.<role>.<integrator>.<command>`, for the
//! systems that integrate through messages. Only the integrator's own identity may publish
//! on its subjects (its trust bundle grants `shoal.cmd.<role>.<name>.>` and nothing else),
//! so the subject says who asks and with which role; the planner records the integrator as
//! the actor. Each command goes through the HTTP API's own router — the same checks of role
//! and body, the same errors, the same idempotency keys (the `Idempotency-Key` header) — and
//! its answer comes back as `{"status": <HTTP status>, "body": <the API's answer>,
//! "replayed": <the first answer again (idempotency key)>}`.
//!
//! | command | body | as |
//! |---|---|---|
//! | `deployment.create` | the deployment | `POST /api/deployments` |
//! | `deployment.cancel` | `{"id": …, "reason": …}` | `POST /api/deployments/{id}/cancel` |
//! | `target.register` | the target | `POST /api/targets` |
//! | `target.set-pool` | `{"name": …, "default_pool": … or null}` | `PUT /api/targets/{name}` |
//! | `worker.drain`, `worker.resume` | `{"name": …}` | `POST /api/workers/{name}/drain`, `…/resume` |
//!
//! The answer goes only to the integrator's own inbox (`_INBOX_<prefix>_integrator.<name>.…`):
//! a reply subject is the sender's to choose and nats-server checks none, so answering
//! anywhere else would let a caller have the planner's unrestricted connection publish onto
//! any subject (a stream's purge, another client's inbox). That also refuses what JetStream
//! delivers onto a command subject on someone's behalf (its reply is an ack subject): only
//! the integrator itself sends from its inbox. A request refused so, or naming no known
//! command, is recorded like any bad message.

use crate::api::auth::Caller;
use crate::rejections::{Recorder, Refused, Why};
use axum::body::Body;
use axum::http::{Method, Request};
use futures::StreamExt as _;
use serde_json::{Value, json};
use shoal_shared::auth::Role;
use shoal_shared::subjects::Subjects;
use shoal_shared::{EventId, TokenName};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// Commands carried out at once; more wait for their turn.
const AT_ONCE: usize = 64;
/// Largest answer body read back from the router.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// The header of an answer with its HTTP status.
pub const STATUS_HEADER: &str = "Shoal-Status";

/// Answers commands until `stop`.
pub async fn serve(
    client: async_nats::Client,
    subjects: Subjects,
    router: axum::Router,
    recorder: Recorder,
    stop: CancellationToken,
) {
    let mut sub = match client.subscribe(subjects.commands_all()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to the command subjects; commands over NATS are not answered");
            return;
        }
    };
    let room = Arc::new(Semaphore::new(AT_ONCE));
    loop {
        let msg = tokio::select! {
            () = stop.cancelled() => return,
            msg = sub.next() => match msg { Some(m) => m, None => return },
        };
        let Ok(permit) = room.clone().acquire_owned().await else {
            return;
        };
        let (client, subjects, router, recorder) = (
            client.clone(),
            subjects.clone(),
            router.clone(),
            recorder.clone(),
        );
        tokio::spawn(async move {
            answer(&client, &subjects, router, &recorder, msg).await;
            drop(permit);
        });
    }
}

/// A command as the API's request, or why it is none.
struct Parsed {
    caller: Caller,
    request: Request<Body>,
}

async fn answer(
    client: &async_nats::Client,
    subjects: &Subjects,
    router: axum::Router,
    recorder: &Recorder,
    msg: async_nats::Message,
) {
    let refuse = |reason: String, why: Why| Refused {
        id: EventId::new(),
        subject: msg.subject.to_string(),
        claimed: None,
        reason,
        why,
        bytes: msg.payload.to_vec(),
    };
    // Answers go to the inbox of the integrator the subject names, and nowhere else.
    let reply = match (inbox_of(subjects, &msg.subject), msg.reply.as_ref()) {
        (Some(inbox), Some(reply)) if reply.starts_with(&format!("{inbox}.")) => reply.clone(),
        (inbox, reply) => {
            let why = format!(
                "a command is answered only in its integrator's inbox ({}.…); its reply subject is {}",
                inbox
                    .as_deref()
                    .unwrap_or("_INBOX_<prefix>_integrator.<name>"),
                reply.map_or("missing", |r| r.as_str())
            );
            recorder.refuse(refuse(why, Why::Reply)).await;
            return;
        }
    };
    let (status, body, replayed) = match parse(subjects, &msg) {
        Ok(parsed) => run(router, parsed).await,
        Err(why) => {
            recorder.refuse(refuse(why.clone(), Why::Undecodable)).await;
            (400, json!({ "error": why }), false)
        }
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(STATUS_HEADER, status.to_string().as_str());
    let payload = json!({ "status": status, "body": body, "replayed": replayed }).to_string();
    if let Err(e) = client
        .publish_with_headers(reply, headers, payload.into())
        .await
    {
        tracing::warn!(error = %e, subject = %msg.subject, "a command's answer was not sent");
    }
}

/// The inbox of the integrator a command subject names (`shoal.cmd.<role>.<name>.…`), if
/// the name is a name.
fn inbox_of(subjects: &Subjects, subject: &str) -> Option<String> {
    let root = subjects.commands_all();
    let rest = subject.strip_prefix(root.trim_end_matches('>'))?;
    let name = rest.split('.').nth(1)?;
    TokenName::parse(name).ok()?;
    Some(subjects.integrator_inbox_prefix(name))
}

/// The command's caller and request, from its subject, body and headers.
fn parse(subjects: &Subjects, msg: &async_nats::Message) -> Result<Parsed, String> {
    let root = subjects.commands_all();
    let rest = msg
        .subject
        .strip_prefix(root.trim_end_matches('>'))
        .ok_or_else(|| format!("{} is not a command subject", msg.subject))?;
    let mut parts = rest.splitn(3, '.');
    let (Some(role), Some(name), Some(command)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!(
            "a command's subject is {}.<role>.<integrator>.<command>",
            root.trim_end_matches(".>")
        ));
    };
    let role: Role = role.parse().map_err(|e: String| format!("role: {e}"))?;
    let name = TokenName::parse(name).map_err(|e| format!("integrator: {e}"))?;
    let (method, path, body) = route(command, &msg.payload)?;
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    // NATS header names are case-sensitive; a client may write either spelling.
    let key = msg.headers.as_ref().and_then(|h| {
        h.get("Idempotency-Key")
            .or_else(|| h.get(crate::api::idempotency::HEADER))
    });
    if let Some(key) = key {
        request = request.header(crate::api::idempotency::HEADER, key.as_str());
    }
    let request = request
        .body(Body::from(body))
        .map_err(|e| format!("cannot make the request: {e}"))?;
    Ok(Parsed {
        caller: Caller::integrator(name, role),
        request,
    })
}

/// The API endpoint of a command, and the body to send it.
fn route(command: &str, payload: &[u8]) -> Result<(Method, String, Vec<u8>), String> {
    let take = |field: &str| -> Result<(String, Vec<u8>), String> {
        let mut v: Value =
            serde_json::from_slice(payload).map_err(|e| format!("malformed JSON: {e}"))?;
        let id = v
            .as_object_mut()
            .and_then(|o| o.remove(field))
            .and_then(|f| f.as_str().map(str::to_owned))
            .ok_or_else(|| format!("{field}: missing (a {command} names it in its body)"))?;
        Ok((id, v.to_string().into_bytes()))
    };
    Ok(match command {
        "deployment.create" => (Method::POST, "/api/deployments".into(), payload.to_vec()),
        "target.register" => (Method::POST, "/api/targets".into(), payload.to_vec()),
        "deployment.cancel" => {
            let (id, body) = take("id")?;
            let id = shoal_shared::DeploymentId::parse(&id)
                .map_err(|_| format!("id: \"{id}\" is not a deployment id (a UUID)"))?;
            (Method::POST, format!("/api/deployments/{id}/cancel"), body)
        }
        "target.set-pool" => {
            let (name, body) = take("name")?;
            let name = shoal_shared::TargetName::parse(name).map_err(|e| format!("name: {e}"))?;
            (Method::PUT, format!("/api/targets/{name}"), body)
        }
        "worker.drain" | "worker.resume" => {
            let (name, _) = take("name")?;
            let name = shoal_shared::WorkerName::parse(name).map_err(|e| format!("name: {e}"))?;
            let verb = command.trim_start_matches("worker.");
            (
                Method::POST,
                format!("/api/workers/{name}/{verb}"),
                b"{}".to_vec(),
            )
        }
        other => {
            return Err(format!(
                "unknown command \"{other}\" (known: deployment.create, deployment.cancel, target.register, target.set-pool, worker.drain, worker.resume)"
            ));
        }
    })
}

/// Sends the request through the API's router as `caller`: the answer's status and body,
/// and whether it is the first answer again (an idempotency key).
async fn run(router: axum::Router, parsed: Parsed) -> (u16, Value, bool) {
    let Parsed {
        caller,
        mut request,
    } = parsed;
    request.extensions_mut().insert(caller);
    request.extensions_mut().insert(crate::api::auth::FromNats);
    let response = match router.oneshot(request).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .contains_key(crate::api::idempotency::REPLAYED);
    let body = match axum::body::to_bytes(response.into_body(), MAX_ANSWER).await {
        Ok(b) if b.is_empty() => Value::Null,
        Ok(b) => serde_json::from_slice(&b)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&b).into_owned())),
        Err(e) => json!({ "error": format!("the answer could not be read: {e}") }),
    };
    (status, body, replayed)
}
