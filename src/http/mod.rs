//! The HTTP/JSON surface for app vendors: the CAMARA Number Recycling API (`camara`) on the
//! `[http] listen` address, callers identified by OAuth 2.0 access tokens (`auth`). Served over
//! TLS with the `[tls]` certificate (no client certificate asked: the token identifies the
//! caller), plain text only in development on loopback. HTTP/1.1, bounded in every dimension a
//! caller controls: the TLS handshake and the request head have time limits, the body a size
//! limit, and requests in flight a cap (`limits.max_in_flight`) beyond which the answer is 503.
//!
//! Metric: `unbind_http_requests_total{code}` (the CAMARA code of each answer, `OK` for 200).

pub mod auth;
pub mod camara;

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{Router, http::StatusCode, response::IntoResponse, routing::post};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};
use tokio::net::TcpListener;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};

use crate::{api::edge::Edge, config::TlsConfig, gateway::Gateway};

pub use auth::TokenVerifier;

/// Longest a client may take to send a request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

/// What the handlers share.
pub struct HttpApi {
    gateway: Arc<Gateway>,
    edge: Edge,
    /// `None` in development without `[http.auth]`: no token is read.
    tokens: Option<Arc<TokenVerifier>>,
    in_flight: tokio::sync::Semaphore,
    requests: Family<CodeLabels, Counter>,
}

impl HttpApi {
    fn count(&self, code: &'static str) {
        self.requests.get_or_create(&CodeLabels { code }).inc();
    }
}

/// The HTTP listener, bound and with its key set read, before serving starts (so start-up fails
/// on a taken port or an unusable JWKS file).
pub struct Prepared {
    listener: TcpListener,
    tokens: Option<Arc<TokenVerifier>>,
    tls: Option<TlsAcceptor>,
}

impl Prepared {
    /// Binds `[http] listen`, reads the JWKS file and the TLS certificate.
    pub async fn new(
        config: &crate::config::Config,
        clock: crate::clock::Clock,
    ) -> anyhow::Result<Option<Self>> {
        let Some(http) = &config.http else {
            return Ok(None);
        };
        let tokens = http
            .auth
            .as_ref()
            .map(|auth| TokenVerifier::new(auth, clock).map(Arc::new))
            .transpose()?;
        let tls = config.tls.as_ref().map(acceptor).transpose()?;
        let listener = TcpListener::bind(http.listen).await.with_context(|| {
            format!(
                "http.listen: cannot listen on {}: is another process using it?",
                http.listen
            )
        })?;
        Ok(Some(Self {
            listener,
            tokens,
            tls,
        }))
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }
}

/// What `serve --check-config` checks of `[http]`: that the JWKS file holds usable keys.
pub fn check_files(config: &crate::config::Config) -> anyhow::Result<Vec<String>> {
    let Some(auth) = config.http.as_ref().and_then(|h| h.auth.as_ref()) else {
        return Ok(Vec::new());
    };
    let keys = auth::KeySet::read(&auth.jwks_file)?;
    Ok(vec![format!(
        "http.auth.jwks_file {} ({} signature keys)",
        auth.jwks_file.display(),
        keys.len()
    )])
}

/// The rustls server side for the HTTP listener: the `[tls]` certificate, HTTP/1.1 by ALPN.
fn acceptor(tls: &TlsConfig) -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("tls.cert: cannot read {}", tls.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .with_context(|| format!("tls.key: cannot read {}", tls.key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("tls.cert and tls.key do not make a TLS identity")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The routes: the one operation, and CAMARA-shaped answers for everything else.
fn router(api: Arc<HttpApi>) -> Router {
    Router::new()
        .route(camara::CHECK_PATH, post(camara::check))
        .fallback(|| async {
            camara::CamaraError::not_found(
                "No such resource: the Number Recycling API is POST /number-recycling/v0.3/check.",
            )
            .into_response_with(None)
        })
        .method_not_allowed_fallback(|| async {
            let mut response =
                camara::CamaraError::invalid("Only POST is allowed here.").into_response_with(None);
            *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            response
                .headers_mut()
                .insert(axum::http::header::ALLOW, "POST".parse().expect("a header"));
            response.into_response()
        })
        .with_state(api)
}

/// Serves the HTTP API until `shutdown` resolves, then lets requests in flight finish (for at
/// most `limits.drain_timeout`).
pub async fn serve(
    gateway: Arc<Gateway>,
    edge: Edge,
    prepared: Prepared,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Prepared {
        listener,
        tokens,
        tls,
    } = prepared;
    let api = Arc::new(HttpApi {
        in_flight: tokio::sync::Semaphore::new(gateway.config.limits.max_in_flight),
        requests: Family::default(),
        gateway: Arc::clone(&gateway),
        edge,
        tokens: tokens.clone(),
    });
    gateway.metrics.register(
        "http_requests",
        "HTTP API (CAMARA Number Recycling) answers by CAMARA code (OK for 200)",
        api.requests.clone(),
    );
    let reload = tokens
        .as_ref()
        .map(|t| t.spawn_reload(gateway.config.reload.watch_interval));
    let router = router(api);
    tracing::info!(
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        tls = tls.is_some(),
        auth = tokens.is_some(),
        "HTTP API (CAMARA Number Recycling v0.3) serving"
    );
    if tokens.is_none() {
        tracing::warn!(
            "DEVELOPMENT MODE: the HTTP API reads no access token: every caller is the \
             development tenant"
        );
    }
    let handshake_timeout = gateway.config.limits.handshake_timeout;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "HTTP API: accept failed");
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
            let builder = {
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(TokioTimer::new())
                    .header_read_timeout(Some(HEADER_TIMEOUT));
                b
            };
            let result = match tls {
                Some(tls) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(handshake_timeout, tls.accept(stream)).await
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
                tracing::debug!(error = %e, "HTTP API connection ended");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(gateway.config.limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP API: requests still open after the drain limit were cut");
    }
    if let Some(reload) = reload {
        reload.abort();
    }
    Ok(())
}
