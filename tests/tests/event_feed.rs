//! The event feed as an integrator sees it: the JetStream stream `SHOAL_EVENTS`, followed
//! with the read-only identity of an integrator, and the log's records as Server-Sent Events.

use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use shoal_cli::local::trust::integrator_client;
use shoal_e2e::serde_json::{Value, json};
use shoal_e2e::{Cluster, WAIT};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One record as the integrator received it: the stream sequence of its frame, the frame's
/// `Shoal-Seq` and `Shoal-Seq-Last` headers, the frame's subject and the record.
#[derive(Debug, Clone)]
struct Received {
    stream_seq: u64,
    frame: (u64, u64),
    subject: String,
    body: Value,
}

impl Received {
    fn seq(&self) -> u64 {
        self.body["seq"].as_u64().unwrap_or(0)
    }
}

/// The records of a frame (JSON lines) as received on stream message `stream_seq`.
fn records_of(m: &async_nats::Message, stream_seq: u64) -> anyhow::Result<Vec<Received>> {
    let header = |name| {
        m.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .and_then(|v| v.as_str().parse().ok())
            .unwrap_or(0)
    };
    let frame = (header("Shoal-Seq"), header("Shoal-Seq-Last"));
    m.payload
        .split(|b| *b == b'\n')
        .map(|line| {
            Ok(Received {
                stream_seq,
                frame,
                subject: m.subject.to_string(),
                body: shoal_e2e::serde_json::from_slice(line)?,
            })
        })
        .collect()
}

/// Follows the feed through the integrator's consumer `feed-<name>` (made by the planner),
/// through broker restarts, until `stop`.
async fn follow(
    client: async_nats::Client,
    name: &'static str,
    seen: Arc<Mutex<Vec<Received>>>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let round = async {
            let js = jetstream::new(client.clone());
            let stream = js.get_stream("SHOAL_EVENTS").await?;
            let consumer: consumer::PullConsumer = stream
                .get_consumer(&format!("feed-{name}"))
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            loop {
                let mut batch = consumer
                    .fetch()
                    .max_messages(500)
                    .expires(Duration::from_millis(500))
                    .messages()
                    .await?;
                while let Some(m) = batch.next().await {
                    let m = m.map_err(|e| anyhow::anyhow!(e))?;
                    let info = m.info().map_err(|e| anyhow::anyhow!(e))?;
                    let records = records_of(&m, info.stream_sequence)?;
                    seen.lock().expect("not poisoned").extend(records);
                    m.ack().await.map_err(|e| anyhow::anyhow!(e))?;
                }
                if stop.is_cancelled() {
                    return anyhow::Ok(());
                }
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            _ = round => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each record once (a redelivery to the consumer after a lost ack is the same frame), in
/// log order.
fn distinct(seen: &Mutex<Vec<Received>>) -> Vec<Received> {
    let mut out: Vec<Received> = Vec::new();
    for r in seen.lock().expect("not poisoned").iter() {
        if !out
            .iter()
            .any(|o| o.seq() == r.seq() && o.stream_seq == r.stream_seq)
        {
            out.push(r.clone());
        }
    }
    out.sort_by_key(Received::seq);
    out
}

async fn log_seq(c: &Cluster) -> anyhow::Result<u64> {
    Ok(c.api.get("/api/status").await?["log_seq"]
        .as_u64()
        .unwrap_or(0))
}

/// Every record of the log up to `upto`, from the API.
async fn log_records(c: &Cluster, upto: u64) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut after = 0;
    while after < upto {
        let page = c
            .api
            .get(&format!("/api/events?after={after}&limit=10000"))
            .await?;
        let page = page.as_array().cloned().unwrap_or_default();
        let Some(last) = page.last() else { break };
        after = last["seq"].as_u64().unwrap_or(upto);
        out.extend(page.into_iter().filter(|e| e["seq"].as_u64() <= Some(upto)));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integrator_follows_every_event_once_in_log_order_across_a_planner_kill_and_broker_restarts()
-> anyhow::Result<()> {
    let mut c = Cluster::start(&["--task-ack-wait-secs", "2", "--builtin-slots", "8"]).await?;
    let (client, _) = integrator_client(&c.nats.url(), "audit").await?;
    c.api
        .put("/api/feed/consumers/audit", &json!({"after": 0}))
        .await?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let following = tokio::spawn(follow(client, "audit", seen.clone(), stop.clone()));
    for i in 0..200 {
        c.target(&format!("t-{i}"), "prod", &["web"], None).await?;
    }
    let id = c
        .deploy(&json!({"project": "p", "environment": "prod", "steps": [
            {"name": "run", "roles": ["web"], "max_parallel": 8,
             "action": {"type": "script", "script": "sleep 0.05; echo $SHOAL_TARGET"}}]}))
        .await?;
    // Midway: the planner is killed, the broker restarted while it is down, the planner
    // started again, and the broker restarted under the running planner.
    c.wait_for("some tasks finished", WAIT, || async {
        let n = distinct(&seen)
            .iter()
            .filter(|r| r.body["type"] == "TaskFinished")
            .count();
        Ok((n >= 20).then_some(()))
    })
    .await?;
    c.kill_planner().await?;
    c.nats.stop().await?;
    c.nats.restart().await?;
    c.start_planner().await?;
    c.wait_for("more tasks finished", WAIT, || async {
        let n = distinct(&seen)
            .iter()
            .filter(|r| r.body["type"] == "TaskFinished")
            .count();
        Ok((n >= 60).then_some(()))
    })
    .await?;
    c.nats.stop().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.nats.restart().await?;
    let d = c.finished(&id, WAIT * 3).await?;
    assert_eq!(d["state"], "succeeded", "{}", d["reason"]);

    let head = log_seq(&c).await?;
    // A batch delivered while the broker went down comes again after the consumer's ack
    // wait (30 s): the integrator orders what it holds by sequence.
    c.wait_for("the integrator holds the whole log", WAIT, || async {
        let got = distinct(&seen);
        let held = got.iter().take_while(|r| r.seq() <= head).count();
        Ok((held as u64 >= head).then_some(()))
    })
    .await?;
    stop.cancel();
    let _ = following.await;
    let got: Vec<Received> = distinct(&seen)
        .into_iter()
        .take_while(|r| r.seq() <= head)
        .collect();
    // Every record once (in one frame only), in log order: frames follow each other in the
    // stream as their records do in the log, each names its first and last record.
    let seqs: Vec<u64> = got.iter().map(Received::seq).collect();
    assert_eq!(seqs, (1..=head).collect::<Vec<_>>(), "gap or repeat");
    assert!(
        got.windows(2).all(|w| w[0].stream_seq <= w[1].stream_seq),
        "frames out of log order"
    );
    assert!(
        got.iter()
            .all(|r| r.frame.0 <= r.seq() && r.seq() <= r.frame.1)
    );
    assert!(
        got.windows(2)
            .all(|w| w[0].stream_seq != w[1].stream_seq || w[0].frame == w[1].frame),
        "one frame, two headers"
    );
    let frames = got.last().map_or(0, |r| r.stream_seq);
    assert!(
        frames < head,
        "{frames} frames for {head} records: none held more than one"
    );
    // The same records as the log's, by id and type; each on its kind/id/type subject.
    let log = log_records(&c, head).await?;
    assert_eq!(log.len(), got.len());
    for (r, e) in got.iter().zip(&log) {
        assert_eq!(r.body["event_id"], e["event_id"], "record {}", r.seq());
        assert_eq!(r.body["type"], e["type"]);
        assert_eq!(r.body["data"], e["data"], "record {}", r.seq());
        let stream = e["stream"].as_str().unwrap_or_default();
        let (kind, id) = stream.split_once('/').unwrap_or((stream, "_"));
        let want = format!(
            "shoal.events.{kind}.{id}.{}",
            e["type"].as_str().unwrap_or("")
        );
        assert_eq!(r.subject, want);
    }
    // The deployment's 200 tasks each finished once in the feed.
    let finished = got
        .iter()
        .filter(|r| r.body["type"] == "TaskFinished" && r.body["correlation_id"] == id.as_str())
        .count();
    assert!(finished >= 200, "{finished} TaskFinished events");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integrator_resumes_from_any_sequence_filtered_and_can_read_nothing_else()
-> anyhow::Result<()> {
    let c = Cluster::start(&[]).await?;
    let (client, files) = integrator_client(&c.nats.url(), "billing").await?;
    c.target("t-1", "prod", &["web"], None).await?;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = c
            .deploy(&json!({"project": "p", "environment": "prod", "steps": [
                {"name": "run", "roles": ["web"], "action": {"type": "noop"}}]}))
            .await?;
        c.finished(&id, WAIT).await?;
        ids.push(id);
    }
    // From the middle of the second deployment: its events from there, and the third's.
    let second = c
        .api
        .get(&format!("/api/events?stream=deployment/{}", ids[1]))
        .await?;
    let from = second[2]["seq"].as_u64().unwrap_or(0);
    let (code, out, err) = c.shoal(&[
        "feed",
        "consumer",
        "billing",
        "--after",
        &(from - 1).to_string(),
        "--filter",
        "shoal.events.deployment.>",
    ])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("consumer feed-billing"), "{out}");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let following = tokio::spawn(follow(
        client.clone(),
        "billing",
        seen.clone(),
        stop.clone(),
    ));
    let head = log_seq(&c).await?;
    let want: Vec<u64> = log_records(&c, head)
        .await?
        .iter()
        .filter(|e| {
            e["seq"].as_u64() >= Some(from)
                && e["stream"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("deployment/"))
        })
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    // The consumer starts at the frame holding `from`: the integrator skips what is before.
    c.wait_for("the filtered feed from the sequence", WAIT, || async {
        let got: Vec<u64> = distinct(&seen)
            .iter()
            .map(Received::seq)
            .filter(|s| *s >= from)
            .collect();
        Ok((got == want).then_some(()))
    })
    .await?;
    stop.cancel();
    let _ = following.await;
    assert!(want.contains(&from) && want.len() > 5, "{want:?}");
    let delivered = distinct(&seen);
    assert!(
        delivered.iter().all(|r| r.frame.1 >= from),
        "a frame before the one holding {from} was delivered"
    );
    let first = delivered
        .iter()
        .find(|r| r.seq() >= from)
        .map(|r| r.body.clone())
        .unwrap_or_default();
    assert_eq!(first["correlation_id"], ids[1].as_str());

    // Read-only: no publish into the feed or onto any shoal subject is stored, no other
    // stream can be read, no consumer made (a push consumer could have the broker deliver
    // the feed anywhere), and another integrator's consumer is out of reach.
    let js = jetstream::new(client.clone());
    let forged = js
        .publish("shoal.events.deployment.x.DeploymentFinished", "{}".into())
        .await;
    let stored = match forged {
        Ok(ack) => tokio::time::timeout(Duration::from_secs(3), ack)
            .await
            .is_ok_and(|a| a.is_ok()),
        Err(_) => false,
    };
    assert!(!stored, "an integrator published into the feed");
    let within = |f| tokio::time::timeout(Duration::from_secs(3), f);
    let tasks = within(js.get_stream("SHOAL_TASKS")).await;
    assert!(
        !matches!(tasks, Ok(Ok(_))),
        "an integrator read the task stream's info"
    );
    let events = js.get_stream("SHOAL_EVENTS").await?;
    let push = consumer::push::Config {
        durable_name: Some("sneaky".into()),
        deliver_subject: "shoal.heartbeat.default.w1".into(),
        ..Default::default()
    };
    let made = tokio::time::timeout(Duration::from_secs(3), events.create_consumer(push)).await;
    assert!(
        !matches!(made, Ok(Ok(_))),
        "an integrator made a push consumer"
    );
    c.api
        .put("/api/feed/consumers/audit", &json!({"after": 0}))
        .await?;
    let theirs = tokio::time::timeout(
        Duration::from_secs(3),
        events.get_consumer::<consumer::pull::Config>("feed-audit"),
    )
    .await;
    assert!(
        !matches!(theirs, Ok(Ok(_))),
        "an integrator read another's consumer"
    );
    let deleted =
        tokio::time::timeout(Duration::from_secs(3), events.delete_consumer("feed-audit")).await;
    assert!(
        !matches!(deleted, Ok(Ok(_))),
        "an integrator deleted another's consumer"
    );
    let admin = shoal_cli::local::trust::admin_client(&c.nats.url()).await?;
    let still = jetstream::new(admin.clone())
        .get_stream("SHOAL_EVENTS")
        .await?
        .get_consumer::<consumer::pull::Config>("feed-audit")
        .await;
    assert!(still.is_ok(), "the other integrator's consumer is gone");
    let head_after = log_seq(&c).await?;
    let mut events = jetstream::new(admin).get_stream("SHOAL_EVENTS").await?;
    let last_frame = events.info().await?.state.last_sequence;
    let feed = events
        .get_raw_message(last_frame)
        .await?
        .headers
        .get("Shoal-Seq-Last")
        .and_then(|v| v.as_str().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        feed > from && feed <= head_after,
        "the feed's last record {feed}, the log's {head_after}"
    );
    assert!(files.env.is_file(), "the integrator's env file");
    let env = std::fs::read_to_string(&files.env)?;
    assert!(
        env.contains("SHOAL_NATS_INBOX_PREFIX=_INBOX_shoal_integrator.billing"),
        "{env}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_retention_dropped_every_frame_a_restarted_planner_goes_on_where_it_stood()
-> anyhow::Result<()> {
    let mut c = Cluster::start(&["--events-max-age", "2s"]).await?;
    let (client, _) = integrator_client(&c.nats.url(), "archive").await?;
    for t in ["t-1", "t-2", "t-3", "t-4"] {
        c.target(t, "prod", &["web"], None).await?;
    }
    let body = json!({"project": "p", "environment": "prod", "steps": [
        {"name": "run", "roles": ["web"], "action": {"type": "noop"}}]});
    let first = c.deploy(&body).await?;
    c.finished(&first, WAIT).await?;
    // The stream keeps its last sequence when its age limit drops every frame: nothing in
    // it says which record the last one held.
    let admin = shoal_cli::local::trust::admin_client(&c.nats.url()).await?;
    let js = jetstream::new(admin);
    // Read between two reads of the log's head that agree: nothing was logged meanwhile.
    let (frames, head) = c
        .wait_for("every frame dropped by age", WAIT, || async {
            let before = log_seq(&c).await?;
            let mut s = js.get_stream("SHOAL_EVENTS").await?;
            let state = s.info().await?.state.clone();
            let after = log_seq(&c).await?;
            Ok(
                (state.messages == 0 && state.last_sequence > 0 && before == after)
                    .then_some((state.last_sequence, after)),
            )
        })
        .await?;
    // A deployment's four tasks planned together made frames of more than one record.
    assert!(frames < head, "{frames} frames for {head} records");
    c.kill_planner().await?;
    c.start_planner().await?;
    // Followed from the restart on (frames live two seconds here).
    c.api
        .put("/api/feed/consumers/archive", &json!({"after": head}))
        .await?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let following = tokio::spawn(follow(client, "archive", seen.clone(), stop.clone()));
    let second = c.deploy(&body).await?;
    c.finished(&second, WAIT).await?;
    let head2 = log_seq(&c).await?;
    // Exactly the records after the restart's position: none again, none left out (up to
    // the second deployment's end: the planner may log more since, e.g. a worker's presence).
    let want: Vec<u64> = (head + 1..=head2).collect();
    c.wait_for("the records after the dropped frames", WAIT, || async {
        let got: Vec<u64> = distinct(&seen)
            .iter()
            .map(Received::seq)
            .take_while(|s| *s <= head2)
            .collect();
        if got.iter().zip(&want).any(|(g, w)| g != w) {
            anyhow::bail!("got {got:?}, want {want:?}");
        }
        Ok((got == want).then_some(()))
    })
    .await?;
    stop.cancel();
    let _ = following.await;
    let got = distinct(&seen);
    assert!(
        got.iter().all(|r| r.stream_seq > frames),
        "an old frame came again"
    );
    // The first frame after the restart holds the first record after the dropped ones.
    let next = js
        .get_stream("SHOAL_EVENTS")
        .await?
        .get_raw_message(frames + 1)
        .await?;
    let first_after = next.headers.get("Shoal-Seq").map(|v| v.as_str().to_owned());
    assert_eq!(
        first_after,
        Some((head + 1).to_string()),
        "published again from elsewhere"
    );
    assert!(
        got.iter()
            .any(|r| r.body["correlation_id"] == second.as_str()),
        "the second deployment's records"
    );
    Ok(())
}

/// Reads Server-Sent Events from `GET path` until `want` records arrived or the deadline:
/// (id, event type, data) of each.
async fn sse(
    c: &Cluster,
    path: &str,
    last_id: Option<u64>,
    want: usize,
) -> anyhow::Result<Vec<(u64, String, Value)>> {
    let token = c.admin_token()?;
    let mut req = reqwest::Client::new()
        .get(format!("{}{path}", c.api.base()))
        .bearer_auth(token);
    if let Some(id) = last_id {
        req = req.header("Last-Event-ID", id.to_string());
    }
    let mut resp = req.send().await?.error_for_status()?;
    let mut text = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while out.len() < want {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk()).await??;
        let Some(chunk) = chunk else { break };
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse().ok();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if let Some(id) = id {
                out.push((id, event, shoal_e2e::serde_json::from_str(&data)?));
            }
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_resume_after_last_event_id_and_filter_by_type() -> anyhow::Result<()> {
    let c = Cluster::start(&[]).await?;
    c.target("t-1", "prod", &["web"], None).await?;
    let deploy = || async {
        let id = c
            .deploy(&json!({"project": "p", "environment": "prod", "steps": [
                {"name": "run", "roles": ["web"], "action": {"type": "noop"}}]}))
            .await?;
        c.finished(&id, WAIT).await?;
        anyhow::Ok(id)
    };
    let first = deploy().await?;
    let all = log_records(&c, log_seq(&c).await?).await?;
    let cut = all[all.len() / 2]["seq"].as_u64().unwrap_or(0);
    // Resumed after `cut`: every later record, in order, with its sequence as id.
    let got = sse(
        &c,
        "/api/events/stream",
        Some(cut),
        all.len() - all.len() / 2 - 1,
    )
    .await?;
    let want: Vec<u64> = all
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .filter(|s| *s > cut)
        .collect();
    let ids: Vec<u64> = got.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(ids, want);
    assert!(
        got.iter()
            .all(|(id, t, data)| data["seq"] == *id && data["type"] == *t)
    );
    // Filtered by type, live: a deployment made after the stream opened.
    let path = "/api/events/stream?type=DeploymentCreated,DeploymentFinished".to_owned();
    let live = {
        let c = &c;
        async move { sse(c, &path, None, 2).await }
    };
    let (live, second) = tokio::join!(live, async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        deploy().await
    });
    let (live, second) = (live?, second?);
    let types: Vec<&str> = live.iter().map(|(_, t, _)| t.as_str()).collect();
    assert_eq!(types, ["DeploymentCreated", "DeploymentFinished"]);
    assert!(
        live.iter()
            .all(|(_, _, d)| d["correlation_id"] == second.as_str())
    );
    assert_ne!(first, second);
    // Bad input is named.
    let bad = c.api.get("/api/events?type=TaskFinishd").await;
    shoal_e2e::assert_api_error(
        bad,
        400,
        &["unknown event type \"TaskFinishd\"", "TaskFinished"],
    );
    let token = c.admin_token()?;
    let resp = reqwest::Client::new()
        .get(format!("{}/api/events/stream", c.api.base()))
        .bearer_auth(token)
        .header("Last-Event-ID", "yesterday")
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await?.contains("Last-Event-ID"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_going_offline_and_back_and_a_health_change_are_events() -> anyhow::Result<()> {
    let mut c = Cluster::start(&["--no-builtin-worker"]).await?;
    c.pool("eu-west", "eu").await?;
    c.worker("w-1", "eu-west", "eu", &["--heartbeat-secs", "1"])?;
    c.wait_online(&["w-1"]).await?;
    // A target whose endpoint refuses: its first check makes it unhealthy.
    c.api
        .post(
            "/api/targets",
            &json!({"name": "down", "kind": "azure-web-app", "environment": "prod",
                    "roles": ["web"], "endpoint": "127.0.0.1:9", "default_pool": "eu-west"}),
        )
        .await?;
    c.api
        .post("/api/targets/down/health-check", &json!({}))
        .await?;
    let changed = c
        .wait_for("a health change", WAIT, || async {
            let e = c
                .api
                .get("/api/events?stream=target/down&type=TargetHealthChanged")
                .await?;
            Ok(e.as_array().and_then(|a| a.first().cloned()))
        })
        .await?;
    assert_eq!(changed["data"]["from"], Value::Null, "{changed}");
    assert_eq!(changed["data"]["to"], "unhealthy", "{changed}");
    // Frozen: no heartbeats, yet it has not left.
    let freeze = |sig| {
        c.workers
            .iter()
            .find(|p| p.name == "w-1")
            .map(|p| p.signal(sig))
    };
    freeze(nix::sys::signal::Signal::SIGSTOP);
    let offline = c
        .wait_for("the worker offline", WAIT, || async {
            let e = c
                .api
                .get("/api/events?stream=worker/w-1&type=WorkerWentOffline")
                .await?;
            Ok(e.as_array().and_then(|a| a.first().cloned()))
        })
        .await?;
    assert!(!offline["data"]["last_seen"].is_null(), "{offline}");
    freeze(nix::sys::signal::Signal::SIGCONT);
    let types = c
        .wait_for("the worker back online", WAIT, || async {
            let e = c.api.get("/api/events?stream=worker/w-1").await?;
            let types: Vec<String> = e
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["type"].as_str().map(str::to_owned))
                .collect();
            Ok(types
                .contains(&"WorkerCameOnline".to_owned())
                .then_some(types))
        })
        .await?;
    // Joined, then offline once, then online once: no spurious change after the join.
    let changes: Vec<&str> = types
        .iter()
        .map(String::as_str)
        .filter(|t| {
            matches!(
                *t,
                "WorkerJoined" | "WorkerWentOffline" | "WorkerCameOnline"
            )
        })
        .collect();
    assert_eq!(
        changes,
        ["WorkerJoined", "WorkerWentOffline", "WorkerCameOnline"]
    );
    Ok(())
}
