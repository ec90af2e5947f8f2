//! Unbinding through the real gRPC surface against simulated apps: durable tickets, idempotency,
//! the worker's paths (done at once, accepted then polled, app down then back, refused, transient
//! failures until the due date), open tickets in look-ups, and every caller error. The main flow
//! runs on SQLite and on PostgreSQL.

mod common;

use std::{collections::HashSet, time::Duration};

use common::*;
use tokio::time::Instant;
use tonic::Code;
use unbind_gateway::{
    proto::{
        GetUnbindTicketsRequest, LinkedAccount, ListLinkedAccountsRequest, UnbindRequest,
        UnbindTicket,
        app_result::State as AppState,
        linked_account::Ownership,
        unbind_ticket::{State, StateReason},
    },
    security::{AccountRef, Session},
    testkit::simulated_apps::Behaviour,
};

fn fast_worker(c: &mut unbind_gateway::config::Config) {
    c.unbind.poll_interval = Duration::from_millis(20);
    c.unbind.status_poll_interval = Duration::from_millis(50);
    c.unbind.retry_base = Duration::from_millis(50);
    c.unbind.retry_max = Duration::from_millis(200);
    c.unbind.retry_jitter = false;
    c.unbind.sms_window = Duration::from_millis(50);
}

async fn accounts(h: &Harness, token: &str) -> Vec<LinkedAccount> {
    h.client()
        .await
        .list_linked_accounts(ListLinkedAccountsRequest {
            session_token: token.into(),
            bypass_cache: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .accounts
}

fn unbindable(accounts: &[LinkedAccount], ownership: Ownership) -> Vec<LinkedAccount> {
    accounts
        .iter()
        .filter(|a| a.unbind_supported && a.ownership == ownership as i32)
        .cloned()
        .collect()
}

async fn unbind(
    h: &Harness,
    token: &str,
    refs: Vec<String>,
    key: &str,
) -> Result<Vec<UnbindTicket>, tonic::Status> {
    h.client()
        .await
        .unbind(UnbindRequest {
            session_token: token.into(),
            account_refs: refs,
            idempotency_key: key.into(),
        })
        .await
        .map(|r| r.into_inner().tickets)
}

async fn tickets(h: &Harness, ids: &[String]) -> Vec<UnbindTicket> {
    h.client()
        .await
        .get_unbind_tickets(GetUnbindTicketsRequest {
            ticket_ids: ids.to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tickets
}

/// Waits until every ticket is in one of `states`; returns them.
async fn wait_for(h: &Harness, ids: &[String], states: &[State]) -> Vec<UnbindTicket> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = tickets(h, ids).await;
        if now.len() == ids.len()
            && now
                .iter()
                .all(|t| states.iter().any(|s| *s as i32 == t.state))
        {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "tickets did not reach {states:?}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ids(tickets: &[UnbindTicket]) -> Vec<String> {
    tickets.iter().map(|t| t.ticket_id.clone()).collect()
}

async fn unbind_previous_holders_accounts(h: &Harness) {
    let token = h.session().await;
    let before = accounts(h, &token).await;
    let previous = unbindable(&before, Ownership::PreviousHolder);
    assert!(!previous.is_empty());
    let refs: Vec<String> = previous.iter().map(|a| a.account_ref.clone()).collect();
    let created = unbind(h, &token, refs.clone(), "key-1").await.unwrap();
    assert_eq!(created.len(), previous.len());
    for (t, a) in created.iter().zip(&previous) {
        assert_eq!(t.app_id, a.app_id);
        assert_eq!(t.account_ref, a.account_ref);
        let created_at = t.created_at.as_ref().unwrap().seconds;
        assert_eq!(t.due_at.as_ref().unwrap().seconds - created_at, 5 * 86400);
        assert!(!t.overdue);
    }
    shows_what_the_listing_showed(&created, &previous);
    let done = wait_for(h, &ids(&created), &[State::Completed]).await;
    assert!(done.iter().all(|t| !t.overdue));
    // Read back by id, and by session (newest first), the tickets still say which account.
    shows_what_the_listing_showed(&done, &previous);
    let mut by_session = h
        .client()
        .await
        .get_unbind_tickets(GetUnbindTicketsRequest {
            session_token: token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tickets;
    by_session.sort_by_key(|t| ids(&created).iter().position(|id| *id == t.ticket_id));
    assert_eq!(ids(&by_session), ids(&created));
    shows_what_the_listing_showed(&by_session, &previous);
    // Each app saw each ticket once, under the ticket's own key.
    for t in &created {
        let stats = h.simulator.stats(&t.app_id);
        assert!(stats.unbind_keys.contains(&t.ticket_id));
    }
    // The unbound accounts are gone from a fresh look-up (cache invalidated), the rest remain.
    let after = accounts(h, &token).await;
    assert_eq!(after.len(), before.len() - previous.len());
    assert!(unbindable(&after, Ownership::PreviousHolder).is_empty());
    // Replaying the request returns the same tickets, now completed.
    let replay = unbind(h, &token, refs, "key-1").await.unwrap();
    assert_eq!(ids(&replay), ids(&created));
    assert!(replay.iter().all(|t| t.state == State::Completed as i32));
    shows_what_the_listing_showed(&replay, &previous);
    // The holder heard about each outcome by SMS (outcomes close together share one SMS):
    // every ticket, and no more.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let told = unbound_told_by_sms(h);
        assert!(
            told <= created.len(),
            "{told} outcomes told for {} tickets",
            created.len()
        );
        if told == created.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {told} of {} outcomes told by SMS",
            created.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Each ticket carries what a client shows a person (issue 16, item 8): its app's name and the
/// hint the listing showed for its account (here previous holders' accounts: masked, "z***g").
fn shows_what_the_listing_showed(tickets: &[UnbindTicket], listed: &[LinkedAccount]) {
    assert_eq!(tickets.len(), listed.len());
    for (t, a) in tickets.iter().zip(listed) {
        assert_eq!(
            (t.app_name.as_str(), t.display_hint.as_str()),
            (a.app_name.as_str(), a.display_hint.as_str()),
            "{t:?}"
        );
        assert!(t.app_name.starts_with("Sim "), "{t:?}");
        assert!(t.display_hint.contains("***"), "{t:?}");
    }
}

/// How many unbound accounts the SMS sent so far tell of ("...unbound from your account at X."
/// is one, "...unbound from 3 accounts: ..." three).
fn unbound_told_by_sms(h: &Harness) -> usize {
    unbind_gateway::testkit::simulated_registry::read_sms_file(&h.sms_file)
        .unwrap()
        .iter()
        .map(|m| {
            if m.text.contains("was unbound from your account") {
                1
            } else if let Some(rest) = m.text.split("was unbound from ").nth(1) {
                rest.split(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            } else {
                0
            }
        })
        .sum()
}

#[tokio::test]
async fn previous_holders_accounts_are_unbound_and_disappear() {
    let h = Harness::start(Options {
        apps: 30,
        tweak: fast_worker,
        ..Options::default()
    })
    .await;
    unbind_previous_holders_accounts(&h).await;
    h.stop().await;
}

#[tokio::test]
#[cfg_attr(no_database, ignore = "needs DATABASE_URL")]
async fn unbinding_works_the_same_on_postgres() {
    let url = fresh_postgres_database().await;
    let h = Harness::start(Options {
        apps: 30,
        store_url: Some(url),
        tweak: fast_worker,
        ..Options::default()
    })
    .await;
    unbind_previous_holders_accounts(&h).await;
    h.stop().await;
}

#[tokio::test]
async fn every_transition_is_recorded_with_its_cause() {
    let h = Harness::start(Options {
        apps: 10,
        tweak: fast_worker,
        ..Options::default()
    })
    .await;
    let token = h.session().await;
    let all = accounts(&h, &token).await;
    let one = unbindable(&all, Ownership::CurrentHolder)
        .into_iter()
        .next()
        .unwrap();
    let created = unbind(&h, &token, vec![one.account_ref], "k")
        .await
        .unwrap();
    wait_for(&h, &ids(&created), &[State::Completed]).await;
    let store = &h.stack.gateway.as_ref().unwrap().gateway.store;
    let events = store.ticket_events(&created[0].ticket_id).await.unwrap();
    let path: Vec<_> = events
        .iter()
        .map(|e| (e.from.as_str(), e.to.as_str()))
        .collect();
    assert_eq!(
        path,
        [
            ("queued", "queued"),
            ("queued", "sent"),
            ("sent", "completed")
        ]
    );
    assert!(events.iter().all(|e| !e.cause.is_empty() && e.at > 0));
    h.stop().await;
}

#[tokio::test]
async fn accepted_tickets_are_polled_until_done_and_show_in_look_ups() {
    let h = Harness::start(Options {
        apps: 10,
        behaviour: Behaviour {
            // Held in ACCEPTED until the test finishes it.
            unbind_completion: Duration::from_secs(3600),
            ..Behaviour::default()
        },
        tweak: fast_worker,
        ..Options::default()
    })
    .await;
    let token = h.session().await;
    let all = accounts(&h, &token).await;
    let target = unbindable(&all, Ownership::CurrentHolder)
        .into_iter()
        .next()
        .unwrap();
    let created = unbind(&h, &token, vec![target.account_ref.clone()], "k1")
        .await
        .unwrap();
    wait_for(&h, &ids(&created), &[State::Accepted]).await;
    // Polled while under way (not only sent once).
    let polls = h.simulator.stats(&target.app_id).status_calls;
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.simulator.stats(&target.app_id).status_calls < polls + 2 {
        assert!(
            Instant::now() < deadline,
            "the accepted ticket is not polled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // While under way, the account carries its open ticket.
    let listed = accounts(&h, &token).await;
    let shown = listed
        .iter()
        .find(|a| a.app_id == target.app_id && a.display_hint == target.display_hint)
        .expect("the account is still listed while its unbind is under way");
    let open = shown.open_ticket.as_ref().expect("its open ticket");
    assert_eq!(open.ticket_id, created[0].ticket_id);
    // The holder's own account: the ticket shows the app's own hint, as the listing did.
    for t in [&created[0], open] {
        assert_eq!(
            (t.app_name.as_str(), t.display_hint.as_str()),
            (target.app_name.as_str(), target.display_hint.as_str())
        );
        assert!(
            !t.app_name.is_empty() && !t.display_hint.is_empty(),
            "{t:?}"
        );
    }
    // Another key for the same account gets the open ticket, not a second one.
    let again = unbind(&h, &token, vec![shown.account_ref.clone()], "k2")
        .await
        .unwrap();
    assert_eq!(again[0].ticket_id, created[0].ticket_id);
    h.simulator.finish_unbinds(&target.app_id);
    wait_for(&h, &ids(&created), &[State::Completed]).await;
    assert_eq!(
        h.simulator.stats(&target.app_id).unbind_keys,
        vec![created[0].ticket_id.clone()]
    );
    h.stop().await;
}

#[tokio::test]
async fn tickets_complete_after_a_down_app_comes_back() {
    let h = Harness::start(Options {
        apps: 5,
        tweak: fast_worker,
        ..Options::default()
    })
    .await;
    let token = h.session().await;
    let all = accounts(&h, &token).await;
    let target = all.iter().find(|a| a.unbind_supported).unwrap().clone();
    h.simulator.stop_app(&target.app_id).await;
    let created = unbind(&h, &token, vec![target.account_ref.clone()], "k")
        .await
        .unwrap();
    // It is sent, fails, and waits to be retried; never lost, never failed before the due date.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = &tickets(&h, &ids(&created)).await[0];
        assert!(
            t.state == State::Queued as i32 || t.state == State::Sent as i32,
            "{t:?}"
        );
        if t.state == State::Sent as i32 && t.detail.contains("unreachable") {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.simulator.start_app(&target.app_id).await.unwrap();
    wait_for(&h, &ids(&created), &[State::Completed]).await;
    h.stop().await;
}

#[tokio::test]
async fn refused_and_given_up_tickets_end_rejected_and_failed() {
    let h = Harness::start(Options {
        apps: 5,
        tweak: fast_worker,
        ..Options::default()
    })
    .await;
    let token = h.session().await;
    // A ref for an account the app does not hold (made with the gateway's own key, as only the
    // operator could): the app refuses it.
    let keys = h.stack.config.keyring().unwrap();
    let number = keys.number_hash(&unbind_gateway::domain::E164::parse(PHONE).unwrap());
    // Refs are good only in the session they were shown in.
    let session = Session::verify(&keys, &token, "development", h.clock.now_ms()).unwrap();
    let ghost = AccountRef::new(
        "app-001",
        "acct-ghost",
        &number,
        &session.id,
        Some(h.clock.now_ms() - 1_000),
        true,
    )
    .seal(&keys);
    let rejected = unbind(&h, &token, vec![ghost], "k1").await.unwrap();
    let rejected = wait_for(&h, &ids(&rejected), &[State::Rejected]).await;
    assert!(
        rejected[0].detail.contains("no such account"),
        "{:?}",
        rejected[0]
    );
    // The reason as a code, for a client to word; the detail is the app's own.
    assert_eq!(rejected[0].state_reason(), StateReason::RefusedByApp);
    assert!(rejected[0].detail_from_app, "{:?}", rejected[0]);

    // An app failing every call: retried until the due date, then failed. (The account is
    // found first: an app failing every call would list none.)
    let real = accounts(&h, &token)
        .await
        .into_iter()
        .find(|a| a.app_id != "app-001" && a.unbind_supported)
        .expect("one of the other apps holds an account that can be unbound");
    let app = real.app_id.clone();
    h.simulator.set_behaviour(
        &app,
        Behaviour {
            error_rate: 1.0,
            ..Behaviour::default()
        },
    );
    let failing = unbind(&h, &token, vec![real.account_ref], "k2")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.simulator.stats(&app).unbind_calls < 2 {
        assert!(Instant::now() < deadline, "no retry");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let retrying = &tickets(&h, &ids(&failing)).await[0];
    assert_eq!(retrying.state(), State::Sent);
    assert_eq!(retrying.state_reason(), StateReason::NoAnswerResending);
    assert!(!retrying.detail_from_app, "{retrying:?}");
    h.clock.advance(Duration::from_secs(5 * 86400 + 60));
    let failed = wait_for(&h, &ids(&failing), &[State::Failed]).await;
    assert!(failed[0].detail.contains("due date"), "{:?}", failed[0]);
    assert_eq!(failed[0].state_reason(), StateReason::NoAnswerBeforeDue);
    h.stop().await;
}

#[tokio::test]
async fn an_open_ticket_past_its_due_date_is_overdue() {
    let h = Harness::start(Options {
        apps: 5,
        behaviour: Behaviour {
            unbind_completion: Duration::from_secs(3600),
            ..Behaviour::default()
        },
        tweak: fast_worker,
        ..Options::default()
    })
    .await;
    let token = h.session().await;
    let target = accounts(&h, &token)
        .await
        .into_iter()
        .find(|a| a.unbind_supported)
        .unwrap();
    let created = unbind(&h, &token, vec![target.account_ref], "k")
        .await
        .unwrap();
    wait_for(&h, &ids(&created), &[State::Accepted]).await;
    h.clock.advance(Duration::from_secs(5 * 86400 + 1));
    let t = &tickets(&h, &ids(&created)).await[0];
    assert!(t.overdue && t.state == State::Accepted as i32);
    // By session: the holder's tickets.
    let mine = h
        .client()
        .await
        .get_unbind_tickets(GetUnbindTicketsRequest {
            session_token: h.session().await,
            ..Default::default()
        })
        .await;
    // (the first session expired with the clock; a new one sees the same ticket)
    assert_eq!(ids(&mine.unwrap().into_inner().tickets), ids(&created));
    h.stop().await;
}

#[tokio::test]
async fn the_same_key_with_another_request_is_refused() {
    let h = Harness::start(Options {
        apps: 20,
        tweak: fast_worker,
        ..Options::default()
    })
    .await;
    let token = h.session().await;
    let all: Vec<_> = accounts(&h, &token)
        .await
        .into_iter()
        .filter(|a| a.unbind_supported)
        .collect();
    assert!(all.len() >= 2);
    unbind(&h, &token, vec![all[0].account_ref.clone()], "same")
        .await
        .unwrap();
    let err = unbind(&h, &token, vec![all[1].account_ref.clone()], "same")
        .await
        .unwrap_err();
    assert_error(&err, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");
    h.stop().await;
}

#[tokio::test]
async fn bad_unbind_requests_are_refused_and_write_nothing() {
    let h = Harness::start(Options {
        apps: 30,
        tweak: |c| {
            fast_worker(c);
            c.unbind.max_refs_per_request = 3;
        },
        ..Options::default()
    })
    .await;
    let token = h.session().await;
    let mine: Vec<_> = accounts(&h, &token).await;
    let supported: Vec<String> = mine
        .iter()
        .filter(|a| a.unbind_supported)
        .map(|a| a.account_ref.clone())
        .collect();
    let other_token = h.session_for(OTHER_PHONE, OTHER_ID).await;
    let foreign = accounts(&h, &other_token)
        .await
        .into_iter()
        .find(|a| a.unbind_supported)
        .unwrap()
        .account_ref;
    let mut forged = supported[0].clone().into_bytes();
    forged[20] = if forged[20] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();

    let long_key = "k".repeat(200);
    let cases: Vec<(Vec<String>, &str, Code, &str, &str)> = vec![
        (
            vec![],
            "k",
            Code::InvalidArgument,
            "INVALID_FIELD",
            "account_refs",
        ),
        (
            supported[..4].to_vec(),
            "k",
            Code::InvalidArgument,
            "INVALID_FIELD",
            "account_refs",
        ),
        (
            vec![supported[0].clone(), supported[0].clone()],
            "k",
            Code::InvalidArgument,
            "INVALID_FIELD",
            "account_refs[1]",
        ),
        (
            vec![supported[0].clone(), forged],
            "k",
            Code::InvalidArgument,
            "INVALID_ACCOUNT_REF",
            "account_refs[1]",
        ),
        (
            vec!["not-a-ref".into()],
            "k",
            Code::InvalidArgument,
            "INVALID_ACCOUNT_REF",
            "account_refs[0]",
        ),
        (
            vec![foreign],
            "k",
            Code::PermissionDenied,
            "INVALID_ACCOUNT_REF",
            "account_refs[0]",
        ),
        (
            vec![supported[0].clone()],
            "",
            Code::InvalidArgument,
            "INVALID_FIELD",
            "idempotency_key",
        ),
        (
            vec![supported[0].clone()],
            &long_key,
            Code::InvalidArgument,
            "INVALID_FIELD",
            "idempotency_key",
        ),
    ];
    for (refs, key, code, reason, field) in cases {
        let err = unbind(&h, &token, refs, key).await.unwrap_err();
        assert_error(&err, code, reason);
        assert_eq!(bad_fields(&err), [field]);
    }
    let unsupported = mine
        .iter()
        .find(|a| !a.unbind_supported)
        .expect("the simulator's seed gives the holder an account that cannot be unbound");
    let err = unbind(&h, &token, vec![unsupported.account_ref.clone()], "k")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(bad_fields(&err), ["account_refs[0]"]);
    let err = unbind(&h, "forged-session", vec![supported[0].clone()], "k")
        .await
        .unwrap_err();
    assert_error(&err, Code::Unauthenticated, "INVALID_SESSION");
    // Nothing was written.
    let mine = h
        .client()
        .await
        .get_unbind_tickets(GetUnbindTicketsRequest {
            session_token: token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tickets;
    assert!(mine.is_empty());
    // And the key "k" is still free for a real request.
    unbind(&h, &token, vec![supported[0].clone()], "k")
        .await
        .unwrap();
    // Ticket look-ups validate their ids too.
    let err = h
        .client()
        .await
        .get_unbind_tickets(GetUnbindTicketsRequest {
            ticket_ids: vec!["nope".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::InvalidArgument, "INVALID_FIELD");
    let unique: HashSet<_> = supported.iter().collect();
    assert_eq!(unique.len(), supported.len());
    h.stop().await;
}

/// Unbinds share the app's circuit breaker with look-ups: once an app failing every unbind has
/// opened it, the worker stops calling the app (its tickets wait, none lost or failed) and
/// look-ups skip it; after the open period one call probes it, and once the app answers again
/// the tickets complete.
#[tokio::test]
async fn a_failing_apps_breaker_holds_back_its_unbinds_too() {
    let h = Harness::start(Options {
        apps: 5,
        tweak: |c| {
            fast_worker(c);
            c.breaker.consecutive_failures = 3;
            c.breaker.open_base = Duration::from_secs(5);
            c.breaker.open_max = Duration::from_secs(5);
            c.breaker.jitter = 0.0;
        },
        ..Options::default()
    })
    .await;
    let token = h.session().await;
    let target = accounts(&h, &token)
        .await
        .into_iter()
        .find(|a| a.unbind_supported)
        .unwrap();
    let app = target.app_id.clone();
    h.simulator.set_behaviour(
        &app,
        Behaviour {
            error_rate: 1.0,
            ..Behaviour::default()
        },
    );
    let created = unbind(&h, &token, vec![target.account_ref], "k")
        .await
        .unwrap();
    // Three failed calls open the breaker...
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.simulator.stats(&app).unbind_calls < 3 {
        assert!(Instant::now() < deadline, "the worker never called the app");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...then the worker, which retries every 50-200 ms, leaves the app alone for the open
    // period (5 s) while the ticket stays open: it tries, the breaker refuses, no call is made.
    let deadline = Instant::now() + Duration::from_secs(10);
    let t = loop {
        let t = tickets(&h, &ids(&created)).await.remove(0);
        if t.detail.contains("circuit open") {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "the breaker never held the worker back: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(h.simulator.stats(&app).unbind_calls, 3);
    assert_eq!(t.state, State::Sent as i32, "{t:?}");
    // Look-ups skip it meanwhile.
    let listed = h
        .client()
        .await
        .list_linked_accounts(ListLinkedAccountsRequest {
            session_token: token.clone(),
            bypass_cache: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let result = listed.app_results.iter().find(|r| r.app_id == app).unwrap();
    assert_eq!(result.state, AppState::SkippedCircuitOpen as i32);

    // The app recovers: after the open period a probe reaches it and the ticket completes.
    h.simulator.set_behaviour(&app, Behaviour::default());
    wait_for(&h, &ids(&created), &[State::Completed]).await;
    h.stop().await;
}
