//! `/metrics`: the planner's Prometheus figures move during a deployment — tasks by state
//! and pool, schedule-to-start and run-time histograms per pool, workers' figures from their
//! heartbeats, queue depth, the log's write and flush, the feed, refused messages — and need
//! a token like every other endpoint.

use shoal_e2e::serde_json::json;
use shoal_e2e::{Cluster, WAIT};
use std::time::Duration;

/// One scrape: every sample as (series with its labels, value).
struct Scrape(Vec<(String, f64)>);

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect();
        Scrape(samples)
    }

    /// The value of the series named `name` whose labels include every one of `labels`
    /// (`key="value"`), if there is one.
    fn value(&self, name: &str, labels: &[&str]) -> Option<f64> {
        self.0.iter().find_map(|(series, v)| {
            let (n, rest) = series.split_once('{').unwrap_or((series.as_str(), ""));
            (n == name && labels.iter().all(|l| rest.contains(l))).then_some(*v)
        })
    }

    fn get(&self, name: &str, labels: &[&str]) -> f64 {
        self.value(name, labels).unwrap_or(-1.0)
    }
}

async fn scrape(c: &Cluster) -> anyhow::Result<Scrape> {
    let resp = c.api.get_stream("/metrics").await?;
    let kind = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    Ok(Scrape::parse(&resp.text().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_during_a_deployment_per_pool_and_worker() -> anyhow::Result<()> {
    let mut c = Cluster::start(&["--no-builtin-worker"]).await?;
    c.pool("eu", "eu-west").await?;
    for t in ["t1", "t2", "t3"] {
        c.target(t, "prod", &["web"], Some("eu")).await?;
    }
    c.worker(
        "w-eu",
        "eu",
        "eu-west",
        &["--slots", "4", "--heartbeat-secs", "1"],
    )?;
    c.wait_online(&["w-eu"]).await?;

    // No token, no figures.
    let anonymous = reqwest::get(format!("http://127.0.0.1:{}/metrics", c.http_port)).await?;
    assert_eq!(anonymous.status(), 401);

    // The scripts run until the test has seen them running (a file it makes), at least 3 s.
    let go = c.dir.path().join("go");
    let script = format!(
        "sleep 3; while [ ! -f '{}' ]; do sleep 0.1; done",
        go.display()
    );
    let id = c
        .deploy(&json!({"project": "p", "environment": "prod", "steps": [
            {"name": "slow", "roles": ["web"], "action": {"type": "script", "script": script}}]}))
        .await?;
    // While the scripts run: three tasks running in pool eu, its worker's slots busy.
    let running = c
        .wait_for("tasks running and slots busy in /metrics", WAIT, || async {
            let s = scrape(&c).await?;
            let busy = s.get("shoal_pool_busy_slots", &["pool=\"eu\""]) >= 1.0
                && s.get(
                    "shoal_worker_busy_slots",
                    &["worker=\"w-eu\"", "region=\"eu-west\""],
                ) >= 1.0;
            let running = s.get("shoal_tasks", &["pool=\"eu\"", "state=\"running\""]) >= 3.0;
            Ok((busy && running).then_some(s))
        })
        .await?;
    assert_eq!(running.get("shoal_worker_up", &["worker=\"w-eu\""]), 1.0);
    assert_eq!(running.get("shoal_worker_slots", &["worker=\"w-eu\""]), 4.0);
    assert!(running.get("shoal_worker_free_disk_bytes", &["worker=\"w-eu\""]) > 0.0);
    assert_eq!(
        running.get("shoal_pool_workers_online", &["pool=\"eu\""]),
        1.0
    );
    assert!(
        running
            .value("shoal_pool_queue_pending", &["pool=\"eu\""])
            .is_some(),
        "the pool's queue depth is reported"
    );
    assert!(
        running
            .value(
                "shoal_tasks_finished_total",
                &["pool=\"eu\"", "state=\"succeeded\""]
            )
            .is_none(),
        "nothing has finished yet"
    );
    std::fs::write(&go, "")?;
    let d = c.finished(&id, WAIT).await?;
    assert_eq!(d["state"], "succeeded");

    // Afterwards: three runs counted, timed and gone from the running count.
    let done = c
        .wait_for("the finished tasks in /metrics", WAIT, || async {
            let s = scrape(&c).await?;
            let finished = s.get(
                "shoal_tasks_finished_total",
                &["pool=\"eu\"", "state=\"succeeded\""],
            );
            let running = s.get("shoal_tasks", &["pool=\"eu\"", "state=\"running\""]);
            Ok((finished == 3.0 && running <= 0.0).then_some(s))
        })
        .await?;
    let runs = done.get("shoal_task_run_seconds_count", &["pool=\"eu\""]);
    let run_time = done.get("shoal_task_run_seconds_sum", &["pool=\"eu\""]);
    assert_eq!(runs, 3.0);
    assert!(
        (9.0..120.0).contains(&run_time),
        "three runs of at least 3 s: {run_time} s"
    );
    assert_eq!(
        done.get(
            "shoal_task_schedule_to_start_seconds_count",
            &["pool=\"eu\""]
        ),
        3.0
    );
    assert!(done.get("shoal_log_append_seconds_count", &[]) > 0.0);
    assert!(done.get("shoal_log_flush_seconds_count", &[]) > 0.0);
    let head = done.get("shoal_log_sequence", &[]);
    assert!(head > 0.0);
    // The feed catches up with the log.
    c.wait_for("the feed at the log's head", WAIT, || async {
        let s = scrape(&c).await?;
        let (fed, head) = (
            s.get("shoal_feed_published_sequence", &[]),
            s.get("shoal_log_sequence", &[]),
        );
        Ok((fed == head && s.get("shoal_feed_lag_seconds_count", &[]) > 0.0).then_some(()))
    })
    .await?;

    // A cancelled deployment's tasks end once each, as cancelled.
    let stuck = c
        .deploy(&json!({"project": "p", "environment": "prod", "steps": [
            {"name": "stuck", "roles": ["web"], "action": {"type": "script", "script": "sleep 300"}}]}))
        .await?;
    c.wait_for("the stuck tasks running", WAIT, || async {
        let s = scrape(&c).await?;
        Ok((s.get("shoal_tasks", &["pool=\"eu\"", "state=\"running\""]) >= 3.0).then_some(()))
    })
    .await?;
    c.api
        .post(
            &format!("/api/deployments/{stuck}/cancel"),
            &json!({"reason": "test"}),
        )
        .await?;
    assert_eq!(c.finished(&stuck, WAIT).await?["state"], "cancelled");
    let after = c
        .wait_for("the cancelled tasks in /metrics", WAIT, || async {
            let s = scrape(&c).await?;
            let cancelled = s.get(
                "shoal_tasks_finished_total",
                &["pool=\"eu\"", "state=\"cancelled\""],
            );
            Ok((cancelled >= 3.0
                && s.get("shoal_tasks", &["pool=\"eu\"", "state=\"running\""]) <= 0.0)
                .then_some(s))
        })
        .await?;
    // Give late reports a moment: a run's end reported after the cancel counts no second time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = scrape(&c).await?;
    for s in [&after, &later] {
        assert_eq!(
            s.get(
                "shoal_tasks_finished_total",
                &["pool=\"eu\"", "state=\"cancelled\""]
            ),
            3.0
        );
        assert_eq!(
            s.get(
                "shoal_tasks_finished_total",
                &["pool=\"eu\"", "state=\"succeeded\""]
            ),
            3.0
        );
    }

    // A message the planner refuses is counted by reason.
    let client = shoal_cli::local::trust::admin_options(&c.nats.url())?
        .connect(c.nats.url())
        .await?;
    client
        .publish("shoal.heartbeat.eu.w-eu", "not a heartbeat".into())
        .await?;
    client.flush().await?;
    c.wait_for("the refusal in /metrics", WAIT, || async {
        let s = scrape(&c).await?;
        Ok(
            (s.get("shoal_refused_messages_total", &["reason=\"undecodable\""]) >= 1.0)
                .then_some(()),
        )
    })
    .await?;

    // A worker that stops is down, and its slots leave the pool's.
    c.kill_worker("w-eu").await?;
    c.wait_for("the stopped worker down in /metrics", WAIT, || async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let s = scrape(&c).await?;
        let down = s.get("shoal_worker_up", &["worker=\"w-eu\""]) == 0.0
            && s.get("shoal_pool_workers_online", &["pool=\"eu\""]) == 0.0;
        Ok(down.then_some(()))
    })
    .await?;
    Ok(())
}
