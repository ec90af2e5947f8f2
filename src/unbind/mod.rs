//! Unbinding: turning the account refs a person ticked into durable tickets (one per account, in
//! one transaction, idempotent per key), reading tickets back, and — in `worker` — carrying each
//! ticket to its app and back until it is final.

pub mod lifecycle;
pub mod metrics;
pub mod notify;
pub mod worker;

use std::{collections::HashMap, sync::Arc};

use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use self::metrics::TicketMetrics;
use crate::{
    clock::{Clock, timestamp_from_ms},
    config::UnbindConfig,
    fanout::Catalog,
    proto::{UnbindTicket, unbind_ticket},
    security::{AccountRef, Keys, Ownership, OwnershipRule, SealFor, Session, random_id},
    store::{CreateOutcome, NewTicket, Store, TicketRow, TicketState, UnbindReason},
};

/// Why an `Unbind` request was refused. `index` is the position in `account_refs`.
#[derive(Debug, thiserror::Error)]
pub enum UnbindError {
    #[error("no account refs")]
    Empty,
    #[error("more than {max} account refs")]
    TooMany { max: usize },
    #[error("duplicate account ref")]
    Duplicate { index: usize },
    #[error("forged or altered account ref")]
    Forged { index: usize },
    #[error("account ref of another number or session")]
    Foreign { index: usize },
    #[error("app no longer in the catalog")]
    UnknownApp { index: usize, app_id: String },
    #[error("the app does not support unbinding this account")]
    NotSupported { index: usize },
    #[error("idempotency key missing or malformed")]
    BadKey,
    #[error("idempotency key reused with a different request")]
    KeyReused,
    #[error("store: {0}")]
    Store(#[from] sqlx::Error),
}

/// Longest idempotency key accepted.
const MAX_KEY_LEN: usize = 128;

/// Creates and reads tickets.
pub struct Unbinder {
    store: Store,
    keys: Arc<Keys>,
    clock: Clock,
    catalog: Arc<Catalog>,
    config: UnbindConfig,
    /// Decides again, from the session, whose each account is.
    ownership: OwnershipRule,
    metrics: TicketMetrics,
    /// Wakes this replica's worker when tickets are created here.
    pub(crate) wake: Arc<Notify>,
}

impl Unbinder {
    pub fn new(
        store: Store,
        keys: Arc<Keys>,
        clock: Clock,
        catalog: Arc<Catalog>,
        config: UnbindConfig,
        ownership: OwnershipRule,
        metrics: TicketMetrics,
    ) -> Self {
        Self {
            store,
            keys,
            clock,
            catalog,
            config,
            ownership,
            metrics,
            wake: Arc::new(Notify::new()),
        }
    }

    /// The ticket gauges (set from the store's counts when `/metrics` is scraped).
    pub fn metrics(&self) -> &TicketMetrics {
        &self.metrics
    }

    /// Creates one ticket per account ref (or returns those of an earlier identical request).
    pub async fn unbind(
        &self,
        session: &Session,
        account_refs: &[String],
        idempotency_key: &str,
    ) -> Result<Vec<TicketRow>, UnbindError> {
        let key = idempotency_key.trim();
        if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(UnbindError::BadKey);
        }
        if account_refs.is_empty() {
            return Err(UnbindError::Empty);
        }
        if account_refs.len() > self.config.max_refs_per_request {
            return Err(UnbindError::TooMany {
                max: self.config.max_refs_per_request,
            });
        }
        let number = self.keys.number_hash(&session.phone);
        let number_hex = number.hex();
        let sealed_number = self.keys.seal(
            SealFor::Number(&number_hex),
            session.phone.expose().as_bytes(),
        );
        let now = self.clock.now_ms();
        let mut seen = HashMap::with_capacity(account_refs.len());
        let mut tickets = Vec::with_capacity(account_refs.len());
        for (index, sealed) in account_refs.iter().enumerate() {
            let account =
                AccountRef::open(&self.keys, sealed).ok_or(UnbindError::Forged { index })?;
            // Only in the session that was shown it: a ref cannot outlive its session, nor
            // carry one session's view of the number into another's.
            if !account.is_for(&number) || !account.shown_in(&session.id) {
                return Err(UnbindError::Foreign { index });
            }
            let account_key = self
                .keys
                .account_key(&number, &account.app_id, &account.account_id);
            if seen.insert(account_key.clone(), index).is_some() {
                return Err(UnbindError::Duplicate { index });
            }
            let app = self
                .catalog
                .get(&account.app_id)
                .ok_or_else(|| UnbindError::UnknownApp {
                    index,
                    app_id: account.app_id.clone(),
                })?;
            if !account.unbind_supported {
                return Err(UnbindError::NotSupported { index });
            }
            // Decided again now, from the session's holder_since and the binding date the ref
            // carries. Only the holder's own account is unbound as the holder's request; an
            // account nobody can place is released from the number as recycled, which tells the
            // app to detach the number and keep the account for its owner, never that the
            // owner asked.
            let reason =
                match self
                    .ownership
                    .decide(account.bound_at_ms, session.holder_since_ms, now)
                {
                    Ownership::CurrentHolder => UnbindReason::HolderRequest,
                    Ownership::PreviousHolder | Ownership::Unknown => UnbindReason::NumberRecycled,
                };
            tickets.push(NewTicket {
                id: random_id("tkt"),
                number_hash: number_hex.clone(),
                sealed_number: sealed_number.clone(),
                app_id: account.app_id.clone(),
                sealed_account_id: self.keys.seal(
                    SealFor::AccountId(&account_key),
                    account.account_id.as_bytes(),
                ),
                account_key,
                account_ref: sealed.clone(),
                reason,
                due_at: now + app.unbind_deadline.as_millis() as i64,
            });
        }
        let fingerprint = fingerprint(&number_hex, tickets.iter().map(|t| t.account_key.as_str()));
        let refs: HashMap<&str, &str> = tickets
            .iter()
            .map(|t| (t.account_key.as_str(), t.account_ref.as_str()))
            .collect();
        let rows = match self
            .store
            .create_tickets(&session.tenant, key, &fingerprint, &tickets, now)
            .await?
        {
            CreateOutcome::Created(rows) => {
                tracing::info!(number = %session.phone, tickets = rows.len(), "unbind tickets created");
                self.wake.notify_one();
                rows
            }
            CreateOutcome::Replayed(rows) => rows,
            CreateOutcome::KeyReused => return Err(UnbindError::KeyReused),
        };
        // An account whose unbind another tenant asked for first keeps that one ticket (the app
        // is asked once); this tenant sees it under the ref it sent, in the gateway's words.
        Ok(rows
            .into_iter()
            .map(|t| {
                if t.tenant == session.tenant {
                    return t;
                }
                let own_ref = refs.get(t.account_key.as_str()).copied().unwrap_or("");
                redacted(t, own_ref)
            })
            .collect())
    }

    /// The holder's tickets: those of the session's number since the holder got it.
    pub async fn tickets_of(&self, session: &Session) -> Result<Vec<TicketRow>, UnbindError> {
        Ok(self
            .tickets_of_number(session)
            .await?
            .into_iter()
            .filter(|t| t.tenant == session.tenant)
            .collect())
    }

    /// Every tenant's tickets of the session's number since the holder got it. When the
    /// registry did not say since when, nobody can tell the holder's tickets from a previous
    /// holder's: only those since the session began.
    async fn tickets_of_number(&self, session: &Session) -> Result<Vec<TicketRow>, UnbindError> {
        let number = self.keys.number_hash(&session.phone).hex();
        let since = session.holder_since_ms.unwrap_or(session.issued_ms);
        Ok(self.store.tickets_for_number(&number, since).await?)
    }

    /// Tickets by id: those of `tenant`, and with `number` (the caller's session's keyed number
    /// hash) the number's tickets another tenant opened, [`redacted`].
    pub async fn tickets_by_ids(
        &self,
        tenant: &str,
        number: Option<&str>,
        ids: &[String],
    ) -> Result<Vec<TicketRow>, UnbindError> {
        let rows = self.store.tickets_by_ids(ids).await?;
        Ok(rows
            .into_iter()
            .filter_map(|t| {
                if t.tenant == tenant {
                    Some(t)
                } else if number == Some(t.number_hash.as_str()) {
                    Some(redacted(t, ""))
                } else {
                    None
                }
            })
            .collect())
    }

    /// What a look-up of the session's number needs from its tickets (one query).
    pub async fn lookup_tickets(&self, session: &Session) -> Result<LookupTickets, UnbindError> {
        let now = self.clock.now_ms();
        let mut tickets = LookupTickets::default();
        for t in self.tickets_of_number(session).await? {
            if t.state.is_open() && t.tenant == session.tenant {
                tickets
                    .open
                    .insert(t.account_key.clone(), to_proto(&t, now));
            } else if t.state == TicketState::Completed {
                // Whichever tenant asked: the account is gone for everyone.
                let at = tickets
                    .unbound_at
                    .entry(t.account_key)
                    .or_insert(t.updated_at);
                *at = (*at).max(t.updated_at);
            }
        }
        Ok(tickets)
    }

    /// How whose account is decided: the rule `Unbind` applies, for look-ups to show the same.
    pub fn ownership(&self) -> OwnershipRule {
        self.ownership
    }

    /// Tickets as the caller sees them.
    pub fn to_proto(&self, rows: &[TicketRow]) -> Vec<UnbindTicket> {
        let now = self.clock.now_ms();
        rows.iter().map(|t| to_proto(t, now)).collect()
    }
}

/// What a look-up needs from the tickets of its number.
#[derive(Default)]
pub struct LookupTickets {
    /// The session tenant's open tickets, by account key: each account's `open_ticket`.
    pub open: HashMap<String, UnbindTicket>,
    /// When each unbound account's unbind completed, by account key: an app's answer from
    /// before then (cached on this replica, which may not be the one that ran the unbind) still
    /// lists the account, and must not be shown as bound.
    pub unbound_at: HashMap<String, i64>,
}

/// What makes two `Unbind` requests "the same": the number and the set of accounts.
fn fingerprint<'a>(number_hex: &str, account_keys: impl Iterator<Item = &'a str>) -> String {
    let mut keys: Vec<&str> = account_keys.collect();
    keys.sort_unstable();
    let mut hasher = Sha256::new();
    hasher.update(number_hex.as_bytes());
    for k in keys {
        hasher.update(b"\0");
        hasher.update(k.as_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn state_to_proto(s: TicketState) -> unbind_ticket::State {
    match s {
        TicketState::Queued => unbind_ticket::State::Queued,
        TicketState::Sent => unbind_ticket::State::Sent,
        TicketState::Accepted => unbind_ticket::State::Accepted,
        TicketState::Completed => unbind_ticket::State::Completed,
        TicketState::Rejected => unbind_ticket::State::Rejected,
        TicketState::Failed => unbind_ticket::State::Failed,
    }
}

/// What a tenant is told of an unbind of its holder's account that another tenant asked for.
pub const FOREIGN_DETAIL: &str =
    "an unbind of this account, asked for through another service, is under way";

/// Another tenant's ticket as this tenant may see it: its state and dates, under `own_ref` (the
/// ref this tenant sent, or none), never the other tenant's ref nor the app's text.
fn redacted(mut t: TicketRow, own_ref: &str) -> TicketRow {
    t.account_ref = own_ref.to_owned();
    t.detail = if t.state.is_open() {
        FOREIGN_DETAIL.to_owned()
    } else {
        "asked for through another service".to_owned()
    };
    t.vendor_ref.clear();
    t
}

/// A stored ticket as the caller sees it.
pub fn to_proto(t: &TicketRow, now_ms: i64) -> UnbindTicket {
    UnbindTicket {
        ticket_id: t.id.clone(),
        app_id: t.app_id.clone(),
        account_ref: t.account_ref.clone(),
        state: state_to_proto(t.state) as i32,
        detail: t.detail.clone(),
        created_at: Some(timestamp_from_ms(t.created_at)),
        updated_at: Some(timestamp_from_ms(t.updated_at)),
        due_at: Some(timestamp_from_ms(t.due_at)),
        overdue: t.state.is_open() && now_ms > t.due_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_ignores_order_but_not_content() {
        let a = fingerprint("n", ["x", "y"].into_iter());
        assert_eq!(a, fingerprint("n", ["y", "x"].into_iter()));
        assert_ne!(a, fingerprint("n", ["x"].into_iter()));
        assert_ne!(a, fingerprint("m", ["x", "y"].into_iter()));
    }
}
