//! `unbind-gateway portal`: the reference web portal a person meets, over the gateway. It is a
//! client of the gateway's gRPC API exactly as a government or carrier portal would integrate
//! it (a tenant certificate of role `portal` in production): server-rendered HTML in Chinese and
//! English that works without JavaScript, on a phone.
//!
//! The flow ([`pages`]): number and ID characters → the code from the SMS → the accounts as the
//! apps answer (a previous holder's apart from the holder's own, the apps that did not answer
//! with their customer-service numbers) → tick, or "all of the previous holder's" → confirm →
//! each unbind until it ends → a summary.
//!
//! - [`guard`]: the signed visitor cookie, CSRF tokens, the security headers;
//! - [`visitor`]: what is remembered of a visit, on the server (the gateway session among it);
//! - [`i18n`]: the message files (`locales/`), the language, dates in the carrier's zone;
//! - [`render`]: the templates (`templates/`); [`view`]: what the pages show, as plain values;
//! - [`notice`]: every error the gateway can answer as a sentence with what to do next;
//! - [`form`]: posted forms;
//! - [`admin`]: the admin endpoint (metrics, health, readiness) on a private address.

pub mod admin;
pub mod form;
pub mod guard;
pub mod i18n;
pub mod notice;
pub mod pages;
pub mod render;
pub mod view;
pub mod visitor;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono_tz::Tz;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::proto::account_gateway_client::AccountGatewayClient;

/// The time zone dates are written in unless told otherwise: the carrier's.
pub const DEFAULT_TIME_ZONE: &str = "Asia/Shanghai";
/// Connecting to the gateway gives up after this long (each call retries the connection).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stop waits for requests in flight before cutting them.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Longest a browser may take over the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the HTTPS certificate's files are checked for a change (SIGHUP re-reads them too).
pub const TLS_WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// What a portal needs.
pub struct PortalOptions {
    /// The gateway, as the caller reaches it (plain text in development, else TLS with the
    /// portal tenant's client certificate), connected lazily (`Endpoint::connect_lazy`, with
    /// [`CONNECT_TIMEOUT`]) so the portal may start before the gateway.
    pub gateway: tonic::transport::Channel,
    /// Where dates are written for.
    pub time_zone: Tz,
    /// Serve HTTPS with this identity (`--tls-cert`, `--tls-key`: [`crate::tls::LiveTls::http`],
    /// re-read on SIGHUP and when its files change); `None`: plain HTTP, which browsers accept
    /// the portal's `Secure` cookies over on localhost only.
    pub tls: Option<Arc<crate::tls::LiveTls>>,
    /// Connections open at once ([`crate::http::serve::Limits::max_connections`]).
    pub max_connections: usize,
    /// Connections open at once from one client address; `None` (the default): no such cap,
    /// since many people on a mobile network share one address (carrier-grade NAT).
    pub max_connections_per_ip: Option<usize>,
    /// Where to serve the admin endpoint ([`admin`]: metrics, `/healthz`, `/readyz`), if at
    /// all: a private address, never the browsers' one.
    pub admin: Option<TcpListener>,
}

impl PortalOptions {
    /// A portal of `gateway` as `unbind-gateway portal` starts one without other flags: dates
    /// in [`DEFAULT_TIME_ZONE`], plain HTTP, 4096 connections, no per-address cap, no admin
    /// endpoint. Change the rest with struct update syntax.
    pub fn new(gateway: tonic::transport::Channel) -> Self {
        Self {
            gateway,
            // The constant names a zone chrono-tz knows (tested by the CLI's default).
            time_zone: DEFAULT_TIME_ZONE
                .parse()
                .unwrap_or(chrono_tz::Asia::Shanghai),
            tls: None,
            max_connections: crate::http::serve::DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: None,
            admin: None,
        }
    }
}

/// A running portal.
pub struct RunningPortal {
    pub addr: SocketAddr,
    /// Where the admin endpoint listens, if it does.
    pub admin_addr: Option<SocketAddr>,
    https: bool,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningPortal {
    /// The address to open in a browser.
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops serving: requests in flight get a few seconds to finish (held live parts answer
    /// at once), then are cut.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(STOP_GRACE + Duration::from_secs(1), &mut self.task).await {
            Ok(joined) => joined.context("the portal's server task failed"),
            Err(_) => {
                self.task.abort();
                Ok(())
            }
        }
    }
}

/// Serves the portal on `listener`, as a client of the gateway `options.gateway`.
pub async fn start(options: PortalOptions, listener: TcpListener) -> anyhow::Result<RunningPortal> {
    let (closing, closing_seen) = tokio::sync::watch::channel(false);
    let portal = Arc::new(pages::Portal {
        closing: closing_seen,
        client: AccountGatewayClient::new(options.gateway.clone()),
        visits: visitor::Visits::new(),
        keys: guard::Keys::random(),
        templates: render::Templates::new().context("the portal's templates do not compile")?,
        tz: options.time_zone,
        https: options.tls.is_some(),
        app_count: std::sync::Mutex::new(None),
        metrics: admin::PortalMetrics::new(),
    });
    let admin_addr = match &options.admin {
        Some(listener) => Some(listener.local_addr()?),
        None => None,
    };
    let admin_task = options.admin.map(|listener| {
        let mut closing = portal.closing.clone();
        tokio::spawn(admin::serve(
            Arc::clone(&portal),
            options.gateway.clone(),
            listener,
            async move {
                let _ = closing.wait_for(|c| *c).await;
            },
        ))
    });
    let connections = portal.metrics.connections.clone();
    let app = pages::router(portal);
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let https = options.tls.is_some();
    tracing::info!(%addr, https, "web portal serving");
    let limits = crate::http::serve::Limits {
        handshake: HANDSHAKE_TIMEOUT,
        drain: STOP_GRACE,
        max_connections: options.max_connections,
        max_connections_per_ip: options.max_connections_per_ip,
        metrics: connections.clone(),
    };
    // SIGHUP re-reads the HTTPS files; without them it is taken and logged rather than left
    // to its default action, which would end the process (logrotate and operators send it).
    let watch = match &options.tls {
        Some(tls) => crate::reload::watch_tls(Arc::clone(tls), TLS_WATCH_INTERVAL, connections),
        None => crate::reload::watch(
            Duration::ZERO,
            || (),
            |_| tracing::info!("SIGHUP: the portal serves plain HTTP, no TLS files to re-read"),
        ),
    };
    let task = tokio::spawn(async move {
        crate::http::serve::serve("portal", listener, app, options.tls, limits, async move {
            let _ = stopped.await;
            // Held live parts answer now rather than keep the stop waiting; the admin
            // endpoint stops too.
            let _ = closing.send(true);
        })
        .await;
        watch.abort();
        if let Some(admin) = admin_task {
            let _ = admin.await;
        }
    });
    Ok(RunningPortal {
        addr,
        admin_addr,
        https,
        stop: Some(stop),
        task,
    })
}

/// A time zone by its IANA name ("Asia/Shanghai"), for `--time-zone`.
pub fn parse_time_zone(name: &str) -> Result<Tz, String> {
    name.trim()
        .parse::<Tz>()
        .map_err(|_| format!("{name:?} is not an IANA time zone name, e.g. Asia/Shanghai"))
}
