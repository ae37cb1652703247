//! `shoal package …`: push a file to the package feed (streamed, with a progress bar on a
//! terminal), list versions, remove one.

use super::{Output, PackageCmd, render, show};
use anyhow::Context as _;
use futures::StreamExt as _;
use serde_json::json;
use shoal_cli::client::ApiClient;
use shoal_cli::exit::Refused;
use shoal_shared::PackageId;
use shoal_shared::api::{PackageView, PushedPackage};

pub(super) async fn run(api: &ApiClient, out: Output, cmd: PackageCmd) -> anyhow::Result<()> {
    match cmd {
        PackageCmd::Push { file, id, version } => {
            let (id, version) = parse(&id, &version)?;
            let pushed = push(api, &file, &id, &version).await?;
            show(out, &pushed, |p| {
                let v = &p.package;
                println!(
                    "package {} {} is in the feed: {} bytes in {} chunks, SHA-256 {}",
                    v.id, v.version, v.size, v.chunks, v.sha256
                );
                println!(
                    "stored {} new chunks ({} bytes); the feed had the other {}",
                    p.new_chunks,
                    p.new_bytes,
                    v.chunks.saturating_sub(p.new_chunks)
                );
            })?;
        }
        PackageCmd::List { id } => {
            let list = versions(api, id).await?;
            show(out, &list, |l| render::packages(l))?;
        }
        PackageCmd::Stats { id } => {
            let list = versions(api, id).await?;
            show(out, &list, |l| render::package_stats(l))?;
        }
        PackageCmd::Rm { id, version } => {
            let (id, version) = parse(&id, &version)?;
            api.delete(&format!("/api/packages/{id}/{version}")).await?;
            show(
                out,
                &json!({"removed": {"id": id, "version": version}}),
                |_| {
                    println!("package {id} {version} removed from the feed");
                },
            )?;
        }
    }
    Ok(())
}

/// The versions in the feed, of every package or of one.
async fn versions(api: &ApiClient, id: Option<String>) -> anyhow::Result<Vec<PackageView>> {
    let path = match id {
        Some(id) => format!("/api/packages/{}", parse_id(&id)?),
        None => "/api/packages".to_owned(),
    };
    Ok(api.get_as(&path).await?)
}

fn parse_id(id: &str) -> Result<PackageId, Refused> {
    PackageId::parse(id).map_err(|e| Refused(e.to_string()))
}

fn parse(id: &str, version: &str) -> Result<(PackageId, semver::Version), Refused> {
    let version = semver::Version::parse(version).map_err(|e| {
        Refused(format!(
            "package version {version:?} is not a semantic version (e.g. 1.2.3): {e}"
        ))
    })?;
    Ok((parse_id(id)?, version))
}

/// Streams the file to the planner, a progress bar on stderr when it is a terminal.
async fn push(
    api: &ApiClient,
    file: &std::path::Path,
    id: &PackageId,
    version: &semver::Version,
) -> anyhow::Result<PushedPackage> {
    let f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("cannot open {}", file.display()))?;
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let bar = indicatif::ProgressBar::new(len).with_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(format!("pushing {id} {version}"));
    let counted = bar.clone();
    let stream = tokio_util::io::ReaderStream::new(f).inspect(move |chunk| {
        if let Ok(bytes) = chunk {
            counted.inc(bytes.len() as u64);
        }
    });
    let answer = api
        .put_stream_as(
            &format!("/api/packages/{id}/{version}"),
            "application/octet-stream",
            reqwest::Body::wrap_stream(stream),
        )
        .await;
    bar.finish_and_clear();
    Ok(answer?)
}
