//! The OpenAPI document (`GET /api/openapi.json`) against a running planner, with a
//! property-based API tester: schemathesis (Python, from PyPI, the version `.ci/run`
//! installs) reads the document, sends every operation requests it generates from the
//! schemas, valid ones and invalid ones, and checks every answer: no 5xx, a status code the
//! document lists for the operation, the content type it lists, and a body that matches its
//! schema. The planner holds one of each thing the document's examples name (pool `eu-west`,
//! target `shop-eu`, package `web` 1.2.3, token `ci`, …), so answers with bodies get checked
//! as well as refusals.

use shoal_e2e::serde_json::json;
use shoal_e2e::{Cluster, WAIT};
use shoal_shared::api::PushedPackage;
use std::process::Stdio;
use std::time::Duration;

/// The schemathesis `.ci/run` installs (its 4.x reads OpenAPI 3.1, which the document is).
const SCHEMATHESIS: &str = "4.32.5";

/// What schemathesis checks of every answer.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance";

/// Test cases per operation and phase: the whole run stays within about two minutes on two
/// cores.
const EXAMPLES: &str = "100";

/// Longest run before it is stopped and the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// The installed schemathesis's version, or a failure saying how to install it.
async fn schemathesis_version() -> anyhow::Result<String> {
    let out = tokio::process::Command::new("python3")
        .args(["-m", "schemathesis.cli", "--version"])
        .stdin(Stdio::null())
        .output()
        .await;
    let install = format!(
        "schemathesis is missing: install it with `python3 -m pip install schemathesis=={SCHEMATHESIS}` (.ci/run does)"
    );
    let out = out.map_err(|e| anyhow::anyhow!("{install} (python3: {e})"))?;
    anyhow::ensure!(
        out.status.success(),
        "{install}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// One of each thing the document's examples name, so that requests built from the
/// examples find them. No worker takes the deployments' tasks: nothing generated is run.
async fn furnish(c: &mut Cluster) -> anyhow::Result<()> {
    c.pool("eu-west", "eu").await?;
    c.pool("lab", "lab").await?;
    c.target("shop-eu", "production", &["web"], Some("eu-west"))
        .await?;
    let step = json!({"name": "deploy", "roles": ["web"],
                      "action": {"type": "script", "script": "./deploy.sh"}});
    c.deploy(&json!({"project": "shop", "environment": "production", "steps": [step]}))
        .await?;
    c.api
        .post("/api/tokens", &json!({"name": "ci", "role": "deployer"}))
        .await?;
    // Deliveries go to a closed port of this machine.
    let hook = json!({"name": "ci", "url": "http://127.0.0.1:9/hook"});
    c.api.post("/api/webhooks", &hook).await?;
    let _: PushedPackage = c
        .api
        .put_stream_as(
            "/api/packages/web/1.2.3",
            "application/octet-stream",
            reqwest::Body::from(vec![7u8; 100_000]),
        )
        .await?;
    // A worker that joined and left: it is in the workers' list, and nothing the tester
    // makes up is ever run (it learns names from answers, and would resume a drained one).
    c.worker("lab-1", "lab", "lab", &["--heartbeat-secs", "1"])?;
    c.wait_online(&["lab-1"]).await?;
    c.worker_proc("lab-1").terminate(WAIT).await?;
    c.wait_status(&["lab-1"], "left").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_of_the_planner_matches_its_openapi_document() -> anyhow::Result<()> {
    let version = schemathesis_version().await?;
    if !version.ends_with(SCHEMATHESIS) {
        eprintln!("note: {version} is not the version .ci/run installs ({SCHEMATHESIS})");
    }
    let mut c = Cluster::start(&["--no-builtin-worker"]).await?;
    furnish(&mut c).await?;
    let schema = format!("{}/api/openapi.json", c.api.base());
    let auth = format!("Authorization: Bearer {}", c.admin_token()?);
    let run = tokio::process::Command::new("python3")
        .args(["-m", "schemathesis.cli", "run", &schema, "--header", &auth])
        .args(["--checks", CHECKS, "--max-examples", EXAMPLES])
        // One worker: hypothesis parses source in its threads, which Python 3.11's parser
        // is not safe for ("AST constructor recursion depth mismatch").
        .args(["--phases", "examples,coverage,fuzzing", "--workers", "1"])
        .args(["--request-timeout", "20", "--suppress-health-check", "all"])
        // An event stream has no end: its answer never completes. (Its 400s and its
        // headers are the pages' and the guard's, which the other operations check.)
        .args(["--exclude-operation-id", "follow_events"])
        // A webhook made up by the tester would have the planner POST records to whatever
        // URL it made up: traffic that may leave this machine. `furnish` made one.
        .args(["--exclude-operation-id", "create_webhook"])
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .current_dir(c.dir.path())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(RUN_LIMIT, run)
        .await
        .map_err(|_| anyhow::anyhow!("schemathesis still ran after {RUN_LIMIT:?}"))??;
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        let planner = c.planner.as_ref().map(|p| p.output()).unwrap_or_default();
        let tail: Vec<&str> = planner.lines().rev().take(80).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "schemathesis found answers that do not match the document ({}):\n{report}\n\
             ----- planner log (last lines) -----\n{}",
            out.status,
            tail.join("\n")
        );
    }
    println!("{report}");
    // The planner is still whole after all that.
    tokio::time::timeout(WAIT, c.api.get("/api/status")).await??;
    Ok(())
}
