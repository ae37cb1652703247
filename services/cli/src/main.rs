//! `shoal`: the command line over the planner's HTTP API, and `shoal demo`.

mod demo;
mod render;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use shoal_cli::client::ApiClient;
use std::path::PathBuf;
use std::time::Duration;

/// Run deployment work on regional worker pools.
#[derive(Debug, Parser)]
#[command(name = "shoal", version)]
struct Cli {
    /// The planner's HTTP API.
    #[arg(
        long,
        env = "SHOAL_API",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    api: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Worker pools.
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Deployment targets.
    #[command(subcommand)]
    Target(TargetCmd),
    /// Submit a deployment described in a TOML file.
    Deploy {
        file: PathBuf,
        /// Follow it step by step; exit non-zero unless it succeeds.
        #[arg(long)]
        wait: bool,
    },
    /// Deployments.
    #[command(subcommand)]
    Deployment(DeploymentCmd),
    /// Output of a deployment's tasks (all, or one).
    Logs { id: String, task: Option<String> },
    /// Workers, their pools and liveness.
    Workers,
    /// One worker: maintenance drain and resume.
    #[command(subcommand)]
    Worker(WorkerCmd),
    /// Cancel a deployment: queued tasks never start, running ones are stopped.
    Cancel {
        id: String,
        /// Recorded in the log with the cancellation.
        #[arg(long)]
        reason: Option<String>,
        /// Wait until the deployment has ended.
        #[arg(long)]
        wait: bool,
    },
    /// The audit events, oldest first.
    Events {
        #[arg(long)]
        deployment: Option<String>,
        #[arg(long)]
        stream: Option<String>,
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Run the whole system on this machine and show a deployment routed to pools.
    Demo {
        /// Stay up after the demo deployment (Ctrl-C stops everything).
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PoolCmd {
    /// Register a pool.
    Add {
        name: String,
        #[arg(long)]
        region: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// List pools with their online workers.
    List,
}

#[derive(Debug, Subcommand)]
enum TargetCmd {
    /// Register a target.
    Add {
        name: String,
        /// azure-web-app, azure-service-fabric, azure-cloud-service, cloud-region, kubernetes, ssh
        #[arg(long)]
        kind: String,
        #[arg(long)]
        environment: String,
        /// A role (repeat for several).
        #[arg(long = "role")]
        roles: Vec<String>,
        #[arg(long)]
        endpoint: Option<String>,
        /// The pool its steps and health checks run in unless a step says otherwise.
        #[arg(long)]
        default_pool: Option<String>,
        /// Health check: a TCP connection to HOST:PORT.
        #[arg(long, value_name = "HOST:PORT", group = "probe")]
        check_tcp: Option<String>,
        /// Health check: a GET of URL answering --expect-status (200).
        #[arg(long, value_name = "URL", group = "probe")]
        check_http: Option<String>,
        #[arg(long, requires = "check_http")]
        expect_status: Option<u16>,
        /// Health check: a script (exit 0 healthy, 2 healthy with warnings, else unhealthy).
        #[arg(long, value_name = "SCRIPT", group = "probe")]
        check_script: Option<String>,
        /// Seconds between scheduled checks (the planner's default when unset).
        #[arg(long)]
        health_interval: Option<u64>,
    },
    /// List targets.
    List,
    /// Show one target.
    Show { name: String },
    /// Check a target's health now, on a worker of its pool.
    Check {
        name: String,
        /// Wait for the result; exit non-zero unless healthy.
        #[arg(long)]
        wait: bool,
    },
    /// A target's health history.
    Health { name: String },
    /// Set or clear a target's default pool.
    SetPool {
        name: String,
        /// The new default pool.
        #[arg(required_unless_present = "clear")]
        pool: Option<String>,
        /// Remove the default pool (its tasks go to the global default pool).
        #[arg(long, conflicts_with = "pool")]
        clear: bool,
    },
}

#[derive(Debug, Subcommand)]
enum WorkerCmd {
    /// List workers (as `shoal workers`).
    List,
    /// Stop a worker taking new tasks (maintenance): running tasks finish, up to its drain
    /// timeout, then are handed back to its pool. It stays drained across restarts.
    Drain { name: String },
    /// Let a drained worker take tasks again.
    Resume { name: String },
}

#[derive(Debug, Subcommand)]
enum DeploymentCmd {
    /// Recent deployments.
    List {
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One deployment with every task: where it ran and why.
    Show { id: String },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let api = ApiClient::new(&cli.api);
    match cli.command {
        Cmd::Pool(PoolCmd::Add {
            name,
            region,
            description,
        }) => {
            let p = api
                .post(
                    "/api/pools",
                    &json!({"name": name, "region": region, "description": description}),
                )
                .await?;
            println!("pool {} registered", p["name"].as_str().unwrap_or(&name));
        }
        Cmd::Pool(PoolCmd::List) => render::pools(&api.get("/api/pools").await?),
        Cmd::Target(TargetCmd::Add {
            name,
            kind,
            environment,
            roles,
            endpoint,
            default_pool,
            check_tcp,
            check_http,
            expect_status,
            check_script,
            health_interval,
        }) => {
            let health_check = match (check_tcp, check_http, check_script) {
                (Some(address), _, _) => json!({"type": "tcp", "address": address}),
                (_, Some(url), _) => {
                    json!({"type": "http", "url": url, "expect_status": expect_status})
                }
                (_, _, Some(script)) => json!({"type": "script", "script": script}),
                _ => Value::Null,
            };
            let body = json!({"name": name, "kind": kind, "environment": environment, "roles": roles,
                              "endpoint": endpoint, "default_pool": default_pool,
                              "health_check": health_check, "health_interval_secs": health_interval});
            api.post("/api/targets", &body).await?;
            println!("target {name} registered");
        }
        Cmd::Target(TargetCmd::List) => render::targets(&api.get("/api/targets").await?),
        Cmd::Target(TargetCmd::Show { name }) => {
            render::target(&api.get(&format!("/api/targets/{name}")).await?);
        }
        Cmd::Target(TargetCmd::Check { name, wait }) => {
            return check(&api, &name, wait).await;
        }
        Cmd::Target(TargetCmd::Health { name }) => {
            render::health(&api.get(&format!("/api/targets/{name}/health")).await?);
        }
        Cmd::Target(TargetCmd::SetPool { name, pool, clear }) => {
            let pool = if clear { Value::Null } else { json!(pool) };
            let t = api
                .put(
                    &format!("/api/targets/{name}"),
                    &json!({"default_pool": pool}),
                )
                .await?;
            match t["default_pool"].as_str() {
                Some(p) => println!("target {name} now defaults to pool {p}"),
                None => println!("target {name} has no default pool now (global default applies)"),
            }
        }
        Cmd::Deploy { file, wait } => return deploy(&api, &file, wait).await,
        Cmd::Deployment(DeploymentCmd::List { limit }) => {
            render::deployments(&api.get(&format!("/api/deployments?limit={limit}")).await?);
        }
        Cmd::Deployment(DeploymentCmd::Show { id }) => {
            render::deployment(&api.get(&format!("/api/deployments/{id}")).await?);
        }
        Cmd::Logs { id, task } => logs(&api, &id, task.as_deref()).await?,
        Cmd::Workers | Cmd::Worker(WorkerCmd::List) => {
            render::workers(&api.get("/api/workers").await?);
        }
        Cmd::Worker(WorkerCmd::Drain { name }) => {
            api.post(&format!("/api/workers/{name}/drain"), &json!({}))
                .await?;
            println!(
                "worker {name} is draining: it takes no new tasks until `shoal worker resume {name}`"
            );
        }
        Cmd::Worker(WorkerCmd::Resume { name }) => {
            api.post(&format!("/api/workers/{name}/resume"), &json!({}))
                .await?;
            println!("worker {name} takes tasks again");
        }
        Cmd::Cancel { id, reason, wait } => {
            let d = api
                .post(
                    &format!("/api/deployments/{id}/cancel"),
                    &json!({ "reason": reason }),
                )
                .await?;
            println!(
                "deployment {id}: {}",
                d["state"].as_str().unwrap_or("cancellation requested")
            );
            if wait {
                let d = follow(&api, &id, true).await?;
                render::deployment(&d);
                return Ok(if d["state"] == "cancelled" { 0 } else { 1 });
            }
        }
        Cmd::Events {
            deployment,
            stream,
            after,
            limit,
        } => {
            let stream = deployment.map(|d| format!("deployment/{d}")).or(stream);
            let mut path = format!("/api/events?after={after}&limit={limit}");
            if let Some(s) = stream {
                path.push_str(&format!("&stream={s}"));
            }
            render::events(&api.get(&path).await?);
        }
        Cmd::Demo { keep } => return demo::run(keep).await,
    }
    Ok(0)
}

/// Asks for a check of a target; with `wait`, follows it to its result.
async fn check(api: &ApiClient, name: &str, wait: bool) -> anyhow::Result<i32> {
    let asked = api
        .post(&format!("/api/targets/{name}/health-check"), &json!({}))
        .await?;
    let id = asked["check"].as_str().unwrap_or_default().to_owned();
    println!(
        "checking {name}: check {id} in pool {} ({})",
        asked["pool"].as_str().unwrap_or(""),
        asked["rule"].as_str().unwrap_or("")
    );
    if !wait {
        return Ok(0);
    }
    let Some(r) = check_result(api, name, &asked).await? else {
        println!(
            "{name}: no result of check {id} by its deadline; see `shoal target health {name}`"
        );
        return Ok(1);
    };
    let state = r["state"].as_str().unwrap_or("");
    println!(
        "{name}: {state}{} (worker {}, pool {}, {} ms)",
        r["reason"]
            .as_str()
            .map_or(String::new(), |why| format!(": {why}")),
        r["worker"].as_str().unwrap_or("-"),
        r["pool"].as_str().unwrap_or("-"),
        r["duration_ms"]
    );
    Ok(if matches!(state, "healthy" | "healthy_with_warnings") {
        0
    } else {
        1
    })
}

/// Waits for the result of a check (`asked`: the answer of `POST …/health-check`) in the
/// target's history. `None` 10 s after the check's deadline: the planner calls the target
/// unavailable at the deadline, and a check replaced by a newer one is never answered.
pub(crate) async fn check_result(
    api: &ApiClient,
    name: &str,
    asked: &Value,
) -> anyhow::Result<Option<Value>> {
    let id = asked["check"].as_str().unwrap_or_default();
    let give_up = asked["deadline_at"]
        .as_str()
        .and_then(|d| humantime::parse_rfc3339(d).ok())
        .map_or_else(
            || std::time::SystemTime::now() + Duration::from_secs(120),
            |d| d + Duration::from_secs(10),
        );
    while std::time::SystemTime::now() < give_up {
        let h = api.get(&format!("/api/targets/{name}/health")).await?;
        if let Some(r) = h["history"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["check"] == id)
        {
            return Ok(Some(r.clone()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(None)
}

/// Reads a deployment file (TOML with the same structure as the API's JSON).
fn read_deployment(file: &std::path::Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    toml::from_str::<Value>(&text).with_context(|| format!("{} is not valid TOML", file.display()))
}

async fn deploy(api: &ApiClient, file: &std::path::Path, wait: bool) -> anyhow::Result<i32> {
    let body = read_deployment(file)?;
    let created = api.post("/api/deployments", &body).await?;
    let id = created["id"]
        .as_str()
        .context("planner answered without an id")?
        .to_owned();
    println!("deployment {id} accepted");
    if !wait {
        return Ok(0);
    }
    let d = follow(api, &id, true).await?;
    render::deployment(&d);
    Ok(if d["state"] == "succeeded" { 0 } else { 1 })
}

/// Polls a deployment until it ends, printing each step's progress when `print` is set.
pub(crate) async fn follow(api: &ApiClient, id: &str, print: bool) -> anyhow::Result<Value> {
    let mut last = String::new();
    loop {
        let d = api.get(&format!("/api/deployments/{id}")).await?;
        let line = render::progress(&d);
        if print && line != last {
            println!("{line}");
            last = line;
        }
        if matches!(
            d["state"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            return Ok(d);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn logs(api: &ApiClient, id: &str, task: Option<&str>) -> anyhow::Result<()> {
    let d = api.get(&format!("/api/deployments/{id}")).await?;
    let mut tasks: Vec<(String, String)> = Vec::new();
    for step in d["steps"].as_array().into_iter().flatten() {
        for t in step["tasks"].as_array().into_iter().flatten() {
            let label = format!(
                "{} · {} · pool {}",
                step["name"].as_str().unwrap_or(""),
                t["target"].as_str().unwrap_or("(no target)"),
                t["pool"].as_str().unwrap_or("")
            );
            tasks.push((t["id"].as_str().unwrap_or_default().to_owned(), label));
        }
    }
    // A task may be named by its full id or by the short id `deployment show` prints (its
    // last characters).
    if let Some(wanted) = task {
        let all: Vec<String> = tasks.iter().map(|(t, _)| t.clone()).collect();
        tasks.retain(|(t, _)| t == wanted || t.ends_with(wanted));
        match tasks.len() {
            0 => bail!(
                "deployment {id} has no task {wanted} (its tasks: {})",
                all.join(", ")
            ),
            1 => {}
            _ => bail!("{wanted} matches several tasks of deployment {id}; give more of the id"),
        }
    }
    if tasks.is_empty() {
        bail!("deployment {id} has no tasks");
    }
    for (task, label) in tasks {
        let log = api
            .get(&format!("/api/deployments/{id}/tasks/{task}/log"))
            .await?;
        if !label.is_empty() {
            println!("== task {task} ({label})");
        }
        for l in log["lines"].as_array().into_iter().flatten() {
            let line = l["line"].as_str().unwrap_or("");
            // attempt.run: a run above 1 is a redelivery after a worker was lost.
            let run = format!("{}.{}", l["attempt"], l["run"]);
            if l["stream"] == "stderr" {
                println!("{run} ! {line}");
            } else {
                println!("{run}   {line}");
            }
        }
    }
    Ok(())
}
