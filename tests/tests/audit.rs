//! Audits anyone can verify: `shoal audit export` writes the log with its chain links and
//! the planner's signature, `shoal audit verify` checks it offline (the planner stopped)
//! and names the record a changed byte breaks; `shoal audit explain` tells from the events
//! why a task ran where it did.

use shoal_e2e::serde_json::{Value, json};
use shoal_e2e::{Cluster, WAIT, tasks};

/// `shoal audit verify FILE --key KEY` with the planner stopped or running: (exit code,
/// stdout, stderr).
fn verify(
    c: &Cluster,
    file: &std::path::Path,
    key: Option<&std::path::Path>,
) -> (i32, String, String) {
    let mut args = vec![
        "audit".to_owned(),
        "verify".to_owned(),
        file.display().to_string(),
    ];
    if let Some(k) = key {
        args.extend(["--key".to_owned(), k.display().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    c.shoal(&args).unwrap_or((-1, String::new(), String::new()))
}

/// The export's lines with line `n` (1-based) changed by `change`.
fn changed(text: &str, n: usize, change: impl Fn(&mut Value)) -> String {
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            if i + 1 == n {
                let mut v: Value = shoal_e2e::serde_json::from_str(l).expect("json line");
                change(&mut v);
                v.to_string()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_verifies_offline_and_names_the_record_one_changed_byte_breaks()
-> anyhow::Result<()> {
    let mut c = Cluster::start(&["--audit-sign-interval", "1s"]).await?;
    c.pool("eu-west", "eu").await?;
    c.target("web-1", "prod", &["web"], Some("eu-west")).await?;
    c.target("web-2", "prod", &["web"], None).await?;
    c.worker("eu-1", "eu-west", "eu", &[])?;
    c.wait_online(&["eu-1"]).await?;
    let id = c
        .deploy(&json!({"project": "shop", "environment": "prod", "steps": [
            {"name": "build", "action": {"type": "noop"}},
            {"name": "roll", "roles": ["web"], "action": {"type": "script", "script": "echo hi"}}]}))
        .await?;
    let d = c.finished(&id, WAIT).await?;
    assert_eq!(d["state"], "succeeded", "{}", d["reason"]);
    // The planner signs its head at intervals: a LogHeadSigned record in the log.
    c.wait_for("a signed head in the log", WAIT, || async {
        let e = c.api.get("/api/events?type=LogHeadSigned").await?;
        Ok(e.as_array().is_some_and(|a| !a.is_empty()).then_some(()))
    })
    .await?;

    let file = c.dir.path().join("audit.jsonl");
    let (code, _, err) = c.shoal(&["audit", "export", "--out", &file.display().to_string()])?;
    assert_eq!(code, 0, "{err}");
    let deployment_file = c.dir.path().join("deployment.jsonl");
    let (code, _, err) = c.shoal(&[
        "audit",
        "export",
        "--deployment",
        &id,
        "--out",
        &deployment_file.display().to_string(),
    ])?;
    assert_eq!(code, 0, "{err}");
    // Offline: the planner is stopped; the key is its public key file.
    c.stop_planner().await?;
    let key = c.signing_key_path()?.with_extension("key.pub");
    assert!(
        key.is_file(),
        "the planner's public key at {}",
        key.display()
    );
    let (code, out, err) = verify(&c, &file, Some(&key));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("verified: records 1.."), "{out}");
    assert!(
        out.contains("signatures of the planner inside the export hold"),
        "{out}"
    );
    let (code, out, err) = verify(&c, &deployment_file, Some(&key));
    assert_eq!(code, 0, "{out}{err}");
    let text = std::fs::read_to_string(&deployment_file)?;
    let scoped: Vec<Value> = text
        .lines()
        .filter_map(|l| shoal_e2e::serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["kind"] == "record" && v["in_scope"] == true)
        .collect();
    assert!(
        scoped
            .iter()
            .all(|v| v["event"]["stream"] == format!("deployment/{id}"))
    );
    assert_eq!(scoped[0]["event"]["type"], "DeploymentCreated");
    assert_eq!(
        scoped.last().map(|v| v["event"]["type"].clone()),
        Some("DeploymentFinished".into())
    );

    // One byte of a record changed (its stored bytes, its hash made to match): the chain
    // breaks at the next record, which the verifier names.
    let text = std::fs::read_to_string(&file)?;
    let n = text.lines().count() / 2;
    let line: Value = shoal_e2e::serde_json::from_str(text.lines().nth(n - 1).unwrap_or(""))?;
    let seq = line["seq"].as_u64().unwrap_or(0);
    let forged = changed(&text, n, |v| {
        let bytes = v["bytes"].as_str().unwrap_or("").to_owned();
        // A base64 character changed: another byte, still base64.
        let mut chars: Vec<char> = bytes.chars().collect();
        let at = chars.len() / 2;
        chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
        v["bytes"] = Value::String(chars.into_iter().collect());
    });
    let bad = c.dir.path().join("forged.jsonl");
    std::fs::write(&bad, &forged)?;
    let (code, _, err) = verify(&c, &bad, Some(&key));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&format!("(record {seq})")) && err.contains("hash does not match"),
        "{err}"
    );
    // What a record shows changed: named too.
    let shown = changed(&text, n, |v| {
        v["event"]["time"] = json!("2020-01-01T00:00:00Z")
    });
    std::fs::write(&bad, &shown)?;
    let (code, _, err) = verify(&c, &bad, Some(&key));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(&format!("(record {seq})")), "{err}");
    // A record left out.
    let gap: String = text
        .lines()
        .enumerate()
        .filter(|(i, _)| i + 1 != n)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    std::fs::write(&bad, &gap)?;
    let (code, _, err) = verify(&c, &bad, Some(&key));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(&format!("record {seq} is missing")), "{err}");
    // Another key than the planner's.
    let other = c.dir.path().join("other.key");
    shoal_e2e::run_binary(
        "shoal-planner",
        &["keygen", "--out", &other.display().to_string()],
    )?;
    let other_pub = c.dir.path().join("other.key.pub");
    let (code, _, err) = verify(&c, &file, Some(&other_pub));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("not trusted"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_tells_from_the_events_why_a_task_ran_where_it_did() -> anyhow::Result<()> {
    let mut c = Cluster::start(&[]).await?;
    c.pool("eu-west", "eu").await?;
    c.target("web-1", "prod", &["web"], Some("eu-west")).await?;
    c.worker("eu-1", "eu-west", "eu", &[])?;
    c.wait_online(&["eu-1"]).await?;
    // Fails once, then succeeds: a marker outside the task's own (fresh) directory.
    let marker = c.dir.path().join("marker").display().to_string();
    let script = format!("test -f {marker} || {{ touch {marker}; exit 3; }}");
    let id = c
        .deploy(&json!({"project": "shop", "environment": "prod", "steps": [
            {"name": "roll", "roles": ["web"], "retries": 1,
             "action": {"type": "script", "script": script}}]}))
        .await?;
    let d = c.finished(&id, WAIT).await?;
    let (_, task) = tasks(&d).into_iter().next().expect("one task");
    let task_id = task["id"].as_str().unwrap_or_default();
    let (code, out, err) = c.shoal(&["audit", "explain", task_id])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("requested by token:"), "{out}");
    assert!(
        out.contains(
            "routed to pool eu-west: the step names no pool; the target's default pool is eu-west"
        ),
        "{out}"
    );
    assert!(
        out.contains("the target's health when planned: unknown"),
        "{out}"
    );
    assert!(
        out.contains("attempt 1:") && out.contains("run 1 on worker eu-1: failed"),
        "{out}"
    );
    assert!(
        out.contains("attempt 2:") && out.contains("succeeded"),
        "{out}"
    );
    let (code, json_out, err) = c.shoal(&["--output", "json", "audit", "explain", task_id])?;
    assert_eq!(code, 0, "{err}");
    let v: Value = shoal_e2e::serde_json::from_str(&json_out)?;
    assert_eq!(v["rule"], "target_default");
    assert_eq!(v["attempts"].as_array().map(Vec::len), Some(2), "{v}");
    let (code, _, err) = c.shoal(&["audit", "explain", "0190f0f0-0000-7000-8000-000000000000"])?;
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("unknown task"), "{err}");
    Ok(())
}
