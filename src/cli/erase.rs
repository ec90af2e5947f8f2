//! `unbind-gateway erase`: removes everything the gateway holds about one number (a person's
//! request to be forgotten), except the audit records the law requires, which keep only the
//! keyed hash. The number is hashed with the gateway's key before anything reaches the store;
//! what is printed are counts, never what the rows held.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{config::Config, domain::E164, store::Store};

/// Flags of `erase`.
#[derive(clap::Args, Debug)]
pub struct EraseArgs {
    /// The gateway's config file (for the store, the keys and the admin address).
    #[arg(long, short)]
    pub config: PathBuf,
    /// The number to erase.
    #[arg(long)]
    pub number: String,
    /// Overrides `store.url`.
    #[arg(long)]
    pub database_url: Option<String>,
    /// The admin endpoint of the replica whose cached answers to forget (default: the config's
    /// `[admin] listen`; run once per replica to clear every replica's cache, or wait out
    /// `cache.ttl`).
    #[arg(long)]
    pub admin: Option<SocketAddr>,
}

/// Runs `erase`.
pub async fn run(args: EraseArgs) -> anyhow::Result<()> {
    let mut config = Config::load(&args.config)?;
    if let Some(url) = &args.database_url {
        config.store.url = url.clone();
    }
    let phone = E164::parse(&args.number).map_err(|e| anyhow::anyhow!("--number: {e}"))?;
    let keys = config.keyring()?;
    let hash = keys.number_hash(&phone);
    let store = Store::connect(&config.store.url, 2)
        .await
        .context("erase: store")?;
    let erased = tokio::time::timeout(Duration::from_secs(60), store.erase_number(&hash.hex()))
        .await
        .context("erase: the store did not answer in time")??;
    store.close().await;
    println!("erased for number {hash:?}:");
    for (what, n) in [
        ("verifications", erased.verifications),
        ("look-up summary SMS records", erased.summary_sms),
        ("unbind tickets", erased.tickets),
        ("ticket events", erased.ticket_events),
        ("idempotency keys", erased.idempotency_keys),
        ("pushed numbers", erased.pushed_numbers),
        ("recycled-number history", erased.history),
    ] {
        println!("  {n:>8}  {what}");
    }
    println!(
        "  {:>8}  audit records kept (keyed hash only, as the law requires)",
        erased.audit_records_kept
    );
    let admin = args
        .admin
        .or(config.admin.as_ref().map(|a| a.listen))
        .map(|mut addr| {
            // A replica listening on every address answers on loopback.
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            addr
        });
    match admin {
        Some(addr) => {
            let answer = forget_cached(addr, &hash.hex())
                .await
                .with_context(|| format!("erase: the replica's admin endpoint {addr}"))?;
            println!("  cached answers on the replica at {addr}: {answer}");
        }
        None => println!(
            "  cached answers: no admin endpoint configured; they expire within `cache.ttl`"
        ),
    }
    Ok(())
}

/// `POST /cache/forget` with the hash; the replica's answer line.
async fn forget_cached(addr: SocketAddr, hash: &str) -> anyhow::Result<String> {
    let mut stream =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await
            .context("connect timed out")??;
    let request = format!(
        "POST /cache/forget HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{hash}",
        hash.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .context("no answer in time")??;
    let status_ok = response.starts_with("HTTP/1.1 200");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_owned())
        .unwrap_or_default();
    if !status_ok {
        bail!("refused: {}", response.lines().next().unwrap_or_default());
    }
    Ok(body)
}
