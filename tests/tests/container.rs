//! The container set-up without a container engine: `.dockerignore` keeps the build dir out
//! of the context, `docker-compose.yml` builds one image for every shoal service and gives
//! every service a health check that its image can run, `docker compose config` accepts the
//! file (where compose is installed), the worker's health-check script, the planner's
//! `/healthz`, and the README documenting both. Building the image needs a registry, which
//! the test machines do not reach.

use shoal_e2e::Cluster;
use std::path::{Path, PathBuf};
use std::process::Command;
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

/// Packages the runtime image installs, and the programs it copies in (by file name).
fn image_programs() -> Vec<String> {
    let dockerfile = read("Dockerfile");
    let runtime = dockerfile
        .rsplit_once("\nFROM ")
        .map_or(dockerfile.as_str(), |(_, r)| r);
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

#[test]
fn compose_builds_one_image_and_every_service_has_a_health_check() {
    let doc = compose();
    let services = doc["services"]
        .as_hash()
        .unwrap_or_else(|| panic!("docker-compose.yml has no services"));
    let programs = image_programs();
    let mut shoal_images = Vec::new();
    let mut builds = Vec::new();
    for (name, service) in services {
        let name = name.as_str().unwrap_or_default();
        let image = field(service, "image").as_str().unwrap_or_default();
        if !field(service, "build").is_badvalue() {
            builds.push((name, image));
        }
        let command = field(service, "command");
        let program = command[0].as_str().unwrap_or_default();
        let is_shoal = program.starts_with("shoal");
        if is_shoal {
            shoal_images.push((name, image));
        }

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
        if is_shoal && words[0] == "CMD" {
            assert!(
                programs.iter().any(|p| p == words[1]),
                "service {name}'s health check runs {}, which the Dockerfile does not install \
                 (it installs {programs:?})",
                words[1]
            );
        }
        if !is_shoal && words.get(1) == Some(&"wget") {
            // The default nats image is FROM scratch: no wget, no shell.
            assert!(
                image.contains("alpine"),
                "{name}: {image} has no wget for its health check"
            );
        }
        if name == "planner" {
            assert!(words.iter().any(|w| w.contains("/healthz")), "{words:?}");
        }
    }
    assert!(shoal_images.len() >= 4, "{shoal_images:?}");
    let first = shoal_images[0].1;
    assert!(
        !first.is_empty() && shoal_images.iter().all(|(_, i)| *i == first),
        "every shoal service must use one image name: {shoal_images:?}"
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
