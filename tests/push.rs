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
    assert!(!check(PHONE, 0).await.unwrap().into_inner().recycled);
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
    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(&h.stack.config.store.url)
        .await
        .unwrap();
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
        assert_eq!(rows, 0, "{table}");
    }
    db.close().await;
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
