//! Several gateway replicas on one PostgreSQL database: a verification started on one completes
//! on the other, and 1,000 tickets created through both are each sent to their app exactly once
//! (counted by the simulated apps), none stuck; an account unbound through one replica is not
//! shown by another from its cache; the tests' scratch databases do not pile up.
//! Reported as ignored outside CI without `DATABASE_URL` (see `build.rs`).

mod common;

use std::time::Duration;

use common::*;
use tokio::time::Instant;
use unbind_gateway::{
    proto::{
        CompleteVerificationRequest, GetUnbindTicketsRequest, ListLinkedAccountsRequest,
        ListLinkedAccountsResponse, StartVerificationRequest, UnbindRequest,
        account_gateway_client::AccountGatewayClient, unbind_ticket::State,
    },
    server,
    store::{BucketSpec, Store},
    testkit::stack::numbered_subscribers,
};

type Client = AccountGatewayClient<tonic::transport::Channel>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_database, ignore = "needs DATABASE_URL")]
async fn two_replicas_share_verifications_and_send_each_ticket_exactly_once() {
    let url = fresh_postgres_database().await;
    let h = Harness::start(Options {
        apps: 200,
        store_url: Some(url),
        extra_subscribers: 12,
        app_timeout: Duration::from_secs(5),
        tweak: |c| {
            c.unbind.poll_interval = Duration::from_millis(20);
            c.unbind.retry_base = Duration::from_millis(50);
            c.unbind.retry_max = Duration::from_millis(200);
            c.lookup.default_deadline = Duration::from_secs(10);
        },
        ..Options::default()
    })
    .await;
    // The second replica: same config (database, secret), its own listener and worker.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = server::start(h.stack.config.clone(), h.clock.clone(), listener)
        .await
        .unwrap();
    let mut replicas: [Client; 2] = [
        h.client().await,
        Client::connect(b.endpoint()).await.unwrap(),
    ];

    let mut created = Vec::new();
    for (i, subscriber) in numbered_subscribers(12).iter().enumerate() {
        if created.len() >= 1000 {
            break;
        }
        // Start on one replica, complete on the other.
        let phone = subscriber.phone_number.expose();
        let before = h.codes_sent_to(phone).len();
        let verification_id = replicas[i % 2]
            .start_verification(StartVerificationRequest {
                phone_number: phone.to_owned(),
                id_last_six: subscriber.id_last_six.expose().to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .verification_id;
        let code = h.wait_for_code(phone, before + 1).await;
        let token = replicas[(i + 1) % 2]
            .complete_verification(CompleteVerificationRequest {
                verification_id,
                code,
            })
            .await
            .unwrap()
            .into_inner()
            .session_token;
        let accounts = replicas[i % 2]
            .list_linked_accounts(ListLinkedAccountsRequest {
                session_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(accounts.complete);
        let refs: Vec<String> = accounts
            .accounts
            .iter()
            .filter(|a| a.unbind_supported)
            .map(|a| a.account_ref.clone())
            .take(1000 - created.len())
            .collect();
        for (j, chunk) in refs.chunks(100).enumerate() {
            let tickets = replicas[j % 2]
                .unbind(UnbindRequest {
                    session_token: token.clone(),
                    account_refs: chunk.to_vec(),
                    idempotency_key: format!("{i}-{j}"),
                })
                .await
                .unwrap()
                .into_inner()
                .tickets;
            created.extend(tickets);
        }
    }
    assert_eq!(created.len(), 1000);

    // Every ticket reaches COMPLETED.
    let ids: Vec<String> = created.iter().map(|t| t.ticket_id.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let tickets = replicas[0]
            .get_unbind_tickets(GetUnbindTicketsRequest {
                ticket_ids: ids.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .tickets;
        assert_eq!(tickets.len(), 1000, "no ticket is lost");
        let open = tickets
            .iter()
            .filter(|t| t.state != State::Completed as i32)
            .count();
        if open == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{open} tickets still open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each sent exactly once, under its own key.
    let apps = h.simulator.apps();
    let calls: u64 = apps
        .iter()
        .map(|a| h.simulator.stats(&a.id).unbind_calls)
        .sum();
    assert_eq!(calls, 1000, "each ticket sent exactly once");
    for t in &created {
        assert!(
            h.simulator
                .stats(&t.app_id)
                .unbind_keys
                .contains(&t.ticket_id)
        );
    }
    b.stop().await.unwrap();
    h.stop().await;
}

/// An account unbound through one replica is not listed by another whose cache holds the app's
/// answer from before: each look-up checks the number's completed tickets (shared through the
/// store) against when each answer was fetched, then forgets the stale answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_database, ignore = "needs DATABASE_URL")]
async fn an_answer_cached_on_another_replica_does_not_list_an_unbound_account() {
    let url = fresh_postgres_database().await;
    let h = Harness::start(Options {
        apps: 20,
        store_url: Some(url),
        tweak: |c| {
            c.unbind.poll_interval = Duration::from_millis(20);
            c.unbind.status_poll_interval = Duration::from_millis(50);
        },
        ..Options::default()
    })
    .await;
    // Replica B runs no worker: the unbind is carried out by the harness's replica, so nothing
    // on B hears of it but the store.
    let mut config = h.stack.config.clone();
    config.unbind.worker = false;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = server::start(config, h.clock.clone(), listener)
        .await
        .unwrap();
    let mut on_a = h.client().await;
    let mut on_b = Client::connect(b.endpoint()).await.unwrap();
    let token = h.session().await;
    let look_up = |client: &mut Client| {
        let mut client = client.clone();
        let token = token.clone();
        async move {
            client
                .list_linked_accounts(ListLinkedAccountsRequest {
                    session_token: token,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let count = |answer: &ListLinkedAccountsResponse, app: &str| {
        let result = answer.app_results.iter().find(|r| r.app_id == app).unwrap();
        (result.account_count, result.from_cache)
    };

    let first = look_up(&mut on_b).await;
    assert!(first.complete);
    let target = first
        .accounts
        .iter()
        .find(|a| a.unbind_supported)
        .expect("an account that can be unbound")
        .clone();
    let (before, _) = count(&first, &target.app_id);
    assert_eq!(
        count(&look_up(&mut on_b).await, &target.app_id),
        (before, true)
    );

    let ticket = on_a
        .unbind(UnbindRequest {
            session_token: token.clone(),
            account_refs: vec![target.account_ref.clone()],
            idempotency_key: "stale-cache".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tickets
        .remove(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = on_a
            .get_unbind_tickets(GetUnbindTicketsRequest {
                ticket_ids: vec![ticket.ticket_id.clone()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .tickets[0]
            .state;
        if state == State::Completed as i32 {
            break;
        }
        assert!(Instant::now() < deadline, "the ticket did not complete");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // B still had the app's answer from before the unbind, and does not show the account.
    let after = look_up(&mut on_b).await;
    assert_eq!(count(&after, &target.app_id), (before - 1, true));
    assert_eq!(after.total_accounts, first.total_accounts - 1);
    assert_eq!(
        after
            .accounts
            .iter()
            .filter(|a| a.app_id == target.app_id)
            .count() as u32,
        before - 1
    );
    // It forgot that answer: the app is asked again, and agrees.
    assert_eq!(
        count(&look_up(&mut on_b).await, &target.app_id),
        (before - 1, false)
    );
    b.stop().await.unwrap();
    h.stop().await;
}

/// Scratch databases (one per PostgreSQL test) are dropped by a later run once the process that
/// made them has exited, never while it runs: a test cannot drop its own, it ends with its process.
#[tokio::test]
#[cfg_attr(no_database, ignore = "needs DATABASE_URL")]
async fn scratch_databases_of_exited_processes_are_dropped_by_the_next_run() {
    use sqlx::Connection;
    // A scratch database of this run (also drops those of exited runs).
    fresh_postgres_database().await;
    let base = std::env::var("DATABASE_URL").unwrap();
    let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
    let prefix = "unbind_scratchcheck";
    // A process id above Linux's largest (2^22): never a running process.
    let dead = format!("{prefix}_4294967295_00000000000000ff");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {dead}"))
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE {dead}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let first = Store::create_scratch_postgres_database(&base, prefix)
        .await
        .unwrap();
    let second = Store::create_scratch_postgres_database(&base, prefix)
        .await
        .unwrap();
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT datname FROM pg_database WHERE starts_with(datname, $1) ORDER BY datname",
    )
    .bind(format!("{prefix}_"))
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let name_of = |url: &str| url.rsplit('/').next().unwrap().to_owned();
    let mut expected = vec![name_of(&first), name_of(&second)];
    expected.sort();
    assert_eq!(names, expected, "only this process's databases are left");
    assert!(expected[0].starts_with(&format!("{prefix}_{}_", std::process::id())));
    // A store opens on it.
    Store::connect(&first, 2).await.unwrap().close().await;
    for name in expected {
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

/// The shared token buckets behind tenants' rates (issue 14, item 6), drawn from directly on both
/// stores: a block when there is one, a single token when less is left, none when empty;
/// refilled at the rate from when it was last drawn, never above the burst, and never by a
/// replica whose clock is behind.
async fn shared_buckets_on(store: Store) {
    let spec = BucketSpec {
        rate: 10.0,
        burst: 25.0,
    };
    let t0 = 1_800_000_000_000;
    let take = |want: f64, at: i64| {
        let store = store.clone();
        async move {
            store
                .take_tokens("tenant:t:requests", want, spec, at)
                .await
                .unwrap()
        }
    };
    assert!(
        store
            .has_token("tenant:t:requests", spec, t0)
            .await
            .unwrap()
    );
    // Full at first: 25 tokens, drawn 10, 10, then 5 left: one at a time.
    assert_eq!(take(10.0, t0).await, 10.0);
    assert_eq!(take(10.0, t0).await, 10.0);
    for _ in 0..5 {
        assert_eq!(take(10.0, t0).await, 1.0);
    }
    assert_eq!(take(10.0, t0).await, 0.0);
    assert!(
        !store
            .has_token("tenant:t:requests", spec, t0)
            .await
            .unwrap()
    );
    // A replica whose clock is 2 s behind refills nothing.
    assert_eq!(take(1.0, t0 - 2_000).await, 0.0);
    // 300 ms later: 3 tokens.
    assert_eq!(take(10.0, t0 + 300).await, 1.0);
    assert_eq!(take(2.0, t0 + 300).await, 2.0);
    assert_eq!(take(1.0, t0 + 300).await, 0.0);
    // An hour later: the burst, not more.
    assert_eq!(take(20.0, t0 + 3_600_000).await, 20.0);
    assert_eq!(take(20.0, t0 + 3_600_000).await, 1.0);
    for _ in 0..4 {
        assert_eq!(take(20.0, t0 + 3_600_000).await, 1.0);
    }
    assert_eq!(take(1.0, t0 + 3_600_000).await, 0.0);
    // Other buckets are their own.
    assert_eq!(
        store
            .take_tokens("tenant:u:requests", 3.0, spec, t0)
            .await
            .unwrap(),
        3.0
    );
    store.close().await;
}

#[tokio::test]
async fn shared_rate_buckets_draw_alike_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("rates.db").display());
    shared_buckets_on(Store::connect(&url, 2).await.unwrap()).await;
}

#[tokio::test]
#[cfg_attr(no_database, ignore = "needs DATABASE_URL")]
async fn shared_rate_buckets_draw_alike_on_postgres() {
    let url = fresh_postgres_database().await;
    shared_buckets_on(Store::connect(&url, 2).await.unwrap()).await;
}
