//! `shoal`: the command line over the planner's HTTP API, and `shoal demo`.

mod demo;
mod render;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use shoal_cli::client::ApiClient;
use shoal_shared::api::{
    CancelRequest, CheckingView, CreatePool, CreateTarget, Created, DeploymentDetail,
    DeploymentSummary, DrainView, HealthHistory, HealthRecordView, TargetView, UpdateTarget,
};
use shoal_shared::{
    DeploymentState, EnvironmentName, HealthCheck, HealthState, OutputStream, PoolName, RegionName,
    RoleName, TargetKind, TargetName,
};
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
    /// Remove a pool nothing uses (refused, naming what uses it, while it is the global
    /// default, a target's default pool, has workers online or tasks of an unfinished
    /// deployment).
    Rm {
        /// The pool to remove.
        name: String,
    },
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
    /// Set, or switch off, a target's health check.
    SetCheck(SetCheck),
    /// Remove a target no unfinished deployment uses (refused, naming the deployments,
    /// while one does). Its scheduled checks end with it.
    Rm {
        /// The target to remove.
        name: String,
    },
}

/// `target set-check`: exactly one probe, or `--none`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("check").required(true)))]
struct SetCheck {
    /// The target.
    name: String,
    /// A TCP connection to HOST:PORT opens.
    #[arg(long, value_name = "HOST:PORT", group = "check")]
    tcp: Option<String>,
    /// A GET of URL answers --expect-status (200).
    #[arg(long, value_name = "URL", group = "check")]
    http: Option<String>,
    /// The HTTP status that counts as healthy (with --http).
    #[arg(long, requires = "http")]
    expect_status: Option<u16>,
    /// A script on a worker: exit 0 healthy, 2 healthy with warnings, else unhealthy.
    #[arg(long, value_name = "SCRIPT", group = "check")]
    script: Option<String>,
    /// No checks at all, not even a TCP probe of the endpoint; the target stays `unknown`.
    #[arg(long, group = "check")]
    none: bool,
    /// Seconds between scheduled checks (unchanged when not given).
    #[arg(long, value_name = "SECS")]
    interval: Option<u64>,
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
        Cmd::Pool(cmd) => pool(&api, cmd).await?,
        Cmd::Target(cmd) => return target(&api, cmd).await,
        Cmd::Deploy { file, wait } => return deploy(&api, &file, wait).await,
        Cmd::Deployment(DeploymentCmd::List { limit }) => {
            render::deployments(
                &api.get_as::<Vec<_>>(&format!("/api/deployments?limit={limit}"))
                    .await?,
            );
        }
        Cmd::Deployment(DeploymentCmd::Show { id }) => {
            render::deployment(&api.get_as(&format!("/api/deployments/{id}")).await?);
        }
        Cmd::Logs { id, task } => logs(&api, &id, task.as_deref()).await?,
        Cmd::Workers | Cmd::Worker(WorkerCmd::List) => {
            render::workers(&api.get_as::<Vec<_>>("/api/workers").await?);
        }
        Cmd::Worker(WorkerCmd::Drain { name }) => {
            let _: DrainView = api
                .post_as(&format!("/api/workers/{name}/drain"), &json!({}))
                .await?;
            println!(
                "worker {name} is draining: it takes no new tasks until `shoal worker resume {name}`"
            );
        }
        Cmd::Worker(WorkerCmd::Resume { name }) => {
            let _: DrainView = api
                .post_as(&format!("/api/workers/{name}/resume"), &json!({}))
                .await?;
            println!("worker {name} takes tasks again");
        }
        Cmd::Cancel { id, reason, wait } => return cancel(&api, &id, reason, wait).await,
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
            render::events(&api.get_as::<Vec<_>>(&path).await?);
        }
        Cmd::Demo { keep } => return demo::run(keep).await,
    }
    Ok(0)
}

/// `shoal pool …`.
async fn pool(api: &ApiClient, cmd: PoolCmd) -> anyhow::Result<()> {
    match cmd {
        PoolCmd::Add {
            name,
            region,
            description,
        } => {
            let req = CreatePool {
                name: field("name", PoolName::parse(name))?,
                region: region
                    .map(|r| field("region", RegionName::parse(r)))
                    .transpose()?,
                description,
            };
            let p: shoal_shared::api::PoolView = api.post_as("/api/pools", &req).await?;
            println!("pool {} registered", p.name);
        }
        PoolCmd::List => render::pools(&api.get_as::<Vec<_>>("/api/pools").await?),
        PoolCmd::Rm { name } => pool_rm(api, &name).await?,
    }
    Ok(())
}

/// `shoal target …`: the exit code.
async fn target(api: &ApiClient, cmd: TargetCmd) -> anyhow::Result<i32> {
    match cmd {
        TargetCmd::Add {
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
        } => {
            let req = CreateTarget {
                name: field("name", TargetName::parse(name.clone()))?,
                kind: field("kind", TargetKind::parse(&kind))?,
                environment: field("environment", EnvironmentName::parse(environment))?,
                roles: roles
                    .into_iter()
                    .map(|r| field("roles", RoleName::parse(r)))
                    .collect::<anyhow::Result<_>>()?,
                endpoint,
                default_pool: default_pool
                    .map(|p| field("default_pool", PoolName::parse(p)))
                    .transpose()?,
                health_check: probe(check_tcp, check_http, expect_status, check_script),
                health_interval_secs: health_interval,
            };
            let _: TargetView = api.post_as("/api/targets", &req).await?;
            println!("target {name} registered");
        }
        TargetCmd::List => {
            render::targets(&api.get_as::<Vec<_>>("/api/targets").await?);
        }
        TargetCmd::Show { name } => {
            render::target(&api.get_as(&format!("/api/targets/{name}")).await?);
        }
        TargetCmd::Check { name, wait } => {
            return check(api, &name, wait).await;
        }
        TargetCmd::Health { name } => {
            render::health(&api.get_as(&format!("/api/targets/{name}/health")).await?);
        }
        TargetCmd::SetPool { name, pool, clear } => {
            let pool = if clear {
                None
            } else {
                pool.map(|p| field("default_pool", PoolName::parse(p)))
                    .transpose()?
            };
            let req = UpdateTarget {
                default_pool: Some(pool),
                ..UpdateTarget::default()
            };
            let t: TargetView = api.put_as(&format!("/api/targets/{name}"), &req).await?;
            match &t.target.default_pool {
                Some(p) => println!("target {name} now defaults to pool {p}"),
                None => println!("target {name} has no default pool now (global default applies)"),
            }
        }
        TargetCmd::SetCheck(args) => set_check(api, args).await?,
        TargetCmd::Rm { name } => target_rm(api, &name).await?,
    }
    Ok(0)
}

/// `shoal pool rm`.
async fn pool_rm(api: &ApiClient, name: &str) -> anyhow::Result<()> {
    let name = field("name", PoolName::parse(name.to_owned()))?;
    api.delete(&format!("/api/pools/{name}")).await?;
    println!("pool {name} removed; its queue consumer is deleted");
    Ok(())
}

/// `shoal target rm`.
async fn target_rm(api: &ApiClient, name: &str) -> anyhow::Result<()> {
    let name = field("name", TargetName::parse(name.to_owned()))?;
    api.delete(&format!("/api/targets/{name}")).await?;
    println!("target {name} removed; it is no longer checked or deployed to");
    Ok(())
}

/// `shoal target set-check`: sets the probe (and interval) and says what is checked now.
async fn set_check(api: &ApiClient, args: SetCheck) -> anyhow::Result<()> {
    let check = if args.none {
        HealthCheck::Off
    } else {
        probe(args.tcp, args.http, args.expect_status, args.script)
            .context("give one of --tcp, --http, --script or --none")?
    };
    let req = UpdateTarget {
        health_check: Some(Some(check)),
        health_interval_secs: args.interval.map(Some),
        ..UpdateTarget::default()
    };
    let name = &args.name;
    let t: TargetView = api.put_as(&format!("/api/targets/{name}"), &req).await?;
    match &t.probe {
        Some(p) => {
            let every = t
                .target
                .health_interval_secs
                .map_or("at the planner's interval".to_owned(), |s| {
                    format!("every {s} s")
                });
            println!("target {name} is checked with {}, {every}", render::s(p));
            if t.health.checked_at.is_some() {
                println!(
                    "its health ({}) is from an earlier check; `shoal target check {name} --wait` checks it now",
                    render::s(&t.health.state)
                );
            }
        }
        None => println!(
            "target {name} is not checked any more: its health is `unknown` and does not stop deployments"
        ),
    }
    Ok(())
}

/// The health check `target add` asks for (clap lets at most one through).
fn probe(
    tcp: Option<String>,
    http: Option<String>,
    expect_status: Option<u16>,
    script: Option<String>,
) -> Option<HealthCheck> {
    match (tcp, http, script) {
        (Some(address), _, _) => Some(HealthCheck::Tcp {
            address,
            timeout_secs: None,
        }),
        (_, Some(url), _) => Some(HealthCheck::Http {
            url,
            expect_status,
            timeout_secs: None,
        }),
        (_, _, Some(script)) => Some(HealthCheck::Script {
            script,
            timeout_secs: None,
        }),
        _ => None,
    }
}

/// `shoal cancel`: the exit code.
async fn cancel(
    api: &ApiClient,
    id: &str,
    reason: Option<String>,
    wait: bool,
) -> anyhow::Result<i32> {
    let d: DeploymentSummary = api
        .post_as(
            &format!("/api/deployments/{id}/cancel"),
            &CancelRequest { reason },
        )
        .await?;
    println!("deployment {id}: {}", render::s(&d.state));
    if wait {
        let d = follow(api, id, true).await?;
        render::deployment(&d);
        return Ok(if d.state == DeploymentState::Cancelled {
            0
        } else {
            1
        });
    }
    Ok(0)
}

/// Asks for a check of a target; with `wait`, follows it to its result.
async fn check(api: &ApiClient, name: &str, wait: bool) -> anyhow::Result<i32> {
    let asked: CheckingView = api
        .post_as(&format!("/api/targets/{name}/health-check"), &json!({}))
        .await?;
    let id = asked.check;
    println!(
        "checking {name}: check {id} in pool {} ({})",
        asked.pool,
        asked.rule.map_or(String::new(), |r| render::s(&r))
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
    println!("{}", render::check_result(name, &r));
    Ok(
        if matches!(
            r.state,
            HealthState::Healthy | HealthState::HealthyWithWarnings
        ) {
            0
        } else {
            1
        },
    )
}

/// Waits for the result of a check (`asked`: the answer of `POST …/health-check`) in the
/// target's history. `None` 10 s after the check's deadline: the planner calls the target
/// unavailable at the deadline, and a check replaced by a newer one is never answered.
pub(crate) async fn check_result(
    api: &ApiClient,
    name: &str,
    asked: &CheckingView,
) -> anyhow::Result<Option<HealthRecordView>> {
    let give_up = asked.deadline_at.map_or_else(
        || std::time::SystemTime::now() + Duration::from_secs(120),
        |d| {
            std::time::UNIX_EPOCH
                + Duration::from_millis(u64::try_from(d.millis()).unwrap_or(0))
                + Duration::from_secs(10)
        },
    );
    while std::time::SystemTime::now() < give_up {
        let h: HealthHistory = api.get_as(&format!("/api/targets/{name}/health")).await?;
        if let Some(r) = h.history.into_iter().find(|r| r.check == asked.check) {
            return Ok(Some(r));
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
    // The file goes as written: the planner's answer names the field at fault in it.
    let created: Created = api.post_as("/api/deployments", &body).await?;
    let id = created.id.to_string();
    println!("deployment {id} accepted");
    if !wait {
        return Ok(0);
    }
    let d = follow(api, &id, true).await?;
    render::deployment(&d);
    Ok(if d.state == DeploymentState::Succeeded {
        0
    } else {
        1
    })
}

/// Polls a deployment until it ends, printing each step's progress when `print` is set.
pub(crate) async fn follow(
    api: &ApiClient,
    id: &str,
    print: bool,
) -> anyhow::Result<DeploymentDetail> {
    let mut last = String::new();
    loop {
        let d: DeploymentDetail = api.get_as(&format!("/api/deployments/{id}")).await?;
        let line = render::progress(&d);
        if print && line != last {
            println!("{line}");
            last = line;
        }
        if d.state.is_terminal() {
            return Ok(d);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn logs(api: &ApiClient, id: &str, task: Option<&str>) -> anyhow::Result<()> {
    let d: DeploymentDetail = api.get_as(&format!("/api/deployments/{id}")).await?;
    let mut tasks: Vec<(String, String)> = Vec::new();
    for step in &d.steps {
        for t in &step.tasks {
            let label = format!(
                "{} · {} · pool {}",
                step.name,
                t.target.as_ref().map_or("(no target)", |t| t.as_str()),
                t.pool
            );
            tasks.push((t.id.to_string(), label));
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
        println!("== task {task} ({label})");
        // Page by page, so a long log is printed as it comes rather than held whole.
        let mut after = None;
        loop {
            let page = api.task_log_page(id, &task, after).await?;
            for l in &page.lines {
                // attempt.run: a run above 1 is a redelivery after a worker was lost.
                let run = format!("{}.{}", l.attempt, l.run);
                match l.stream {
                    OutputStream::Stderr => println!("{run} ! {}", l.line),
                    OutputStream::Stdout => println!("{run}   {}", l.line),
                }
            }
            if !page.more || page.next.is_none() {
                break;
            }
            after = page.next;
        }
    }
    Ok(())
}

/// A value of a request field, or an error naming the field (as the planner would).
fn field<T, E: std::fmt::Display>(name: &str, parsed: Result<T, E>) -> anyhow::Result<T> {
    parsed.map_err(|e| anyhow::anyhow!("{name}: {e}"))
}
