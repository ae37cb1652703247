//! Changing a target's probe and removing targets and pools with the `shoal` command, as a
//! user whose example target does not resolve would: against real processes, with scheduled
//! checks on.

use shoal_e2e::serde_json::Value;
use shoal_e2e::{Cluster, WAIT};
use std::time::Duration;

/// The deployment of the README's shape: one step on the `web` targets.
const DEPLOY: &str = r#"
project = "shop"
environment = "prod"

[[steps]]
name = "deploy"
roles = ["web"]
action = { type = "script", script = "echo deployed $SHOAL_TARGET" }
"#;

/// One step that runs until it is cancelled.
const SLOW: &str = r#"
project = "shop"
environment = "prod"

[[steps]]
name = "slow"
roles = ["web"]
action = { type = "script", script = "sleep 60" }
"#;

fn cli_ok(c: &Cluster, args: &[&str]) -> anyhow::Result<String> {
    let (ok, out) = c.cli(args)?;
    anyhow::ensure!(ok, "shoal {} failed:\n{out}", args.join(" "));
    Ok(out)
}

fn cli_refused(c: &Cluster, args: &[&str]) -> anyhow::Result<String> {
    let (ok, out) = c.cli(args)?;
    anyhow::ensure!(!ok, "shoal {} succeeded:\n{out}", args.join(" "));
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_is_changed_or_switched_off_and_targets_and_pools_are_removed_once_unused()
-> anyhow::Result<()> {
    let mut c = Cluster::start(&["--health-interval-secs", "1"]).await?;
    cli_ok(&c, &["pool", "add", "eu-west", "--region", "eu"])?;
    c.worker("eu-1", "eu-west", "eu", &[])?;
    c.wait_online(&["eu-1"]).await?;
    cli_ok(
        &c,
        &[
            "target",
            "add",
            "shop-eu",
            "--kind",
            "azure-web-app",
            "--environment",
            "prod",
            "--role",
            "web",
            "--endpoint",
            "https://shop-eu.example.invalid",
            "--default-pool",
            "eu-west",
        ],
    )?;
    let deploy = c.write_file("deploy.toml", DEPLOY)?;
    let deploy = deploy.to_str().unwrap_or_default();

    // The endpoint does not resolve: its TCP probe makes the target unhealthy, and that
    // stops deployments.
    cli_refused(&c, &["target", "check", "shop-eu", "--wait"])?;
    let out = cli_refused(&c, &["deploy", deploy, "--wait"])?;
    assert!(out.contains("unhealthy"), "{out}");

    // A probe that is real on this machine: the planner's own /healthz.
    let healthz = format!("http://127.0.0.1:{}/healthz", c.http_port);
    let out = cli_ok(
        &c,
        &[
            "target",
            "set-check",
            "shop-eu",
            "--http",
            &healthz,
            "--interval",
            "5",
        ],
    )?;
    assert!(
        out.contains("every 5 s") && out.contains("target check shop-eu --wait"),
        "{out}"
    );
    let out = cli_ok(&c, &["target", "check", "shop-eu", "--wait"])?;
    assert!(
        out.contains("shop-eu: healthy (worker eu-1, pool eu-west"),
        "{out}"
    );
    cli_ok(&c, &["deploy", deploy, "--wait"])?;

    // Checks off: no probe at all, and an unknown target does not stop deployments.
    let out = cli_ok(&c, &["target", "set-check", "shop-eu", "--none"])?;
    assert!(out.contains("not checked any more"), "{out}");
    let out = cli_refused(&c, &["target", "check", "shop-eu"])?;
    assert!(out.contains("shoal target set-check shop-eu"), "{out}");
    cli_ok(&c, &["deploy", deploy, "--wait"])?;
    let out = cli_refused(&c, &["target", "set-check", "shop-eu"])?;
    assert!(
        out.contains("--none"),
        "one of the probes is required:\n{out}"
    );

    // In use by an unfinished deployment: both removals are refused, naming every use.
    let slow = c.write_file("slow.toml", SLOW)?;
    let out = cli_ok(&c, &["deploy", slow.to_str().unwrap_or_default()])?;
    let id = out
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("no deployment id in {out}"))?
        .to_owned();
    let out = cli_refused(&c, &["target", "rm", "shop-eu"])?;
    assert!(out.contains("is in use") && out.contains(&id), "{out}");
    let out = cli_refused(&c, &["pool", "rm", "eu-west"])?;
    for part in ["targets shop-eu", "workers online: eu-1", id.as_str()] {
        assert!(out.contains(part), "{part:?} missing:\n{out}");
    }
    let out = cli_refused(&c, &["pool", "rm", "default"])?;
    assert!(out.contains("global default pool"), "{out}");

    // Once the deployment has ended the target goes, and with it its scheduled checks.
    cli_ok(&c, &["cancel", &id, "--wait"])?;
    let out = cli_ok(&c, &["target", "rm", "shop-eu"])?;
    assert!(out.contains("target shop-eu removed"), "{out}");
    let out = cli_ok(&c, &["target", "list"])?;
    assert!(!out.contains("shop-eu"), "{out}");

    // The pool goes once its worker has left; its queue consumer is deleted.
    c.worker_proc("eu-1")
        .terminate(Duration::from_secs(30))
        .await?;
    c.wait_status(&["eu-1"], "left").await?;
    let out = cli_ok(&c, &["pool", "rm", "eu-west"])?;
    assert!(out.contains("pool eu-west removed"), "{out}");
    let js = async_nats::jetstream::new(c.nats.connect().await?);
    c.wait_for("the consumer of eu-west to be deleted", WAIT, || {
        let js = js.clone();
        async move {
            let stream = js.get_stream("SHOAL_TASKS").await?;
            Ok(stream.consumer_info("eu-west").await.is_err().then_some(()))
        }
    })
    .await?;

    let events = c.events(None).await?;
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(
        types.contains(&"TargetRemoved") && types.contains(&"PoolRemoved"),
        "{types:?}"
    );
    let checks_after = |events: &[Value]| {
        events
            .iter()
            .skip_while(|e| e["type"].as_str() != Some("TargetRemoved"))
            .filter(|e| e["type"].as_str() == Some("HealthCheckPlanned"))
            .count()
    };
    // The target was checked every second; two seconds after its removal nothing is.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(checks_after(&c.events(None).await?), 0);
    Ok(())
}
