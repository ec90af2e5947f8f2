//! Look-ups through the real gRPC surface against real simulated adapters: fan-out across many
//! apps, per-app failures as data, the cache and call coalescing, the stream, and bad input.

mod common;

use std::{collections::HashSet, time::Duration};

use common::*;
use futures::StreamExt;
use tonic::{Code, Request};
use unbind_gateway::{
    proto::{
        AppResult, ListAppsRequest, ListLinkedAccountsRequest, ListLinkedAccountsResponse,
        app_result::State, linked_account::Ownership,
    },
    testkit::simulated_apps::{Behaviour, Latency, accounts_for},
};

fn request(token: &str) -> ListLinkedAccountsRequest {
    ListLinkedAccountsRequest {
        session_token: token.into(),
        ..Default::default()
    }
}

async fn list(
    h: &Harness,
    req: ListLinkedAccountsRequest,
) -> Result<ListLinkedAccountsResponse, tonic::Status> {
    h.client()
        .await
        .list_linked_accounts(req)
        .await
        .map(|r| r.into_inner())
}

fn state_of(results: &[AppResult], app_id: &str) -> State {
    let r = results.iter().find(|r| r.app_id == app_id).unwrap();
    State::try_from(r.state).unwrap()
}

#[tokio::test]
async fn lists_every_apps_accounts_telling_the_holders_apart() {
    let h = Harness::start(Options {
        apps: 200,
        ..Options::default()
    })
    .await;
    let token = h.session().await;
    let answer = list(&h, request(&token)).await.unwrap();
    assert_eq!(answer.app_results.len(), 200);
    assert!(answer.complete);
    assert!(
        answer
            .app_results
            .iter()
            .all(|r| r.state == State::Answered as i32 && !r.from_cache)
    );
    // Exactly what each simulated app holds, app by app.
    let mut expected_total = 0;
    for result in &answer.app_results {
        let expected = accounts_for(42, &result.app_id, PHONE).len() as u32;
        assert_eq!(result.account_count, expected, "{}", result.app_id);
        expected_total += expected;
    }
    assert_eq!(answer.total_accounts, expected_total);
    assert_eq!(answer.accounts.len() as u32, expected_total);
    // Both holders' accounts, decided by the binding date against 2024-03-01.
    let holder_since = 1_709_251_200; // 2024-03-01T00:00:00Z
    let mut kinds = HashSet::new();
    for a in &answer.accounts {
        let bound = a.bound_at.as_ref().unwrap().seconds;
        let ownership = Ownership::try_from(a.ownership).unwrap();
        kinds.insert(ownership);
        let expected = if bound < holder_since {
            Ownership::PreviousHolder
        } else {
            Ownership::CurrentHolder
        };
        assert_eq!(ownership, expected);
        // (The simulator masks its hints already; that the gateway masks a previous holder's
        // hint whatever the app sends is checked with unmasked hints in holder_protection.rs.)
        assert!(!a.account_ref.contains("acct-"), "account refs are opaque");
    }
    assert_eq!(
        kinds.len(),
        2,
        "the demo number shows both holders' accounts"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_stalled_app_times_out_alone_within_the_deadline() {
    let h = Harness::start(Options {
        apps: 20,
        app_timeout: Duration::from_secs(20),
        // The deadline the gateway gives a caller that sends none (and a lease at least twice
        // the apps' timeout, as the config requires).
        tweak: |c| {
            c.lookup.default_deadline = Duration::from_millis(1500);
            c.unbind.lease = Duration::from_secs(40);
        },
        ..Options::default()
    })
    .await;
    h.simulator.set_behaviour(
        "app-007",
        Behaviour {
            stall_rate: 1.0,
            ..Behaviour::default()
        },
    );
    let token = h.session().await;
    // No deadline on the client's side, so a loaded machine cannot make the client give up
    // first: what is checked is the order, the answer at the gateway's 1.5 s deadline long
    // before the stalled app's own 20 s timeout (the client waits at most 10 s).
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        h.client().await.list_linked_accounts(request(&token)),
    )
    .await
    .expect("answered at the deadline, not at the app's timeout")
    .unwrap()
    .into_inner();
    assert!(!answer.complete);
    assert_eq!(state_of(&answer.app_results, "app-007"), State::TimedOut);
    assert_eq!(
        answer
            .app_results
            .iter()
            .filter(|r| r.state == State::Answered as i32)
            .count(),
        19
    );
    // The silent app is never reported as "no accounts".
    assert!(answer.accounts.iter().all(|a| a.app_id != "app-007"));
    h.stop().await;
}

#[tokio::test]
async fn an_app_that_is_down_is_unavailable_and_an_erroring_one_failed() {
    let h = Harness::start(Options {
        apps: 6,
        ..Options::default()
    })
    .await;
    h.simulator.stop_app("app-002").await;
    h.simulator.set_behaviour(
        "app-003",
        Behaviour {
            error_rate: 1.0,
            ..Behaviour::default()
        },
    );
    let token = h.session().await;
    let answer = list(&h, request(&token)).await.unwrap();
    assert!(!answer.complete);
    assert_eq!(state_of(&answer.app_results, "app-002"), State::Unavailable);
    assert_eq!(state_of(&answer.app_results, "app-003"), State::Failed);
    assert_eq!(state_of(&answer.app_results, "app-001"), State::Answered);

    // Failures are not cached: once the apps recover, they are asked again.
    h.simulator.start_app("app-002").await.unwrap();
    h.simulator.set_behaviour("app-003", Behaviour::default());
    let answer = list(&h, request(&token)).await.unwrap();
    assert!(answer.complete);
    for app in ["app-002", "app-003"] {
        let r = answer.app_results.iter().find(|r| r.app_id == app).unwrap();
        assert!(!r.from_cache);
        assert_eq!(r.account_count as usize, accounts_for(42, app, PHONE).len());
    }
    h.stop().await;
}

#[tokio::test]
async fn identical_concurrent_lookups_share_one_call_per_app_then_hit_the_cache() {
    let apps = 10;
    let h = Harness::start(Options {
        apps,
        behaviour: Behaviour {
            latency: Latency::Fixed(Duration::from_millis(200)),
            ..Behaviour::default()
        },
        ..Options::default()
    })
    .await;
    let token = h.session().await;
    let client = h.client().await;
    let calls = (0..50).map(|_| {
        let mut client = client.clone();
        let req = request(&token);
        async move { client.list_linked_accounts(req).await.unwrap().into_inner() }
    });
    let answers = futures::future::join_all(calls).await;
    assert!(
        answers
            .iter()
            .all(|a| a.complete && a.app_results.len() == apps)
    );
    assert_eq!(
        h.simulator.total_find_calls(),
        apps as u64,
        "one adapter call per app"
    );

    let cached = list(&h, request(&token)).await.unwrap();
    assert!(cached.app_results.iter().all(|r| r.from_cache));
    assert_eq!(cached.total_accounts, answers[0].total_accounts);
    assert_eq!(h.simulator.total_find_calls(), apps as u64);

    // bypass_cache asks again (and refreshes).
    let fresh = list(
        &h,
        ListLinkedAccountsRequest {
            bypass_cache: true,
            ..request(&token)
        },
    )
    .await
    .unwrap();
    assert!(fresh.app_results.iter().all(|r| !r.from_cache));
    assert_eq!(h.simulator.total_find_calls(), 2 * apps as u64);
    h.stop().await;
}

#[tokio::test]
async fn the_stream_delivers_one_result_per_app() {
    let h = Harness::start(Options {
        apps: 200,
        behaviour: Behaviour {
            latency: Latency::Uniform {
                min: Duration::from_millis(1),
                max: Duration::from_millis(50),
            },
            ..Behaviour::default()
        },
        ..Options::default()
    })
    .await;
    let token = h.session().await;
    let mut stream = h
        .client()
        .await
        .stream_linked_accounts(request(&token))
        .await
        .unwrap()
        .into_inner();
    let mut seen = HashSet::new();
    let mut accounts = 0;
    while let Some(result) = stream.next().await {
        let result = result.unwrap();
        assert_eq!(result.state, State::Answered as i32);
        assert_eq!(result.accounts.len() as u32, result.account_count);
        accounts += result.account_count;
        assert!(seen.insert(result.app_id));
    }
    assert_eq!(seen.len(), 200);
    let expected: usize = h
        .simulator
        .apps()
        .iter()
        .map(|a| accounts_for(42, &a.id, PHONE).len())
        .sum();
    assert_eq!(accounts as usize, expected);
    h.stop().await;
}

#[tokio::test]
async fn selected_apps_summary_only_and_sms_delivery() {
    let h = Harness::start(Options::default()).await;
    let token = h.session().await;
    let answer = list(
        &h,
        ListLinkedAccountsRequest {
            app_ids: vec!["app-002".into(), "app-004".into()],
            summary_only: true,
            deliver_by_sms: true,
            ..request(&token)
        },
    )
    .await
    .unwrap();
    let ids: Vec<_> = answer
        .app_results
        .iter()
        .map(|r| r.app_id.as_str())
        .collect();
    assert_eq!(ids, ["app-002", "app-004"]);
    assert!(answer.accounts.is_empty());
    let expected =
        accounts_for(42, "app-002", PHONE).len() + accounts_for(42, "app-004", PHONE).len();
    assert_eq!(answer.total_accounts as usize, expected);
    // The summary reaches the phone itself.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let sms = unbind_gateway::testkit::simulated_registry::read_sms_file(&h.sms_file)
            .unwrap_or_default();
        if let Some(m) = sms.iter().find(|m| m.text.contains("bound to")) {
            assert!(
                m.text.contains(&format!("{expected} accounts")),
                "{}",
                m.text
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no summary SMS");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.stop().await;
}

/// The summary SMS of a stream says what the unary answer's says, also when the caller asked
/// for the summary only (the stream once counted no previous holder's accounts then).
#[tokio::test]
async fn both_look_ups_text_the_same_summary() {
    let h = Harness::start(Options {
        apps: 20,
        ..Options::default()
    })
    .await;
    let token = h.session().await;
    let summary_sms = ListLinkedAccountsRequest {
        summary_only: true,
        deliver_by_sms: true,
        ..request(&token)
    };
    list(&h, summary_sms.clone()).await.unwrap();
    let mut stream = h
        .client()
        .await
        .stream_linked_accounts(summary_sms)
        .await
        .unwrap()
        .into_inner();
    while let Some(result) = stream.next().await {
        assert!(result.unwrap().accounts.is_empty(), "summary only");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let texts = loop {
        let sms = unbind_gateway::testkit::simulated_registry::read_sms_file(&h.sms_file)
            .unwrap_or_default();
        let texts: Vec<String> = sms
            .into_iter()
            .filter(|m| m.text.contains("bound to"))
            .map(|m| m.text)
            .collect();
        if texts.len() == 2 {
            break texts;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "summaries: {texts:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        texts[0].contains("bound before you got the number"),
        "the holder has a previous holder's accounts: {}",
        texts[0]
    );
    assert_eq!(texts[0], texts[1]);
    h.stop().await;
}

#[tokio::test]
async fn unknown_duplicate_and_oversized_app_selections_are_refused() {
    let h = Harness::start(Options::default()).await;
    let token = h.session().await;
    let err = list(
        &h,
        ListLinkedAccountsRequest {
            app_ids: vec!["app-001".into(), "no-such-app".into()],
            ..request(&token)
        },
    )
    .await
    .unwrap_err();
    assert_error(&err, Code::InvalidArgument, "UNKNOWN_APP");
    assert_eq!(bad_fields(&err), ["app_ids[1]"]);
    let err = list(
        &h,
        ListLinkedAccountsRequest {
            app_ids: vec!["app-001".into(), "app-001".into()],
            ..request(&token)
        },
    )
    .await
    .unwrap_err();
    assert_error(&err, Code::InvalidArgument, "INVALID_FIELD");
    assert_eq!(bad_fields(&err), ["app_ids[1]"]);
    // A message over the size limit never reaches the handler, and still gets our answer.
    let huge = ListLinkedAccountsRequest {
        app_ids: vec!["a".repeat(300 * 1024)],
        ..request(&token)
    };
    let err = list(&h, huge).await.unwrap_err();
    assert_error(&err, Code::InvalidArgument, "MESSAGE_TOO_LARGE");
    h.stop().await;
}

#[tokio::test]
async fn the_correlator_is_echoed_on_success_and_error() {
    let h = Harness::start(Options::default()).await;
    let mut req = Request::new(ListAppsRequest {});
    req.metadata_mut()
        .insert("x-correlator", "abc-123".parse().unwrap());
    let answer = h.client().await.list_apps(req).await.unwrap();
    assert_eq!(answer.metadata().get("x-correlator").unwrap(), "abc-123");
    assert_eq!(answer.get_ref().apps.len(), 5);

    let mut req = Request::new(request("bad-token"));
    req.metadata_mut()
        .insert("x-correlator", "def-456".parse().unwrap());
    let err = h
        .client()
        .await
        .list_linked_accounts(req)
        .await
        .unwrap_err();
    assert_eq!(err.metadata().get("x-correlator").unwrap(), "def-456");
    h.stop().await;
}
