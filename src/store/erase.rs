//! Erasure of one number: everything the store holds about it goes, in one transaction, except
//! the audit records the law requires (which hold only the keyed hash).

use super::Store;

/// How many rows of each kind an erasure removed (counts only: never what they held).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Erased {
    pub verifications: u64,
    pub summary_sms: u64,
    pub tickets: u64,
    pub ticket_events: u64,
    pub idempotency_keys: u64,
    pub pushed_numbers: u64,
    pub history: u64,
    /// Audit records about the number, kept (keyed hash only).
    pub audit_records_kept: u64,
}

impl Store {
    /// Removes everything held about the number hashed as `number_hash` but its audit records.
    pub async fn erase_number(&self, number_hash: &str) -> sqlx::Result<Erased> {
        let mut tx = self.pool().begin().await?;
        let tickets: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM tickets WHERE number_hash = $1")
                .bind(number_hash)
                .fetch_all(&mut *tx)
                .await?;
        let mut erased = Erased::default();
        for (id,) in &tickets {
            erased.ticket_events += sqlx::query("DELETE FROM ticket_events WHERE ticket_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            // The idempotency keys whose requests made this number's tickets (their ids are
            // listed in the row).
            erased.idempotency_keys +=
                sqlx::query("DELETE FROM unbind_requests WHERE ticket_ids LIKE '%' || $1 || '%'")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
        }
        for (sql, count) in [
            (
                "DELETE FROM tickets WHERE number_hash = $1",
                &mut erased.tickets,
            ),
            (
                "DELETE FROM verifications WHERE number_hash = $1",
                &mut erased.verifications,
            ),
            (
                "DELETE FROM summary_sms WHERE number_hash = $1",
                &mut erased.summary_sms,
            ),
            (
                "DELETE FROM submission_numbers WHERE number_hash = $1",
                &mut erased.pushed_numbers,
            ),
            (
                "DELETE FROM recycled_numbers WHERE number_hash = $1",
                &mut erased.history,
            ),
        ] {
            *count = sqlx::query(sql)
                .bind(number_hash)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        let (kept,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM audit_log WHERE number_hash = $1")
                .bind(number_hash)
                .fetch_one(&mut *tx)
                .await?;
        erased.audit_records_kept = kept as u64;
        tx.commit().await?;
        Ok(erased)
    }
}
