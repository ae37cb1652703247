//! Shutdown on SIGINT or SIGTERM: the root of a binary's cancellation-token tree. Every
//! phase of a process (pulling work, services, HTTP) stops on a child of this token.

use tokio_util::sync::CancellationToken;

/// Returns the root token, cancelled on the first SIGINT or SIGTERM. Must be called inside a
/// tokio runtime: the listener is a task of its own that ends with the first signal.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    // Detached on purpose: it must outlive every phase it stops, and ends with the signal.
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops this process");
                let _ = tokio::signal::ctrl_c().await;
                cancel.cancel();
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown requested");
        cancel.cancel();
    });
    token
}
