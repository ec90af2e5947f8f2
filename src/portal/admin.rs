//! The portal's admin endpoint (`portal --admin-listen`), for operators and load balancers,
//! never for browsers (bind it to a private address): `GET /metrics` (Prometheus text),
//! `GET /healthz` (the process is alive), `GET /readyz` (200 while the gateway answers its
//! health check for `unbind.v1.AccountGateway`, else 503: a portal that cannot reach its gateway
//! should be taken out of rotation).
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `unbind_portal_pages_total` | `route`, `status` | answers by route (the pattern, e.g. `/accounts/live`) and HTTP status |
//! | `unbind_portal_gateway_errors_total` | `rpc`, `code` | gateway calls that failed, by RPC and gRPC code |
//! | `unbind_portal_visits` | | visits remembered |
//! | `unbind_connections_open`, `_max`, `unbind_connection_cap_waits_total` | `listener` | `portal` and `portal-admin` (`crate::connections`) |
//!
//! Labels are route patterns, RPC names and codes: never a number, a code or a visitor.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::{connections::ListenerMetrics, metrics::Metrics};

/// How long `/readyz` waits for the gateway's health answer.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PageLabels {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    rpc: &'static str,
    code: &'static str,
}

/// The portal's metrics.
#[derive(Clone, Default)]
pub struct PortalMetrics {
    registry: Metrics,
    pages: Family<PageLabels, Counter>,
    gateway_errors: Family<RpcLabels, Counter>,
    visits: Gauge,
    /// The caps of the portal's listener and of this endpoint.
    pub(super) connections: ListenerMetrics,
}

impl PortalMetrics {
    pub fn new() -> Self {
        let mut m = Self::default();
        m.registry.register(
            "portal_pages",
            "Portal answers by route pattern and HTTP status",
            m.pages.clone(),
        );
        m.registry.register(
            "portal_gateway_errors",
            "Gateway calls from the portal that failed, by RPC and gRPC code",
            m.gateway_errors.clone(),
        );
        m.connections = ListenerMetrics::register(&m.registry);
        m.registry.register(
            "portal_visits",
            "Visits the portal remembers",
            m.visits.clone(),
        );
        m
    }

    /// An answer to a browser: `route` is the route's pattern (never the path as asked).
    pub fn page(&self, route: &str, status: StatusCode) {
        self.pages
            .get_or_create(&PageLabels {
                route: route.to_owned(),
                status: status.as_u16(),
            })
            .inc();
    }

    /// A gateway call that failed.
    pub fn gateway_error(&self, rpc: &'static str, code: tonic::Code) {
        self.gateway_errors
            .get_or_create(&RpcLabels {
                rpc,
                code: crate::metrics::code_name(code),
            })
            .inc();
    }

    fn encode(&self, visits: u64) -> String {
        self.visits.set(i64::try_from(visits).unwrap_or(i64::MAX));
        self.registry.encode()
    }
}

struct Admin {
    portal: Arc<super::pages::Portal>,
    health: HealthClient<tonic::transport::Channel>,
}

/// Serves the admin endpoint on `listener` until `shutdown` resolves.
pub(super) async fn serve(
    portal: Arc<super::pages::Portal>,
    gateway: tonic::transport::Channel,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    tracing::info!(
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        "portal admin endpoint serving"
    );
    let connections = portal.metrics.connections.clone();
    let admin = Arc::new(Admin {
        portal,
        health: HealthClient::new(gateway),
    });
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(admin);
    let limits = crate::http::serve::Limits {
        handshake: READY_TIMEOUT,
        drain: READY_TIMEOUT,
        max_connections: 64,
        max_connections_per_ip: None,
        metrics: connections,
    };
    crate::http::serve::serve("portal-admin", listener, router, None, limits, shutdown).await;
}

async fn metrics(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    let portal = &admin.portal;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        portal.metrics.encode(portal.visits.count()),
    )
}

async fn ready(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: crate::proto::account_gateway_server::SERVICE_NAME.to_owned(),
    });
    request.set_timeout(READY_TIMEOUT);
    let mut health = admin.health.clone();
    let answer = tokio::time::timeout(READY_TIMEOUT, health.check(request)).await;
    match answer {
        Ok(Ok(a)) if a.get_ref().status() == ServingStatus::Serving => {
            (StatusCode::OK, "ready\n".to_owned())
        }
        Ok(Ok(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the gateway says it is not serving\n".to_owned(),
        ),
        Ok(Err(status)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the gateway's health check failed ({})\n",
                crate::metrics::code_name(status.code())
            ),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the gateway did not answer its health check in time\n".to_owned(),
        ),
    }
}
