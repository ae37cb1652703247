//! The `shoal` command as a user runs it.

use shoal_e2e::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_registers_deploys_waits_and_reports() -> anyhow::Result<()> {
    let mut c = Cluster::start(&[]).await?;
    let (ok, out) = c.cli(&["pool", "add", "eu-west", "--region", "eu"])?;
    assert!(ok, "{out}");
    c.worker("eu-1", "eu-west", "eu", &[])?;
    c.wait_online(&["eu-1"]).await?;
    let (ok, out) = c.cli(&[
        "target",
        "add",
        "web-eu",
        "--kind",
        "azure-web-app",
        "--environment",
        "prod",
        "--role",
        "web",
        "--default-pool",
        "eu-west",
    ])?;
    assert!(ok, "{out}");
    let (ok, out) = c.cli(&[
        "target",
        "add",
        "web-x",
        "--kind",
        "azure-web-app",
        "--environment",
        "prod",
        "--role",
        "web",
        "--default-pool",
        "nowhere",
    ])?;
    assert!(!ok && out.contains("unknown pool \"nowhere\""), "{out}");

    let good = c.write_file(
        "good.toml",
        r#"
project = "shop"
environment = "prod"

[[steps]]
name = "deploy"
roles = ["web"]
action = { type = "script", script = "echo deployed $SHOAL_TARGET" }

[[steps]]
name = "notify"
action = { type = "script", script = "echo done" }
"#,
    )?;
    let (ok, out) = c.cli(&["deploy", good.to_str().unwrap_or_default(), "--wait"])?;
    assert!(ok, "{out}");
    assert!(
        out.contains("[succeeded]")
            && out.contains("eu-west")
            && out.contains("target_default")
            && out.contains("global_default"),
        "{out}"
    );
    let id = out.split_whitespace().nth(1).unwrap_or_default().to_owned();

    let (ok, out) = c.cli(&["deployment", "show", &id])?;
    assert!(ok, "{out}");
    let d = c.api.get(&format!("/api/deployments/{id}")).await?;
    let task = d["steps"][0]["tasks"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let all: Vec<String> = shoal_e2e::tasks(&d)
        .iter()
        .filter_map(|(_, t)| t["id"].as_str().map(str::to_owned))
        .collect();
    let short = shoal_cli::ids::shorten(&task, shoal_cli::ids::short_len(&all));
    assert!(
        out.contains(short),
        "deployment show prints the short task id:\n{out}"
    );
    let (ok, out) = c.cli(&["logs", &id, short])?;
    assert!(
        ok && out.contains("1.1   deployed web-eu") && !out.contains("done"),
        "{out}"
    );
    let (ok, out) = c.cli(&["logs", &id, "zzzzzzzz"])?;
    assert!(!ok && out.contains("has no task zzzzzzzz"), "{out}");
    let (ok, out) = c.cli(&["target", "show", "web-eu"])?;
    assert!(
        ok && out.contains("default pool  eu-west") && out.contains("kind          azure-web-app"),
        "{out}"
    );
    let (ok, out) = c.cli(&["logs", &id])?;
    assert!(
        ok && out.contains("deployed web-eu") && out.contains("done"),
        "{out}"
    );
    let (ok, out) = c.cli(&["events", "--deployment", &id])?;
    assert!(
        ok && out.contains("TaskPlanned") && out.contains("DeploymentFinished"),
        "{out}"
    );
    let (ok, out) = c.cli(&["workers"])?;
    assert!(
        ok && out.contains("eu-1") && out.contains("online"),
        "{out}"
    );
    let (ok, out) = c.cli(&["pool", "list"])?;
    assert!(ok && out.contains("eu-west"), "{out}");
    let (ok, out) = c.cli(&["target", "set-pool", "web-eu", "--clear"])?;
    assert!(ok && out.contains("no default pool"), "{out}");

    let bad = c.write_file("bad.toml", "project = \"shop\"\nenvironment = \"prod\"\n[[steps]]\nname = \"boom\"\naction = { type = \"script\", script = \"exit 3\" }\n")?;
    let (ok, out) = c.cli(&["deploy", bad.to_str().unwrap_or_default(), "--wait"])?;
    assert!(!ok, "a failed deployment must exit non-zero:\n{out}");
    assert!(out.contains("exit code 3"), "{out}");
    let (ok, out) = c.cli(&["deployment", "list"])?;
    assert!(
        ok && out.contains("failed") && out.contains("succeeded"),
        "{out}"
    );
    Ok(())
}
