//! The app catalog: one entry per integrated app, each with its own long-lived HTTP/2 channel to
//! the app's adapter, its settings, and the tower stack its look-up calls go through (retry
//! budget, circuit breaker, concurrency limit, deadline).
//!
//! The catalog is live: [`Catalog::reload`] swaps in a new set of apps built from a new config.
//! An app whose settings did not change keeps its entry (channel, breaker, counters); a changed one
//! gets a new entry; a removed one is dropped once the look-ups still using it finish. Readers take
//! a snapshot ([`Catalog::snapshot`]) and keep it for the whole request, so a reload never changes
//! an app under a request in flight.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU8, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use tonic::transport::Endpoint;

use super::{
    breaker::BreakerState,
    client::{AppClient, ClientSettings},
    metrics::{AppMetrics, FanoutMetrics},
};
use crate::{
    config::{AppConfig, AppDefaults, BreakerConfig, Config, OutboundTlsConfig, RetryConfig},
    domain::AppId,
    proto::app_info::Health,
    tls::{client_config, client_files, files_digest},
};

/// Everything an app's entry is built from; an entry is kept across a reload only if this is
/// unchanged.
#[derive(Clone, Debug, PartialEq)]
struct Settings {
    app: AppConfig,
    defaults: AppDefaults,
    breaker: BreakerConfig,
    retry: RetryConfig,
    outbound_tls: Option<OutboundTlsConfig>,
    /// What the app's TLS files (the CA it trusts, the gateway's client certificate and key)
    /// held when the entry was built: a renewed certificate rebuilds the entry, so new
    /// connections present it.
    tls_files: [u8; 32],
}

impl Settings {
    /// The files the app's client TLS reads.
    fn tls_paths(&self) -> Vec<std::path::PathBuf> {
        client_files(
            &self.app.endpoint,
            self.outbound_tls.as_ref(),
            self.app.tls_ca.as_deref(),
        )
    }
}

/// One integrated app.
pub struct App {
    pub id: AppId,
    pub name: String,
    pub category: String,
    pub customer_service: String,
    pub enabled: bool,
    /// Longest a single call to this app may take.
    pub timeout: Duration,
    /// A timeout counts against the app only if the call had at least this long (or `timeout`).
    pub(crate) timeout_floor: Duration,
    /// How long the app has to finish an unbind.
    pub unbind_deadline: Duration,
    /// Position in the catalog, for a stable answer order (moves when a reload reorders).
    position: AtomicUsize,
    /// Every call to the app's adapter goes through it.
    pub client: AppClient,
    pub(crate) metrics: AppMetrics,
    health: AtomicU8,
    settings: Settings,
}

impl App {
    fn build(settings: Settings, position: usize, metrics: &FanoutMetrics) -> anyhow::Result<Self> {
        let app = &settings.app;
        let defaults = &settings.defaults;
        let id = AppId::parse(&app.id).map_err(|e| anyhow::anyhow!("apps[{position}].id: {e}"))?;
        let timeout = app.timeout.unwrap_or(defaults.timeout);
        let mut endpoint = Endpoint::from_shared(app.endpoint.clone())
            .map_err(|e| anyhow::anyhow!("apps[{position}].endpoint: {e}"))?;
        if let Some(tls) = client_config(
            &app.endpoint,
            settings.outbound_tls.as_ref(),
            app.tls_ca.as_deref(),
            app.tls_server_name.as_deref(),
        )
        .with_context(|| format!("apps[{position}]"))?
        {
            endpoint = endpoint
                .tls_config(tls)
                .with_context(|| format!("apps[{position}]: TLS settings"))?;
        }
        let channel = endpoint
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .connect_lazy();
        let metrics = metrics.app(&id);
        let client = AppClient::new(
            channel,
            ClientSettings {
                timeout,
                concurrency: app.concurrency.unwrap_or(defaults.concurrency),
                max_accounts: app.max_accounts.unwrap_or(defaults.max_accounts),
                breaker: &settings.breaker,
                retry: &settings.retry,
            },
            metrics.clone(),
        );
        Ok(Self {
            metrics,
            id,
            name: app.name.clone(),
            category: app.category.clone(),
            customer_service: app.customer_service.clone(),
            enabled: app.enabled,
            timeout,
            timeout_floor: settings.breaker.timeout_floor,
            unbind_deadline: app.unbind_deadline.unwrap_or(defaults.unbind_deadline),
            position: AtomicUsize::new(position),
            client,
            health: AtomicU8::new(Health::Unknown as u8),
            settings,
        })
    }

    /// Position in the catalog.
    pub fn position(&self) -> usize {
        self.position.load(Ordering::Relaxed)
    }

    /// The state of the app's circuit breaker.
    pub fn breaker_state(&self) -> BreakerState {
        self.client.breaker.state()
    }

    /// How the app looks from its recent calls: down while disabled or its breaker is open.
    pub fn health(&self) -> Health {
        if !self.enabled || self.client.breaker.state() == BreakerState::Open {
            return Health::Down;
        }
        Health::try_from(i32::from(self.health.load(Ordering::Relaxed))).unwrap_or(Health::Unknown)
    }

    pub(crate) fn record_health(&self, health: Health) {
        self.health.store(health as u8, Ordering::Relaxed);
    }
}

/// One version of the catalog: every app, in catalog order.
pub struct CatalogSnapshot {
    apps: Vec<Arc<App>>,
    by_id: HashMap<AppId, Arc<App>>,
}

impl CatalogSnapshot {
    /// Every app, enabled or not.
    pub fn all(&self) -> &[Arc<App>] {
        &self.apps
    }

    /// The enabled apps.
    pub fn enabled(&self) -> impl Iterator<Item = &Arc<App>> {
        self.apps.iter().filter(|a| a.enabled)
    }

    /// The app with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<App>> {
        let id = AppId::parse(id).ok()?;
        self.by_id.get(&id)
    }
}

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CatalogChange {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: usize,
}

impl CatalogChange {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// The live catalog.
pub struct Catalog {
    current: RwLock<Arc<CatalogSnapshot>>,
    metrics: FanoutMetrics,
}

impl Catalog {
    /// Builds the catalog from config; channels connect lazily, so an app that is down at start-up
    /// does not stop the gateway.
    pub fn new(config: &Config, metrics: FanoutMetrics) -> anyhow::Result<Self> {
        let (snapshot, _) = build(config, None, &metrics)?;
        Ok(Self {
            current: RwLock::new(Arc::new(snapshot)),
            metrics,
        })
    }

    /// The fan-out's metrics (the catalog's entries hold their apps' counters).
    pub fn metrics(&self) -> &FanoutMetrics {
        &self.metrics
    }

    /// The catalog as it is now; keep it for the whole request.
    pub fn snapshot(&self) -> Arc<CatalogSnapshot> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The app with this id in the current catalog.
    pub fn get(&self, id: &str) -> Option<Arc<App>> {
        self.snapshot().get(id).cloned()
    }

    /// Every TLS file the apps' clients read (to watch for a renewal).
    pub fn tls_files(&self) -> std::collections::BTreeSet<std::path::PathBuf> {
        self.snapshot()
            .all()
            .iter()
            .flat_map(|app| app.settings.tls_paths())
            .collect()
    }

    /// Replaces the apps with those of `config`, keeping the entries of unchanged apps. On error
    /// the catalog is left as it was.
    pub fn reload(&self, config: &Config) -> anyhow::Result<CatalogChange> {
        let old = self.snapshot();
        let (snapshot, change) = build(config, Some(&old), &self.metrics)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
        Ok(change)
    }
}

fn build(
    config: &Config,
    old: Option<&CatalogSnapshot>,
    metrics: &FanoutMetrics,
) -> anyhow::Result<(CatalogSnapshot, CatalogChange)> {
    let mut change = CatalogChange::default();
    let mut apps = Vec::with_capacity(config.apps.len());
    // Most apps use the same files (the gateway's client certificate and CA): each set is read
    // once per build, not once per app.
    let mut digests: HashMap<Vec<std::path::PathBuf>, [u8; 32]> = HashMap::new();
    for (position, app) in config.apps.iter().enumerate() {
        let settings = Settings {
            app: app.clone(),
            defaults: config.app_defaults.clone(),
            breaker: config
                .breaker_for(app)
                .with_context(|| format!("apps[{position}].breaker"))?,
            retry: config
                .retry_for(app)
                .with_context(|| format!("apps[{position}].retry"))?,
            outbound_tls: config.outbound_tls.clone(),
            tls_files: *digests
                .entry(client_files(
                    &app.endpoint,
                    config.outbound_tls.as_ref(),
                    app.tls_ca.as_deref(),
                ))
                .or_insert_with_key(|files| files_digest(files)),
        };
        let previous = old.and_then(|o| o.get(&app.id));
        match previous {
            Some(p) if p.settings == settings => {
                p.position.store(position, Ordering::Relaxed);
                change.unchanged += 1;
                apps.push(Arc::clone(p));
                continue;
            }
            Some(_) => change.changed.push(app.id.clone()),
            None if old.is_some() => change.added.push(app.id.clone()),
            None => {}
        }
        apps.push(Arc::new(App::build(settings, position, metrics)?));
    }
    let by_id: HashMap<AppId, Arc<App>> = apps.iter().map(|a| (a.id.clone(), a.clone())).collect();
    if let Some(old) = old {
        change.removed = old
            .all()
            .iter()
            .filter(|a| !by_id.contains_key(&a.id))
            .map(|a| a.id.to_string())
            .collect();
    }
    Ok((CatalogSnapshot { apps, by_id }, change))
}
