//! `unbind-gateway portal`: serves the reference web portal ([`crate::portal`]) as a client of
//! a gateway, until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use chrono_tz::Tz;

use crate::cli::say;
use crate::cli::support::endpoint::{endpoint_with_tls, normalise_endpoint};
use crate::cli::tls_args::ClientTlsArgs;
use crate::portal::{self, PortalOptions, parse_time_zone};
use crate::shutdown;

/// `--max-connections` unless given: the HTTP API's default.
#[allow(clippy::cast_possible_truncation)] // 4096
const DEFAULT_MAX_CONNECTIONS: u32 = crate::http::serve::DEFAULT_MAX_CONNECTIONS as u32;

/// Flags of `portal`.
#[derive(clap::Args, Debug)]
pub struct PortalArgs {
    /// The gateway: http://HOST:PORT (development), or https://HOST:PORT with --ca and, for a
    /// gateway with tenants, the portal tenant's --cert and --key.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub gateway: String,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// Where the portal serves: HTTPS with --tls-cert and --tls-key, else plain HTTP, which is
    /// allowed on a loopback address only (its cookies are `Secure`: browsers take them over
    /// plain HTTP from localhost alone) unless --behind-tls-proxy says a proxy in front
    /// terminates TLS.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The portal's own certificate chain for browsers (PEM), to serve HTTPS. It and its key
    /// are read again when they change (checked every 2 s) and on SIGHUP, so a renewed
    /// certificate is served without a restart.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback --listen: browsers reach the portal only through a
    /// proxy that terminates TLS in front of it.
    #[arg(long, conflicts_with = "tls_cert")]
    pub behind_tls_proxy: bool,
    /// Connections open at once; at the cap a new one waits until one closes (an idle one
    /// closes itself after 10 s).
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Connections open at once from one client address (an IPv6 /64); one more is closed as
    /// soon as it is accepted. None unless given: many people on a mobile network share one
    /// address (carrier-grade NAT), so set it only as high as that allows.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_ip: Option<u32>,
    /// Where the admin endpoint listens (plain HTTP: `/metrics`, `/healthz`, and `/readyz`,
    /// which is 503 while the gateway does not answer); a private address. None unless given.
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// The carrier's time zone, in which dates are written (an IANA name).
    #[arg(long, default_value = portal::DEFAULT_TIME_ZONE, value_parser = parse_time_zone)]
    pub time_zone: Tz,
}

/// Runs the portal until a shutdown signal.
pub async fn run(args: PortalArgs) -> anyhow::Result<()> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(std::sync::Arc::new(crate::tls::LiveTls::http(
            "portal",
            cert,
            key,
            ("--tls-cert", "--tls-key"),
        )?)),
        _ => None,
    };
    anyhow::ensure!(
        tls.is_some() || args.listen.ip().to_canonical().is_loopback() || args.behind_tls_proxy,
        "--listen {} is not a loopback address: serve HTTPS there with --tls-cert and --tls-key, \
         or pass --behind-tls-proxy when a proxy in front terminates TLS (browsers drop the \
         portal's Secure cookies over plain HTTP from anywhere but localhost)",
        args.listen
    );
    let admin = match args.admin_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} (--admin-listen): is another process using it?")
        })?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (--listen): is another process using it?",
                args.listen
            )
        })?;
    let endpoint = normalise_endpoint(&args.gateway);
    let gateway = endpoint_with_tls(&endpoint, &args.tls, portal::CONNECT_TIMEOUT)?.connect_lazy();
    let running = portal::start(
        PortalOptions {
            gateway,
            time_zone: args.time_zone,
            tls,
            max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
            max_connections_per_ip: args
                .max_connections_per_ip
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            admin,
        },
        listener,
    )
    .await?;
    say!("unbind-gateway portal is running");
    say!("  open           {}", running.url());
    say!(
        "  gateway        {} ({})",
        args.gateway,
        args.tls.describe()
    );
    say!("  time zone      {}", args.time_zone);
    if let Some(admin) = running.admin_addr {
        say!("  admin          http://{admin}/metrics  (also /healthz, /readyz)");
    }
    if args.behind_tls_proxy {
        say!("  note           plain HTTP, for the proxy in front that terminates TLS");
    }
    say!("Press Ctrl-C to stop.");
    shutdown::shutdown_signal().await;
    running.stop().await
}
