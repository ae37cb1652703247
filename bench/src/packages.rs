//! Scenario 8: one package deployed to 20 targets through the 2 workers of a pool — the
//! bytes that leave the centre and the time it takes — next to two baselines measured in the
//! same run, on the same broker, moving the same file to the same 20 places:
//! - the push model (Octopus's default): the server sends the whole package to every
//!   target, one message at a time, each acknowledged once written (20 × its size);
//! - a whole-file download per task from an object store on the broker (no chunks, no
//!   cache: 20 × its size).
//!
//! shoal runs it three times: the first deployment (each worker fetches every chunk once),
//! the same version again (nothing fetched), and a version with 1 % of its bytes changed
//! (only the changed chunks fetched). Its times include what the baselines do not: planning,
//! signing, the chunk cache's synced writes, putting the file together, checking it and
//! unpacking it.

use crate::system::{Layout, Shoal};
use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt as _;
use rand::RngCore as _;
use serde::Serialize;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// Targets the package goes to (all in one pool).
const TARGETS: usize = 20;
/// Workers of that pool.
const WORKERS: usize = 2;
/// Largest message of the push model (under the broker's 1 MB payload limit).
const PUSH_MESSAGE: usize = 512 * 1024;

/// Parameters of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    pub package_bytes: u64,
    pub targets: usize,
    pub workers: usize,
    pub slots_per_worker: u32,
}

/// One way of moving the package: wall time, and bytes that left the centre (the broker's
/// feed or the server) for the region.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Moved {
    pub seconds: f64,
    pub bytes_from_centre: u64,
}

/// What the run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub params: Params,
    /// shoal, first deployment of the version.
    pub shoal_first: Moved,
    /// shoal, the same version again.
    pub shoal_again: Moved,
    /// shoal, the next version, 1 % of its bytes changed.
    pub shoal_next_version: Moved,
    pub push_model: Moved,
    pub whole_download: Moved,
}

/// Runs the scenario with a package of `size` bytes.
///
/// # Errors
/// A part did not come up, or a deployment did not succeed.
pub async fn run(size: usize) -> anyhow::Result<Outcome> {
    let layout = Layout {
        pools: 1,
        workers: WORKERS,
        slots: (TARGETS / WORKERS) as u32,
        signing: true,
        feed: true,
    };
    let shoal = Shoal::start(layout).await?;
    shoal.targets(TARGETS).await?;
    let dir = tempfile::Builder::new()
        .prefix("shoal-bench-packages-")
        .tempdir()?;
    let mut data = vec![0u8; size];
    rand::rng().fill_bytes(&mut data);
    let v1 = tar_of(&data)?;
    let mid = data.len() / 2;
    rand::rng().fill_bytes(&mut data[mid..mid + size / 100]);
    let v2 = tar_of(&data)?;
    push(&shoal, "1.0.0", v1.clone()).await?;
    push(&shoal, "1.1.0", v2).await?;

    let shoal_first = deploy(&shoal, "1.0.0").await?;
    let shoal_again = deploy(&shoal, "1.0.0").await?;
    let shoal_next_version = deploy(&shoal, "1.1.0").await?;
    let js = jetstream::new(shoal_cli::local::trust::admin_client(&shoal.nats_url()).await?);
    let whole_download = whole_download(&js, &v1, dir.path()).await?;
    let push_model = push_model(&shoal.nats_url(), &v1, dir.path()).await?;
    shoal.stop().await.context("stopping the installation")?;
    Ok(Outcome {
        params: Params {
            package_bytes: v1.len() as u64,
            targets: TARGETS,
            workers: WORKERS,
            slots_per_worker: layout.slots,
        },
        shoal_first,
        shoal_again,
        shoal_next_version,
        push_model,
        whole_download,
    })
}

/// A `.tar` of one file: a change to the file changes only its part of the archive.
fn tar_of(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    tar.append_data(&mut h, "data.bin", data)?;
    Ok(tar.into_inner()?)
}

/// Pushes `bytes` as package `bench` `version`.
async fn push(shoal: &Shoal, version: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
    let _: Value = shoal
        .api
        .put_stream_as(
            &format!("/api/packages/bench/{version}"),
            "application/octet-stream",
            reqwest::Body::from(bytes),
        )
        .await
        .with_context(|| format!("pushing bench {version}"))?;
    Ok(())
}

/// Deploys `version` to every target and waits for it to succeed: the wall time, and the
/// bytes the feed sent for it (what the version's acquisitions fetched, before and after).
async fn deploy(shoal: &Shoal, version: &str) -> anyhow::Result<Moved> {
    let (fetched_before, count_before) = usage(shoal, version).await?;
    let body = json!({"project": "bench", "environment": "bench", "steps": [{
        "name": "deploy", "roles": ["bench"],
        "action": {"type": "deploy_package", "package": {"id": "bench", "version": version},
                   "script": "test -s data.bin"}}]});
    let began = Instant::now();
    let id = Shoal::deploy(&shoal.api, &body).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let d = shoal.api.get(&format!("/api/deployments/{id}")).await?;
        match d["state"].as_str() {
            Some("succeeded") => break,
            Some("failed" | "cancelled") => anyhow::bail!("deployment of {version}: {d:#}"),
            _ if Instant::now() > deadline => anyhow::bail!("deployment of {version}: {d:#}"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let seconds = began.elapsed().as_secs_f64();
    // Every task reports its acquisition before it ends; the planner may take it in after.
    let deadline = Instant::now() + Duration::from_secs(30);
    let fetched = loop {
        let (fetched, count) = usage(shoal, version).await?;
        if count >= count_before + TARGETS as u64 {
            break fetched;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{version}: {} of {TARGETS} acquisitions recorded after 30 s",
            count - count_before
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Ok(Moved {
        seconds,
        bytes_from_centre: fetched - fetched_before,
    })
}

/// (bytes fetched, acquisitions) of `version` in the bench pool.
async fn usage(shoal: &Shoal, version: &str) -> anyhow::Result<(u64, u64)> {
    let v = shoal
        .api
        .get(&format!("/api/packages/bench/{version}"))
        .await?;
    let a = &v["acquired"][crate::system::pool(0)];
    Ok((
        a["bytes_fetched"].as_u64().unwrap_or(0),
        a["count"].as_u64().unwrap_or(0),
    ))
}

/// Every target downloads the whole file from an object store on the broker: two clients
/// (the workers' hosts), each getting its ten targets' copies at once and writing them.
async fn whole_download(js: &jetstream::Context, file: &[u8], dir: &Path) -> anyhow::Result<Moved> {
    let store = js
        .create_object_store(jetstream::object_store::Config {
            bucket: "BENCH_WHOLE".into(),
            ..Default::default()
        })
        .await?;
    store.put("package", &mut &file[..]).await?;
    let began = Instant::now();
    let per_worker = TARGETS / WORKERS;
    let hosts = (0..WORKERS).map(|w| {
        let store = store.clone();
        async move {
            let gets = (0..per_worker).map(|t| {
                let store = store.clone();
                let path = dir.join(format!("download-w{w}-t{t}"));
                async move {
                    let mut object = store.get("package").await?;
                    let mut out = tokio::fs::File::create(&path).await?;
                    anyhow::Ok(tokio::io::copy(&mut object, &mut out).await?)
                }
            });
            futures::future::try_join_all(gets).await
        }
    });
    let copied = futures::future::try_join_all(hosts).await?;
    Ok(Moved {
        seconds: began.elapsed().as_secs_f64(),
        bytes_from_centre: copied.iter().flatten().sum(),
    })
}

/// The server sends the whole file to every target at once: each target's copy goes in
/// messages of [`PUSH_MESSAGE`] bytes, each answered once its receiver (one connection per
/// worker host) has written it.
async fn push_model(url: &str, file: &[u8], dir: &Path) -> anyhow::Result<Moved> {
    let server = shoal_cli::local::trust::admin_client(url).await?;
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut receivers = Vec::new();
    for w in 0..WORKERS {
        let host = shoal_cli::local::trust::admin_client(url).await?;
        let mut sub = host.subscribe(format!("bench.push.w{w}.*")).await?;
        // The server knows the subscription before the first request: else "no responders".
        host.flush().await?;
        let dir = dir.to_owned();
        let received = received.clone();
        receivers.push(tokio::spawn(async move {
            let mut files = std::collections::HashMap::new();
            while let Some(msg) = sub.next().await {
                let target = msg.subject.rsplit('.').next().unwrap_or("t").to_owned();
                let out = match files.entry(target.clone()) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => e.insert(
                        tokio::fs::File::create(dir.join(format!("pushed-w{w}-{target}"))).await?,
                    ),
                };
                tokio::io::AsyncWriteExt::write_all(out, &msg.payload).await?;
                let n = msg.payload.len() as u64;
                received.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                if let Some(reply) = msg.reply {
                    host.publish(reply, bytes::Bytes::new()).await?;
                }
            }
            anyhow::Ok(())
        }));
    }
    let began = Instant::now();
    let sends = (0..TARGETS).map(|t| {
        let server = server.clone();
        async move {
            let subject = format!("bench.push.w{}.t{t}", t % WORKERS);
            for piece in file.chunks(PUSH_MESSAGE) {
                server
                    .request(subject.clone(), bytes::Bytes::copy_from_slice(piece))
                    .await?;
            }
            anyhow::Ok(())
        }
    });
    futures::future::try_join_all(sends).await?;
    let seconds = began.elapsed().as_secs_f64();
    for r in receivers {
        r.abort();
    }
    Ok(Moved {
        seconds,
        // Every piece is answered once written: all of it is counted by now.
        bytes_from_centre: received.load(std::sync::atomic::Ordering::Relaxed),
    })
}
