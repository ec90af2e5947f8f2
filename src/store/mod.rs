//! The store: SQLite (a file, the default) or PostgreSQL (several replicas), behind one type.
//!
//! Both run through sqlx's `Any` driver with SQL both dialects accept (`$1` placeholders,
//! `BIGINT` milliseconds for times, `TEXT` for the rest), so every query is written once and the
//! same behaviour tests run against both. Migrations (`migrations/`) run at start-up; on
//! PostgreSQL sqlx takes an advisory lock, so replicas starting together do not race.

mod audit;
mod push;
mod tickets;
mod verifications;

use std::{str::FromStr, time::Duration};

use anyhow::Context;
use sqlx::{
    Executor,
    any::{AnyConnectOptions, AnyPoolOptions},
};

pub use audit::{AuditFilter, AuditRecord};
pub use push::{AppProgress, Delivery, PushedNumber};
pub use tickets::{CreateOutcome, Finished, NewTicket, TicketEvent, TicketRow, TicketState};
pub use verifications::{NewVerification, VerificationRow, VerificationState};

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
            .context("cannot connect to the store")?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .context("store migrations failed")?;
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

    /// Creates a new, empty PostgreSQL database beside the one `base_url` names, and returns its
    /// URL. For tests and benchmarks that each want a clean database.
    pub async fn create_postgres_database(base_url: &str, name: &str) -> anyhow::Result<String> {
        use sqlx::Connection;
        anyhow::ensure!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "database names here are lower-case letters, digits and _"
        );
        let mut conn = sqlx::PgConnection::connect(base_url)
            .await
            .context("cannot reach PostgreSQL")?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        let (prefix, _) = base_url
            .rsplit_once('/')
            .context("the PostgreSQL URL must name a database")?;
        Ok(format!("{prefix}/{name}"))
    }

    pub(crate) fn pool(&self) -> &sqlx::AnyPool {
        &self.pool
    }
}
