//! The store: SQLite (a file, the default) or PostgreSQL (several replicas), behind one type.
//!
//! Both run through sqlx's `Any` driver with SQL both dialects accept (`$1` placeholders,
//! `BIGINT` milliseconds for times, `TEXT` for the rest), so every query is written once and the
//! same behaviour tests run against both. Migrations (`migrations/`) run at start-up; on
//! PostgreSQL sqlx takes an advisory lock, so replicas starting together do not race.

mod audit;
mod erase;
mod push;
mod rates;
mod retention;
mod sealed;
mod tickets;
mod verifications;

use std::{str::FromStr, time::Duration};

use anyhow::Context;

/// The file of a `sqlite:` store url (`sqlite://path`, `sqlite:path`, options after `?`); `None`
/// for another store or an in-memory database.
pub fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && !path.starts_with(":memory:")).then(|| path.into())
}
use sqlx::{
    Executor,
    any::{AnyConnectOptions, AnyPoolOptions},
};

pub use audit::{AuditFilter, AuditRecord};
pub use erase::Erased;
pub use push::{AppProgress, Delivery, DeliveryState, PushedNumber, SubmitOutcome};
pub use rates::BucketSpec;
pub use sealed::{SealedColumn, SealedValue};
pub use tickets::{
    CreateOutcome, Finished, NewTicket, TicketEvent, TicketRow, TicketState, UnbindReason,
};
pub use verifications::{
    NewVerification, StartLimits, StartOutcome, VerificationRow, VerificationState,
};

/// The store in words, for logs and errors, without credentials: "SQLite data/unbind.db" or
/// "PostgreSQL 127.0.0.1:5432, database test, user postgres".
pub fn describe_url(url: &str) -> String {
    if let Some(path) = sqlite_path(url) {
        return format!("SQLite {}", path.display());
    }
    if url.starts_with("sqlite:") {
        return "SQLite in memory".to_owned();
    }
    match sqlx::postgres::PgConnectOptions::from_str(url) {
        Ok(pg) => {
            let mut text = format!("PostgreSQL {}:{}", pg.get_host(), pg.get_port());
            if let Some(db) = pg.get_database() {
                text.push_str(&format!(", database {db}"));
            }
            text.push_str(&format!(", user {}", pg.get_username()));
            text
        }
        Err(_) => "PostgreSQL (an unreadable url)".to_owned(),
    }
}

/// How long the first connection to PostgreSQL may take before start-up gives up.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens and closes one connection, so a refused or unreachable server fails start-up with its
/// address and the cause ("connection refused", "password authentication failed").
async fn probe_postgres(options: &AnyConnectOptions, described: &str) -> anyhow::Result<()> {
    use sqlx::{ConnectOptions, Connection};
    match tokio::time::timeout(PROBE_TIMEOUT, options.connect()).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(e)) => {
            let cause = match &e {
                sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                    "connection refused: is PostgreSQL running there, and is `store.url` right?"
                        .to_owned()
                }
                sqlx::Error::Io(io) => format!("{io}"),
                sqlx::Error::Database(db) => db.message().to_owned(),
                other => other.to_string(),
            };
            anyhow::bail!("cannot connect to the store ({described}): {cause}")
        }
        Err(_) => anyhow::bail!(
            "cannot connect to the store ({described}): no answer within {} s: is the address \
             right and reachable?",
            PROBE_TIMEOUT.as_secs()
        ),
    }
}

/// The versions of the migrations already applied (none before the first start).
async fn applied_migrations(pool: &sqlx::AnyPool) -> Vec<i64> {
    sqlx::query_scalar::<_, i64>("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(pool)
        .await
        .unwrap_or_default()
}

/// Which database is behind the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A connection pool plus the dialect it speaks.
#[derive(Clone, Debug)]
pub struct Store {
    pool: sqlx::AnyPool,
    backend: Backend,
}

impl Store {
    /// Connects (creating a SQLite file if missing) and runs the migrations.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        if let Some(path) = sqlite_path(url) {
            // A new deployment's directory is made, not reported as "unable to open".
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| {
                    format!(
                        "the SQLite store's directory {} cannot be created",
                        dir.display()
                    )
                })?;
            }
        }
        let (url, backend) = if url.starts_with("sqlite:") {
            let url = if url.contains('?') {
                url.to_owned()
            } else {
                format!("{url}?mode=rwc")
            };
            (url, Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            (url.to_owned(), Backend::Postgres)
        } else {
            anyhow::bail!("store url must start with sqlite: or postgres:");
        };
        let options = AnyConnectOptions::from_str(&url).context("invalid store url")?;
        let described = describe_url(&url);
        if backend == Backend::Postgres {
            // One plain connection first: a server that refuses or is unreachable is reported at
            // once, with its address and the cause, instead of after the pool's acquire timeout
            // as "pool timed out".
            probe_postgres(&options, &described).await?;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers proceed while one writer commits; the busy timeout
                        // makes concurrent writers wait instead of failing.
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .with_context(|| match sqlite_path(&url) {
                Some(path) => format!("cannot open the SQLite store {}", path.display()),
                None => format!("cannot connect to the store ({described})"),
            })?;
        let migrator = sqlx::migrate!("./migrations");
        let before = applied_migrations(&pool).await;
        migrator
            .run(&pool)
            .await
            .with_context(|| format!("store migrations failed ({described})"))?;
        let now: Vec<i64> = applied_migrations(&pool)
            .await
            .into_iter()
            .filter(|v| !before.contains(v))
            .collect();
        tracing::info!(
            store = %described,
            migrations = migrator.iter().count(),
            applied_now = ?now,
            "store ready"
        );
        Ok(Self { pool, backend })
    }

    /// The dialect behind this store.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether the store answers (for health checks).
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Creates a new, empty PostgreSQL database beside the one `base_url` names, called
    /// `{prefix}_{pid}_{random}`, and returns its URL: for tests and benchmarks that each want a
    /// clean database. A test cannot drop its database when it ends (the process simply exits),
    /// so this first drops the databases with the same prefix whose process has exited; the
    /// server keeps only those of processes still running. Processes are looked up in this
    /// machine's `/proc`: runs from other machines or containers sharing the server need a
    /// prefix of their own.
    pub async fn create_scratch_postgres_database(
        base_url: &str,
        prefix: &str,
    ) -> anyhow::Result<String> {
        use sqlx::Connection;
        anyhow::ensure!(
            !prefix.is_empty()
                && prefix
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "a scratch database prefix is lower-case letters, digits and _"
        );
        let mut conn = sqlx::PgConnection::connect(base_url)
            .await
            .context("cannot reach PostgreSQL")?;
        let existing: Vec<(String,)> =
            sqlx::query_as("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
                .bind(format!("{prefix}_"))
                .fetch_all(&mut conn)
                .await?;
        for (name,) in existing {
            // Only names of exactly this making (so also safe to put in the statement).
            let Some((pid, random)) = name[prefix.len() + 1..].split_once('_') else {
                continue;
            };
            let ours = random.len() == 16 && random.bytes().all(|b| b.is_ascii_hexdigit());
            let exited = pid
                .parse::<u32>()
                .is_ok_and(|pid| !std::path::Path::new("/proc").join(pid.to_string()).exists());
            if ours && exited {
                // Best effort: another process may be dropping it at the same moment.
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await;
            }
        }
        let name = format!(
            "{prefix}_{}_{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        let (base, _) = base_url
            .rsplit_once('/')
            .context("the PostgreSQL URL must name a database")?;
        Ok(format!("{base}/{name}"))
    }

    pub(crate) fn pool(&self) -> &sqlx::AnyPool {
        &self.pool
    }
}

#[cfg(test)]
mod tests {
    use super::sqlite_path;

    #[test]
    fn the_sqlite_file_is_read_from_every_url_form() {
        let path = |u| sqlite_path(u).map(|p| p.display().to_string());
        assert_eq!(
            path("sqlite:///var/lib/u/db.sqlite").as_deref(),
            Some("/var/lib/u/db.sqlite")
        );
        assert_eq!(
            path("sqlite://data/db.sqlite?mode=rwc").as_deref(),
            Some("data/db.sqlite")
        );
        assert_eq!(path("sqlite:db.sqlite").as_deref(), Some("db.sqlite"));
        assert_eq!(path("sqlite::memory:"), None);
        assert_eq!(path("postgres://u@h/db"), None);
    }
}
