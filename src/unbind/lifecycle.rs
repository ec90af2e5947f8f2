//! The life of a ticket, in one place. [`call`] says what the next attempt asks the app, and
//! [`next`] turns what it found into the ticket's next state and when to look again; both are
//! pure functions of the ticket's state, the time and its due date, tested without a store. The
//! worker carries out the call and records what `next` returns; nothing else moves a ticket
//! between states, except `Unbind` creating it `QUEUED`, a worker's claim marking it `SENT` as
//! it sends, and a ticket that cannot be sent at all (its app left the catalog, or it cannot be
//! read with the gateway's keys) ending `FAILED`.
//!
//! ```text
//!   QUEUED --claimed--> SENT --DONE--> COMPLETED
//!                        |  \--REJECTED / a permanent error--> REJECTED / FAILED
//!                        |  \--no answer, before the due date--> SENT (again, same key)
//!                        |  \--no answer, at the due date: one status check--> its answer, else FAILED
//!                        \--ACCEPTED--> ACCEPTED --DONE / REJECTED--> COMPLETED / REJECTED
//!                                         |  \--still ACCEPTED or no answer, before the due date--> polled
//!                                         |  \--the same at the due date (the final check)--> FAILED
//!                                         \--NOT_FOUND (the app forgot it)--> SENT again, same key,
//!                                            at most MAX_RESENDS times, then FAILED
//! ```
//!
//! Every ticket ends: each open state either reaches a final state or waits, and every wait ends
//! at the due date, where one status check decides. A ticket is only ever sent under its own id
//! as idempotency key, so a re-send or a retry can never unbind twice.

use crate::store::TicketState;

/// How often a ticket an app accepted and then forgot is sent again before it is given up.
pub const MAX_RESENDS: u32 = 3;

/// What the next attempt asks the app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// `UnbindAccount`, under the ticket's id.
    Send,
    /// `GetUnbindStatus` for the ticket's id (and vendor reference).
    Status,
}

/// What the attempt found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// The app answered `DONE`: the account is unbound.
    Done,
    /// The app answered `ACCEPTED`: it will do it.
    Accepted,
    /// The app answered `REJECTED`: it will not.
    Rejected,
    /// `GetUnbindStatus` answered `NOT_FOUND`: the app knows nothing of this ticket.
    NotFound,
    /// No usable answer a retry may fix: unreachable, timed out, busy, an answer without a state,
    /// or not asked because the app's breaker is open.
    NoAnswer,
    /// The app refused the request itself with an error a retry will not fix.
    Refused,
}

/// When the ticket is looked at again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// Now (the ticket ended, or is to be sent again at once).
    Now,
    /// After the retry backoff, but never after the due date.
    Backoff,
    /// After the status poll interval, but never after the due date.
    Poll,
}

/// Why a ticket is in its state: a code a client puts in its reader's language
/// (`UnbindTicket.state_reason`), kept with the ticket, and the gateway's own words for it
/// (`UnbindTicket.detail` when the app gave none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    AlreadyEnded,
    Unbound,
    RefusedByApp,
    RequestRefused,
    NotConfirmedInTime,
    AcceptedByApp,
    NoAnswerBeforeDue,
    NoAnswerResending,
    NotReceivedBeforeDue,
    NotReceivedSending,
    NoAnswerAsking,
    LostTrack,
    LostTrackResending,
    AppRemoved,
    Unreadable,
}

impl Why {
    /// Every reason: its stored code and its words.
    const ALL: [(Why, &'static str, &'static str); 15] = [
        (Why::AlreadyEnded, "already_ended", "already ended"),
        (Why::Unbound, "unbound", "unbound"),
        (Why::RefusedByApp, "refused_by_app", "refused by the app"),
        (
            Why::RequestRefused,
            "request_refused",
            "the app refused the request",
        ),
        (
            Why::NotConfirmedInTime,
            "not_confirmed_in_time",
            "the app did not confirm in time",
        ),
        (Why::AcceptedByApp, "accepted_by_app", "accepted by the app"),
        (
            Why::NoAnswerBeforeDue,
            "no_answer_before_due",
            "the app did not answer before the due date",
        ),
        (
            Why::NoAnswerResending,
            "no_answer_resending",
            "the app did not answer; sending again",
        ),
        (
            Why::NotReceivedBeforeDue,
            "not_received_before_due",
            "the app did not receive the unbind before the due date",
        ),
        (
            Why::NotReceivedSending,
            "not_received_sending",
            "the app has not received it; sending",
        ),
        (
            Why::NoAnswerAsking,
            "no_answer_asking",
            "the app did not answer; asking again",
        ),
        (
            Why::LostTrack,
            "lost_track",
            "the app lost track of the unbind",
        ),
        (
            Why::LostTrackResending,
            "lost_track_resending",
            "the app lost track of the unbind; sending it again",
        ),
        (
            Why::AppRemoved,
            "app_removed",
            "the app is no longer integrated",
        ),
        (
            Why::Unreadable,
            "unreadable",
            "the ticket's sealed values do not open",
        ),
    ];

    fn entry(self) -> (Why, &'static str, &'static str) {
        Self::ALL
            .into_iter()
            .find(|(why, _, _)| *why == self)
            .unwrap_or((self, "", ""))
    }

    /// The code kept with the ticket.
    pub fn code(self) -> &'static str {
        self.entry().1
    }

    /// The gateway's words for it.
    pub fn words(self) -> &'static str {
        self.entry().2
    }

    /// The reason a kept code names; `None` for `""` (a ticket never attempted, or from before
    /// reasons were kept) or an unknown code.
    pub fn from_code(code: &str) -> Option<Why> {
        Self::ALL
            .into_iter()
            .find(|(_, c, _)| *c == code)
            .map(|(why, _, _)| why)
    }
}

/// The next state, when to look again, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub to: TicketState,
    pub then: Then,
    pub why: Why,
}

fn step(to: TicketState, then: Then, why: Why) -> Step {
    Step { to, then, why }
}

/// What the attempt of a ticket in `state` at `now` asks the app.
pub fn call(state: TicketState, now: i64, due: i64) -> Call {
    match state {
        // Before the due date, (re)sent under its own key; at it, only asked: a send then could
        // start an unbind nobody would follow, and a holder's new request would reach the app
        // under a second key while the first may be in its hands.
        TicketState::Queued | TicketState::Sent if now < due => Call::Send,
        TicketState::Queued | TicketState::Sent => Call::Status,
        // The app has it: only asked how it is going.
        TicketState::Accepted => Call::Status,
        // Final: never attempted; asking is harmless should it happen.
        TicketState::Completed | TicketState::Rejected | TicketState::Failed => Call::Status,
    }
}

/// The ticket's next step, from its state, what the attempt made at `now` found, its due date,
/// and how often it was sent again after the app forgot it.
pub fn next(state: TicketState, found: Found, now: i64, due: i64, resends: u32) -> Step {
    use TicketState::*;
    let due_now = now >= due;
    match (state, found) {
        // A final state never moves.
        (Completed | Rejected | Failed, _) => step(state, Then::Now, Why::AlreadyEnded),

        // The app's own verdicts end the ticket, whatever the state and the time.
        (_, Found::Done) => step(Completed, Then::Now, Why::Unbound),
        (_, Found::Rejected) => step(Rejected, Then::Now, Why::RefusedByApp),
        (_, Found::Refused) => step(Failed, Then::Now, Why::RequestRefused),

        // Accepted: the app will do it, and is polled until the due date. At the due date this
        // was the final check: it did not confirm in time.
        (Queued | Sent | Accepted, Found::Accepted) if due_now => {
            step(Failed, Then::Now, Why::NotConfirmedInTime)
        }
        (Queued | Sent | Accepted, Found::Accepted) => {
            step(Accepted, Then::Poll, Why::AcceptedByApp)
        }

        // Not sent yet, or sent without an answer: sent again under the same key after the
        // backoff. At the due date the attempt was the final status check, which the app could
        // not answer, or to which it said it never received the ticket.
        (Queued | Sent, Found::NoAnswer) if due_now => {
            step(Failed, Then::Now, Why::NoAnswerBeforeDue)
        }
        (Queued | Sent, Found::NoAnswer) => step(Sent, Then::Backoff, Why::NoAnswerResending),
        (Queued | Sent, Found::NotFound) if due_now => {
            step(Failed, Then::Now, Why::NotReceivedBeforeDue)
        }
        // A status query is only made at the due date for these states; should one be answered
        // NOT_FOUND earlier, the ticket is simply sent.
        (Queued | Sent, Found::NotFound) => step(Sent, Then::Now, Why::NotReceivedSending),

        // Accepted, and now the app does not answer: asked again, until the due date.
        (Accepted, Found::NoAnswer) if due_now => step(Failed, Then::Now, Why::NotConfirmedInTime),
        (Accepted, Found::NoAnswer) => step(Accepted, Then::Backoff, Why::NoAnswerAsking),

        // Accepted, then forgotten: sent again with the same key, a bounded number of times and
        // never past the due date.
        (Accepted, Found::NotFound) if due_now || resends >= MAX_RESENDS => {
            step(Failed, Then::Now, Why::LostTrack)
        }
        (Accepted, Found::NotFound) => step(Sent, Then::Now, Why::LostTrackResending),
    }
}

/// When to look again: `backoff` or `poll` after `now`, never after the due date (where the final
/// check is made); at once for [`Then::Now`].
pub fn next_attempt_at(then: Then, now: i64, due: i64, backoff_ms: i64, poll_ms: i64) -> i64 {
    let wait = match then {
        Then::Now => return now,
        Then::Backoff => backoff_ms,
        Then::Poll => poll_ms,
    };
    // A wait that would carry the ticket past its due date ends at it; once due, at once.
    now.saturating_add(wait).min(due.max(now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use TicketState::*;

    const STATES: [TicketState; 6] = [Queued, Sent, Accepted, Completed, Rejected, Failed];
    const FOUND: [Found; 6] = [
        Found::Done,
        Found::Accepted,
        Found::Rejected,
        Found::NotFound,
        Found::NoAnswer,
        Found::Refused,
    ];
    const DUE: i64 = 10_000;

    #[test]
    fn a_send_before_the_due_date_a_status_check_at_it() {
        assert_eq!(call(Queued, 0, DUE), Call::Send);
        assert_eq!(call(Sent, DUE - 1, DUE), Call::Send);
        assert_eq!(call(Sent, DUE, DUE), Call::Status);
        assert_eq!(call(Queued, DUE + 5, DUE), Call::Status);
        assert_eq!(call(Accepted, 0, DUE), Call::Status);
        assert_eq!(call(Accepted, DUE, DUE), Call::Status);
    }

    #[test]
    fn final_states_never_move() {
        for state in [Completed, Rejected, Failed] {
            for found in FOUND {
                for now in [0, DUE, DUE * 2] {
                    assert_eq!(
                        next(state, found, now, DUE, 0).to,
                        state,
                        "{state:?} {found:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_apps_verdicts_end_every_open_ticket_at_any_time() {
        for state in [Queued, Sent, Accepted] {
            for now in [0, DUE, DUE * 2] {
                assert_eq!(next(state, Found::Done, now, DUE, 0).to, Completed);
                assert_eq!(next(state, Found::Rejected, now, DUE, 0).to, Rejected);
                assert_eq!(next(state, Found::Refused, now, DUE, 0).to, Failed);
            }
        }
    }

    #[test]
    fn accepted_is_polled_until_the_due_date_then_fails() {
        for state in [Queued, Sent, Accepted] {
            let s = next(state, Found::Accepted, DUE - 1, DUE, 0);
            assert_eq!((s.to, s.then), (Accepted, Then::Poll));
            let s = next(state, Found::Accepted, DUE, DUE, 0);
            assert_eq!((s.to, s.then), (Failed, Then::Now));
            assert_eq!(s.why.words(), "the app did not confirm in time");
        }
        let s = next(Accepted, Found::NoAnswer, DUE - 1, DUE, 0);
        assert_eq!((s.to, s.then), (Accepted, Then::Backoff));
        assert_eq!(next(Accepted, Found::NoAnswer, DUE, DUE, 0).to, Failed);
    }

    #[test]
    fn an_unanswered_send_is_retried_then_checked_once_at_the_due_date() {
        for state in [Queued, Sent] {
            let s = next(state, Found::NoAnswer, DUE - 1, DUE, 0);
            assert_eq!((s.to, s.then), (Sent, Then::Backoff));
            // At the due date the attempt was the status check (see `call`).
            assert_eq!(call(Sent, DUE, DUE), Call::Status);
            assert_eq!(next(state, Found::NoAnswer, DUE, DUE, 0).to, Failed);
            assert_eq!(next(state, Found::NotFound, DUE, DUE, 0).to, Failed);
            let s = next(state, Found::NotFound, DUE - 1, DUE, 0);
            assert_eq!((s.to, s.then), (Sent, Then::Now));
        }
    }

    #[test]
    fn a_forgotten_ticket_is_sent_again_a_bounded_number_of_times() {
        for resends in 0..MAX_RESENDS {
            let s = next(Accepted, Found::NotFound, 0, DUE, resends);
            assert_eq!((s.to, s.then), (Sent, Then::Now), "{resends}");
        }
        let s = next(Accepted, Found::NotFound, 0, DUE, MAX_RESENDS);
        assert_eq!(s.to, Failed);
        assert_eq!(s.why.words(), "the app lost track of the unbind");
        // Never past the due date.
        assert_eq!(next(Accepted, Found::NotFound, DUE, DUE, 0).to, Failed);
    }

    /// Every (state, finding) at and after the due date ends the ticket, except a state that has
    /// ended already: no open ticket can outlive its due date's attempt.
    #[test]
    fn every_open_ticket_ends_at_its_due_date() {
        for state in STATES.into_iter().filter(|s| s.is_open()) {
            for found in FOUND {
                for resends in [0, MAX_RESENDS] {
                    let s = next(state, found, DUE, DUE, resends);
                    assert!(!s.to.is_open(), "{state:?} {found:?} -> {s:?}");
                    assert_eq!(s.then, Then::Now);
                }
            }
        }
    }

    /// Before the due date an open ticket either ends or waits for a later attempt, which is never
    /// scheduled after the due date.
    #[test]
    fn waits_never_pass_the_due_date() {
        for state in STATES.into_iter().filter(|s| s.is_open()) {
            for found in FOUND {
                let now = DUE - 100;
                let s = next(state, found, now, DUE, 0);
                let at = next_attempt_at(s.then, now, DUE, 60_000, 2_000);
                assert!(at >= now && at <= DUE, "{state:?} {found:?} -> {at}");
            }
        }
        assert_eq!(next_attempt_at(Then::Backoff, 0, DUE, 500, 0), 500);
        assert_eq!(next_attempt_at(Then::Poll, 0, DUE, 0, 2_000), 2_000);
        assert_eq!(next_attempt_at(Then::Poll, DUE - 10, DUE, 0, 2_000), DUE);
        assert_eq!(
            next_attempt_at(Then::Backoff, DUE + 5, DUE, 500, 0),
            DUE + 5
        );
        assert_eq!(next_attempt_at(Then::Now, 7, DUE, 500, 500), 7);
    }
}
