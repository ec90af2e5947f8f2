//! What the pages show, as plain values made from the gateway's answers: pure functions, tested
//! without a gateway. The look-up becomes three groups (a previous holder's accounts, the
//! holder's own, the apps that did not answer, each with its customer-service number) and a
//! count of apps that answered with no account; tickets become rows with their state in words
//! and their due date, and a tally. Words are message keys, dates are written in the visitor's
//! language and the carrier's time zone.

use std::collections::{BTreeSet, HashMap};

use chrono_tz::Tz;
use serde::Serialize;

use crate::domain::natural_cmp;
use crate::proto::app_result::State;
use crate::proto::linked_account::Ownership;
use crate::proto::unbind_ticket::{State as TicketState, StateReason};
use crate::proto::{AppResult, LinkedAccount, UnbindTicket};

use super::i18n::{Messages, to_utc};

/// The accounts of every answer, in the order the page numbers them: a previous holder's (and
/// those nobody can place, treated alike) first, then the holder's own; by app name, then hint.
pub fn order_rows(results: &[AppResult]) -> Vec<LinkedAccount> {
    let mut rows: Vec<LinkedAccount> = results
        .iter()
        .flat_map(|r| r.accounts.iter().cloned())
        .collect();
    rows.sort_by(|a, b| {
        is_previous(a)
            .cmp(&is_previous(b))
            .reverse()
            .then_with(|| natural_cmp(&a.app_name, &b.app_name))
            .then_with(|| a.display_hint.cmp(&b.display_hint))
    });
    rows
}

/// A previous holder's account, or one nobody can place (shown and unbound alike: fail closed).
pub fn is_previous(account: &LinkedAccount) -> bool {
    account.ownership() != Ownership::CurrentHolder
}

/// Whether the row can be ticked: the app unbinds through the gateway, no unbind is under way.
pub fn can_pick(account: &LinkedAccount, asked: bool) -> bool {
    account.unbind_supported && account.open_ticket.is_none() && !asked
}

/// One account on the page.
#[derive(Debug, Serialize)]
pub struct AccountRow {
    /// Its index in the look-up's rows: the checkbox's value.
    pub index: usize,
    pub app: String,
    pub hint: String,
    /// The day it was bound, written out; empty when the app gave none.
    pub bound: String,
    /// Nobody can tell whose it is.
    pub unknown_owner: bool,
    pub can_pick: bool,
    /// An unbind is under way (this visit's or an earlier one).
    pub under_way: bool,
    /// The app does not unbind through the gateway: its customer service.
    pub not_here: bool,
    pub contact: String,
}

/// An app that did not answer.
#[derive(Debug, Serialize)]
pub struct SilentApp {
    pub app: String,
    /// The message key of how it failed.
    pub state_key: &'static str,
    pub contact: String,
}

/// The accounts page's content.
#[derive(Debug, Serialize)]
pub struct AccountsView {
    pub previous: Vec<AccountRow>,
    pub yours: Vec<AccountRow>,
    pub silent: Vec<SilentApp>,
    /// Apps that answered with no account.
    pub empty_apps: u64,
    /// Apps that answered so far (or at all).
    pub answered: usize,
    /// A previous holder's accounts that can be ticked.
    pub pickable_previous: usize,
    /// Accounts that can be ticked.
    pub pickable: usize,
}

/// The page's groups from the apps' answers (`rows` as [`order_rows`] made them).
pub fn accounts_view(
    results: &[AppResult],
    rows: &[LinkedAccount],
    asked: &BTreeSet<usize>,
    m: &Messages,
    tz: Tz,
) -> AccountsView {
    let contacts: HashMap<&str, &str> = results
        .iter()
        .map(|r| (r.app_id.as_str(), r.customer_service.as_str()))
        .collect();
    let (mut previous, mut yours) = (Vec::new(), Vec::new());
    for (index, account) in rows.iter().enumerate() {
        let pick = can_pick(account, asked.contains(&index));
        let row = AccountRow {
            index,
            app: display_name(&account.app_name, &account.app_id),
            hint: account.display_hint.clone(),
            bound: to_utc(account.bound_at.as_ref())
                .map(|at| m.day(at, tz))
                .unwrap_or_default(),
            unknown_owner: account.ownership() != Ownership::CurrentHolder
                && account.ownership() != Ownership::PreviousHolder,
            can_pick: pick,
            under_way: account.open_ticket.is_some() || asked.contains(&index),
            not_here: !account.unbind_supported,
            contact: contacts
                .get(account.app_id.as_str())
                .map(|c| c.to_string())
                .unwrap_or_default(),
        };
        if is_previous(account) {
            previous.push(row);
        } else {
            yours.push(row);
        }
    }
    let mut silent: Vec<SilentApp> = results
        .iter()
        .filter(|r| r.state() != State::Answered)
        .map(|r| SilentApp {
            app: display_name(&r.app_name, &r.app_id),
            state_key: match r.state() {
                State::TimedOut => "accounts.state_timed_out",
                State::Unavailable => "accounts.state_unavailable",
                State::Failed => "accounts.state_failed",
                State::SkippedCircuitOpen => "accounts.state_circuit_open",
                _ => "accounts.state_unknown",
            },
            contact: r.customer_service.clone(),
        })
        .collect();
    silent.sort_by(|a, b| natural_cmp(&a.app, &b.app));
    let answered = results
        .iter()
        .filter(|r| r.state() == State::Answered)
        .count();
    let empty_apps = results
        .iter()
        .filter(|r| r.state() == State::Answered && r.account_count == 0)
        .count() as u64;
    AccountsView {
        pickable_previous: previous.iter().filter(|r| r.can_pick).count(),
        pickable: previous.iter().chain(&yours).filter(|r| r.can_pick).count(),
        previous,
        yours,
        silent,
        empty_apps,
        answered,
    }
}

/// The rows "all of the previous holder's" means: every previous holder's account that can be
/// ticked.
pub fn all_previous(rows: &[LinkedAccount], asked: &BTreeSet<usize>) -> Vec<usize> {
    rows.iter()
        .enumerate()
        .filter(|(i, a)| is_previous(a) && can_pick(a, asked.contains(i)))
        .map(|(i, _)| i)
        .collect()
}

/// The ticked rows that can be unbound, each once, in page order; anything else is dropped.
pub fn ticked<'a>(
    values: impl Iterator<Item = &'a str>,
    rows: &[LinkedAccount],
    asked: &BTreeSet<usize>,
) -> Vec<usize> {
    let chosen: BTreeSet<usize> = values
        .filter_map(|v| v.trim().parse::<usize>().ok())
        .filter(|&i| rows.get(i).is_some_and(|a| can_pick(a, asked.contains(&i))))
        .collect();
    chosen.into_iter().collect()
}

/// One ticket on the page.
#[derive(Debug, Serialize)]
pub struct TicketRow {
    pub app: String,
    pub hint: String,
    pub state_key: &'static str,
    /// "ok", "bad" or "open": how the row is marked (beside the words).
    pub tone: &'static str,
    pub due: String,
    pub overdue: bool,
    /// Why it is where it is, as a message key (`tickets.reason_*`), when the gateway said.
    pub reason_key: Option<&'static str>,
    /// The app's own words, as it gave them (or, for a ticket the gateway gave no reason for,
    /// its detail).
    pub detail: String,
}

/// The message key that says a ticket's reason, if it has one.
fn reason_key(reason: StateReason) -> Option<&'static str> {
    Some(match reason {
        StateReason::Unspecified => return None,
        // The state ("unbound") says it all.
        StateReason::Unbound => return None,
        StateReason::RefusedByApp => "tickets.reason_refused_by_app",
        StateReason::RequestRefused => "tickets.reason_request_refused",
        StateReason::NotConfirmedInTime => "tickets.reason_not_confirmed_in_time",
        StateReason::AcceptedByApp => "tickets.reason_accepted_by_app",
        StateReason::NoAnswerBeforeDue => "tickets.reason_no_answer_before_due",
        StateReason::NoAnswerResending => "tickets.reason_no_answer_resending",
        StateReason::NotReceivedBeforeDue => "tickets.reason_not_received_before_due",
        StateReason::NotReceivedSending => "tickets.reason_not_received_sending",
        StateReason::NoAnswerAsking => "tickets.reason_no_answer_asking",
        StateReason::LostTrack => "tickets.reason_lost_track",
        StateReason::LostTrackResending => "tickets.reason_lost_track_resending",
        StateReason::AppRemoved => "tickets.reason_app_removed",
        StateReason::Unreadable => "tickets.reason_unreadable",
    })
}

/// The tickets page's content.
#[derive(Debug, Serialize)]
pub struct TicketsView {
    pub rows: Vec<TicketRow>,
    pub open: u64,
    pub completed: u64,
    pub rejected: u64,
    pub failed: u64,
    /// Every ticket has ended.
    pub done: bool,
}

/// Whether a ticket's state is final.
pub fn is_final(state: TicketState) -> bool {
    matches!(
        state,
        TicketState::Completed | TicketState::Rejected | TicketState::Failed
    )
}

/// The page's rows and tally from the tickets.
pub fn tickets_view(tickets: &[UnbindTicket], m: &Messages, tz: Tz) -> TicketsView {
    let count = |s: TicketState| tickets.iter().filter(|t| t.state() == s).count() as u64;
    let rows = tickets
        .iter()
        .map(|t| {
            let (state_key, tone) = match t.state() {
                TicketState::Queued => ("tickets.state_queued", "open"),
                TicketState::Sent => ("tickets.state_sent", "open"),
                TicketState::Accepted => ("tickets.state_accepted", "open"),
                TicketState::Completed => ("tickets.state_completed", "ok"),
                TicketState::Rejected => ("tickets.state_rejected", "bad"),
                TicketState::Failed => ("tickets.state_failed", "bad"),
                TicketState::Unspecified => ("tickets.state_unknown", "open"),
            };
            TicketRow {
                app: display_name(&t.app_name, &t.app_id),
                hint: t.display_hint.clone(),
                state_key,
                tone,
                due: to_utc(t.due_at.as_ref())
                    .map(|at| m.time(at, tz))
                    .unwrap_or_default(),
                overdue: t.overdue,
                reason_key: reason_key(t.state_reason()),
                // "Done" says nothing the state does not. Otherwise the app's own words are
                // shown as they are; the gateway's (English) words only when it gave no reason
                // to say in the reader's language (a ticket from before reasons were kept).
                detail: if t.state() == TicketState::Completed
                    || !(t.detail_from_app || reason_key(t.state_reason()).is_none())
                {
                    String::new()
                } else {
                    t.detail.chars().filter(|c| !c.is_control()).collect()
                },
            }
        })
        .collect();
    let open = tickets.iter().filter(|t| !is_final(t.state())).count() as u64;
    TicketsView {
        rows,
        open,
        completed: count(TicketState::Completed),
        rejected: count(TicketState::Rejected),
        failed: count(TicketState::Failed),
        done: open == 0 && !tickets.is_empty(),
    }
}

/// The app's name, or its id when the catalog gave none.
fn display_name(name: &str, id: &str) -> String {
    let name: String = name.chars().filter(|c| !c.is_control()).collect();
    if name.trim().is_empty() {
        id.to_owned()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portal::i18n::Locale;

    fn account(app: &str, hint: &str, ownership: Ownership, supported: bool) -> LinkedAccount {
        LinkedAccount {
            app_id: app.to_lowercase(),
            app_name: app.to_owned(),
            account_ref: format!("ref-{app}-{hint}"),
            display_hint: hint.to_owned(),
            bound_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000 / 86_400 * 86_400,
                nanos: 0,
            }),
            ownership: ownership as i32,
            unbind_supported: supported,
            open_ticket: None,
        }
    }

    fn result(app: &str, state: State, accounts: Vec<LinkedAccount>) -> AppResult {
        AppResult {
            app_id: app.to_lowercase(),
            app_name: app.to_owned(),
            state: state as i32,
            account_count: accounts.len() as u32,
            customer_service: format!("400-{app}"),
            accounts,
            ..Default::default()
        }
    }

    #[test]
    fn groups_a_previous_holders_the_holders_and_the_silent_apps() {
        let results = vec![
            result(
                "Bank 10",
                State::Answered,
                vec![
                    account("Bank 10", "l***i", Ownership::CurrentHolder, true),
                    account("Bank 10", "w***u", Ownership::PreviousHolder, true),
                ],
            ),
            result(
                "Bank 2",
                State::Answered,
                vec![
                    account("Bank 2", "z***g", Ownership::Unknown, true),
                    account("Bank 2", "q***n", Ownership::PreviousHolder, false),
                ],
            ),
            result("Slow", State::TimedOut, vec![]),
            result("Empty", State::Answered, vec![]),
        ];
        let rows = order_rows(&results);
        let hints: Vec<&str> = rows.iter().map(|r| r.display_hint.as_str()).collect();
        assert_eq!(hints, ["q***n", "z***g", "w***u", "l***i"]);
        let tz: Tz = "Asia/Shanghai".parse().unwrap();
        let asked = BTreeSet::from([2]);
        let view = accounts_view(&results, &rows, &asked, Locale::En.messages(), tz);
        assert_eq!(view.previous.len(), 3);
        assert_eq!(view.yours.len(), 1);
        assert!(view.previous[1].unknown_owner && view.previous[1].can_pick);
        assert!(view.previous[0].not_here && !view.previous[0].can_pick);
        assert_eq!(view.previous[0].contact, "400-Bank 2");
        assert!(view.previous[2].under_way && !view.previous[2].can_pick);
        assert_eq!(view.previous[1].bound, "14 November 2023");
        assert_eq!(view.silent.len(), 1);
        assert_eq!(view.silent[0].state_key, "accounts.state_timed_out");
        assert_eq!(view.silent[0].contact, "400-Slow");
        // The app that did not answer is not among those with no account.
        assert_eq!((view.empty_apps, view.answered), (1, 3));
        assert_eq!((view.pickable_previous, view.pickable), (1, 2));

        assert_eq!(all_previous(&rows, &asked), [1]);
        let values = ["3", "0", "1", "3", "x", "99", "2"];
        assert_eq!(ticked(values.into_iter(), &rows, &asked), [1, 3]);
    }

    #[test]
    fn tickets_have_words_dates_and_a_tally() {
        let ticket = |state: TicketState| UnbindTicket {
            ticket_id: "tkt_1".into(),
            app_id: "bank-2".into(),
            app_name: String::new(),
            display_hint: "z***g".into(),
            state: state as i32,
            detail: "ok\u{7}".into(),
            due_at: Some(prost_types::Timestamp {
                seconds: 1_796_675_400,
                nanos: 0,
            }),
            ..Default::default()
        };
        let tz: Tz = "Asia/Shanghai".parse().unwrap();
        let m = Locale::En.messages();
        let view = tickets_view(
            &[
                ticket(TicketState::Completed),
                ticket(TicketState::Accepted),
            ],
            m,
            tz,
        );
        assert_eq!(view.rows[0].app, "bank-2");
        assert_eq!(
            view.rows[0].detail, "",
            "a completed ticket needs no detail"
        );
        assert_eq!(view.rows[1].detail, "ok", "control characters removed");
        // With a reason: said in the reader's words, and the detail shown only when the app
        // wrote it.
        let with_reason = |state: TicketState, reason: StateReason, from_app: bool| UnbindTicket {
            state_reason: reason as i32,
            detail_from_app: from_app,
            detail: "the gateway's or the app's words".into(),
            ..ticket(state)
        };
        let worded = tickets_view(
            &[
                with_reason(TicketState::Sent, StateReason::NoAnswerResending, false),
                with_reason(TicketState::Rejected, StateReason::RefusedByApp, true),
            ],
            Locale::Zh.messages(),
            tz,
        );
        assert_eq!(
            worded.rows[0].reason_key,
            Some("tickets.reason_no_answer_resending")
        );
        assert_eq!(
            worded.rows[0].detail, "",
            "the gateway's English is not shown"
        );
        assert_eq!(
            worded.rows[1].reason_key,
            Some("tickets.reason_refused_by_app")
        );
        assert_eq!(worded.rows[1].detail, "the gateway's or the app's words");
        assert_eq!(view.rows[0].state_key, "tickets.state_completed");
        assert!(view.rows[1].due.contains("2026"), "{}", view.rows[1].due);
        assert_eq!((view.open, view.completed, view.done), (1, 1, false));
        let view = tickets_view(
            &[ticket(TicketState::Completed), ticket(TicketState::Failed)],
            m,
            tz,
        );
        assert!(view.done);
        assert_eq!((view.completed, view.failed), (1, 1));
        assert!(!tickets_view(&[], m, tz).done);
    }
}
