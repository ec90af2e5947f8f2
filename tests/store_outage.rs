//! The store taken away and brought back, on PostgreSQL: connections to the gateway's database
//! are refused (and the open ones ended), so the gateway's readiness check flips gRPC health to
//! NOT_SERVING and `/readyz` to 503; once the database takes connections again, both flip back.
//! Also: two gateways migrating one empty database at once both start (the migrations run under
//! an advisory lock). Shown as ignored without `DATABASE_URL` (outside CI).

mod common;

use std::time::Duration;

use common::*;
use sqlx::Connection;
use tokio::time::Instant;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use unbind_gateway::store::Store;

/// The database a scratch URL names.
fn database_of(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

async fn health(h: &Harness) -> ServingStatus {
    let channel = tonic::transport::Channel::from_shared(h.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    ServingStatus::try_from(status).unwrap()
}

/// Waits (at most 30 s: the check runs every 5 s) until health and `/readyz` both say `serving`.
async fn wait_until(h: &Harness, serving: bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, _) = http_get(admin_addr(h), "/readyz").await;
        let status = health(h).await;
        let want = if serving {
            (200, ServingStatus::Serving)
        } else {
            (503, ServingStatus::NotServing)
        };
        if (code, status) == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still /readyz {code}, health {status:?}; wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_database, ignore = "needs DATABASE_URL")]
async fn a_store_taken_away_and_brought_back_flips_readiness_and_back() {
    let url = fresh_postgres_database().await;
    let base = std::env::var("DATABASE_URL").unwrap();
    let h = Harness::start(Options {
        apps: 1,
        store_url: Some(url.clone()),
        tweak: with_admin,
        ..Options::default()
    })
    .await;
    wait_until(&h, true).await;
    let name = database_of(&url).to_owned();
    let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
    // Take it away: no new connections, the open ones ended.
    sqlx::query(&format!(
        "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&name)
    .execute(&mut admin)
    .await
    .unwrap();
    wait_until(&h, false).await;
    // Bring it back.
    sqlx::query(&format!(
        "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    wait_until(&h, true).await;
    // And it serves again for real.
    h.session().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_database, ignore = "needs DATABASE_URL")]
async fn two_gateways_migrating_one_empty_database_at_once_both_start() {
    let url = fresh_postgres_database().await;
    let (a, b) = tokio::join!(Store::connect(&url, 2), Store::connect(&url, 2));
    let (a, b) = (
        a.expect("the first migrates"),
        b.expect("the second starts too"),
    );
    assert!(a.ping().await && b.ping().await);
    // The migrations ran once: one row per migration in sqlx's table.
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let (applied,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .count();
    assert_eq!(applied as usize, files);
    a.close().await;
    b.close().await;
}
