//! Commands over NATS from an integrator's identity, and idempotency keys: the same checks
//! and errors as HTTP, the integrator recorded as the actor, one deployment per key.

use shoal_cli::local::trust::{integrator_client, integrator_client_as};
use shoal_e2e::serde_json::{Value, json};
use shoal_e2e::{Cluster, WAIT};
use std::time::Duration;

/// Sends a command and reads its answer: (status, body).
async fn command(
    client: &async_nats::Client,
    subject: &str,
    body: &Value,
    key: Option<&str>,
) -> anyhow::Result<(u64, Value)> {
    let mut headers = async_nats::HeaderMap::new();
    if let Some(k) = key {
        headers.insert("Idempotency-Key", k);
    }
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        client.request_with_headers(subject.to_owned(), headers, body.to_string().into()),
    )
    .await??;
    let v: Value = shoal_e2e::serde_json::from_slice(&reply.payload)?;
    Ok((v["status"].as_u64().unwrap_or(0), v["body"].clone()))
}

/// Asserts that a request on `subject` gets no answer (the broker refuses its publish).
async fn unanswered(client: &async_nats::Client, subject: &str, body: &str, what: &str) {
    let tried = tokio::time::timeout(
        Duration::from_secs(3),
        client.request(subject.to_owned(), body.to_owned().into()),
    )
    .await;
    assert!(!matches!(tried, Ok(Ok(_))), "{what}");
}

/// `POST path` over HTTP with the admin token and maybe a key: (status, replayed, body).
async fn post(
    c: &Cluster,
    path: &str,
    body: &Value,
    key: Option<&str>,
) -> anyhow::Result<(u16, bool, Value)> {
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", c.api.base()))
        .bearer_auth(c.admin_token()?)
        .json(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let replayed = resp.headers().get("idempotent-replayed").is_some();
    Ok((status, replayed, resp.json().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integrator_deploys_over_nats_with_the_same_errors_as_http_and_one_deployment_per_key()
-> anyhow::Result<()> {
    let c = Cluster::start(&[]).await?;
    c.target("web-1", "prod", &["web"], None).await?;
    let (ci, _) = integrator_client_as(&c.nats.url(), "ci", Some("deployer")).await?;
    let create = "shoal.cmd.deployer.ci.deployment.create";

    // A bad body: the very error HTTP gives.
    let bad = json!({"project": "shop", "environment": "prod", "steps": [
        {"name": "x", "roles": ["web"], "action": {"type": "scrip"}}]});
    let (status, body) = command(&ci, create, &bad, None).await?;
    let (http_status, _, http_body) = post(&c, "/api/deployments", &bad, None).await?;
    assert_eq!((status, http_status), (400, 400), "{body}");
    assert_eq!(body, http_body);
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("scrip")),
        "{body}"
    );
    let (status, body) = command(&ci, create, &json!("not an object"), None).await?;
    assert_eq!(status, 400, "{body}");

    // The same key twice: one deployment, the first answer twice.
    let good = json!({"project": "shop", "environment": "prod", "steps": [
        {"name": "x", "roles": ["web"], "action": {"type": "noop"}}]});
    let (s1, first) = command(&ci, create, &good, Some("release-42")).await?;
    let (s2, again) = command(&ci, create, &good, Some("release-42")).await?;
    assert_eq!((s1, s2), (201, 201), "{first} {again}");
    // The NATS answer says it is the first again.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Idempotency-Key", "release-42");
    let raw = ci
        .request_with_headers(create.to_owned(), headers, good.to_string().into())
        .await?;
    let raw: Value = shoal_e2e::serde_json::from_slice(&raw.payload)?;
    assert_eq!(raw["replayed"], true, "{raw}");
    assert_eq!(first["id"], again["id"]);
    let id = first["id"].as_str().unwrap_or_default().to_owned();
    // Another request with that key is refused; another key makes another deployment.
    let other = json!({"project": "shop", "environment": "prod", "steps": [
        {"name": "y", "roles": ["web"], "action": {"type": "noop"}}]});
    let (s3, refused) = command(&ci, create, &other, Some("release-42")).await?;
    assert_eq!(s3, 409, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("release-42")),
        "{refused}"
    );
    let (s4, second) = command(&ci, create, &good, Some("release-43")).await?;
    assert_eq!(s4, 201);
    assert_ne!(second["id"], first["id"]);
    c.finished(&id, WAIT).await?;
    let created = c
        .api
        .get("/api/events?type=DeploymentCreated&limit=100")
        .await?;
    let created: Vec<&Value> = created.as_array().into_iter().flatten().collect();
    assert_eq!(
        created
            .iter()
            .filter(|e| e["data"]["deployment"] == id.as_str())
            .count(),
        1
    );
    assert_eq!(created.len(), 2, "one per key");
    let mine = created
        .iter()
        .find(|e| e["data"]["deployment"] == id.as_str());
    assert_eq!(
        mine.map(|e| e["actor"].clone()),
        Some(json!("integrator:ci"))
    );

    // The key is the caller's: the admin token's "release-42" is another key.
    let (status, replayed, answer) =
        post(&c, "/api/deployments", &good, Some("release-42")).await?;
    assert_eq!((status, replayed), (201, false));
    assert_ne!(answer["id"], first["id"]);
    let (status, replayed, again) = post(&c, "/api/deployments", &good, Some("release-42")).await?;
    assert_eq!((status, replayed), (201, true));
    assert_eq!(again["id"], answer["id"]);
    let (status, _, bad_key) = post(&c, "/api/deployments", &good, Some("has space")).await?;
    assert_eq!(status, 400, "{bad_key}");
    // The other create endpoints take keys too: a target registered once, its answer twice.
    let t2 =
        json!({"name": "web-2", "kind": "azure-web-app", "environment": "prod", "roles": ["web"]});
    let (s1, r1, first_target) = post(&c, "/api/targets", &t2, Some("t-1")).await?;
    let (s2, r2, again_target) = post(&c, "/api/targets", &t2, Some("t-1")).await?;
    assert_eq!((s1, r1, s2, r2), (201, false, 201, true), "{again_target}");
    assert_eq!(first_target["name"], again_target["name"]);
    let (s3, _, _) = post(&c, "/api/targets", &t2, None).await?;
    assert_eq!(s3, 409, "without a key, a second registration is refused");
    let registered = c
        .api
        .get("/api/events?stream=target/web-2&type=TargetRegistered")
        .await?;
    assert_eq!(registered.as_array().map(Vec::len), Some(1));

    // Its role bounds it: registering a target needs admin.
    let (status, body) = command(
        &ci,
        "shoal.cmd.deployer.ci.target.register",
        &json!({"name": "t2", "kind": "azure-web-app", "environment": "prod", "roles": ["web"]}),
        None,
    )
    .await?;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("integrator \"ci\"")),
        "{body}"
    );
    // Cancel a running deployment, by id in the body; an unknown command is named.
    let slow = json!({"project": "shop", "environment": "prod", "steps": [
        {"name": "x", "roles": ["web"], "action": {"type": "script", "script": "sleep 30"}}]});
    let (_, running) = command(&ci, create, &slow, None).await?;
    let running_id = running["id"].as_str().unwrap_or_default().to_owned();
    c.wait_for("the slow task running", WAIT, || async {
        let d = c.api.get(&format!("/api/deployments/{running_id}")).await?;
        Ok((d["state"] == "running").then_some(()))
    })
    .await?;
    let (status, body) = command(
        &ci,
        "shoal.cmd.deployer.ci.deployment.cancel",
        &json!({"id": running_id, "reason": "changed my mind"}),
        None,
    )
    .await?;
    assert_eq!(status, 202, "{body}");
    let d = c.finished(&running_id, WAIT).await?;
    assert_eq!(d["state"], "cancelled", "{d}");
    let (status, body) = command(
        &ci,
        "shoal.cmd.deployer.ci.deployment.cancel",
        &json!({"id": "w1/../../x"}),
        None,
    )
    .await?;
    assert_eq!(status, 400, "{body}");
    let (status, body) =
        command(&ci, "shoal.cmd.deployer.ci.deployment.delete", &good, None).await?;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown command")),
        "{body}"
    );

    // The answer goes only to the integrator's own inbox: a reply subject elsewhere (here a
    // purge of the feed's stream) gets nothing, and the refusal is recorded.
    let admin = shoal_cli::local::trust::admin_client(&c.nats.url()).await?;
    let events = async_nats::jetstream::new(admin);
    let before = events
        .get_stream("SHOAL_EVENTS")
        .await?
        .info()
        .await?
        .state
        .messages;
    ci.publish_with_reply(
        create.to_owned(),
        "$JS.API.STREAM.PURGE.SHOAL_EVENTS".to_owned(),
        good.to_string().into(),
    )
    .await?;
    ci.flush().await?;
    let refused = c
        .wait_for("the refusal recorded", WAIT, || async {
            let e = c.api.get("/api/events?type=MessageRejected").await?;
            Ok(e.as_array().and_then(|a| {
                a.iter()
                    .find(|e| {
                        e["data"]["reason"]
                            .as_str()
                            .is_some_and(|r| r.contains("reply subject"))
                    })
                    .cloned()
            }))
        })
        .await?;
    assert!(
        refused["data"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("PURGE")),
        "{refused}"
    );
    let after = events
        .get_stream("SHOAL_EVENTS")
        .await?
        .info()
        .await?
        .state
        .messages;
    assert!(after >= before, "the feed was purged: {before} → {after}");
    // Another role, another name: refused by the broker, never answered.
    unanswered(
        &ci,
        "shoal.cmd.admin.ci.target.register",
        "{}",
        "a deployer sent an admin command",
    )
    .await;
    let body = good.to_string();
    unanswered(
        &ci,
        "shoal.cmd.deployer.other.deployment.create",
        &body,
        "an integrator spoke as another",
    )
    .await;
    // An integrator without a role sends no command at all.
    let (reader, _) = integrator_client(&c.nats.url(), "reader").await?;
    unanswered(
        &reader,
        "shoal.cmd.deployer.reader.deployment.create",
        &body,
        "a read-only integrator sent a command",
    )
    .await;
    Ok(())
}
