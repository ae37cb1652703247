//! After a clean stop, replaying the log gives the same state, and a restarted planner
//! answers the same.

use shoal_e2e::serde_json::json;
use shoal_e2e::{Cluster, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_after_a_clean_stop_equals_the_live_state() -> anyhow::Result<()> {
    let mut c = Cluster::start(&[]).await?;
    c.pool("eu-west", "eu").await?;
    c.worker("eu-1", "eu-west", "eu", &[])?;
    c.target("a", "prod", &["web"], Some("eu-west")).await?;
    c.target("b", "prod", &["web"], None).await?;
    let ok = c
        .deploy(&json!({"project": "p", "environment": "prod", "steps": [
            {"name": "s1", "roles": ["web"], "action": {"type": "script", "script": "for i in 1 2 3; do echo line $i; done"}},
            {"name": "s2", "action": {"type": "noop"}}]}))
        .await?;
    let bad = c
        .deploy(&json!({"project": "p", "environment": "prod", "steps": [
            {"name": "s1", "roles": ["web"], "action": {"type": "script", "script": "exit 4"}}]}))
        .await?;
    c.finished(&ok, WAIT).await?;
    c.finished(&bad, WAIT).await?;
    c.api
        .put("/api/targets/b", &json!({"default_pool": "eu-west"}))
        .await?;
    // Every other projection holds something too: package versions whose keys sort
    // otherwise than their ids and versions (`site-b/` before `site/`, `1.10.0` before
    // `1.9.0`), a webhook, an idempotency key, dashboard sessions open and ended.
    let archive = c.write_file("site.tar", "")?;
    for (id, version) in [("site", "1.9.0"), ("site", "1.10.0"), ("site-b", "1.0.0")] {
        std::fs::write(&archive, shoal_e2e::tar_of(&[("v", version.as_bytes())])?)?;
        let path = archive.display().to_string();
        let (code, _, err) =
            c.shoal(&["package", "push", &path, "--id", id, "--version", version])?;
        anyhow::ensure!(code == 0, "push {id} {version}: {err}");
    }
    c.api
        .post(
            "/api/webhooks",
            &json!({"name": "ci", "url": "http://127.0.0.1:9/hook", "types": ["PoolRegistered"]}),
        )
        .await?;
    let keyed = reqwest::Client::new()
        .post(format!("{}/api/pools", c.api.base()))
        .bearer_auth(c.admin_token()?)
        .header("Idempotency-Key", "pool-us")
        .json(&json!({"name": "us-east", "region": "us"}))
        .send()
        .await?;
    anyhow::ensure!(keyed.status() == 201, "{}", keyed.text().await?);
    let admin = c.admin_token()?;
    let kept = c.dashboard_login(&admin).await?;
    let ended = c.dashboard_login(&admin).await?;
    c.dashboard_logout(&ended).await?;
    let sessions = c.events(Some("token/admin")).await?;
    let types: Vec<_> = sessions.iter().map(|e| e["type"].clone()).collect();
    assert_eq!(
        types[types.len() - 3..],
        [
            json!("SessionStarted"),
            json!("SessionStarted"),
            json!("SessionEnded")
        ],
        "{sessions:?}"
    );
    assert!(!kept.is_empty());

    let snapshot = |c: &Cluster| {
        let api = c.api.clone();
        let (ok, bad) = (ok.clone(), bad.clone());
        async move {
            let mut all = Vec::new();
            for path in [
                "/api/pools".to_owned(),
                "/api/targets".to_owned(),
                format!("/api/deployments/{ok}"),
                format!("/api/deployments/{bad}"),
                "/api/deployments".to_owned(),
                "/api/events?limit=10000".to_owned(),
            ] {
                let mut v = api.get(&path).await?;
                // Liveness is not part of the log.
                if let Some(items) = v.as_array_mut() {
                    for i in items {
                        if let Some(o) = i.as_object_mut() {
                            o.remove("workers_online");
                        }
                    }
                }
                all.push(v);
            }
            let d = api.get(&format!("/api/deployments/{ok}")).await?;
            let t = d["steps"][0]["tasks"][0]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            all.push(
                api.get(&format!("/api/deployments/{ok}/tasks/{t}/log"))
                    .await?,
            );
            anyhow::Ok(all)
        }
    };
    let before = snapshot(&c).await?;
    let builtin = |workers: &shoal_e2e::serde_json::Value| {
        workers
            .as_array()
            .into_iter()
            .flatten()
            .filter(|w| w["pool"] == "default")
            .filter_map(|w| w["name"].as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    let builtin_before = builtin(&c.api.get("/api/workers").await?);
    assert_eq!(builtin_before.len(), 1, "{builtin_before:?}");

    // Replay is offline: it refuses a log a running planner holds, and a dir without a log.
    let (replay_ok, out) = c.replay()?;
    assert!(
        !replay_ok && out.contains("in use by another process") && out.contains("stop it first"),
        "{out}"
    );
    let (replay_ok, out) = shoal_e2e::run_binary(
        "shoal-planner",
        &["replay", "--data-dir", "/nonexistent/shoal"],
    )?;
    assert!(
        !replay_ok && out.contains("no event log in /nonexistent/shoal"),
        "{out}"
    );

    c.stop_planner().await?;

    let (replay_ok, out) = c.replay()?;
    assert!(replay_ok, "replay failed:\n{out}");
    assert!(out.contains("hash chain verified"), "{out}");
    assert!(out.contains("projections equal to the log"), "{out}");
    assert!(out.contains("2 deployments"), "{out}");

    c.start_planner().await?;
    let after = snapshot(&c).await?;
    // The built-in worker keeps its name across restarts.
    assert_eq!(builtin(&c.api.get("/api/workers").await?), builtin_before);
    // The restarted planner adds nothing to the log for a clean history (the built-in worker
    // joins again, which is a new fact after the snapshot's events).
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        if i == 5 {
            let n = b.as_array().map_or(0, Vec::len);
            assert_eq!(
                &a.as_array().map(|v| v[..n].to_vec()).unwrap_or_default(),
                b.as_array().unwrap_or(&vec![])
            );
        } else {
            assert_eq!(a, b, "answer {i} changed across restart");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_planner_on_the_same_data_dir_names_the_pid_of_the_first() -> anyhow::Result<()> {
    let c = Cluster::start(&[]).await?;
    let first = c
        .planner
        .as_ref()
        .and_then(|p| p.pid())
        .ok_or_else(|| anyhow::anyhow!("the planner has no pid"))?;
    let data_dir = c.data_dir().display().to_string();
    let nats = c.nats.url();

    let second = tokio::task::spawn_blocking(move || {
        shoal_e2e::run_binary(
            "shoal-planner",
            &[
                "--data-dir",
                &data_dir,
                "--http-addr",
                "127.0.0.1:0",
                "--nats-url",
                &nats,
            ],
        )
    });
    let (ok, out) = tokio::time::timeout(WAIT, second).await???;

    assert!(!ok, "a second planner started on a data dir in use:\n{out}");
    let wanted = format!(
        "another planner is using {} (pid {first})",
        c.data_dir().display()
    );
    assert!(out.contains(&wanted), "{out}");
    assert!(!out.contains("WouldBlock"), "{out}");
    Ok(())
}
