//! The carrier push in the store: submissions and their numbers, deliveries per (app, batch)
//! claimed with leases by the push worker of any replica, and the latest re-issue date per
//! number.

use sqlx::Row;

use super::{Backend, Store};

/// Rows per multi-row statement (well under SQLite's 32,766 and PostgreSQL's 65,535 parameters).
const ROWS_PER_STATEMENT: usize = 500;

/// `(prefix$a, $a+1, …suffix), (…)`: `rows` groups of `per_row` numbered placeholders, the first
/// being `$first`.
fn placeholders(rows: usize, per_row: usize, first: usize, prefix: &str, suffix: &str) -> String {
    (0..rows)
        .map(|r| {
            let p = first + r * per_row;
            let numbered: Vec<String> = (p..p + per_row).map(|n| format!("${n}")).collect();
            format!("({prefix}{}{suffix})", numbered.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One pushed number, ready to store.
/// What storing a submission did.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitOutcome {
    Created,
    /// The same key and content came before: the submission they made.
    Replayed(String),
    /// The same key came before with other content.
    KeyReused,
}

pub struct PushedNumber {
    pub number_hash: String,
    pub sealed_number: String,
    pub cancelled_at: i64,
    pub reissued_at: i64,
}

/// A claimed delivery: one batch of one submission for one app.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub submission_id: String,
    pub app_id: String,
    pub batch_no: i64,
    pub first_seq: i64,
    pub count: i64,
    pub attempts: i64,
}

/// Where one batch is for one app (the `delivered` column).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryState {
    /// Not delivered yet: due again at its next attempt.
    Pending = 0,
    Delivered = 1,
    /// Never to be delivered: the app left the catalog.
    AppRemoved = 2,
}

/// Per-app progress of a submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppProgress {
    pub app_id: String,
    pub batches_total: i64,
    pub batches_delivered: i64,
    pub numbers_delivered: i64,
    /// Batches dropped because the app left the catalog.
    pub batches_dropped: i64,
}

impl Store {
    /// Opens a submission that is still arriving: nothing of it is delivered or answered from
    /// until [`Store::complete_submission`].
    pub async fn begin_submission(&self, id: &str, tenant: &str, now: i64) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO submissions (id, tenant, total, created_at, state) \
             VALUES ($1, $2, 0, $3, 'receiving')",
        )
        .bind(id)
        .bind(tenant)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Stores one chunk of an arriving submission: its numbers from `first_seq` (a multiple of
    /// `batch_size`) and one delivery per app for each batch they make, in one short
    /// transaction.
    pub async fn store_submission_chunk(
        &self,
        id: &str,
        first_seq: usize,
        numbers: &[PushedNumber],
        app_ids: &[String],
        batch_size: usize,
        now: i64,
    ) -> sqlx::Result<()> {
        let batch_size = batch_size.max(1);
        let mut tx = self.pool().begin().await?;
        for (chunk_no, chunk) in numbers.chunks(200).enumerate() {
            let sql = format!(
                "INSERT INTO submission_numbers \
                 (submission_id, seq, number_hash, sealed_number, cancelled_at, reissued_at) VALUES {}",
                placeholders(chunk.len(), 5, 2, "$1, ", "")
            );
            let mut query = sqlx::query(&sql).bind(id);
            for (i, n) in chunk.iter().enumerate() {
                query = query
                    .bind((first_seq + chunk_no * 200 + i) as i64)
                    .bind(&n.number_hash)
                    .bind(&n.sealed_number)
                    .bind(n.cancelled_at)
                    .bind(n.reissued_at);
            }
            query.execute(&mut *tx).await?;
        }
        let first_batch = first_seq / batch_size;
        let batches: Vec<(usize, usize)> = numbers
            .chunks(batch_size)
            .enumerate()
            .map(|(b, n)| (first_batch + b, n.len()))
            .collect();
        let rows: Vec<(&str, usize, usize)> = app_ids
            .iter()
            .flat_map(|app| {
                batches
                    .iter()
                    .map(move |&(b, count)| (app.as_str(), b, count))
            })
            .collect();
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO deliveries (submission_id, app_id, batch_no, first_seq, count, next_attempt_at) \
                 VALUES {}",
                placeholders(chunk.len(), 4, 3, "$1, ", ", $2")
            );
            let mut query = sqlx::query(&sql).bind(id).bind(now);
            for (app, b, count) in chunk {
                query = query
                    .bind(*app)
                    .bind(*b as i64)
                    .bind((b * batch_size) as i64)
                    .bind(*count as i64);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    /// Completes an arriving submission of `total` numbers: claims the carrier's `key`
    /// (submission key, content fingerprint) and makes the submission deliverable. A key seen
    /// before answers the submission it made (same content) or [`SubmitOutcome::KeyReused`], and
    /// completes nothing (the caller discards this one).
    pub async fn complete_submission(
        &self,
        id: &str,
        tenant: &str,
        key: Option<(&str, &str)>,
        total: usize,
        now: i64,
    ) -> sqlx::Result<SubmitOutcome> {
        let mut tx = self.pool().begin().await?;
        // Claimed in the same transaction as the completion, so of two pushes under one key
        // exactly one completes; the other waits for it (PostgreSQL's row lock, SQLite's write
        // lock), then finds it.
        if let Some((key, fingerprint)) = key {
            let claimed = sqlx::query(
                "INSERT INTO push_requests (tenant, submission_key, fingerprint, submission_id, created_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(tenant)
            .bind(key)
            .bind(fingerprint)
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !claimed {
                let (stored, first): (String, String) = sqlx::query_as(
                    "SELECT fingerprint, submission_id FROM push_requests \
                     WHERE tenant = $1 AND submission_key = $2",
                )
                .bind(tenant)
                .bind(key)
                .fetch_one(&mut *tx)
                .await?;
                tx.rollback().await?;
                return Ok(if stored == fingerprint {
                    SubmitOutcome::Replayed(first)
                } else {
                    SubmitOutcome::KeyReused
                });
            }
        }
        let completed = sqlx::query(
            "UPDATE submissions SET state = 'complete', total = $2 WHERE id = $1 AND state = 'receiving'",
        )
        .bind(id)
        .bind(total as i64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if completed != 1 {
            // Discarded meanwhile as abandoned: nothing is left to complete.
            tx.rollback().await?;
            return Err(sqlx::Error::RowNotFound);
        }
        tx.commit().await?;
        Ok(SubmitOutcome::Created)
    }

    /// Applies a complete submission's re-issue dates to the latest date per number, `chunk`
    /// numbers per transaction (the store keeps the later of its date and the pushed one, so a
    /// chunk applied twice changes nothing), then marks it applied.
    pub async fn apply_submission(&self, id: &str, chunk: usize) -> sqlx::Result<()> {
        let total: i64 = sqlx::query_as::<_, (i64,)>("SELECT total FROM submissions WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .map_or(0, |r| r.0);
        let chunk = chunk.max(1) as i64;
        let mut from = 0;
        while from < total {
            // One row per number in the statement (an upsert may not touch a row twice), in hash
            // order (concurrent pushes lock rows in the same order).
            sqlx::query(
                "INSERT INTO recycled_numbers (number_hash, reissued_at) \
                 SELECT number_hash, MAX(reissued_at) FROM submission_numbers \
                 WHERE submission_id = $1 AND seq >= $2 AND seq < $3 AND number_hash IS NOT NULL \
                 GROUP BY number_hash ORDER BY number_hash \
                 ON CONFLICT (number_hash) DO UPDATE SET reissued_at = excluded.reissued_at \
                 WHERE recycled_numbers.reissued_at < excluded.reissued_at",
            )
            .bind(id)
            .bind(from)
            .bind(from + chunk)
            .execute(self.pool())
            .await?;
            from += chunk;
        }
        sqlx::query(
            "UPDATE submissions SET state = 'applied' WHERE id = $1 AND state = 'complete'",
        )
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Deletes a submission that will never complete, `chunk` rows per statement.
    pub async fn discard_submission(&self, id: &str, chunk: usize) -> sqlx::Result<()> {
        let state: Option<(String,)> =
            sqlx::query_as("SELECT state FROM submissions WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await?;
        if state.is_none_or(|(s,)| s != "receiving") {
            // Complete (or gone): never discarded.
            return Ok(());
        }
        self.delete_submission_rows(id, chunk.max(1) as i64).await?;
        sqlx::query("DELETE FROM submissions WHERE id = $1 AND state = 'receiving'")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Deletes a submission's numbers, then its deliveries, `chunk` rows per statement (the
    /// submission's own row is the caller's to delete, on its own condition).
    pub(super) async fn delete_submission_rows(&self, id: &str, chunk: i64) -> sqlx::Result<()> {
        for sql in [
            "DELETE FROM submission_numbers WHERE submission_id = $1 AND seq IN \
             (SELECT seq FROM submission_numbers WHERE submission_id = $1 LIMIT $2)",
            "DELETE FROM deliveries WHERE submission_id = $1 AND (app_id, batch_no) IN \
             (SELECT app_id, batch_no FROM deliveries WHERE submission_id = $1 LIMIT $2)",
        ] {
            while sqlx::query(sql)
                .bind(id)
                .bind(chunk)
                .execute(self.pool())
                .await?
                .rows_affected()
                > 0
            {}
        }
        Ok(())
    }

    /// Submissions a stopped replica left half done: still arriving since before `before`
    /// (to discard), or complete with their dates not applied (to apply).
    pub async fn unfinished_submissions(
        &self,
        before: i64,
    ) -> sqlx::Result<(Vec<String>, Vec<String>)> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT id, state FROM submissions \
             WHERE (state = 'receiving' AND created_at < $1) OR state = 'complete' \
             ORDER BY created_at LIMIT 100",
        )
        .bind(before)
        .fetch_all(self.pool())
        .await?;
        let (abandoned, unapplied): (Vec<_>, Vec<_>) = rows
            .into_iter()
            .partition(|(_, state)| state == "receiving");
        Ok((
            abandoned.into_iter().map(|r| r.0).collect(),
            unapplied.into_iter().map(|r| r.0).collect(),
        ))
    }

    /// Claims up to `limit` due, undelivered batches under `lease` until `lease_until`.
    pub async fn claim_deliveries(
        &self,
        lease: &str,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> sqlx::Result<Vec<Delivery>> {
        let lock = match self.backend() {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let rows = sqlx::query(&format!(
            "UPDATE deliveries SET lease_owner = $1, lease_until = $2, attempts = attempts + 1 \
             WHERE (submission_id, app_id, batch_no) IN (SELECT submission_id, app_id, batch_no FROM deliveries \
             WHERE delivered = 0 AND next_attempt_at <= $3 AND (lease_until IS NULL OR lease_until < $3) \
             AND EXISTS (SELECT 1 FROM submissions s WHERE s.id = deliveries.submission_id AND s.state <> 'receiving') \
             ORDER BY next_attempt_at LIMIT $4 {lock}) \
             RETURNING submission_id, app_id, batch_no, first_seq, count, attempts"
        ))
        .bind(lease)
        .bind(lease_until)
        .bind(now)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Delivery {
                    submission_id: r.try_get("submission_id")?,
                    app_id: r.try_get("app_id")?,
                    batch_no: r.try_get("batch_no")?,
                    first_seq: r.try_get("first_seq")?,
                    count: r.try_get("count")?,
                    attempts: r.try_get("attempts")?,
                })
            })
            .collect()
    }

    /// The numbers of one batch: (sealed number, cancelled_at, reissued_at), in order.
    pub async fn batch_numbers(
        &self,
        d: &Delivery,
    ) -> sqlx::Result<Vec<(String, String, i64, i64)>> {
        sqlx::query_as(
            "SELECT COALESCE(number_hash, ''), sealed_number, cancelled_at, reissued_at FROM submission_numbers \
             WHERE submission_id = $1 AND seq >= $2 AND seq < $3 ORDER BY seq",
        )
        .bind(&d.submission_id)
        .bind(d.first_seq)
        .bind(d.first_seq + d.count)
        .fetch_all(self.pool())
        .await
    }

    /// Records a delivery attempt (fenced on the lease): its new state, due again at `next` if
    /// still pending.
    pub async fn finish_delivery(
        &self,
        d: &Delivery,
        lease: &str,
        state: DeliveryState,
        next: i64,
    ) -> sqlx::Result<bool> {
        Ok(sqlx::query(
            "UPDATE deliveries SET delivered = $5, next_attempt_at = $6, lease_owner = NULL, lease_until = NULL \
             WHERE submission_id = $1 AND app_id = $2 AND batch_no = $3 AND lease_owner = $4",
        )
        .bind(&d.submission_id)
        .bind(&d.app_id)
        .bind(d.batch_no)
        .bind(lease)
        .bind(state as i64)
        .bind(next)
        .execute(self.pool())
        .await?
        .rows_affected()
            == 1)
    }

    /// A submission's tenant, total and creation time.
    pub async fn submission(&self, id: &str) -> sqlx::Result<Option<(String, i64, i64)>> {
        sqlx::query_as(
            "SELECT tenant, total, created_at FROM submissions WHERE id = $1 AND state <> 'receiving'",
        )
            .bind(id)
            .fetch_optional(self.pool())
            .await
    }

    /// Per-app delivery progress of a submission.
    pub async fn submission_progress(&self, id: &str) -> sqlx::Result<Vec<AppProgress>> {
        let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT app_id, COUNT(*), \
             CAST(SUM(CASE WHEN delivered = 1 THEN 1 ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN delivered = 1 THEN count ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN delivered = 2 THEN 1 ELSE 0 END) AS BIGINT) \
             FROM deliveries \
             WHERE submission_id = $1 GROUP BY app_id ORDER BY app_id",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(app_id, batches_total, batches_delivered, numbers_delivered, batches_dropped)| {
                    AppProgress {
                        app_id,
                        batches_total,
                        batches_delivered,
                        numbers_delivered,
                        batches_dropped,
                    }
                },
            )
            .collect())
    }

    /// The latest re-issue date pushed for a number, if any.
    pub async fn reissued_at(&self, number_hash: &str) -> sqlx::Result<Option<i64>> {
        Ok(sqlx::query_as::<_, (i64,)>(
            "SELECT reissued_at FROM recycled_numbers WHERE number_hash = $1",
        )
        .bind(number_hash)
        .fetch_optional(self.pool())
        .await?
        .map(|r| r.0))
    }

    /// Forgets submission keys older than `before` (a carrier resends within hours, not days).
    pub async fn purge_push_requests(&self, before: i64) -> sqlx::Result<u64> {
        Ok(
            sqlx::query("DELETE FROM push_requests WHERE created_at < $1")
                .bind(before)
                .execute(self.pool())
                .await?
                .rows_affected(),
        )
    }

    /// Releases every delivery lease of `owner` (graceful shutdown).
    pub async fn release_delivery_leases(&self, owner: &str) -> sqlx::Result<u64> {
        Ok(sqlx::query("UPDATE deliveries SET lease_owner = NULL, lease_until = NULL WHERE lease_owner LIKE $1")
            .bind(format!("{owner}/%"))
            .execute(self.pool())
            .await?
            .rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::placeholders;

    #[test]
    fn placeholders_number_rows_from_the_first_with_fixed_parts_around() {
        assert_eq!(placeholders(2, 2, 1, "", ""), "($1, $2), ($3, $4)");
        assert_eq!(
            placeholders(2, 2, 3, "$1, ", ", $2"),
            "($1, $3, $4, $2), ($1, $5, $6, $2)"
        );
    }
}
