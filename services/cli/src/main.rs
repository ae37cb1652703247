//! `shoal`: the command line over the planner's HTTP API, and `shoal demo`.

mod audit;
mod demo;
mod explain;
mod live;
mod logs;
mod package;
mod render;
mod watch;

use anyhow::{Context as _, bail};
use clap::error::ErrorKind;
use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use serde_json::{Value, json};
use shoal_cli::client::ApiClient;
use shoal_cli::exit::{self, Refused};
use shoal_cli::{ids, input};
use shoal_shared::api::{
    CancelRequest, CheckingView, CreateDeployment, CreatePool, CreateTarget, Created,
    DeploymentDetail, DeploymentSummary, DrainView, HealthHistory, HealthRecordView, TargetView,
    UpdateTarget,
};
use shoal_shared::{
    DeploymentState, EnvironmentName, HealthCheck, HealthState, PoolName, RegionName, RoleName,
    TargetKind, TargetName,
};
use std::path::PathBuf;
use std::time::Duration;

/// Where the planner's API is unless `--api` or `SHOAL_API` says otherwise.
const DEFAULT_API: &str = "http://127.0.0.1:8080";

/// Run deployment work on regional worker pools.
///
/// Deployment and task ids may be given by their first characters (as `deployment show`
/// prints them) when those name one. Exit codes: 0 ok, 1 error, 2 usage, 3 failed,
/// 4 cancelled, 5 timed out, 6 planner unreachable, 7 refused (4xx), 8 planner failed (5xx),
/// 130 interrupted.
#[derive(Debug, Parser)]
#[command(name = "shoal", version)]
struct Cli {
    /// The planner's HTTP API: http://HOST:PORT, or HOST:PORT.
    #[arg(
        long,
        env = "SHOAL_API",
        default_value = DEFAULT_API,
        global = true,
        value_parser = input::api_url
    )]
    api: String,
    /// The API token to send (`shoal_…`); see `shoal token --help`. Prefer the variable to
    /// the flag: a flag shows in the process list.
    #[arg(long, env = "SHOAL_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// A file holding the API token, read when needed (e.g. the planner's
    /// DATA_DIR/admin.token); --token wins when both are set.
    #[arg(long, env = "SHOAL_TOKEN_FILE", global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// How to print answers: text (tables, for people) or json (the API's answer as one JSON
    /// document, for scripts).
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Cmd,
}

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Tables and lines for people (coloured on a terminal unless NO_COLOR is set).
    Text,
    /// The planner's answer as one JSON document on stdout, nothing else.
    Json,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Worker pools.
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Deployment targets.
    #[command(subcommand)]
    Target(TargetCmd),
    /// Submit a deployment described in a TOML or JSON file (the API's structure).
    Deploy {
        /// The deployment: `.json` is read as JSON, `.toml` as TOML, any other name by its
        /// content (JSON when it starts with `{`).
        file: PathBuf,
        /// Follow it: every task's state and why it waits, retries, the output of a failed
        /// task; exit non-zero unless it succeeds. Ctrl-C stops following, not the deployment.
        #[arg(long)]
        wait: bool,
        /// With --wait: also every task's output as it arrives, each line prefixed with its
        /// task (`step · target`), `!` marking stderr.
        #[arg(long, requires = "wait")]
        logs: bool,
        /// Set a variable in every step (`KEY=VALUE`) or in one step (`STEP.KEY=VALUE`),
        /// over the file's; repeat for several.
        #[arg(long = "var", value_name = "[STEP.]KEY=VALUE", value_parser = input::var)]
        vars: Vec<String>,
        /// Set a sensitive variable in every step (`KEY`) or in one (`STEP.KEY`), its value
        /// read from this command's environment variable ENV (default: KEY), never from the
        /// command line; it is sealed by the planner and shown as `********`.
        #[arg(long = "sensitive-var", value_name = "[STEP.]KEY[=ENV]")]
        sensitive_vars: Vec<String>,
    },
    /// Deployments.
    #[command(subcommand)]
    Deployment(DeploymentCmd),
    /// Output of a deployment's tasks (all, or one).
    Logs {
        /// The deployment: its id or the first characters of it.
        id: String,
        /// One task: its id or the first characters of it, as `deployment show` prints it.
        task: Option<String>,
        /// Follow it: the output there is, then new output as it arrives, until the task (or
        /// every task of the deployment, each line prefixed with its task) has ended; exits as
        /// `deploy --wait` does (0 only if it succeeded).
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Workers, their pools and liveness.
    Workers,
    /// One worker: maintenance drain and resume.
    #[command(subcommand)]
    Worker(WorkerCmd),
    /// Cancel a deployment: queued tasks never start, running ones are stopped.
    Cancel {
        /// The deployment: its id or the first characters of it.
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
        /// Only one deployment's events: its id or the first characters of it.
        #[arg(long, conflicts_with = "stream")]
        deployment: Option<String>,
        /// Only one stream's events: deployment/ID, target/NAME, pool/NAME, worker/NAME,
        /// token/NAME or rejected.
        #[arg(long, value_parser = input::stream)]
        stream: Option<input::Stream>,
        /// Only events after this sequence number (the `seq` of the last one seen).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many events (1-10000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// The event feed (JetStream stream SHOAL_EVENTS) integrators follow.
    #[command(subcommand)]
    Feed(FeedCmd),
    /// Audits: export the log with its hash chain and the planner's signature, verify an
    /// export offline, explain from the events why a task ran where it did.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// API tokens (admin): who may read (viewer), deploy and cancel (deployer), or manage
    /// pools, targets, workers and tokens (admin).
    #[command(subcommand)]
    Token(TokenCmd),
    /// The package feed: push a file as a version of a package, list versions, remove one.
    #[command(subcommand)]
    Package(PackageCmd),
    /// Run the whole system on this machine and show a deployment routed to pools.
    Demo {
        /// Stay up after the demo deployment (Ctrl-C stops everything).
        #[arg(long)]
        keep: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// E.g. `shoal completions bash > ~/.local/share/bash-completion/completions/shoal`,
    /// `shoal completions zsh > "${fpath[1]}/_shoal"`,
    /// `shoal completions fish > ~/.config/fish/completions/shoal.fish`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum FeedCmd {
    /// Make or move an integrator's consumer of the feed (`feed-<NAME>`, the one its NATS
    /// identity reads through, from `shoal-planner nats-config --integrator NAME`): it
    /// delivers the records after --after, on --filter if given (admin).
    Consumer {
        /// The integrator.
        name: String,
        /// Deliver the records after this log sequence (0: from the first), from the frame
        /// that holds the next one: skip its records up to this one.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Only records on this subject of the feed, e.g. `shoal.events.deployment.>` or
        /// `shoal.events.*.*.DeploymentFinished`.
        #[arg(long)]
        filter: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCmd {
    /// Write the log's records as stored, with their chain links, and the planner's
    /// signature of the last one (JSON lines) — for `shoal audit verify` (admin).
    Export {
        /// Only the records from one deployment's first to its last (its own marked in
        /// scope; the records between stay, the chain needs them): its id or a prefix.
        #[arg(long)]
        deployment: Option<String>,
        /// The first record (a sequence number).
        #[arg(long)]
        from: Option<u64>,
        /// The last record (default: the log's last durable one).
        #[arg(long)]
        to: Option<u64>,
        /// Write it to this file instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Check an export offline, without the planner: every record's hash, its link to the
    /// record before, what it shows against its bytes, and the planner's signature; names
    /// the first bad record and exits 3 when it does not verify.
    Verify {
        /// The export.
        file: PathBuf,
        /// The planner's public key (its `signing.key.pub`): the signature must be by it.
        /// Without it the export is checked against the key it names (intact, but not
        /// proven to be the planner's).
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
    /// Why a task ran where it did, from the events alone: who asked, the routing rule and
    /// pool, the target's health when planned, each attempt and run.
    Explain {
        /// The task's id.
        task: String,
    },
}

#[derive(Debug, Subcommand)]
enum PoolCmd {
    /// Register a pool.
    Add {
        /// The pool's name (letters, digits, `-`, `_`).
        name: String,
        /// The region its workers run in.
        #[arg(long)]
        region: Option<String>,
        /// What the pool is for.
        #[arg(long)]
        description: Option<String>,
        /// The public key its sensitive variables are sealed to: a file written by
        /// `shoal-planner pool-keygen` (`<pool>.xpub`) or the key itself (`X…`).
        #[arg(long, value_name = "FILE|KEY")]
        sealing_key: Option<String>,
    },
    /// Set or rotate the public key a pool's sensitive variables are sealed to (give its
    /// workers the new secret key first, beside the old one, during a rotation).
    SetKey {
        /// The pool.
        name: String,
        /// A file written by `shoal-planner pool-keygen` (`<pool>.xpub`) or the key itself.
        #[arg(value_name = "FILE|KEY")]
        key: String,
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
        /// The target's name (letters, digits, `-`, `_`).
        name: String,
        /// azure-web-app, azure-service-fabric, azure-cloud-service, cloud-region, kubernetes, ssh
        #[arg(long)]
        kind: String,
        /// The environment it belongs to (deployments name one).
        #[arg(long)]
        environment: String,
        /// A role (repeat for several).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Where it is managed; with no health check, a TCP probe of its host and port.
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
        /// The HTTP status --check-http expects (200 when unset).
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
    Show {
        /// The target's name.
        name: String,
    },
    /// Check a target's health now, on a worker of its pool.
    Check {
        /// The target's name.
        name: String,
        /// Wait for the result; exit 0 if healthy, 3 if not, 5 if no result came in time.
        #[arg(long)]
        wait: bool,
    },
    /// A target's health history.
    Health {
        /// The target's name.
        name: String,
    },
    /// Set or clear a target's default pool.
    SetPool {
        /// The target's name.
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
    Drain {
        /// The worker's name.
        name: String,
    },
    /// Let a drained worker take tasks again.
    Resume {
        /// The worker's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// Make a token; it is printed once and the planner keeps only its hash.
    Create {
        /// Its name, recorded as the actor of everything done with it.
        #[arg(long)]
        name: String,
        /// viewer, deployer or admin.
        #[arg(long)]
        role: String,
    },
    /// The tokens: names, roles, who made them and when (never the tokens).
    List,
    /// Revoke a token: from now on it gets 401.
    Revoke {
        /// The token's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum PackageCmd {
    /// Push a file (.tar.gz, .zip, anything) as a version of a package (deployer). Only the
    /// chunks the feed lacks are stored; the same bytes again change nothing.
    Push {
        /// The file.
        file: PathBuf,
        /// The package's id, e.g. `web`.
        #[arg(long)]
        id: String,
        /// Its semantic version, e.g. `1.2.3`.
        #[arg(long)]
        version: String,
    },
    /// The versions in the feed, of every package or of one.
    List {
        /// Only this package.
        id: Option<String>,
    },
    /// What acquiring packages moved, per version and pool: bytes fetched from the feed
    /// against bytes the tasks used (the rest came from the workers' caches).
    Stats {
        /// Only this package.
        id: Option<String>,
    },
    /// Remove a version from the feed (admin); refused while an unfinished deployment
    /// deploys it.
    Rm {
        /// The package's id.
        id: String,
        /// The version to remove.
        version: String,
    },
}

#[derive(Debug, Subcommand)]
enum DeploymentCmd {
    /// Recent deployments, newest first.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One deployment with every task: where it ran and why.
    Show {
        /// The deployment: its id or the first characters of it.
        id: String,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let code = match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::code_of(&e)
        }
    };
    std::process::exit(code);
}

/// Prints `value` as one JSON document with `--output json`, else as `text` renders it.
fn show<T: Serialize + ?Sized>(
    out: Output,
    value: &T,
    text: impl FnOnce(&T),
) -> anyhow::Result<()> {
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Text => text(value),
    }
    Ok(())
}

/// Commands that print text only; `--output json` with them is a usage error rather than
/// text where a script expects JSON.
fn text_only(cmd: &Cmd) -> Option<&'static str> {
    match cmd {
        Cmd::Deploy { .. } => Some("deploy"),
        Cmd::Logs { follow: true, .. } => Some("logs --follow"),
        Cmd::Demo { .. } => Some("demo"),
        Cmd::Completions { .. } => Some("completions"),
        _ => None,
    }
}

/// The command's exit code (see [`exit`]).
async fn run(cli: Cli) -> anyhow::Result<i32> {
    let out = cli.output;
    if let (Output::Json, Some(name)) = (out, text_only(&cli.command)) {
        Cli::command()
            .error(
                ErrorKind::ArgumentConflict,
                format!("`shoal {name}` prints text only; --output json is for the other commands"),
            )
            .exit();
    }
    let api = ApiClient::new(&cli.api).waiting_for_start();
    let api = match (cli.token, cli.token_file) {
        (Some(token), _) => api.with_token(&token),
        (None, Some(file)) => api.with_token_file(file),
        (None, None) => api,
    };
    match cli.command {
        Cmd::Pool(cmd) => pool(&api, out, cmd).await?,
        Cmd::Target(cmd) => return target(&api, out, cmd).await,
        Cmd::Deploy {
            file,
            wait,
            logs,
            vars,
            sensitive_vars,
        } => {
            let follow = Following { wait, logs };
            return deploy(&api, &file, &vars, &sensitive_vars, follow).await;
        }
        Cmd::Deployment(DeploymentCmd::List { limit }) => {
            let list: Vec<DeploymentSummary> = api
                .get_as(&format!("/api/deployments?limit={limit}"))
                .await?;
            show(out, &list, |l| render::deployments(l))?;
        }
        Cmd::Deployment(DeploymentCmd::Show { id }) => {
            let id = ids::deployment(&api, &id).await?;
            let d: DeploymentDetail = api.get_as(&format!("/api/deployments/{id}")).await?;
            show(out, &d, render::deployment)?;
        }
        Cmd::Logs { id, task, follow } => {
            return logs::run(&api, out, &id, task.as_deref(), follow).await;
        }
        Cmd::Workers | Cmd::Worker(WorkerCmd::List) => {
            let list: Vec<shoal_shared::api::WorkerView> = api.get_as("/api/workers").await?;
            show(out, &list, |l| render::workers(l))?;
        }
        Cmd::Worker(WorkerCmd::Drain { name }) => {
            let v: DrainView = api
                .post_as(&format!("/api/workers/{name}/drain"), &json!({}))
                .await?;
            show(out, &v, |_| {
                println!(
                    "worker {name} is draining: it takes no new tasks until `shoal worker resume {name}`"
                );
            })?;
        }
        Cmd::Worker(WorkerCmd::Resume { name }) => {
            let v: DrainView = api
                .post_as(&format!("/api/workers/{name}/resume"), &json!({}))
                .await?;
            show(out, &v, |_| println!("worker {name} takes tasks again"))?;
        }
        Cmd::Cancel { id, reason, wait } => return cancel(&api, out, &id, reason, wait).await,
        Cmd::Events {
            deployment,
            stream,
            after,
            limit,
        } => events(&api, out, deployment, stream, after, limit).await?,
        Cmd::Audit(cmd) => return audit::run(&api, out, cmd).await,
        Cmd::Feed(FeedCmd::Consumer {
            name,
            after,
            filter,
        }) => {
            let v = api
                .put(
                    &format!("/api/feed/consumers/{name}"),
                    &json!({"after": after, "filter": filter}),
                )
                .await?;
            show(out, &v, |v| {
                println!(
                    "integrator {name} reads the records after {after} through consumer {} of stream {}",
                    v["consumer"].as_str().unwrap_or("?"),
                    v["stream"].as_str().unwrap_or("?")
                );
            })?;
        }
        Cmd::Token(cmd) => token(&api, out, cmd).await?,
        Cmd::Package(cmd) => package::run(&api, out, cmd).await?,
        Cmd::Demo { keep } => return demo::run(keep).await,
        Cmd::Completions { shell } => {
            // Into a buffer first: the generator panics on a failed write (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "shoal", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)
                .context("cannot write the completion script")?;
        }
    }
    Ok(exit::OK)
}

/// `shoal token …`.
async fn token(api: &ApiClient, out: Output, cmd: TokenCmd) -> anyhow::Result<()> {
    use shoal_shared::api::{CreatedToken, NewToken, TokenView};
    match cmd {
        TokenCmd::Create { name, role } => {
            let body = NewToken {
                name: shoal_shared::TokenName::parse(name).map_err(|e| Refused(e.to_string()))?,
                role: role.parse().map_err(Refused)?,
            };
            let t: CreatedToken = api.post_as("/api/tokens", &body).await?;
            show(out, &t, |t| {
                println!("{}", t.token);
                eprintln!(
                    "token \"{}\" ({}) made: this is the only time it is shown; keep it in a secret store and use it as SHOAL_TOKEN",
                    t.name, t.role
                );
            })?;
        }
        TokenCmd::List => {
            let list: Vec<TokenView> = api.get_as("/api/tokens").await?;
            show(out, &list, |l| render::tokens(l))?;
        }
        TokenCmd::Revoke { name } => {
            let name = shoal_shared::TokenName::parse(name).map_err(|e| Refused(e.to_string()))?;
            api.delete(&format!("/api/tokens/{name}")).await?;
            show(out, &json!({"revoked": name}), |_| {
                println!("token \"{name}\" revoked: it no longer opens the API");
            })?;
        }
    }
    Ok(())
}

/// `shoal events`: `--deployment` and `--stream deployment/…` take an id's first characters.
async fn events(
    api: &ApiClient,
    out: Output,
    deployment: Option<String>,
    stream: Option<input::Stream>,
    after: u64,
    limit: usize,
) -> anyhow::Result<()> {
    let stream = match (deployment, stream) {
        (Some(d), _) | (None, Some(input::Stream::Deployment(d))) => {
            Some(format!("deployment/{}", ids::deployment(api, &d).await?))
        }
        (None, Some(input::Stream::Other(s))) => Some(s),
        (None, None) => None,
    };
    let mut path = format!("/api/events?after={after}&limit={limit}");
    if let Some(s) = stream {
        path.push_str(&format!("&stream={s}"));
    }
    let list: Vec<shoal_shared::api::EventView> = api.get_as(&path).await?;
    show(out, &list, |l| render::events(l))
}

/// `shoal pool …`.
async fn pool(api: &ApiClient, out: Output, cmd: PoolCmd) -> anyhow::Result<()> {
    match cmd {
        PoolCmd::Add {
            name,
            region,
            description,
            sealing_key,
        } => {
            let req = CreatePool {
                name: field("name", PoolName::parse(name))?,
                region: region
                    .map(|r| field("region", RegionName::parse(r)))
                    .transpose()?,
                description,
                sealing_key: sealing_key.as_deref().map(pool_key).transpose()?,
            };
            let p: shoal_shared::api::PoolView = api.post_as("/api/pools", &req).await?;
            show(out, &p, |p| println!("pool {} registered", p.name))?;
        }
        PoolCmd::List => {
            let list: Vec<shoal_shared::api::PoolView> = api.get_as("/api/pools").await?;
            show(out, &list, |l| render::pools(l))?;
        }
        PoolCmd::Rm { name } => pool_rm(api, out, &name).await?,
        PoolCmd::SetKey { name, key } => {
            let name = field("name", PoolName::parse(name))?;
            let req = shoal_shared::api::SetPoolKey {
                key: pool_key(&key)?,
            };
            let path = format!("/api/pools/{name}/key");
            let p: shoal_shared::api::PoolView = api.put_as(&path, &req).await?;
            show(out, &p, |p| {
                println!(
                    "pool {}: sensitive variables are sealed to {}",
                    p.name,
                    key_text(p)
                )
            })?;
        }
    }
    Ok(())
}

/// A pool public key given as a file (`<pool>.xpub`) or as the key itself.
fn pool_key(given: &str) -> anyhow::Result<shoal_shared::secret::PoolKey> {
    let text = if given.starts_with('X') && !std::path::Path::new(given).exists() {
        given.to_owned()
    } else {
        std::fs::read_to_string(given)
            .with_context(|| format!("cannot read pool key file {given}"))?
    };
    field("key", shoal_shared::secret::PoolKey::parse(text.trim()))
}

fn key_text(p: &shoal_shared::api::PoolView) -> String {
    p.sealing_key
        .as_ref()
        .map_or_else(|| "no key".to_owned(), ToString::to_string)
}

/// `shoal target …`: the exit code.
async fn target(api: &ApiClient, out: Output, cmd: TargetCmd) -> anyhow::Result<i32> {
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
            let t: TargetView = api.post_as("/api/targets", &req).await?;
            show(out, &t, |_| println!("target {name} registered"))?;
        }
        TargetCmd::List => {
            let list: Vec<TargetView> = api.get_as("/api/targets").await?;
            show(out, &list, |l| render::targets(l))?;
        }
        TargetCmd::Show { name } => {
            let t: TargetView = api.get_as(&format!("/api/targets/{name}")).await?;
            show(out, &t, render::target)?;
        }
        TargetCmd::Check { name, wait } => {
            return check(api, out, &name, wait).await;
        }
        TargetCmd::Health { name } => {
            let h: HealthHistory = api.get_as(&format!("/api/targets/{name}/health")).await?;
            show(out, &h, render::health)?;
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
            show(out, &t, |t| match &t.target.default_pool {
                Some(p) => println!("target {name} now defaults to pool {p}"),
                None => println!("target {name} has no default pool now (global default applies)"),
            })?;
        }
        TargetCmd::SetCheck(args) => set_check(api, out, args).await?,
        TargetCmd::Rm { name } => target_rm(api, out, &name).await?,
    }
    Ok(exit::OK)
}

/// `shoal pool rm`; with `--output json`, `{"removed": NAME}` (the planner answers 204).
async fn pool_rm(api: &ApiClient, out: Output, name: &str) -> anyhow::Result<()> {
    let name = field("name", PoolName::parse(name.to_owned()))?;
    api.delete(&format!("/api/pools/{name}")).await?;
    show(out, &json!({ "removed": name }), |_| {
        println!("pool {name} removed; its queue consumer is deleted");
    })
}

/// `shoal target rm`; with `--output json`, `{"removed": NAME}` (the planner answers 204).
async fn target_rm(api: &ApiClient, out: Output, name: &str) -> anyhow::Result<()> {
    let name = field("name", TargetName::parse(name.to_owned()))?;
    api.delete(&format!("/api/targets/{name}")).await?;
    show(out, &json!({ "removed": name }), |_| {
        println!("target {name} removed; it is no longer checked or deployed to");
    })
}

/// `shoal target set-check`: sets the probe (and interval) and says what is checked now (with
/// `--output json`, the target as the planner answers it).
async fn set_check(api: &ApiClient, out: Output, args: SetCheck) -> anyhow::Result<()> {
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
    show(out, &t, |t| checked_now(name, t))
}

/// What `set-check` says a target is checked with now.
fn checked_now(name: &str, t: &TargetView) {
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

/// `shoal cancel`: the exit code; with `wait`, [`exit::OK`] once it has ended cancelled (or
/// succeeded first), [`exit::FAILED`] if it failed first.
async fn cancel(
    api: &ApiClient,
    out: Output,
    id: &str,
    reason: Option<String>,
    wait: bool,
) -> anyhow::Result<i32> {
    let id = ids::deployment(api, id).await?.to_string();
    let d: DeploymentSummary = api
        .post_as(
            &format!("/api/deployments/{id}/cancel"),
            &CancelRequest { reason },
        )
        .await?;
    if !wait {
        show(out, &d, |d| {
            println!("deployment {id}: {}", render::s(&d.state))
        })?;
        return Ok(exit::OK);
    }
    if out == Output::Text {
        println!("deployment {id}: {}", render::s(&d.state));
    }
    let d = follow(api, &id, out == Output::Text).await?;
    show(out, &d, render::deployment)?;
    Ok(match d.state {
        DeploymentState::Cancelled => exit::OK,
        state => exit::for_deployment(state),
    })
}

/// Asks for a check of a target; with `wait`, follows it to its result: [`exit::FAILED`]
/// unless healthy, [`exit::TIMED_OUT`] without a result by the check's deadline.
async fn check(api: &ApiClient, out: Output, name: &str, wait: bool) -> anyhow::Result<i32> {
    let asked: CheckingView = api
        .post_as(&format!("/api/targets/{name}/health-check"), &json!({}))
        .await?;
    let id = asked.check;
    let asked_line = || {
        println!(
            "checking {name}: check {id} in pool {} ({})",
            asked.pool,
            asked.rule.map_or(String::new(), |r| render::s(&r))
        );
    };
    if !wait {
        show(out, &asked, |_| asked_line())?;
        return Ok(exit::OK);
    }
    if out == Output::Text {
        asked_line();
    }
    let Some(r) = check_result(api, name, &asked).await? else {
        eprintln!(
            "{name}: no result of check {id} by its deadline; see `shoal target health {name}`"
        );
        return Ok(exit::TIMED_OUT);
    };
    show(out, &r, |r| println!("{}", render::check_result(name, r)))?;
    Ok(
        if matches!(
            r.state,
            HealthState::Healthy | HealthState::HealthyWithWarnings
        ) {
            exit::OK
        } else {
            exit::FAILED
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

/// Reads a deployment file: JSON or TOML (the same structure), by its extension, else by
/// its content.
fn read_deployment(file: &std::path::Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let ext = file
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let json = match ext.as_deref() {
        Some("json") => true,
        Some("toml") => false,
        _ => text.trim_start().starts_with('{'),
    };
    if json {
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", file.display()))
    } else {
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", file.display()))
    }
}

/// The deployment of `body` with the `--var`s set: `KEY=VALUE` in every step, `STEP.KEY=VALUE`
/// in the step of that name (a key has no `.`, so the last one splits).
fn with_vars(
    file: &std::path::Path,
    body: Value,
    vars: &[String],
    sensitive: &[String],
) -> anyhow::Result<CreateDeployment> {
    let mut d: CreateDeployment = serde_path_to_error::deserialize(body)
        .map_err(|e| anyhow::anyhow!("{}: {}: {}", file.display(), e.path(), e.inner()))?;
    for var in vars {
        let Some((name, value)) = var.split_once('=') else {
            bail!("--var {var}: expected KEY=VALUE or STEP.KEY=VALUE");
        };
        set_in_steps(&mut d, "--var", var, name, |s, key| {
            s.variables.insert(key.to_owned(), value.to_owned());
        })?;
    }
    for var in sensitive {
        let (name, env) = var.split_once('=').unwrap_or((var, ""));
        let key = name.rsplit_once('.').map_or(name, |(_, k)| k);
        let env = if env.is_empty() { key } else { env };
        let value = std::env::var(env).map_err(|_| {
            Refused(format!(
                "--sensitive-var {var}: environment variable {env} is not set; export it first (the value is never taken from the command line)"
            ))
        })?;
        set_in_steps(&mut d, "--sensitive-var", var, name, |s, key| {
            let value = shoal_shared::secret::SecretString::new(value.clone());
            s.sensitive_variables.insert(key.to_owned(), value);
        })?;
    }
    Ok(d)
}

/// Sets `[STEP.]KEY` with `set` in every step, or in the named one (a key has no `.`, so
/// the last one splits).
fn set_in_steps(
    d: &mut CreateDeployment,
    flag: &str,
    given: &str,
    name: &str,
    mut set: impl FnMut(&mut shoal_shared::api::StepRequest, &str),
) -> anyhow::Result<()> {
    let (step, key) = match name.rsplit_once('.') {
        Some((step, key)) => (Some(step), key),
        None => (None, name),
    };
    let mut hit = false;
    for s in d
        .steps
        .iter_mut()
        .filter(|s| step.is_none_or(|n| n == s.name))
    {
        set(s, key);
        hit = true;
    }
    if let (Some(step), false) = (step, hit) {
        let known: Vec<&str> = d.steps.iter().map(|s| s.name.as_str()).collect();
        return Err(Refused(format!(
            "{flag} {given}: no step \"{step}\" (steps: {})",
            known.join(", ")
        ))
        .into());
    }
    Ok(())
}

/// What `deploy` follows after submitting: `--wait`, `--logs`.
#[derive(Debug, Clone, Copy)]
struct Following {
    wait: bool,
    logs: bool,
}

async fn deploy(
    api: &ApiClient,
    file: &std::path::Path,
    vars: &[String],
    sensitive: &[String],
    follow: Following,
) -> anyhow::Result<i32> {
    let body = read_deployment(file)?;
    // Without --var the file goes as written: the planner's answer names the field at fault.
    let created: Created = if vars.is_empty() && sensitive.is_empty() {
        api.post_as("/api/deployments", &body).await?
    } else {
        let d = with_vars(file, body, vars, sensitive)?;
        api.post_as("/api/deployments", &d).await?
    };
    let id = created.id.to_string();
    println!("deployment {id} accepted");
    if !follow.wait {
        return Ok(exit::OK);
    }
    let mut watch = watch::Watch::new(api, &id);
    if follow.logs {
        watch = watch.with_output(live::spawn(api, &id));
    }
    let d = tokio::select! {
        d = watch.run() => d?,
        _ = tokio::signal::ctrl_c() => return Ok(interrupted(api, &id).await),
    };
    render::deployment(&d);
    Ok(exit::for_deployment(d.state))
}

/// After Ctrl-C while following deployment `id`: says it goes on, what is left and how to
/// cancel it; the exit code.
async fn interrupted(api: &ApiClient, id: &str) -> i32 {
    // What is left, if the planner says so quickly: the user is waiting for the prompt.
    let d = tokio::time::timeout(
        Duration::from_secs(3),
        api.get_as::<DeploymentDetail>(&format!("/api/deployments/{id}")),
    )
    .await
    .ok()
    .and_then(Result::ok);
    // The commands must reach the same planner as this one did.
    let from_env = std::env::var("SHOAL_API").is_ok_and(|e| e.trim_end_matches('/') == api.base());
    let api_flag = if from_env || api.base() == DEFAULT_API {
        String::new()
    } else {
        format!(" --api {}", api.base())
    };
    println!();
    for line in watch::interrupted(id, d.as_ref(), &api_flag) {
        println!("{line}");
    }
    watch::EXIT_INTERRUPTED
}

/// Follows a deployment until it ends: showing every task as it goes when `print` is set,
/// quietly otherwise (`--output json` prints only the final answer).
pub(crate) async fn follow(
    api: &ApiClient,
    id: &str,
    print: bool,
) -> anyhow::Result<DeploymentDetail> {
    if print {
        return watch::Watch::new(api, id).run().await;
    }
    loop {
        let d: DeploymentDetail = api.get_as(&format!("/api/deployments/{id}")).await?;
        if d.state.is_terminal() {
            return Ok(d);
        }
        tokio::time::sleep(watch::POLL).await;
    }
}

/// A value of a request field, or an error naming the field (as the planner would).
fn field<T, E: std::fmt::Display>(name: &str, parsed: Result<T, E>) -> anyhow::Result<T> {
    parsed.map_err(|e| Refused(format!("{name}: {e}")).into())
}

#[cfg(test)]
#[path = "main_tests.rs"]
mod tests;
