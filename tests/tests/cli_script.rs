//! The `shoal` command as a script uses it, against a real planner: `--output json` read into
//! the API's own types, id prefixes, and exit codes that tell outcomes apart.

use anyhow::Context as _;
use serde::de::DeserializeOwned;
use serde_json::json;
use shoal_cli::{exit, ids, local};
use shoal_e2e::Cluster;
use shoal_shared::api::{
    DeploymentDetail, DeploymentSummary, EventView, HealthHistory, PoolView, TargetView, TaskLog,
    WorkerView,
};
use std::process::{Command, Stdio};
use std::time::Duration;

/// `shoal --api … args`: (exit code, stdout, stderr).
fn shoal(c: &Cluster, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    c.shoal(args)
}

/// `shoal --output json args`, its whole stdout read as a `T`.
fn json<T: DeserializeOwned>(c: &Cluster, args: &[&str]) -> anyhow::Result<T> {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    let (code, out, err) = shoal(c, &all)?;
    anyhow::ensure!(code == exit::OK, "shoal {all:?} exited {code}: {err}");
    serde_json::from_str(&out).with_context(|| format!("shoal {all:?} printed:\n{out}"))
}

fn deployment(steps: serde_json::Value) -> serde_json::Value {
    json!({"project": "shop", "environment": "prod", "steps": steps})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_reads_into_the_api_types_and_prefixes_name_ids() -> anyhow::Result<()> {
    let mut c = Cluster::start(&[]).await?;
    c.pool("eu-west", "eu").await?;
    c.worker("eu-1", "eu-west", "eu", &[])?;
    c.wait_online(&["eu-1"]).await?;
    c.target("web-eu", "prod", &["web"], Some("eu-west"))
        .await?;
    c.target("web-us", "prod", &["web"], Some("eu-west"))
        .await?;

    let pools: Vec<PoolView> = json(&c, &["pool", "list"])?;
    assert!(
        pools.iter().any(|p| p.name.as_str() == "eu-west"),
        "{pools:?}"
    );
    let targets: Vec<TargetView> = json(&c, &["target", "list"])?;
    assert_eq!(targets.len(), 2, "{targets:?}");
    let t: TargetView = json(&c, &["target", "show", "web-eu"])?;
    assert_eq!(t.target.name.as_str(), "web-eu");
    let h: HealthHistory = json(&c, &["target", "health", "web-eu"])?;
    assert_eq!(h.target.as_str(), "web-eu");
    let workers: Vec<WorkerView> = json(&c, &["workers"])?;
    assert!(
        workers.iter().any(|w| w.name.as_str() == "eu-1"),
        "{workers:?}"
    );
    // Writes print JSON too: the target as changed, and what was removed.
    c.target("gone", "prod", &["db"], None).await?;
    let t: TargetView = json(&c, &["target", "set-check", "gone", "--none"])?;
    assert!(t.probe.is_none(), "{t:?}");
    let removed: serde_json::Value = json(&c, &["target", "rm", "gone"])?;
    assert_eq!(removed, json!({"removed": "gone"}));
    c.pool("spare", "eu").await?;
    let removed: serde_json::Value = json(&c, &["pool", "rm", "spare"])?;
    assert_eq!(removed, json!({"removed": "spare"}));

    // Two deployments made within a minute: their first 8 characters are the same.
    let step = json!([{"name": "deploy", "roles": ["web"],
        "action": {"type": "script", "script": "echo deployed $SHOAL_TARGET"}}]);
    let first = c.deploy(&deployment(step.clone())).await?;
    let second = c.deploy(&deployment(step)).await?;
    for id in [&first, &second] {
        c.finished(id, Duration::from_secs(60)).await?;
    }
    let list: Vec<DeploymentSummary> = json(&c, &["deployment", "list"])?;
    assert_eq!(list.len(), 2, "{list:?}");

    let both = ids::short_len(&[&first, &second]);
    let short = ids::shorten(&second, both);
    let d: DeploymentDetail = json(&c, &["deployment", "show", short])?;
    assert_eq!(d.id.to_string(), second);
    if first[..8] == second[..8] {
        let (code, out, err) = shoal(&c, &["deployment", "show", &first[..8]])?;
        assert_eq!(code, exit::REFUSED, "{out}{err}");
        assert!(
            out.is_empty() && err.contains(&first) && err.contains(&second),
            "an ambiguous prefix lists the ids it starts: {err}"
        );
    }
    let (code, _, err) = shoal(&c, &["deployment", "show", "ffffffff"])?;
    assert_eq!(code, exit::REFUSED, "{err}");
    assert!(err.contains("has no deployment ffffffff"), "{err}");

    // The task short ids `deployment show` prints are what `logs` takes back.
    let task_ids: Vec<String> = d
        .steps
        .iter()
        .flat_map(|s| s.tasks.iter().map(|t| t.id.to_string()))
        .collect();
    assert_eq!(task_ids.len(), 2);
    let len = ids::short_len(&task_ids);
    let (code, text, err) = shoal(&c, &["deployment", "show", short])?;
    assert_eq!(code, exit::OK, "{err}");
    for t in &task_ids {
        assert!(text.contains(ids::shorten(t, len)), "{text}");
    }
    let logs: Vec<TaskLog> = json(&c, &["logs", short, ids::shorten(&task_ids[0], len)])?;
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].task.to_string(), task_ids[0]);
    assert!(
        logs[0]
            .lines
            .iter()
            .any(|l| l.line.starts_with("deployed web-")),
        "{logs:?}"
    );
    let all: Vec<TaskLog> = json(&c, &["logs", short])?;
    assert_eq!(all.len(), 2);

    let events: Vec<EventView> = json(&c, &["events", "--deployment", short])?;
    let stream = format!("deployment/{second}");
    assert!(
        !events.is_empty() && events.iter().all(|e| e.stream == stream),
        "{events:?}"
    );
    let same: Vec<EventView> = json(&c, &["events", "--stream", &format!("deployment/{short}")])?;
    assert_eq!(same, events);
    let pool_events: Vec<EventView> = json(&c, &["events", "--stream", "pool/eu-west"])?;
    assert!(
        pool_events.iter().all(|e| e.stream == "pool/eu-west"),
        "{pool_events:?}"
    );

    let (code, out, err) = shoal(&c, &["events", "--stream", "bogus"])?;
    assert_eq!(code, exit::USAGE, "{err}");
    assert!(
        out.is_empty() && err.contains("deployment/ID"),
        "{out}{err}"
    );

    // A malformed --var is a usage error; one naming no step of the file is refused.
    let file = c.write_file(
        "one-step.json",
        r#"{"project": "shop", "environment": "prod",
            "steps": [{"name": "greet", "action": {"type": "noop"}}]}"#,
    )?;
    let file = file.display().to_string();
    let (code, _, err) = shoal(&c, &["deploy", &file, "--var", "X"])?;
    assert_eq!(code, exit::USAGE, "{err}");
    assert!(err.contains("expected KEY=VALUE"), "{err}");
    let (code, _, err) = shoal(&c, &["deploy", &file, "--var", "nope.X=1"])?;
    assert_eq!(code, exit::REFUSED, "{err}");
    assert!(err.contains("no step \"nope\" (steps: greet)"), "{err}");

    // Refused by the planner (HTTP 404).
    let (code, out, err) = shoal(&c, &["--output", "json", "target", "show", "nowhere"])?;
    assert_eq!(code, exit::REFUSED, "{out}{err}");
    assert!(out.is_empty(), "nothing but the document on stdout: {out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_wait_exits_with_how_the_deployment_ended() -> anyhow::Result<()> {
    let mut c = Cluster::start(&[]).await?;
    c.pool("eu-west", "eu").await?;
    c.worker("eu-1", "eu-west", "eu", &[])?;
    c.wait_online(&["eu-1"]).await?;
    // Deployments name an environment; a target brings "prod" into being.
    c.target("web-eu", "prod", &["web"], Some("eu-west"))
        .await?;

    let file = |name: &str, script: &str| {
        c.write_file(
            name,
            &format!(
                "project = \"shop\"\nenvironment = \"prod\"\n[[steps]]\nname = \"s\"\npool = \"eu-west\"\n\
                 action = {{ type = \"script\", script = \"{script}\" }}\n"
            ),
        )
    };
    let ok = file("ok.toml", "echo fine")?;
    let bad = file("bad.toml", "exit 3")?;
    let slow = file("slow.toml", "sleep 60")?;
    let path = |p: &std::path::Path| p.display().to_string();

    let (code, out, err) = shoal(&c, &["deploy", &path(&ok), "--wait"])?;
    assert_eq!(code, exit::OK, "{out}{err}");
    let (code, out, err) = shoal(&c, &["deploy", &path(&bad), "--wait"])?;
    assert_eq!(
        code,
        exit::FAILED,
        "a failed deployment exits {}:\n{out}{err}",
        exit::FAILED
    );

    // Cancelled by someone else while `deploy --wait` follows it.
    let mut waiting = Command::new(local::find_binary("shoal")?)
        .args(["--api", c.api.base(), "deploy", &path(&slow), "--wait"])
        .env("NO_COLOR", "1")
        .env("SHOAL_TOKEN_FILE", c.admin_token_file())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let id = c
        .wait_for("the slow deployment", Duration::from_secs(30), || async {
            let list: Vec<DeploymentSummary> = c.api.get_as("/api/deployments?limit=1").await?;
            Ok(list
                .into_iter()
                .find(|d| d.state == shoal_shared::DeploymentState::Running)
                .map(|d| d.id.to_string()))
        })
        .await?;
    let all: Vec<DeploymentSummary> = c.api.get_as("/api/deployments").await?;
    let all: Vec<String> = all.iter().map(|d| d.id.to_string()).collect();
    let short = ids::shorten(&id, ids::short_len(&all));
    let (code, _, err) = shoal(&c, &["cancel", short, "--wait"])?;
    assert_eq!(code, exit::OK, "{err}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = waiting.try_wait()? {
            break status;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "deploy --wait did not end"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.code(), Some(exit::CANCELLED));
    Ok(())
}
