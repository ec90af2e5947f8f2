//! The gateway's state: everything the handlers, the workers and the admin endpoint share,
//! built once from the config (the store connected and migrated, the keys derived, the catalog,
//! the clients). It depends on the subsystems, never on the surfaces (`api`, `admin`) that use it;
//! `server` composes those around it.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use anyhow::Context;

use crate::critical::CriticalTasks;
use crate::{
    audit::{AuditLog, AuditMetrics},
    clock::Clock,
    config::Config,
    connections::ListenerMetrics,
    fanout::{Catalog, FanOut, FanoutMetrics, LookupCache},
    metrics::Metrics,
    push::{Pusher, worker::PushWorker},
    registry::RegistryClient,
    security::{Keys, OwnershipRule, random_id},
    store::Store,
    unbind::{Unbinder, metrics::TicketMetrics, notify::OutcomeNotifier, worker::Worker},
    verification::{Verifier, metrics::VerificationMetrics},
};

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
    pub audit: AuditLog,
    pub pusher: Pusher,
    pub metrics: Metrics,
    /// The connection caps' metrics, shared by the gRPC and HTTP listeners.
    pub connections: ListenerMetrics,
    /// Its long-lived tasks: one that ends unexpectedly stops the gateway ([`crate::critical`]).
    pub critical: CriticalTasks,
    /// The store answered the last readiness check (and the gateway is not shutting down).
    ready: AtomicBool,
}

impl Gateway {
    /// Connects the store (running migrations), builds the catalog and the clients.
    pub async fn build(config: Config, clock: Clock) -> anyhow::Result<Arc<Self>> {
        let keys = Arc::new(config.keyring()?);
        // Ids and purposes only: what lets an operator see every replica holds the same ring.
        let held: Vec<String> = keys
            .list()
            .iter()
            .map(|k| format!("{}:{}{}", k.purpose, k.id, if k.active { "*" } else { "" }))
            .collect();
        tracing::info!(keys = %held.join(" "), legacy = keys.opens_legacy_values(), "keyring loaded (* = active)");
        if config.number_status.history_starts.is_none() {
            tracing::warn!(
                window_days = config.retention.recycled_history.as_secs() / 86_400,
                "number_status.history_starts is not set: CheckNumberRecycled takes the carrier's \
                 pushes as complete for the whole history window and answers \"not recycled\" \
                 for a number never pushed; set it to the day the pushes began"
            );
        }
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
        let critical = CriticalTasks::new();
        let audit = AuditLog::start(
            store.clone(),
            clock.clone(),
            AuditMetrics::register(&metrics),
            &critical,
        );
        let verifier = Verifier::new(
            store.clone(),
            audit.clone(),
            registry.clone(),
            Arc::clone(&keys),
            clock.clone(),
            config.verification.clone(),
            VerificationMetrics::register(&metrics),
        );
        let fanout_metrics = FanoutMetrics::register(&metrics);
        let catalog = Arc::new(Catalog::new(&config, fanout_metrics.clone())?);
        let fanout = FanOut::new(
            LookupCache::new(config.cache.ttl, config.cache.capacity, clock.clone()),
            fanout_metrics,
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
            TicketMetrics::register(&metrics),
        );
        let pusher = Pusher::new(
            store.clone(),
            Arc::clone(&keys),
            clock.clone(),
            Arc::clone(&catalog),
        );
        let gateway = Arc::new(Self {
            connections: ListenerMetrics::register(&metrics),
            critical,
            metrics,
            ready: AtomicBool::new(true),
            pusher,
            audit,
            config,
            keys,
            clock,
            store,
            registry,
            verifier,
            catalog,
            fanout,
            unbinder,
        });
        gateway.note_outbound_expiry(&gateway.config);
        Ok(gateway)
    }

    /// Tells the metrics when the gateway's client certificate (`config`'s `outbound_tls.cert`)
    /// expires: `unbind_tls_certificate_expiry_seconds{listener="outbound"}`.
    pub fn note_outbound_expiry(&self, config: &Config) {
        let Some(cert) = config.outbound_tls.as_ref().and_then(|o| o.cert.as_deref()) else {
            self.connections.certificate_gone("outbound");
            return;
        };
        if let Ok(not_after) = crate::tls::certificate_not_after(cert, "outbound_tls.cert") {
            self.connections.certificate_expires("outbound", not_after);
        }
    }

    /// Whether the store answered the last readiness check.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Records whether the gateway is ready; whether that changed.
    pub(crate) fn set_ready(&self, ready: bool) -> bool {
        self.ready.swap(ready, Ordering::Relaxed) != ready
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
            critical: self.critical.clone(),
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
            notifier: OutcomeNotifier::start(
                self.registry.clone(),
                self.config.unbind.sms_window,
                &self.critical,
            ),
            config: self.config.unbind.clone(),
            wake: Arc::clone(&self.unbinder.wake),
            metrics: self.unbinder.metrics().clone(),
            owner: random_id("worker"),
            critical: self.critical.clone(),
        }
    }
}
