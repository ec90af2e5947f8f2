//! Serving an axum router over HTTP/1.1, in plain text or TLS, bounded in what a client controls:
//! connections open at once have a cap (`crate::connections`: at the cap no new one is accepted
//! until one closes, so they wait in the kernel's backlog instead of costing memory), the TLS handshake and the
//! request head have time limits (so idle connections free their places), and a stop lets
//! requests in flight finish for a while, then cuts them. The HTTP API and the web portal both
//! serve this way.

use std::{future::Future, path::Path, sync::Arc, time::Duration};

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::connections::ConnectionCap;
pub use crate::connections::ConnectionMetrics;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
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
    /// Where the connection cap is reported.
    pub metrics: ConnectionMetrics,
}

pub use crate::config::DEFAULT_MAX_CONNECTIONS;

/// A rustls server side offering HTTP/1.1 by ALPN, from a PEM certificate chain and key.
/// `flags` names them as the caller's user knows them (`("tls.cert", "tls.key")`,
/// `("--tls-cert", "--tls-key")`) in the errors.
pub fn tls_acceptor(cert: &Path, key: &Path, flags: (&str, &str)) -> anyhow::Result<TlsAcceptor> {
    let (cert_flag, key_flag) = flags;
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("{cert_flag}: cannot read {}", cert.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{cert_flag}: {} holds no PEM certificate",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| {
        format!(
            "{key_flag}: cannot read a PEM private key from {}",
            key.display()
        )
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .with_context(|| format!("{cert_flag} and {key_flag} do not make a TLS identity"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` on `listener` (through `tls` when given) until `shutdown` resolves, then
/// lets requests in flight finish for at most `limits.drain`. `name` names the listener in
/// log lines.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut cap = ConnectionCap::new(name, limits.max_connections, &limits.metrics);
    tokio::pin!(shutdown);
    loop {
        // A place first: at the cap, the next connection waits in the backlog until one closes.
        let place = tokio::select! {
            () = &mut shutdown => break,
            place = cap.place() => place,
        };
        let (stream, _peer) = tokio::select! {
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
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let watcher = graceful.watcher();
        let tls = tls.clone();
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
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(limits.handshake, tls.accept(stream)).await
                    else {
                        return;
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
