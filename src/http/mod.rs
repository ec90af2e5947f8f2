//! The HTTP/JSON surface for app vendors: the CAMARA Number Recycling API (`camara`) on the
//! `[http] listen` address, callers identified by OAuth 2.0 access tokens (`auth`). Served over
//! TLS with the `[tls]` certificate (no client certificate asked: the token identifies the
//! caller), plain text only in development on loopback. HTTP/1.1, bounded in every dimension a
//! caller controls: connections a cap (`max_connections`), the TLS handshake and the request head
//! time limits, the body a size limit, and requests in flight a cap (`limits.max_in_flight`)
//! beyond which the answer is 503.
//!
//! Metric: `unbind_http_requests_total{code}` (the CAMARA code of each answer, `OK` for 200).

pub mod auth;
pub mod camara;
pub mod serve;

use std::{future::Future, sync::Arc};

use anyhow::Context;
use axum::{Router, http::StatusCode, response::IntoResponse, routing::post};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};
use tokio::net::TcpListener;

use crate::{api::edge::Edge, gateway::Gateway, tls::LiveTls};

pub use auth::TokenVerifier;

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
    max_connections: usize,
    tokens: Option<Arc<TokenVerifier>>,
    tls: Option<Arc<LiveTls>>,
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
        // The `[tls]` certificate, HTTP/1.1 by ALPN, no client certificate asked.
        let tls = config
            .tls
            .as_ref()
            .map(|tls| LiveTls::http("http-api", &tls.cert, &tls.key, ("tls.cert", "tls.key")))
            .transpose()?
            .map(Arc::new);
        let listener = TcpListener::bind(http.listen).await.with_context(|| {
            format!(
                "http.listen: cannot listen on {}: is another process using it?",
                http.listen
            )
        })?;
        Ok(Some(Self {
            listener,
            max_connections: http.max_connections,
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
        max_connections,
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
    let tls_reload = tls.as_ref().map(|tls| {
        crate::reload::watch_tls(
            Arc::clone(tls),
            gateway.config.reload.watch_interval,
            gateway.connections.clone(),
        )
    });
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
    let limits = serve::Limits {
        handshake: gateway.config.limits.handshake_timeout,
        drain: gateway.config.limits.drain_timeout,
        max_connections,
        max_connections_per_ip: Some(gateway.config.limits.max_connections_per_ip),
        metrics: gateway.connections.clone(),
    };
    serve::serve("http-api", listener, router, tls, limits, shutdown).await;
    for reload in reload.into_iter().chain(tls_reload) {
        reload.abort();
    }
    Ok(())
}
