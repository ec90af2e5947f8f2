//! The carrier push and the number-status check through real gRPC against simulated apps: a
//! client stream of recycled numbers is stored, then delivered to every app in batches of at most
//! 1,000 with the batch id as idempotency key, at least once (an app that is down gets its batches
//! when it returns); per-app progress is queryable; `CheckNumberRecycled` answers from what was
//! pushed; bad input is refused with the field named.

mod common;

use std::time::Duration;

use common::*;
use prost_types::Timestamp;
use tokio::time::Instant;
use tonic::{Code, transport::Channel};
use unbind_gateway::proto::{
    CheckNumberRecycledRequest, GetSubmissionRequest, GetSubmissionResponse, RecycledNumber,
    SubmitRecycledNumbersRequest, carrier_push_client::CarrierPushClient,
    get_submission_response::app_delivery::State as AppDeliveryState,
    number_status_client::NumberStatusClient,
};

fn ts(secs: i64) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: secs,
        nanos: 0,
    })
}

const CANCELLED: i64 = 1_740_787_200; // 2025-03-01
const REISSUED: i64 = 1_748_736_000; // 2025-06-01

fn numbers(range: std::ops::Range<usize>) -> Vec<RecycledNumber> {
    range
        .map(|i| RecycledNumber {
            phone_number: format!("+86137{i:08}"),
            cancelled_at: ts(CANCELLED),
            reissued_at: ts(REISSUED),
        })
        .collect()
}

async fn wait_delivered(
    push: &mut CarrierPushClient<Channel>,
    id: &str,
    apps: usize,
    total: u32,
) -> GetSubmissionResponse {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = push
            .get_submission(GetSubmissionRequest {
                submission_id: id.into(),
            })
            .await
            .unwrap()
            .into_inner();
        if s.deliveries.len() == apps && s.deliveries.iter().all(|d| d.numbers_delivered == total) {
            return s;
        }
        assert!(Instant::now() < deadline, "not delivered: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn pushed_numbers_reach_every_app_in_batches_at_least_once() {
    push_scenario(None).await;
}

#[tokio::test]
#[cfg_attr(no_database, ignore = "needs DATABASE_URL")]
async fn the_push_works_the_same_on_postgres() {
    let url = fresh_postgres_database().await;
    push_scenario(Some(url)).await;
}

async fn push_scenario(store_url: Option<String>) {
    let h = Harness::start(Options {
        apps: 4,
        store_url,
        tweak: |c| {
            c.unbind.poll_interval = Duration::from_millis(20);
            c.unbind.retry_base = Duration::from_millis(50);
            c.unbind.retry_max = Duration::from_millis(200);
        },
        ..Options::default()
    })
    .await;
    h.simulator.stop_app("app-004").await;
    let mut push = CarrierPushClient::connect(h.endpoint()).await.unwrap();
    // 2,500 numbers over three stream messages.
    let messages = vec![
        SubmitRecycledNumbersRequest {
            numbers: numbers(0..1200),
            ..Default::default()
        },
        SubmitRecycledNumbersRequest {
            numbers: numbers(1200..2000),
            ..Default::default()
        },
        SubmitRecycledNumbersRequest {
            numbers: numbers(2000..2500),
            ..Default::default()
        },
    ];
    let answer = push
        .submit_recycled_numbers(futures::stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.accepted, 2500);
    // Three apps get all three batches; the one that is down has none yet.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = push
            .get_submission(GetSubmissionRequest {
                submission_id: answer.submission_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.total_numbers, 2500);
        assert!(s.deliveries.iter().all(|d| d.batches_total == 3));
        let up = s
            .deliveries
            .iter()
            .filter(|d| d.app_id != "app-004")
            .all(|d| d.batches_delivered == 3);
        if up {
            assert_eq!(
                s.deliveries
                    .iter()
                    .find(|d| d.app_id == "app-004")
                    .unwrap()
                    .batches_delivered,
                0
            );
            break;
        }
        assert!(Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.simulator.start_app("app-004").await.unwrap();
    wait_delivered(&mut push, &answer.submission_id, 4, 2500).await;
    for app in h.simulator.apps() {
        let batches = h.simulator.stats(&app.id).notified_batches;
        let expected: Vec<String> = (0..3)
            .map(|b| format!("{}-{b}", answer.submission_id))
            .collect();
        let mut got = batches.clone();
        got.sort();
        assert_eq!(got, expected, "{}", app.id);
    }

    // Vendors ask whether a number changed hands.
    let status = NumberStatusClient::connect(h.endpoint()).await.unwrap();
    let check = |phone: &str, secs: i64| {
        let req = CheckNumberRecycledRequest {
            phone_number: phone.into(),
            specified_date: ts(secs),
        };
        let mut status = status.clone();
        async move { status.check_number_recycled(req).await }
    };
    assert!(
        check("+8613700000007", REISSUED - 86_400)
            .await
            .unwrap()
            .into_inner()
            .recycled
    );
    assert!(
        !check("+8613700000007", REISSUED + 86_400)
            .await
            .unwrap()
            .into_inner()
            .recycled
    );
    assert!(!check(PHONE, REISSUED).await.unwrap().into_inner().recycled);
    // 1970 is before the history kept (`retention.recycled_history`): not a guess of "false".
    let err = check(PHONE, 0).await.unwrap_err();
    assert_error(&err, Code::InvalidArgument, "OUT_OF_RANGE");
    assert_eq!(bad_fields(&err), ["specified_date"]);
    let err = check(PHONE, 4_102_444_800).await.unwrap_err(); // 2100
    assert_error(&err, Code::InvalidArgument, "OUT_OF_RANGE");
    assert_eq!(bad_fields(&err), ["specified_date"]);
    let err = check("12345", 0).await.unwrap_err();
    assert_error(&err, Code::InvalidArgument, "INVALID_PHONE_NUMBER");
    let err = status
        .clone()
        .check_number_recycled(CheckNumberRecycledRequest {
            phone_number: PHONE.into(),
            specified_date: None,
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::InvalidArgument, "INVALID_FIELD");

    // A later push lists a number twice with two re-issue dates, and another with dates older
    // than those stored: the latest date per number is what counts.
    let day = 86_400;
    let recycled = |phone: &str, cancelled: i64, reissued: i64| RecycledNumber {
        phone_number: phone.into(),
        cancelled_at: ts(cancelled),
        reissued_at: ts(reissued),
    };
    push.submit_recycled_numbers(futures::stream::iter([SubmitRecycledNumbersRequest {
        numbers: vec![
            recycled("+8613700000007", REISSUED + day, REISSUED + 5 * day),
            recycled("+8613700000007", REISSUED + day, REISSUED + 10 * day),
            recycled("+8613700000008", CANCELLED - 2 * day, CANCELLED - day),
        ],
        ..Default::default()
    }]))
    .await
    .unwrap();
    assert!(
        check("+8613700000007", REISSUED + 7 * day)
            .await
            .unwrap()
            .into_inner()
            .recycled
    );
    assert!(
        !check("+8613700000007", REISSUED + 11 * day)
            .await
            .unwrap()
            .into_inner()
            .recycled
    );
    assert!(
        check("+8613700000008", REISSUED - day)
            .await
            .unwrap()
            .into_inner()
            .recycled
    );
    h.stop().await;
}

#[tokio::test]
async fn bad_pushes_are_refused_and_store_nothing() {
    let h = Harness::start(Options {
        apps: 2,
        ..Options::default()
    })
    .await;
    let mut push = CarrierPushClient::connect(h.endpoint()).await.unwrap();
    let mut bad_phone = numbers(0..3);
    bad_phone[2].phone_number = "010-88888888".into();
    let mut backwards = numbers(0..2);
    backwards[1].reissued_at = ts(CANCELLED - 1);
    let mut missing = numbers(0..1);
    missing[0].cancelled_at = None;
    let cases = [
        (vec![], "INVALID_FIELD", "numbers"),
        (bad_phone, "INVALID_PHONE_NUMBER", "numbers[2].phone_number"),
        (backwards, "INVALID_FIELD", "numbers[1].reissued_at"),
        (missing, "INVALID_FIELD", "numbers[0]"),
    ];
    for (numbers, reason, field) in cases {
        let err = push
            .submit_recycled_numbers(futures::stream::iter(vec![SubmitRecycledNumbersRequest {
                numbers,
                ..Default::default()
            }]))
            .await
            .unwrap_err();
        assert_error(&err, Code::InvalidArgument, reason);
        assert_eq!(bad_fields(&err), [field]);
    }
    let err = push
        .get_submission(GetSubmissionRequest {
            submission_id: "sub_00000000000000000000000000000000".into(),
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "NOT_FOUND");
    let err = push
        .get_submission(GetSubmissionRequest {
            submission_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::InvalidArgument, "INVALID_FIELD");
    // Nothing was stored: not the valid numbers sent beside a bad one (the API says they were
    // never recycled), and no submission, delivery or number in any table.
    let mut status = NumberStatusClient::connect(h.endpoint()).await.unwrap();
    for n in numbers(0..3).iter().take(2) {
        let recycled = status
            .check_number_recycled(CheckNumberRecycledRequest {
                phone_number: n.phone_number.clone(),
                specified_date: ts(CANCELLED - 86_400),
            })
            .await
            .unwrap()
            .into_inner()
            .recycled;
        assert!(!recycled, "{} was stored", n.phone_number);
    }
    for (table, rows) in push_rows(&h).await {
        assert_eq!(rows, 0, "{table}");
    }
    h.stop().await;
}

/// A carrier that lost the answer sends its push again under the same submission key (issue 14,
/// item 7). On main every resend made a second submission and every app got the numbers twice.
/// Now the resend is answered with the first submission and nothing more is stored or
/// delivered; the same key with other numbers is refused.
#[tokio::test]
async fn a_push_sent_again_under_its_key_is_delivered_once() {
    push_key_scenario(None).await;
}

#[tokio::test]
#[cfg_attr(no_database, ignore = "needs DATABASE_URL")]
async fn a_push_sent_again_under_its_key_is_delivered_once_on_postgres() {
    let url = fresh_postgres_database().await;
    push_key_scenario(Some(url)).await;
}

async fn push_key_scenario(store_url: Option<String>) {
    let h = Harness::start(Options {
        apps: 2,
        store_url,
        tweak: |c| c.unbind.poll_interval = Duration::from_millis(20),
        ..Options::default()
    })
    .await;
    let mut push = CarrierPushClient::connect(h.endpoint()).await.unwrap();
    let sender = push.clone();
    let send = |key: &str, range: std::ops::Range<usize>| {
        let mut push = sender.clone();
        let messages = vec![
            SubmitRecycledNumbersRequest {
                numbers: numbers(range.start..range.start + 10),
                submission_key: key.into(),
            },
            SubmitRecycledNumbersRequest {
                numbers: numbers(range.start + 10..range.end),
                ..Default::default()
            },
        ];
        async move {
            push.submit_recycled_numbers(futures::stream::iter(messages))
                .await
        }
    };
    let first = send("carrier-2026-12-02-1", 0..50)
        .await
        .unwrap()
        .into_inner();
    wait_delivered(&mut push, &first.submission_id, 2, 50).await;
    // The same push again (the answer was lost): the same submission, nothing new.
    let again = send("carrier-2026-12-02-1", 0..50)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.submission_id, first.submission_id);
    assert_eq!(again.accepted, 50);
    // Other numbers under the same key: refused, nothing stored.
    let err = send("carrier-2026-12-02-1", 0..51).await.unwrap_err();
    assert_error(&err, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");
    // Another key: another submission.
    let other = send("carrier-2026-12-02-2", 0..50)
        .await
        .unwrap()
        .into_inner();
    assert_ne!(other.submission_id, first.submission_id);
    wait_delivered(&mut push, &other.submission_id, 2, 50).await;
    for app in h.simulator.apps() {
        let batches = h.simulator.stats(&app.id).notified_batches;
        let of_first = batches
            .iter()
            .filter(|b| b.starts_with(&first.submission_id))
            .count();
        assert_eq!(of_first, 1, "{}: {batches:?}", app.id);
        assert_eq!(batches.len(), 2, "{}: {batches:?}", app.id);
    }
    // A key too long, or one that changes after the first message: the field is named.
    let err = send(&"k".repeat(129), 100..120).await.unwrap_err();
    assert_error(&err, Code::InvalidArgument, "INVALID_FIELD");
    assert_eq!(bad_fields(&err), ["submission_key"]);
    let changed = vec![
        SubmitRecycledNumbersRequest {
            numbers: numbers(200..210),
            submission_key: "a".into(),
        },
        SubmitRecycledNumbersRequest {
            numbers: numbers(210..220),
            submission_key: "b".into(),
        },
    ];
    let err = push
        .submit_recycled_numbers(futures::stream::iter(changed))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["submission_key"]);
    h.stop().await;
}

/// Counts the rows of the push's tables, straight from the store.
async fn push_rows(h: &Harness) -> Vec<(&'static str, i64)> {
    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(&h.stack.config.store.url)
        .await
        .unwrap();
    let mut counts = Vec::new();
    for table in [
        "submissions",
        "submission_numbers",
        "deliveries",
        "recycled_numbers",
    ] {
        let (rows,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&db)
            .await
            .unwrap();
        counts.push((table, rows));
    }
    db.close().await;
    counts
}

/// A push streams into the store in chunks of 5,000 numbers as it arrives (issue 14, item 7), so
/// a number refused after the first chunks were written must take them all away with it: no
/// submission, delivery or re-issue date of a refused push is ever seen.
#[tokio::test]
async fn a_push_refused_after_its_first_chunks_leaves_nothing() {
    let h = Harness::start(Options {
        apps: 2,
        tweak: |c| c.unbind.poll_interval = Duration::from_millis(20),
        ..Options::default()
    })
    .await;
    let mut push = CarrierPushClient::connect(h.endpoint()).await.unwrap();
    let mut messages: Vec<SubmitRecycledNumbersRequest> = (0..12)
        .map(|m| SubmitRecycledNumbersRequest {
            numbers: numbers(m * 1000..(m + 1) * 1000),
            ..Default::default()
        })
        .collect();
    messages[11].numbers[500].phone_number = "not a number".into();
    let err = push
        .submit_recycled_numbers(futures::stream::iter(messages))
        .await
        .unwrap_err();
    assert_error(&err, Code::InvalidArgument, "INVALID_PHONE_NUMBER");
    assert_eq!(bad_fields(&err), ["numbers[11500].phone_number"]);
    // What was written is taken away in the background.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = push_rows(&h).await;
        if rows.iter().all(|(_, n)| *n == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {rows:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Never delivered, never answered from.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for app in h.simulator.apps() {
        assert!(h.simulator.stats(&app.id).notified_batches.is_empty());
    }
    let recycled = NumberStatusClient::connect(h.endpoint())
        .await
        .unwrap()
        .check_number_recycled(CheckNumberRecycledRequest {
            phone_number: numbers(7..8)[0].phone_number.clone(),
            specified_date: ts(CANCELLED - 86_400),
        })
        .await
        .unwrap()
        .into_inner()
        .recycled;
    assert!(!recycled);
    // The same numbers, all valid: stored, chunk by chunk, and answered from.
    let messages: Vec<SubmitRecycledNumbersRequest> = (0..12)
        .map(|m| SubmitRecycledNumbersRequest {
            numbers: numbers(m * 1000..(m + 1) * 1000),
            ..Default::default()
        })
        .collect();
    let answer = push
        .submit_recycled_numbers(futures::stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.accepted, 12_000);
    let done = wait_delivered(&mut push, &answer.submission_id, 2, 12_000).await;
    assert!(
        done.deliveries
            .iter()
            .all(|d| d.batches_total == 12 && d.state == AppDeliveryState::Delivered as i32)
    );
    let rows = push_rows(&h).await;
    assert_eq!(
        rows,
        [
            ("submissions", 1),
            ("submission_numbers", 12_000),
            ("deliveries", 24),
            ("recycled_numbers", 12_000),
        ]
    );
    h.stop().await;
}

/// On main a batch for an app removed from the catalog counted as delivered. Now the carrier
/// reads what happened to each app: delivered, still delivering, waiting for a disabled app, or
/// dropped because the app left.
#[tokio::test]
async fn batches_of_a_removed_or_disabled_app_are_reported_as_such() {
    let h = Harness::start(Options {
        apps: 3,
        tweak: |c| {
            c.unbind.poll_interval = Duration::from_millis(20);
            c.unbind.retry_base = Duration::from_millis(20);
            c.unbind.retry_max = Duration::from_millis(100);
        },
        ..Options::default()
    })
    .await;
    // app-002 and app-003 are down when the push arrives.
    h.simulator.stop_app("app-002").await;
    h.simulator.stop_app("app-003").await;
    let mut push = CarrierPushClient::connect(h.endpoint()).await.unwrap();
    let answer = push
        .submit_recycled_numbers(futures::stream::iter([SubmitRecycledNumbersRequest {
            numbers: numbers(0..1500),
            ..Default::default()
        }]))
        .await
        .unwrap()
        .into_inner();
    let progress = |push: &mut CarrierPushClient<Channel>| {
        let mut push = push.clone();
        let id = answer.submission_id.clone();
        async move {
            push.get_submission(GetSubmissionRequest { submission_id: id })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while progress(&mut push).await.deliveries[0].batches_delivered < 2 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // app-002 is disabled, app-003 leaves the catalog.
    let gateway = &h.stack.gateway.as_ref().unwrap().gateway;
    let mut config = h.stack.config.clone();
    config.apps[1].enabled = false;
    config.apps.truncate(2);
    gateway.catalog.reload(&config).unwrap();
    // (Both stay down until the removed app's batches are dropped: a call made before the
    // reload may still be waiting for its app, and would deliver if the app came back.)
    let deadline = Instant::now() + Duration::from_secs(20);
    let s = loop {
        let s = progress(&mut push).await;
        if s.deliveries[2].batches_dropped == 2 {
            break s;
        }
        assert!(Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let by_app: Vec<(&str, u32, u32, i32)> = s
        .deliveries
        .iter()
        .map(|d| {
            (
                d.app_id.as_str(),
                d.batches_delivered,
                d.batches_dropped,
                d.state,
            )
        })
        .collect();
    assert_eq!(
        by_app,
        [
            ("app-001", 2, 0, AppDeliveryState::Delivered as i32),
            ("app-002", 0, 0, AppDeliveryState::AppDisabled as i32),
            ("app-003", 0, 2, AppDeliveryState::AppRemoved as i32),
        ]
    );
    // The disabled app, back up, is still not sent anything; enabled again, it gets both
    // batches.
    h.simulator.start_app("app-002").await.unwrap();
    h.simulator.start_app("app-003").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(h.simulator.stats("app-002").notified_batches.is_empty());
    assert!(h.simulator.stats("app-003").notified_batches.is_empty());
    config.apps[1].enabled = true;
    gateway.catalog.reload(&config).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while progress(&mut push).await.deliveries[1].state != AppDeliveryState::Delivered as i32 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.simulator.stats("app-002").notified_batches.len(), 2);
    h.stop().await;
}

/// No push transaction holds SQLite's write lock for long (issue 14, item 7): a large push
/// streams in while people start verifications, and every verification is answered.
#[tokio::test]
async fn verifications_keep_answering_during_a_large_push() {
    let h = Harness::start(Options {
        apps: 2,
        extra_subscribers: 50,
        ..Options::default()
    })
    .await;
    let mut push = CarrierPushClient::connect(h.endpoint()).await.unwrap();
    let messages: Vec<SubmitRecycledNumbersRequest> = (0..60)
        .map(|m| SubmitRecycledNumbersRequest {
            numbers: numbers(m * 1000..(m + 1) * 1000),
            ..Default::default()
        })
        .collect();
    let pushing = tokio::spawn(async move {
        push.submit_recycled_numbers(futures::stream::iter(messages))
            .await
            .map(|r| r.into_inner().accepted)
    });
    let mut started = 0;
    let mut client = h.client().await;
    while !pushing.is_finished() && started < 50 {
        let (phone, id) = (format!("+86137{started:08}"), format!("1{started:05}"));
        start_with(&mut client, &phone, &id)
            .await
            .unwrap_or_else(|e| panic!("verification {started} during the push: {e:?}"));
        started += 1;
    }
    assert!(started > 0, "the push ended before any verification");
    assert_eq!(pushing.await.unwrap().unwrap(), 60_000);
    h.stop().await;
}
