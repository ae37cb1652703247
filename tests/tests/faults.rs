//! The fault suite: a deployment of 240 tasks over two pools while workers, the planner and
//! the broker are killed (SIGKILL) at seeded random moments and restarted; afterwards every
//! task has ended exactly once, the log has no duplicate, its hash chain verifies and replay
//! equals the live projections. Beside it, under the same faults, a deployment whose steps
//! are retried and one that is cancelled while it runs both end as they must.
//!
//! `SHOAL_CHAOS_SEED=<n>` replays a run (the seed is printed); `SHOAL_SOAK_SECS=<n>` keeps
//! deploying under faults for that long (a soak) instead of one round.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use shoal_e2e::{Cluster, tasks};
use std::time::{Duration, Instant};

const POOLS: [(&str, &str, &str); 2] = [("eu-west", "eu", "e"), ("us-east", "us", "u")];
const WORKERS_PER_POOL: usize = 3;
const TARGETS_PER_POOL: usize = 60;
/// Targets per pool of the side deployments (retried, cancelled) of each round.
const SIDE_TARGETS_PER_POOL: usize = 5;
/// Faults per round in the default (CI) run.
const FAULTS: usize = 6;
/// Worker flags: few slots, so a round lasts long enough for its faults.
const WORKER: &[&str] = &["--slots", "2", "--heartbeat-secs", "1"];

#[derive(Debug, Clone, Copy)]
enum Fault {
    Worker,
    Planner,
    Broker,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_while_workers_the_planner_and_the_broker_are_killed() -> anyhow::Result<()>
{
    let seed: u64 = std::env::var("SHOAL_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let soak = std::env::var("SHOAL_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs);
    eprintln!("chaos seed {seed} (SHOAL_CHAOS_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);

    let mut c = Cluster::start(&["--no-builtin-worker", "--task-ack-wait-secs", "2"]).await?;
    let mut names = Vec::new();
    for (pool, region, prefix) in POOLS {
        c.pool(pool, region).await?;
        for i in 0..TARGETS_PER_POOL {
            c.target(&format!("{prefix}t{i}"), "prod", &["web"], Some(pool))
                .await?;
        }
        for i in 0..SIDE_TARGETS_PER_POOL {
            c.target(&format!("{prefix}b{i}"), "prod", &["batch"], Some(pool))
                .await?;
        }
        for i in 1..=WORKERS_PER_POOL {
            let name = format!("{prefix}{i}");
            c.worker(&name, pool, region, WORKER)?;
            names.push((name, pool, region));
        }
    }
    let all: Vec<&str> = names.iter().map(|(n, _, _)| n.as_str()).collect();
    c.wait_online(&all).await?;

    let started = Instant::now();
    let mut rounds = 0;
    loop {
        rounds += 1;
        let id = c
            .deploy(&json!({"project": "chaos", "environment": "prod", "steps": [
                {"name": "work", "roles": ["web"], "max_attempts": 20,
                 "action": {"type": "script", "script": "sleep 0.$((5 + RANDOM % 5)); echo done"}},
                {"name": "check", "roles": ["web"], "max_attempts": 20, "action": {"type": "noop"}}]}))
            .await?;
        // Beside it, under the same faults: a step that fails its first attempt and is
        // retried, and a deployment cancelled while its tasks run.
        let flaky = c
            .deploy(&json!({"project": "chaos-retry", "environment": "prod", "steps": [
                {"name": "flaky", "roles": ["batch"], "max_attempts": 20, "retries": 2,
                 "retry_backoff_secs": 1,
                 "action": {"type": "script", "script": "[ \"$SHOAL_ATTEMPT\" -ge 2 ] || exit 7; echo ok"}}]}))
            .await?;
        let doomed = c
            .deploy(
                &json!({"project": "chaos-cancel", "environment": "prod", "steps": [
                {"name": "long", "roles": ["batch"], "max_attempts": 20,
                 "action": {"type": "script", "script": "sleep 60"}}]}),
            )
            .await?;
        let mut faults = Vec::new();
        let mut finished = None;
        let mut cancelled = false;
        for _ in 0..FAULTS {
            if !cancelled {
                // The planner may be down right now: ask until it answers.
                cancelled = c
                    .api
                    .post(&format!("/api/deployments/{doomed}/cancel"), &json!({}))
                    .await
                    .is_ok();
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
            if let Some(d) = done(&c, &id).await {
                finished = Some(d);
                break;
            }
            let fault = match rng.random_range(0..4) {
                0 | 1 => Fault::Worker,
                2 => Fault::Planner,
                _ => Fault::Broker,
            };
            let down = Duration::from_millis(rng.random_range(0..1500));
            match fault {
                Fault::Worker => {
                    let (name, pool, region) = names[rng.random_range(0..names.len())].clone();
                    c.kill_worker(&name).await?;
                    tokio::time::sleep(down).await;
                    c.worker(&name, pool, region, WORKER)?;
                    faults.push(format!("worker {name} down {down:?}"));
                }
                Fault::Planner => {
                    c.kill_planner().await?;
                    tokio::time::sleep(down).await;
                    c.start_planner().await?;
                    faults.push(format!("planner down {down:?}"));
                }
                Fault::Broker => {
                    c.nats.kill().await?;
                    tokio::time::sleep(down).await;
                    c.nats.restart().await?;
                    faults.push(format!("broker down {down:?}"));
                }
            }
        }
        eprintln!("round {rounds}: {}", faults.join(", "));
        let d = match finished {
            Some(d) => d,
            None => c.finished(&id, Duration::from_secs(240)).await?,
        };
        check_round(&c, &d).await?;
        if !cancelled {
            c.wait_for(
                "the cancellation accepted",
                Duration::from_secs(60),
                || async {
                    Ok(c.api
                        .post(&format!("/api/deployments/{doomed}/cancel"), &json!({}))
                        .await
                        .is_ok()
                        .then_some(()))
                },
            )
            .await?;
        }
        check_side(&c, &flaky, &doomed).await?;
        if soak.is_none_or(|s| started.elapsed() >= s) {
            break;
        }
    }

    // The whole log: no event twice, the chain verifies, replay equals the live state.
    let events = shoal_e2e::checks::no_event_twice(&c.api).await?;
    c.stop_planner().await?;
    let (ok, out) = c.replay()?;
    assert!(ok, "replay failed:\n{out}");
    eprintln!(
        "{rounds} round(s), {events} events, replay: {}",
        out.lines().next().unwrap_or("")
    );
    Ok(())
}

/// The retried deployment succeeded on second attempts; the cancelled one ended cancelled
/// with every task ended.
async fn check_side(c: &Cluster, flaky: &str, doomed: &str) -> anyhow::Result<()> {
    let d = c.finished(flaky, Duration::from_secs(240)).await?;
    assert_eq!(d["state"], "succeeded", "{d:#}");
    for (_, t) in tasks(&d) {
        assert_eq!(t["attempt"], 2, "{t:#}");
        let attempts: Vec<(u64, &str)> = t["attempts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| Some((a["attempt"].as_u64()?, a["state"].as_str()?)))
            .collect();
        assert!(attempts.contains(&(1, "failed")), "{t:#}");
        assert!(attempts.contains(&(2, "succeeded")), "{t:#}");
    }
    let d = c.finished(doomed, Duration::from_secs(240)).await?;
    assert_eq!(d["state"], "cancelled", "{d:#}");
    for (_, t) in tasks(&d) {
        assert!(
            matches!(t["state"].as_str(), Some("cancelled" | "skipped")),
            "{t:#}"
        );
    }
    Ok(())
}

async fn done(c: &Cluster, id: &str) -> Option<Value> {
    let d = c.api.get(&format!("/api/deployments/{id}")).await.ok()?;
    matches!(
        d["state"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
    .then_some(d)
}

/// Every task of the round ended once, in its own pool, and the deployment succeeded.
async fn check_round(c: &Cluster, d: &Value) -> anyhow::Result<()> {
    let pools: Vec<(&str, &str)> = POOLS.iter().map(|(p, _, prefix)| (*p, *prefix)).collect();
    let ran = shoal_e2e::checks::deployment_ran_once(&c.api, d, &pools).await?;
    assert_eq!(ran.tasks, 2 * POOLS.len() * TARGETS_PER_POOL);
    eprintln!(
        "{} tasks ended once; {} repeated run(s) recorded",
        ran.tasks, ran.repeated_runs
    );
    Ok(())
}
