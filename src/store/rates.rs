//! Token buckets shared by every replica (`rate_buckets`): a tenant's request rate and its
//! wrong-code budget hold as totals however its calls spread over the replicas. Each draw is one
//! conditional `UPDATE`, atomic on both stores; replicas draw blocks of tokens and spend them
//! locally (`api::rate`), so the store sees a draw per block, not per request.

use super::Store;

/// A bucket's settings: `rate` tokens a second, at most `burst` saved up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BucketSpec {
    pub rate: f64,
    pub burst: f64,
}

impl Store {
    /// Takes `want` tokens from the bucket `name` (created full), else one if at least one is
    /// there, else none; returns how many were taken. The bucket is refilled first, by
    /// `rate` per second since it was last drawn from, up to `burst`.
    pub async fn take_tokens(
        &self,
        name: &str,
        want: f64,
        spec: BucketSpec,
        now_ms: i64,
    ) -> sqlx::Result<f64> {
        sqlx::query(
            "INSERT INTO rate_buckets (name, tokens, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(spec.burst)
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        // SET expressions all read the row as it was, so `refilled` can appear three times.
        // Time only moves forward for a bucket: a replica whose clock is behind refills nothing.
        let elapsed = "(CASE WHEN $2 > updated_at THEN $2 - updated_at ELSE 0 END)";
        let refilled = format!(
            "(CASE WHEN tokens + {elapsed} * $3 > $4 THEN $4 ELSE tokens + {elapsed} * $3 END)"
        );
        let grant =
            format!("(CASE WHEN {refilled} >= $5 THEN $5 WHEN {refilled} >= 1 THEN 1 ELSE 0 END)");
        let sql = format!(
            "UPDATE rate_buckets SET tokens = {refilled} - {grant}, last_grant = {grant}, \
             updated_at = CASE WHEN $2 > updated_at THEN $2 ELSE updated_at END \
             WHERE name = $1 RETURNING last_grant"
        );
        let (granted,): (f64,) = sqlx::query_as(&sql)
            .bind(name)
            .bind(now_ms)
            .bind(spec.rate / 1000.0)
            .bind(spec.burst)
            .bind(want)
            .fetch_one(self.pool())
            .await?;
        Ok(granted)
    }

    /// Whether the bucket `name` holds a token now (without taking one); a bucket never drawn
    /// from is full.
    pub async fn has_token(&self, name: &str, spec: BucketSpec, now_ms: i64) -> sqlx::Result<bool> {
        let row: Option<(f64, i64)> =
            sqlx::query_as("SELECT tokens, updated_at FROM rate_buckets WHERE name = $1")
                .bind(name)
                .fetch_optional(self.pool())
                .await?;
        Ok(match row {
            None => spec.burst >= 1.0,
            Some((tokens, at)) => {
                let elapsed = (now_ms - at).max(0) as f64 / 1000.0;
                (tokens + elapsed * spec.rate).min(spec.burst) >= 1.0
            }
        })
    }
}
