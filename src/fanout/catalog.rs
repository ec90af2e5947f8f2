//! The app catalog: one entry per integrated app, each with its own long-lived HTTP/2 channel to
//! the app's adapter, its settings, a concurrency limit and a record of how its last call went.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use tokio::sync::Semaphore;
use tonic::transport::{Channel, Endpoint};

use anyhow::Context;

use crate::{
    config::{AppConfig, AppDefaults, OutboundTlsConfig},
    domain::AppId,
    proto::{app_adapter_client::AppAdapterClient, app_info::Health},
    tls::client_config,
};

/// One integrated app.
pub struct App {
    pub id: AppId,
    pub name: String,
    pub category: String,
    pub customer_service: String,
    pub enabled: bool,
    /// Longest a single call to this app may take.
    pub timeout: Duration,
    /// How long the app has to finish an unbind.
    pub unbind_deadline: Duration,
    /// Position in the catalog, for a stable answer order.
    pub position: usize,
    client: AppAdapterClient<Channel>,
    /// Calls in flight to this app at once.
    pub(crate) permits: Arc<Semaphore>,
    health: AtomicU8,
}

impl App {
    /// A client for the app's adapter (a clone of the shared channel).
    pub fn client(&self) -> AppAdapterClient<Channel> {
        self.client.clone()
    }

    /// How the app looks from its recent calls.
    pub fn health(&self) -> Health {
        if !self.enabled {
            return Health::Down;
        }
        Health::try_from(i32::from(self.health.load(Ordering::Relaxed))).unwrap_or(Health::Unknown)
    }

    pub(crate) fn record_health(&self, health: Health) {
        self.health.store(health as u8, Ordering::Relaxed);
    }
}

/// Every app, in catalog order.
pub struct Catalog {
    apps: Vec<Arc<App>>,
    by_id: HashMap<AppId, Arc<App>>,
}

impl Catalog {
    /// Builds the catalog from config; channels connect lazily, so an app that is down at start-up
    /// does not stop the gateway.
    pub fn new(
        apps: &[AppConfig],
        defaults: &AppDefaults,
        outbound_tls: Option<&OutboundTlsConfig>,
    ) -> anyhow::Result<Self> {
        let mut list = Vec::with_capacity(apps.len());
        for (position, app) in apps.iter().enumerate() {
            let id =
                AppId::parse(&app.id).map_err(|e| anyhow::anyhow!("apps[{position}].id: {e}"))?;
            let timeout = app.timeout.unwrap_or(defaults.timeout);
            let mut endpoint = Endpoint::from_shared(app.endpoint.clone())
                .map_err(|e| anyhow::anyhow!("apps[{position}].endpoint: {e}"))?;
            if let Some(tls) = client_config(
                &app.endpoint,
                outbound_tls,
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
            list.push(Arc::new(App {
                id,
                name: app.name.clone(),
                category: app.category.clone(),
                customer_service: app.customer_service.clone(),
                enabled: app.enabled,
                timeout,
                unbind_deadline: app.unbind_deadline.unwrap_or(defaults.unbind_deadline),
                position,
                client: AppAdapterClient::new(channel),
                permits: Arc::new(Semaphore::new(
                    app.concurrency.unwrap_or(defaults.concurrency),
                )),
                health: AtomicU8::new(Health::Unknown as u8),
            }));
        }
        let by_id = list.iter().map(|a| (a.id.clone(), a.clone())).collect();
        Ok(Self { apps: list, by_id })
    }

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
