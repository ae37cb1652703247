//! `shoal demo`: nats-server on a free port in a temp dir, the planner (with its built-in
//! worker serving the default pool), two workers in pool `eu-west` (region `eu`) and one in
//! `us-east` (region `us`); sample targets; a deployment whose steps exercise all three
//! routing rules; a table of where every task ran and why.

use crate::render;
use anyhow::Context as _;
use serde_json::json;
use shoal_cli::client::ApiClient;
use shoal_cli::local::{self, Nats, Proc};
use shoal_shared::DeploymentState;
use shoal_shared::api::{CheckingView, Created, HealthRecordView, WorkerStatus, WorkerView};
use std::time::Duration;

pub async fn run(keep: bool) -> anyhow::Result<i32> {
    let nats_bin = local::find_nats_server()?;
    local::find_binary("shoal-planner")?;
    local::find_binary("shoal-worker")?;
    let dir = tempfile::Builder::new().prefix("shoal-demo-").tempdir()?;
    let logs = dir.path().join("logs");
    println!("shoal demo: everything runs under {}", dir.path().display());
    println!("  nats-server: {}", nats_bin.display());

    let mut nats = Nats::start(dir.path()).await?;
    println!(
        "  broker:      TLS with client certificates, an nkey identity per process (trust bundle in {})",
        local::trust::bundle_dir(dir.path()).display()
    );
    let http_port = local::free_port()?;
    let mut procs: Vec<Proc> = Vec::new();
    let planner = local::start_planner(
        &logs,
        &nats.url(),
        &dir.path().join("planner-data"),
        http_port,
        &[],
    )
    .await?;
    procs.push(planner);
    let api = ApiClient::new(&format!("http://127.0.0.1:{http_port}"));
    println!(
        "  planner:     {} (built-in worker serves pool \"default\")",
        api.base()
    );

    api.post("/api/pools", &json!({"name": "eu-west", "region": "eu", "description": "Europe, next to the EU targets"})).await?;
    api.post("/api/pools", &json!({"name": "us-east", "region": "us", "description": "US East, next to the US targets"})).await?;
    for (name, pool, region) in [
        ("eu-west-1", "eu-west", "eu"),
        ("eu-west-2", "eu-west", "eu"),
        ("us-east-1", "us-east", "us"),
    ] {
        let work = dir.path().join("work").join(name);
        procs.push(local::start_worker(
            &logs,
            &nats.url(),
            name,
            pool,
            Some(region),
            Some(&work),
            &[],
        )?);
        println!("  worker:      {name} in pool {pool} (region {region})");
    }
    wait_for_workers(&api, 4).await?;

    // The endpoints are placeholders; a script probe stands in for a real management API.
    let probe =
        json!({"type": "script", "script": "echo \"$SHOAL_TARGET answered $SHOAL_WORKER\""});
    let targets = [
        json!({"name": "shop-eu", "kind": "azure-web-app", "environment": "production", "roles": ["web"],
               "endpoint": "https://shop-eu.example.invalid", "default_pool": "eu-west", "health_check": probe}),
        json!({"name": "shop-us", "kind": "kubernetes", "environment": "production", "roles": ["web"],
               "endpoint": "https://k8s-us.example.invalid", "default_pool": "us-east", "health_check": probe}),
        json!({"name": "edge-cdn", "kind": "cloud-region", "environment": "production", "roles": ["web"],
               "health_check": probe}),
    ];
    for t in &targets {
        api.post("/api/targets", t).await?;
    }
    println!(
        "\ntargets: shop-eu (default pool eu-west), shop-us (default pool us-east), edge-cdn (no default pool)"
    );
    println!("health checks run on a worker of each target's pool:");
    for t in ["shop-eu", "shop-us", "edge-cdn"] {
        let r = checked(&api, t).await?;
        println!(
            "  {t:<9} {} by {} in pool {} ({})",
            render::s(&r.state),
            render::s(&r.worker),
            r.pool,
            render::s(&r.rule)
        );
    }
    let script = "echo \"$SHOAL_STEP for ${SHOAL_TARGET:-no target} on $SHOAL_WORKER (pool $SHOAL_POOL, region ${SHOAL_REGION:-none})\"; sleep 0.2";
    let deployment = json!({
        "project": "shop",
        "environment": "production",
        "steps": [
            {"name": "announce", "action": {"type": "script", "script": script}},
            {"name": "deploy-web", "roles": ["web"], "action": {"type": "script", "script": script}},
            {"name": "verify-from-eu", "roles": ["web"], "pool": "eu-west", "action": {"type": "script", "script": script}},
        ]
    });
    let created: Created = api.post_as("/api/deployments", &deployment).await?;
    let id = created.id;
    println!("deployment {id} submitted: 3 steps, 7 tasks\n");
    let d = tokio::time::timeout(
        Duration::from_secs(120),
        crate::follow(&api, &id.to_string(), true),
    )
    .await
    .context("the demo deployment did not finish within 2 minutes")??;
    println!();
    println!("{}", render::task_table(&d));
    println!("rules: step = the step named its pool; target_default = the target's default pool;");
    println!("       global_default = neither, so the global default pool (built-in worker).");
    let ok = d.state == DeploymentState::Succeeded;
    println!("\ndeployment {}: {}", id, render::s(&d.state));

    if keep {
        println!("\nStill running. In another terminal:");
        println!("  export SHOAL_API={}", api.base());
        println!(
            "  shoal workers; shoal deployment show {id}; shoal logs {id}; shoal events --deployment {id}"
        );
        println!("Press Ctrl-C to stop everything.");
        let _ = tokio::signal::ctrl_c().await;
    }
    println!("\nstopping workers, planner and nats-server");
    for p in procs.iter_mut().rev() {
        if let Err(e) = p.terminate(Duration::from_secs(40)).await {
            eprintln!("  {e}");
        }
    }
    nats.stop().await?;
    Ok(if ok {
        shoal_cli::exit::OK
    } else {
        shoal_cli::exit::FAILED
    })
}

async fn wait_for_workers(api: &ApiClient, n: usize) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let workers: Vec<WorkerView> = api.get_as("/api/workers").await?;
        let online = workers
            .iter()
            .filter(|w| w.status == WorkerStatus::Online)
            .count();
        if online >= n {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("only {online} of {n} workers came online within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asks for a health check of a target and waits for its result.
async fn checked(api: &ApiClient, target: &str) -> anyhow::Result<HealthRecordView> {
    let asked: CheckingView = api
        .post_as(&format!("/api/targets/{target}/health-check"), &json!({}))
        .await?;
    crate::check_result(api, target, &asked)
        .await?
        .with_context(|| format!("the health check of {target} got no result by its deadline"))
}
