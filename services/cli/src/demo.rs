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
use shoal_shared::api::{
    CheckingView, Created, HealthRecordView, PushedPackage, WorkerStatus, WorkerView,
};
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
    let data_dir = dir.path().join("planner-data");
    let planner = local::start_planner(&logs, &nats.url(), &data_dir, http_port, &[]).await?;
    procs.push(planner);
    let api = local::admin_client(http_port, &data_dir);
    println!(
        "  planner:     {} (built-in worker serves pool \"default\")",
        api.base()
    );

    // Each pool's workers hold its secret key: sensitive variables are sealed for them.
    let keys = dir.path().join("keys");
    let (eu_key, eu_pub) = local::make_pool_key(&keys, "eu-west")?;
    let (us_key, us_pub) = local::make_pool_key(&keys, "us-east")?;
    api.post("/api/pools", &json!({"name": "eu-west", "region": "eu", "description": "Europe, next to the EU targets", "sealing_key": eu_pub})).await?;
    api.post("/api/pools", &json!({"name": "us-east", "region": "us", "description": "US East, next to the US targets", "sealing_key": us_pub})).await?;
    for (name, pool, region) in [
        ("eu-west-1", "eu-west", "eu"),
        ("eu-west-2", "eu-west", "eu"),
        ("us-east-1", "us-east", "us"),
    ] {
        let work = dir.path().join("work").join(name);
        let key = if pool == "eu-west" { &eu_key } else { &us_key };
        let key = key.display().to_string();
        procs.push(local::start_worker(
            &logs,
            &nats.url(),
            name,
            pool,
            Some(region),
            Some(&work),
            &["--pool-key", &key],
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
    let script = "echo \"$SHOAL_STEP for ${SHOAL_TARGET:-no target} on $SHOAL_WORKER (pool $SHOAL_POOL, region ${SHOAL_REGION:-none})\"; echo \"connecting with DB_PASSWORD=$DB_PASSWORD\"; sleep 0.2";
    // A sensitive variable: sealed in the log and per pool on the wire, masked in output.
    let password = demo_password();
    let secret = json!({"DB_PASSWORD": password});
    let deployment = json!({
        "project": "shop",
        "environment": "production",
        "steps": [
            {"name": "announce", "action": {"type": "script", "script": script}, "sensitive_variables": secret},
            {"name": "deploy-web", "roles": ["web"], "action": {"type": "script", "script": script}, "sensitive_variables": secret},
            {"name": "verify-from-eu", "roles": ["web"], "pool": "eu-west", "action": {"type": "script", "script": script}, "sensitive_variables": secret},
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
    let mut ok = d.state == DeploymentState::Succeeded;
    let found = local::files_containing(&dir.path().join("planner-data"), password.as_bytes())?
        .len()
        + local::files_containing(&dir.path().join("nats-store"), password.as_bytes())?.len();
    println!("\nsensitive variable DB_PASSWORD: sealed in the log, sealed per pool on the wire;");
    let mut shown = Vec::new();
    for t in d.steps.iter().flat_map(|s| &s.tasks) {
        if shown.contains(&t.pool) {
            continue;
        }
        let lines = api.task_log(&id.to_string(), &t.id.to_string()).await?;
        if let Some(l) = lines.iter().find(|l| l.line.starts_with("connecting with")) {
            println!("  pool {:<8} {}: {}", t.pool, render::s(&t.worker), l.line);
            shown.push(t.pool.clone());
        }
    }
    println!("  in clear in {found} files of the planner's data dir and the broker's store");
    let packaged = packages(&api).await?;
    ok &= packaged;
    println!("\ndeployment {}: {}", id, render::s(&d.state));

    if keep {
        println!("\nStill running. In another terminal:");
        println!("  export SHOAL_API={}", api.base());
        // The demo's own throw-away installation: its admin token is shown so the commands
        // below work; a real planner's stays in its data dir's admin.token.
        if let Some(token) = api.token() {
            println!("  export SHOAL_TOKEN={token}");
        }
        println!(
            "  shoal workers; shoal deployment show {id}; shoal logs {id}; shoal events --deployment {id}"
        );
        println!(
            "Dashboard: {}/ (log in with the token above); Prometheus figures: {}/metrics",
            api.base(),
            api.base()
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

/// Pushes a small package and deploys it twice to the `web` targets: the first time each
/// worker fetches it from the feed, the second time a worker that has it deploys it from its
/// cache. Whether both deployments succeeded.
async fn packages(api: &ApiClient) -> anyhow::Result<bool> {
    let archive = demo_archive()?;
    let pushed: PushedPackage = api
        .put_stream_as(
            "/api/packages/site/1.0.0",
            "application/octet-stream",
            reqwest::Body::from(archive),
        )
        .await?;
    let p = &pushed.package;
    println!(
        "\npackage site 1.0.0 pushed to the feed: {} bytes in {} chunks (stored {} new)",
        p.size, p.chunks, pushed.new_chunks
    );
    let mut ok = true;
    for round in ["deployed", "deployed again"] {
        let deployment = json!({"project": "shop", "environment": "production", "steps": [
            {"name": "deploy-site", "roles": ["web"],
             "action": {"type": "deploy_package", "package": {"id": "site", "version": "^1"},
                        "script": "test -f index.html && echo \"site $SHOAL_PACKAGE_VERSION is live\""}}]});
        let created: Created = api.post_as("/api/deployments", &deployment).await?;
        let id = created.id.to_string();
        let d = tokio::time::timeout(Duration::from_secs(120), crate::follow(api, &id, false))
            .await
            .context("the package deployment did not finish within 2 minutes")??;
        ok &= d.state == DeploymentState::Succeeded;
        println!("{round} ({}):", render::s(&d.state));
        for t in d.steps.iter().flat_map(|s| &s.tasks) {
            let lines = api.task_log(&id, &t.id.to_string()).await?;
            let said = lines
                .iter()
                .find(|l| l.line.starts_with("[shoal] package site"))
                .map_or("(no acquisition)", |l| &l.line["[shoal] ".len()..]);
            println!(
                "  {:<9} {:<14} {said}",
                render::s(&t.target),
                render::s(&t.worker)
            );
        }
    }
    Ok(ok)
}

/// A `.tar.gz` of a small site: an index and 256 KiB of data (a few chunks).
fn demo_archive() -> anyhow::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut data = Vec::with_capacity(256 * 1024);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while data.len() < 256 * 1024 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    let index: &[u8] = b"<h1>shop</h1>\n";
    for (name, bytes) in [("index.html", index), ("assets/data.bin", &data[..])] {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        tar.append_data(&mut h, name, bytes)?;
    }
    Ok(tar.into_inner()?.finish()?)
}

/// A random password for the demo's sensitive variable.
fn demo_password() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("demo-{:x}-{}", nanos, std::process::id())
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
