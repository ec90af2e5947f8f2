//! Nobody can be harmed through the gateway, tried as an attacker would (issue 11):
//! - a stranger without the ID characters cannot lock the holder out of verifying, nor kill the
//!   code the holder just received, on one replica or two;
//! - what a guesser sees (answers, errors and their counts) is the same whether the ID matched;
//! - a registry that answers mismatches with errors, or faster, is no oracle;
//! - a registry match without `holder_since` fails closed: every account OWNERSHIP_UNKNOWN,
//!   masked, dated by the day, no ticket history, unbound as NUMBER_RECYCLED; dates too close to
//!   `holder_since` or in the future are nobody's; a ref is good only in its own session;
//! - a session cannot flood the holder's phone with summary SMS.
//!
//! The registry and the adapter are the fakes in `fakes/`, real gRPC servers written outside the
//! project's simulator.

mod common;
mod fakes;

use std::time::Duration;

use common::*;
use fakes::{FakeAccount, FakeAdapter, FakeRegistry, Mismatch, RegistryBehaviour};
use tokio::time::Instant;
use tonic::{Code, transport::Channel};
use unbind_gateway::{
    proto::{
        CompleteVerificationRequest, GetUnbindTicketsRequest, ListLinkedAccountsRequest,
        ListLinkedAccountsResponse, SummarySms, UnbindRequest,
        account_gateway_client::AccountGatewayClient, linked_account::Ownership,
        unbind_account_request::Reason, unbind_ticket::State,
    },
    server,
};

type Client = AccountGatewayClient<Channel>;

/// ID characters a stranger makes up for the holder's number (valid, and not the holder's).
fn made_up_id(i: usize) -> String {
    format!("{:02}{:03}{}", 1 + i % 28, i % 1000, i % 10)
}

const DAY_MS: i64 = 86_400_000;
/// 2024-03-01, the demo holder's date.
const HOLDER_SINCE_MS: i64 = 1_709_251_200_000;

/// What a caller can see of an answer: OK, or the code and reason.
fn seen<T>(r: &Result<T, tonic::Status>) -> String {
    match r {
        Ok(_) => "OK".to_owned(),
        Err(s) => format!(
            "{:?}/{}",
            s.code(),
            unbind_gateway::api::error::reason_of(s).unwrap_or_default()
        ),
    }
}

#[tokio::test]
async fn strangers_without_the_id_cannot_lock_the_holder_out() {
    let h = Harness::start(Options::default()).await;
    let mut c = h.client().await;
    // Six starts with the same made-up ID characters: the sixth is capped, as it would be for
    // anyone repeating one pair...
    for _ in 0..5 {
        start_with(&mut c, PHONE, &made_up_id(7)).await.unwrap();
    }
    let err = start_with(&mut c, PHONE, &made_up_id(7)).await.unwrap_err();
    assert_error(&err, Code::ResourceExhausted, "MAX_CODES_EXCEEDED");
    // ...and twenty more with other made-up characters are never capped.
    for i in 100..120 {
        start_with(&mut c, PHONE, &made_up_id(i)).await.unwrap();
    }
    // The holder still gets a code, and a stranger's start right after does not kill it.
    let v = start_with(&mut c, PHONE, ID_LAST_SIX).await.unwrap();
    let code = h.wait_for_code(PHONE, 1).await;
    start_with(&mut c, PHONE, &made_up_id(8)).await.unwrap();
    complete_with(&mut c, &v, &code).await.unwrap();
    // No code went to the number for any of the strangers' starts.
    assert_eq!(h.codes_sent_to(PHONE).len(), 1);
    h.stop().await;
}

/// A guesser trying one pair sees the same sequence of answers whether it matches or not: the
/// same errors, at the same counts.
#[tokio::test]
async fn a_guesser_sees_the_same_answers_whatever_the_truth() {
    let h = Harness::start(Options::default()).await;
    let mut c = h.client().await;
    let mut sequences = Vec::new();
    for (phone, id) in [
        (PHONE, ID_LAST_SIX.to_owned()),
        (PHONE, made_up_id(3)),
        (OTHER_PHONE, made_up_id(4)),
    ] {
        let mut seq = Vec::new();
        let first = start_with(&mut c, phone, &id).await;
        seq.push(seen(&first));
        let v = first.unwrap();
        // Five wrong codes (a guesser does not know the code either way).
        for _ in 0..5 {
            seq.push(seen(&complete_with(&mut c, &v, "999999").await));
        }
        for _ in 0..5 {
            seq.push(seen(&start_with(&mut c, phone, &id).await));
        }
        sequences.push(seq);
    }
    assert_eq!(sequences[0], sequences[1]);
    assert_eq!(sequences[0], sequences[2]);
    assert_eq!(
        sequences[0],
        [
            "OK",
            "InvalidArgument/INVALID_CODE",
            "InvalidArgument/INVALID_CODE",
            "InvalidArgument/INVALID_CODE",
            "InvalidArgument/INVALID_CODE",
            "FailedPrecondition/VERIFICATION_FAILED",
            "OK",
            "OK",
            "OK",
            "OK",
            "ResourceExhausted/MAX_CODES_EXCEEDED",
        ],
        "{sequences:?}"
    );
    h.stop().await;
}

/// Two replicas on PostgreSQL: a stranger's starts on one replica neither cap nor supersede the
/// holder's verification started on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_database, ignore = "needs DATABASE_URL")]
async fn two_replicas_strangers_cannot_lock_the_holder_out() {
    let url = fresh_postgres_database().await;
    let h = Harness::start(Options {
        apps: 1,
        store_url: Some(url),
        ..Options::default()
    })
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = server::start(h.stack.config.clone(), h.clock.clone(), listener)
        .await
        .unwrap();
    let mut a = h.client().await;
    let mut stranger = Client::connect(b.endpoint()).await.unwrap();
    for i in 0..6 {
        // Five of one pair, then another.
        let _ = start_with(&mut stranger, PHONE, &made_up_id(i / 5)).await;
    }
    let v = start_with(&mut a, PHONE, ID_LAST_SIX).await.unwrap();
    let code = h.wait_for_code(PHONE, 1).await;
    start_with(&mut stranger, PHONE, &made_up_id(9))
        .await
        .unwrap();
    // Completed on the stranger's replica, even.
    complete_with(&mut stranger, &v, &code).await.unwrap();
    b.stop().await.unwrap();
    h.stop().await;
}

/// A harness whose registry is a [`FakeRegistry`] and whose only app is a [`FakeAdapter`].
struct Rig {
    h: Harness,
    registry: FakeRegistry,
    adapter: FakeAdapter,
}

impl Rig {
    async fn start(
        registry: RegistryBehaviour,
        accounts: Vec<FakeAccount>,
        floor: Duration,
    ) -> Rig {
        Self::start_on(None, registry, accounts, floor).await
    }

    /// As [`Rig::start`], on the store at `store_url` (default: a SQLite file).
    async fn start_on(
        store_url: Option<String>,
        registry: RegistryBehaviour,
        accounts: Vec<FakeAccount>,
        floor: Duration,
    ) -> Rig {
        let mut h = Harness::start(Options {
            apps: 1,
            store_url,
            ..Options::default()
        })
        .await;
        let registry = FakeRegistry::start(registry).await;
        let adapter = FakeAdapter::start(accounts).await;
        let config = &mut h.stack.config;
        config.registry.endpoint = registry.endpoint();
        config.verification.min_start_latency = Some(floor);
        config.apps[0].endpoint = adapter.endpoint();
        config.apps[0].id = "app-fake".into();
        config.unbind.poll_interval = Duration::from_millis(20);
        h.restart_gateway().await;
        Rig {
            h,
            registry,
            adapter,
        }
    }

    async fn session(&self, c: &mut Client) -> (String, Option<prost_types::Timestamp>) {
        let n = self.registry.sms_of(PHONE, "verification_code").len();
        let v = start_with(c, PHONE, ID_LAST_SIX).await.unwrap();
        let code = self.registry.wait_for_code(PHONE, n + 1).await;
        let done = c
            .complete_verification(CompleteVerificationRequest {
                verification_id: v,
                code,
            })
            .await
            .unwrap()
            .into_inner();
        (done.session_token, done.holder_since)
    }
}

async fn list(c: &mut Client, token: &str, sms: bool) -> ListLinkedAccountsResponse {
    c.list_linked_accounts(ListLinkedAccountsRequest {
        session_token: token.into(),
        deliver_by_sms: sms,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

async fn unbind(
    c: &mut Client,
    token: &str,
    refs: Vec<String>,
    key: &str,
) -> Result<usize, tonic::Status> {
    c.unbind(UnbindRequest {
        session_token: token.into(),
        account_refs: refs,
        idempotency_key: key.into(),
    })
    .await
    .map(|r| r.into_inner().tickets.len())
}

/// Waits (at most 10 s) until every ticket of the session is completed.
async fn wait_until_completed(c: &mut Client, token: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tickets = c
            .get_unbind_tickets(GetUnbindTicketsRequest {
                session_token: token.into(),
                ticket_ids: Vec::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .tickets;
        if tickets.iter().all(|t| t.state() == State::Completed) {
            return;
        }
        assert!(Instant::now() < deadline, "{tickets:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A registry that answers mismatches 50 ms faster than matches, or with `NOT_FOUND` /
/// `INVALID_ARGUMENT`: the caller sees the same answer, and medians within the noise, for a
/// matching and a non-matching ID. Only a registry that is down (whatever the ID) shows, as
/// UNAVAILABLE for both.
#[tokio::test]
async fn the_registry_is_no_oracle() {
    let mut behaviour = RegistryBehaviour::new(&[(PHONE, ID_LAST_SIX, Some(HOLDER_SINCE_MS))]);
    behaviour.match_delay = Duration::from_millis(60);
    behaviour.mismatch_delay = Duration::from_millis(10);
    let rig = Rig::start(behaviour, Vec::new(), Duration::from_millis(300)).await;
    let mut c = rig.h.client().await;
    for mismatch in [
        Mismatch::NotMatched,
        Mismatch::NotFound,
        Mismatch::InvalidArgument,
    ] {
        rig.registry.set(|b| b.mismatch = mismatch);
        let (mut right, mut wrong) = (Vec::new(), Vec::new());
        // Interleaved, so the machine's load falls on both alike; each pair is tried at most
        // four times (under the hourly cap).
        for i in 0..12 {
            let at = Instant::now();
            let r = start_with(&mut c, PHONE, ID_LAST_SIX).await;
            right.push(at.elapsed());
            assert_eq!(seen(&r), "OK", "{mismatch:?}");
            let at = Instant::now();
            let w = start_with(&mut c, PHONE, &made_up_id(i)).await;
            wrong.push(at.elapsed());
            assert_eq!(seen(&w), "OK", "{mismatch:?}");
            if i % 4 == 3 {
                // A new hour for the right pair.
                rig.h.clock.advance(Duration::from_secs(3601));
            }
        }
        let (r, w) = (median(right.clone()), median(wrong.clone()));
        eprintln!("{mismatch:?}: median match {r:?}, mismatch {w:?}");
        assert!(r >= Duration::from_millis(300) && w >= Duration::from_millis(300));
        // The registry's own difference is 50 ms; what is left must be far under it.
        let gap = r.abs_diff(w);
        assert!(
            gap < Duration::from_millis(25),
            "{mismatch:?}: match {right:?} vs mismatch {wrong:?}"
        );
    }
    // Down for everyone: the same UNAVAILABLE whatever the ID.
    rig.registry.set(|b| b.down = true);
    let r = start_with(&mut c, PHONE, ID_LAST_SIX).await;
    let w = start_with(&mut c, PHONE, &made_up_id(50)).await;
    assert_eq!(seen(&r), seen(&w));
    assert_eq!(seen(&r), "Unavailable/SERVICE_UNAVAILABLE");
    rig.h.stop().await;
}

fn account(id: &str, hint: &str, bound_at_ms: Option<i64>) -> FakeAccount {
    FakeAccount {
        account_id: id.into(),
        display_hint: hint.into(),
        bound_at_ms,
    }
}

/// A match without `holder_since`: every account OWNERSHIP_UNKNOWN, masked, dated by the day;
/// no ticket history of the number; unbound as NUMBER_RECYCLED, never HOLDER_REQUEST.
#[tokio::test]
async fn a_match_without_holder_since_fails_closed() {
    fails_closed(None).await;
}

#[tokio::test]
#[cfg_attr(no_database, ignore = "needs DATABASE_URL")]
async fn a_match_without_holder_since_fails_closed_on_postgres() {
    let url = fresh_postgres_database().await;
    fails_closed(Some(url)).await;
}

async fn fails_closed(store_url: Option<String>) {
    let bound = HOLDER_SINCE_MS + 400 * DAY_MS + 3_723_000;
    let rig = Rig::start_on(
        store_url,
        RegistryBehaviour::new(&[(PHONE, ID_LAST_SIX, Some(HOLDER_SINCE_MS))]),
        vec![
            account("acct-zs", "zhang san", Some(bound)),
            account(
                "acct-mail",
                "zs@example.com",
                Some(HOLDER_SINCE_MS - 30 * DAY_MS),
            ),
            account("acct-nodate", "lisi", None),
        ],
        Duration::from_millis(50),
    )
    .await;
    let mut c = rig.h.client().await;
    // History made while the registry still gave a date: the holder's own account unbound.
    let (token, since) = rig.session(&mut c).await;
    assert_eq!(since.map(|t| t.seconds * 1000), Some(HOLDER_SINCE_MS));
    let before = list(&mut c, &token, false).await;
    let own = before
        .accounts
        .iter()
        .find(|a| a.display_hint == "zhang san")
        .expect("the holder's own account, unmasked");
    assert_eq!(own.ownership(), Ownership::CurrentHolder);
    unbind(&mut c, &token, vec![own.account_ref.clone()], "history")
        .await
        .unwrap();
    let calls = rig.adapter.wait_for_unbinds(1).await;
    assert_eq!(calls[0].reason, Reason::HolderRequest as i32);
    wait_until_completed(&mut c, &token).await;

    // Now the registry matches without a date.
    rig.registry.set(|b| {
        b.subscribers
            .insert(PHONE.into(), (ID_LAST_SIX.into(), None));
    });
    let (token, since) = rig.session(&mut c).await;
    assert_eq!(since, None, "no date from the registry, none in the answer");
    let found = list(&mut c, &token, false).await;
    assert_eq!(found.accounts.len(), 3);
    for a in &found.accounts {
        assert_eq!(a.ownership(), Ownership::Unknown, "{a:?}");
        assert!(a.display_hint.contains("***"), "{a:?}");
        assert!(a.open_ticket.is_none(), "{a:?}");
        if let Some(t) = &a.bound_at {
            assert_eq!(t.seconds % 86_400, 0, "a date only: {a:?}");
            assert_eq!(t.nanos, 0);
        }
    }
    let hints: Vec<&str> = found
        .accounts
        .iter()
        .map(|a| a.display_hint.as_str())
        .collect();
    assert!(
        !hints
            .iter()
            .any(|h| h.contains("zhang") || h.contains("example")),
        "{hints:?}"
    );
    // No ticket of the number from before this session.
    let history = c
        .get_unbind_tickets(GetUnbindTicketsRequest {
            session_token: token.clone(),
            ticket_ids: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .tickets;
    assert!(history.is_empty(), "{history:?}");
    // Unbound as recycled, every one of them.
    let refs = found
        .accounts
        .iter()
        .map(|a| a.account_ref.clone())
        .collect();
    assert_eq!(unbind(&mut c, &token, refs, "unknown").await.unwrap(), 3);
    let calls = rig.adapter.wait_for_unbinds(4).await;
    for call in &calls[1..] {
        assert_eq!(call.reason, Reason::NumberRecycled as i32, "{call:?}");
    }
    // What this session did, it can read.
    let mine = c
        .get_unbind_tickets(GetUnbindTicketsRequest {
            session_token: token,
            ticket_ids: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .tickets;
    assert_eq!(mine.len(), 3);
    rig.h.stop().await;
}

/// Dates too close to `holder_since`, or in the future, are nobody's; only an account clearly
/// bound after the holder got the number goes to the app as the holder's request. A ref is good
/// only in the session it was shown in.
#[tokio::test]
async fn ownership_is_decided_from_dates_only_when_they_are_clear() {
    let now = chrono::Utc::now().timestamp_millis();
    let rig = Rig::start(
        RegistryBehaviour::new(&[(PHONE, ID_LAST_SIX, Some(HOLDER_SINCE_MS))]),
        vec![
            account("at-since", "same-moment", Some(HOLDER_SINCE_MS)),
            account(
                "just-after",
                "minutes-later",
                Some(HOLDER_SINCE_MS + 600_000),
            ),
            account("future", "tomorrow", Some(now + DAY_MS)),
            account("before", "previous", Some(HOLDER_SINCE_MS - 2 * DAY_MS)),
            account("mine", "clearly-mine", Some(HOLDER_SINCE_MS + 30 * DAY_MS)),
        ],
        Duration::from_millis(50),
    )
    .await;
    let mut c = rig.h.client().await;
    let (token, _) = rig.session(&mut c).await;
    let found = list(&mut c, &token, false).await;
    let by_id = |hint_start: &str| {
        found
            .accounts
            .iter()
            .find(|a| a.display_hint.starts_with(hint_start))
            .unwrap_or_else(|| panic!("{hint_start}: {:?}", found.accounts))
    };
    assert_eq!(by_id("s").ownership(), Ownership::Unknown);
    assert_eq!(by_id("m").ownership(), Ownership::Unknown);
    assert_eq!(by_id("t").ownership(), Ownership::Unknown);
    assert_eq!(by_id("p").ownership(), Ownership::PreviousHolder);
    assert_eq!(by_id("clearly-mine").ownership(), Ownership::CurrentHolder);
    // The gateway masks what the app sent unmasked, for everyone's but the holder's own.
    let mut hints: Vec<&str> = found
        .accounts
        .iter()
        .map(|a| a.display_hint.as_str())
        .collect();
    hints.sort_unstable();
    assert_eq!(hints, ["clearly-mine", "m***r", "p***s", "s***t", "t***w"]);

    // Another session of the same holder cannot use these refs.
    let (other, _) = rig.session(&mut c).await;
    let err = c
        .unbind(UnbindRequest {
            session_token: other,
            account_refs: vec![by_id("clearly-mine").account_ref.clone()],
            idempotency_key: "other-session".into(),
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "INVALID_ACCOUNT_REF");
    assert_eq!(bad_fields(&err), ["account_refs[0]"]);

    let refs = found
        .accounts
        .iter()
        .map(|a| a.account_ref.clone())
        .collect();
    assert_eq!(unbind(&mut c, &token, refs, "all").await.unwrap(), 5);
    let calls = rig.adapter.wait_for_unbinds(5).await;
    for call in calls {
        let expected = if call.account_id == "mine" {
            Reason::HolderRequest
        } else {
            Reason::NumberRecycled
        };
        assert_eq!(call.reason, expected as i32, "{call:?}");
    }
    rig.h.stop().await;
}

/// Ten look-ups asking for the SMS summary send three; the rest answer in full and say that no
/// SMS went out, in the message (unary) or the metadata (stream). The limit is per number, not
/// per session.
#[tokio::test]
async fn summary_sms_are_capped_per_number() {
    summary_sms_cap(None).await;
}

#[tokio::test]
#[cfg_attr(no_database, ignore = "needs DATABASE_URL")]
async fn summary_sms_are_capped_per_number_on_postgres() {
    let url = fresh_postgres_database().await;
    summary_sms_cap(Some(url)).await;
}

async fn summary_sms_cap(store_url: Option<String>) {
    let rig = Rig::start_on(
        store_url,
        RegistryBehaviour::new(&[(PHONE, ID_LAST_SIX, Some(HOLDER_SINCE_MS))]),
        vec![account(
            "a1",
            "someone",
            Some(HOLDER_SINCE_MS + 30 * DAY_MS),
        )],
        Duration::from_millis(50),
    )
    .await;
    let mut c = rig.h.client().await;
    let (token, _) = rig.session(&mut c).await;
    let mut said = Vec::new();
    for _ in 0..10 {
        let answer = list(&mut c, &token, true).await;
        assert_eq!(answer.accounts.len(), 1, "the look-up still answers");
        said.push(answer.summary_sms());
    }
    assert_eq!(said[..3], [SummarySms::Sent; 3]);
    assert_eq!(said[3..], [SummarySms::Limited; 7]);
    // Without asking for an SMS, nothing is said of one.
    assert_eq!(
        list(&mut c, &token, false).await.summary_sms(),
        SummarySms::Unspecified
    );
    // The stream says it in its metadata; a new session of the number is limited too.
    let (token, _) = rig.session(&mut c).await;
    let stream = c
        .stream_linked_accounts(ListLinkedAccountsRequest {
            session_token: token,
            deliver_by_sms: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        stream.metadata().get("unbind-summary-sms").unwrap(),
        "limited"
    );
    let mut stream = stream.into_inner();
    while stream.message().await.unwrap().is_some() {}
    // Wait for the three, then for an SMS sent after all the look-ups: still three.
    let deadline = Instant::now() + Duration::from_secs(10);
    while rig.registry.sms_of(PHONE, "lookup_summary").len() < 3 {
        assert!(Instant::now() < deadline, "the three summaries never came");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rig.session(&mut c).await;
    assert_eq!(rig.registry.sms_of(PHONE, "lookup_summary").len(), 3);
    // An hour later the number may have summaries again.
    rig.h.clock.advance(Duration::from_secs(3601));
    let (token, _) = rig.session(&mut c).await;
    assert_eq!(
        list(&mut c, &token, true).await.summary_sms(),
        SummarySms::Sent
    );
    rig.h.stop().await;
}

/// Someone holding the phone learns a match when a code arrives, so different ID characters
/// tried for one number are watched: over `id_guess_alert_per_hour` the number is reported once
/// (metric, audit) and nobody is refused.
#[tokio::test]
async fn guessing_at_one_numbers_id_is_reported() {
    let h = Harness::start(Options {
        apps: 1,
        tweak: |c| {
            c.verification.id_guess_alert_per_hour = 5;
            with_admin(c);
        },
        ..Options::default()
    })
    .await;
    let mut c = h.client().await;
    for i in 0..9 {
        start_with(&mut c, PHONE, &made_up_id(i)).await.unwrap();
    }
    start_with(&mut c, PHONE, ID_LAST_SIX).await.unwrap();
    let gateway = &h.stack.gateway.as_ref().unwrap().gateway;
    gateway.audit.flush().await;
    let keys = h.stack.config.keyring().unwrap();
    let number = keys
        .number_hash(&unbind_gateway::domain::E164::parse(PHONE).unwrap())
        .hex();
    let alerts: Vec<_> = gateway
        .store
        .audit_records(&unbind_gateway::store::AuditFilter {
            since: 0,
            number_hash: Some(number),
            tenant: None,
            limit: 100,
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.action == "number.id_guessing_alert")
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let (_, metrics) = http_get(admin_addr(&h), "/metrics").await;
    assert_eq!(
        metric(&metrics, "unbind_id_guessing_alerts_total"),
        Some(1.0)
    );
    h.stop().await;
}

/// The operator's opt-in cap on different ID characters per number: past it, a pair not yet
/// tried this hour is refused whether or not it matches (so it reveals nothing), while pairs
/// already tried go on working. The price, said in the config's docs: a stranger who fills it
/// first keeps out a holder who has not started this hour.
#[tokio::test]
async fn an_operator_may_cap_the_id_characters_tried_per_number() {
    let h = Harness::start(Options {
        apps: 1,
        tweak: |c| c.verification.max_ids_per_number_per_hour = Some(3),
        ..Options::default()
    })
    .await;
    let mut c = h.client().await;
    start_with(&mut c, PHONE, ID_LAST_SIX).await.unwrap();
    start_with(&mut c, PHONE, &made_up_id(1)).await.unwrap();
    start_with(&mut c, PHONE, &made_up_id(2)).await.unwrap();
    let err = start_with(&mut c, PHONE, &made_up_id(3)).await.unwrap_err();
    assert_error(&err, Code::ResourceExhausted, "MAX_CODES_EXCEEDED");
    // Already tried: still served, right or wrong.
    start_with(&mut c, PHONE, ID_LAST_SIX).await.unwrap();
    start_with(&mut c, PHONE, &made_up_id(2)).await.unwrap();
    // On another number, the right ID characters as the fourth new pair get the same refusal.
    for i in 10..13 {
        start_with(&mut c, OTHER_PHONE, &made_up_id(i))
            .await
            .unwrap();
    }
    let err = start_with(&mut c, OTHER_PHONE, OTHER_ID).await.unwrap_err();
    assert_error(&err, Code::ResourceExhausted, "MAX_CODES_EXCEEDED");
    // An hour later, room again.
    h.clock.advance(Duration::from_secs(3601));
    start_with(&mut c, OTHER_PHONE, OTHER_ID).await.unwrap();
    h.stop().await;
}
