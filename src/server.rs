//! Assembling and running the gateway: the shared state ([`Gateway`]), the tonic server with
//! health, reflection and the correlator layer, background housekeeping, and graceful shutdown
//! (in-flight requests finish; new connections are refused).

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::{Server, server::TcpIncoming};

use crate::{
    api::{
        GatewayService, correlator::CorrelatorLayer, push::PushService, shed::ShedLayer,
        tenant::Tenants,
    },
    audit::AuditLog,
    clock::Clock,
    config::Config,
    fanout::{Catalog, FanOut, LookupCache},
    metrics::Metrics,
    proto::{
        FILE_DESCRIPTOR_SET, account_gateway_server::AccountGatewayServer,
        carrier_push_server::CarrierPushServer, number_status_server::NumberStatusServer,
    },
    push::{Pusher, worker::PushWorker},
    registry::RegistryClient,
    security::{Keys, OwnershipRule, random_id},
    store::Store,
    unbind::{Unbinder, notify::OutcomeNotifier, worker::Worker},
    verification::Verifier,
};

/// How long shutdown waits for the audit writer to store what it still holds.
const AUDIT_FLUSH_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Everything a request handler needs, shared by all of them.
pub struct Gateway {
    pub config: Config,
    pub keys: Arc<Keys>,
    pub clock: Clock,
    pub store: Store,
    pub registry: RegistryClient,
    pub verifier: Verifier,
    pub catalog: Arc<Catalog>,
    pub fanout: FanOut,
    pub unbinder: Unbinder,
    pub tenants: Tenants,
    pub audit: AuditLog,
    pub pusher: Pusher,
    pub metrics: Metrics,
    /// The store answered the last readiness check.
    ready: AtomicBool,
}

impl Gateway {
    /// Connects the store (running migrations), builds the catalog and the clients.
    pub async fn build(config: Config, clock: Clock) -> anyhow::Result<Arc<Self>> {
        let keys = Arc::new(Keys::derive(&config.signing_secret()?));
        let store = Store::connect(&config.store.url, config.store.max_connections).await?;
        let registry_tls = crate::tls::client_config(
            &config.registry.endpoint,
            config.outbound_tls.as_ref(),
            None,
            config.registry.tls_server_name.as_deref(),
        )
        .context("registry")?;
        let registry = RegistryClient::new(
            &config.registry.endpoint,
            config.registry.timeout,
            registry_tls,
        )
        .context("registry.endpoint")?;
        let metrics = Metrics::new();
        let audit = AuditLog::start(store.clone(), clock.clone(), metrics.clone());
        let verifier = Verifier::new(
            store.clone(),
            audit.clone(),
            registry.clone(),
            Arc::clone(&keys),
            clock.clone(),
            config.verification.clone(),
            metrics.clone(),
        );
        let catalog = Arc::new(Catalog::new(&config, metrics.clone())?);
        let fanout = FanOut::new(
            LookupCache::new(config.cache.ttl, config.cache.capacity, clock.clone()),
            metrics.clone(),
            clock.clone(),
        );
        let unbinder = Unbinder::new(
            store.clone(),
            Arc::clone(&keys),
            clock.clone(),
            Arc::clone(&catalog),
            config.unbind.clone(),
            OwnershipRule {
                margin_ms: config.verification.ownership_margin.as_millis() as i64,
            },
        );
        let tenants = Tenants::new(&config.tenants, config.development);
        let pusher = Pusher::new(
            store.clone(),
            Arc::clone(&keys),
            clock.clone(),
            Arc::clone(&catalog),
        );
        Ok(Arc::new(Self {
            metrics,
            ready: AtomicBool::new(true),
            pusher,
            audit,
            tenants,
            config,
            keys,
            clock,
            store,
            registry,
            verifier,
            catalog,
            fanout,
            unbinder,
        }))
    }

    /// Whether the store answered the last readiness check.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// This replica's push worker.
    pub fn push_worker(&self) -> PushWorker {
        PushWorker {
            store: self.store.clone(),
            keys: Arc::clone(&self.keys),
            clock: self.clock.clone(),
            catalog: Arc::clone(&self.catalog),
            config: self.config.unbind.clone(),
            wake: Arc::clone(&self.pusher.wake),
            owner: random_id("pusher"),
        }
    }

    /// This replica's ticket worker.
    pub fn worker(&self) -> Worker {
        Worker {
            store: self.store.clone(),
            keys: Arc::clone(&self.keys),
            clock: self.clock.clone(),
            catalog: Arc::clone(&self.catalog),
            cache: Arc::clone(self.fanout.cache()),
            notifier: OutcomeNotifier::start(self.registry.clone(), self.config.unbind.sms_window),
            config: self.config.unbind.clone(),
            wake: Arc::clone(&self.unbinder.wake),
            owner: random_id("worker"),
        }
    }
}

/// A gateway serving on a listener.
pub struct RunningGateway {
    pub addr: SocketAddr,
    /// The admin HTTP listener (metrics, health), when configured.
    pub admin_addr: Option<SocketAddr>,
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
    let gateway = Gateway::build(config, clock).await?;
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(Arc::clone(&gateway), listener, admin, async {
        let _ = rx.await;
    }));
    Ok(RunningGateway {
        addr,
        admin_addr,
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
    eprintln!("{}", DEVELOPMENT_TLS_BOX);
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

/// Serves the gRPC API (and the admin HTTP endpoint on `admin`) until `shutdown` resolves.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    // Store and catalog are built: every service is ready.
    set_health(&health, true).await;
    let readiness = tokio::spawn(readiness(Arc::clone(&gateway), health.clone()));
    let (stop_admin, admin_stopped) = oneshot::channel::<()>();
    let admin = admin.map(|listener| {
        tokio::spawn(crate::admin::serve(Arc::clone(&gateway), listener, async {
            let _ = admin_stopped.await;
        }))
    });
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let max_request = gateway.config.limits.max_request_bytes;
    let service = AccountGatewayServer::new(GatewayService::new(Arc::clone(&gateway)))
        .max_decoding_message_size(max_request);
    let housekeeping = tokio::spawn(housekeeping(Arc::clone(&gateway)));
    let (stop_worker, worker_stopped) = tokio::sync::watch::channel(false);
    let worker = gateway.config.unbind.worker.then(|| {
        let push = tokio::spawn(Arc::new(gateway.push_worker()).run(worker_stopped.clone()));
        let tickets = tokio::spawn(Arc::new(gateway.worker()).run(worker_stopped));
        (tickets, push)
    });
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tracing::info!(addr = ?incoming.local_addr().ok(), apps = gateway.catalog.snapshot().all().len(), "gateway serving");
    let mut builder = Server::builder();
    match &gateway.config.tls {
        Some(tls) => builder = builder.tls_config(crate::tls::server_config(tls)?)?,
        None => tracing::warn!("DEVELOPMENT MODE: serving plain-text gRPC without TLS"),
    }
    // Shutting down: say so to health checkers first, then drain.
    let (drain_started, drain_begun) = oneshot::channel::<()>();
    let draining = {
        let health = health.clone();
        let gateway = Arc::clone(&gateway);
        let readiness = readiness.abort_handle();
        async move {
            shutdown.await;
            // Not ready from here on, whatever the store does: `/readyz` and health agree.
            readiness.abort();
            gateway.ready.store(false, Ordering::Relaxed);
            set_health(&health, false).await;
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
    let result = builder
        .max_concurrent_streams(gateway.config.limits.max_streams_per_connection)
        .layer(CorrelatorLayer)
        .layer(ShedLayer::new(
            gateway.config.limits.max_in_flight,
            gateway.metrics.clone(),
        ))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(service)
        .add_service(
            CarrierPushServer::new(PushService::new(Arc::clone(&gateway)))
                .max_decoding_message_size(max_request),
        )
        .add_service(
            NumberStatusServer::new(PushService::new(Arc::clone(&gateway)))
                .max_decoding_message_size(max_request),
        )
        .serve_with_incoming_shutdown(incoming, draining);
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
    readiness.abort();
    let _ = stop_admin.send(());
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
    tracing::info!("gateway stopped");
    Ok(result?)
}

/// Sets every service's health status (and the server's, the empty name).
async fn set_health(health: &tonic_health::server::HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    use tonic::server::NamedService;
    for name in [
        "",
        <AccountGatewayServer<GatewayService> as NamedService>::NAME,
        <CarrierPushServer<PushService> as NamedService>::NAME,
        <NumberStatusServer<PushService> as NamedService>::NAME,
    ] {
        health.set_service_status(name, status).await;
    }
}

/// Checks the store every few seconds; while it does not answer, every service reports
/// `NOT_SERVING` (and `/readyz` 503), so load balancers send callers to another replica.
async fn readiness(gateway: Arc<Gateway>, health: tonic_health::server::HealthReporter) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ok = tokio::time::timeout(Duration::from_secs(2), gateway.store.ping())
            .await
            .unwrap_or(false);
        if gateway.ready.swap(ok, Ordering::Relaxed) != ok {
            if ok {
                tracing::info!("store reachable again: serving");
            } else {
                tracing::warn!("store unreachable: reporting NOT_SERVING");
            }
            set_health(&health, ok).await;
        }
    }
}

/// Periodic clean-up: expired verifications, and idempotency keys older than 48 hours (kept at
/// least 24, as promised).
async fn housekeeping(gateway: Arc<Gateway>) {
    const KEY_RETENTION_MS: i64 = 48 * 3_600_000;
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        match gateway.verifier.purge().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "expired verifications deleted"),
            Err(e) => tracing::warn!(error = %e, "could not purge verifications"),
        }
        let now = gateway.clock.now_ms();
        if let Err(e) = gateway
            .store
            .purge_unbind_requests(now - KEY_RETENTION_MS)
            .await
        {
            tracing::warn!(error = %e, "could not purge idempotency keys");
        }
        let retention = gateway.config.audit.retention.as_millis() as i64;
        if let Err(e) = gateway.store.purge_audit(now - retention).await {
            tracing::warn!(error = %e, "could not purge old audit records");
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}
