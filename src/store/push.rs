//! The carrier push in the store: submissions and their numbers, deliveries per (app, batch)
//! claimed with leases by the push worker of any replica, and the latest re-issue date per
//! number.

use std::collections::BTreeMap;

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

/// Per-app progress of a submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppProgress {
    pub app_id: String,
    pub batches_total: i64,
    pub batches_delivered: i64,
    pub numbers_delivered: i64,
}

impl Store {
    /// Stores a submission, its numbers, and one delivery per (app, batch of `batch_size`). With a
    /// carrier's `key` (submission key, content fingerprint): a key seen before answers the
    /// submission it made (same content) or [`SubmitOutcome::KeyReused`], and stores nothing.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_submission(
        &self,
        id: &str,
        tenant: &str,
        key: Option<(&str, &str)>,
        numbers: &[PushedNumber],
        app_ids: &[String],
        batch_size: usize,
        now: i64,
    ) -> sqlx::Result<SubmitOutcome> {
        let mut tx = self.pool().begin().await?;
        // Claimed first, so a concurrent push under the same key waits for this one (PostgreSQL)
        // or for the write lock (SQLite), then finds it.
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
        sqlx::query(
            "INSERT INTO submissions (id, tenant, total, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(tenant)
        .bind(numbers.len() as i64)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for (chunk_no, chunk) in numbers.chunks(200).enumerate() {
            let values = (0..chunk.len())
                .map(|i| {
                    let p = 2 + i * 4;
                    format!("($1, ${p}, ${}, ${}, ${})", p + 1, p + 2, p + 3)
                })
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO submission_numbers (submission_id, seq, sealed_number, cancelled_at, reissued_at) VALUES {values}"
            );
            let mut query = sqlx::query(&sql).bind(id);
            for (i, n) in chunk.iter().enumerate() {
                query = query
                    .bind((chunk_no * 200 + i) as i64)
                    .bind(&n.sealed_number)
                    .bind(n.cancelled_at)
                    .bind(n.reissued_at);
            }
            query.execute(&mut *tx).await?;
        }
        // The latest re-issue date per number: one row per number in the statement (an upsert
        // may not touch a row twice), in hash order (concurrent pushes lock rows in the same
        // order); the store keeps the later of its date and this one.
        let mut latest: BTreeMap<&str, i64> = BTreeMap::new();
        for n in numbers {
            let at = latest.entry(&n.number_hash).or_insert(n.reissued_at);
            *at = (*at).max(n.reissued_at);
        }
        let latest: Vec<(&str, i64)> = latest.into_iter().collect();
        for chunk in latest.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO recycled_numbers (number_hash, reissued_at) VALUES {} \
                 ON CONFLICT (number_hash) DO UPDATE SET reissued_at = excluded.reissued_at \
                 WHERE recycled_numbers.reissued_at < excluded.reissued_at",
                placeholders(chunk.len(), 2, 1, "", "")
            );
            let mut query = sqlx::query(&sql);
            for (hash, at) in chunk {
                query = query.bind(*hash).bind(*at);
            }
            query.execute(&mut *tx).await?;
        }
        // One delivery row per app and batch.
        let batches = numbers.len().div_ceil(batch_size.max(1));
        let rows: Vec<(&str, usize)> = app_ids
            .iter()
            .flat_map(|app| (0..batches).map(move |b| (app.as_str(), b)))
            .collect();
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO deliveries (submission_id, app_id, batch_no, first_seq, count, next_attempt_at) \
                 VALUES {}",
                placeholders(chunk.len(), 4, 3, "$1, ", ", $2")
            );
            let mut query = sqlx::query(&sql).bind(id).bind(now);
            for (app, b) in chunk {
                let first = b * batch_size;
                let count = batch_size.min(numbers.len() - first);
                query = query
                    .bind(*app)
                    .bind(*b as i64)
                    .bind(first as i64)
                    .bind(count as i64);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(SubmitOutcome::Created)
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
    pub async fn batch_numbers(&self, d: &Delivery) -> sqlx::Result<Vec<(String, i64, i64)>> {
        sqlx::query_as(
            "SELECT sealed_number, cancelled_at, reissued_at FROM submission_numbers \
             WHERE submission_id = $1 AND seq >= $2 AND seq < $3 ORDER BY seq",
        )
        .bind(&d.submission_id)
        .bind(d.first_seq)
        .bind(d.first_seq + d.count)
        .fetch_all(self.pool())
        .await
    }

    /// Records a delivery attempt (fenced on the lease): delivered, or due again at `next`.
    pub async fn finish_delivery(
        &self,
        d: &Delivery,
        lease: &str,
        delivered: bool,
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
        .bind(i64::from(delivered))
        .bind(next)
        .execute(self.pool())
        .await?
        .rows_affected()
            == 1)
    }

    /// A submission's tenant, total and creation time.
    pub async fn submission(&self, id: &str) -> sqlx::Result<Option<(String, i64, i64)>> {
        sqlx::query_as("SELECT tenant, total, created_at FROM submissions WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await
    }

    /// Per-app delivery progress of a submission.
    pub async fn submission_progress(&self, id: &str) -> sqlx::Result<Vec<AppProgress>> {
        let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT app_id, COUNT(*), CAST(SUM(delivered) AS BIGINT), CAST(SUM(delivered * count) AS BIGINT) \
             FROM deliveries \
             WHERE submission_id = $1 GROUP BY app_id ORDER BY app_id",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(app_id, batches_total, batches_delivered, numbers_delivered)| AppProgress {
                    app_id,
                    batches_total,
                    batches_delivered,
                    numbers_delivered,
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
