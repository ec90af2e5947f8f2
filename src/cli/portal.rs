//! `unbind-gateway portal`: serves the reference web portal ([`crate::portal`]) as a client of
//! a gateway, until Ctrl-C or SIGTERM.

use std::net::SocketAddr;

use anyhow::Context;
use chrono_tz::Tz;

use crate::cli::support::endpoint::{endpoint_with_tls, normalise_endpoint};
use crate::cli::tls_args::ClientTlsArgs;
use crate::portal::{self, PortalOptions, parse_time_zone};
use crate::shutdown;

/// Flags of `portal`.
#[derive(clap::Args, Debug)]
pub struct PortalArgs {
    /// The gateway: http://HOST:PORT (development), or https://HOST:PORT with --ca and, for a
    /// gateway with tenants, the portal tenant's --cert and --key.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub gateway: String,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// Where the portal serves HTTP. Its cookies are `Secure`: browsers accept them over plain
    /// HTTP on localhost only, so anywhere else serve it behind a proxy that terminates TLS.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The carrier's time zone, in which dates are written (an IANA name).
    #[arg(long, default_value = portal::DEFAULT_TIME_ZONE, value_parser = parse_time_zone)]
    pub time_zone: Tz,
}

/// Runs the portal until a shutdown signal.
pub async fn run(args: PortalArgs) -> anyhow::Result<()> {
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
        },
        listener,
    )
    .await?;
    println!("unbind-gateway portal is running");
    println!("  open           {}", running.url());
    println!(
        "  gateway        {} ({})",
        args.gateway,
        args.tls.describe()
    );
    println!("  time zone      {}", args.time_zone);
    if !args.listen.ip().is_loopback() {
        println!(
            "  note           serve it to browsers through a proxy that terminates TLS: its \
             cookies are Secure"
        );
    }
    println!("Press Ctrl-C to stop.");
    shutdown::shutdown_signal().await;
    running.stop().await
}
