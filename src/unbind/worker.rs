//! The ticket worker: each replica runs one. It claims due tickets (a lease in the store, so a
//! crashed replica's tickets are taken over when the lease runs out), sends each to its app with
//! the ticket's own idempotency key, polls accepted ones, retries transient failures with
//! exponential backoff until the due date, and records every transition.
//!
//! A ticket is never lost: it is in the store before `Unbind` answers, and it leaves the open
//! states only through a recorded transition. It is never sent under two keys: the key is the
//! ticket id, whoever sends it and however often. A worker that lost its lease cannot record
//! anything (every write is fenced on the lease owner).

use std::sync::Arc;

use tokio::{
    sync::{Notify, Semaphore, mpsc, watch},
    task::JoinSet,
};
use tonic::Code;

use crate::{
    backoff::Backoff,
    clock::Clock,
    config::UnbindConfig,
    domain::{AppId, E164},
    fanout::{App, Catalog, LookupCache, answer},
    proto::{
        GetUnbindStatusRequest, UnbindAccountRequest, UnbindAccountResponse,
        unbind_account_response::State as AppState,
    },
    security::{Keys, NumberHash, Purpose, random_id},
    store::{Finished, Store, TicketRow, TicketState},
};

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
    /// This worker's lease-owner name, unique per process.
    pub(crate) owner: String,
}

/// What one attempt decided.
struct Decision {
    to: TicketState,
    detail: String,
    vendor_ref: String,
    next_attempt_at: i64,
    cause: String,
}

/// Whether an app's error is worth retrying.
fn transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Internal
            | Code::Unknown
    )
}

/// Most outcomes recorded in one store transaction.
const MAX_BATCH: usize = 512;

impl Worker {
    /// Runs until `shutdown` turns true; then stops claiming, waits a little for in-flight
    /// tickets, records their outcomes, and releases every lease it still holds so another
    /// replica carries on at once.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let permits = Arc::new(Semaphore::new(self.config.worker_concurrency));
        let (done_tx, done_rx) = mpsc::channel(self.config.worker_concurrency.max(16));
        let recorder = tokio::spawn(Arc::clone(&self).record_outcomes(done_rx));
        let mut tasks = JoinSet::new();
        let mut claims: u64 = 0;
        tracing::info!(owner = %self.owner, "unbind worker started");
        while !*shutdown.borrow() {
            while tasks.try_join_next().is_some() {}
            let free = permits.available_permits();
            // Each claim gets its own lease name, so a write from an older claim can never land
            // on a ticket this worker claimed again since.
            claims += 1;
            let lease: Arc<str> = format!("{}/{claims}", self.owner).into();
            let claimed = if free == 0 {
                Ok(Vec::new())
            } else {
                let now = self.clock.now_ms();
                let lease_until = now + self.config.lease.as_millis() as i64;
                self.store
                    .claim_tickets(&lease, now, lease_until, free as i64)
                    .await
            };
            match claimed {
                Ok(tickets) if !tickets.is_empty() => {
                    for ticket in tickets {
                        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                            break;
                        };
                        let worker = Arc::clone(&self);
                        let done = done_tx.clone();
                        let lease = Arc::clone(&lease);
                        tasks.spawn(async move {
                            let decision = worker.attempt(&ticket).await;
                            // The lease stays ours until the recorder writes the outcome, so no
                            // one else claims the ticket meanwhile.
                            let _ = done.send((ticket, lease, decision)).await;
                            drop(permit);
                        });
                    }
                    // Claim again at once: more may be due.
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not claim tickets"),
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.config.poll_interval) => {}
                _ = shutdown.changed() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() && permits.available_permits() == 0 => {}
            }
        }
        // Give in-flight tickets a moment; whatever is left is released for others.
        let grace = tokio::time::sleep(self.config.shutdown_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                next = tasks.join_next() => if next.is_none() { break },
                () = &mut grace => { tasks.abort_all(); break }
            }
        }
        drop(done_tx);
        let _ = recorder.await;
        match self.store.release_leases(&self.owner).await {
            Ok(n) => tracing::info!(released = n, "unbind worker stopped"),
            Err(e) => tracing::warn!(error = %e, "could not release ticket leases"),
        }
    }

    /// Writes attempt outcomes in batches (one transaction for whatever arrived together), then
    /// does what final states call for.
    async fn record_outcomes(
        self: Arc<Self>,
        mut done: mpsc::Receiver<(TicketRow, Arc<str>, Decision)>,
    ) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while done.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let finished: Vec<Finished<'_>> = batch
                .iter()
                .map(|(ticket, lease, d)| Finished {
                    ticket,
                    lease,
                    to: d.to,
                    detail: &d.detail,
                    vendor_ref: &d.vendor_ref,
                    next_attempt_at: d.next_attempt_at,
                    cause: &d.cause,
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
                    for (ticket, _, d) in &batch {
                        if d.to != ticket.state && !d.to.is_open() && recorded.contains(&ticket.id)
                        {
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
            batch.clear();
        }
    }

    async fn attempt(&self, ticket: &TicketRow) -> Decision {
        let now = self.clock.now_ms();
        let Some(app) = self.catalog.get(&ticket.app_id) else {
            return give_up(ticket, "the app is no longer integrated", now);
        };
        let (Some(phone), Some(account_id)) = (
            self.open_sealed(&ticket.sealed_number),
            self.open_sealed(&ticket.sealed_account_id),
        ) else {
            return give_up(
                ticket,
                "the ticket cannot be read with this gateway's key",
                now,
            );
        };
        // The app's circuit breaker, shared with look-ups: while it is open (the app keeps
        // failing or timing out) the ticket waits its backoff without adding to the app's load.
        let Ok(permit) = app.breaker.try_acquire() else {
            return retry(
                &self.config,
                ticket,
                "the app is failing (circuit open); not called",
                now,
            );
        };
        let answer = match ticket.state {
            TicketState::Accepted => self.poll_status(&app, ticket).await,
            _ => self.send(&app, ticket, &phone, &account_id).await,
        };
        match &answer {
            Err(status) if transient(status.code()) => permit.failure(),
            // An answer, even a refusal, is an app at work.
            _ => permit.success(),
        }
        match answer {
            Ok(answer) => match AppState::try_from(answer.state).unwrap_or(AppState::Unspecified) {
                AppState::Done => decide(
                    ticket,
                    TicketState::Completed,
                    clip(&answer.detail, "unbound"),
                    bounded_ref(answer.vendor_ref),
                    now,
                    "app: done",
                ),
                AppState::Accepted => {
                    let next = now + self.config.status_poll_interval.as_millis() as i64;
                    Decision {
                        to: TicketState::Accepted,
                        detail: clip(&answer.detail, "accepted by the app"),
                        vendor_ref: pick(bounded_ref(answer.vendor_ref), &ticket.vendor_ref),
                        next_attempt_at: next,
                        cause: "app: accepted".into(),
                    }
                }
                AppState::Rejected => decide(
                    ticket,
                    TicketState::Rejected,
                    clip(&answer.detail, "refused by the app"),
                    bounded_ref(answer.vendor_ref),
                    now,
                    "app: rejected",
                ),
                AppState::Unspecified => retry(
                    &self.config,
                    ticket,
                    "the app answered without a state",
                    now,
                ),
            },
            Err(status)
                if ticket.state == TicketState::Accepted && status.code() == Code::NotFound =>
            {
                // The app forgot the unbind it accepted: send it again, with the same key.
                Decision {
                    to: TicketState::Sent,
                    detail: "the app lost track of the unbind; sending it again".into(),
                    vendor_ref: String::new(),
                    next_attempt_at: now,
                    cause: "app: status not found".into(),
                }
            }
            Err(status) if transient(status.code()) => retry(
                &self.config,
                ticket,
                &format!("app unreachable or failing ({:?})", status.code()),
                now,
            ),
            Err(status) => give_up(
                ticket,
                &format!("the app refused the request ({:?})", status.code()),
                self.clock.now_ms(),
            ),
        }
    }

    async fn send(
        &self,
        app: &App,
        ticket: &TicketRow,
        phone: &str,
        account_id: &str,
    ) -> Result<UnbindAccountResponse, tonic::Status> {
        let mut request = tonic::Request::new(UnbindAccountRequest {
            request_id: random_id("req"),
            idempotency_key: ticket.id.clone(),
            account_id: account_id.to_owned(),
            phone_number: phone.to_owned(),
            reason: ticket.reason as i32,
        });
        request.set_timeout(app.timeout);
        tokio::time::timeout(app.timeout, app.client().unbind_account(request))
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("unbind call timed out")))
            .map(tonic::Response::into_inner)
    }

    async fn poll_status(
        &self,
        app: &App,
        ticket: &TicketRow,
    ) -> Result<UnbindAccountResponse, tonic::Status> {
        let mut request = tonic::Request::new(GetUnbindStatusRequest {
            vendor_ref: ticket.vendor_ref.clone(),
            idempotency_key: ticket.id.clone(),
        });
        request.set_timeout(app.timeout);
        tokio::time::timeout(app.timeout, app.client().get_unbind_status(request))
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("status call timed out")))
            .map(tonic::Response::into_inner)
    }

    fn open_sealed(&self, sealed: &str) -> Option<String> {
        String::from_utf8(self.keys.open(Purpose::StoredNumber, sealed)?).ok()
    }

    /// On a final state: forget the cached answer, and tell the holder by SMS.
    fn after_final(&self, ticket: &TicketRow, state: TicketState, detail: &str) {
        if let (Some(number), Ok(app_id)) = (
            NumberHash::from_hex(&ticket.number_hash),
            AppId::parse(&ticket.app_id),
        ) {
            self.cache.invalidate(&(number.short(), app_id));
        }
        let Some(phone) = self
            .open_sealed(&ticket.sealed_number)
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

/// An answer of the app: the ticket moves to `to`, keeping the vendor reference it had if the
/// app sent none.
fn decide(
    ticket: &TicketRow,
    to: TicketState,
    detail: String,
    vendor_ref: String,
    now: i64,
    cause: &str,
) -> Decision {
    Decision {
        to,
        detail,
        vendor_ref: pick(vendor_ref, &ticket.vendor_ref),
        next_attempt_at: now,
        cause: cause.into(),
    }
}

/// A transient failure: try again later, unless the due date has passed (an accepted ticket
/// keeps being polled: the app has it, it is only overdue).
fn retry(config: &UnbindConfig, ticket: &TicketRow, why: &str, now: i64) -> Decision {
    if now >= ticket.due_at && ticket.state != TicketState::Accepted {
        return give_up(ticket, &format!("{why}; gave up at the due date"), now);
    }
    let delay = Backoff::new(config.retry_base, config.retry_max)
        .retry(ticket.attempts, config.retry_jitter);
    Decision {
        to: ticket.state,
        detail: why.to_owned(),
        vendor_ref: ticket.vendor_ref.clone(),
        next_attempt_at: now + delay.as_millis() as i64,
        cause: format!("retry: {why}"),
    }
}

/// A permanent failure: the ticket is FAILED now.
fn give_up(ticket: &TicketRow, why: &str, now: i64) -> Decision {
    Decision {
        to: TicketState::Failed,
        detail: why.to_owned(),
        vendor_ref: ticket.vendor_ref.clone(),
        next_attempt_at: now,
        cause: format!("failed: {why}"),
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

/// The app's text, bounded ([`answer::MAX_DETAIL_CHARS`], control characters dropped), or a
/// default.
fn clip(detail: &str, default: &str) -> String {
    let d: String = detail
        .chars()
        .filter(|c| !c.is_control())
        .take(answer::MAX_DETAIL_CHARS)
        .collect();
    if d.trim().is_empty() {
        default.to_owned()
    } else {
        d
    }
}

fn pick(new: String, old: &str) -> String {
    if new.is_empty() { old.to_owned() } else { new }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
            detail: String::new(),
            vendor_ref: "v-old".into(),
            attempts,
            next_attempt_at: 0,
            created_at: 0,
            updated_at: 0,
            due_at,
        }
    }

    fn config() -> UnbindConfig {
        UnbindConfig {
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
            retry_jitter: false,
            ..UnbindConfig::default()
        }
    }

    #[test]
    fn a_transient_failure_is_retried_with_backoff_until_the_due_date() {
        let c = config();
        let d = retry(&c, &ticket(TicketState::Sent, 3, 10_000), "busy", 1_000);
        assert_eq!(d.to, TicketState::Sent);
        assert_eq!(d.next_attempt_at, 1_000 + 2_000);
        assert_eq!(
            (d.detail.as_str(), d.cause.as_str()),
            ("busy", "retry: busy")
        );
        assert_eq!(d.vendor_ref, "v-old");
        // Due: given up, just before it: retried.
        let d = retry(&c, &ticket(TicketState::Sent, 1, 10_000), "busy", 10_000);
        assert_eq!(d.to, TicketState::Failed);
        assert_eq!(d.detail, "busy; gave up at the due date");
        assert_eq!(d.next_attempt_at, 10_000);
        let d = retry(&c, &ticket(TicketState::Queued, 1, 10_000), "busy", 9_999);
        assert_eq!(d.to, TicketState::Queued);
        // An accepted ticket is overdue, not failed: the app has it; polled on.
        let d = retry(
            &c,
            &ticket(TicketState::Accepted, 1, 10_000),
            "busy",
            20_000,
        );
        assert_eq!(d.to, TicketState::Accepted);
        assert_eq!(d.next_attempt_at, 20_500);
    }

    #[test]
    fn an_apps_reference_and_text_are_kept_only_within_bounds() {
        let longest = "r".repeat(answer::MAX_VENDOR_REF_BYTES);
        assert_eq!(bounded_ref(longest.clone()), longest);
        assert_eq!(bounded_ref(format!("{longest}r")), "");
        assert_eq!(bounded_ref("ref\n2".into()), "");
        assert_eq!(bounded_ref(String::new()), "");
        let long = "d".repeat(answer::MAX_DETAIL_CHARS + 50);
        assert_eq!(clip(&long, "x").chars().count(), answer::MAX_DETAIL_CHARS);
        assert_eq!(clip("ok\u{1b}[2J", "x"), "ok[2J");
        assert_eq!(clip(" \n ", "default"), "default");
    }

    #[test]
    fn giving_up_fails_the_ticket_now() {
        let d = give_up(&ticket(TicketState::Sent, 1, 0), "refused", 7);
        assert_eq!(d.to, TicketState::Failed);
        assert_eq!(
            (d.detail.as_str(), d.cause.as_str()),
            ("refused", "failed: refused")
        );
        assert_eq!((d.next_attempt_at, d.vendor_ref.as_str()), (7, "v-old"));
    }

    #[test]
    fn an_answer_keeps_the_old_vendor_ref_when_the_app_sends_none() {
        let t = ticket(TicketState::Sent, 1, 0);
        let d = decide(
            &t,
            TicketState::Completed,
            "done".into(),
            String::new(),
            5,
            "app: done",
        );
        assert_eq!(d.to, TicketState::Completed);
        assert_eq!((d.vendor_ref.as_str(), d.next_attempt_at), ("v-old", 5));
        assert_eq!((d.detail.as_str(), d.cause.as_str()), ("done", "app: done"));
        let d = decide(
            &t,
            TicketState::Accepted,
            String::new(),
            "v-new".into(),
            5,
            "x",
        );
        assert_eq!(d.vendor_ref, "v-new");
    }

    #[test]
    fn an_apps_text_is_bounded_and_cleaned() {
        assert_eq!(clip("refused\u{7}: frozen", "none"), "refused: frozen");
        assert_eq!(clip("   ", "none"), "none");
        assert_eq!(clip("", "none"), "none");
        assert_eq!(clip(&"x".repeat(300), "none").len(), 200);
        assert_eq!(pick(String::new(), "old"), "old");
        assert_eq!(pick("new".into(), "old"), "new");
    }

    #[test]
    fn only_transient_codes_are_retried() {
        assert!(transient(Code::Unavailable) && transient(Code::DeadlineExceeded));
        assert!(!transient(Code::InvalidArgument) && !transient(Code::PermissionDenied));
    }
}
