//! Retention: what has served its purpose is deleted, a few hundred rows per statement, so no
//! purge holds SQLite's write lock or PostgreSQL's row locks for long. Housekeeping calls these
//! every minute with the cut-offs of `[retention]` and `[audit]`.

use super::Store;

/// Rows per statement.
const BATCH: i64 = 500;

/// Ticket states that end a ticket (everything but queued, sent, accepted).
const FINAL: &str = "state NOT IN ('queued', 'sent', 'accepted')";

impl Store {
    /// Deletes tickets that reached a final state before `before`, with their events. Returns
    /// how many tickets went.
    pub async fn purge_final_tickets(&self, before: i64) -> sqlx::Result<u64> {
        let mut total = 0;
        loop {
            let ids: Vec<(String,)> = sqlx::query_as(&format!(
                "SELECT id FROM tickets WHERE {FINAL} AND updated_at < $1 LIMIT {BATCH}"
            ))
            .bind(before)
            .fetch_all(self.pool())
            .await?;
            if ids.is_empty() {
                return Ok(total);
            }
            let list = (1..=ids.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let mut tx = self.pool().begin().await?;
            for (i, sql) in [
                format!("DELETE FROM ticket_events WHERE ticket_id IN ({list})"),
                format!("DELETE FROM tickets WHERE {FINAL} AND id IN ({list})"),
            ]
            .iter()
            .enumerate()
            {
                let mut q = sqlx::query(sql);
                for (id,) in &ids {
                    q = q.bind(id);
                }
                let done = q.execute(&mut *tx).await?.rows_affected();
                if i == 1 {
                    total += done;
                }
            }
            tx.commit().await?;
            if (ids.len() as i64) < BATCH {
                return Ok(total);
            }
        }
    }

    /// Deletes pushes made before `before` that are over: their dates applied to the history,
    /// and every app's batches delivered (or dropped with their app). The numbers go, then the
    /// deliveries, then the submission. Returns how many submissions went.
    pub async fn purge_finished_pushes(&self, before: i64) -> sqlx::Result<u64> {
        let over: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM submissions s WHERE state = 'applied' AND created_at < $1 \
             AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.submission_id = s.id AND d.delivered = 0) \
             ORDER BY created_at LIMIT 20",
        )
        .bind(before)
        .fetch_all(self.pool())
        .await?;
        for (id,) in &over {
            self.delete_submission_rows(id, BATCH).await?;
            sqlx::query("DELETE FROM submissions WHERE id = $1 AND state = 'applied'")
                .bind(id)
                .execute(self.pool())
                .await?;
        }
        Ok(over.len() as u64)
    }

    /// Deletes re-issue dates older than `before`: `CheckNumberRecycled` answers no date before
    /// the history window (`OUT_OF_RANGE`), and a re-issue before a date inside it changes no
    /// answer. Returns how many numbers' dates went.
    pub async fn purge_recycled_history(&self, before: i64) -> sqlx::Result<u64> {
        let mut total = 0;
        loop {
            let done = sqlx::query(&format!(
                "DELETE FROM recycled_numbers WHERE number_hash IN \
                 (SELECT number_hash FROM recycled_numbers WHERE reissued_at < $1 LIMIT {BATCH})"
            ))
            .bind(before)
            .execute(self.pool())
            .await?
            .rows_affected();
            total += done;
            if done < BATCH as u64 {
                return Ok(total);
            }
        }
    }

    /// Deletes audit records older than `before`, in batches by time (the table has no key).
    pub async fn purge_audit(&self, before: i64) -> sqlx::Result<u64> {
        let mut total = 0;
        loop {
            // The time of the batch's last record: everything up to it goes (a few more than a
            // batch when records share that millisecond).
            let edge: Option<(i64,)> = sqlx::query_as(&format!(
                "SELECT at FROM audit_log WHERE at < $1 ORDER BY at LIMIT 1 OFFSET {}",
                BATCH - 1
            ))
            .bind(before)
            .fetch_optional(self.pool())
            .await?;
            let (sql, bound) = match edge {
                Some((at,)) => ("DELETE FROM audit_log WHERE at <= $1", at),
                None => ("DELETE FROM audit_log WHERE at < $1", before),
            };
            total += sqlx::query(sql)
                .bind(bound)
                .execute(self.pool())
                .await?
                .rows_affected();
            if edge.is_none() {
                return Ok(total);
            }
        }
    }
}
