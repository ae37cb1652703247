//! `shoal audit …`: export the log with its chain links and the planner's signature, verify
//! an export offline (no planner needed), and explain from the events alone why a task ran
//! where it did.

use super::{AuditCmd, Output, show};
use anyhow::Context as _;
use serde_json::json;
use shoal_cli::client::ApiClient;
use shoal_cli::exit;
use std::io::Write as _;
use std::path::Path;

pub(super) async fn run(api: &ApiClient, out: Output, cmd: AuditCmd) -> anyhow::Result<i32> {
    match cmd {
        AuditCmd::Export {
            deployment,
            from,
            to,
            out: file,
        } => {
            let mut query = Vec::new();
            if let Some(d) = deployment {
                query.push(format!(
                    "deployment={}",
                    shoal_cli::ids::deployment(api, &d).await?
                ));
            }
            query.extend(from.map(|f| format!("from={f}")));
            query.extend(to.map(|t| format!("to={t}")));
            let path = format!("/api/audit/export?{}", query.join("&"));
            export(api, &path, file.as_deref()).await?;
            Ok(exit::OK)
        }
        AuditCmd::Verify { file, key } => verify(out, &file, key.as_deref()),
        AuditCmd::Explain { task } => {
            super::explain::run(api, out, &task).await?;
            Ok(exit::OK)
        }
    }
}

/// Streams an export into `file` (stdout when none); fails when it ends without its signed
/// head (the planner failed midway).
async fn export(api: &ApiClient, path: &str, file: Option<&Path>) -> anyhow::Result<()> {
    let mut resp = api.get_stream(path).await?;
    let mut sink: Box<dyn std::io::Write> = match file {
        Some(f) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(f).with_context(|| format!("cannot write {}", f.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut tail = Vec::new();
    let mut records = 0u64;
    while let Some(chunk) = resp.chunk().await.context("the export was cut off")? {
        sink.write_all(&chunk).context("cannot write the export")?;
        records += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        tail.extend_from_slice(&chunk);
        let keep = tail.len().saturating_sub(64 * 1024);
        tail.drain(..keep);
    }
    sink.flush().context("cannot write the export")?;
    let last = String::from_utf8_lossy(&tail);
    let last = last.trim_end().rsplit('\n').next().unwrap_or_default();
    if !last.starts_with("{\"kind\":\"head\"") {
        anyhow::bail!(
            "the export ended without the planner's signed head: the planner failed midway (see its log); export again"
        );
    }
    if let Some(f) = file {
        eprintln!(
            "{} lines written to {}; check it with `shoal audit verify {}`",
            records,
            f.display(),
            f.display()
        );
    }
    Ok(())
}

/// Checks an export offline; exits [`exit::FAILED`] naming the first bad record.
fn verify(out: Output, file: &Path, key: Option<&Path>) -> anyhow::Result<i32> {
    let trusted = match key {
        Some(k) => {
            let text = std::fs::read_to_string(k)
                .with_context(|| format!("cannot read the planner's public key {}", k.display()))?;
            Some(
                shoal_shared::signed::TrustedKeys::parse(&text)
                    .with_context(|| format!("{} is not a public key file", k.display()))?,
            )
        }
        None => None,
    };
    let reader = std::io::BufReader::new(
        std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?,
    );
    match shoal_shared::audit::verify(reader, trusted.as_ref()) {
        Ok(v) => {
            let body = json!({
                "verified": true, "first": v.first, "last": v.last, "records": v.records,
                "in_scope": v.in_scope, "key_id": v.key_id, "key_trusted": v.key_trusted,
                "signatures_inside": v.signatures_inside,
                "signatures_unchecked": v.signatures_unchecked,
            });
            show(out, &body, |_| {
                println!(
                    "verified: records {}..{} ({} records, {} in scope): every hash and chain link holds, and record {} is signed by key {}",
                    v.first, v.last, v.records, v.in_scope, v.last, v.key_id
                );
                if v.signatures_inside > 0 {
                    println!(
                        "{} signatures of the planner inside the export hold too",
                        v.signatures_inside
                    );
                }
                if v.signatures_unchecked > 0 {
                    println!(
                        "{} signatures inside are by keys not given (an earlier key?): not checked; pass every key the planner had",
                        v.signatures_unchecked
                    );
                }
                if !v.key_trusted {
                    println!(
                        "the key is the one the export names: pass --key <the planner's signing.key.pub> to check that it is the planner's"
                    );
                }
            })?;
            Ok(exit::OK)
        }
        Err(bad) => {
            let body =
                json!({"verified": false, "line": bad.line, "record": bad.seq, "error": bad.why});
            show(out, &body, |_| eprintln!("NOT VERIFIED: {bad}"))?;
            Ok(exit::FAILED)
        }
    }
}
