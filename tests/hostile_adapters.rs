//! Adapters that are broken or hostile, run by another company (issue 14, item 2): an answer too
//! big, with fields too long, or that does not decode makes that one app `FAILED`, with a reason
//! the caller reads in its `AppResult` and the operator in the metrics; every other app's answer
//! still arrives, and the response a caller receives stays within the common 4 MiB client limit.
//! Dates an app cannot mean tell nothing about whose account it is.
//!
//! The hostile adapter is a real gRPC server written outside the test kit (`tests/fakes`).

mod common;
mod fakes;

use common::*;
use fakes::{FakeAccount, FakeAdapter, RawAdapter};
use prost::Message as _;
use tonic::transport::Channel;
use unbind_gateway::proto::{
    AppResult, ListLinkedAccountsRequest, ListLinkedAccountsResponse,
    account_gateway_client::AccountGatewayClient, app_result::State, linked_account::Ownership,
};

type Client = AccountGatewayClient<Channel>;

const HOSTILE: &str = "app-hostile";
/// The common default of gRPC clients for a message they receive (tonic, grpc-java, grpc-go).
const CLIENT_LIMIT: usize = 4 * 1024 * 1024;

/// Three well-behaved simulated apps and one more at `HOSTILE`, answering `accounts` for every
/// number. Metrics on an admin port.
async fn rig(accounts: Vec<FakeAccount>) -> (Harness, FakeAdapter) {
    let adapter = FakeAdapter::start(accounts).await;
    (rig_at(adapter.endpoint()).await, adapter)
}

/// Three well-behaved simulated apps and `HOSTILE` at `endpoint`.
async fn rig_at(endpoint: String) -> Harness {
    let mut h = Harness::start(Options {
        apps: 3,
        tweak: with_admin,
        ..Options::default()
    })
    .await;
    let mut app = h.stack.config.apps[0].clone();
    app.id = HOSTILE.into();
    app.name = "Hostile".into();
    app.endpoint = endpoint;
    h.stack.config.apps.push(app);
    h.restart_gateway().await;
    h
}

fn accounts(n: usize, id: impl Fn(usize) -> String, hint: &str) -> Vec<FakeAccount> {
    (0..n)
        .map(|i| FakeAccount {
            account_id: id(i),
            display_hint: hint.to_owned(),
            bound_at_ms: Some(1_600_000_000_000),
        })
        .collect()
}

async fn list(c: &mut Client, token: &str) -> ListLinkedAccountsResponse {
    c.list_linked_accounts(ListLinkedAccountsRequest {
        session_token: token.into(),
        bypass_cache: true,
        ..Default::default()
    })
    .await
    .expect("the look-up answers although one app misbehaved")
    .into_inner()
}

/// A streamed look-up's messages, each checked to be within what a client accepts.
async fn stream(c: &mut Client, token: &str) -> Vec<AppResult> {
    let mut stream = c
        .stream_linked_accounts(ListLinkedAccountsRequest {
            session_token: token.into(),
            bypass_cache: true,
            ..Default::default()
        })
        .await
        .expect("the stream opens")
        .into_inner();
    let mut results = Vec::new();
    while let Some(r) = stream.message().await.expect("every message arrives") {
        assert!(r.encoded_len() < CLIENT_LIMIT);
        results.push(r);
    }
    results
}

fn result_of<'a>(results: &'a [AppResult], app: &str) -> &'a AppResult {
    results
        .iter()
        .find(|r| r.app_id == app)
        .unwrap_or_else(|| panic!("no result for {app}"))
}

/// The hostile app failed for `reason`, the others answered, and the answer holds none of the
/// hostile app's accounts.
fn assert_only_the_hostile_app_failed(response: &ListLinkedAccountsResponse, reason: &str) {
    let hostile = result_of(&response.app_results, HOSTILE);
    assert_eq!(hostile.state(), State::Failed, "{hostile:?}");
    assert!(hostile.reason.contains(reason), "{:?}", hostile.reason);
    assert_eq!(hostile.account_count, 0);
    assert!(!response.complete);
    for r in response.app_results.iter().filter(|r| r.app_id != HOSTILE) {
        assert_eq!(r.state(), State::Answered, "{r:?}");
    }
    assert!(response.accounts.iter().all(|a| a.app_id != HOSTILE));
    assert!(response.encoded_len() < CLIENT_LIMIT);
}

/// 150,000 one-character accounts (3.3 MB on the wire from the adapter, under its decoding
/// limit): on main every look-up failed at the caller with RESOURCE_EXHAUSTED, since the
/// gateway turned each into a sealed ref and sent ~25 MB.
#[tokio::test]
async fn an_answer_with_too_many_accounts_fails_that_app_only() {
    let (h, _adapter) = rig(accounts(150_000, |_| "x".into(), "x***")).await;
    let token = h.session().await;
    let mut c = h.client().await;
    let response = list(&mut c, &token).await;
    assert_only_the_hostile_app_failed(&response, "more than 1000 accounts");

    // The stream too: every message within the limit, the others' answers delivered.
    let results = stream(&mut c, &token).await;
    assert_eq!(results.len(), 4);
    assert_eq!(result_of(&results, HOSTILE).state(), State::Failed);

    // The operator sees which app and why; the label is a word, never a value.
    let (_, text) = http_get(admin_addr(&h), "/metrics").await;
    let refused = metric(
        &text,
        &format!(
            "unbind_app_answers_refused_total{{app=\"{HOSTILE}\",reason=\"too_many_accounts\"}}"
        ),
    );
    assert!(refused.unwrap_or(0.0) >= 2.0, "{refused:?}");
    h.stop().await;
}

/// An account id too long to fit in an account ref: on main the look-up issued a ref that
/// `Unbind` then refused as forged. Now the app fails, and no unusable ref is ever issued.
#[tokio::test]
async fn an_account_id_too_long_for_a_ref_fails_that_app() {
    let (h, _adapter) = rig(accounts(2, |i| format!("{i}{}", "y".repeat(3000)), "y***")).await;
    let token = h.session().await;
    let mut c = h.client().await;
    let response = list(&mut c, &token).await;
    assert_only_the_hostile_app_failed(&response, "account_id");
    h.stop().await;
}

/// A display hint, or many, long enough to make a caller's answer huge.
#[tokio::test]
async fn a_hint_too_long_fails_that_app() {
    let (h, _adapter) = rig(accounts(3, |i| format!("acct-{i}"), &"z".repeat(10_000))).await;
    let token = h.session().await;
    let mut c = h.client().await;
    let response = list(&mut c, &token).await;
    assert_only_the_hostile_app_failed(&response, "display_hint");
    h.stop().await;
}

/// A thousand accounts within every limit, with ids long enough that their refs (a few KiB each)
/// would make the answer larger than a client accepts: the app is reported, not sent.
#[tokio::test]
async fn a_look_up_never_answers_more_than_a_client_accepts() {
    let (h, _adapter) = rig(accounts(
        1000,
        |i| format!("{i:04}{}", "w".repeat(2790)),
        "w***",
    ))
    .await;
    let token = h.session().await;
    let mut c = h.client().await;
    let response = list(&mut c, &token).await;
    assert_only_the_hostile_app_failed(&response, "did not fit in this response");

    let results = stream(&mut c, &token).await;
    let hostile = result_of(&results, HOSTILE);
    assert_eq!(hostile.state(), State::Failed);
    assert!(hostile.accounts.is_empty());
    h.stop().await;
}

/// Text that is not UTF-8, as raw bytes on the wire (a `string` field no protobuf library of ours
/// would write), and a message cut short: the app fails as "does not decode", counted as
/// `malformed`; the other apps answer.
#[tokio::test]
async fn an_answer_that_does_not_decode_fails_that_app() {
    // FindAccountsResponse { accounts: [AdapterAccount { account_id: FF FE, display_hint: "x" }] }
    let account = [0x0A, 0x02, 0xFF, 0xFE, 0x12, 0x01, b'x'];
    let mut not_utf8 = vec![0x0A, account.len() as u8];
    not_utf8.extend_from_slice(&account);
    // The same, its account cut short: the length says 7, 3 bytes follow.
    let cut_short = vec![0x0A, 0x07, 0x0A, 0x02, b'a'];
    for message in [not_utf8, cut_short] {
        let adapter = RawAdapter::start(message).await;
        let h = rig_at(adapter.endpoint()).await;
        let token = h.session().await;
        let mut c = h.client().await;
        let response = list(&mut c, &token).await;
        assert_only_the_hostile_app_failed(&response, "does not decode");
        let (_, text) = http_get(admin_addr(&h), "/metrics").await;
        let series =
            format!("unbind_app_answers_refused_total{{app=\"{HOSTILE}\",reason=\"malformed\"}}");
        assert_eq!(metric(&text, &series), Some(1.0), "{series}");
        h.stop().await;
    }
}

/// Binding dates an app cannot mean: missing, in 2100, before 1970, at the end of time. None of
/// them can make an account the holder's own, and none is passed on to the caller: the account's
/// ownership is unknown, shown like a previous holder's, with no date. A plausible date before
/// the holder got the number is kept (the day only).
#[tokio::test]
async fn missing_future_and_absurd_dates_tell_nothing_and_are_not_passed_on() {
    let at = |i: usize, ms: Option<i64>| FakeAccount {
        account_id: format!("acct-{i}"),
        display_hint: format!("user{i}"),
        bound_at_ms: ms,
    };
    let (h, _adapter) = rig(vec![
        at(0, None),
        at(1, Some(4_102_444_800_000)),
        at(2, Some(-86_400_000)),
        at(3, Some(i64::MAX)),
        at(4, Some(1_600_000_000_000)),
    ])
    .await;
    let token = h.session().await;
    let mut c = h.client().await;
    let response = list(&mut c, &token).await;
    let hostile = result_of(&response.app_results, HOSTILE);
    assert_eq!(hostile.state(), State::Answered, "{hostile:?}");
    let mut accounts: Vec<_> = response
        .accounts
        .iter()
        .filter(|a| a.app_id == HOSTILE)
        .collect();
    accounts.sort_by(|a, b| a.display_hint.cmp(&b.display_hint));
    assert_eq!(accounts.len(), 5);
    for a in &accounts[..4] {
        assert_eq!(a.ownership(), Ownership::Unknown, "{a:?}");
        assert_eq!(a.bound_at, None, "{a:?}");
    }
    // 2020-09-13, before this holder's 2024-03-01: a previous holder's, the day only.
    assert_eq!(accounts[4].ownership(), Ownership::PreviousHolder);
    assert_eq!(
        accounts[4].bound_at.as_ref().map(|t| t.seconds),
        Some(1_599_955_200)
    );
    h.stop().await;
}
