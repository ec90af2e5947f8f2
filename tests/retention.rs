//! Retention by table, on injected time: after a full flow (verification, look-up, an unbind
//! carried to completion, a carrier push delivered to every app), the purges keep everything
//! inside its window and delete everything past it, table by table, in batches; a push still
//! being delivered is kept whatever its age; `CheckNumberRecycled` refuses dates before its
//! history window as `OUT_OF_RANGE` rather than answer "not recycled".

mod common;

use std::time::Duration;

use common::*;
use prost_types::Timestamp;
use tokio::time::Instant;
use unbind_gateway::proto::{
    CheckNumberRecycledRequest, GetUnbindTicketsRequest, ListLinkedAccountsRequest, RecycledNumber,
    SubmitRecycledNumbersRequest, UnbindRequest, carrier_push_client::CarrierPushClient,
    number_status_client::NumberStatusClient, unbind_ticket::State,
};

const DAY_MS: i64 = 86_400_000;

/// Unbinds the first account of the session's look-up that can be; the ticket's id.
async fn open_ticket(h: &Harness, token: &str, key: &str) -> String {
    let mut client = h.client().await;
    let accounts = client
        .list_linked_accounts(ListLinkedAccountsRequest {
            session_token: token.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .accounts;
    let account = accounts.iter().find(|a| a.unbind_supported).unwrap();
    client
        .unbind(UnbindRequest {
            session_token: token.into(),
            account_refs: vec![account.account_ref.clone()],
            idempotency_key: key.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tickets[0]
        .ticket_id
        .clone()
}

async fn count(url: &str, table: &str) -> i64 {
    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(url).await.unwrap();
    let (n,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_table_is_kept_for_its_window_and_purged_after() {
    windows(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_database, ignore = "needs DATABASE_URL")]
async fn each_table_is_kept_for_its_window_and_purged_after_on_postgres() {
    windows(Some(fresh_postgres_database().await)).await;
}

async fn windows(store_url: Option<String>) {
    let h = Harness::start(Options {
        apps: 3,
        store_url,
        tweak: |c| {
            c.unbind.poll_interval = Duration::from_millis(20);
            c.retention.recycled_history = Duration::from_secs(400 * 86_400);
        },
        ..Options::default()
    })
    .await;
    let url = h.stack.config.store.url.clone();
    let token = h.session().await;
    let mut client = h.client().await;
    let ticket = open_ticket(&h, &token, "retention").await;
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let ts = |s: i64| {
        Some(Timestamp {
            seconds: s,
            nanos: 0,
        })
    };
    let mut push = CarrierPushClient::connect(h.endpoint()).await.unwrap();
    push.submit_recycled_numbers(tokio_stream::iter([SubmitRecycledNumbersRequest {
        numbers: vec![
            // Re-issued 500 days ago (before the 400-day window) and 10 days ago.
            RecycledNumber {
                phone_number: "+8613700000001".into(),
                cancelled_at: ts(now_s - 600 * 86_400),
                reissued_at: ts(now_s - 500 * 86_400),
            },
            RecycledNumber {
                phone_number: "+8613700000002".into(),
                cancelled_at: ts(now_s - 40 * 86_400),
                reissued_at: ts(now_s - 10 * 86_400),
            },
        ],
        submission_key: "retention".into(),
    }]))
    .await
    .unwrap();
    // The ticket completes and the push reaches every app.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = client
            .get_unbind_tickets(GetUnbindTicketsRequest {
                session_token: token.clone(),
                ticket_ids: vec![ticket.clone()],
            })
            .await
            .unwrap()
            .into_inner()
            .tickets[0]
            .state();
        let delivered = h
            .simulator
            .apps()
            .iter()
            .all(|a| !h.simulator.stats(&a.id).notified_batches.is_empty());
        if state == State::Completed && delivered {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{state:?}, delivered: {delivered}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // CheckNumberRecycled: inside the window it answers; before it, OUT_OF_RANGE.
    let mut status = NumberStatusClient::connect(h.endpoint()).await.unwrap();
    let check = |date: i64| CheckNumberRecycledRequest {
        phone_number: "+8613700000002".into(),
        specified_date: ts(date),
    };
    assert!(
        status
            .check_number_recycled(check(now_s - 20 * 86_400))
            .await
            .unwrap()
            .into_inner()
            .recycled
    );
    let err = status
        .check_number_recycled(check(now_s - 401 * 86_400))
        .await
        .unwrap_err();
    assert_error(&err, tonic::Code::InvalidArgument, "OUT_OF_RANGE");
    assert_eq!(bad_fields(&err), ["specified_date"]);

    let gateway = &h.stack.gateway.as_ref().unwrap().gateway;
    gateway.audit.flush().await;
    let store = &gateway.store;
    let now = h.clock.now_ms();
    let tables = [
        "tickets",
        "ticket_events",
        "submissions",
        "submission_numbers",
        "deliveries",
        "recycled_numbers",
        "audit_log",
    ];
    let mut before = Vec::new();
    for t in tables {
        before.push(count(&url, t).await);
    }
    assert!(before.iter().all(|&n| n > 0), "{before:?}");
    assert_eq!(before[5], 2, "two numbers in the history");

    // Within every window (the defaults: tickets 30 days after their end, pushes 7 days, the
    // audit 180 days): nothing goes but the date already before the history window.
    let kept = &h.stack.config.retention;
    let cut = |d: Duration, at: i64| at - d.as_millis() as i64;
    let at = now + 6 * DAY_MS;
    assert_eq!(
        store
            .purge_final_tickets(cut(kept.tickets, at))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .purge_finished_pushes(cut(kept.pushes, at))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .purge_recycled_history(cut(kept.recycled_history, at))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .purge_audit(cut(h.stack.config.audit.retention, at))
            .await
            .unwrap(),
        0
    );
    assert_eq!(count(&url, "tickets").await, before[0]);
    assert_eq!(count(&url, "submission_numbers").await, before[3]);
    assert_eq!(count(&url, "recycled_numbers").await, 1);

    // Eight days on: the push is over and goes whole; the tickets stay (30 days).
    let at = now + 8 * DAY_MS;
    assert_eq!(
        store
            .purge_finished_pushes(cut(kept.pushes, at))
            .await
            .unwrap(),
        1
    );
    for t in ["submissions", "submission_numbers", "deliveries"] {
        assert_eq!(count(&url, t).await, 0, "{t}");
    }
    assert_eq!(
        store
            .purge_final_tickets(cut(kept.tickets, at))
            .await
            .unwrap(),
        0
    );

    // 31 days on: the final ticket and its events go; 181 days: the audit trail; 401 days:
    // the last date in the history.
    let at = now + 31 * DAY_MS;
    assert_eq!(
        store
            .purge_final_tickets(cut(kept.tickets, at))
            .await
            .unwrap(),
        before[0] as u64
    );
    assert_eq!(count(&url, "ticket_events").await, 0);
    let at = now + 181 * DAY_MS;
    assert_eq!(
        store
            .purge_audit(cut(h.stack.config.audit.retention, at))
            .await
            .unwrap(),
        before[6] as u64
    );
    let at = now + 401 * DAY_MS;
    assert_eq!(
        store
            .purge_recycled_history(cut(kept.recycled_history, at))
            .await
            .unwrap(),
        1
    );
    for t in tables {
        assert_eq!(count(&url, t).await, 0, "{t}");
    }
    h.stop().await;
}

/// A push whose delivery to some app is still pending is kept, however old; an open ticket is
/// never purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_unfinished_is_purged_whatever_its_age() {
    let h = Harness::start(Options {
        apps: 2,
        tweak: |c| c.unbind.worker = false,
        ..Options::default()
    })
    .await;
    let url = h.stack.config.store.url.clone();
    let token = h.session().await;
    open_ticket(&h, &token, "open").await;
    CarrierPushClient::connect(h.endpoint())
        .await
        .unwrap()
        .submit_recycled_numbers(tokio_stream::iter([SubmitRecycledNumbersRequest {
            numbers: vec![RecycledNumber {
                phone_number: "+8613700000003".into(),
                cancelled_at: Some(Timestamp {
                    seconds: 1_735_689_600,
                    nanos: 0,
                }),
                reissued_at: Some(Timestamp {
                    seconds: 1_738_368_000,
                    nanos: 0,
                }),
            }],
            submission_key: "pending".into(),
        }]))
        .await
        .unwrap();
    let store = &h.stack.gateway.as_ref().unwrap().gateway.store;
    let far = h.clock.now_ms() + 10_000 * DAY_MS;
    assert_eq!(store.purge_final_tickets(far).await.unwrap(), 0);
    assert_eq!(store.purge_finished_pushes(far).await.unwrap(), 0);
    assert_eq!(count(&url, "tickets").await, 1);
    assert_eq!(count(&url, "submission_numbers").await, 1);
    h.stop().await;
}
