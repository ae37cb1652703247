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
use std::process::Command;
use tokio::io::AsyncReadExt as _;

/// `shoal --output json args` as admin: (exit code, stdout, stderr).
fn shoal(c: &Cluster, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let out = Command::new(local::find_binary("shoal")?)
        .arg("--api")
        .arg(c.api.base())
        .args(["--output", "json"])
        .args(args)
        .env("NO_COLOR", "1")
        .env("SHOAL_TOKEN_FILE", c.admin_token_file())
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn push(c: &Cluster, file: &std::path::Path, version: &str) -> anyhow::Result<PushedPackage> {
    let path = file.display().to_string();
    let args = [
        "package",
        "push",
        &path,
        "--id",
        "web",
        "--version",
        version,
    ];
    let (code, out, err) = shoal(c, &args)?;
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

    // A version never changes: other bytes under 1.0.0 are refused, naming it.
    let (code, _, err) = shoal(
        &c,
        &[
            "package",
            "push",
            &file2.display().to_string(),
            "--id",
            "web",
            "--version",
            "1.0.0",
        ],
    )?;
    assert_ne!(code, exit::OK);
    assert!(
        err.contains("web 1.0.0") && err.contains("new version"),
        "{err}"
    );
    let (code, _, err) = shoal(
        &c,
        &[
            "package",
            "push",
            "/nonexistent",
            "--id",
            "web",
            "--version",
            "2.0.0",
        ],
    )?;
    assert_ne!(code, exit::OK);
    assert!(err.contains("/nonexistent"), "{err}");
    let (code, _, err) = shoal(
        &c,
        &[
            "package",
            "push",
            &file1.display().to_string(),
            "--id",
            "web",
            "--version",
            "1.0",
        ],
    )?;
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
