//! Attacks on the HTTP API, against a real planner process: no token, a wrong or revoked
//! token, a token of too low a role, a `text/plain` body a web page could send, a
//! cross-origin read, and a look for tokens in clear on the planner's disk. The endpoints
//! tried are the planner's own table ([`shoal_planner::api::auth::ENDPOINTS`]), which its
//! guard reads for every request (a route missing from it needs `admin`).

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap};
use reqwest::{Method, StatusCode};
use shoal_e2e::serde_json::{Value, json};
use shoal_e2e::{Cluster, WAIT, assert_api_error};
use shoal_planner::api::auth::{Access, ENDPOINTS};
use shoal_shared::api::{CreatedToken, EventView};
use std::path::Path;
use std::time::Duration;

/// A raw HTTP client: no token unless given, nothing the CLI's client would add.
fn raw() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// A route pattern with its parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("{name}", "nobody")
        .replace("{id}", "0194a1b2-0000-7000-8000-000000000000")
        .replace("{task}", "0194a1b2-0000-7000-8000-000000000001")
}

/// Sends one request: method, path, token, content type and body as given.
async fn send(
    c: &Cluster,
    method: Method,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Option<String>,
) -> anyhow::Result<(StatusCode, HeaderMap, String)> {
    let url = format!("{}{path}", c.api.base());
    let mut req = raw()?.request(method, url);
    if let Some(t) = token {
        req = req.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    if let Some(ct) = content_type {
        req = req.header(CONTENT_TYPE, ct);
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    let resp = tokio::time::timeout(WAIT, req.send()).await??;
    let (status, headers) = (resp.status(), resp.headers().clone());
    // An event stream has no end: its status and headers are the answer.
    let endless = headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if endless {
        return Ok((status, headers, String::new()));
    }
    Ok((status, headers, resp.text().await?))
}

/// Makes a token of `role` named `name` with the admin token; returns it.
async fn token(c: &Cluster, name: &str, role: &str) -> anyhow::Result<String> {
    let t: CreatedToken = c
        .api
        .post_as("/api/tokens", &json!({"name": name, "role": role}))
        .await?;
    Ok(t.token)
}

fn deployment() -> Value {
    json!({"project": "p", "environment": "prod",
           "steps": [{"name": "run", "action": {"type": "script", "script": "echo pwned"}}]})
}

/// A cluster where [`deployment`] would be accepted (its environment has a target), so a
/// refusal is the guard's and nothing else's.
async fn deployable(args: &[&str]) -> anyhow::Result<Cluster> {
    let c = Cluster::start(args).await?;
    c.target("web-1", "prod", &["web"], None).await?;
    Ok(c)
}

async fn deployments(c: &Cluster) -> anyhow::Result<usize> {
    let list = c.api.get("/api/deployments").await?;
    Ok(list.as_array().map_or(0, Vec::len))
}

/// The non-public endpoints of the planner's table, filled in.
fn guarded() -> Vec<(Method, String)> {
    let endpoints: Vec<(Method, String)> = ENDPOINTS
        .iter()
        .filter(|e| e.access != Access::Public)
        .map(|e| {
            let m = Method::from_bytes(e.method.as_str().as_bytes()).unwrap_or(Method::GET);
            (m, concrete(e.path))
        })
        .collect();
    assert!(
        endpoints.len() >= 20,
        "the table lost endpoints: {endpoints:?}"
    );
    endpoints
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_without_a_token_gets_401_and_the_table_is_the_routers() -> anyhow::Result<()>
{
    let c = deployable(&["--no-builtin-worker"]).await?;
    let admin = c.admin_token()?;
    for (method, path) in guarded() {
        let body = (method != Method::GET).then(|| "{}".to_owned());
        let ct = body.as_ref().map(|_| "application/json");
        let (status, headers, text) =
            send(&c, method.clone(), &path, None, ct, body.clone()).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {text}");
        assert!(text.contains("needs a token"), "{method} {path}: {text}");
        assert_eq!(
            headers.get("www-authenticate").map(|v| v.as_bytes()),
            Some(&b"Bearer"[..]),
            "{method} {path}"
        );
        // The entry is a real route: an admin reaches its handler (no 405, no fallback 404).
        let (status, _, text) = send(&c, method.clone(), &path, Some(&admin), ct, body).await?;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(
            !text.contains("no such endpoint"),
            "{method} {path}: {text}"
        );
        assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {text}");
    }
    // A path that is no route at all wants a token too: an anonymous caller learns nothing.
    let (status, _, _) = send(&c, Method::GET, "/api/secret", None, None, None).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, text) = send(&c, Method::GET, "/healthz", None, None, None).await?;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "ok"));
    assert_eq!(deployments(&c).await?, 0, "nothing was deployed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_gets_401_on_every_endpoint() -> anyhow::Result<()> {
    let c = Cluster::start(&["--no-builtin-worker"]).await?;
    let admin = c.admin_token()?;
    // One character off the real admin token, and one of the right shape nobody made.
    let mut off = admin.clone();
    let last = if off.ends_with('0') { "1" } else { "0" };
    off.replace_range(off.len() - 1.., last);
    let made_up = format!("shoal_{}", "ab".repeat(32));
    for wrong in [off.as_str(), made_up.as_str(), "admin"] {
        for (method, path) in guarded() {
            let (status, _, text) =
                send(&c, method.clone(), &path, Some(wrong), None, None).await?;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {text}");
            assert!(text.contains("not valid"), "{text}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_token_cannot_deploy_and_nothing_is_deployed() -> anyhow::Result<()> {
    let c = deployable(&[]).await?;
    let viewer = token(&c, "dashboard", "viewer").await?;
    let as_viewer = c.api.clone().with_token(&viewer);
    assert_api_error(
        as_viewer.post("/api/deployments", &deployment()).await,
        403,
        &["this endpoint needs role deployer; token \"dashboard\" has viewer"],
    );
    // What a viewer may do: read.
    as_viewer.get("/api/deployments").await?;
    as_viewer.get("/api/events").await?;
    assert_api_error(
        as_viewer.get("/api/tokens").await,
        403,
        &["needs role admin"],
    );
    assert_eq!(deployments(&c).await?, 0);
    let created = c
        .events(None)
        .await?
        .into_iter()
        .filter(|e| e["type"] == "DeploymentCreated")
        .count();
    assert_eq!(created, 0, "no deployment in the log");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployer_token_cannot_add_a_pool() -> anyhow::Result<()> {
    let c = Cluster::start(&["--no-builtin-worker"]).await?;
    let deployer = token(&c, "ci", "deployer").await?;
    let as_ci = c.api.clone().with_token(&deployer);
    assert_api_error(
        as_ci
            .post("/api/pools", &json!({"name": "rogue", "region": "x"}))
            .await,
        403,
        &["this endpoint needs role admin; token \"ci\" has deployer"],
    );
    assert_api_error(
        as_ci
            .post("/api/tokens", &json!({"name": "more", "role": "admin"}))
            .await,
        403,
        &["needs role admin"],
    );
    let pools = c.api.get("/api/pools").await?;
    assert!(
        !pools.to_string().contains("rogue"),
        "the pool was not made: {pools}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_gets_401_at_once() -> anyhow::Result<()> {
    let c = deployable(&["--no-builtin-worker"]).await?;
    let ci = token(&c, "ci", "deployer").await?;
    let as_ci = c.api.clone().with_token(&ci);
    as_ci.get("/api/pools").await?;
    c.api.delete("/api/tokens/ci").await?;
    assert_api_error(as_ci.get("/api/pools").await, 401, &["not valid"]);
    assert_api_error(
        as_ci.post("/api/deployments", &deployment()).await,
        401,
        &["not valid"],
    );
    // The last admin token stays: revoking it would lock everyone out.
    assert_api_error(
        c.api.delete("/api/tokens/admin").await,
        409,
        &["last admin token"],
    );
    let list = c.api.get("/api/tokens").await?;
    assert!(!list.to_string().contains("\"ci\""), "{list}");
    assert_eq!(deployments(&c).await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_plain_post_with_a_valid_json_body_gets_415_and_deploys_nothing()
-> anyhow::Result<()> {
    let c = deployable(&[]).await?;
    let admin = c.admin_token()?;
    let body = deployment().to_string();
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let (status, _, text) = send(
            &c,
            Method::POST,
            "/api/deployments",
            Some(&admin),
            ct,
            Some(body.clone()),
        )
        .await?;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}: {text}");
        assert!(text.contains("application/json"), "{text}");
    }
    assert_eq!(deployments(&c).await?, 0, "nothing was deployed");
    // The same body as JSON is accepted: the 415 was the media type, nothing else.
    let (status, _, text) = send(
        &c,
        Method::POST,
        "/api/deployments",
        Some(&admin),
        Some("application/json"),
        Some(body),
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_origin_request_gets_no_cors_headers() -> anyhow::Result<()> {
    let c = Cluster::start(&["--no-builtin-worker"]).await?;
    let admin = c.admin_token()?;
    let client = raw()?;
    let url = format!("{}/api/deployments", c.api.base());
    let preflight = client
        .request(Method::OPTIONS, &url)
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await?;
    let read = client
        .get(&url)
        .header("origin", "https://evil.example")
        .bearer_auth(&admin)
        .send()
        .await?;
    assert!(read.status().is_success());
    assert!(!preflight.status().is_success(), "{}", preflight.status());
    for resp in [&preflight, &read] {
        let cors: Vec<_> = resp
            .headers()
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .collect();
        assert!(cors.is_empty(), "CORS headers sent: {cors:?}");
    }
    Ok(())
}

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)?
                .windows(needle.len())
                .any(|w| w == needle)
            {
                found.push(path.display().to_string());
            }
        }
    }
    Ok(found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_is_stored_in_clear_in_the_data_dir_only_its_hash() -> anyhow::Result<()> {
    let mut c = Cluster::start(&["--no-builtin-worker"]).await?;
    let ci = token(&c, "ci", "deployer").await?;
    let viewer = token(&c, "dash", "viewer").await?;
    // On disk for sure: sled writes its pages on shutdown.
    c.stop_planner().await?;
    let data = c.data_dir();
    for t in [&ci, &viewer] {
        assert_eq!(
            files_containing(&data, t.as_bytes())?,
            Vec::<String>::new(),
            "a token in clear"
        );
        // The search works: the token's hash is in the log.
        let hash = shoal_planner::api::auth::hash_token(t);
        assert!(
            !files_containing(&data, hash.as_bytes())?.is_empty(),
            "the hash of a token is not on disk: is the search blind?"
        );
    }
    // The admin token is in clear only in the file made to hand it over, mode 0600.
    let admin = c.admin_token()?;
    let file = c.admin_token_file();
    assert_eq!(
        files_containing(&data, admin.as_bytes())?,
        vec![file.display().to_string()]
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file)?.permissions());
    assert_eq!(mode & 0o777, 0o600, "admin.token mode {mode:o}");
    // The token projection is rebuilt from the log like every other.
    let (ok, out) = c.replay()?;
    assert!(ok, "{out}");
    // The planner's log names the file, never the token.
    c.start_planner().await?;
    let log = c.planner.as_ref().map(|p| p.output()).unwrap_or_default();
    assert!(log.contains("admin.token"), "{log}");
    for t in [&admin, &ci, &viewer] {
        assert!(!log.contains(t.as_str()), "a token in the planner's log");
    }
    // The API names tokens in their events but shows no one their hashes.
    let events = c.api.get("/api/events?stream=token/ci").await?.to_string();
    assert!(events.contains("TokenCreated"), "{events}");
    let hash = shoal_planner::api::auth::hash_token(&ci);
    assert!(
        !events.contains(&hash),
        "a token's hash in /api/events: {events}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deploy_and_cancel_events_name_the_token_and_worker_events_the_worker()
-> anyhow::Result<()> {
    let c = deployable(&[]).await?;
    let ci = token(&c, "ci", "deployer").await?;
    let oncall = token(&c, "oncall", "deployer").await?;
    let as_ci = c.api.clone().with_token(&ci);
    let created = as_ci
        .post(
            "/api/deployments",
            &json!({"project": "p", "environment": "prod", "steps": [
                {"name": "slow", "action": {"type": "script", "script": "sleep 30"}}]}),
        )
        .await?;
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    let stream = format!("deployment/{id}");
    c.wait_for("the task to start", WAIT, || async {
        let events = c.events(Some(&stream)).await?;
        Ok(events
            .iter()
            .any(|e| e["type"] == "TaskStarted")
            .then_some(()))
    })
    .await?;
    c.api
        .clone()
        .with_token(&oncall)
        .post(&format!("/api/deployments/{id}/cancel"), &json!({}))
        .await?;
    c.finished(&id, WAIT).await?;
    let events: Vec<EventView> = c
        .events(Some(&stream))
        .await?
        .into_iter()
        .map(shoal_e2e::serde_json::from_value)
        .collect::<Result<_, _>>()?;
    let actor = |ty: &str| {
        events
            .iter()
            .find(|e| e.event_type == ty)
            .and_then(|e| e.actor.as_ref().map(ToString::to_string))
    };
    assert_eq!(actor("DeploymentCreated").as_deref(), Some("token:ci"));
    assert_eq!(actor("TaskPlanned").as_deref(), Some("token:ci"));
    assert_eq!(
        actor("DeploymentCancelRequested").as_deref(),
        Some("token:oncall")
    );
    let started = actor("TaskStarted").unwrap_or_default();
    assert!(started.starts_with("worker:builtin-"), "{started}");
    // The CLI shows who did it.
    let (ok, out) = c.cli(&["events", "--deployment", &id])?;
    assert!(ok, "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("DeploymentCreated") && l.contains("by token:ci")),
        "{out}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_without_a_token_says_what_to_do() -> anyhow::Result<()> {
    let c = Cluster::start(&["--no-builtin-worker"]).await?;
    let (ok, out) = shoal_e2e::run_binary("shoal", &["--api", c.api.base(), "pool", "list"])?;
    assert!(!ok);
    assert!(
        out.contains("HTTP 401") && out.contains("SHOAL_TOKEN") && out.contains("admin.token"),
        "{out}"
    );
    let viewer = token(&c, "dash", "viewer").await?;
    let (ok, out) = shoal_e2e::run_binary_env(
        "shoal",
        &["--api", c.api.base(), "pool", "add", "x"],
        &[("SHOAL_TOKEN", viewer.as_ref())],
    )?;
    assert!(!ok);
    assert!(
        out.contains("HTTP 403") && out.contains("needs role admin"),
        "{out}"
    );
    // An admin makes a token with the CLI; it is printed once and works.
    let (ok, out) = c.cli(&["token", "create", "--name", "ci", "--role", "deployer"])?;
    assert!(ok, "{out}");
    let made = out
        .lines()
        .find(|l| l.starts_with("shoal_"))
        .unwrap_or_default()
        .to_owned();
    c.api.clone().with_token(&made).get("/api/pools").await?;
    let (ok, out) = c.cli(&["token", "list"])?;
    assert!(
        ok && out.contains("ci") && out.contains("deployer"),
        "{out}"
    );
    assert!(!out.contains(&made), "the list shows no token: {out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planner_listening_beyond_loopback_warns_loudly() -> anyhow::Result<()> {
    let dir = shoal_e2e::tempdir()?;
    let nats = shoal_e2e::Nats::start(dir.path()).await?;
    let port = shoal_e2e::free_port()?;
    let mut args: Vec<String> = [
        "--nats-url",
        &nats.url(),
        "--data-dir",
        &dir.path().join("data").display().to_string(),
        "--http-addr",
        &format!("0.0.0.0:{port}"),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(shoal_cli::local::trust::planner_identity_args(
        &nats.url(),
        &[],
    ));
    let mut p = shoal_cli::local::Proc::spawn(
        "planner",
        &shoal_cli::local::find_binary("shoal-planner")?,
        &args,
        &dir.path().join("logs"),
    )?;
    p.wait_for_output("planner ready", WAIT).await?;
    assert!(
        p.output()
            .contains("THE HTTP API LISTENS ON A NON-LOOPBACK ADDRESS"),
        "{}",
        p.output()
    );
    p.kill().await?;
    // The default stays loopback.
    let c = Cluster::start(&["--no-builtin-worker"]).await?;
    let out = c.planner.as_ref().map(|p| p.output()).unwrap_or_default();
    assert!(!out.contains("NON-LOOPBACK"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_admin_token_is_replaced_offline_only_while_the_planner_is_stopped()
-> anyhow::Result<()> {
    let mut c = Cluster::start(&["--no-builtin-worker"]).await?;
    let data = c.data_dir().display().to_string();
    let args = [
        "admin-token",
        "--data-dir",
        data.as_str(),
        "--name",
        "rescue",
    ];
    let (ok, out) = shoal_e2e::run_binary("shoal-planner", &args)?;
    assert!(!ok && out.contains("stop it first"), "{out}");
    c.stop_planner().await?;
    let (ok, out) = shoal_e2e::run_binary("shoal-planner", &args)?;
    assert!(ok, "{out}");
    let rescue = out
        .lines()
        .find(|l| l.starts_with("shoal_"))
        .unwrap_or_default()
        .to_owned();
    c.start_planner().await?;
    let as_rescue = c.api.clone().with_token(&rescue);
    as_rescue
        .post("/api/tokens", &json!({"name": "alice", "role": "admin"}))
        .await?;
    let made = c.events(Some("token/rescue")).await?;
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(made[0]["actor"], "planner");
    let alice = c.events(Some("token/alice")).await?;
    assert_eq!(alice[0]["actor"], "token:rescue");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_cannot_flood_the_log_with_dashboard_logins() -> anyhow::Result<()> {
    use shoal_planner::domain::session::LOGINS_PER_DAY;
    let c = Cluster::start(&["--no-builtin-worker"]).await?;
    let viewer = token(&c, "wall", "viewer").await?;
    // Logouts do not make room: the day's sessions count, ended or not.
    for i in 0..LOGINS_PER_DAY {
        let cookie = c.dashboard_login(&viewer).await?;
        if i % 10 == 0 {
            c.dashboard_logout(&cookie).await?;
        }
    }
    let refused = c.dashboard_login(&viewer).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("429")),
        "{refused:?}"
    );
    let count = |events: &[Value], kind: &str| events.iter().filter(|e| e["type"] == kind).count();
    let events = c.events(Some("token/wall")).await?;
    assert_eq!(count(&events, "SessionStarted"), LOGINS_PER_DAY);
    assert_eq!(count(&events, "SessionEnded"), LOGINS_PER_DAY / 10);
    // Another token is not held back by this one's logins.
    c.dashboard_login(&c.admin_token()?).await?;
    Ok(())
}
