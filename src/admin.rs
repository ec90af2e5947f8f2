//! The admin HTTP endpoint, for operators and orchestrators (never for callers; bind it to a
//! private address): `GET /metrics` (Prometheus text, see `metrics`), `GET /healthz` (the process
//! is alive), `GET /readyz` (200 while the store answers, else 503), `POST /cache/forget` (the
//! body a number's keyed hash, 64 hex: this replica forgets its cached answers for the number;
//! what `unbind-gateway erase` calls).

use std::{future::Future, sync::Arc};

use axum::{
    Router,
    extract::State,
    http::StatusCode,
    response::IntoResponse,
    routing::{get, post},
};
use tokio::net::TcpListener;

use crate::gateway::Gateway;

/// Serves the admin endpoint on `listener` until `shutdown` resolves.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tracing::info!(
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        "admin endpoint serving"
    );
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/cache/forget", post(forget))
        .with_state(gateway);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

async fn metrics(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    let m = &gateway.metrics;
    gateway
        .catalog
        .metrics()
        .observe(&gateway.catalog.snapshot(), gateway.fanout.cache().len());
    match gateway.store.count_open_tickets().await {
        Ok(counts) => gateway.unbinder.metrics().observe(&counts),
        Err(e) => tracing::warn!(error = %e, "metrics: cannot count tickets"),
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}

async fn forget(State(gateway): State<Arc<Gateway>>, body: String) -> impl IntoResponse {
    match crate::security::NumberHash::from_hex(body.trim()) {
        Some(number) => {
            let held = gateway.fanout.cache().forget_number(number.short());
            (
                StatusCode::OK,
                if held {
                    "forgotten\n"
                } else {
                    "nothing cached\n"
                },
            )
        }
        None => (
            StatusCode::BAD_REQUEST,
            "the body must be a number's keyed hash: 64 hex characters\n",
        ),
    }
}

async fn ready(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    if gateway.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the store does not answer\n",
        )
    }
}
