//! `CheckNumberRecycled` answers only what the gateway knows (issue 17, item 3): `true` when the
//! holder changed after the date (a date between cancellation and re-issue included), `false`
//! only for a number of the carrier's ranges with nothing pushed since a date within the
//! history; a date before `[number_status] history_starts` or in the future is `OUT_OF_RANGE`,
//! another carrier's number `NOT_FOUND`, a number that is not a mobile one `FAILED_PRECONDITION`.

mod common;

use common::*;
use prost_types::Timestamp;
use tonic::Code;
use unbind_gateway::proto::{
    CheckNumberRecycledRequest, RecycledNumber, SubmitRecycledNumbersRequest,
    carrier_push_client::CarrierPushClient, number_status_client::NumberStatusClient,
};

/// Midnight UTC of a day, as a timestamp.
fn day(y: i32, m: u32, d: u32) -> Option<Timestamp> {
    let t = chrono::NaiveDate::from_ymd_opt(y, m, d)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    Some(Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    })
}

fn carrier_history(c: &mut unbind_gateway::config::Config) {
    c.number_status.history_starts = Some("2024-01-01".into());
    c.number_status.number_ranges = vec!["+86137".into(), "+86138".into()];
}

const PUSHED: &str = "+8613700000001";

#[tokio::test]
async fn answers_only_what_the_carriers_pushes_tell() {
    let h = Harness::start(Options {
        tweak: carrier_history,
        ..Options::default()
    })
    .await;
    let mut push = CarrierPushClient::connect(h.endpoint()).await.unwrap();
    push.submit_recycled_numbers(futures::stream::iter([SubmitRecycledNumbersRequest {
        numbers: vec![RecycledNumber {
            phone_number: PUSHED.into(),
            cancelled_at: day(2025, 3, 1),
            reissued_at: day(2025, 4, 1),
        }],
        ..Default::default()
    }]))
    .await
    .unwrap();
    let status = NumberStatusClient::connect(h.endpoint()).await.unwrap();
    let check = |phone: &str, date: Option<Timestamp>| {
        let mut status = status.clone();
        let request = CheckNumberRecycledRequest {
            phone_number: phone.into(),
            specified_date: date,
        };
        async move {
            status
                .check_number_recycled(request)
                .await
                .map(|r| r.into_inner().recycled)
        }
    };

    // Before the cancellation, and in the gap before the re-issue: the holder changed since.
    assert!(check(PUSHED, day(2025, 2, 1)).await.unwrap());
    assert!(check(PUSHED, day(2025, 3, 15)).await.unwrap());
    // After the re-issue: the same holder since.
    assert!(!check(PUSHED, day(2025, 5, 1)).await.unwrap());
    // A number of the carrier's never pushed, within the history: nothing changed.
    assert!(!check("+8613700000002", day(2024, 6, 1)).await.unwrap());

    // Before the history is complete: not known, never "false".
    let err = check("+8613700000002", day(2023, 6, 1)).await.unwrap_err();
    assert_error(&err, Code::InvalidArgument, "OUT_OF_RANGE");
    assert_eq!(bad_fields(&err), ["specified_date"]);
    assert!(err.message().contains("2024-01-01"), "{}", err.message());
    // In the future.
    let err = check(PUSHED, day(2100, 1, 1)).await.unwrap_err();
    assert_error(&err, Code::InvalidArgument, "OUT_OF_RANGE");
    // Another carrier's number: its re-issues never reach this gateway.
    let err = check("+8613900139000", day(2024, 6, 1)).await.unwrap_err();
    assert_error(&err, Code::NotFound, "NOT_FOUND");
    assert!(!err.message().contains("13900139000"), "{}", err.message());
    // A landline (Beijing): valid, but not a mobile number.
    let err = check("+861065529988", day(2024, 6, 1)).await.unwrap_err();
    assert_error(&err, Code::FailedPrecondition, "INVALID_PHONE_NUMBER");
    assert_eq!(bad_fields(&err), ["phone_number"]);
    // Not a number at all.
    let err = check("+86123", day(2024, 6, 1)).await.unwrap_err();
    assert_error(&err, Code::InvalidArgument, "INVALID_PHONE_NUMBER");
    h.stop().await;
}

#[test]
fn a_bad_history_start_or_range_is_refused_naming_the_key() {
    let mut config = unbind_gateway::testkit::stack::demo_config(
        ([127, 0, 0, 1], 0).into(),
        std::path::Path::new("/tmp"),
        "http://127.0.0.1:1",
        Vec::new(),
    );
    config.number_status.history_starts = Some("01/01/2024".into());
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("number_status.history_starts"), "{err}");
    config.number_status.history_starts = None;
    config.number_status.number_ranges = vec!["86138".into()];
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("number_status.number_ranges[0]"), "{err}");
}
