//! The ticket worker: each replica runs one, on the job loop ([`crate::jobs`]). It claims due
//! tickets (a lease in the store, so a crashed replica's tickets are taken over when the lease
//! runs out), sends each to its app through the app's client with
//! the ticket's own idempotency key, polls accepted ones, retries transient failures with
//! exponential backoff until the due date, and records every transition.
//!
//! A ticket is never lost: it is in the store before `Unbind` answers, and it leaves the open
//! states only through a recorded transition. It is never sent under two keys: the key is the
//! ticket id, whoever sends it and however often. A worker that lost its lease cannot record
//! anything (every write is fenced on the lease owner).

use std::sync::Arc;

use tokio::sync::{Notify, watch};
use tonic::Code;

use crate::critical::CriticalTasks;
use crate::{
    clock::Clock,
    config::UnbindConfig,
    domain::{AppId, E164},
    fanout::{App, Catalog, Gate, LookupCache, RpcError, answer},
    jobs::{self, Done, Jobs, LoopSettings},
    proto::{
        GetUnbindStatusRequest, UnbindAccountRequest, UnbindAccountResponse,
        unbind_account_response::State as AppState,
    },
    security::{Keys, NumberHash, SealFor, random_id},
    store::{Finished, Store, TicketRow, TicketState},
};

use super::lifecycle::{self, Call, Found, Step};
use super::notify::{Outcome, OutcomeNotifier};

/// Everything the worker needs.
pub struct Worker {
    pub(crate) store: Store,
    pub(crate) keys: Arc<Keys>,
    pub(crate) clock: Clock,
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) cache: Arc<LookupCache>,
    pub(crate) notifier: OutcomeNotifier,
    pub(crate) config: UnbindConfig,
    pub(crate) wake: Arc<Notify>,
    pub(crate) metrics: super::metrics::TicketMetrics,
    /// This worker's lease-owner name, unique per process.
    pub(crate) owner: String,
    /// Spawns its recorder.
    pub(crate) critical: CriticalTasks,
}

/// What one attempt decided.
pub struct Decision {
    to: TicketState,
    /// [`lifecycle::Why::code`], or the ticket's own when it does not move.
    state_reason: String,
    detail: String,
    /// `detail` is the app's own text.
    detail_from_app: bool,
    vendor_ref: String,
    next_attempt_at: i64,
    cause: String,
}

impl Worker {
    /// Runs the job loop ([`crate::jobs::run`]) until `shutdown` turns true; then in-flight
    /// tickets get `shutdown_grace`, their outcomes are recorded, and every lease still held is
    /// released so another replica carries on at once.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let settings =
            LoopSettings::from_config(&self.owner, self.config.worker_concurrency, &self.config);
        let (clock, wake) = (self.clock.clone(), Arc::clone(&self.wake));
        let critical = self.critical.clone();
        jobs::run(self, clock, settings, wake, shutdown, critical).await;
    }
}

impl Jobs for Worker {
    type Job = TicketRow;
    type Outcome = Decision;
    const KIND: &'static str = "tickets";
    const RECORDER: &'static str = "ticket recorder";

    async fn claim(
        &self,
        lease: &str,
        now: i64,
        lease_until: i64,
        limit: usize,
    ) -> sqlx::Result<Vec<TicketRow>> {
        self.store
            .claim_tickets(lease, now, lease_until, limit as i64)
            .await
    }

    async fn attempt(&self, ticket: &TicketRow) -> Decision {
        self.attempt_ticket(ticket).await
    }

    /// Writes the outcomes in one transaction, then does what final states call for.
    async fn record(&self, done: &[Done<TicketRow, Decision>]) {
        let finished: Vec<Finished<'_>> = done
            .iter()
            .map(|d| Finished {
                ticket: &d.job,
                lease: &d.lease,
                to: d.outcome.to,
                state_reason: &d.outcome.state_reason,
                detail: &d.outcome.detail,
                detail_from_app: d.outcome.detail_from_app,
                vendor_ref: &d.outcome.vendor_ref,
                next_attempt_at: d.outcome.next_attempt_at,
                cause: &d.outcome.cause,
            })
            .collect();
        match self
            .store
            .finish_attempts(&finished, self.clock.now_ms())
            .await
        {
            Ok(recorded) => {
                if recorded.len() < finished.len() {
                    tracing::warn!(
                        lost = finished.len() - recorded.len(),
                        "leases lost; other workers have those tickets"
                    );
                }
                for Done {
                    job: ticket,
                    outcome: d,
                    ..
                } in done
                {
                    if d.to != ticket.state && !d.to.is_open() && recorded.contains(&ticket.id) {
                        self.after_final(ticket, d.to, &d.detail);
                    }
                }
            }
            // The tickets stay leased to us until the lease runs out; then they are retried
            // (with the same idempotency key).
            Err(e) => {
                tracing::warn!(tickets = finished.len(), error = %e, "could not record ticket attempts")
            }
        }
    }

    async fn release(&self, owner: &str) -> sqlx::Result<u64> {
        self.store.release_leases(owner).await
    }
}

impl Worker {
    async fn attempt_ticket(&self, ticket: &TicketRow) -> Decision {
        let now = self.clock.now_ms();
        let Some(app) = self.catalog.get(&ticket.app_id) else {
            return unsendable(ticket, lifecycle::Why::AppRemoved, now);
        };
        let number = SealFor::Number(&ticket.number_hash);
        let account = SealFor::AccountId(&ticket.account_key);
        let (Some(phone), Some(account_id)) = (
            self.open_sealed(number, &ticket.sealed_number),
            self.open_sealed(account, &ticket.sealed_account_id),
        ) else {
            // A key this replica does not hold is the operator's to fix: the ticket waits for
            // it rather than failing the holder's request.
            if let Some(key) = self
                .keys
                .unheld_key(number, &ticket.sealed_number)
                .or_else(|| self.keys.unheld_key(account, &ticket.sealed_account_id))
            {
                tracing::error!(
                    ticket = %ticket.id,
                    key = %key,
                    "a ticket is sealed under a key this replica does not hold; it waits until the keyring has it"
                );
                let backoff = jobs::retry_delay(&self.config, ticket.attempts);
                return Decision {
                    to: ticket.state,
                    state_reason: ticket.state_reason.clone(),
                    detail: ticket.detail.clone(),
                    detail_from_app: ticket.detail_from_app,
                    vendor_ref: ticket.vendor_ref.clone(),
                    next_attempt_at: now + backoff.as_millis() as i64,
                    cause: "retry: sealed under a key this replica does not hold".into(),
                };
            }
            return unsendable(ticket, lifecycle::Why::Unreadable, now);
        };
        // The app's client holds its breaker, shared with look-ups and pushes: while it is open
        // (the app keeps failing or timing out) the ticket waits its backoff without adding to
        // the app's load. Except for the final status check at the due date: one call, and the
        // only way to learn whether the app has the ticket before it is given up.
        let call = lifecycle::call(ticket.state, now, ticket.due_at);
        let answer = match call {
            Call::Send => self.send(&app, ticket, &phone, &account_id).await,
            Call::Status => self.poll_status(&app, ticket, now).await,
        };
        if let Err(RpcError::CircuitOpen) = answer {
            let why = "the app is failing (circuit open); not called";
            return self
                .decision(ticket, Found::NoAnswer, None, Some(why.into()), now)
                .await;
        }
        let found = match &answer {
            Ok(a) => match AppState::try_from(a.state).unwrap_or(AppState::Unspecified) {
                AppState::Done => Found::Done,
                AppState::Accepted => Found::Accepted,
                AppState::Rejected => Found::Rejected,
                AppState::Unspecified => Found::NoAnswer,
            },
            Err(e) if call == Call::Status && e.code() == Code::NotFound => Found::NotFound,
            Err(e) if e.is_transient() => Found::NoAnswer,
            Err(_) => Found::Refused,
        };
        // What the app's error was, for the holder and the operator.
        let why = match &answer {
            Err(e) if found == Found::NoAnswer => Some(format!(
                "app unreachable or failing ({})",
                crate::metrics::code_name(e.code())
            )),
            Err(e) if found == Found::Refused => Some(format!(
                "the app refused the request ({})",
                crate::metrics::code_name(e.code())
            )),
            _ => None,
        };
        self.decision(ticket, found, answer.ok(), why, now).await
    }

    /// What to record, from what the attempt found ([`lifecycle::next`]) and the app's answer.
    async fn decision(
        &self,
        ticket: &TicketRow,
        found: Found,
        answer: Option<UnbindAccountResponse>,
        why: Option<String>,
        now: i64,
    ) -> Decision {
        // Counted only where it decides: an accepted ticket the app forgot.
        let resends = if ticket.state == TicketState::Accepted && found == Found::NotFound {
            match self.store.resends(&ticket.id).await {
                Ok(n) => u32::try_from(n).unwrap_or(u32::MAX),
                // Unknown: the bound is what is safe to assume.
                Err(_) => lifecycle::MAX_RESENDS,
            }
        } else {
            0
        };
        let step = lifecycle::next(ticket.state, found, now, ticket.due_at, resends);
        let backoff = jobs::retry_delay(&self.config, ticket.attempts);
        decide(
            ticket,
            &step,
            (found, answer, why),
            now,
            backoff.as_millis() as i64,
            self.config.status_poll_interval.as_millis() as i64,
        )
    }

    async fn send(
        &self,
        app: &App,
        ticket: &TicketRow,
        phone: &str,
        account_id: &str,
    ) -> Result<UnbindAccountResponse, RpcError> {
        app.client
            .unbind_account(UnbindAccountRequest {
                request_id: random_id("req"),
                idempotency_key: ticket.id.clone(),
                account_id: account_id.to_owned(),
                phone_number: phone.to_owned(),
                reason: ticket.reason as i32,
            })
            .await
    }

    /// A status check; at or past the due date it is the final one, made even while the app's
    /// breaker is open.
    async fn poll_status(
        &self,
        app: &App,
        ticket: &TicketRow,
        now: i64,
    ) -> Result<UnbindAccountResponse, RpcError> {
        let gate = if now >= ticket.due_at {
            Gate::FinalCheck
        } else {
            Gate::Breaker
        };
        app.client
            .get_unbind_status(
                GetUnbindStatusRequest {
                    vendor_ref: ticket.vendor_ref.clone(),
                    idempotency_key: ticket.id.clone(),
                },
                gate,
            )
            .await
    }

    fn open_sealed(&self, for_: SealFor<'_>, sealed: &str) -> Option<String> {
        String::from_utf8(self.keys.open(for_, sealed)?).ok()
    }

    /// On a final state: forget the cached answer, and tell the holder by SMS.
    fn after_final(&self, ticket: &TicketRow, state: TicketState, detail: &str) {
        self.metrics.finished(state);
        if let (Some(number), Ok(app_id)) = (
            NumberHash::from_hex(&ticket.number_hash),
            AppId::parse(&ticket.app_id),
        ) {
            self.cache.invalidate(&(number.short(), app_id));
        }
        let Some(phone) = self
            .open_sealed(SealFor::Number(&ticket.number_hash), &ticket.sealed_number)
            .and_then(|p| E164::parse(&p).ok())
        else {
            return;
        };
        let app = self.catalog.get(&ticket.app_id);
        let name = app
            .as_ref()
            .map(|a| a.name.clone())
            .unwrap_or_else(|| ticket.app_id.clone());
        let outcome = match state {
            TicketState::Completed => Outcome::Unbound { app: name },
            TicketState::Rejected => Outcome::Refused {
                app: name,
                detail: detail.to_owned(),
            },
            _ => Outcome::GaveUp {
                app: name,
                customer_service: app.map(|a| a.customer_service.clone()).unwrap_or_default(),
            },
        };
        self.notifier.notify(phone, outcome);
    }
}

/// What an attempt found: the finding, the app's answer if it gave one, and the app's error in
/// words if it gave one of those.
type Attempted = (Found, Option<UnbindAccountResponse>, Option<String>);

/// The decision to record for `step`: the app's text where it answered (else the step's words,
/// with the app's error when there was one), its reference if it sent one (else the one the
/// ticket had; none after the app forgot the ticket), and when to look again.
fn decide(
    ticket: &TicketRow,
    step: &Step,
    (found, answer, why): Attempted,
    now: i64,
    backoff_ms: i64,
    poll_ms: i64,
) -> Decision {
    let words = match why {
        // Waiting: what went wrong this time.
        Some(why) if step.to.is_open() => why,
        // Ended: why it ended, and what went wrong last.
        Some(why) => format!("{}: {why}", step.why.words()),
        None => step.why.words().to_owned(),
    };
    let (detail, detail_from_app, vendor_ref) = match answer {
        Some(a) if matches!(found, Found::Done | Found::Accepted | Found::Rejected) => {
            let vendor_ref = pick(bounded_ref(a.vendor_ref), &ticket.vendor_ref);
            match app_words(&a.detail) {
                Some(text) => (text, true, vendor_ref),
                None => (step.why.words().to_owned(), false, vendor_ref),
            }
        }
        _ if step.to == TicketState::Sent && ticket.state == TicketState::Accepted => {
            (words, false, String::new())
        }
        _ => (words, false, ticket.vendor_ref.clone()),
    };
    let cause = match (step.to.is_open(), found) {
        (_, Found::Done | Found::Accepted | Found::Rejected) => {
            format!("app: {}", found_word(found))
        }
        (true, _) => format!("retry: {}", step.why.words()),
        (false, _) => format!("failed: {}", step.why.words()),
    };
    Decision {
        to: step.to,
        // A final ticket does not move, nor does its reason.
        state_reason: if step.why == lifecycle::Why::AlreadyEnded {
            ticket.state_reason.clone()
        } else {
            step.why.code().to_owned()
        },
        detail,
        detail_from_app,
        vendor_ref,
        next_attempt_at: lifecycle::next_attempt_at(
            step.then,
            now,
            ticket.due_at,
            backoff_ms,
            poll_ms,
        ),
        cause,
    }
}

fn found_word(found: Found) -> &'static str {
    match found {
        Found::Done => "done",
        Found::Accepted => "accepted",
        Found::Rejected => "rejected",
        Found::NotFound => "status not found",
        Found::NoAnswer => "no answer",
        Found::Refused => "refused",
    }
}

/// A ticket that cannot be sent at all (its app left the catalog, or it cannot be read with this
/// gateway's keys): FAILED now, for `why`.
fn unsendable(ticket: &TicketRow, why: lifecycle::Why, now: i64) -> Decision {
    Decision {
        to: TicketState::Failed,
        state_reason: why.code().to_owned(),
        detail: why.words().to_owned(),
        detail_from_app: false,
        vendor_ref: ticket.vendor_ref.clone(),
        next_attempt_at: now,
        cause: format!("failed: {}", why.words()),
    }
}

/// The app's reference for an unbind, if it is one the gateway keeps: at most
/// [`answer::MAX_VENDOR_REF_BYTES`] with no control character. Another is dropped (the ticket
/// keeps the reference it had; status polls go by the ticket's own key), and said so in the log.
fn bounded_ref(vendor_ref: String) -> String {
    if vendor_ref.len() <= answer::MAX_VENDOR_REF_BYTES && !vendor_ref.chars().any(char::is_control)
    {
        vendor_ref
    } else {
        tracing::warn!(
            bytes = vendor_ref.len(),
            "an app answered a vendor_ref the gateway does not keep (too long or with control characters)"
        );
        String::new()
    }
}

/// The app's text, bounded ([`answer::MAX_DETAIL_CHARS`], control characters dropped), if it
/// gave any.
fn app_words(detail: &str) -> Option<String> {
    let d: String = detail
        .chars()
        .filter(|c| !c.is_control())
        .take(answer::MAX_DETAIL_CHARS)
        .collect();
    (!d.trim().is_empty()).then_some(d)
}

fn pick(new: String, old: &str) -> String {
    if new.is_empty() { old.to_owned() } else { new }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::UnbindReason;

    fn ticket(state: TicketState, attempts: i64, due_at: i64) -> TicketRow {
        TicketRow {
            id: "tkt_1".into(),
            tenant: "dev".into(),
            number_hash: String::new(),
            sealed_number: String::new(),
            app_id: "app-001".into(),
            sealed_account_id: String::new(),
            account_key: String::new(),
            account_ref: String::new(),
            reason: UnbindReason::HolderRequest,
            state,
            state_reason: String::new(),
            detail: String::new(),
            detail_from_app: false,
            vendor_ref: "v-old".into(),
            attempts,
            next_attempt_at: 0,
            created_at: 0,
            updated_at: 0,
            due_at,
        }
    }

    fn answer(state: AppState, detail: &str, vendor_ref: &str) -> Option<UnbindAccountResponse> {
        Some(UnbindAccountResponse {
            state: state as i32,
            detail: detail.into(),
            vendor_ref: vendor_ref.into(),
        })
    }

    /// `decide` for what `found` leads to from `ticket` at `now`.
    fn run(
        ticket: &TicketRow,
        found: Found,
        answer: Option<UnbindAccountResponse>,
        now: i64,
    ) -> Decision {
        let step = lifecycle::next(ticket.state, found, now, ticket.due_at, 0);
        decide(ticket, &step, (found, answer, None), now, 2_000, 500)
    }

    #[test]
    fn a_transient_failure_is_retried_with_backoff_until_the_due_date() {
        let t = ticket(TicketState::Sent, 3, 10_000);
        let d = run(&t, Found::NoAnswer, None, 1_000);
        assert_eq!(d.to, TicketState::Sent);
        assert_eq!(d.next_attempt_at, 1_000 + 2_000);
        assert_eq!(d.detail, "the app did not answer; sending again");
        assert_eq!(d.cause, "retry: the app did not answer; sending again");
        assert_eq!(d.vendor_ref, "v-old");
        // A wait that would pass the due date ends at it, for the final status check.
        let d = run(&t, Found::NoAnswer, None, 9_000);
        assert_eq!(d.next_attempt_at, 10_000);
        // At the due date (that attempt was the status check): FAILED.
        let d = run(&t, Found::NoAnswer, None, 10_000);
        assert_eq!(d.to, TicketState::Failed);
        assert_eq!(
            d.cause,
            "failed: the app did not answer before the due date"
        );
        assert_eq!(d.next_attempt_at, 10_000);
    }

    /// Changed from the test this replaces, which asserted that an accepted ticket past its due
    /// date is polled on for ever: that is the ticket that never ends (issue 14, item 3).
    #[test]
    fn an_accepted_ticket_is_polled_until_the_due_date_then_fails() {
        let t = ticket(TicketState::Accepted, 1, 10_000);
        let d = run(
            &t,
            Found::Accepted,
            answer(AppState::Accepted, "", ""),
            1_000,
        );
        assert_eq!((d.to, d.next_attempt_at), (TicketState::Accepted, 1_500));
        assert_eq!(d.detail, "accepted by the app");
        let d = run(
            &t,
            Found::Accepted,
            answer(AppState::Accepted, "", ""),
            10_000,
        );
        assert_eq!(d.to, TicketState::Failed);
        assert_eq!(d.detail, "the app did not confirm in time");
    }

    #[test]
    fn a_forgotten_ticket_is_sent_again_without_its_old_reference() {
        let t = ticket(TicketState::Accepted, 1, 10_000);
        let d = run(&t, Found::NotFound, None, 1_000);
        assert_eq!((d.to, d.next_attempt_at), (TicketState::Sent, 1_000));
        assert_eq!(d.vendor_ref, "");
        let step = lifecycle::next(
            t.state,
            Found::NotFound,
            1_000,
            t.due_at,
            lifecycle::MAX_RESENDS,
        );
        let d = decide(&t, &step, (Found::NotFound, None, None), 1_000, 2_000, 500);
        assert_eq!(d.to, TicketState::Failed);
        assert_eq!(d.vendor_ref, "v-old");
    }

    #[test]
    fn an_apps_reference_and_text_are_kept_only_within_bounds() {
        let longest = "r".repeat(answer::MAX_VENDOR_REF_BYTES);
        assert_eq!(bounded_ref(longest.clone()), longest);
        assert_eq!(bounded_ref(format!("{longest}r")), "");
        assert_eq!(bounded_ref("ref\n2".into()), "");
        assert_eq!(bounded_ref(String::new()), "");
        let long = "d".repeat(answer::MAX_DETAIL_CHARS + 50);
        assert_eq!(
            app_words(&long).unwrap().chars().count(),
            answer::MAX_DETAIL_CHARS
        );
        assert_eq!(app_words("ok\u{1b}[2J").unwrap(), "ok[2J");
        assert_eq!(app_words(" \n "), None);
    }

    #[test]
    fn a_ticket_that_cannot_be_sent_fails_now() {
        let d = unsendable(
            &ticket(TicketState::Sent, 1, 0),
            lifecycle::Why::AppRemoved,
            7,
        );
        assert_eq!(d.to, TicketState::Failed);
        assert_eq!(
            (d.detail.as_str(), d.cause.as_str()),
            (
                "the app is no longer integrated",
                "failed: the app is no longer integrated"
            )
        );
        assert_eq!(
            (d.state_reason.as_str(), d.detail_from_app),
            ("app_removed", false)
        );
        assert_eq!((d.next_attempt_at, d.vendor_ref.as_str()), (7, "v-old"));
    }

    #[test]
    fn an_answer_keeps_the_old_vendor_ref_when_the_app_sends_none() {
        let t = ticket(TicketState::Sent, 1, 10_000);
        let d = run(&t, Found::Done, answer(AppState::Done, "done", ""), 5);
        assert_eq!(d.to, TicketState::Completed);
        assert_eq!((d.vendor_ref.as_str(), d.next_attempt_at), ("v-old", 5));
        assert_eq!((d.detail.as_str(), d.cause.as_str()), ("done", "app: done"));
        // The app's words, and the reason as a code beside them.
        assert_eq!(
            (d.state_reason.as_str(), d.detail_from_app),
            ("unbound", true)
        );
        let d = run(
            &t,
            Found::Accepted,
            answer(AppState::Accepted, "", "v-new"),
            5,
        );
        assert_eq!(d.vendor_ref, "v-new");
        assert_eq!(d.detail, "accepted by the app");
        let d = run(&t, Found::Refused, None, 5);
        assert_eq!(d.cause, "failed: the app refused the request");
        // The app's error in words: alone while the ticket waits, after why it ended otherwise.
        let step = lifecycle::next(t.state, Found::NoAnswer, 5, t.due_at, 0);
        let why = Some("app unreachable or failing (UNAVAILABLE)".to_owned());
        let d = decide(
            &t,
            &step,
            (Found::NoAnswer, None, why.clone()),
            5,
            2_000,
            500,
        );
        assert_eq!(d.detail, "app unreachable or failing (UNAVAILABLE)");
        let step = lifecycle::next(t.state, Found::NoAnswer, t.due_at, t.due_at, 0);
        let d = decide(
            &t,
            &step,
            (Found::NoAnswer, None, why),
            t.due_at,
            2_000,
            500,
        );
        assert_eq!(
            d.detail,
            "the app did not answer before the due date: app unreachable or failing (UNAVAILABLE)"
        );
    }

    #[test]
    fn an_apps_text_is_bounded_and_cleaned() {
        assert_eq!(
            app_words("refused\u{7}: frozen").as_deref(),
            Some("refused: frozen")
        );
        assert_eq!(app_words("   "), None);
        assert_eq!(app_words(""), None);
        assert_eq!(app_words(&"x".repeat(300)).unwrap().len(), 200);
        assert_eq!(pick(String::new(), "old"), "old");
        assert_eq!(pick("new".into(), "old"), "new");
    }

    #[test]
    fn only_transient_codes_are_retried() {
        use crate::fanout::client::is_transient;
        assert!(is_transient(Code::Unavailable) && is_transient(Code::DeadlineExceeded));
        assert!(!is_transient(Code::InvalidArgument) && !is_transient(Code::PermissionDenied));
    }
}
