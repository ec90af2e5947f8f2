//! One look-up run, shared by both look-up RPCs: `ListLinkedAccounts` collects it and
//! `StreamLinkedAccounts` forwards it. The run owns the merge context; it yields one finished
//! [`AppResult`] per app as the apps answer (accounts unbound meanwhile dropped, hints masked,
//! ownership decided, refs sealed to the session), and ends with the audit entry, the log line
//! and, when the caller claimed one, the summary SMS. Neither RPC merges, audits or texts on its
//! own, so the two cannot drift apart.
//!
//! What the caller receives is bounded by `limits.max_response_bytes` ([`ResponseBudget`]): the
//! whole answer of `ListLinkedAccounts`, each message of `StreamLinkedAccounts`. An app whose
//! accounts would not fit is `FAILED` in that answer with a reason saying so; the others answer.

use prost::Message as _;

use std::sync::Arc;

use futures::{StreamExt, future::BoxFuture, stream::FuturesUnordered};

use super::tenant::Tenant;
use crate::{
    audit::{AuditAction, Entry},
    fanout::{
        AppOutcome,
        merge::{self, MergeContext},
    },
    gateway::Gateway,
    proto::{AppResult, SummarySms, app_result::State, linked_account::Ownership},
    registry::templates,
    security::{NumberHash, Session},
    unbind::LookupTickets,
};

/// Bytes set aside in a whole answer for each app's result line (ids, names, customer-service
/// number, reason) and for the answer's own fields, before any account is counted.
const RESULT_LINE_BYTES: usize = 512;

/// How much of a look-up's accounts fit in what the caller receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ResponseBudget {
    /// One answer for the whole look-up: the bytes left for accounts.
    Whole { left: usize },
    /// One message per app, each at most `limit` bytes.
    PerMessage { limit: usize },
}

impl ResponseBudget {
    /// One answer of at most `limit` bytes for `apps` apps: their result lines set aside first.
    pub fn whole(limit: usize, apps: usize) -> Self {
        Self::Whole {
            left: limit.saturating_sub((apps + 1).saturating_mul(RESULT_LINE_BYTES)),
        }
    }

    /// Whether an app's accounts of `bytes` fit beside its result line of `line` bytes; a whole
    /// answer's budget keeps what is left.
    fn take(&mut self, line: usize, bytes: usize) -> bool {
        match self {
            Self::Whole { left } => {
                let fits = bytes <= *left;
                if fits {
                    *left -= bytes;
                }
                fits
            }
            Self::PerMessage { limit } => line.saturating_add(bytes) <= *limit,
        }
    }
}

/// The bytes `accounts` take as a repeated field of a message.
fn field_bytes(accounts: &[crate::proto::LinkedAccount]) -> usize {
    accounts
        .iter()
        .map(|a| {
            let n = a.encoded_len();
            1 + prost::length_delimiter_len(n) + n
        })
        .sum()
}

/// A look-up as started: the apps' calls under way and what the merge needs.
pub(super) struct Lookup {
    pub outcomes: FuturesUnordered<BoxFuture<'static, AppOutcome>>,
    pub number: NumberHash,
    pub tickets: LookupTickets,
    pub summary_only: bool,
    pub summary_sms: SummarySms,
    pub tenant: Arc<Tenant>,
    pub correlator: String,
    pub budget: ResponseBudget,
}

/// One app's finished result, with the app's catalog position (the collected answer's order).
pub(super) struct Finished {
    pub position: usize,
    pub result: AppResult,
}

/// What the run found in all, when it ended.
pub(super) struct Totals {
    pub total_accounts: u32,
    pub complete: bool,
}

/// A look-up being run.
pub(super) struct LookupRun {
    gateway: Arc<Gateway>,
    session: Session,
    lookup: Lookup,
    /// Every app's result so far, without its accounts: the audit entry and the SMS summary.
    results: Vec<AppResult>,
    /// Accounts found so far that a previous holder bound (the SMS summary counts them, also
    /// when the caller asked for the summary only).
    previous_holder: usize,
}

impl LookupRun {
    pub fn new(gateway: Arc<Gateway>, session: Session, lookup: Lookup) -> Self {
        let apps = lookup.outcomes.len();
        Self {
            gateway,
            session,
            lookup,
            results: Vec::with_capacity(apps),
            previous_holder: 0,
        }
    }

    /// Apps not finished yet.
    pub fn pending(&self) -> usize {
        self.lookup.outcomes.len()
    }

    pub fn summary_sms(&self) -> SummarySms {
        self.lookup.summary_sms
    }

    /// The next app to finish, merged; `None` once every app has.
    pub async fn next(&mut self) -> Option<Finished> {
        let mut outcome = self.lookup.outcomes.next().await?;
        let g = &self.gateway;
        let ctx = MergeContext {
            keys: &g.keys,
            number: &self.lookup.number,
            session_id: &self.session.id,
            holder_since_ms: self.session.holder_since_ms,
            ownership: g.unbinder.ownership(),
            now_ms: g.clock.now_ms(),
            open_tickets: &self.lookup.tickets.open,
            unbound_at: &self.lookup.tickets.unbound_at,
        };
        // Accounts unbound since the app's answer was cached: dropped, and the stale answer
        // forgotten.
        if merge::drop_unbound(&ctx, &mut outcome) {
            g.fanout
                .cache()
                .invalidate(&(ctx.number.short(), outcome.app.id.clone()));
        }
        let mut accounts = match &outcome.result {
            Ok(found) => merge::linked_accounts(&ctx, &outcome, found),
            Err(_) => Vec::new(),
        };
        let mut result = merge::app_result(&outcome, Vec::new());
        if !self.lookup.summary_only
            && !accounts.is_empty()
            && !self
                .lookup
                .budget
                .take(result.encoded_len(), field_bytes(&accounts))
        {
            tracing::warn!(
                app = %outcome.app.id,
                accounts = accounts.len(),
                "an app's accounts did not fit in the response: reported as failed"
            );
            result.reason = format!(
                "its {} accounts did not fit in this response; ask for this app alone",
                accounts.len()
            );
            result.state = State::Failed as i32;
            result.account_count = 0;
            accounts.clear();
        }
        self.previous_holder += accounts
            .iter()
            .filter(|a| a.ownership == Ownership::PreviousHolder as i32)
            .count();
        self.results.push(result.clone());
        let shown = if self.lookup.summary_only {
            Vec::new()
        } else {
            accounts
        };
        Some(Finished {
            position: outcome.app.position(),
            result: AppResult {
                accounts: shown,
                ..result
            },
        })
    }

    /// Ends the run: every app finished, or (`LookupStreamAbandoned`) the caller went away.
    /// Audits it, logs it and, unless abandoned, sends the summary SMS the caller claimed.
    pub fn finish(self, action: AuditAction) -> Totals {
        let results = &self.results;
        let answered = results
            .iter()
            .filter(|r| r.state == State::Answered as i32)
            .count();
        let totals = Totals {
            total_accounts: results.iter().map(|r| r.account_count).sum(),
            complete: answered == results.len() && self.lookup.outcomes.is_empty(),
        };
        let g = &self.gateway;
        if self.lookup.summary_sms == SummarySms::Sent
            && action != AuditAction::LookupStreamAbandoned
        {
            g.registry.send_sms_detached(
                self.session.phone.clone(),
                templates::LOOKUP_SUMMARY,
                lookup_summary_params(results, self.previous_holder),
            );
        }
        tracing::info!(
            number = %self.session.phone,
            total_accounts = totals.total_accounts,
            complete = totals.complete,
            action = action.as_str(),
            "look-up answered"
        );
        g.audit.record(Entry {
            tenant: &self.lookup.tenant.name,
            number_hash: &self.lookup.number.hex(),
            action,
            apps: format!("{} asked, {answered} answered", results.len()),
            outcome: format!(
                "{} accounts, {}",
                totals.total_accounts,
                if totals.complete {
                    "complete"
                } else {
                    "incomplete"
                }
            ),
            correlator: &self.lookup.correlator,
        });
        totals
    }
}

/// The `lookup_summary` SMS's params, structured for the carrier's template (see
/// `SendSmsRequest` in registry.proto): `account_count`, `app_count` (apps holding accounts),
/// `previous_count` (accounts bound before the holder got the number), `missing_app_count` (apps
/// that did not answer), and `summary`, the message in English.
fn lookup_summary_params(
    results: &[AppResult],
    previous_holder: usize,
) -> std::collections::HashMap<String, String> {
    let answered = |r: &&AppResult| r.state == State::Answered as i32;
    let accounts: u32 = results
        .iter()
        .filter(answered)
        .map(|r| r.account_count)
        .sum();
    let apps = results
        .iter()
        .filter(answered)
        .filter(|r| r.account_count > 0)
        .count();
    let missing = results.len() - results.iter().filter(answered).count();
    [
        ("account_count", accounts.to_string()),
        ("app_count", apps.to_string()),
        ("previous_count", previous_holder.to_string()),
        ("missing_app_count", missing.to_string()),
        ("summary", merge::sms_summary(results, previous_holder)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_answer_sets_the_result_lines_aside_then_spends_what_is_left() {
        let mut budget = ResponseBudget::whole(10_000, 3);
        assert_eq!(
            budget,
            ResponseBudget::Whole {
                left: 10_000 - 4 * 512
            }
        );
        assert!(budget.take(100, 5_000));
        assert_eq!(budget, ResponseBudget::Whole { left: 2_952 });
        // The next app does not fit: refused, and nothing is spent.
        assert!(!budget.take(100, 2_953));
        assert!(budget.take(100, 2_952));
        assert!(!budget.take(100, 1));
        assert!(budget.take(100, 0));
        // Too many apps for the limit: nothing fits, nothing underflows.
        assert_eq!(
            ResponseBudget::whole(1_000, 10),
            ResponseBudget::Whole { left: 0 }
        );
    }

    #[test]
    fn each_message_of_the_stream_is_bounded_alone() {
        let mut budget = ResponseBudget::PerMessage { limit: 1_000 };
        assert!(budget.take(200, 800));
        assert!(budget.take(200, 800), "messages do not add up");
        assert!(!budget.take(201, 800));
    }

    #[test]
    fn accounts_are_counted_as_the_wire_frames_them() {
        let account = crate::proto::LinkedAccount {
            app_id: "app-001".into(),
            account_ref: "r".repeat(200),
            ..Default::default()
        };
        let result = crate::proto::AppResult {
            accounts: vec![account.clone(); 3],
            ..Default::default()
        };
        assert_eq!(field_bytes(&result.accounts), result.encoded_len());
        assert_eq!(field_bytes(&[]), 0);
    }
}
