//! Unbind tickets: creation (idempotent, one open ticket per account), claiming by workers
//! (leases; `FOR UPDATE SKIP LOCKED` on PostgreSQL so replicas never claim the same ticket), and
//! fenced transitions: a worker can only move a ticket it still holds the lease on, and every
//! transition is written to `ticket_events` in the same transaction.

use sqlx::{Row, any::AnyRow};

use super::{Backend, Store};
/// Why an account is unbound, as the adapter is told (stored as its proto name).
pub use crate::proto::unbind_account_request::Reason as UnbindReason;

/// Where a ticket is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TicketState {
    /// Created; not yet sent to the app.
    Queued,
    /// Sent (or being sent, or to be sent again after a transient failure).
    Sent,
    /// The app accepted it and finishes later; polled.
    Accepted,
    /// Unbound.
    Completed,
    /// The app refused.
    Rejected,
    /// Gave up: permanent error, or transient errors until the due date.
    Failed,
}

impl TicketState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sent => "sent",
            Self::Accepted => "accepted",
            Self::Completed => "completed",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
        }
    }

    /// The state a stored word names; `None` for a word the gateway never writes.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "queued" => Some(Self::Queued),
            "sent" => Some(Self::Sent),
            "accepted" => Some(Self::Accepted),
            "completed" => Some(Self::Completed),
            "rejected" => Some(Self::Rejected),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }

    /// The state a word read from the store names. A word the gateway never writes is an error,
    /// never a guess: read as FAILED it would end a ticket nobody ended (and free its account
    /// for a second unbind), read as open it would send it again.
    fn read(word: &str) -> sqlx::Result<Self> {
        Self::parse(word).ok_or_else(|| {
            sqlx::Error::Decode(
                format!(
                    "unknown ticket state {:?}",
                    word.chars().take(32).collect::<String>()
                )
                .into(),
            )
        })
    }

    /// Still under way.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Queued | Self::Sent | Self::Accepted)
    }
}

/// A ticket to create.
pub struct NewTicket {
    pub id: String,
    pub number_hash: String,
    pub sealed_number: String,
    pub app_id: String,
    pub sealed_account_id: String,
    pub account_key: String,
    pub account_ref: String,
    /// The hint the caller's listing showed for the account, sealed (bound to the account key,
    /// as the account id is); empty when the ref carried none.
    pub sealed_hint: String,
    pub reason: UnbindReason,
    pub due_at: i64,
}

/// A stored ticket.
#[derive(Clone, Debug)]
pub struct TicketRow {
    pub id: String,
    pub tenant: String,
    pub number_hash: String,
    pub sealed_number: String,
    pub app_id: String,
    pub sealed_account_id: String,
    pub account_key: String,
    pub account_ref: String,
    pub reason: UnbindReason,
    pub state: TicketState,
    /// Why it is in its state, as a code (`unbind::lifecycle::Why::code`); `""` while never
    /// attempted, and for tickets from before migration 0010.
    pub state_reason: String,
    pub detail: String,
    /// `detail` is the app's own text, not the gateway's words.
    pub detail_from_app: bool,
    pub vendor_ref: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub due_at: i64,
}

/// The outcome of one attempt, to record.
pub struct Finished<'a> {
    pub ticket: &'a TicketRow,
    /// The lease the ticket was claimed under.
    pub lease: &'a str,
    pub to: TicketState,
    pub state_reason: &'a str,
    pub detail: &'a str,
    pub detail_from_app: bool,
    pub vendor_ref: &'a str,
    pub next_attempt_at: i64,
    pub cause: &'a str,
}

/// One recorded transition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketEvent {
    pub at: i64,
    pub from: TicketState,
    pub to: TicketState,
    pub cause: String,
}

/// A ticket read for a caller: the row, and the hint the listing showed for its account when the
/// ticket was made, still sealed (`""` for a ticket made before migration 0009, or from a ref
/// that carried no hint). The worker's reads ([`TicketRow`] alone) never load it.
pub type ShownTicket = (TicketRow, String);

/// What `create_tickets` did.
#[derive(Debug)]
pub enum CreateOutcome {
    /// New tickets (or the already-open ticket of an account), in request order.
    Created(Vec<ShownTicket>),
    /// The same key with the same request: the tickets of the first time.
    Replayed(Vec<ShownTicket>),
    /// The same key with a different request.
    KeyReused,
}

const COLUMNS: &str = "id, tenant, number_hash, sealed_number, app_id, sealed_account_id, \
    account_key, account_ref, reason, state, state_reason, detail, detail_from_app, vendor_ref, \
    attempts, next_attempt_at, created_at, updated_at, due_at";
/// [`COLUMNS`] and the sealed hint: what callers' reads load.
const SHOWN_COLUMNS: &str = "id, tenant, number_hash, sealed_number, app_id, sealed_account_id, \
    account_key, account_ref, reason, state, state_reason, detail, detail_from_app, vendor_ref, \
    attempts, next_attempt_at, created_at, updated_at, due_at, sealed_hint";

const OPEN: &str = "('queued', 'sent', 'accepted')";
/// How often a ticket's insert is tried when the account's open ticket keeps ending meanwhile.
const INSERT_ATTEMPTS: usize = 3;

fn from_row(row: &AnyRow) -> sqlx::Result<TicketRow> {
    Ok(TicketRow {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        number_hash: row.try_get("number_hash")?,
        sealed_number: row.try_get("sealed_number")?,
        app_id: row.try_get("app_id")?,
        sealed_account_id: row.try_get("sealed_account_id")?,
        account_key: row.try_get("account_key")?,
        account_ref: row.try_get("account_ref")?,
        // Always one of the two words we store; anything else would be treated as the safer
        // of them (detach the number, keep the account).
        reason: UnbindReason::from_str_name(&row.try_get::<String, _>("reason")?)
            .unwrap_or(UnbindReason::NumberRecycled),
        state: TicketState::read(&row.try_get::<String, _>("state")?)?,
        state_reason: row.try_get("state_reason")?,
        detail: row.try_get("detail")?,
        detail_from_app: row.try_get::<i64, _>("detail_from_app")? != 0,
        vendor_ref: row.try_get("vendor_ref")?,
        attempts: row.try_get("attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        due_at: row.try_get("due_at")?,
    })
}

fn shown_from_row(row: &AnyRow) -> sqlx::Result<ShownTicket> {
    Ok((from_row(row)?, row.try_get("sealed_hint")?))
}

/// `$first, $first+1, ...` for an `IN (...)` list of `n` values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// Creates the tickets of one `Unbind` request in one transaction, idempotently per
    /// (tenant, key). An account that already has an open ticket keeps it (no second ticket).
    pub async fn create_tickets(
        &self,
        tenant: &str,
        idempotency_key: &str,
        fingerprint: &str,
        tickets: &[NewTicket],
        now: i64,
    ) -> sqlx::Result<CreateOutcome> {
        let mut tx = self.pool().begin().await?;
        // Written first, so this transaction holds the write lock from its first statement
        // (SQLite) and a concurrent replay waits for it (PostgreSQL).
        let claimed_key = sqlx::query(
            "INSERT INTO unbind_requests (tenant, idempotency_key, fingerprint, ticket_ids, created_at) \
             VALUES ($1, $2, $3, '', $4) ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(idempotency_key)
        .bind(fingerprint)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !claimed_key {
            let (stored, ids): (String, String) = sqlx::query_as(
                "SELECT fingerprint, ticket_ids FROM unbind_requests \
                 WHERE tenant = $1 AND idempotency_key = $2",
            )
            .bind(tenant)
            .bind(idempotency_key)
            .fetch_one(&mut *tx)
            .await?;
            tx.rollback().await?;
            if stored != fingerprint {
                return Ok(CreateOutcome::KeyReused);
            }
            let ids: Vec<String> = ids
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            return Ok(CreateOutcome::Replayed(self.tickets_by_ids(&ids).await?));
        }
        let mut ids = Vec::with_capacity(tickets.len());
        for t in tickets {
            ids.push(self.insert_or_find_open(&mut tx, tenant, t, now).await?);
        }
        sqlx::query(
            "UPDATE unbind_requests SET ticket_ids = $3 WHERE tenant = $1 AND idempotency_key = $2",
        )
        .bind(tenant)
        .bind(idempotency_key)
        .bind(ids.join(","))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(CreateOutcome::Created(self.tickets_by_ids(&ids).await?))
    }

    /// Inserts `t`, or finds the open ticket the account already has (this tenant's or
    /// another's: one open ticket per account, so the app is asked once). An open ticket that
    /// ends between the refused insert and the look-up is no longer in the way: the insert is
    /// tried again.
    async fn insert_or_find_open(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        tenant: &str,
        t: &NewTicket,
        now: i64,
    ) -> sqlx::Result<String> {
        for _ in 0..INSERT_ATTEMPTS {
            let inserted = sqlx::query(&format!(
                "INSERT INTO tickets ({SHOWN_COLUMNS}) VALUES \
                 ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'queued', '', '', 0, '', 0, $10, $10, $10, $11, \
                 $12) \
                 ON CONFLICT DO NOTHING"
            ))
            .bind(&t.id)
            .bind(tenant)
            .bind(&t.number_hash)
            .bind(&t.sealed_number)
            .bind(&t.app_id)
            .bind(&t.sealed_account_id)
            .bind(&t.account_key)
            .bind(&t.account_ref)
            .bind(t.reason.as_str_name())
            .bind(now)
            .bind(t.due_at)
            .bind(&t.sealed_hint)
            .execute(&mut **tx)
            .await?
            .rows_affected()
                == 1;
            if inserted {
                insert_event(
                    tx,
                    &t.id,
                    now,
                    TicketState::Queued,
                    TicketState::Queued,
                    "created",
                )
                .await?;
                return Ok(t.id.clone());
            }
            let open: Option<(String,)> = sqlx::query_as(&format!(
                "SELECT id FROM tickets WHERE account_key = $1 AND state IN {OPEN}"
            ))
            .bind(&t.account_key)
            .fetch_optional(&mut **tx)
            .await?;
            if let Some((id,)) = open {
                return Ok(id);
            }
        }
        // Tickets of one account opening and ending faster than a transaction: not seen; the
        // caller's retry of the same key will find the account settled.
        Err(sqlx::Error::RowNotFound)
    }

    /// Tickets by id, in the order asked (unknown ids are left out), with their sealed hints.
    pub async fn tickets_by_ids(&self, ids: &[String]) -> sqlx::Result<Vec<ShownTicket>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {SHOWN_COLUMNS} FROM tickets WHERE id IN ({})",
            placeholders(1, ids.len())
        );
        let mut query = sqlx::query(&sql);
        for id in ids {
            query = query.bind(id);
        }
        let rows = query.fetch_all(self.pool()).await?;
        let mut tickets: Vec<ShownTicket> =
            rows.iter().map(shown_from_row).collect::<Result<_, _>>()?;
        tickets.sort_by_key(|(t, _)| ids.iter().position(|id| *id == t.id));
        Ok(tickets)
    }

    /// A number's tickets created since `since`, newest first (at most 1,000), with their
    /// sealed hints.
    pub async fn tickets_for_number(
        &self,
        number_hash: &str,
        since: i64,
    ) -> sqlx::Result<Vec<ShownTicket>> {
        let rows = sqlx::query(&format!(
            "SELECT {SHOWN_COLUMNS} FROM tickets WHERE number_hash = $1 AND created_at >= $2 \
             ORDER BY created_at DESC, id LIMIT 1000"
        ))
        .bind(number_hash)
        .bind(since)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(shown_from_row).collect()
    }

    /// Claims up to `limit` open tickets that are due, until `lease_until`, under `lease` (a
    /// token unique to this claim, so a late write from an older claim of the same worker cannot
    /// overwrite a newer one). Queued tickets become `sent` (the worker is about to send them),
    /// with the transition recorded in the same transaction; every claimed ticket that will be
    /// sent counts an attempt.
    pub async fn claim_tickets(
        &self,
        lease: &str,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> sqlx::Result<Vec<TicketRow>> {
        let lock = match self.backend() {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let mut tx = self.pool().begin().await?;
        let rows = sqlx::query(&format!(
            "UPDATE tickets SET lease_owner = $1, lease_until = $2, \
             attempts = CASE WHEN state IN ('queued', 'sent') THEN attempts + 1 ELSE attempts END, \
             state = CASE WHEN state = 'queued' THEN 'sent' ELSE state END, \
             updated_at = CASE WHEN state = 'queued' THEN $3 ELSE updated_at END \
             WHERE id IN (SELECT id FROM tickets WHERE state IN {OPEN} AND next_attempt_at <= $3 \
             AND (lease_until IS NULL OR lease_until < $3) ORDER BY next_attempt_at LIMIT $4 {lock}) \
             RETURNING {COLUMNS}"
        ))
        .bind(lease)
        .bind(lease_until)
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let tickets: Vec<TicketRow> = rows.iter().map(from_row).collect::<Result<_, _>>()?;
        // The queued → sent transitions: a ticket is `sent` with its first attempt only when this
        // claim moved it (a re-claimed `sent` ticket has more attempts).
        let first_sends: Vec<&TicketRow> = tickets
            .iter()
            .filter(|t| t.state == TicketState::Sent && t.attempts == 1)
            .collect();
        if !first_sends.is_empty() {
            let values = (0..first_sends.len())
                .map(|i| format!("(${}, $1, 'queued', 'sent', 'claimed by worker')", i + 2))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO ticket_events (ticket_id, at, from_state, to_state, cause) VALUES {values}"
            );
            let mut query = sqlx::query(&sql).bind(now);
            for t in &first_sends {
                query = query.bind(&t.id);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(tickets)
    }

    /// Records the outcome of attempts, in one transaction: each ticket moves to its new state
    /// (the transition written to `ticket_events` when the state changes), gets its next attempt
    /// time, and is released. Each write is fenced on the lease it was claimed under; returns the
    /// ids recorded, leaving alone any ticket whose lease was lost meanwhile.
    pub async fn finish_attempts(
        &self,
        finished: &[Finished<'_>],
        now: i64,
    ) -> sqlx::Result<Vec<String>> {
        let mut recorded = Vec::with_capacity(finished.len());
        if finished.is_empty() {
            return Ok(recorded);
        }
        let mut tx = self.pool().begin().await?;
        // One statement per chunk: a join against a VALUES list both dialects accept.
        for chunk in finished.chunks(200) {
            let values = (0..chunk.len())
                .map(|i| {
                    let p = 2 + i * 8;
                    format!(
                        "(${p}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                        p + 1,
                        p + 2,
                        p + 3,
                        p + 4,
                        p + 5,
                        p + 6,
                        p + 7
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "UPDATE tickets SET state = v.column2, detail = v.column3, vendor_ref = v.column4, \
                 next_attempt_at = v.column5, state_reason = v.column7, detail_from_app = v.column8, \
                 updated_at = CASE WHEN tickets.state = v.column2 THEN tickets.updated_at ELSE $1 END, \
                 lease_owner = NULL, lease_until = NULL \
                 FROM (VALUES {values}) AS v \
                 WHERE tickets.id = v.column1 AND tickets.lease_owner = v.column6 RETURNING id"
            );
            let mut query = sqlx::query_as::<_, (String,)>(&sql).bind(now);
            for f in chunk {
                query = query
                    .bind(&f.ticket.id)
                    .bind(f.to.as_str())
                    .bind(f.detail)
                    .bind(f.vendor_ref)
                    .bind(f.next_attempt_at)
                    .bind(f.lease)
                    .bind(f.state_reason)
                    .bind(i64::from(f.detail_from_app));
            }
            recorded.extend(query.fetch_all(&mut *tx).await?.into_iter().map(|(id,)| id));
        }
        let transitions: Vec<&Finished<'_>> = finished
            .iter()
            .filter(|f| f.to != f.ticket.state && recorded.contains(&f.ticket.id))
            .collect();
        for chunk in transitions.chunks(200) {
            let values = (0..chunk.len())
                .map(|i| {
                    let p = 2 + i * 4;
                    format!("(${p}, $1, ${}, ${}, ${})", p + 1, p + 2, p + 3)
                })
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO ticket_events (ticket_id, at, from_state, to_state, cause) VALUES {values}"
            );
            let mut query = sqlx::query(&sql).bind(now);
            for f in chunk {
                query = query
                    .bind(&f.ticket.id)
                    .bind(f.ticket.state.as_str())
                    .bind(f.to.as_str())
                    .bind(f.cause);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(recorded)
    }

    /// Releases every lease `owner` holds (graceful shutdown), so another worker takes over now.
    /// Leases are named `OWNER/N` (see [`Store::claim_tickets`]).
    pub async fn release_leases(&self, owner: &str) -> sqlx::Result<u64> {
        Ok(sqlx::query(
            "UPDATE tickets SET lease_owner = NULL, lease_until = NULL WHERE lease_owner LIKE $1",
        )
        .bind(format!("{owner}/%"))
        .execute(self.pool())
        .await?
        .rows_affected())
    }

    /// A ticket's transitions, oldest first.
    pub async fn ticket_events(&self, ticket_id: &str) -> sqlx::Result<Vec<TicketEvent>> {
        let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
            "SELECT at, from_state, to_state, cause FROM ticket_events WHERE ticket_id = $1 ORDER BY at",
        )
        .bind(ticket_id)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|(at, from, to, cause)| {
                Ok(TicketEvent {
                    at,
                    from: TicketState::read(&from)?,
                    to: TicketState::read(&to)?,
                    cause,
                })
            })
            .collect()
    }

    /// Forgets idempotency keys older than `before` (kept at least 24 hours).
    pub async fn purge_unbind_requests(&self, before: i64) -> sqlx::Result<u64> {
        Ok(
            sqlx::query("DELETE FROM unbind_requests WHERE created_at < $1")
                .bind(before)
                .execute(self.pool())
                .await?
                .rows_affected(),
        )
    }

    /// Every ticket by state: a scan of the whole table, for tests and benchmarks (metrics use
    /// [`Store::count_open_tickets`]).
    pub async fn count_tickets_by_state(&self) -> sqlx::Result<Vec<(TicketState, i64)>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM tickets GROUP BY state")
                .fetch_all(self.pool())
                .await?;
        rows.into_iter()
            .map(|(s, n)| Ok((TicketState::read(&s)?, n)))
            .collect()
    }

    /// Open tickets by state, for metrics: read through the partial index of open tickets, so
    /// the cost follows the work in flight, not the table's history.
    pub async fn count_open_tickets(&self) -> sqlx::Result<Vec<(TicketState, i64)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
            "SELECT state, COUNT(*) FROM tickets WHERE state IN {OPEN} GROUP BY state"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|(s, n)| Ok((TicketState::read(&s)?, n)))
            .collect()
    }
}

impl Store {
    /// How often a ticket was sent again after its app, having accepted it, said it knew nothing
    /// of it (its `accepted` -> `sent` transitions).
    pub async fn resends(&self, ticket_id: &str) -> sqlx::Result<i64> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM ticket_events \
             WHERE ticket_id = $1 AND from_state = 'accepted' AND to_state = 'sent'",
        )
        .bind(ticket_id)
        .fetch_one(self.pool())
        .await?;
        Ok(n)
    }
}

async fn insert_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ticket_id: &str,
    at: i64,
    from: TicketState,
    to: TicketState,
    cause: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO ticket_events (ticket_id, at, from_state, to_state, cause) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(ticket_id)
    .bind(at)
    .bind(from.as_str())
    .bind(to.as_str())
    .bind(cause)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_words_and_say_whether_open() {
        use TicketState::*;
        let all = [Queued, Sent, Accepted, Completed, Rejected, Failed];
        let words: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            words,
            [
                "queued",
                "sent",
                "accepted",
                "completed",
                "rejected",
                "failed"
            ]
        );
        for state in all {
            assert_eq!(TicketState::parse(state.as_str()), Some(state));
        }
        let open: Vec<bool> = all.iter().map(|s| s.is_open()).collect();
        assert_eq!(open, [true, true, true, false, false, false]);
        // A word never written is an error (issue 14, item 3; this test asserted it was read as
        // FAILED, which ends a ticket nobody ended and frees its account for a second unbind).
        assert_eq!(TicketState::parse("xyzzy"), None);
        let error = TicketState::read("xyzzy").unwrap_err().to_string();
        assert!(error.contains("unknown ticket state"), "{error}");
    }
}
