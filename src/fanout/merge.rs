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
            let bound_at_ms = a.bound_at.as_ref().map(ms_from_timestamp);
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
        Err(CallError::Failed(_)) => (State::Failed, 0),
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
    use crate::{cli::demo::demo_config, config::AppConfig, domain::E164};

    /// One app's answer of three accounts, given at `answered_ms`, and the catalog it is from.
    fn answer(answered_ms: i64) -> AppOutcome {
        let app = AppConfig {
            id: "app-001".into(),
            name: "Sim Pay".into(),
            category: "payments".into(),
            customer_service: String::new(),
            // Channels connect lazily: nothing is contacted.
            endpoint: "http://127.0.0.1:1".into(),
            timeout: None,
            concurrency: None,
            unbind_deadline: None,
            enabled: true,
            tls_ca: None,
            tls_server_name: None,
        };
        let config = demo_config(
            ([127, 0, 0, 1], 0).into(),
            &std::env::temp_dir(),
            "http://127.0.0.1:1",
            vec![app],
        );
        let catalog = super::super::Catalog::new(
            &config,
            super::super::FanoutMetrics::register(&crate::metrics::Metrics::new()),
        )
        .unwrap();
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
