//! The conformance client in Python (`tests/conformance/conformance.py`), written from
//! docs/WIRE.md alone, against a real installation: it follows the event feed from its first
//! record checking each against docs/schemas, resumes after a disconnect with no gap or
//! repeat, and runs one task as a foreign worker. Needs python3 with nats-py, msgpack,
//! PyNaCl, nkeys and jsonschema (`.ci/run` installs them).

use shoal_cli::local::trust::{bundle_dir, integrator_client, worker_client};
use shoal_e2e::serde_json::json;
use shoal_e2e::{Cluster, WAIT, tasks};
use shoal_trust::{Identity, IdentityFiles, Worker};
use std::path::Path;

fn files(f: &IdentityFiles, inbox: String) -> shoal_e2e::serde_json::Value {
    json!({"nkey": f.nkey, "ca": f.ca, "cert": f.cert, "key": f.key, "inbox_prefix": inbox})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_written_from_the_wire_reference_follows_the_feed_and_runs_a_task()
-> anyhow::Result<()> {
    let c = Cluster::start(&[]).await?;
    c.pool("foreign", "py").await?;
    // Three targets: each deployment's tasks are planned together, so the feed has frames
    // of more than one record for the client to read.
    for t in ["t-1", "t-2", "t-3"] {
        c.target(t, "prod", &["web"], None).await?;
    }
    for _ in 0..3 {
        let id = c
            .deploy(&json!({"project": "p", "environment": "prod", "steps": [
                {"name": "x", "roles": ["web"], "action": {"type": "script", "script": "echo hi"}}]}))
            .await?;
        c.finished(&id, WAIT).await?;
    }
    let url = c.nats.url();
    let (_, integrator) = integrator_client(&url, "conformance").await?;
    c.api
        .put("/api/feed/consumers/conformance", &json!({"after": 0}))
        .await?;
    // The foreign worker's identity (bound in the bundle; the Python client connects with it).
    drop(worker_client(&url, "py-1", "foreign").await?);
    let bundle = bundle_dir(c.dir.path());
    let worker = IdentityFiles::of(
        &bundle,
        &Identity::Worker(Worker {
            pool: "foreign".into(),
            name: "py-1".into(),
            region: None,
        }),
    );
    let head = c.api.get("/api/status").await?["log_seq"]
        .as_u64()
        .unwrap_or(0);
    // Its task: a no-op in pool foreign.
    let id = c
        .deploy(&json!({"project": "p", "environment": "prod", "steps": [
            {"name": "foreign", "pool": "foreign", "action": {"type": "noop"}}]}))
        .await?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut integrator_json = files(&integrator, "_INBOX_shoal_integrator.conformance".into());
    integrator_json["consumer"] = json!("feed-conformance");
    let mut worker_json = files(&worker, "_INBOX_shoal.foreign.py-1".into());
    worker_json["pool"] = json!("foreign");
    worker_json["name"] = json!("py-1");
    let config = json!({
        "nats_url": url,
        "schemas": root.join("docs").join("schemas"),
        "head": head,
        "planner_key": c.signing_key_path()?.with_extension("key.pub"),
        "integrator": integrator_json,
        "worker": worker_json,
    });
    let config_file = c.write_file("conformance.json", &config.to_string())?;
    let script = root
        .join("tests")
        .join("conformance")
        .join("conformance.py");
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(180),
        tokio::process::Command::new("python3")
            .arg(&script)
            .arg(&config_file)
            .output(),
    )
    .await??;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the conformance client failed:\n{text}"
    );
    assert!(text.contains("CONFORMANCE OK"), "{text}");
    assert!(
        text.contains("frames of more than one record: yes"),
        "the client read no frame of several records:\n{text}"
    );
    eprintln!("{text}");
    // The foreign worker's reports were taken as any worker's.
    let d = c.finished(&id, WAIT).await?;
    assert_eq!(d["state"], "succeeded", "{d}");
    let (_, task) = tasks(&d).into_iter().next().expect("one task");
    assert_eq!(task["worker"], "py-1", "{task}");
    // And the schemas are what the events' source says (generated, checked in).
    let check = std::process::Command::new("python3")
        .arg(root.join("docs").join("schemas").join("generate.py"))
        .arg("--check")
        .output()?;
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    Ok(())
}
