//! The planner's answer while it starts: until [`crate::Planner::build`] is done (NATS
//! reached, JetStream set up, the log's backlog queued), every request on the planner's HTTP
//! port is answered at once with 503 and what it is waiting for, e.g. `the planner is
//! starting: cannot reach NATS at nats://127.0.0.1:4999: connection refused (is nats-server
//! running there?)`, instead of a client waiting on a bound port nobody serves. Then the
//! listener is handed over to the real API.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use shoal_shared::api::ErrorBody;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long requests in flight may take once start-up is done, before the listener is taken
/// back regardless.
const HANDOVER_WAIT: Duration = Duration::from_secs(2);

/// The start-up server, serving 503 on the planner's listener until [`Starting::finish`].
pub struct Starting {
    listener: Arc<TcpListener>,
    done: CancellationToken,
    served: tokio::task::JoinHandle<()>,
}

/// Starts answering 503 with `the planner is starting: <status>` on `listener`; `status`
/// says what start-up waits for now.
pub fn serve(listener: TcpListener, status: watch::Receiver<String>) -> Starting {
    let listener = Arc::new(listener);
    let done = CancellationToken::new();
    let app = axum::Router::new().fallback(starting).with_state(status);
    let server = axum::serve(Shared(listener.clone()), app)
        .with_graceful_shutdown(done.clone().cancelled_owned());
    let served = tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::warn!(error = %e, "the start-up HTTP server failed");
        }
    });
    Starting {
        listener,
        done,
        served,
    }
}

impl Starting {
    /// Stops answering 503 and gives the listener back, for the real API.
    ///
    /// # Errors
    /// The start-up server did not let go of the listener (it cannot, once stopped).
    pub async fn finish(self) -> anyhow::Result<TcpListener> {
        self.done.cancel();
        let mut served = self.served;
        if tokio::time::timeout(HANDOVER_WAIT, &mut served)
            .await
            .is_err()
        {
            // A client holding a connection open: drop the server, and with it its share.
            served.abort();
            let _ = served.await;
        }
        Arc::try_unwrap(self.listener)
            .map_err(|_| anyhow::anyhow!("the start-up HTTP server did not hand back its port"))
    }
}

/// Every route while starting. Each answer closes its connection: a client that kept one
/// open to ask again would send its next request just as the start-up server lets go of the
/// port and closes it ("connection closed before message completed"); on a new connection
/// that request reaches the real API.
async fn starting(State(status): State<watch::Receiver<String>>) -> impl IntoResponse {
    let error = format!("the planner is starting: {}", *status.borrow());
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1"), (header::CONNECTION, "close")],
        Json(ErrorBody { error }),
    )
}

/// The planner's listener, shared so that it can be handed back after start-up.
struct Shared(Arc<TcpListener>);

impl axum::serve::Listener for Shared {
    type Io = TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (TcpStream, std::net::SocketAddr) {
        loop {
            match self.0.accept().await {
                Ok(accepted) => return accepted,
                // As axum's own listener does: a failed accept (too many open files) is
                // logged and retried after a pause rather than ending the server.
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed during start-up");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.local_addr()
    }
}
