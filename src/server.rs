//! Running the gateway: the tonic server composed around the shared state
//! ([`crate::gateway::Gateway`]): the services and the door they share, the layers (shedding,
//! correlator), health and reflection, the admin endpoint, the workers and the background tasks;
//! and the graceful drain on shutdown (health first, in-flight requests finish, new connections
//! are refused, then the workers and the audit writer).

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::{Server, server::TcpIncoming};

use crate::{
    api::{
        GatewayService,
        correlator::CorrelatorLayer,
        edge::Edge,
        metrics::ApiMetrics,
        push::PushService,
        rate::SharedStore,
        shed::{Bounds, ShedLayer},
        tenant::Tenants,
    },
    clock::Clock,
    config::Config,
    connections::ConnectionCap,
    gateway::Gateway,
    proto::{
        FILE_DESCRIPTOR_SET, account_gateway_server::AccountGatewayServer,
        carrier_push_server::CarrierPushServer, number_status_server::NumberStatusServer,
    },
    tls::LiveTls,
};

/// How long shutdown waits for the audit writer to store what it still holds.
const AUDIT_FLUSH_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A gateway serving on a listener.
pub struct RunningGateway {
    pub addr: SocketAddr,
    /// The admin HTTP listener (metrics, health), when configured.
    pub admin_addr: Option<SocketAddr>,
    /// The HTTP API's listener (`[http] listen`), when configured.
    pub http_addr: Option<SocketAddr>,
    pub gateway: Arc<Gateway>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningGateway {
    /// `http://ADDR`, for clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops taking requests, lets in-flight ones finish, and waits.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let result = (&mut self.task).await.context("gateway task panicked")?;
        self.gateway.store.close().await;
        result
    }
}

/// Builds the gateway and serves it on `listener` until [`RunningGateway::stop`].
pub async fn start(
    config: Config,
    clock: Clock,
    listener: TcpListener,
) -> anyhow::Result<RunningGateway> {
    config.validate()?;
    let addr = listener.local_addr()?;
    // `listen` was checked, but the caller bound the socket: development mode stays on loopback.
    if config.development && !addr.ip().to_canonical().is_loopback() {
        anyhow::bail!(
            "listen: development = true is only allowed on a loopback address, not {addr}"
        );
    }
    announce_development(&config);
    let admin = match &config.admin {
        Some(admin) => Some(
            TcpListener::bind(admin.listen)
                .await
                .with_context(|| format!("admin.listen: cannot listen on {}", admin.listen))?,
        ),
        None => None,
    };
    let admin_addr = admin.as_ref().map(|l| l.local_addr()).transpose()?;
    let http = crate::http::Prepared::new(&config, clock.clone()).await?;
    let http_addr = http.as_ref().map(|h| h.local_addr()).transpose()?;
    let gateway = Gateway::build(config, clock).await?;
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        Arc::clone(&gateway),
        Listeners {
            grpc: listener,
            admin,
            http,
        },
        async {
            let _ = rx.await;
        },
    ));
    Ok(RunningGateway {
        addr,
        admin_addr,
        http_addr,
        gateway,
        shutdown: Some(tx),
        task,
    })
}

/// Says loudly what development mode gives away when it is not obvious. Without `[tls]` the
/// plain-text warning comes when serving starts (and the demo prints its own box); with `[tls]`
/// but no `tls.client_ca` the listener looks secure, yet no caller is identified: every one is
/// the carrier, with no rate limit. That goes to the log and, boxed, to stderr.
fn announce_development(config: &Config) {
    let Some(tls) = &config.tls else { return };
    if !config.development || tls.client_ca.is_some() {
        return;
    }
    tracing::warn!(
        "DEVELOPMENT MODE: TLS without tls.client_ca: no caller is identified, every caller is \
         treated as the carrier, with no rate limits"
    );
    // Not `eprintln!`, which panics, ending the gateway, when stderr is closed.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{DEVELOPMENT_TLS_BOX}");
}

/// The stderr notice of [`announce_development`].
const DEVELOPMENT_TLS_BOX: &str = "\n\
==========================================================================\n\
  DEVELOPMENT MODE: TLS without tls.client_ca. No caller is identified:\n\
  EVERY CALLER IS TREATED AS THE CARRIER, WITH NO LIMITS (verification,\n\
  look-ups, unbinding and the recycled-number push, no rate limit).\n\
  Set tls.client_ca and [[tenants]] (and development = false) for anything\n\
  but a test on this machine.\n\
==========================================================================\n";

/// The services this process serves, as server reflection lists them. The descriptor set also
/// holds `unbind.v1.AppAdapter` and `unbind.v1.SubscriberRegistry` (the gateway is their client):
/// they are not listed, though their messages resolve.
pub const SERVED_SERVICES: [&str; 6] = [
    "unbind.v1.AccountGateway",
    "unbind.v1.NumberStatus",
    "unbind.v1.CarrierPush",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Server reflection, `grpc.reflection.v1` and the `v1alpha` that older tools (grpcio-reflection,
/// older grpcurl, Postman, Evans) speak: both list [`SERVED_SERVICES`] and resolve every symbol
/// of the gateway's protos, health and reflection itself.
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
    for name in SERVED_SERVICES {
        builder = builder.with_service_name(name);
    }
    builder
}

/// What [`serve`] listens on.
pub struct Listeners {
    /// The gRPC API.
    pub grpc: TcpListener,
    /// The admin HTTP endpoint, when configured.
    pub admin: Option<TcpListener>,
    /// The HTTP API, when configured.
    pub http: Option<crate::http::Prepared>,
}

/// Serves the gRPC API (and the admin endpoint and the HTTP API when configured) until
/// `shutdown` resolves.
pub async fn serve(
    gateway: Arc<Gateway>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Listeners {
        grpc: listener,
        admin,
        http,
    } = listeners;
    let (health, health_service) = tonic_health::server::health_reporter();
    // Store and catalog are built: every service is ready.
    crate::background::set_health(&health, true).await;
    let critical = gateway.critical.clone();
    let readiness = critical.spawn(
        "readiness check",
        crate::background::readiness(Arc::clone(&gateway), health.clone()),
    );
    let (stop_admin, admin_stopped) = oneshot::channel::<()>();
    let admin = admin.map(|listener| {
        critical.spawn(
            "admin endpoint",
            crate::admin::serve(Arc::clone(&gateway), listener, async {
                let _ = admin_stopped.await;
            }),
        )
    });
    let reflection = reflection_builder().build_v1()?;
    let reflection_v1alpha = reflection_builder().build_v1alpha()?;
    let max_request = gateway.config.limits.max_request_bytes;
    // The handlers hold what they use: the state, and who may call (mTLS tenants and their
    // rate limits, shared by both services).
    let edge = Edge::new(
        Arc::new(Tenants::new(
            &gateway.config.tenants,
            gateway.config.development,
            Some(SharedStore {
                store: gateway.store.clone(),
                clock: gateway.clock.clone(),
            }),
        )),
        gateway.audit.clone(),
    );
    let service =
        AccountGatewayServer::new(GatewayService::new(Arc::clone(&gateway), edge.clone()))
            .max_decoding_message_size(max_request);
    let (stop_http, http_stopped) = oneshot::channel::<()>();
    let http = http.map(|prepared| {
        critical.spawn(
            "HTTP API",
            crate::http::serve(Arc::clone(&gateway), edge.clone(), prepared, async {
                let _ = http_stopped.await;
            }),
        )
    });
    let housekeeping = critical.spawn(
        "housekeeping",
        crate::background::housekeeping(Arc::clone(&gateway)),
    );
    // Runs once, to the end of the rewrite.
    let reseal = critical.spawn_finite(
        "re-sealing",
        crate::background::reseal(Arc::clone(&gateway)),
    );
    let (stop_worker, worker_stopped) = tokio::sync::watch::channel(false);
    let worker = gateway.config.unbind.worker.then(|| {
        let push = critical.spawn(
            "push worker",
            Arc::new(gateway.push_worker()).run(worker_stopped.clone()),
        );
        let tickets = critical.spawn(
            "ticket worker",
            Arc::new(gateway.worker()).run(worker_stopped),
        );
        (tickets, push)
    });
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let addr = incoming
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    // At most `limits.max_connections` open: a partner that opens connections without end
    // holds that many places and no more (each TLS handshake runs with its place held).
    let incoming = crate::connections::capped(
        incoming,
        ConnectionCap::new(
            "grpc",
            gateway.config.limits.max_connections,
            &gateway.connections,
        )
        .with_max_per_ip(Some(gateway.config.limits.max_connections_per_ip)),
        |stream: &tokio::net::TcpStream| stream.peer_addr().ok().map(|a| a.ip()),
    );
    tracing::info!(
        %addr,
        tls = gateway.config.tls.is_some(),
        apps = gateway.catalog.snapshot().all().len(),
        "gateway serving"
    );
    // The TLS identity is ours rather than tonic's, so a renewed certificate or client CA is
    // served without a restart (re-read on SIGHUP and when the files change).
    let tls = match &gateway.config.tls {
        Some(tls) => Some(Arc::new(LiveTls::grpc(tls)?)),
        None => {
            tracing::warn!("DEVELOPMENT MODE: serving plain-text gRPC without TLS");
            None
        }
    };
    let tls_watch = tls.as_ref().map(|tls| {
        crate::reload::watch_tls(
            Arc::clone(tls),
            gateway.config.reload.watch_interval,
            gateway.connections.clone(),
        )
    });
    // Shutting down: say so to health checkers first, then drain.
    let (drain_started, drain_begun) = oneshot::channel::<()>();
    let draining = {
        let health = health.clone();
        let gateway = Arc::clone(&gateway);
        let readiness = readiness.abort_handle();
        let critical = critical.clone();
        async move {
            // A signal, or a critical task that ended (logged where it ended): either way the
            // gateway drains and stops; `serve` then returns the failure.
            tokio::select! {
                () = shutdown => {}
                _ = critical.failed() => {}
            }
            critical.stopping();
            // The HTTP API stops taking connections too, and drains on its own.
            let _ = stop_http.send(());
            // Not ready from here on, whatever the store does: `/readyz` and health agree.
            readiness.abort();
            gateway.set_ready(false);
            crate::background::set_health(&health, false).await;
            let _ = drain_started.send(());
        }
    };
    // Streams that never end by themselves (a health `Watch`, a stalled client) must not keep
    // the process alive forever: after `limits.drain_timeout` they are cut.
    let drain_limit = gateway.config.limits.drain_timeout;
    let drain_expired = async move {
        if drain_begun.await.is_ok() {
            tokio::time::sleep(drain_limit).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    // A peer that stops answering HTTP/2 pings is closed.
    let router = Server::builder()
        .max_concurrent_streams(gateway.config.limits.max_streams_per_connection)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(CorrelatorLayer)
        .layer(ShedLayer::new(
            Bounds {
                max_in_flight: gateway.config.limits.max_in_flight,
                per_tenant: gateway.config.limits.max_in_flight_per_tenant,
                body_timeout: gateway.config.limits.body_timeout,
            },
            ApiMetrics::register(&gateway.metrics),
        ))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(service)
        .add_service(
            CarrierPushServer::new(PushService::new(Arc::clone(&gateway), edge.clone()))
                .max_decoding_message_size(max_request),
        )
        .add_service(
            NumberStatusServer::new(PushService::new(Arc::clone(&gateway), edge))
                .max_decoding_message_size(max_request),
        );
    let result: std::pin::Pin<
        Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>,
    > = match tls {
        // A connection that opens and never finishes its handshake is closed.
        Some(tls) => Box::pin(router.serve_with_incoming_shutdown(
            crate::tls::handshakes(
                incoming,
                tls,
                gateway.config.limits.handshake_timeout,
                gateway.connections.clone(),
                &critical,
            ),
            draining,
        )),
        None => Box::pin(router.serve_with_incoming_shutdown(incoming, draining)),
    };
    let result = tokio::select! {
        result = result => result,
        () = drain_expired => {
            tracing::warn!(
                limit = ?drain_limit,
                "requests still open after the drain limit: closing their connections"
            );
            Ok(())
        }
    };
    housekeeping.abort();
    reseal.abort();
    if let Some(watch) = tls_watch {
        watch.abort();
    }
    readiness.abort();
    let _ = stop_admin.send(());
    if let Some(http) = http {
        match http.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "HTTP API failed"),
            Err(e) => tracing::warn!(error = %e, "HTTP API panicked"),
            Ok(Ok(())) => {}
        }
    }
    if let Some(admin) = admin {
        match admin.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "admin endpoint failed"),
            Err(e) => tracing::warn!(error = %e, "admin endpoint panicked"),
            Ok(Ok(())) => {}
        }
    }
    // Requests are done; let the worker finish or release the tickets it holds.
    let _ = stop_worker.send(true);
    if let Some((tickets, push)) = worker {
        let _ = tickets.await;
        let _ = push.await;
    }
    // The store may be down: what the writer still holds is given a bounded time.
    if tokio::time::timeout(AUDIT_FLUSH_LIMIT, gateway.audit.flush())
        .await
        .is_err()
    {
        tracing::error!(
            limit = ?AUDIT_FLUSH_LIMIT,
            "audit records still queued at shutdown could not be stored"
        );
    }
    if let Some(failure) = critical.failure() {
        tracing::error!(%failure, "gateway stopped: it cannot run without that task");
        result?;
        anyhow::bail!("{failure}: the gateway stopped, to be restarted whole (see the log)");
    }
    tracing::info!("gateway stopped");
    Ok(result?)
}
