//! Turning per-app answers into what the caller sees: ownership from the binding date, masked
//! hints, sealed account refs, and each app's result line.

use std::collections::HashMap;

use crate::{
    clock::{ms_from_timestamp, timestamp_from_ms},
    proto::{
        AdapterAccount, AppResult, LinkedAccount, UnbindTicket, app_result::State, linked_account,
    },
    security::{AccountRef, Keys, NumberHash, Ownership, OwnershipRule},
};

use super::{AppOutcome, CallError};

/// What every account of one look-up shares.
pub struct MergeContext<'a> {
    pub keys: &'a Keys,
    pub number: &'a NumberHash,
    /// The session the accounts are shown to: their refs are good for it only.
    pub session_id: &'a str,
    /// When the current holder got the number; `None` when the registry did not say.
    pub holder_since_ms: Option<i64>,
    pub ownership: OwnershipRule,
    pub now_ms: i64,
    /// Open unbind tickets of this number, by account key.
    pub open_tickets: &'a HashMap<String, UnbindTicket>,
    /// When an unbind of this number's accounts completed, by account key.
    pub unbound_at: &'a HashMap<String, i64>,
}

/// Drops from an app's answer the accounts unbound since the app gave it (an answer cached
/// before the unbind completed, perhaps on another replica); true if it dropped any, so the
/// caller can forget the stale answer.
pub fn drop_unbound(ctx: &MergeContext<'_>, outcome: &mut AppOutcome) -> bool {
    let Ok(found) = &outcome.result else {
        return false;
    };
    if ctx.unbound_at.is_empty() || found.is_empty() {
        return false;
    }
    let unbound_since_answer = |a: &AdapterAccount| {
        let key = ctx
            .keys
            .account_key(ctx.number, outcome.app.id.as_str(), &a.account_id);
        ctx.unbound_at
            .get(&key)
            .is_some_and(|&at| at >= outcome.answered_ms)
    };
    if !found.iter().any(unbound_since_answer) {
        return false;
    }
    let kept: Vec<AdapterAccount> = found
        .iter()
        .filter(|a| !unbound_since_answer(a))
        .cloned()
        .collect();
    outcome.result = Ok(super::accounts(kept));
    true
}

/// Longest hint passed through for the holder's own accounts.
const MAX_HINT_CHARS: usize = 32;

/// Masks a hint to its first and last character, e.g. `zhang` → `z***g`.
pub fn mask_hint(hint: &str) -> String {
    let chars: Vec<char> = hint.chars().filter(|c| !c.is_control()).collect();
    match chars.as_slice() {
        [first, .., last] if chars.len() >= 3 => format!("{first}***{last}"),
        _ => "***".to_owned(),
    }
}

/// The start of the (UTC) day `ms` falls in: a date without the time of day.
fn day_of(ms: i64) -> i64 {
    const DAY_MS: i64 = 86_400_000;
    ms - ms.rem_euclid(DAY_MS)
}

fn to_proto(o: Ownership) -> linked_account::Ownership {
    match o {
        Ownership::CurrentHolder => linked_account::Ownership::CurrentHolder,
        Ownership::PreviousHolder => linked_account::Ownership::PreviousHolder,
        Ownership::Unknown => linked_account::Ownership::Unknown,
    }
}

/// One app's accounts as the caller sees them.
pub fn linked_accounts(
    ctx: &MergeContext<'_>,
    outcome: &AppOutcome,
    accounts: &[AdapterAccount],
) -> Vec<LinkedAccount> {
    let app = &outcome.app;
    accounts
        .iter()
        .map(|a| {
            let bound_at_ms = a
                .bound_at
                .as_ref()
                .map(ms_from_timestamp)
                .filter(|&at| super::answer::plausible_date(at, ctx.now_ms));
            let ownership = ctx
                .ownership
                .decide(bound_at_ms, ctx.holder_since_ms, ctx.now_ms);
            // A previous holder's account, or one nobody can place, shows only app, masked hint
            // and the day it was bound; the adapter's hint is masked again in case the app
            // masked too little.
            let (display_hint, shown_bound_at) = match ownership {
                Ownership::PreviousHolder | Ownership::Unknown => {
                    (mask_hint(&a.display_hint), bound_at_ms.map(day_of))
                }
                Ownership::CurrentHolder => (
                    a.display_hint.chars().take(MAX_HINT_CHARS).collect(),
                    bound_at_ms,
                ),
            };
            let open_ticket = if ctx.open_tickets.is_empty() {
                None
            } else {
                let key = ctx
                    .keys
                    .account_key(ctx.number, app.id.as_str(), &a.account_id);
                ctx.open_tickets.get(&key).cloned()
            };
            LinkedAccount {
                app_id: app.id.to_string(),
                app_name: app.name.clone(),
                account_ref: AccountRef::new(
                    app.id.as_str(),
                    &a.account_id,
                    ctx.number,
                    ctx.session_id,
                    bound_at_ms,
                    a.unbind_supported,
                )
                .with_hint(&display_hint)
                .seal(ctx.keys),
                display_hint,
                bound_at: shown_bound_at.map(timestamp_from_ms),
                ownership: to_proto(ownership) as i32,
                unbind_supported: a.unbind_supported,
                open_ticket,
            }
        })
        .collect()
}

/// The result line of one app; `accounts` only in the stream.
pub fn app_result(outcome: &AppOutcome, accounts: Vec<LinkedAccount>) -> AppResult {
    let (state, account_count) = match &outcome.result {
        Ok(a) => (State::Answered, a.len() as u32),
        Err(CallError::TimedOut | CallError::CallerDeadline) => (State::TimedOut, 0),
        Err(CallError::Unavailable) => (State::Unavailable, 0),
        Err(CallError::Failed(_) | CallError::Refused(_)) => (State::Failed, 0),
        Err(CallError::CircuitOpen) => (State::SkippedCircuitOpen, 0),
    };
    AppResult {
        app_id: outcome.app.id.to_string(),
        state: state as i32,
        account_count,
        from_cache: outcome.from_cache,
        latency_ms: outcome.latency.as_millis().min(u128::from(u32::MAX)) as u32,
        customer_service: outcome.app.customer_service.clone(),
        accounts,
        app_name: outcome.app.name.clone(),
        reason: outcome
            .result
            .as_ref()
            .err()
            .map(CallError::reason)
            .unwrap_or_default(),
    }
}

/// A one-line summary for the holder's SMS.
pub fn sms_summary(results: &[AppResult], previous_holder_accounts: usize) -> String {
    let answered = results
        .iter()
        .filter(|r| r.state == State::Answered as i32)
        .count();
    let total: u32 = results.iter().map(|r| r.account_count).sum();
    let with_accounts = results.iter().filter(|r| r.account_count > 0).count();
    let previous = previous_holder_accounts;
    let mut text = format!("Your number is bound to {total} accounts in {with_accounts} apps");
    if previous > 0 {
        text.push_str(&format!(" ({previous} bound before you got the number)"));
    }
    text.push('.');
    let missing = results.len() - answered;
    if missing > 0 {
        text.push_str(&format!(" {missing} apps did not answer; try again later."));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;
    use crate::{config::AppConfig, domain::E164, testkit::stack::offline_catalog};

    /// One app's answer of three accounts, given at `answered_ms`, and the catalog it is from.
    fn answer(answered_ms: i64) -> AppOutcome {
        let app = AppConfig {
            category: "payments".into(),
            ..AppConfig::new("app-001", "Sim Pay", "http://127.0.0.1:1")
        };
        let catalog = offline_catalog(vec![app]).unwrap();
        let accounts = ["a-1", "a-2", "a-3"]
            .map(|id| AdapterAccount {
                account_id: id.into(),
                ..Default::default()
            })
            .to_vec();
        AppOutcome {
            app: Arc::clone(&catalog.snapshot().all()[0]),
            result: Ok(super::super::accounts(accounts)),
            from_cache: true,
            answered_ms,
            latency: Duration::ZERO,
        }
    }

    const DAY: i64 = 86_400_000;
    /// When the holder got the number: 2024-03-01.
    const SINCE: i64 = 1_709_251_200_000;

    #[tokio::test]
    async fn accounts_are_shown_by_ownership() {
        let keys = Keys::derive(b"merge-test-secret-0123456789abcdef");
        let number = keys.number_hash(&E164::parse("+8613800138000").unwrap());
        let outcome = answer(SINCE + 40 * DAY);
        let at = |ms: i64| Some(timestamp_from_ms(ms));
        let accounts = vec![
            // Bound 10 days after the holder got the number, at 10:00: theirs.
            AdapterAccount {
                account_id: "mine".into(),
                display_hint: "zhangsan".into(),
                bound_at: at(SINCE + 10 * DAY + 36_000_000),
                unbind_supported: true,
            },
            // Bound the year before: a previous holder's.
            AdapterAccount {
                account_id: "theirs".into(),
                display_hint: "lisi-wang".into(),
                bound_at: at(SINCE - 365 * DAY + 36_000_000),
                unbind_supported: false,
            },
            // No date: nobody can tell.
            AdapterAccount {
                account_id: "nobody".into(),
                display_hint: "x".repeat(40),
                bound_at: None,
                unbind_supported: true,
            },
        ];
        let ticket = UnbindTicket {
            ticket_id: "tkt_1".into(),
            ..Default::default()
        };
        let open: HashMap<String, UnbindTicket> =
            [(keys.account_key(&number, "app-001", "mine"), ticket.clone())].into();
        let unbound = HashMap::new();
        let ctx = MergeContext {
            keys: &keys,
            number: &number,
            session_id: "ses_x",
            holder_since_ms: Some(SINCE),
            ownership: OwnershipRule { margin_ms: DAY },
            now_ms: SINCE + 50 * DAY,
            open_tickets: &open,
            unbound_at: &unbound,
        };
        let shown = linked_accounts(&ctx, &outcome, &accounts);
        use linked_account::Ownership as O;
        let owners: Vec<i32> = shown.iter().map(|a| a.ownership).collect();
        assert_eq!(
            owners,
            [
                O::CurrentHolder as i32,
                O::PreviousHolder as i32,
                O::Unknown as i32
            ]
        );
        let hints: Vec<&str> = shown.iter().map(|a| a.display_hint.as_str()).collect();
        assert_eq!(hints, ["zhangsan", "l***g", "x***x"]);
        // The holder's own account keeps its time; the others show the day only.
        assert_eq!(shown[0].bound_at, at(SINCE + 10 * DAY + 36_000_000));
        assert_eq!(shown[1].bound_at, at(SINCE - 365 * DAY));
        assert_eq!(shown[2].bound_at, None);
        assert_eq!(shown[0].open_ticket, Some(ticket));
        assert_eq!(shown[1].open_ticket, None);
        let supported: Vec<bool> = shown.iter().map(|a| a.unbind_supported).collect();
        assert_eq!(supported, [true, false, true]);
        for a in &shown {
            assert_eq!(
                (a.app_id.as_str(), a.app_name.as_str()),
                ("app-001", "Sim Pay")
            );
            let r = AccountRef::open(&keys, &a.account_ref).expect("a sealed ref");
            assert_eq!(r.session, "ses_x");
        }
        let ids: Vec<String> = shown
            .iter()
            .map(|a| AccountRef::open(&keys, &a.account_ref).unwrap().account_id)
            .collect();
        assert_eq!(ids, ["mine", "theirs", "nobody"]);
    }

    #[tokio::test]
    async fn an_app_result_tells_how_the_app_answered() {
        let mut outcome = answer(SINCE);
        outcome.latency = Duration::from_millis(42);
        let r = app_result(&outcome, Vec::new());
        assert_eq!(
            (
                r.app_id.as_str(),
                r.app_name.as_str(),
                r.state,
                r.account_count
            ),
            ("app-001", "Sim Pay", State::Answered as i32, 3)
        );
        assert!(r.from_cache);
        assert_eq!(r.latency_ms, 42);
        for (error, state) in [
            (CallError::TimedOut, State::TimedOut),
            (CallError::CallerDeadline, State::TimedOut),
            (CallError::Unavailable, State::Unavailable),
            (CallError::Failed(tonic::Code::Internal), State::Failed),
            (CallError::CircuitOpen, State::SkippedCircuitOpen),
        ] {
            outcome.result = Err(error);
            let r = app_result(&outcome, Vec::new());
            assert_eq!((r.state, r.account_count), (state as i32, 0));
        }
    }

    #[test]
    fn the_sms_summary_counts_accounts_apps_and_silences() {
        let result = |state: State, account_count| AppResult {
            state: state as i32,
            account_count,
            ..Default::default()
        };
        let all = [
            result(State::Answered, 2),
            result(State::Answered, 0),
            result(State::Answered, 1),
        ];
        assert_eq!(
            sms_summary(&all, 0),
            "Your number is bound to 3 accounts in 2 apps."
        );
        let some = [
            result(State::Answered, 2),
            result(State::TimedOut, 0),
            result(State::Failed, 0),
        ];
        assert_eq!(
            sms_summary(&some, 1),
            "Your number is bound to 2 accounts in 1 apps (1 bound before you got the number). \
             2 apps did not answer; try again later."
        );
    }

    #[tokio::test]
    async fn accounts_unbound_since_the_answer_are_dropped_and_reported() {
        let keys = Keys::derive(b"merge-test-secret-0123456789abcdef");
        let number = keys.number_hash(&E164::parse("+8613800138000").unwrap());
        let key = |id: &str| keys.account_key(&number, "app-001", id);
        let open = HashMap::new();
        let ids = |o: &AppOutcome| -> Vec<String> {
            o.result
                .as_ref()
                .unwrap()
                .iter()
                .map(|a| a.account_id.clone())
                .collect()
        };
        let run = |unbound_at: &HashMap<String, i64>, outcome: &mut AppOutcome| {
            let ctx = MergeContext {
                keys: &keys,
                number: &number,
                session_id: "ses_x",
                holder_since_ms: None,
                ownership: OwnershipRule { margin_ms: 0 },
                now_ms: 2_000,
                open_tickets: &open,
                unbound_at,
            };
            drop_unbound(&ctx, outcome)
        };
        // Unbound after the answer (at it, too): dropped.
        let after: HashMap<String, i64> = [(key("a-2"), 1_500), (key("a-3"), 1_000)].into();
        let mut outcome = answer(1_000);
        assert!(run(&after, &mut outcome));
        assert_eq!(ids(&outcome), ["a-1"]);
        // Unbound before the answer (the app already left it out, or bound it again): kept.
        let before: HashMap<String, i64> = [(key("a-2"), 999)].into();
        let mut outcome = answer(1_000);
        assert!(!run(&before, &mut outcome));
        assert_eq!(ids(&outcome), ["a-1", "a-2", "a-3"]);
        // Nothing unbound: nothing to do.
        let mut outcome = answer(1_000);
        assert!(!run(&HashMap::new(), &mut outcome));
        assert_eq!(ids(&outcome).len(), 3);
    }

    #[test]
    fn hints_are_masked_to_first_and_last() {
        assert_eq!(mask_hint("zhang"), "z***g");
        assert_eq!(mask_hint("张三丰"), "张***丰");
        assert_eq!(mask_hint("ab"), "***");
        assert_eq!(mask_hint(""), "***");
    }

    #[test]
    fn days_drop_the_time_of_day() {
        assert_eq!(day_of(1_709_251_200_000 + 3_600_123), 1_709_251_200_000);
        assert_eq!(day_of(1_709_251_200_000), 1_709_251_200_000);
        assert_eq!(day_of(-1), -86_400_000);
    }

    #[test]
    fn timestamps_round_trip() {
        assert_eq!(
            ms_from_timestamp(&timestamp_from_ms(1_709_251_200_123)),
            1_709_251_200_123
        );
        assert_eq!(ms_from_timestamp(&timestamp_from_ms(-1)), -1);
    }
}
