//! Webhooks: a receiver started by the test gets the records it subscribed to, in log order,
//! each signed (a changed byte is caught); it survives its own restart (deliveries are
//! retried, nothing is lost), and a receiver that keeps failing pauses the webhook, which
//! goes on from the record it gave up on once resumed. Every attempt is in the log.

use shoal_e2e::serde_json::{Value, json};
use shoal_e2e::{Cluster, WAIT};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// One delivery as received: its headers (lowercase names) and body.
type Delivery = (HashMap<String, String>, Vec<u8>);

/// A webhook receiver on a port of its own, answering every request with `status`.
struct Receiver {
    port: u16,
    status: Arc<AtomicU16>,
    stop: CancellationToken,
}

impl Receiver {
    async fn start(
        port: u16,
        got: Arc<Mutex<Vec<Delivery>>>,
        status: Arc<AtomicU16>,
    ) -> anyhow::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let stop = CancellationToken::new();
        let (g, s, st) = (got, status.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    () = st.cancelled() => return,
                    c = listener.accept() => c,
                };
                let Ok((stream, _)) = conn else { continue };
                let (g, s, st) = (g.clone(), s.clone(), st.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        () = st.cancelled() => {}
                        _ = answer(stream, &g, &s) => {}
                    }
                });
            }
        });
        Ok(Receiver { port, status, stop })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }
}

async fn answer(
    mut stream: tokio::net::TcpStream,
    got: &Mutex<Vec<Delivery>>,
    status: &AtomicU16,
) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let code = status.load(Ordering::SeqCst);
    if code == 200 {
        got.lock()
            .expect("not poisoned")
            .push((headers, buf[head_end..].to_vec()));
    }
    let reply = format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    stream.write_all(reply.as_bytes()).await?;
    Ok(())
}

/// The sequences delivered so far, in order received.
fn seqs(got: &Mutex<Vec<Delivery>>) -> Vec<u64> {
    got.lock()
        .expect("not poisoned")
        .iter()
        .filter_map(|(h, _)| h.get("shoal-seq")?.parse().ok())
        .collect()
}

async fn deploy(c: &Cluster, project: &str) -> anyhow::Result<String> {
    let id = c
        .deploy(
            &json!({"project": project, "environment": "prod", "steps": [
            {"name": "x", "action": {"type": "noop"}}]}),
        )
        .await?;
    c.finished(&id, WAIT).await?;
    Ok(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_gets_signed_deliveries_in_order_across_its_restart_and_a_pause()
-> anyhow::Result<()> {
    let c = Cluster::start(&["--webhook-attempts", "6", "--webhook-retry-base", "300ms"]).await?;
    c.target("web-1", "prod", &["web"], None).await?;
    let got = Arc::new(Mutex::new(Vec::new()));
    let status = Arc::new(AtomicU16::new(200));
    let port = shoal_e2e::free_port()?;
    let receiver = Receiver::start(port, got.clone(), status.clone()).await?;
    let made = c
        .api
        .post(
            "/api/webhooks",
            &json!({"name": "ci", "url": receiver.url(), "projects": ["shop"],
                    "types": ["DeploymentCreated", "DeploymentFinished"]}),
        )
        .await?;
    let secret = made["secret"].as_str().unwrap_or_default().to_owned();
    assert!(secret.starts_with("whsec_"), "{made}");
    let listed = c.api.get("/api/webhooks").await?;
    assert!(
        listed.to_string().find("whsec_").is_none(),
        "the secret is shown once: {listed}"
    );

    let shop = deploy(&c, "shop").await?;
    deploy(&c, "other").await?;
    c.wait_for("two deliveries", WAIT, || async {
        Ok((seqs(&got).len() >= 2).then_some(()))
    })
    .await?;
    // Signed: the signature checks with the secret, and fails once a byte is changed.
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
    )?;
    for (headers, body) in got.lock().expect("not poisoned").iter() {
        let sig = headers
            .get("shoal-webhook-signature")
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            shoal_shared::webhook::verify(&secret, &sig, body, now, 300),
            Ok(())
        );
        let mut forged = body.clone();
        forged[10] ^= 1;
        assert!(shoal_shared::webhook::verify(&secret, &sig, &forged, now, 300).is_err());
        let v: Value = shoal_e2e::serde_json::from_slice(body)?;
        assert_eq!(v["correlation_id"], shop.as_str(), "only project shop: {v}");
    }

    // The receiver goes away and comes back on its port: retried, nothing lost.
    receiver.stop.cancel();
    let during = deploy(&c, "shop").await?;
    c.wait_for("a failed attempt", WAIT, || async {
        let e = c
            .api
            .get("/api/events?stream=webhook/ci&type=WebhookAttemptFailed")
            .await?;
        Ok(e.as_array().is_some_and(|a| !a.is_empty()).then_some(()))
    })
    .await?;
    let receiver = Receiver::start(port, got.clone(), status.clone()).await?;
    c.wait_for("deliveries after the restart", WAIT, || async {
        Ok((seqs(&got).len() >= 4).then_some(()))
    })
    .await?;

    // A receiver that keeps failing: the webhook gives up and pauses; resumed, it goes on
    // from the record it gave up on.
    receiver.status.store(500, Ordering::SeqCst);
    let failing = deploy(&c, "shop").await?;
    let paused = c
        .wait_for("the webhook paused", WAIT, || async {
            let list = c.api.get("/api/webhooks").await?;
            Ok(list[0]["paused"].as_str().map(str::to_owned))
        })
        .await?;
    assert!(paused.contains("after 6 attempts"), "{paused}");
    receiver.status.store(200, Ordering::SeqCst);
    c.api.post("/api/webhooks/ci/resume", &json!({})).await?;
    c.wait_for("deliveries after the resume", WAIT, || async {
        Ok((seqs(&got).len() >= 6).then_some(()))
    })
    .await?;

    // What was delivered: exactly the wanted records, once each, in log order.
    let events = c
        .api
        .get("/api/events?type=DeploymentCreated,DeploymentFinished&limit=1000")
        .await?;
    let wanted: Vec<u64> = events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            [&shop, &during, &failing]
                .iter()
                .any(|d| e["correlation_id"] == d.as_str())
        })
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    assert_eq!(seqs(&got), wanted);
    // Every attempt is in the log: 5 failures and the pause of the record given up on.
    let attempts = c.api.get("/api/events?stream=webhook/ci").await?;
    let types: Vec<&str> = attempts
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(
        types.iter().filter(|t| **t == "WebhookPaused").count(),
        1,
        "{types:?}"
    );
    assert_eq!(
        types.iter().filter(|t| **t == "WebhookDelivered").count(),
        6,
        "{types:?}"
    );
    assert!(
        types
            .iter()
            .filter(|t| **t == "WebhookAttemptFailed")
            .count()
            >= 6,
        "{types:?}"
    );
    assert!(types.contains(&"WebhookResumed"));
    // Bad input is named.
    let bad = c
        .api
        .post(
            "/api/webhooks",
            &json!({"name": "x", "url": "ftp://nowhere", "types": []}),
        )
        .await;
    shoal_e2e::assert_api_error(bad, 400, &["url", "ftp://nowhere"]);
    let bad = c
        .api
        .post(
            "/api/webhooks",
            &json!({"name": "y", "url": "http://a", "types": ["Nope"]}),
        )
        .await;
    shoal_e2e::assert_api_error(bad, 400, &["unknown event type \"Nope\""]);
    Ok(())
}
