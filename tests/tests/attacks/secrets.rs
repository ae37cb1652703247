//! Attacks on sensitive variables: a value marked sensitive must be nowhere in clear — not
//! in the planner's data dir, the broker's store, the processes' logs, any API answer, the
//! events, the CLI's output or the task's output — while the script really gets it; only
//! the workers of the task's pool can open it; and a planner never runs on with a missing or
//! wrong master key over sealed values.

use anyhow::Context as _;
use shoal_cli::local;
use shoal_e2e::serde_json::{Value, json};
use shoal_e2e::{Cluster, WAIT};
use std::time::Duration;

/// A long random value that occurs nowhere by chance.
fn marker() -> String {
    let a: u128 = rand::random();
    let b: u128 = rand::random();
    format!("SECRETMARKER{a:032x}{b:032x}")
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Prints the value three ways, on stdout and stderr, and its SHA-256 (which proves the
/// script had it).
const SCRIPT: &str = "echo \"value: $SECRET\"; echo \"twice $SECRET/$SECRET\" >&2; \
                      printf %s \"$SECRET\" | sha256sum | cut -d' ' -f1";

fn secret_step(pool: &str, value: &str) -> Value {
    json!({"name": "uses-secret", "pool": pool, "action": {"type": "script", "script": SCRIPT},
           "sensitive_variables": {"SECRET": value}})
}

/// Runs a CLI command against the cluster with extra environment: (success, output).
fn cli_with_env(c: &Cluster, env: &[(&str, &str)], args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(local::find_binary("shoal")?)
        .arg("--api")
        .arg(c.api.base())
        .args(args)
        .envs(env.iter().copied())
        .env("SHOAL_TOKEN_FILE", c.admin_token_file())
        .env("NO_COLOR", "1")
        .output()?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    anyhow::ensure!(out.status.success(), "shoal {args:?} failed:\n{text}");
    Ok(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensitive_value_appears_nowhere_in_clear_on_disk_in_answers_events_cli_or_output()
-> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(240), nowhere_in_clear()).await?
}

async fn nowhere_in_clear() -> anyhow::Result<()> {
    let mut c = Cluster::start(&[]).await?;
    let key = c.pool_with_key("eu-west", "eu").await?;
    let key = key.display().to_string();
    c.worker("eu-west-1", "eu-west", "eu", &["--pool-key", &key])?;
    c.wait_online(&["eu-west-1"]).await?;
    // Environments come from targets.
    c.target("t1", "prod", &["web"], None).await?;
    let value = marker();

    // Through the API.
    let id = c
        .deploy(&json!({"project": "p", "environment": "prod", "steps": [secret_step("eu-west", &value)]}))
        .await?;
    let d = c.finished(&id, WAIT).await?;
    assert_eq!(d["state"], "succeeded", "{d:#}");
    let task = c.task(&id, "uses-secret").await?;
    assert_eq!(task["worker"], "eu-west-1", "ran on the eu-west worker");
    let lines = c.output(&id, &task).await?;
    assert!(
        lines.iter().any(|l| l == &sha256_hex(&value)),
        "the script received the value: {lines:?}"
    );
    assert!(lines.iter().any(|l| l == "value: ********"), "{lines:?}");
    assert!(
        lines.iter().any(|l| l == "twice ********/********"),
        "{lines:?}"
    );

    // Through the CLI, the value taken from the CLI's environment.
    let file = c.write_file(
        "secret-deploy.json",
        &json!({"project": "p", "environment": "prod", "steps": [
            {"name": "uses-secret", "pool": "eu-west", "action": {"type": "script", "script": SCRIPT}}]})
        .to_string(),
    )?;
    let file = file.display().to_string();
    let mut cli_out = cli_with_env(
        &c,
        &[("SECRET", &value)],
        &["deploy", &file, "--sensitive-var", "SECRET", "--wait"],
    )?;
    let id2 = cli_out
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    for args in [
        vec!["deployment", "show", &id],
        vec!["logs", &id],
        vec!["logs", &id2],
        vec!["events", "--deployment", &id, "--limit", "10000"],
        vec!["-o", "json", "events", "--limit", "10000"],
        vec!["-o", "json", "deployment", "show", &id],
        vec!["pool", "list"],
    ] {
        cli_out.push_str(&cli_with_env(&c, &[], &args)?);
    }
    assert!(cli_out.contains("value: ********"), "{cli_out}");
    assert!(!cli_out.contains(&value), "CLI output shows the value");

    // Every API answer.
    let mut answers = String::new();
    for path in [
        format!("/api/deployments/{id}"),
        format!("/api/deployments/{id2}"),
        "/api/deployments".to_owned(),
        "/api/pools".to_owned(),
        "/api/workers".to_owned(),
        format!(
            "/api/deployments/{id}/tasks/{}/log",
            task["id"].as_str().unwrap_or_default()
        ),
    ] {
        answers.push_str(&c.api.get(&path).await?.to_string());
    }
    let events = c.events(None).await?;
    let created: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "DeploymentCreated")
        .collect();
    assert_eq!(
        created[0]["data"]["spec"]["steps"][0]["sensitive_variables"]["SECRET"], "********",
        "the event shows the value masked"
    );
    answers.push_str(&Value::Array(events).to_string());
    assert!(!answers.contains(&value), "an API answer shows the value");

    // Replay verifies the chain over the sealed values.
    c.stop_planner().await?;
    let (ok, replay) = c.replay()?;
    assert!(ok, "{replay}");

    // On disk, once everything is stopped and flushed.
    for w in &mut c.workers {
        w.terminate(Duration::from_secs(30)).await?;
    }
    c.nats.stop().await?;
    // The grep sees what is stored in clear: the task's output, with the value's digest.
    let digest = sha256_hex(&value);
    assert!(!local::files_containing(&c.data_dir(), digest.as_bytes())?.is_empty());
    let store = c.dir.path().join("nats-store");
    assert!(
        !local::files_containing(&store, b"SHOAL_TASKS")?.is_empty(),
        "the broker's store is where the test looks"
    );
    for dir in [
        c.data_dir(),
        c.dir.path().join("nats-store"),
        c.dir.path().join("logs"),
        c.dir.path().join("work"),
    ] {
        let found = local::files_containing(&dir, value.as_bytes())?;
        assert!(found.is_empty(), "the value is in clear in {found:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_holding_another_pools_key_refuses_the_task_and_never_runs_it()
-> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(120), other_pools_key()).await?
}

async fn other_pools_key() -> anyhow::Result<()> {
    let mut c = Cluster::start(&[]).await?;
    c.target("t1", "prod", &["web"], None).await?;
    let eu_key = c.pool_with_key("eu-west", "eu").await?;
    // us-east's key is registered through the CLI.
    c.pool("us-east", "us").await?;
    let (_, us_pub) = local::make_pool_key(&c.dir.path().join("us-keys"), "us-east")?;
    let xpub = c.dir.path().join("us-keys").join("us-east.xpub");
    let (ok, said) = c.cli(&["pool", "set-key", "us-east", &xpub.display().to_string()])?;
    assert!(ok && said.contains(&us_pub), "{said}");
    // A worker of us-east that holds only eu-west's key (or stole eu-west's key).
    let eu_key = eu_key.display().to_string();
    c.worker("us-east-1", "us-east", "us", &["--pool-key", &eu_key])?;
    c.wait_online(&["us-east-1"]).await?;
    let ran = c.dir.path().join("ran");
    let script = format!("touch {}; echo \"$SECRET\"", ran.display());
    let value = marker();
    let id = c
        .deploy(&json!({"project": "p", "environment": "prod", "steps": [
            {"name": "uses-secret", "pool": "us-east", "action": {"type": "script", "script": script},
             "sensitive_variables": {"SECRET": value}}]}))
        .await?;
    let d = c.finished(&id, WAIT).await?;
    assert_eq!(d["state"], "failed", "{d:#}");
    let task = c.task(&id, "uses-secret").await?;
    let reason = task["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("refused") && reason.contains("does not hold"),
        "{reason}"
    );
    assert!(!ran.exists(), "the script ran");
    assert!(c.output(&id, &task).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_with_sensitive_values_to_a_pool_without_a_key_is_refused_naming_the_fix()
-> anyhow::Result<()> {
    let c = tokio::time::timeout(WAIT, Cluster::start(&[])).await??;
    c.target("t1", "prod", &["web"], None).await?;
    c.pool("keyless", "eu").await?;
    let refused = c
        .api
        .post(
            "/api/deployments",
            &json!({"project": "p", "environment": "prod", "steps": [secret_step("keyless", &marker())]}),
        )
        .await;
    shoal_e2e::assert_api_error(
        refused,
        400,
        &[
            "pool \"keyless\" has no key",
            "shoal-planner pool-keygen --pool keyless",
        ],
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planner_without_its_master_key_or_with_another_refuses_to_start_over_sealed_values()
-> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(180), master_key_guarded()).await?
}

async fn master_key_guarded() -> anyhow::Result<()> {
    let mut c = Cluster::start(&[]).await?;
    c.target("t1", "prod", &["web"], None).await?;
    let id = c
        .deploy(&json!({"project": "p", "environment": "prod", "steps": [secret_step("default", &marker())]}))
        .await?;
    assert_eq!(c.finished(&id, WAIT).await?["state"], "succeeded");
    c.stop_planner().await?;

    // The key moved away: the planner must not make a new one over the sealed values.
    let key = c.data_dir().join("keys").join("master.key");
    let kept = c.dir.path().join("backup-master.key");
    std::fs::rename(&key, &kept)?;
    let logs = c.dir.path().join("logs");
    let refused = local::start_planner(&logs, &c.nats.url(), &c.data_dir(), c.http_port, &[]).await;
    let err = format!(
        "{:#}",
        refused.err().context("started without its master key")?
    );
    assert!(err.contains("no master key at"), "{err}");
    assert!(!key.exists(), "a new master key was made");

    // Another key.
    let other = c.dir.path().join("other.key");
    std::fs::write(&other, format!("{}\n", "ab".repeat(32)))?;
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let other = other.display().to_string();
    let refused = local::start_planner(
        &logs,
        &c.nats.url(),
        &c.data_dir(),
        c.http_port,
        &["--master-key", &other],
    )
    .await;
    let err = format!(
        "{:#}",
        refused.err().context("started with another master key")?
    );
    assert!(err.contains("is not the one"), "{err}");

    // The backup, kept elsewhere: it starts and runs secrets again.
    let kept = kept.display().to_string();
    let p = local::start_planner(
        &logs,
        &c.nats.url(),
        &c.data_dir(),
        c.http_port,
        &["--master-key", &kept, "--health-interval-secs", "0"],
    )
    .await?;
    c.planner = Some(p);
    let id = c
        .deploy(&json!({"project": "p", "environment": "prod", "steps": [secret_step("default", &marker())]}))
        .await?;
    assert_eq!(c.finished(&id, WAIT).await?["state"], "succeeded");
    Ok(())
}
