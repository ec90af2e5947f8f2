//! Live catalog reload: the config file is read again on SIGHUP and whenever it changes (checked
//! every `reload.watch_interval`). The app catalog (`[[apps]]`, `[app_defaults]`, `[breaker]`,
//! `[retry]`) takes effect at once, without a restart; look-ups in flight finish with the catalog
//! they started with. A file that does not parse or validate is rejected with the reason logged,
//! and the running catalog is kept. Changes to other settings are logged as needing a restart.
//!
//! The gateway's client-side TLS files (`outbound_tls`, the apps' `tls_ca`) are watched too: when
//! their contents change (a renewed client certificate), the apps they serve are rebuilt and the
//! registry reconnects, so new connections present the new certificate. The listeners' own TLS
//! files are watched by `watch_tls`.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::task::JoinHandle;

use crate::{
    config::Config,
    connections::ListenerMetrics,
    fanout::CatalogChange,
    gateway::Gateway,
    tls::{LiveTls, files_digest},
};

/// What a reload did.
#[derive(Debug)]
pub enum Reloaded {
    /// The catalog was rebuilt (possibly with no app changed).
    Applied(CatalogChange),
    /// The file was rejected; the running catalog is kept.
    Rejected(String),
}

/// Re-reads config files and applies their catalog.
pub struct Reloader {
    gateway: Arc<Gateway>,
    path: PathBuf,
    /// Adjustments the command line made to the file's settings (e.g. `--database-url`), applied
    /// to every re-read so they are not mistaken for changes.
    adjust: Box<dyn Fn(&mut Config) + Send + Sync>,
    /// What the registry client's TLS files held when its connection was made.
    registry_tls: std::sync::Mutex<[u8; 32]>,
}

impl Reloader {
    pub fn new(
        gateway: Arc<Gateway>,
        path: PathBuf,
        adjust: impl Fn(&mut Config) + Send + Sync + 'static,
    ) -> Self {
        let registry_tls = files_digest(&registry_files(&gateway.config, &gateway.config));
        Self {
            gateway,
            path,
            adjust: Box::new(adjust),
            registry_tls: std::sync::Mutex::new(registry_tls),
        }
    }

    /// Reads the file and applies its catalog, or rejects it. Logs and counts the result.
    pub fn reload(&self) -> Reloaded {
        let metrics = self.gateway.catalog.metrics();
        let config = match Config::load(&self.path) {
            Ok(mut config) => {
                (self.adjust)(&mut config);
                config
            }
            Err(e) => {
                let reason = format!("{e:#}");
                tracing::error!(reason = %reason, "config reload rejected; the running catalog is kept");
                metrics.catalog_reload("rejected");
                return Reloaded::Rejected(reason);
            }
        };
        // Renewed client-side TLS files are checked before any app or the registry gets them.
        if let Err(e) = config.check_outbound_files() {
            let reason = format!("{e:#}");
            tracing::error!(reason = %reason, "config reload rejected; the running catalog is kept");
            metrics.catalog_reload("rejected");
            return Reloaded::Rejected(reason);
        }
        let change = match self.gateway.catalog.reload(&config) {
            Ok(change) => change,
            Err(e) => {
                let reason = format!("{e:#}");
                tracing::error!(reason = %reason, "config reload rejected; the running catalog is kept");
                metrics.catalog_reload("rejected");
                return Reloaded::Rejected(reason);
            }
        };
        self.renew_registry_tls(&config);
        self.gateway.note_outbound_expiry(&config);
        let restart = needs_restart(&self.gateway.config, &config);
        if !restart.is_empty() {
            tracing::warn!(
                sections = %restart.join(", "),
                "config reload: these settings take effect only at the next restart"
            );
        }
        if change.is_empty() {
            tracing::info!(
                apps = change.unchanged,
                "config reloaded: catalog unchanged"
            );
            metrics.catalog_reload("unchanged");
        } else {
            tracing::info!(
                added = ?change.added,
                removed = ?change.removed,
                changed = ?change.changed,
                unchanged = change.unchanged,
                "config reloaded: catalog updated"
            );
            metrics.catalog_reload("applied");
        }
        Reloaded::Applied(change)
    }

    /// Reconnects the registry when its TLS files hold something else than when it connected.
    fn renew_registry_tls(&self, config: &Config) {
        let running = &self.gateway.config;
        let now = files_digest(&registry_files(running, config));
        let mut seen = self.registry_tls.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == now {
            return;
        }
        let renewed = crate::tls::client_config(
            &running.registry.endpoint,
            config.outbound_tls.as_ref(),
            None,
            running.registry.tls_server_name.as_deref(),
        )
        .and_then(|tls| self.gateway.registry.replace_tls(tls));
        match renewed {
            Ok(()) => {
                *seen = now;
                tracing::info!("registry: TLS files changed; new connections present them");
            }
            Err(e) => tracing::error!(
                reason = %format!("{e:#}"),
                "registry: renewed TLS files rejected; the running connection is kept"
            ),
        }
    }

    /// Reloads on SIGHUP and when the file, or a TLS file of the gateway's client side, changes
    /// (checked every `interval`; zero: SIGHUP only), until the task is aborted.
    pub fn spawn(self, interval: Duration) -> JoinHandle<()> {
        let path = self.path.clone();
        let gateway = Arc::clone(&self.gateway);
        watch(
            interval,
            move || {
                let mut tls = gateway.catalog.tls_files();
                tls.extend(registry_files(&gateway.config, &gateway.config));
                (fingerprint(&path), files_digest(&tls))
            },
            move |by_signal| {
                if by_signal {
                    tracing::info!("SIGHUP: reloading the config");
                }
                let _ = self.reload();
            },
        )
    }
}

/// Calls `changed(by_signal)` on SIGHUP, and whenever `fingerprint` gives something else than it
/// last gave (asked every `interval`; zero: SIGHUP only), until the task is aborted. What the
/// config and the HTTP API's key set are watched with.
pub fn watch<F: PartialEq + Send + 'static>(
    interval: Duration,
    mut fingerprint: impl FnMut() -> F + Send + 'static,
    mut changed: impl FnMut(bool) + Send + 'static,
) -> JoinHandle<()> {
    // Registered before returning, so a SIGHUP sent from now on is never missed.
    let mut hangup = hangup_signals();
    // The file as it is now is the baseline: an edit made right after this call is a change.
    let mut seen = fingerprint();
    tokio::spawn(async move {
        let mut tick = (!interval.is_zero()).then(|| {
            let mut t = tokio::time::interval(interval);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            let by_signal = tokio::select! {
                Some(()) = next_hangup(&mut hangup) => true,
                _ = async { tick.as_mut().unwrap().tick().await }, if tick.is_some() => false,
            };
            let now = fingerprint();
            if !by_signal && now == seen {
                continue;
            }
            seen = now;
            changed(by_signal);
        }
    })
}

/// The files the registry client's TLS reads: the running registry endpoint, with `config`'s
/// `outbound_tls`.
fn registry_files(running: &Config, config: &Config) -> Vec<PathBuf> {
    crate::tls::client_files(
        &running.registry.endpoint,
        config.outbound_tls.as_ref(),
        None,
    )
}

/// Serves `tls`'s files again on SIGHUP and whenever they change (checked every `interval`;
/// zero: SIGHUP only), until the task is aborted; files that do not make an identity valid now
/// are rejected, logged with the reason, and the running identity is kept. `metrics` learns
/// when the certificate served expires, and each re-read's result.
pub fn watch_tls(
    tls: Arc<LiveTls>,
    interval: Duration,
    metrics: ListenerMetrics,
) -> JoinHandle<()> {
    let listener = tls.listener();
    metrics.certificate_expires(listener, tls.not_after());
    let files = Arc::clone(&tls);
    watch(
        interval,
        move || files.fingerprint(),
        move |by_signal| match tls.reload() {
            Ok(not_after) => {
                metrics.certificate_expires(listener, not_after);
                metrics.tls_reload(listener, "applied");
                tracing::info!(
                    listener,
                    by_signal,
                    expires = %chrono::DateTime::from_timestamp(not_after, 0).unwrap_or_default(),
                    "TLS identity re-read: new connections are served with it"
                );
            }
            Err(e) => {
                metrics.tls_reload(listener, "rejected");
                tracing::error!(
                    listener,
                    reason = %format!("{e:#}"),
                    "TLS files rejected; the running identity is kept"
                );
            }
        },
    )
}

/// Top-level sections that differ between the running config and a new one, outside the parts a
/// reload applies.
fn needs_restart(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut differ = Vec::new();
    let mut check = |name, same: bool| {
        if !same {
            differ.push(name);
        }
    };
    check("listen", running.listen == new.listen);
    check("development", running.development == new.development);
    check(
        "signing_secret",
        running.signing_secret == new.signing_secret
            && running.signing_secret_file == new.signing_secret_file,
    );
    check("keys", running.keys == new.keys);
    check("tls", running.tls == new.tls);
    check("tenants", running.tenants == new.tenants);
    check("store", running.store == new.store);
    check("registry", running.registry == new.registry);
    check("cache", running.cache == new.cache);
    check("lookup", running.lookup == new.lookup);
    check("verification", running.verification == new.verification);
    check("limits", running.limits == new.limits);
    check("unbind", running.unbind == new.unbind);
    check("audit", running.audit == new.audit);
    check("retention", running.retention == new.retention);
    check("admin", running.admin == new.admin);
    // The JWKS file itself is read again when it changes; the rest of `[http]` needs a restart.
    check("http", running.http == new.http);
    check("number_status", running.number_status == new.number_status);
    check("reload", running.reload == new.reload);
    differ
}

/// What tells a changed config: the file's and its `apps_file`'s modification times, lengths and
/// texts. (Both are small: reading them every few seconds costs nothing worth a blocking-pool
/// hop.)
fn fingerprint(path: &Path) -> Option<Vec<(SystemTime, u64, u64)>> {
    let (config, text) = file_fingerprint(path)?;
    let mut all = vec![config];
    // The catalog file the config names now (an unreadable config has none).
    #[derive(serde::Deserialize)]
    struct AppsFileOnly {
        apps_file: Option<std::path::PathBuf>,
    }
    let named = std::str::from_utf8(&text)
        .ok()
        .and_then(|t| toml::from_str::<AppsFileOnly>(t).ok())
        .and_then(|c| c.apps_file);
    if let Some(apps) = named {
        all.extend(file_fingerprint(&apps).map(|(f, _)| f));
    }
    Some(all)
}

/// One file's modification time, length and hash, and its bytes.
fn file_fingerprint(path: &Path) -> Option<((SystemTime, u64, u64), Vec<u8>)> {
    use std::hash::{Hash, Hasher};
    let meta = std::fs::metadata(path).ok()?;
    let text = std::fs::read(path).ok()?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    Some(((meta.modified().ok()?, meta.len(), hasher.finish()), text))
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup_signals() -> Hangup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}
#[cfg(not(unix))]
fn hangup_signals() -> Hangup {}

#[cfg(unix)]
async fn next_hangup(hangup: &mut Hangup) -> Option<()> {
    match hangup {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangup) -> Option<()> {
    std::future::pending().await
}
