//! Every ticket ends (issue 14, item 3), driven end to end through a real adapter written outside
//! the test kit (`tests/fakes`): an app that accepts and then forgets, one that accepts and never
//! finishes, one that never answers a send. Each ticket ends `FAILED` by its due date (3 s here),
//! after one final status check, having been sent only ever under its own id as idempotency key;
//! and the account can then be unbound again.

mod common;
mod fakes;

use std::time::Duration;

use common::*;
use fakes::{FakeAccount, FakeAdapter, Unbinds};
use tonic::transport::Channel;
use unbind_gateway::proto::{
    GetUnbindTicketsRequest, ListLinkedAccountsRequest, UnbindRequest, UnbindTicket,
    account_gateway_client::AccountGatewayClient,
    app_result::State as AppStatus,
    unbind_ticket::{State, StateReason},
};

type Client = AccountGatewayClient<Channel>;

/// How long the app has to finish an unbind in these tests.
const DUE_IN: Duration = Duration::from_secs(3);

/// One app, the fake adapter answering unbinds as `mode` says; quick polls and retries.
async fn rig(mode: Unbinds) -> (Harness, FakeAdapter) {
    let mut h = Harness::start(Options {
        apps: 1,
        ..Options::default()
    })
    .await;
    let adapter = FakeAdapter::start(vec![FakeAccount {
        account_id: "acct-1".into(),
        display_hint: "a***1".into(),
        bound_at_ms: Some(1_600_000_000_000),
    }])
    .await;
    adapter.set_unbinds(mode);
    let c = &mut h.stack.config;
    c.apps[0].endpoint = adapter.endpoint();
    c.apps[0].id = "app-fake".into();
    c.apps[0].timeout = Some(Duration::from_millis(300));
    c.apps[0].unbind_deadline = Some(DUE_IN);
    c.unbind.poll_interval = Duration::from_millis(20);
    c.unbind.status_poll_interval = Duration::from_millis(100);
    c.unbind.retry_base = Duration::from_millis(100);
    c.unbind.retry_max = Duration::from_millis(400);
    h.restart_gateway().await;
    (h, adapter)
}

/// Verifies, lists and unbinds the one account; the ticket and the session.
async fn unbind(h: &Harness, c: &mut Client, key: &str) -> (UnbindTicket, String) {
    let token = h.session().await;
    let accounts = c
        .list_linked_accounts(ListLinkedAccountsRequest {
            session_token: token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .accounts;
    let account = accounts
        .iter()
        .find(|a| a.app_id == "app-fake")
        .expect("the fake app's account");
    let ticket = c
        .unbind(UnbindRequest {
            session_token: token.clone(),
            account_refs: vec![account.account_ref.clone()],
            idempotency_key: key.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tickets
        .remove(0);
    // What a client shows a person: the app's name and the hint the listing showed.
    shows_the_account(&ticket, &account.app_name);
    (ticket, token)
}

/// The fake app's name (from the catalog) and the hint of its one account, as listed.
fn shows_the_account(ticket: &UnbindTicket, app_name: &str) {
    assert!(!app_name.is_empty());
    assert_eq!(
        (ticket.app_name.as_str(), ticket.display_hint.as_str()),
        (app_name, "a***1"),
        "{ticket:?}"
    );
}

/// Polls the ticket until it leaves the open states; panics if it is still open 10 s after its
/// due date.
async fn final_state(c: &mut Client, token: &str, id: &str) -> UnbindTicket {
    let deadline = tokio::time::Instant::now() + DUE_IN + Duration::from_secs(10);
    loop {
        let ticket = c
            .get_unbind_tickets(GetUnbindTicketsRequest {
                session_token: token.into(),
                ticket_ids: vec![id.into()],
            })
            .await
            .unwrap()
            .into_inner()
            .tickets
            .remove(0);
        if !matches!(
            ticket.state(),
            State::Queued | State::Sent | State::Accepted
        ) {
            return ticket;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {:?} 10 s past its due date: {ticket:?}",
            ticket.state()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The issue's reproduction: ACCEPTED, then NOT_FOUND to every status query. On main the ticket
/// went back and forth between SENT and ACCEPTED for ever, past its due date, and the account
/// could never be unbound again.
#[tokio::test]
async fn an_app_that_accepts_then_forgets_ends_failed_after_bounded_resends() {
    let (h, adapter) = rig(Unbinds::AcceptThenForget).await;
    let mut c = h.client().await;
    let (ticket, token) = unbind(&h, &mut c, "k-1").await;
    let end = final_state(&mut c, &token, &ticket.ticket_id).await;
    assert_eq!(end.state(), State::Failed, "{end:?}");
    assert!(end.detail.contains("lost track"), "{:?}", end.detail);
    assert_eq!(end.state_reason(), StateReason::LostTrack);
    let sends = adapter.unbinds();
    assert!(sends.len() <= 4, "{} sends: bounded re-sends", sends.len());
    assert!(sends.iter().all(|s| s.idempotency_key == ticket.ticket_id));

    // The account is free again: a new request opens a new ticket.
    adapter.set_unbinds(Unbinds::Done);
    let (again, token) = unbind(&h, &mut c, "k-2").await;
    assert_ne!(again.ticket_id, ticket.ticket_id);
    let end = final_state(&mut c, &token, &again.ticket_id).await;
    assert_eq!(end.state(), State::Completed);
    h.stop().await;
}

/// ACCEPTED for ever: polled until the due date, one final status check, then FAILED.
#[tokio::test]
async fn an_app_that_never_confirms_ends_failed_at_the_due_date() {
    let (h, adapter) = rig(Unbinds::AcceptForever).await;
    let mut c = h.client().await;
    let (ticket, token) = unbind(&h, &mut c, "k-1").await;
    let end = final_state(&mut c, &token, &ticket.ticket_id).await;
    assert_eq!(end.state(), State::Failed, "{end:?}");
    assert!(end.detail.contains("did not confirm"), "{:?}", end.detail);
    assert_eq!(end.state_reason(), StateReason::NotConfirmedInTime);
    // Read back when it has ended, the ticket still says which account of which app.
    shows_the_account(&end, &ticket.app_name);
    assert!(end.updated_at.unwrap().seconds >= end.due_at.unwrap().seconds);
    assert!(adapter.status_calls() >= 1);
    assert_eq!(adapter.unbinds().len(), 1, "sent once, then only asked");
    h.stop().await;
}

/// A send that never gets an answer: retried under the same key until the due date, then one
/// status check (so a holder's retry does not reach the app under a second key while the first
/// may be in its hands), then FAILED.
#[tokio::test]
async fn an_unanswered_send_gets_a_final_status_check_before_failing() {
    let (h, adapter) = rig(Unbinds::Silent).await;
    let mut c = h.client().await;
    let (ticket, token) = unbind(&h, &mut c, "k-1").await;
    let end = final_state(&mut c, &token, &ticket.ticket_id).await;
    assert_eq!(end.state(), State::Failed, "{end:?}");
    assert!(adapter.status_calls() >= 1, "a final status check");
    let sends = adapter.unbinds();
    assert!(!sends.is_empty());
    assert!(sends.iter().all(|s| s.idempotency_key == ticket.ticket_id));
    h.stop().await;
}

/// The app's result in a look-up by `token`, given `deadline`.
async fn app_status_in_lookup(c: &mut Client, token: &str, deadline: Duration) -> i32 {
    let mut request = tonic::Request::new(ListLinkedAccountsRequest {
        session_token: token.into(),
        ..Default::default()
    });
    request.set_timeout(deadline);
    c.list_linked_accounts(request)
        .await
        .unwrap()
        .into_inner()
        .app_results
        .iter()
        .find(|a| a.app_id == "app-fake")
        .expect("the fake app's result")
        .state
}

/// One client per app (issue 14, item 1): the worker's calls and the look-ups share the app's
/// concurrency limit and its breaker. On main the worker called the app beside the look-up stack:
/// an app allowed one call at a time was asked a look-up while an unbind was still in flight.
#[tokio::test]
async fn the_workers_calls_and_look_ups_share_the_apps_limit_and_breaker() {
    let (mut h, adapter) = rig(Unbinds::Silent).await;
    let c = &mut h.stack.config;
    c.apps[0].concurrency = Some(1);
    c.apps[0].timeout = Some(Duration::from_millis(1500));
    // One failure opens this app's breaker for a while (a per-app override); a look-up's own
    // timeout never counts (its deadline is under the floor), so only the worker's call can.
    c.apps[0].breaker = Some(
        toml::from_str(
            r#"consecutive_failures = 1
open_base = "30s"
open_max = "60s"
timeout_floor = "10s""#,
        )
        .unwrap(),
    );
    with_admin(c);
    h.restart_gateway().await;
    let mut client = h.client().await;
    let (_ticket, _) = unbind(&h, &mut client, "one-slot").await;
    // The unbind is in flight: the app never answers it, and it holds the app's one slot.
    adapter.wait_for_unbinds(1).await;
    let other = h.session_for("+8613900139000", "154321").await;
    assert_eq!(
        app_status_in_lookup(&mut client, &other, Duration::from_millis(400)).await,
        AppStatus::TimedOut as i32,
        "the look-up did not wait for the unbind's slot"
    );
    // The unbind times out: a failure of the app, counted in its one breaker, which the next
    // look-up finds open.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = app_status_in_lookup(&mut client, &other, Duration::from_millis(400)).await;
        if status == AppStatus::SkippedCircuitOpen as i32 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "breaker never opened"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The operator sees which call of which app failed.
    let (_, text) = http_get(admin_addr(&h), "/metrics").await;
    let series =
        "unbind_app_rpc_calls_total{app=\"app-fake\",rpc=\"unbind_account\",outcome=\"timed_out\"}";
    assert!(
        metric(&text, series).is_some_and(|n| n >= 1.0),
        "{series} missing from {text}"
    );
    h.stop().await;
}
