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
    fanout::{Catalog, merge::mask_hint},
    proto::{UnbindTicket, unbind_ticket, unbind_ticket::StateReason},
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

/// A ticket as the API hands it on: the stored row, and the hint the listing showed for its
/// account (opened; empty when none was kept).
#[derive(Clone, Debug)]
pub struct Ticket {
    pub row: TicketRow,
    pub display_hint: String,
}

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
    ) -> Result<Vec<Ticket>, UnbindError> {
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
        // The hint each ref carries, by account key: what this caller was shown.
        let mut hints = HashMap::with_capacity(account_refs.len());
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
            // Sealed like the account id (personal data, however masked), bound to the same
            // account key under a row of its own, so neither opens as the other.
            let sealed_hint = if account.display_hint.is_empty() {
                String::new()
            } else {
                self.keys.seal(
                    SealFor::AccountId(&hint_row(&account_key)),
                    account.display_hint.as_bytes(),
                )
            };
            hints.insert(account_key.clone(), account.display_hint);
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
                sealed_hint,
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
        // is asked once); this tenant sees it under the ref it sent and with the hint that ref
        // carried (what this caller was shown), in the gateway's words.
        Ok(rows
            .into_iter()
            .map(|shown| {
                let t = self.opened(shown);
                if t.row.tenant == session.tenant {
                    return t;
                }
                let key = t.row.account_key.as_str();
                let own_ref = refs.get(key).copied().unwrap_or("");
                let hint = match hints.get(key) {
                    Some(own) if !own.is_empty() => own.clone(),
                    _ => masked_again(&t.display_hint),
                };
                redacted(t, own_ref, hint)
            })
            .collect())
    }

    /// The holder's tickets: those of the session's number since the holder got it.
    pub async fn tickets_of(&self, session: &Session) -> Result<Vec<Ticket>, UnbindError> {
        Ok(self
            .tickets_of_number(session)
            .await?
            .into_iter()
            .filter(|(t, _)| t.tenant == session.tenant)
            .map(|shown| self.opened(shown))
            .collect())
    }

    /// Every tenant's tickets of the session's number since the holder got it, hints sealed.
    /// When the registry did not say since when, nobody can tell the holder's tickets from a
    /// previous holder's: only those since the session began.
    async fn tickets_of_number(
        &self,
        session: &Session,
    ) -> Result<Vec<(TicketRow, String)>, UnbindError> {
        let number = self.keys.number_hash(&session.phone).hex();
        let since = session.holder_since_ms.unwrap_or(session.issued_ms);
        Ok(self.store.tickets_for_number(&number, since).await?)
    }

    /// Tickets by id: those of `tenant`, and with `number` (the caller's session's keyed number
    /// hash) the number's tickets another tenant opened, [`redacted`], their hint masked again
    /// as a listing masks an account nobody can place.
    pub async fn tickets_by_ids(
        &self,
        tenant: &str,
        number: Option<&str>,
        ids: &[String],
    ) -> Result<Vec<Ticket>, UnbindError> {
        let rows = self.store.tickets_by_ids(ids).await?;
        Ok(rows
            .into_iter()
            .filter_map(|shown| {
                let t = &shown.0;
                if t.tenant == tenant {
                    Some(self.opened(shown))
                } else if number == Some(t.number_hash.as_str()) {
                    let t = self.opened(shown);
                    let hint = masked_again(&t.display_hint);
                    Some(redacted(t, "", hint))
                } else {
                    None
                }
            })
            .collect())
    }

    /// A stored ticket with its hint opened: empty when none was kept, or when it was sealed
    /// under a stored-data key this keyring no longer holds (the hint only ever shows).
    fn opened(&self, (row, sealed_hint): (TicketRow, String)) -> Ticket {
        let display_hint = if sealed_hint.is_empty() {
            String::new()
        } else {
            self.keys
                .open(
                    SealFor::AccountId(&hint_row(&row.account_key)),
                    &sealed_hint,
                )
                .and_then(|plain| String::from_utf8(plain).ok())
                .unwrap_or_default()
        };
        Ticket { row, display_hint }
    }

    /// What a look-up of the session's number needs from its tickets (one query).
    pub async fn lookup_tickets(&self, session: &Session) -> Result<LookupTickets, UnbindError> {
        let now = self.clock.now_ms();
        let catalog = self.catalog.snapshot();
        let mut tickets = LookupTickets::default();
        for (t, sealed_hint) in self.tickets_of_number(session).await? {
            if t.state.is_open() && t.tenant == session.tenant {
                let t = self.opened((t, sealed_hint));
                let name = catalog
                    .get(&t.row.app_id)
                    .map_or("", |app| app.name.as_str());
                let ticket = to_proto(&t, name, now);
                tickets.open.insert(t.row.account_key, ticket);
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

    /// Tickets as the caller sees them, each with its app's name in the catalog now.
    pub fn to_proto(&self, tickets: &[Ticket]) -> Vec<UnbindTicket> {
        let now = self.clock.now_ms();
        let catalog = self.catalog.snapshot();
        tickets
            .iter()
            .map(|t| {
                let name = catalog
                    .get(&t.row.app_id)
                    .map_or("", |app| app.name.as_str());
                to_proto(t, name, now)
            })
            .collect()
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
/// ref this tenant sent, or none) with `hint`, never the other tenant's ref nor the app's text.
///
/// The hint may be shown: both tenants' callers verified as holders of the same number, and it
/// is the same app's hint for the same account, which this caller's own listing shows too. It
/// is `hint` all the same, never the other tenant's stored one as is: the hint this caller's own
/// ref carried when it has one, else the stored one masked again ([`masked_again`]), which is
/// never more than a listing of the number shows of any account.
fn redacted(mut t: Ticket, own_ref: &str, hint: String) -> Ticket {
    let row = &mut t.row;
    row.account_ref = own_ref.to_owned();
    row.detail = if row.state.is_open() {
        FOREIGN_DETAIL.to_owned()
    } else {
        "asked for through another service".to_owned()
    };
    row.vendor_ref.clear();
    t.display_hint = hint;
    t
}

/// A hint as a listing shows an account nobody can place (first and last character), or none.
/// An app's masked hint ("z***g") comes out the same.
fn masked_again(hint: &str) -> String {
    if hint.is_empty() {
        String::new()
    } else {
        mask_hint(hint)
    }
}

/// What a ticket's sealed hint is bound to: its account key, marked as the hint's (an account key
/// is hex), so a ticket's hint and its account id, both sealed for the account, never open as
/// each other.
fn hint_row(account_key: &str) -> String {
    format!("{account_key}#hint")
}

/// A reason as the protocol names it.
fn reason_to_proto(why: lifecycle::Why) -> StateReason {
    use lifecycle::Why;
    match why {
        Why::AlreadyEnded => StateReason::Unspecified,
        Why::Unbound => StateReason::Unbound,
        Why::RefusedByApp => StateReason::RefusedByApp,
        Why::RequestRefused => StateReason::RequestRefused,
        Why::NotConfirmedInTime => StateReason::NotConfirmedInTime,
        Why::AcceptedByApp => StateReason::AcceptedByApp,
        Why::NoAnswerBeforeDue => StateReason::NoAnswerBeforeDue,
        Why::NoAnswerResending => StateReason::NoAnswerResending,
        Why::NotReceivedBeforeDue => StateReason::NotReceivedBeforeDue,
        Why::NotReceivedSending => StateReason::NotReceivedSending,
        Why::NoAnswerAsking => StateReason::NoAnswerAsking,
        Why::LostTrack => StateReason::LostTrack,
        Why::LostTrackResending => StateReason::LostTrackResending,
        Why::AppRemoved => StateReason::AppRemoved,
        Why::Unreadable => StateReason::Unreadable,
    }
}

/// A ticket as the caller sees it; `app_name` is the app's name in the catalog ("" when the
/// app has left it).
pub fn to_proto(t: &Ticket, app_name: &str, now_ms: i64) -> UnbindTicket {
    let row = &t.row;
    UnbindTicket {
        ticket_id: row.id.clone(),
        app_id: row.app_id.clone(),
        account_ref: row.account_ref.clone(),
        state: state_to_proto(row.state) as i32,
        detail: row.detail.clone(),
        created_at: Some(timestamp_from_ms(row.created_at)),
        updated_at: Some(timestamp_from_ms(row.updated_at)),
        due_at: Some(timestamp_from_ms(row.due_at)),
        overdue: row.state.is_open() && now_ms > row.due_at,
        app_name: app_name.to_owned(),
        display_hint: t.display_hint.clone(),
        state_reason: lifecycle::Why::from_code(&row.state_reason)
            .map_or(StateReason::Unspecified, reason_to_proto) as i32,
        detail_from_app: row.detail_from_app,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_tenants_ticket_shows_no_more_than_a_listing_would() {
        assert_eq!(masked_again(""), "");
        // An app's masked hint comes out as it was; a fuller one loses its middle.
        assert_eq!(masked_again("z***g"), "z***g");
        assert_eq!(masked_again("zhangsan"), "z***n");
        let row = TicketRow {
            id: "tkt_1".into(),
            tenant: "other".into(),
            number_hash: "n".into(),
            sealed_number: "s".into(),
            app_id: "app-001".into(),
            sealed_account_id: "s".into(),
            account_key: "k".into(),
            account_ref: "their-ref".into(),
            reason: UnbindReason::HolderRequest,
            state: TicketState::Accepted,
            state_reason: "refused_by_app".into(),
            detail: "their app's words".into(),
            detail_from_app: true,
            vendor_ref: "v-1".into(),
            attempts: 1,
            next_attempt_at: 0,
            created_at: 0,
            updated_at: 0,
            due_at: 0,
        };
        let theirs = Ticket {
            row,
            display_hint: "zhangsan".into(),
        };
        let shown = redacted(theirs, "my-ref", "z***n".into());
        assert_eq!(shown.row.account_ref, "my-ref");
        assert_eq!(shown.row.detail, FOREIGN_DETAIL);
        assert_eq!(shown.row.vendor_ref, "");
        assert_eq!(shown.display_hint, "z***n");
        let proto = to_proto(&shown, "Sim Pay 1", 0);
        assert_eq!(
            (proto.app_name.as_str(), proto.display_hint.as_str()),
            ("Sim Pay 1", "z***n")
        );
    }

    #[test]
    fn a_tickets_hint_and_account_id_never_open_as_each_other() {
        let keys = Keys::derive(&[7; 32]);
        let account_key = "0a1b";
        let hint = keys.seal(SealFor::AccountId(&hint_row(account_key)), b"z***g");
        let id = keys.seal(SealFor::AccountId(account_key), b"acct-1");
        assert!(keys.open(SealFor::AccountId(account_key), &hint).is_none());
        assert!(
            keys.open(SealFor::AccountId(&hint_row(account_key)), &id)
                .is_none()
        );
        assert_eq!(
            keys.open(SealFor::AccountId(&hint_row(account_key)), &hint),
            Some(b"z***g".to_vec())
        );
    }

    #[test]
    fn fingerprint_ignores_order_but_not_content() {
        let a = fingerprint("n", ["x", "y"].into_iter());
        assert_eq!(a, fingerprint("n", ["y", "x"].into_iter()));
        assert_ne!(a, fingerprint("n", ["x"].into_iter()));
        assert_ne!(a, fingerprint("m", ["x", "y"].into_iter()));
    }
}
