//! The package feed with a real planner and broker, through the `shoal` command: a push
//! stores content-defined chunks in the broker's object store, the same bytes again store
//! nothing, a version that changes 1 % of its file stores about that much, versions never
//! change, and the feed outlives a planner restart.

use anyhow::Context as _;
use futures::StreamExt as _;
use rand::RngCore as _;
use shoal_cli::{exit, local};
use shoal_e2e::{Cluster, tar_of};
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
    let mut out = BTreeSet::new();
    for name in object_names(c).await? {
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

/// A cluster with one worker, `w1` of the default pool (started with `worker_args`), and
/// one target, `web-1`, with role `web`.
async fn one_worker(planner_args: &[&str], worker_args: &[&str]) -> anyhow::Result<Cluster> {
    let mut c = Cluster::start(planner_args).await?;
    c.worker("w1", "default", "eu", worker_args)?;
    c.wait_online(&["w1"]).await?;
    c.target("web-1", "prod", &["web"], None).await?;
    Ok(c)
}

/// A `.tar.gz` of `files` (path, bytes), built with the tar crate so a test can write paths
/// no tool would (`../x`).
fn tar_gz(files: &[(&str, &[u8])]) -> anyhow::Result<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar_of(files)?)?;
    Ok(gz.finish()?)
}

/// A deployment of one `deploy_package` step to the `web` targets.
fn package_deployment(version: &str, script: &str) -> serde_json::Value {
    serde_json::json!({"project": "shop", "environment": "prod", "steps": [{
        "name": "deploy", "roles": ["web"],
        "action": {"type": "deploy_package", "package": {"id": "web", "version": version},
                   "script": script}}]})
}

/// Deploys `body` and waits for it to end: its id and the deployment as it ended.
async fn deployed(
    c: &Cluster,
    body: &serde_json::Value,
) -> anyhow::Result<(String, serde_json::Value)> {
    let id = c.deploy(body).await?;
    let d = c.finished(&id, shoal_e2e::WAIT).await?;
    Ok((id, d))
}

/// The first task of a deployment.
fn first_task(d: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let (_, t) = shoal_e2e::tasks(d).into_iter().next().context("a task")?;
    Ok(t)
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
    let mut c = Cluster::start(&["--no-builtin-worker"]).await?;
    // Two regions, two workers in each one's pool, four targets per pool.
    for (pool, region) in [("eu-west", "eu"), ("us-east", "us")] {
        c.pool(pool, region).await?;
        for n in 1..=2 {
            c.worker(&format!("{region}-{n}"), pool, region, &["--slots", "4"])?;
        }
        for i in 1..=4 {
            c.target(&format!("web-{region}-{i}"), "prod", &["web"], Some(pool))
                .await?;
        }
    }
    c.wait_online(&["eu-1", "eu-2", "us-1", "us-2"]).await?;
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
        let (pool, worker) = (t["pool"].as_str(), t["worker"].as_str().unwrap_or_default());
        let region = if pool == Some("eu-west") {
            "eu-"
        } else {
            "us-"
        };
        assert!(worker.starts_with(region), "{t:#}");
    }
    each_worker_fetched_each_chunk_once(&per_task, chunks);
    let workers_used = |region: &str| {
        (per_task.iter().map(|(w, _)| w))
            .filter(|w| w.starts_with(region))
            .collect::<BTreeSet<_>>()
            .len() as u64
    };

    // Again: nothing crosses the link.
    let again = c.deploy(&package_deployment("1.0.0", "true")).await?;
    let d = c
        .finished(&again, std::time::Duration::from_secs(60))
        .await?;
    assert_eq!(d["state"], "succeeded", "{d:#}");
    let per_task = fetched_by_worker(&c, &again, &d).await?;
    assert!(per_task.iter().all(|(_, n)| *n == 0), "{per_task:?}");

    // Every acquisition is recorded: in each pool 8 tasks used the package 8 times, and the
    // feed sent each of the workers that ran them the package once.
    let (code, out, err) = shoal(&c, &["package", "stats", "web"])?;
    assert_eq!(code, exit::OK, "{err}");
    let versions: Vec<PackageView> = serde_json::from_str(&out)?;
    let size = pushed.package.size;
    for (pool, region) in [("eu-west", "eu-"), ("us-east", "us-")] {
        let a = &versions[0].acquired[&shoal_shared::PoolName::parse(pool)?];
        assert_eq!(a.count, 8, "{pool}: {a:?}");
        assert_eq!(a.bytes_used(), 8 * size, "{pool}: {a:?}");
        assert_eq!(a.bytes_fetched, workers_used(region) * size, "{a:?}");
    }
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
    let script = "test -s data.bin && echo \"$SHOAL_REGION\"";
    let (id, d) = deployed(&c, &package_deployment("2.0.0", script)).await?;
    assert_eq!(d["state"], "succeeded", "{d:#}");
    let per_task = fetched_by_worker(&c, &id, &d).await?;
    each_worker_fetched_each_chunk_once(&per_task, pushed.package.chunks as u64);
    drop(eu);
    Ok(())
}

/// The names of the chunks the feed cuts `bytes` into.
fn chunk_names(bytes: &[u8]) -> anyhow::Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for chunk in shoal_shared::package::Chunker::new(bytes) {
        names.insert(chunk?.chunk.sha256.to_hex());
    }
    Ok(names)
}

/// The names of the objects in the feed's bucket (deleted ones are not listed).
async fn object_names(c: &Cluster) -> anyhow::Result<BTreeSet<String>> {
    let js = async_nats::jetstream::new(c.nats.connect().await?);
    let store = js.get_object_store("SHOAL_PACKAGES").await?;
    let mut names = BTreeSet::new();
    let mut list = store.list().await?;
    while let Some(info) = list.next().await {
        names.insert(info?.name);
    }
    Ok(names)
}

/// Waits until the feed's bucket holds exactly `want`.
async fn feed_holds(c: &Cluster, what: &str, want: &BTreeSet<String>) -> anyhow::Result<()> {
    c.wait_for(what, std::time::Duration::from_secs(20), || async {
        // A listing may wait for ever for an entry a sweep deleted meanwhile.
        let listed = tokio::time::timeout(std::time::Duration::from_secs(3), object_names(c));
        let now = listed.await.context("listing stalled")??;
        Ok((now == *want).then_some(()))
    })
    .await
    .with_context(|| format!("the feed should hold {want:?}"))
}

/// An upload that sends `sent` of the `announced` bytes it announced and, once the feed holds
/// more objects than `before`, hangs up.
async fn cut_off_upload(
    c: &Cluster,
    sent: &[u8],
    announced: usize,
    before: &BTreeSet<String>,
) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let addr = c.api.base().trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await?;
    let head = format!(
        "PUT /api/packages/web/9.9.9 HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\n\
         content-type: application/octet-stream\r\ncontent-length: {announced}\r\n\r\n",
        c.admin_token()?
    );
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(sent).await?;
    tcp.flush().await?;
    c.wait_for(
        "the cut-off push to store chunks",
        shoal_e2e::WAIT,
        || async {
            let listed = tokio::time::timeout(std::time::Duration::from_secs(3), object_names(c));
            let now = listed.await.context("listing stalled")??;
            Ok((now.len() > before.len()).then_some(()))
        },
    )
    .await?;
    drop(tcp);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_keeps_only_what_its_versions_need() -> anyhow::Result<()> {
    let mut c = one_worker(&[], &[]).await?;
    let mut data = vec![0u8; 4 * 1024 * 1024];
    rand::rng().fill_bytes(&mut data);
    let v1 = tar_of(&[("data.bin", &data)])?;
    let mid = data.len() / 2;
    rand::rng().fill_bytes(&mut data[mid..mid + 64 * 1024]);
    let v2 = tar_of(&[("data.bin", &data)])?;
    let (file1, file2) = (c.dir.path().join("v1.tar"), c.dir.path().join("v2.tar"));
    std::fs::write(&file1, &v1)?;
    std::fs::write(&file2, &v2)?;
    push(&c, &file1, "1.0.0")?;
    let after_v1 = object_names(&c).await?;
    push(&c, &file2, "2.0.0")?;
    let both = object_names(&c).await?;
    let only_v2: BTreeSet<String> = both.difference(&after_v1).cloned().collect();
    assert!(
        only_v2.len() >= 2,
        "v2's new chunks and manifest: {only_v2:?}"
    );

    // A push cut off midway stored the chunks it had cut; the planner takes them away.
    let mut partial = vec![0u8; 2 * 1024 * 1024];
    rand::rng().fill_bytes(&mut partial);
    cut_off_upload(&c, &partial, 8 * 1024 * 1024, &both).await?;
    feed_holds(&c, "the cut-off push's chunks to be swept", &both).await?;

    // Removing 1.0.0 deletes the chunks only it used; those it shares with 2.0.0 stay.
    let (code, _, err) = shoal(&c, &["package", "rm", "web", "1.0.0"])?;
    assert_eq!(code, exit::OK, "{err}");
    let (chunks1, chunks2) = (chunk_names(&v1)?, chunk_names(&v2)?);
    assert!(
        chunks1.difference(&chunks2).count() >= 1 && chunks1.intersection(&chunks2).count() >= 1,
        "1.0.0 has chunks of its own and chunks it shares with 2.0.0"
    );
    let manifest2 = only_v2.iter().filter(|n| n.starts_with("manifest-"));
    let v2_needs: BTreeSet<String> = chunks2.iter().chain(manifest2).cloned().collect();
    feed_holds(&c, "1.0.0's own chunks to be swept", &v2_needs).await?;

    // What is left deploys.
    let script = "cmp -s data.bin data.bin && echo ok";
    let (_, d) = deployed(&c, &package_deployment("2.0.0", script)).await?;
    assert_eq!(d["state"], "succeeded", "{d:#}");

    // A chunk left by a push the planner's stop cut off is swept at the next start; an
    // object of another name is not the feed's and stays.
    let js = async_nats::jetstream::new(c.nats.connect().await?);
    let store = js.get_object_store("SHOAL_PACKAGES").await?;
    let stray = Sha256::of(b"a chunk no version names").to_hex();
    store
        .put(stray.as_str(), &mut &b"a chunk no version names"[..])
        .await?;
    store.put("notes.txt", &mut &b"not a chunk"[..]).await?;
    c.stop_planner().await?;
    c.start_planner().await?;
    let mut want = v2_needs.clone();
    want.insert("notes.txt".into());
    feed_holds(&c, "the stray chunk to be swept at start", &want).await?;

    // A planner whose log knows of no package (here: a fresh data dir on the same broker)
    // deletes nothing of a feed that is not its log's.
    c.stop_planner().await?;
    std::fs::rename(c.data_dir(), c.dir.path().join("planner-data.old"))?;
    c.start_planner().await?;
    c.wait_for("the start sweep to decline", shoal_e2e::WAIT, || async {
        let log = c.planner.as_ref().map(|p| p.output()).unwrap_or_default();
        Ok(log.contains("knows of no package").then_some(()))
    })
    .await?;
    assert_eq!(object_names(&c).await?, want, "nothing deleted");
    Ok(())
}

/// A `.zip` of `files` (path, bytes), deflated, names written as given (`../x` too).
fn zip_of(files: &[(&str, &[u8])]) -> anyhow::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (path, bytes) in files {
        zip.start_file(*path, options)?;
        zip.write_all(bytes)?;
    }
    Ok(zip.finish()?.into_inner())
}

/// Pushes `bytes` as web `version`, deploys it to web-1 and returns the finished task.
async fn deploy_bytes(
    c: &Cluster,
    bytes: &[u8],
    version: &str,
) -> anyhow::Result<(String, serde_json::Value)> {
    let file = c.dir.path().join(format!("web-{version}.package"));
    std::fs::write(&file, bytes)?;
    push(c, &file, version)?;
    let (id, d) = deployed(c, &package_deployment(version, "echo ran")).await?;
    Ok((id, first_task(&d)?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_hostile_archive_fails_its_task_clearly() -> anyhow::Result<()> {
    let c = one_worker(&["--no-builtin-worker"], &["--package-unpack-mb", "8"]).await?;
    let zeros = vec![0u8; 32 * 1024 * 1024];
    let mut garbage = vec![0u8; 100_000];
    rand::rng().fill_bytes(&mut garbage);
    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("1.0.0", tar_gz(&[("big.bin", &zeros)])?, "archive bomb"),
        ("1.0.1", zip_of(&[("big.bin", &zeros)])?, "archive bomb"),
        (
            "1.0.2",
            zip_of(&[("ok.txt", b"fine"), ("../../zip-escaped.txt", b"gotcha")])?,
            "outside the task directory",
        ),
        ("1.0.3", garbage, "not unpacked"),
        (
            "1.0.4",
            tar_gz(&[("ok.txt", b"fine"), ("../../escaped.txt", b"gotcha")])?,
            "outside the task directory",
        ),
    ];
    for (version, bytes, why) in cases {
        let (id, t) = deploy_bytes(&c, &bytes, version).await?;
        assert_eq!(t["state"], "failed", "{version}: {t:#}");
        let reason = t["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains(why) && reason.contains(&format!("web {version}")),
            "{version}: {reason}"
        );
        let lines = c.output(&id, &t).await?;
        assert!(!lines.iter().any(|l| l == "ran"), "{version}: {lines:?}");
    }
    let escaped = local::files_containing(c.dir.path(), b"gotcha")?;
    assert!(
        escaped.iter().all(|p| !p.ends_with("escaped.txt")),
        "{escaped:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_the_feed_serves_wrong_is_fetched_once_more_then_fails_its_task()
-> anyhow::Result<()> {
    let c = one_worker(&["--no-builtin-worker"], &[]).await?;
    let mut data = vec![0u8; 256 * 1024];
    rand::rng().fill_bytes(&mut data);
    let archive = tar_of(&[("data.bin", &data)])?;
    // One chunk's object rewritten in the bucket with other bytes of its size.
    let name = chunk_names(&archive)?
        .into_iter()
        .next()
        .context("a chunk")?;
    let js = async_nats::jetstream::new(c.nats.connect().await?);
    let file = c.dir.path().join("web.tar");
    std::fs::write(&file, &archive)?;
    push(&c, &file, "1.0.0")?;
    let store = js.get_object_store("SHOAL_PACKAGES").await?;
    let mut real = Vec::new();
    store.get(&name).await?.read_to_end(&mut real).await?;
    let mut forged = real.clone();
    forged[0] ^= 0xff;
    store.put(name.as_str(), &mut forged.as_slice()).await?;

    let (_, d) = deployed(&c, &package_deployment("1.0.0", "echo ran")).await?;
    let t = first_task(&d)?;
    assert_eq!(t["state"], "failed", "{t:#}");
    let reason = t["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("bad chunk 2 times") && reason.contains(&name[..12]),
        "{reason}"
    );
    Ok(())
}

/// Turns the direct gets of the feed's stream off (the feed does not answer a worker) or on.
async fn feed_answers(c: &Cluster, on: bool) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(c.nats.connect().await?);
    let mut stream = js.get_stream("OBJ_SHOAL_PACKAGES").await?;
    let mut config = stream.info().await?.config.clone();
    config.allow_direct = on;
    js.update_stream(config).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_that_does_not_answer_is_waited_for_within_the_tasks_timeout() -> anyhow::Result<()>
{
    let c = one_worker(&["--no-builtin-worker"], &[]).await?;
    let file = c.dir.path().join("web.tar.gz");
    std::fs::write(&file, tar_gz(&[("app.txt", b"app")])?)?;
    push(&c, &file, "1.0.0")?;
    feed_answers(&c, false).await?;

    // Within a 12 s timeout it tries a few times, then times out naming the package.
    let mut short = package_deployment("1.0.0", "echo ran");
    short["steps"][0]["timeout_secs"] = 12.into();
    let (id, d) = deployed(&c, &short).await?;
    let t = first_task(&d)?;
    assert_eq!(t["state"], "timed_out", "{t:#}");
    let reason = t["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("acquiring package web 1.0.0"), "{reason}");
    let lines = c.output(&id, &t).await?;
    let retries = lines.iter().filter(|l| l.contains("trying again")).count();
    assert!(retries >= 1, "{lines:?}");
    assert!(!lines.iter().any(|l| l == "ran"), "{lines:?}");

    // Without a timeout it waits, and the feed coming back lets it finish.
    let id = c.deploy(&package_deployment("1.0.0", "echo ran")).await?;
    c.wait_for("a retry", shoal_e2e::WAIT, || async {
        let t = c.task(&id, "deploy").await?;
        let lines = c.output(&id, &t).await?;
        Ok(lines
            .iter()
            .any(|l| l.contains("trying again"))
            .then_some(()))
    })
    .await?;
    feed_answers(&c, true).await?;
    let d = c.finished(&id, shoal_e2e::WAIT).await?;
    assert_eq!(d["state"], "succeeded", "{d:#}");
    Ok(())
}

/// Deploys web `version` to the one target: chunks fetched, and the worker's package line.
async fn deployed_fetching(c: &Cluster, version: &str) -> anyhow::Result<(u64, String)> {
    let (id, d) = deployed(c, &package_deployment(version, "true")).await?;
    assert_eq!(d["state"], "succeeded", "{d:#}");
    let per_task = fetched_by_worker(c, &id, &d).await?;
    let lines = c.output(&id, &first_task(&d)?).await?;
    let line =
        (lines.iter().find(|l| l.starts_with("[shoal] package web"))).context("a package line")?;
    Ok((per_task[0].1, line.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_changes_1_percent_of_50_mb_moves_about_1_percent() -> anyhow::Result<()> {
    let c = one_worker(&["--no-builtin-worker"], &[]).await?;
    // 50 files of 1 MiB in a plain tar (a .tar.gz would change everything after an edit).
    let mut files: Vec<(String, Vec<u8>)> = (0..50)
        .map(|i| {
            let mut b = vec![0u8; 1024 * 1024];
            rand::rng().fill_bytes(&mut b);
            (format!("lib/part-{i:02}.bin"), b)
        })
        .collect();
    let archive = |files: &[(String, Vec<u8>)]| {
        let refs: Vec<(&str, &[u8])> = files.iter().map(|(p, b)| (p.as_str(), &b[..])).collect();
        tar_of(&refs)
    };
    let v1 = archive(&files)?;
    // 1 % of the package (512 KiB) rewritten inside one file.
    let changed = v1.len() / 100;
    rand::rng().fill_bytes(&mut files[25].1[100_000..100_000 + changed]);
    let v2 = archive(&files)?;
    for (version, bytes) in [("1.0.0", &v1), ("1.1.0", &v2)] {
        let file = c.dir.path().join(format!("web-{version}.tar"));
        std::fs::write(&file, bytes)?;
        push(&c, &file, version)?;
    }
    let (_, first) = deployed_fetching(&c, "1.0.0").await?;
    let (chunks, line) = deployed_fetching(&c, "1.1.0").await?;
    let (code, out, err) = shoal(&c, &["package", "stats", "web"])?;
    assert_eq!(code, exit::OK, "{err}");
    let versions: Vec<PackageView> = serde_json::from_str(&out)?;
    let default = shoal_shared::PoolName::parse("default")?;
    let moved = versions[1].acquired[&default].bytes_fetched;
    let share = moved as f64 / v2.len() as f64;
    eprintln!(
        "{} bytes changed of {}: {moved} bytes ({chunks} chunks, {:.2} %) fetched\n  1.0.0: {first}\n  1.1.0: {line}",
        changed,
        v2.len(),
        share * 100.0
    );
    // What a change costs beyond its own bytes: the chunks it touches are fetched whole, at
    // most one chunk (256 KiB at most, 64 KiB on average) on either side of it.
    let overhead = 2 * u64::from(shoal_shared::package::MAX_CHUNK);
    assert!(
        moved >= changed as u64 && moved <= changed as u64 + overhead,
        "{moved} bytes fetched for {changed} changed ({:.2} %)",
        share * 100.0
    );
    assert_eq!(
        versions[0].acquired[&default].bytes_fetched,
        v1.len() as u64
    );
    Ok(())
}
