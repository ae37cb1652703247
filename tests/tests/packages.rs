//! The package feed with a real planner and broker, through the `shoal` command: a push
//! stores content-defined chunks in the broker's object store, the same bytes again store
//! nothing, a version that changes 1 % of its file stores about that much, versions never
//! change, and the feed outlives a planner restart.

use anyhow::Context as _;
use futures::StreamExt as _;
use rand::RngCore as _;
use shoal_cli::{exit, local};
use shoal_e2e::Cluster;
use shoal_shared::api::{PackageView, PushedPackage};
use shoal_shared::package::Sha256;
use std::collections::BTreeSet;
use tokio::io::AsyncReadExt as _;

/// `shoal --output json args` as admin: (exit code, stdout, stderr).
fn shoal(c: &Cluster, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    c.shoal(&all)
}

/// `shoal package push FILE --id web --version VERSION`.
fn push_web(
    c: &Cluster,
    file: &std::path::Path,
    version: &str,
) -> anyhow::Result<(i32, String, String)> {
    let path = file.display().to_string();
    shoal(
        c,
        &[
            "package",
            "push",
            &path,
            "--id",
            "web",
            "--version",
            version,
        ],
    )
}

fn push(c: &Cluster, file: &std::path::Path, version: &str) -> anyhow::Result<PushedPackage> {
    let (code, out, err) = push_web(c, file, version)?;
    anyhow::ensure!(code == exit::OK, "push {version} exited {code}: {err}");
    serde_json::from_str(&out).with_context(|| format!("push printed {out}"))
}

/// The names (SHA-256s) of the chunks in the feed's bucket, each checked against its bytes.
async fn stored_chunks(c: &Cluster) -> anyhow::Result<BTreeSet<Sha256>> {
    let js = async_nats::jetstream::new(c.nats.connect().await?);
    let store = js.get_object_store("SHOAL_PACKAGES").await?;
    let mut names = Vec::new();
    let mut list = store.list().await?;
    while let Some(info) = list.next().await {
        names.push(info?.name);
    }
    let mut out = BTreeSet::new();
    for name in names {
        let mut bytes = Vec::new();
        store.get(&name).await?.read_to_end(&mut bytes).await?;
        let sha = Sha256::of(&bytes);
        // A manifest is named by its digest too.
        if let Some(digest) = name.strip_prefix("manifest-") {
            anyhow::ensure!(
                sha.to_hex() == digest,
                "manifest {name} holds bytes of {sha}"
            );
            continue;
        }
        anyhow::ensure!(sha.to_hex() == name, "chunk {name} holds bytes of {sha}");
        out.insert(sha);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_stores_only_the_chunks_the_feed_lacks() -> anyhow::Result<()> {
    let mut c = Cluster::start(&[]).await?;
    let mut v1 = vec![0u8; 4 * 1024 * 1024];
    rand::rng().fill_bytes(&mut v1);
    let file1 = c.dir.path().join("web-1.0.0.bin");
    std::fs::write(&file1, &v1)?;

    let first = push(&c, &file1, "1.0.0")?;
    let p = &first.package;
    assert_eq!((p.size, p.sha256), (v1.len() as u64, Sha256::of(&v1)));
    assert!(
        p.chunks > 20,
        "4 MiB in chunks of about 64 KiB: {}",
        p.chunks
    );
    assert_eq!(
        (first.new_chunks, first.new_bytes),
        (p.chunks, p.size),
        "every chunk is new"
    );
    assert_eq!(stored_chunks(&c).await?.len(), p.chunks);

    let again = push(&c, &file1, "1.0.0")?;
    assert_eq!(
        (again.new_chunks, again.new_bytes, &again.package),
        (0, 0, p),
        "the same bytes again store nothing and change nothing"
    );

    // 1 % of the file rewritten in its middle.
    let mut v2 = v1.clone();
    let mid = v2.len() / 2;
    rand::rng().fill_bytes(&mut v2[mid..mid + v1.len() / 100]);
    let file2 = c.dir.path().join("web-1.0.1.bin");
    std::fs::write(&file2, &v2)?;
    let second = push(&c, &file2, "1.0.1")?;
    let share = second.new_bytes as f64 / v2.len() as f64;
    assert!(
        second.new_chunks >= 1 && share < 0.15,
        "1 % changed, {} new chunks, {:.1} % of the file stored",
        second.new_chunks,
        share * 100.0
    );
    let stored = stored_chunks(&c).await?;
    assert_eq!(
        stored.len(),
        p.chunks + second.new_chunks,
        "the two versions share every other chunk"
    );

    // A version never changes: other bytes under 1.0.0 (new ones, not in the feed) are
    // refused, naming it, and none of their chunks is stored.
    let mut v3 = vec![0u8; 1024 * 1024];
    rand::rng().fill_bytes(&mut v3);
    let file3 = c.dir.path().join("other.bin");
    std::fs::write(&file3, &v3)?;
    let (code, _, err) = push_web(&c, &file3, "1.0.0")?;
    assert_ne!(code, exit::OK);
    assert!(
        err.contains("web 1.0.0") && err.contains("new version"),
        "{err}"
    );
    assert_eq!(
        stored_chunks(&c).await?,
        stored,
        "a refused push leaves no chunk behind"
    );
    let (code, _, err) = push_web(&c, std::path::Path::new("/nonexistent"), "2.0.0")?;
    assert_ne!(code, exit::OK);
    assert!(err.contains("/nonexistent"), "{err}");
    let (code, _, err) = push_web(&c, &file1, "1.0")?;
    assert_ne!(code, exit::OK);
    assert!(err.contains("semantic version"), "{err}");

    // The feed and who pushed each version outlive a restart.
    c.stop_planner().await?;
    c.start_planner().await?;
    let (code, out, err) = shoal(&c, &["package", "list", "web"])?;
    assert_eq!(code, exit::OK, "{err}");
    let versions: Vec<PackageView> = serde_json::from_str(&out)?;
    let listed: Vec<String> = versions.iter().map(|v| v.version.to_string()).collect();
    assert_eq!(listed, ["1.0.0", "1.0.1"]);
    let events = c.events(Some("package/web")).await?;
    let pushed: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["type"] == "PackagePushed")
        .collect();
    assert_eq!(pushed.len(), 2, "{events:?}");
    assert!(
        pushed.iter().all(|e| e["actor"] == "token:admin"),
        "{pushed:?}"
    );

    let (code, _, err) = shoal(&c, &["package", "rm", "web", "1.0.0"])?;
    assert_eq!(code, exit::OK, "{err}");
    let (_, out, _) = shoal(&c, &["package", "list"])?;
    let versions: Vec<PackageView> = serde_json::from_str(&out)?;
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert_eq!(versions[0].version.to_string(), "1.0.1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_must_be_octets_from_a_deployer() -> anyhow::Result<()> {
    let c = Cluster::start(&[]).await?;
    let http = reqwest::Client::new();
    let url = format!("{}/api/packages/web/1.0.0", c.api.base());
    let token = c.admin_token()?;
    let send = |ct: &'static str, token: String| {
        http.put(&url)
            .bearer_auth(token)
            .header("content-type", ct)
            .body("hello")
            .send()
    };
    assert_eq!(send("text/plain", token.clone()).await?.status(), 415);
    assert_eq!(send("application/json", token.clone()).await?.status(), 415);
    let viewer = c.cli(&["token", "create", "--name", "v", "--role", "viewer"])?;
    assert!(viewer.0, "{}", viewer.1);
    let viewer_token = viewer
        .1
        .lines()
        .find(|l| l.starts_with("shoal_"))
        .context("token printed")?
        .to_owned();
    assert_eq!(
        send("application/octet-stream", viewer_token)
            .await?
            .status(),
        403
    );
    let anonymous = http
        .put(&url)
        .header("content-type", "application/octet-stream")
        .body("hello")
        .send()
        .await?;
    assert_eq!(anonymous.status(), 401);
    let created = send("application/octet-stream", token).await?;
    assert_eq!(created.status(), 201);
    Ok(())
}

/// A `.tar.gz` of `files` (path, bytes), built with the tar crate so a test can write paths
/// no tool would (`../x`).
fn tar_gz(files: &[(&str, &[u8])]) -> anyhow::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (path, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // Written into the header as is: `set_path` refuses `..`.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        tar.append(&h, *bytes)?;
    }
    Ok(tar.into_inner()?.finish()?)
}

/// A deployment of one `deploy_package` step to the `web` targets.
fn package_deployment(version: &str, script: &str) -> serde_json::Value {
    serde_json::json!({"project": "shop", "environment": "prod", "steps": [{
        "name": "deploy", "roles": ["web"],
        "action": {"type": "deploy_package", "package": {"id": "web", "version": version},
                   "script": script}}]})
}

/// Each worker that ran tasks fetched every chunk exactly once, however its tasks ran.
fn each_worker_fetched_each_chunk_once(per_task: &[(String, u64)], chunks: u64) {
    let workers: BTreeSet<&String> = per_task.iter().map(|(w, _)| w).collect();
    for w in workers {
        let fetched: u64 = (per_task.iter().filter(|(x, _)| x == w))
            .map(|(_, n)| n)
            .sum();
        assert_eq!(fetched, chunks, "worker {w}: {per_task:?}");
    }
}

/// (worker, chunks fetched) of each task, read from the line the worker wrote.
async fn fetched_by_worker(
    c: &Cluster,
    id: &str,
    d: &serde_json::Value,
) -> anyhow::Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for (_, t) in shoal_e2e::tasks(d) {
        let lines = c.output(id, &t).await?;
        let line = lines
            .iter()
            .find(|l| l.starts_with("[shoal] package web"))
            .with_context(|| format!("no package line in {lines:?}"))?;
        let fetched = if line.contains("from cache: ") {
            0
        } else {
            let (_, after) = line.split_once("): ").context("a fetch line")?;
            after.split(' ').next().unwrap_or("x").parse()?
        };
        out.push((t["worker"].as_str().unwrap_or_default().to_owned(), fetched));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_reaches_every_target_and_each_worker_fetches_each_chunk_once()
-> anyhow::Result<()> {
    let mut c = Cluster::start(&[]).await?;
    c.pool("eu-west", "eu").await?;
    for w in ["eu-1", "eu-2"] {
        c.worker(w, "eu-west", "eu", &["--slots", "4"])?;
    }
    c.wait_online(&["eu-1", "eu-2"]).await?;
    for i in 1..=8 {
        c.target(&format!("web-{i}"), "prod", &["web"], Some("eu-west"))
            .await?;
    }
    let mut data = vec![0u8; 2 * 1024 * 1024];
    rand::rng().fill_bytes(&mut data);
    let archive = tar_gz(&[("app/run.sh", b"echo running\n"), ("app/data.bin", &data)])?;
    let file = c.dir.path().join("web.tar.gz");
    std::fs::write(&file, &archive)?;
    let pushed = push(&c, &file, "1.0.0")?;
    let chunks = pushed.package.chunks as u64;

    // A range resolves to the newest matching version; the script runs in the unpacked
    // package, told where it is.
    let script = "test \"$(sha256sum < app/data.bin | cut -c1-64)\" = \"$WANT\" && \
                  test \"$PWD\" = \"$SHOAL_PACKAGE_PATH\" && echo \"deployed $SHOAL_PACKAGE_ID $SHOAL_PACKAGE_VERSION\"";
    let mut body = package_deployment("^1", script);
    body["steps"][0]["variables"] = serde_json::json!({"WANT": Sha256::of(&data).to_hex()});
    let id = c.deploy(&body).await?;
    let d = c.finished(&id, std::time::Duration::from_secs(60)).await?;
    assert_eq!(d["state"], "succeeded", "{d:#}");
    let per_task = fetched_by_worker(&c, &id, &d).await?;
    assert_eq!(per_task.len(), 8);
    eprintln!("chunks {chunks}, fetched per task {per_task:?}");
    for (_, t) in shoal_e2e::tasks(&d) {
        let lines = c.output(&id, &t).await?;
        assert!(lines.iter().any(|l| l == "deployed web 1.0.0"), "{lines:?}");
    }
    each_worker_fetched_each_chunk_once(&per_task, chunks);
    let workers_used = per_task
        .iter()
        .map(|(w, _)| w)
        .collect::<BTreeSet<_>>()
        .len() as u64;

    // Again: nothing crosses the link.
    let again = c.deploy(&package_deployment("1.0.0", "true")).await?;
    let d = c
        .finished(&again, std::time::Duration::from_secs(60))
        .await?;
    assert_eq!(d["state"], "succeeded", "{d:#}");
    let per_task = fetched_by_worker(&c, &again, &d).await?;
    assert!(per_task.iter().all(|(_, n)| *n == 0), "{per_task:?}");

    // Every acquisition is recorded: 16 tasks used the package 16 times, and the feed sent
    // each of the workers that ran them the package once.
    let (code, out, err) = shoal(&c, &["package", "stats", "web"])?;
    assert_eq!(code, exit::OK, "{err}");
    let versions: Vec<PackageView> = serde_json::from_str(&out)?;
    let a = &versions[0].acquired[&shoal_shared::PoolName::parse("eu-west")?];
    let size = pushed.package.size;
    assert_eq!(a.count, 16, "{a:?}");
    assert_eq!(a.bytes_used(), 16 * size, "{a:?}");
    assert_eq!(a.bytes_fetched, workers_used * size, "{a:?}");
    let events = c.events(Some(&format!("deployment/{again}"))).await?;
    let acquired = events
        .iter()
        .filter(|e| e["type"] == "PackageAcquired")
        .count();
    assert_eq!(acquired, 8, "one PackageAcquired per task");

    // An unknown package or version is refused at submission, naming it.
    shoal_e2e::assert_api_error(
        c.api
            .post("/api/deployments", &package_deployment("2.0.0", "true"))
            .await,
        400,
        &["steps[0].action.package.version", "1.0.0"],
    );
    let mut other = package_deployment("1.0.0", "true");
    other["steps"][0]["action"]["package"]["id"] = "api".into();
    shoal_e2e::assert_api_error(
        c.api.post("/api/deployments", &other).await,
        400,
        &["unknown package \"api\""],
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_archive_fails_its_task_and_writes_nothing_outside() -> anyhow::Result<()> {
    let mut c = Cluster::start(&[]).await?;
    c.worker("w1", "default", "eu", &[])?;
    c.wait_online(&["w1"]).await?;
    c.target("web-1", "prod", &["web"], None).await?;
    let evil = tar_gz(&[("ok.txt", b"fine"), ("../../escaped.txt", b"gotcha")])?;
    let file = c.dir.path().join("evil.tar.gz");
    std::fs::write(&file, &evil)?;
    push(&c, &file, "6.6.6")?;
    let id = c.deploy(&package_deployment("6.6.6", "echo ran")).await?;
    let d = c.finished(&id, std::time::Duration::from_secs(60)).await?;
    assert_eq!(d["state"], "failed", "{d:#}");
    let (_, t) = shoal_e2e::tasks(&d).into_iter().next().context("a task")?;
    let reason = t["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("outside the task directory"), "{t:#}");
    let lines = c.output(&id, &t).await?;
    assert!(
        !lines.iter().any(|l| l == "ran"),
        "the script must not run: {lines:?}"
    );
    let escaped = local::files_containing(c.dir.path(), b"gotcha")?;
    assert!(
        escaped.iter().all(|p| !p.ends_with("escaped.txt")),
        "{escaped:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_behind_a_regions_leaf_node_acquire_packages_through_it() -> anyhow::Result<()> {
    let dir = shoal_e2e::tempdir()?;
    let (hub, leaf_port) = shoal_e2e::start_hub(dir.path()).await?;
    let eu = shoal_e2e::start_leaf(dir.path(), "eu", leaf_port).await?;
    let mut c = Cluster::start_on(dir, hub, &["--no-builtin-worker"]).await?;
    c.pool("eu-west", "eu").await?;
    for w in ["eu-1", "eu-2"] {
        c.worker_via(&eu.url(), w, "eu-west", "eu", &["--js-domain", "hub"])?;
    }
    c.wait_online(&["eu-1", "eu-2"]).await?;
    for i in 1..=4 {
        c.target(&format!("web-{i}"), "prod", &["web"], Some("eu-west"))
            .await?;
    }
    let mut data = vec![0u8; 1024 * 1024];
    rand::rng().fill_bytes(&mut data);
    let file = c.dir.path().join("web.tar.gz");
    std::fs::write(&file, tar_gz(&[("data.bin", &data)])?)?;
    let pushed = push(&c, &file, "2.0.0")?;
    let id = c
        .deploy(&package_deployment(
            "2.0.0",
            "test -s data.bin && echo \"$SHOAL_REGION\"",
        ))
        .await?;
    let d = c.finished(&id, shoal_e2e::WAIT).await?;
    assert_eq!(d["state"], "succeeded", "{d:#}");
    let per_task = fetched_by_worker(&c, &id, &d).await?;
    each_worker_fetched_each_chunk_once(&per_task, pushed.package.chunks as u64);
    drop(eu);
    Ok(())
}
