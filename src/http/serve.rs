//! Serving an axum router over HTTP/1.1, in plain text or TLS, bounded in what a client controls:
//! connections open at once have a cap (`crate::connections`: at the cap no new one is accepted
//! until one closes, so they wait in the kernel's backlog instead of costing memory), the TLS
//! identity is re-read when its files change (`crate::tls::LiveTls`), the TLS handshake and the
//! request head have time limits (so idle connections free their places), and a stop lets
//! requests in flight finish for a while, then cuts them. The HTTP API and the web portal both
//! serve this way.

use std::{future::Future, sync::Arc, time::Duration};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::{
    connections::{ConnectionCap, ListenerMetrics},
    tls::LiveTls,
};

/// Longest a client may take to send a request's head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The limits of one listener.
#[derive(Clone)]
pub struct Limits {
    /// Longest a TLS handshake may take.
    pub handshake: Duration,
    /// Longest a stop waits for requests in flight before cutting them.
    pub drain: Duration,
    /// Connections open at once (at least 1).
    pub max_connections: usize,
    /// Connections open at once from one client address; `None`: no such cap.
    pub max_connections_per_ip: Option<usize>,
    /// Where the connection cap is reported.
    pub metrics: ListenerMetrics,
}

pub use crate::config::DEFAULT_MAX_CONNECTIONS;

/// Serves `router` on `listener` (through `tls` when given: `crate::tls::LiveTls::http`, which
/// `crate::reload::watch_tls` keeps current) until `shutdown` resolves, then
/// lets requests in flight finish for at most `limits.drain`. `name` names the listener in
/// log lines.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<LiveTls>>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut cap = ConnectionCap::new(name, limits.max_connections, &limits.metrics)
        .with_max_per_ip(limits.max_connections_per_ip);
    tokio::pin!(shutdown);
    loop {
        // A place first: at the cap, the next connection waits in the backlog until one closes.
        let mut place = tokio::select! {
            () = &mut shutdown => break,
            place = cap.place() => place,
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if !cap.admit(&mut place, Some(peer.ip())) {
            // Its address has its share open: closed at once.
            continue;
        }
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let watcher = graceful.watcher();
        // The identity read last (a renewed certificate is served from the next connection on).
        let tls = tls.as_ref().map(|t| t.acceptor());
        let metrics = limits.metrics.clone();
        tokio::spawn(async move {
            // Held until the connection ends, however it ends.
            let _place = place;
            let builder = {
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(TokioTimer::new())
                    .header_read_timeout(Some(HEADER_TIMEOUT));
                b
            };
            let result = match tls {
                Some(tls) => {
                    let stream =
                        match tokio::time::timeout(limits.handshake, tls.accept(stream)).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                metrics.handshake_failed(name, crate::tls::handshake_failure(&e));
                                return;
                            }
                            Err(_) => {
                                metrics.handshake_failed(name, "timeout");
                                return;
                            }
                        };
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(stream), service))
                        .await
                }
                None => {
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(stream), service))
                        .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(listener = name, error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "requests still open after the drain limit were cut"
        );
    }
}
