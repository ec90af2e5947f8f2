//! `unbind-gateway audit`: lists audit records from the store named in a config file. A number
//! given with `--number` is hashed with the gateway's key before the search, so the store never
//! sees it and the output shows only hashes.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::{
    config::Config,
    domain::E164,
    security::Keys,
    store::{AuditFilter, AuditRecord, Store},
};

/// Flags of `audit`.
#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    /// The gateway's config file (for the store and the key).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Overrides `store.url`.
    #[arg(long)]
    pub database_url: Option<String>,
    /// How far back: a duration ("24h", "7d") or an RFC 3339 time.
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// Only this number's records.
    #[arg(long)]
    pub number: Option<String>,
    /// Only this tenant's records.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Most records shown.
    #[arg(long, default_value_t = 1000)]
    pub limit: i64,
}

/// Parses `--since`: a duration back from `now_ms`, or an RFC 3339 time.
pub fn parse_since(since: &str, now_ms: i64) -> anyhow::Result<i64> {
    if let Ok(d) = humantime::parse_duration(since) {
        return Ok(now_ms - d.as_millis() as i64);
    }
    DateTime::parse_from_rfc3339(since)
        .map(|t| t.timestamp_millis())
        .map_err(|_| anyhow::anyhow!("--since: give a duration like 24h or an RFC 3339 time"))
}

/// The filter for these flags (the number hashed with `keys`).
pub fn filter(args: &AuditArgs, keys: &Keys, now_ms: i64) -> anyhow::Result<AuditFilter> {
    let number_hash = match &args.number {
        Some(n) => Some(
            keys.number_hash(
                &E164::parse(n)
                    .map_err(|_| anyhow::anyhow!("--number is not a valid mobile number"))?,
            )
            .hex(),
        ),
        None => None,
    };
    Ok(AuditFilter {
        since: parse_since(&args.since, now_ms)?,
        number_hash,
        tenant: args.tenant.clone(),
        limit: args.limit.max(1),
    })
}

/// One line per record.
pub fn format_record(r: &AuditRecord) -> String {
    let at = DateTime::<Utc>::from_timestamp_millis(r.at)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default();
    let number = if r.number_hash.is_empty() {
        "-"
    } else {
        &r.number_hash[..r.number_hash.len().min(16)]
    };
    format!(
        "{at}  {:<16} {:<22} number:{number:<16}  {:<28} apps:{}  correlator:{}",
        r.tenant,
        r.action,
        r.outcome,
        if r.apps.is_empty() { "-" } else { &r.apps },
        if r.correlator.is_empty() {
            "-"
        } else {
            &r.correlator
        },
    )
}

/// Runs the command.
pub async fn run(args: AuditArgs) -> anyhow::Result<()> {
    let mut config = Config::load(&args.config)?;
    if let Some(url) = &args.database_url {
        config.store.url = url.clone();
    }
    let keys = config.keyring()?;
    let store = Store::connect(&config.store.url, 2)
        .await
        .context("audit: store")?;
    let filter = filter(&args, &keys, Utc::now().timestamp_millis())?;
    let records = tokio::time::timeout(Duration::from_secs(60), store.audit_records(&filter))
        .await
        .context("audit: the store did not answer in time")??;
    for r in &records {
        println!("{}", format_record(r));
    }
    eprintln!("{} records", records.len());
    store.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_times() {
        assert_eq!(
            parse_since("1h", 10_000_000).unwrap(),
            10_000_000 - 3_600_000
        );
        assert_eq!(
            parse_since("2024-03-01T00:00:00Z", 0).unwrap(),
            1_709_251_200_000
        );
        assert!(parse_since("yesterday", 0).is_err());
    }
}
