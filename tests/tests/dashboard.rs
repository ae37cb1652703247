//! The web dashboard in a real browser: headless Chromium driven over WebDriver (Debian's
//! `chromium` and `chromium-driver`; the test fails, naming them, when they are missing)
//! against a real planner, workers and broker, with security on as always.
//!
//! One walk, as people use it: log in with a token (keyboard only), watch a deployment
//! started through the API appear and its grid cells change state to succeeded without a
//! reload, its task's output arrive while the script still prints, drain and resume a
//! worker, read a target's health history and a deployment's verified audit trail; then the
//! refusals: a viewer sees no cancel button, and a cancel forged with a viewer's session, or
//! with an admin's session but without (or with a wrong) CSRF token, or from another origin,
//! gets 403 and cancels nothing; a deployer's cancel from the page works. A screenshot of
//! each page is written to `$SHOAL_ARTIFACTS/dashboard/` (default
//! `<target dir>/dashboard-screenshots/`).

#[path = "dashboard/webdriver.rs"]
mod webdriver;

use anyhow::Context as _;
use reqwest::StatusCode;
use shoal_e2e::serde_json::{Value, json};
use shoal_e2e::{Cluster, WAIT};
use shoal_planner::api::auth::{Access, DASHBOARD};
use shoal_shared::api::CreatedToken;
use std::path::PathBuf;
use std::time::Duration;
use webdriver::{Browser, ENTER, TAB};

/// Where the screenshots go.
fn screenshots() -> PathBuf {
    match std::env::var_os("SHOAL_ARTIFACTS") {
        Some(dir) => PathBuf::from(dir).join("dashboard"),
        None => PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .map_or_else(|| PathBuf::from("."), std::path::Path::to_path_buf)
            .join("dashboard-screenshots"),
    }
}

async fn token(c: &Cluster, name: &str, role: &str) -> anyhow::Result<String> {
    let t: CreatedToken = c
        .api
        .post_as("/api/tokens", &json!({"name": name, "role": role}))
        .await?;
    Ok(t.token)
}

/// Polls `check` every 100 ms until it answers, failing after `within` with `what`.
async fn until<T, F, Fut>(what: &str, within: Duration, check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    shoal_e2e::poll_every(what, within, Duration::from_millis(100), check).await
}

/// Logs in at the login page with `token`, typing it and pressing Enter (the field has the
/// focus when the page opens: no mouse needed).
async fn log_in(b: &Browser, base: &str, token: &str, then: &str) -> anyhow::Result<()> {
    b.goto(&format!("{base}{then}")).await?;
    let url = b.url().await?;
    assert!(url.contains("/login?next="), "not sent to the login: {url}");
    assert_eq!(b.focused().await?, "token", "the token field has the focus");
    b.type_keys(token).await?;
    b.type_keys(ENTER).await?;
    until("the page after the login", WAIT, || async {
        let url = b.url().await?;
        Ok((url.ends_with(then) && b.count("header.top").await? == 1).then_some(()))
    })
    .await
}

/// `GET /api/deployments` with nothing but the session cookie `cookie`.
async fn deployments_with(
    raw: &reqwest::Client,
    base: &str,
    cookie: &str,
) -> anyhow::Result<reqwest::Response> {
    Ok(raw
        .get(format!("{base}/api/deployments"))
        .header("cookie", format!("shoal_session={cookie}"))
        .send()
        .await?)
}

/// Logs out with the header's button.
async fn log_out(b: &Browser) -> anyhow::Result<()> {
    b.find("form.logout button").await?.click().await?;
    until("the login page", WAIT, || async {
        Ok(b.url().await?.contains("/login").then_some(()))
    })
    .await?;
    Ok(())
}

/// A POST from the page itself (its JavaScript context, its cookie), with the headers
/// given: the status the planner answers.
async fn post_from_page(b: &Browser, url: &str, headers: Value) -> anyhow::Result<u16> {
    let v = b
        .eval_async(
            "const done = arguments[arguments.length - 1];
             setTimeout(() => done('no answer within 10 s'), 10000);
             fetch(arguments[0], {method: 'POST', credentials: 'same-origin', headers: arguments[1]})
               .then(r => done(r.status), e => done(String(e)));",
            vec![json!(url), headers],
        )
        .await?;
    v.as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .with_context(|| format!("the page's fetch failed: {v}"))
}

/// The states of the grid's cells now: (task id, state).
async fn cells(b: &Browser) -> anyhow::Result<Vec<(String, String)>> {
    let v = b
        .eval(
            "return Array.from(document.querySelectorAll('#grid td.cell[data-task]'))
               .map(td => [td.dataset.task, td.dataset.state]);",
            vec![],
        )
        .await?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p[0].as_str().unwrap_or_default().to_owned(),
                p[1].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

/// The deployment's state per the API.
async fn state(c: &Cluster, id: &str) -> anyhow::Result<String> {
    let d = c.api.get(&format!("/api/deployments/{id}")).await?;
    Ok(d["state"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_a_deployment_live_and_refuses_what_a_role_may_not_do()
-> anyhow::Result<()> {
    // Before anything starts: a missing browser is a failure that says what to install.
    webdriver::binaries()?;
    let shots = screenshots();
    std::fs::create_dir_all(&shots)?;

    let mut c = Cluster::start(&["--no-builtin-worker"]).await?;
    c.pool("eu-west", "eu").await?;
    c.pool("us-east", "us").await?;
    c.worker(
        "w-eu-1",
        "eu-west",
        "eu",
        &["--slots", "4", "--heartbeat-secs", "1"],
    )?;
    c.worker(
        "w-us-1",
        "us-east",
        "us",
        &["--slots", "2", "--heartbeat-secs", "1"],
    )?;
    c.wait_online(&["w-eu-1", "w-us-1"]).await?;
    c.target("web-1", "prod", &["web"], Some("eu-west")).await?;
    c.target("web-2", "prod", &["web"], Some("eu-west")).await?;
    c.target("api-1", "prod", &["api"], Some("us-east")).await?;
    let admin = c.admin_token()?;
    let viewer = token(&c, "wall-screen", "viewer").await?;
    let deployer = token(&c, "release", "deployer").await?;
    let base = c.api.base().to_owned();
    let b = Browser::start(1440, 1100).await?;

    // ---- the login: anonymous pages go there; a token logs in; the cookie is locked down.
    b.goto(&format!("{base}/login")).await?;
    b.screenshot(&shots.join("login.png")).await?;
    log_in(&b, &base, &admin, "/").await?;
    let cookie = b.cookie_details("shoal_session").await?;
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Strict", "{cookie}");
    assert!(
        !cookie["value"]
            .as_str()
            .unwrap_or_default()
            .contains(&admin),
        "the cookie is not the token"
    );

    // The keyboard: the first Tab reaches "Skip to content", and Enter moves the focus to
    // the page's main part.
    b.type_keys(TAB).await?;
    assert_eq!(b.focused().await?, "Skip to content");
    b.type_keys(ENTER).await?;
    assert_eq!(b.focused().await?, "main");

    // ---- a deployment started through the API appears in the list without a reload.
    b.eval("window.shoalNotReloaded = 'list';", vec![]).await?;
    let id = c
        .deploy(&json!({
        "project": "shop", "environment": "prod",
        "steps": [
            {"name": "prepare", "roles": ["web"],
             "action": {"type": "script", "script": "echo preparing; sleep 3"}},
            {"name": "deploy", "roles": ["web"],
             "action": {"type": "script", "script":
               "for i in 1 2 3 4 5 6; do echo line $i; echo \"warning $i\" >&2; sleep 1; done"}},
            {"name": "smoke", "roles": ["api"],
             "action": {"type": "script", "script": "echo smoke ok"}}
        ]}))
        .await?;
    let row = format!("tr[data-deployment=\"{id}\"]");
    until("the new deployment in the list", WAIT, || async {
        Ok((b.count(&row).await? == 1).then_some(()))
    })
    .await?;
    assert_eq!(
        b.eval("return window.shoalNotReloaded;", vec![]).await?,
        "list"
    );

    // ---- its page, following the deploy step's task on web-1 from before it starts.
    let d = c.api.get(&format!("/api/deployments/{id}")).await?;
    let task = d["steps"][1]["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["target"] == "web-1")
        .and_then(|t| t["id"].as_str())
        .context("no deploy task on web-1")?
        .to_owned();
    b.find(&format!("{row} a.row-link")).await?.click().await?;
    until("the deployment's page", WAIT, || async {
        Ok(b.url()
            .await?
            .ends_with(&format!("/deployments/{id}"))
            .then_some(()))
    })
    .await?;
    b.find(&format!("#cell-{task}")).await?.click().await?;
    until("the task's output panel", WAIT, || async {
        Ok((b.count("#log").await? == 1).then_some(()))
    })
    .await?;
    b.eval("window.shoalNotReloaded = 'deployment';", vec![])
        .await?;
    // The states the followed task's cell showed, in order.
    let seen = std::sync::Mutex::new(Vec::<String>::new());
    let note = |all: &[(String, String)]| {
        if let Ok(mut seen) = seen.lock() {
            for (t, s) in all {
                if *t == task && seen.last() != Some(s) {
                    seen.push(s.clone());
                }
            }
        }
    };
    // The output arrives while the script still prints: line 2 on the page, the task not
    // finished per the API at that moment.
    let printed = until("line 2 of the output on the page", Duration::from_secs(90), || {
        let (b, note) = (&b, &note);
        async move {
            note(&cells(b).await?);
            let text = b
                .eval(
                    "return Array.from(document.querySelectorAll('#log li.line .text')).map(e => e.textContent);",
                    vec![],
                )
                .await?;
            let lines: Vec<String> = text
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l.as_str().map(str::to_owned))
                .collect();
            Ok(lines.iter().any(|l| l == "line 2").then_some(lines))
        }
    })
    .await?;
    let now = c.api.get(&format!("/api/tasks/{task}")).await?;
    assert_eq!(now["state"], "running", "the task is still running: {now}");
    assert!(!printed.iter().any(|l| l == "line 6"), "{printed:?}");
    assert!(
        b.count("#log li.line.err").await? >= 1,
        "stderr lines are marked"
    );
    let err = b.find("#log li.line.err .stream").await?.text().await?;
    assert_eq!(err, "err");
    b.eval("window.scrollTo(0, 0);", vec![]).await?;
    b.screenshot(&shots.join("deployment-running.png")).await?;

    // Every cell ends succeeded, live; the page was never reloaded.
    until("every cell succeeded", Duration::from_secs(90), || {
        let (b, note) = (&b, &note);
        async move {
            let all = cells(b).await?;
            note(&all);
            Ok((all.len() == 5 && all.iter().all(|(_, s)| s == "succeeded")).then_some(()))
        }
    })
    .await?;
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(
        b.eval("return window.shoalNotReloaded;", vec![]).await?,
        "deployment",
        "the page was not reloaded"
    );
    assert!(
        seen.iter().any(|s| s == "running") && seen.last().is_some_and(|s| s == "succeeded"),
        "the cell went through running to succeeded: {seen:?}"
    );
    let lines = b
        .eval(
            "return Array.from(document.querySelectorAll('#log li.line .text')).map(e => e.textContent);",
            vec![],
        )
        .await?;
    let shown: Vec<&str> = lines
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let api_lines = c.output(&id, &json!({"id": task})).await?;
    assert_eq!(shown, api_lines, "each line once, in order");
    assert_eq!(state(&c, &id).await?, "succeeded");
    until("the deployment's badge", WAIT, || async {
        let t = b.find("#deployment-head h1 .badge").await?.text().await?;
        Ok((t == "succeeded").then_some(()))
    })
    .await?;
    b.screenshot(&shots.join("deployment.png")).await?;
    // The same grid on a wall screen.
    b.set_size(1920, 1080).await?;
    b.goto(&format!("{base}/deployments/{id}")).await?;
    b.screenshot(&shots.join("deployment-wall-screen.png"))
        .await?;
    b.set_size(1440, 1100).await?;
    b.goto(&format!("{base}/")).await?;
    b.screenshot(&shots.join("deployments.png")).await?;

    // ---- pools and workers: an admin drains a worker from the page and resumes it.
    b.goto(&format!("{base}/workers")).await?;
    b.find("#drain-w-us-1").await?.click().await?;
    b.accept_alert().await?;
    c.wait_status(&["w-us-1"], "draining").await?;
    until("the worker draining on the page", WAIT, || async {
        Ok((b
            .count("tr[data-worker=\"w-us-1\"][data-status=\"draining\"]")
            .await?
            == 1)
            .then_some(()))
    })
    .await?;
    b.screenshot(&shots.join("workers.png")).await?;
    b.find("#resume-w-us-1").await?.click().await?;
    c.wait_online(&["w-us-1"]).await?;

    // ---- targets: health now and its history.
    c.api
        .post("/api/targets/web-1/health-check", &json!({}))
        .await?;
    until("a check of web-1 recorded", WAIT, || async {
        let h = c.api.get("/api/targets/web-1/health").await?;
        Ok((!h["history"].as_array().is_none_or(Vec::is_empty)).then_some(()))
    })
    .await?;
    b.goto(&format!("{base}/targets")).await?;
    until("web-1's health on the page", WAIT, || async {
        let t = b.find("tr[data-target=\"web-1\"]").await?;
        Ok((!t.text().await?.contains("unknown")).then_some(()))
    })
    .await?;
    b.screenshot(&shots.join("targets.png")).await?;
    b.goto(&format!("{base}/targets/web-1")).await?;
    let history = b.find("table.history tbody").await?.text().await?;
    assert!(
        history.contains("w-eu-1") && history.contains("eu-west"),
        "{history}"
    );
    b.screenshot(&shots.join("target.png")).await?;

    // ---- the audit trail, verified.
    b.goto(&format!("{base}/deployments/{id}/audit")).await?;
    let verdict = b.find("#verdict").await?;
    assert!(
        verdict.text().await?.contains("Chain verified"),
        "{}",
        verdict.text().await?
    );
    assert!(b.count("table.audit tbody tr").await? > 10);
    b.screenshot(&shots.join("audit.png")).await?;

    // ---- a long output: the page shows its last 2,000 lines, read from the run's tail.
    let chatty = c
        .deploy(&json!({
            "project": "chatty", "environment": "prod",
            "steps": [{"name": "count", "roles": ["api"],
                       "action": {"type": "script", "script": "seq 1 2500"}}]}))
        .await?;
    let done = c.finished(&chatty, WAIT).await?;
    assert_eq!(done["state"], "succeeded", "{done}");
    let counted = done["steps"][0]["tasks"][0]["id"]
        .as_str()
        .context("no task")?
        .to_owned();
    b.goto(&format!("{base}/deployments/{chatty}?task={counted}"))
        .await?;
    let ends = b
        .eval(
            "const l = Array.from(document.querySelectorAll('#log li.line .text'));
             return [l.length, l[0].textContent, l[l.length - 1].textContent];",
            vec![],
        )
        .await?;
    assert_eq!(ends, json!([2000, "501", "2500"]));
    assert!(
        b.find(".output .note")
            .await?
            .text()
            .await?
            .contains("left out")
    );

    // ---- refusals. A long deployment to try to cancel.
    let long = c
        .deploy(&json!({
            "project": "shop", "environment": "prod",
            "steps": [{"name": "soak", "roles": ["api"],
                       "action": {"type": "script", "script": "echo soaking; sleep 300"}}]}))
        .await?;
    let cancel = format!("/api/deployments/{long}/cancel");
    b.goto(&format!("{base}/deployments/{long}")).await?;
    assert_eq!(
        b.count("#cancel").await?,
        1,
        "an admin sees the cancel button"
    );
    // The cookie sent from outside the browser: without the token, and with the right token
    // but from another origin (a page on another port of this host is the same site).
    let admin_cookie = b.cookie("shoal_session").await?;
    let csrf = b
        .eval(
            "return document.querySelector('meta[name=csrf-token]').content;",
            vec![],
        )
        .await?;
    let csrf = csrf
        .as_str()
        .context("no CSRF token in the page")?
        .to_owned();
    let raw = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let forged = raw
        .post(format!("{base}{cancel}"))
        .header("cookie", format!("shoal_session={admin_cookie}"))
        .send()
        .await?;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let forged = raw
        .post(format!("{base}{cancel}"))
        .header("cookie", format!("shoal_session={admin_cookie}"))
        .header("x-csrf-token", &csrf)
        .header("origin", "http://127.0.0.1:1")
        .send()
        .await?;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    // The admin's own session without its CSRF token, or with a wrong one: refused.
    assert_eq!(post_from_page(&b, &cancel, json!({})).await?, 403);
    let wrong = json!({"X-CSRF-Token": "0".repeat(64)});
    assert_eq!(post_from_page(&b, &cancel, wrong).await?, 403);
    // A page of another site cannot log anyone in either.
    let forged = raw
        .post(format!("{base}/login"))
        .header("origin", "http://127.0.0.1:1")
        .form(&[("token", admin.as_str()), ("next", "/")])
        .send()
        .await?;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert!(forged.headers().get("set-cookie").is_none());

    // A viewer: no cancel button, no drain button, and a cancel sent anyway is refused.
    log_out(&b).await?;
    log_in(&b, &base, &viewer, &format!("/deployments/{long}")).await?;
    assert_eq!(
        b.count("#cancel").await?,
        0,
        "a viewer sees no cancel button"
    );
    let viewer_csrf = b
        .eval(
            "return document.querySelector('meta[name=csrf-token]').content;",
            vec![],
        )
        .await?;
    let with_token = json!({"X-CSRF-Token": viewer_csrf});
    assert_eq!(post_from_page(&b, &cancel, with_token).await?, 403);
    assert_eq!(post_from_page(&b, &cancel, json!({})).await?, 403);
    let viewer_cookie = b.cookie("shoal_session").await?;
    let forged = raw
        .post(format!("{base}{cancel}"))
        .header("cookie", format!("shoal_session={viewer_cookie}"))
        .header("x-csrf-token", viewer_csrf.as_str().unwrap_or_default())
        .send()
        .await?;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert!(forged.text().await?.contains("needs role deployer"));
    b.screenshot(&shots.join("deployment-as-viewer.png"))
        .await?;
    b.goto(&format!("{base}/workers")).await?;
    assert_eq!(
        b.count("button[data-url]").await?,
        0,
        "a viewer drains nothing"
    );
    let still = state(&c, &long).await?;
    assert!(
        matches!(still.as_str(), "queued" | "running"),
        "nothing forged cancelled it: {still}"
    );
    let requested = c
        .events(Some(&format!("deployment/{long}")))
        .await?
        .into_iter()
        .filter(|e| e["type"] == "DeploymentCancelRequested")
        .count();
    assert_eq!(requested, 0, "no cancellation in the log");

    // The logout ended the session in the log: a copy of its cookie opens nothing, and the
    // token's stream says who logged in and out.
    log_out(&b).await?;
    let copied = deployments_with(&raw, &base, &viewer_cookie).await?;
    assert_eq!(copied.status(), StatusCode::UNAUTHORIZED);
    assert!(copied.text().await?.contains("logged out"));
    let sessions: Vec<(Value, Value)> = c
        .events(Some("token/wall-screen"))
        .await?
        .into_iter()
        .filter(|e| e["type"].as_str().is_some_and(|t| t.starts_with("Session")))
        .map(|e| (e["type"].clone(), e["actor"].clone()))
        .collect();
    assert_eq!(
        sessions,
        [
            (json!("SessionStarted"), json!("token:wall-screen")),
            (json!("SessionEnded"), json!("token:wall-screen"))
        ]
    );

    // A deployer cancels from the page: the page shows it live.
    log_in(&b, &base, &deployer, &format!("/deployments/{long}")).await?;
    b.eval("window.shoalNotReloaded = 'cancel';", vec![])
        .await?;
    b.find("#cancel").await?.click().await?;
    b.accept_alert().await?;
    until(
        "the deployment cancelled on the page",
        Duration::from_secs(90),
        || async {
            let t = b.find("#deployment-head h1 .badge").await?.text().await?;
            Ok((t == "cancelled").then_some(()))
        },
    )
    .await?;
    assert_eq!(state(&c, &long).await?, "cancelled");
    assert_eq!(
        b.eval("return window.shoalNotReloaded;", vec![]).await?,
        "cancel"
    );
    let by = c
        .events(Some(&format!("deployment/{long}")))
        .await?
        .into_iter()
        .find(|e| e["type"] == "DeploymentCancelRequested")
        .map(|e| e["actor"].clone());
    assert_eq!(
        by,
        Some(json!("token:release")),
        "the page's cancel is the deployer's"
    );
    assert_eq!(
        b.count("#cancel").await?,
        0,
        "no cancel button once it ended"
    );

    // Every page of the guard's table wants a session or a token: a script gets the API's
    // 401, a browser asking for HTML is sent to the login and back; bearer tokens work as
    // before.
    for e in DASHBOARD.iter().filter(|e| e.access != Access::Public) {
        let path = e.path.replace("{id}", &long).replace("{name}", "web-1");
        let page = raw.get(format!("{base}{path}")).send().await?;
        assert_eq!(page.status(), StatusCode::UNAUTHORIZED, "{path}");
        let page = raw
            .get(format!("{base}{path}"))
            .header("accept", "text/html")
            .send()
            .await?;
        assert_eq!(page.status(), StatusCode::SEE_OTHER, "{path}");
        let to = page
            .headers()
            .get("location")
            .map(|l| l.as_bytes().to_vec());
        assert!(
            to.is_some_and(|l| l.starts_with(b"/login?next=/")),
            "{path}"
        );
    }
    let page = raw
        .get(format!("{base}/workers"))
        .bearer_auth(&viewer)
        .send()
        .await?;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await?.contains("w-eu-1"));

    // Revoking a token ends its open sessions at once.
    let deployer_cookie = b.cookie("shoal_session").await?;
    let open = deployments_with(&raw, &base, &deployer_cookie).await?;
    assert_eq!(open.status(), StatusCode::OK);
    c.api.delete("/api/tokens/release").await?;
    let after = deployments_with(&raw, &base, &deployer_cookie).await?;
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);

    b.quit().await;
    eprintln!("dashboard screenshots: {}", shots.display());
    Ok(())
}
