//! The container set-up. Without an engine: `.dockerignore` keeps the build dir out of the
//! context, `docker-compose.yml` builds one image for every shoal service and gives every
//! service a health check that its image can run, `docker compose config` accepts the file
//! (where compose is installed), the worker's health-check script, the planner's
//! `/healthz`, and the README documenting both. With an engine (`docker`): the whole
//! topology in containers, from images made on this machine (`deploy/test-images.sh`): it
//! comes up healthy, routes each region's tasks to that region's containers, and loses
//! nothing while a region is cut off, a hub node, a worker and the planner are killed.

use shoal_e2e::Cluster;
use shoal_e2e::checks;
use shoal_e2e::compose::{self, Compose};
use shoal_e2e::serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(name: &str) -> String {
    let path = repo().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether `.dockerignore` leaves `path` (relative to the context) out, by Docker's rules:
/// patterns are globs relative to the context root (`*` and `?` within one path element,
/// `**` across elements), a pattern that matches a directory leaves out all below it, and
/// the last matching pattern wins (`!` puts a path back).
fn ignored(patterns: &[String], path: &str) -> bool {
    let mut out = false;
    for pattern in patterns {
        let (keep, glob_text) = match pattern.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, pattern.as_str()),
        };
        let glob_text = glob_text.trim_start_matches('/').trim_end_matches('/');
        let mut prefix_end = path.match_indices('/').map(|(i, _)| i).collect::<Vec<_>>();
        prefix_end.push(path.len());
        if prefix_end
            .iter()
            .any(|&end| glob(glob_text.as_bytes(), &path.as_bytes()[..end]))
        {
            out = !keep;
        }
    }
    out
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p {
        [] => s.is_empty(),
        [b'*', b'*', b'/', rest @ ..] => {
            glob(rest, s)
                || s.iter()
                    .enumerate()
                    .any(|(i, &c)| c == b'/' && glob(rest, &s[i + 1..]))
        }
        [b'*', b'*', rest @ ..] => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        [b'*', rest @ ..] => {
            for i in 0..=s.len() {
                if glob(rest, &s[i..]) {
                    return true;
                }
                if i < s.len() && s[i] == b'/' {
                    break;
                }
            }
            false
        }
        [b'?', rest @ ..] => s.first().is_some_and(|&c| c != b'/') && glob(rest, &s[1..]),
        [c, rest @ ..] => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

fn dockerignore() -> Vec<String> {
    read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Files git tracks (what a build needs), or a few known ones where git is not available.
fn tracked_files() -> Vec<String> {
    let out = Command::new("git")
        .args(["ls-files"])
        .current_dir(repo())
        .output();
    match out {
        Ok(o) if o.status.success() && !o.stdout.is_empty() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_owned)
            .collect(),
        _ => [
            "Cargo.toml",
            "Cargo.lock",
            "services/cli/src/main.rs",
            "deploy/worker-healthcheck.sh",
        ]
        .map(str::to_owned)
        .to_vec(),
    }
}

#[test]
fn the_build_context_leaves_out_target_and_git_but_keeps_every_source() {
    let patterns = dockerignore();
    for out in [
        "target",
        "target/release/shoal",
        "target/debug/deps/x.rlib",
        "services/cli/target/debug/shoal",
        ".git/HEAD",
    ] {
        assert!(
            ignored(&patterns, out),
            "{out} is in the build context: .dockerignore must leave it out ({patterns:?})"
        );
    }
    // What the image is built from: every tracked source, manifest, vendored crate and the
    // files the Dockerfile copies.
    let needed: Vec<String> = tracked_files()
        .into_iter()
        .filter(|f| {
            f.ends_with(".rs")
                || f.ends_with("Cargo.toml")
                || f == "Cargo.lock"
                || f.starts_with("third_party/")
                || f.starts_with("deploy/")
        })
        .collect();
    assert!(needed.iter().any(|f| f == "Cargo.lock"), "{needed:?}");
    let left_out: Vec<&String> = needed.iter().filter(|f| ignored(&patterns, f)).collect();
    assert!(
        left_out.is_empty(),
        ".dockerignore leaves out files the build needs: {left_out:?}"
    );
}

#[test]
fn the_dockerignore_matcher_follows_dockers_rules() {
    let p = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert!(ignored(&p(&["target"]), "target/a/b"));
    assert!(!ignored(&p(&["target"]), "services/target"));
    assert!(ignored(&p(&["**/target"]), "services/target/x"));
    assert!(ignored(&p(&["**/target"]), "target"));
    assert!(ignored(&p(&["*.log"]), "a.log"));
    assert!(!ignored(&p(&["*.log"]), "dir/a.log"));
    assert!(!ignored(&p(&["target", "!target/keep"]), "target/keep"));
}

/// A service's field, looking through a `<<: *anchor` merge.
fn field<'a>(service: &'a Yaml, key: &str) -> &'a Yaml {
    let own = &service[key];
    if own.is_badvalue() {
        &service["<<"][key]
    } else {
        own
    }
}

fn compose() -> Yaml {
    let docs = YamlLoader::load_from_str(&read("docker-compose.yml"))
        .unwrap_or_else(|e| panic!("docker-compose.yml is not YAML: {e}"));
    docs.into_iter().next().unwrap_or(Yaml::BadValue)
}

/// Packages the runtime image installs, and the programs it copies in (by file name): its
/// `runtime-base` stage, which the final stage adds the binaries to.
fn image_programs() -> Vec<String> {
    let dockerfile = read("Dockerfile");
    let runtime = dockerfile
        .split("\nFROM ")
        .find(|stage| {
            stage
                .lines()
                .next()
                .is_some_and(|l| l.ends_with(" AS runtime-base"))
        })
        .unwrap_or_else(|| panic!("the Dockerfile has no runtime-base stage"));
    let mut programs = Vec::new();
    let joined = runtime.replace("\\\n", " ");
    for line in joined.lines() {
        if let Some((_, rest)) = line.split_once("apt-get install") {
            let list = rest.split("&&").next().unwrap_or_default();
            programs.extend(
                list.split_whitespace()
                    .filter(|w| !w.starts_with('-'))
                    .map(str::to_owned),
            );
        }
        if let Some(rest) = line.trim().strip_prefix("COPY ")
            && let Some(dest) = rest.split_whitespace().last()
            && !dest.ends_with('/')
        {
            programs.extend(dest.rsplit('/').next().map(str::to_owned));
        }
    }
    programs.extend(["shoal", "shoal-planner", "shoal-worker"].map(str::to_owned));
    programs
}

/// Programs every Debian image has (coreutils, libc-bin): health checks of one-shot services.
const BASE_PROGRAMS: [&str; 3] = ["test", "true", "getent"];

#[test]
fn compose_builds_one_image_and_every_service_has_a_health_check() {
    let doc = compose();
    let services = doc["services"]
        .as_hash()
        .unwrap_or_else(|| panic!("docker-compose.yml has no services"));
    let programs = image_programs();
    let mut images = Vec::new();
    let mut builds = Vec::new();
    for (name, service) in services {
        let name = name.as_str().unwrap_or_default();
        let image = field(service, "image").as_str().unwrap_or_default();
        images.push((name, image));
        if !field(service, "build").is_badvalue() {
            builds.push((name, image));
        }
        // Every service runs the one image: what it runs must be in it.
        let command = field(service, "command");
        let program = command[0].as_str().unwrap_or_default();
        assert!(
            programs.iter().any(|p| p == program),
            "service {name} runs {program}, which the Dockerfile does not install \
             (it installs {programs:?})"
        );

        let health = field(service, "healthcheck");
        let test = &health["test"];
        let words: Vec<&str> = test
            .as_vec()
            .map(|v| v.iter().filter_map(Yaml::as_str).collect())
            .unwrap_or_default();
        assert!(
            !words.is_empty() && words[0] != "NONE" && health["disable"].as_bool() != Some(true),
            "service {name} has no health check: {health:?}"
        );
        if words[0] == "CMD" {
            assert!(
                programs.iter().any(|p| p == words[1]) || BASE_PROGRAMS.contains(&words[1]),
                "service {name}'s health check runs {}, which the Dockerfile does not install \
                 (it installs {programs:?})",
                words[1]
            );
        }
        if name == "planner" {
            assert!(words.iter().any(|w| w.contains("/healthz")), "{words:?}");
        }
    }
    assert!(images.len() >= 10, "{images:?}");
    let first = images[0].1;
    assert!(
        !first.is_empty() && images.iter().all(|(_, i)| *i == first),
        "every service must use one image name: {images:?}"
    );
    assert_eq!(
        builds,
        vec![("planner", first)],
        "exactly one service builds the image, under the name the others use"
    );
}

#[test]
fn compose_accepts_the_file_where_it_is_installed() {
    let candidates: [&[&str]; 2] = [&["docker", "compose"], &["docker-compose"]];
    for cmd in candidates {
        let probe = Command::new(cmd[0]).args(&cmd[1..]).arg("version").output();
        let Ok(probe) = probe else { continue };
        if !probe.status.success() {
            continue;
        }
        let out = Command::new(cmd[0])
            .args(&cmd[1..])
            .args(["-f", "docker-compose.yml", "config", "-q"])
            .current_dir(repo())
            .output()
            .unwrap_or_else(|e| panic!("{cmd:?} config: {e}"));
        assert!(
            out.status.success(),
            "`{} config` refuses docker-compose.yml:\n{}{}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("`{} config` accepts docker-compose.yml", cmd.join(" "));
        return;
    }
    println!("SKIPPED: neither `docker compose` nor `docker-compose` is installed");
}

#[test]
fn the_readme_documents_healthz_and_the_image_tools() {
    let readme = read("README.md");
    assert!(
        readme.contains("| `GET /healthz` |"),
        "README's HTTP API table has no /healthz row"
    );
    let section = readme
        .split("\n## Containers\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap_or_else(|| panic!("README has no \"## Containers\" section"));
    let dockerfile = read("Dockerfile");
    let packages: Vec<String> = image_programs()
        .into_iter()
        .filter(|p| !p.starts_with("shoal") && dockerfile.contains(&format!(" {p}")))
        .collect();
    for p in &packages {
        assert!(
            section.contains(&format!("`{p}`")),
            "the image installs {p}, which README's Containers section does not name"
        );
    }
    assert!(section.contains("FROM shoal:"), "how to extend the image");
}

async fn get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    tokio::time::timeout(shoal_e2e::WAIT, s.read_to_string(&mut out)).await??;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_planner_answers_healthz_and_the_worker_check_sees_its_broker() -> anyhow::Result<()> {
    let mut c = Cluster::start(&[]).await?;
    let answer = get(c.http_port, "/healthz").await?;
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    assert!(answer.ends_with("ok"), "{answer}");

    c.worker("hc-1", "default", "local", &[])?;
    c.wait_online(&["hc-1"]).await?;
    let script = repo().join("deploy/worker-healthcheck.sh");
    let run = |url: String| {
        Command::new("bash")
            .arg(&script)
            .env("SHOAL_NATS_URL", url)
            .output()
    };
    let ok = run(c.nats.url())?;
    assert!(ok.status.success(), "{ok:?}");
    let closed = shoal_e2e::free_port()?;
    let down = run(format!("nats://127.0.0.1:{closed}"))?;
    let text = String::from_utf8_lossy(&down.stdout);
    assert!(
        !down.status.success() && text.contains(&format!("127.0.0.1:{closed}")),
        "a broker that does not answer fails the check, naming it: {down:?}"
    );
    Ok(())
}

// ----- In containers -----------------------------------------------------------------------

/// The pools of docker-compose.yml with the prefix of their workers' names.
const POOLS: [(&str, &str); 2] = [("eu-west", "eu-west-"), ("us-east", "us-east-")];
/// Targets per region: more than the region's slots (two workers × 2 in eu, one × 2 in us),
/// so that some of a region's tasks wait in its queue.
const EU_TARGETS: usize = 8;
const US_TARGETS: usize = 4;
/// How long a phase's deployment may take to end.
const PHASE: Duration = Duration::from_secs(90);
/// How long a wait for a state of the topology may take.
const SOON: Duration = Duration::from_secs(30);

/// One topology for every phase (bringing it up is most of a phase's cost); each phase ends
/// with the fault suite's checks (every task ended once in its pool, no event twice, replay
/// and the hash chain verify on the planner's volume).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_containers_regions_route_and_nothing_is_lost_to_cuts_and_kills() -> anyhow::Result<()> {
    let engine = match compose::engine()? {
        Ok(e) => e,
        Err(why) => {
            println!("SKIPPED: the container tests need a container engine: {why}");
            eprintln!("SKIPPED: the container tests need a container engine: {why}");
            return Ok(());
        }
    };
    let all = Instant::now();
    let mut t = Instant::now();
    let mut lap = |what: &str| {
        eprintln!("[containers] {what}: {:.1} s", t.elapsed().as_secs_f64());
        t = Instant::now();
    };
    compose::prepare_images()?;
    lap("images ready");
    let c = Compose::up(
        engine,
        &[
            ("SHOAL_TASK_ACK_WAIT_SECS", "3"),
            ("SHOAL_WORKER_SLOTS", "2"),
        ],
    )
    .await?;
    lap("docker compose up, every service healthy, from a clean state");
    comes_up(&c).await?;
    lap("R3 streams, networks isolate the regions");

    let routed = routes_each_region_to_its_containers(&c).await?;
    lap("a two-region deployment ran in the right containers");
    verify(&c, &routed).await?;
    lap("checks and replay");

    let d = a_killed_workers_task_goes_to_the_other_worker(&c).await?;
    lap("worker killed: its tasks went to the other worker of the pool");
    verify(&c, &d).await?;
    lap("checks and replay");

    let d = a_cut_region_waits_and_the_other_finishes(&c).await?;
    lap("region eu cut off and back: it waited, us finished");
    verify(&c, &d).await?;
    lap("checks and replay");

    let d = a_lost_hub_node_loses_nothing_and_rejoins(&c).await?;
    lap("the task stream's leader killed mid-deployment, then rejoined");
    verify(&c, &d).await?;
    lap("checks and replay");

    let d = a_restarted_planner_resumes_from_its_volume(&c, &routed).await?;
    lap("planner killed and started: resumed from its volume");
    verify(&c, &d).await?;
    lap("checks and replay");
    eprintln!(
        "[containers] all phases: {:.1} s",
        all.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Every service is healthy (checked by `up`), the planner made its streams R3 on the hub's
/// cluster and said so, and a region's containers reach only their leaf node.
async fn comes_up(c: &Compose) -> anyhow::Result<()> {
    let states = c.states().await?;
    let count = |service: &str| states.iter().filter(|s| s.service == service).count();
    assert_eq!(
        (count("worker-eu"), count("worker-us")),
        (2, 1),
        "{states:?}"
    );
    let log = c.logs("planner").await;
    assert!(
        log.contains("JetStream streams R3: server \"hub-"),
        "the planner does not say it keeps its streams on 3 servers:\n{log}"
    );
    // Every stream of the planner on three servers (the feed's and the packages' are made
    // as the planner starts its services).
    let streams = [
        "SHOAL_TASKS",
        "SHOAL_RESULTS",
        "SHOAL_EVENTS",
        "OBJ_SHOAL_PACKAGES",
    ];
    let replicas = compose::poll("every stream made, R3", SOON, || async {
        let jsz = c.jsz("nats-hub-1").await?;
        let found = stream_replicas(&jsz);
        Ok(streams
            .iter()
            .all(|s| found.iter().any(|(n, _, _)| n == s))
            .then_some(found))
    })
    .await?;
    for (name, r, _) in &replicas {
        assert_eq!(*r, 3, "{name} has {r} replicas: {replicas:?}");
    }
    // A region's containers reach their leaf node only; the leaf node reaches the hub's nodes
    // only.
    let worker = c.containers("worker-eu").await?.remove(0);
    let leaf = c.container("nats-eu").await?;
    let resolves = |container: String, host: &'static str| async move {
        let found = c
            .exec(&container, &["timeout", "2", "getent", "hosts", host])
            .await
            .is_ok();
        (host, found)
    };
    let (a, b, d, e, f, g) = tokio::join!(
        resolves(worker.clone(), "nats-eu"),
        resolves(worker.clone(), "nats-hub-1"),
        resolves(worker.clone(), "planner"),
        resolves(leaf.clone(), "nats-hub-2"),
        resolves(leaf.clone(), "planner"),
        resolves(leaf.clone(), "nats-us"),
    );
    assert_eq!(
        [a, b, d],
        [("nats-eu", true), ("nats-hub-1", false), ("planner", false)],
        "what a worker of region eu reaches"
    );
    assert_eq!(
        [e, f, g],
        [("nats-hub-2", true), ("planner", false), ("nats-us", false)],
        "what the leaf node of region eu reaches"
    );
    Ok(())
}

/// (stream, replicas, leader) of each stream a hub node's `/jsz` lists.
fn stream_replicas(jsz: &Value) -> Vec<(String, u64, String)> {
    let mut out = Vec::new();
    for a in jsz["account_details"].as_array().into_iter().flatten() {
        for s in a["stream_detail"].as_array().into_iter().flatten() {
            out.push((
                s["name"].as_str().unwrap_or_default().to_owned(),
                s["config"]["num_replicas"].as_u64().unwrap_or(0),
                s["cluster"]["leader"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ));
        }
    }
    out
}

async fn target(c: &Compose, name: &str, pool: &str) -> anyhow::Result<()> {
    c.api
        .post(
            "/api/targets",
            &json!({"name": name, "kind": "ssh", "environment": "prod", "roles": ["web"],
                    "endpoint": format!("ssh://{name}.example.invalid"), "default_pool": pool}),
        )
        .await?;
    Ok(())
}

async fn deploy(c: &Compose, project: &str, steps: Value) -> anyhow::Result<String> {
    let created = c
        .api
        .post(
            "/api/deployments",
            &json!({"project": project, "environment": "prod", "steps": steps}),
        )
        .await?;
    Ok(created["id"].as_str().unwrap_or_default().to_owned())
}

async fn deployment(c: &Compose, id: &str) -> anyhow::Result<Value> {
    Ok(c.api.get(&format!("/api/deployments/{id}")).await?)
}

/// Waits until a task of `pool` of the deployment runs; its worker.
async fn one_running(c: &Compose, id: &str, pool: &str) -> anyhow::Result<String> {
    compose::poll(&format!("a task of pool {pool} running"), SOON, || async {
        let d = deployment(c, id).await?;
        Ok(shoal_e2e::tasks(&d)
            .into_iter()
            .find(|(_, t)| t["pool"] == pool && t["state"] == "running")
            .and_then(|(_, t)| t["worker"].as_str().map(str::to_owned)))
    })
    .await
}

/// The fault suite's checks on the deployment and the log, then replay and the hash chain
/// on the planner's volume (stopped for it, and started again).
async fn verify(c: &Compose, d: &Value) -> anyhow::Result<()> {
    let ran = checks::deployment_ran_once(&c.api, d, &POOLS).await?;
    let events = checks::no_event_twice(&c.api).await?;
    c.compose(&["stop", "-t", "20", "planner"]).await?;
    let out = c
        .compose(&[
            "run",
            "--rm",
            "--no-deps",
            "-T",
            "planner",
            "shoal-planner",
            "replay",
            "--data-dir",
            "/data",
        ])
        .await?;
    assert!(out.contains("hash chain verified"), "{out}");
    c.compose(&["start", "planner"]).await?;
    c.wait_healthy(SOON).await?;
    eprintln!(
        "[containers]   {} tasks ended once in their pools ({} repeated runs recorded), {events} events, none twice; {}",
        ran.tasks,
        ran.repeated_runs,
        out.lines().next().unwrap_or_default()
    );
    Ok(())
}

/// Targets in both regions; a deployment's task of each target runs in a container of the
/// target's region (its output names the region and the container).
async fn routes_each_region_to_its_containers(c: &Compose) -> anyhow::Result<Value> {
    for i in 1..=EU_TARGETS {
        target(c, &format!("shop-eu-{i}"), "eu-west").await?;
    }
    for i in 1..=US_TARGETS {
        target(c, &format!("shop-us-{i}"), "us-east").await?;
    }
    let id = deploy(
        c,
        "routing",
        json!([{"name": "where", "roles": ["web"],
                "action": {"type": "script", "script": "echo \"$SHOAL_REGION $(hostname)\""}}]),
    )
    .await?;
    let d = c.finished(&id, PHASE).await?;
    assert_eq!(d["state"], "succeeded", "{d:#}");
    let hosts = |service: &'static str| async move {
        let ids = c.containers(service).await?;
        anyhow::Ok(
            ids.into_iter()
                .map(|i| i[..12].to_owned())
                .collect::<Vec<_>>(),
        )
    };
    let (eu_hosts, us_hosts) = (hosts("worker-eu").await?, hosts("worker-us").await?);
    for (_, t) in shoal_e2e::tasks(&d) {
        let eu = t["target"]
            .as_str()
            .unwrap_or_default()
            .starts_with("shop-eu");
        let (pool, region, containers) = if eu {
            ("eu-west", "eu", &eu_hosts)
        } else {
            ("us-east", "us", &us_hosts)
        };
        assert_eq!(t["pool"], pool, "{t:#}");
        let lines = c
            .api
            .task_log(&id, t["id"].as_str().unwrap_or_default())
            .await?;
        let line = lines.first().map(|l| l.line.clone()).unwrap_or_default();
        let (r, host) = line.split_once(' ').unwrap_or_default();
        assert_eq!(r, region, "{t:#}: {line}");
        assert!(
            containers.iter().any(|c| c == host),
            "{} ran in container {host}, not one of region {region}'s {containers:?}",
            t["target"]
        );
    }
    Ok(d)
}

/// The name of the worker a worker container runs as (it takes a free identity at start).
async fn worker_name(c: &Compose, container: &str) -> anyhow::Result<String> {
    let env = c
        .exec(
            container,
            &[
                "bash",
                "-c",
                // The loop's status is its last command's, and the last of /proc's entries
                // (the glob sorts them as text) need not be the worker, or may have exited
                // (a task's child) between its two reads: the status is not the answer.
                "for d in /proc/[0-9]*; do if [ \"$(cat $d/comm 2>/dev/null)\" = shoal-worker ]; then tr '\\0' '\\n' < $d/environ; fi; done; true",
            ],
        )
        .await?;
    env.lines()
        .find_map(|l| l.strip_prefix("SHOAL_WORKER_NAME="))
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no worker name in container {container}: {env}"))
}

/// A worker container of eu is killed while it runs tasks: they go to the other worker of
/// its pool (once their ack wait, 3 s here, has passed). The container is started again.
async fn a_killed_workers_task_goes_to_the_other_worker(c: &Compose) -> anyhow::Result<Value> {
    // Who runs where is read before the deployment, so that little passes between seeing
    // the victim's tasks run and the kill; the tasks last long enough that none ends in it.
    let mut names = Vec::new();
    for cid in c.containers("worker-eu").await? {
        names.push((worker_name(c, &cid).await?, cid));
    }
    let id = deploy(
        c,
        "worker-killed",
        json!([{"name": "slow", "roles": ["web"], "max_attempts": 5,
                "action": {"type": "script", "script": "sleep 5"}}]),
    )
    .await?;
    let victim = one_running(c, &id, "eu-west").await?;
    let container = names
        .into_iter()
        .find_map(|(name, cid)| (name == victim).then_some(cid))
        .ok_or_else(|| anyhow::anyhow!("no container runs {victim}"))?;
    let running: Vec<String> = shoal_e2e::tasks(&deployment(c, &id).await?)
        .into_iter()
        .filter(|(_, t)| t["worker"] == victim.as_str() && t["state"] == "running")
        .filter_map(|(_, t)| t["id"].as_str().map(str::to_owned))
        .collect();
    c.docker(&["kill", &container]).await?;
    let d = c.finished(&id, PHASE).await?;
    assert_eq!(d["state"], "succeeded", "{d:#}");
    assert!(!running.is_empty());
    for (_, t) in shoal_e2e::tasks(&d) {
        if running.iter().any(|r| t["id"] == r.as_str()) {
            assert!(
                t["worker"]
                    .as_str()
                    .is_some_and(|w| w != victim && w.starts_with("eu-west-")),
                "a task {victim} ran when it was killed ended on {}: {t:#}",
                t["worker"]
            );
        }
    }
    eprintln!(
        "[containers]   {victim} killed running {} task(s); they ended on the other worker",
        running.len()
    );
    c.docker(&["start", &container]).await?;
    c.wait_healthy(SOON).await?;
    Ok(d)
}

/// Region eu's leaf node is cut from the hub (its uplink network disconnected) while a
/// deployment over both regions runs: us finishes, eu's tasks wait and say why, its workers
/// show offline; reconnected, everything ends.
async fn a_cut_region_waits_and_the_other_finishes(c: &Compose) -> anyhow::Result<Value> {
    // The cut must land while eu still has tasks not started (only those say they wait):
    // the leaf is found before the deployment, and the tasks take a while.
    let leaf = c.container("nats-eu").await?;
    let uplink = c.network("uplink-eu");
    let id = deploy(
        c,
        "partition",
        json!([{"name": "both", "roles": ["web"], "max_attempts": 5,
                "action": {"type": "script", "script": "sleep 5"}}]),
    )
    .await?;
    one_running(c, &id, "eu-west").await?;
    c.docker(&["network", "disconnect", &uplink, &leaf]).await?;
    let cut = Instant::now();
    let in_pool = |d: &Value, pool: &str| -> Vec<Value> {
        shoal_e2e::tasks(d)
            .into_iter()
            .filter(|(_, t)| t["pool"] == pool)
            .map(|(_, t)| t)
            .collect()
    };
    let waiting = compose::poll("us done, eu waiting for its workers", SOON, || async {
        let d = deployment(c, &id).await?;
        let us_done = in_pool(&d, "us-east")
            .iter()
            .all(|t| t["state"] == "succeeded");
        let eu = in_pool(&d, "eu-west");
        let reason = eu
            .iter()
            .filter_map(|t| t["waiting"].as_str())
            .find(|w| w.contains("waiting for a worker in pool eu-west"))
            .map(str::to_owned);
        let workers = c.api.get("/api/workers").await?;
        let eu_offline =
            workers.as_array().into_iter().flatten().all(|w| {
                w["pool"] != "eu-west" || w["status"] == "offline" || w["status"] == "left"
            });
        Ok((us_done && eu_offline)
            .then_some(reason)
            .flatten()
            .map(|r| (r, d)))
    })
    .await?;
    let (reason, d) = waiting;
    assert_eq!(d["state"], "running", "{d:#}");
    assert!(
        in_pool(&d, "eu-west")
            .iter()
            .any(|t| t["state"] != "succeeded"),
        "{d:#}"
    );
    eprintln!(
        "[containers]   {:.1} s after the cut: us done, eu tasks say \"{reason}\"",
        cut.elapsed().as_secs_f64()
    );
    c.docker(&["network", "connect", &uplink, &leaf]).await?;
    let back = Instant::now();
    let d = c.finished(&id, PHASE).await?;
    assert_eq!(d["state"], "succeeded", "{d:#}");
    eprintln!(
        "[containers]   reconnected: the deployment ended {:.1} s later",
        back.elapsed().as_secs_f64()
    );
    Ok(d)
}

/// The hub node leading the task stream is killed while a deployment runs: with every stream
/// on three servers, the other two elect a leader and nothing is lost; the node, started
/// again, catches up and holds its copy of every stream.
async fn a_lost_hub_node_loses_nothing_and_rejoins(c: &Compose) -> anyhow::Result<Value> {
    let id = deploy(
        c,
        "node-lost",
        json!([
            {"name": "one", "roles": ["web"], "max_attempts": 5,
             "action": {"type": "script", "script": "sleep 0.5"}},
            {"name": "two", "roles": ["web"], "max_attempts": 5,
             "action": {"type": "script", "script": "sleep 0.5"}},
            {"name": "three", "roles": ["web"], "action": {"type": "noop"}}]),
    )
    .await?;
    let leader = stream_replicas(&c.jsz("nats-hub-1").await?)
        .into_iter()
        .find(|(name, _, _)| name == "SHOAL_TASKS")
        .map(|(_, _, leader)| leader)
        .filter(|l| !l.is_empty())
        .ok_or_else(|| anyhow::anyhow!("no leader of SHOAL_TASKS"))?;
    let service = format!("nats-{leader}");
    one_running(c, &id, "eu-west").await?;
    let node = c.container(&service).await?;
    c.docker(&["kill", &node]).await?;
    let killed = Instant::now();
    let d = c.finished(&id, PHASE).await?;
    assert_eq!(d["state"], "succeeded", "{d:#}");
    eprintln!(
        "[containers]   {leader} (leader of SHOAL_TASKS) killed; the deployment ended {:.1} s later",
        killed.elapsed().as_secs_f64()
    );
    // Back: healthy (its /healthz answers once JetStream on it is current with the cluster),
    // in the cluster's meta group again, with its copy of every stream.
    c.docker(&["start", &node]).await?;
    c.wait_healthy(SOON).await?;
    let streams = compose::poll(
        &format!("{leader} holding every stream again"),
        SOON,
        || async {
            let jsz = c.jsz(&service).await?;
            let found = stream_replicas(&jsz);
            let meta = &jsz["meta_cluster"];
            if meta["cluster_size"] == 3
                && meta["leader"].as_str().is_some_and(|l| !l.is_empty())
                && found.len() == 4
                && found.iter().all(|(_, r, _)| *r == 3)
            {
                Ok(Some(found))
            } else {
                anyhow::bail!("not yet: meta group {meta}, streams {found:?}")
            }
        },
    )
    .await?;
    eprintln!("[containers]   {leader} rejoined, holding {streams:?}");
    Ok(d)
}

/// The planner's container is killed while a deployment runs and started again: it reads
/// its log from its volume and finishes the deployment; what it knew before is still there.
async fn a_restarted_planner_resumes_from_its_volume(
    c: &Compose,
    earlier: &Value,
) -> anyhow::Result<Value> {
    let id = deploy(
        c,
        "planner-restarted",
        json!([
            {"name": "one", "roles": ["web"], "max_attempts": 5,
             "action": {"type": "script", "script": "sleep 0.5"}},
            {"name": "two", "roles": ["web"], "max_attempts": 5,
             "action": {"type": "script", "script": "sleep 0.5"}}]),
    )
    .await?;
    one_running(c, &id, "us-east").await?;
    let planner = c.container("planner").await?;
    c.docker(&["kill", &planner]).await?;
    c.docker(&["start", &planner]).await?;
    c.wait_healthy(SOON).await?;
    let d = c.finished(&id, PHASE).await?;
    assert_eq!(d["state"], "succeeded", "{d:#}");
    let before = deployment(c, earlier["id"].as_str().unwrap_or_default()).await?;
    assert_eq!(before["state"], "succeeded", "{before:#}");
    assert_eq!(shoal_e2e::tasks(&before).len(), EU_TARGETS + US_TARGETS);
    Ok(d)
}
