//! Verification rows: started by `StartVerification`, consumed by `CompleteVerification`, possibly
//! on another replica. Every state change is a conditional `UPDATE`, so two concurrent attempts
//! can never both use a code or exceed the allowed tries.

use super::Store;

/// The life of a verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerificationState {
    /// A code may be entered.
    Pending,
    /// The code was used; a session was issued.
    Used,
    /// Too many wrong codes.
    Failed,
    /// A newer verification for the same number replaced this one.
    Superseded,
}

impl VerificationState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Used => "used",
            Self::Failed => "failed",
            Self::Superseded => "superseded",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "pending" => Self::Pending,
            "used" => Self::Used,
            "superseded" => Self::Superseded,
            // Anything unexpected is treated as dead.
            _ => Self::Failed,
        }
    }
}

/// What `StartVerification` writes.
pub struct NewVerification<'a> {
    pub id: &'a str,
    pub number_hash: &'a str,
    /// Keyed digest of (number, ID characters typed): what limits and superseding key on.
    pub pair_hash: &'a str,
    pub sealed_number: &'a str,
    pub tenant: &'a str,
    pub code_digest: &'a str,
    pub holder_since: Option<i64>,
    pub created_at: i64,
    pub expires_at: i64,
}

/// The hourly limits a start is held to.
#[derive(Clone, Copy, Debug)]
pub struct StartLimits {
    /// Starts per (number, ID characters).
    pub per_pair: u32,
    /// Different ID characters per number (the operator's opt-in cap).
    pub pairs_per_number: Option<u32>,
}

/// What became of a start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartOutcome {
    /// Kept; `pairs_tried` different ID characters were tried for the number this hour.
    Kept { pairs_tried: u64 },
    /// Not kept: these ID characters were tried too often this hour.
    PairCapped,
    /// Not kept: too many different ID characters were tried for the number this hour.
    NumberCapped,
}

/// A stored verification.
#[derive(Debug)]
pub struct VerificationRow {
    pub id: String,
    pub number_hash: String,
    pub sealed_number: String,
    pub tenant: String,
    pub code_digest: String,
    /// `None` for rows from before pairs were recorded.
    pub pair_hash: Option<String>,
    pub holder_since: Option<i64>,
    pub expires_at: i64,
    pub attempts: i64,
    pub state: VerificationState,
}

type RawRow = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<i64>,
    i64,
    i64,
    String,
);

impl Store {
    /// Records a new verification and supersedes the same tenant's older pending ones for the
    /// same (number, ID characters), unless that pair already started `limits.per_pair`
    /// verifications since `window_start` (from any tenant, on any replica), or the number had
    /// `limits.pairs_per_number` other pairs tried (when that opt-in cap is set); then nothing is
    /// kept.
    ///
    /// Nothing here is keyed on the number alone unless the operator set that cap: a start with
    /// other ID characters (a stranger's guess) neither counts against the holder's starts nor
    /// replaces the holder's pending code, and a start from another tenant never replaces one.
    /// The answer depends only on the pairs typed and how often, never on whether they matched.
    pub async fn start_verification(
        &self,
        v: &NewVerification<'_>,
        window_start: i64,
        limits: StartLimits,
    ) -> sqlx::Result<StartOutcome> {
        // Insert first and count after, so concurrent starts cannot both slip under the limit.
        sqlx::query(
            "INSERT INTO verifications (id, number_hash, pair_hash, sealed_number, tenant, \
             code_digest, holder_since, created_at, expires_at, attempts, state) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, 'pending')",
        )
        .bind(v.id)
        .bind(v.number_hash)
        .bind(v.pair_hash)
        .bind(v.sealed_number)
        .bind(v.tenant)
        .bind(v.code_digest)
        .bind(v.holder_since)
        .bind(v.created_at)
        .bind(v.expires_at)
        .execute(self.pool())
        .await?;
        let (of_pair,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM verifications WHERE pair_hash = $1 AND created_at >= $2",
        )
        .bind(v.pair_hash)
        .bind(window_start)
        .fetch_one(self.pool())
        .await?;
        let (pairs,): (i64,) = sqlx::query_as(
            "SELECT COUNT(DISTINCT pair_hash) FROM verifications \
             WHERE number_hash = $1 AND created_at >= $2",
        )
        .bind(v.number_hash)
        .bind(window_start)
        .fetch_one(self.pool())
        .await?;
        let refused = if of_pair > i64::from(limits.per_pair) {
            Some(StartOutcome::PairCapped)
        } else if limits
            .pairs_per_number
            .is_some_and(|cap| of_pair == 1 && pairs > i64::from(cap))
        {
            // A pair new this hour, beyond the number's cap of pairs.
            Some(StartOutcome::NumberCapped)
        } else {
            None
        };
        if let Some(refused) = refused {
            sqlx::query("DELETE FROM verifications WHERE id = $1")
                .bind(v.id)
                .execute(self.pool())
                .await?;
            return Ok(refused);
        }
        sqlx::query(
            "UPDATE verifications SET state = 'superseded' \
             WHERE pair_hash = $1 AND tenant = $2 AND state = 'pending' AND id <> $3",
        )
        .bind(v.pair_hash)
        .bind(v.tenant)
        .bind(v.id)
        .execute(self.pool())
        .await?;
        Ok(StartOutcome::Kept {
            pairs_tried: u64::try_from(pairs).unwrap_or(0),
        })
    }

    /// Reads one verification.
    pub async fn verification(&self, id: &str) -> sqlx::Result<Option<VerificationRow>> {
        let row: Option<RawRow> = sqlx::query_as(
            "SELECT id, number_hash, sealed_number, tenant, code_digest, pair_hash, \
             holder_since, expires_at, attempts, state FROM verifications WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|r| VerificationRow {
            id: r.0,
            number_hash: r.1,
            sealed_number: r.2,
            tenant: r.3,
            code_digest: r.4,
            pair_hash: r.5,
            holder_since: r.6,
            expires_at: r.7,
            attempts: r.8,
            state: VerificationState::parse(&r.9),
        }))
    }

    /// Counts one wrong code. Returns the attempts now used, or `None` when the verification was
    /// no longer pending. The attempt that reaches `max_attempts` kills the verification.
    pub async fn record_wrong_code(
        &self,
        id: &str,
        max_attempts: u32,
    ) -> sqlx::Result<Option<i64>> {
        let row: Option<(i64,)> = sqlx::query_as(
            "UPDATE verifications SET attempts = attempts + 1, \
             state = CASE WHEN attempts + 1 >= $2 THEN 'failed' ELSE state END \
             WHERE id = $1 AND state = 'pending' RETURNING attempts",
        )
        .bind(id)
        .bind(i64::from(max_attempts))
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|r| r.0))
    }

    /// Marks a verification used. `false` if it was no longer pending (used concurrently,
    /// superseded, failed).
    pub async fn consume_verification(&self, id: &str) -> sqlx::Result<bool> {
        let done =
            sqlx::query("UPDATE verifications SET state = $2 WHERE id = $1 AND state = 'pending'")
                .bind(id)
                .bind(VerificationState::Used.as_str())
                .execute(self.pool())
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Counts a look-up summary SMS for the number, unless `max_per_window` were already sent
    /// since `window_start` (on any replica); then nothing is kept and `false` is returned.
    pub async fn claim_summary_sms(
        &self,
        id: &str,
        number_hash: &str,
        now: i64,
        window_start: i64,
        max_per_window: u32,
    ) -> sqlx::Result<bool> {
        // Insert first and count after, as for verifications.
        sqlx::query("INSERT INTO summary_sms (id, number_hash, sent_at) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(number_hash)
            .bind(now)
            .execute(self.pool())
            .await?;
        let (count,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM summary_sms WHERE number_hash = $1 AND sent_at >= $2",
        )
        .bind(number_hash)
        .bind(window_start)
        .fetch_one(self.pool())
        .await?;
        if count > i64::from(max_per_window) {
            sqlx::query("DELETE FROM summary_sms WHERE id = $1")
                .bind(id)
                .execute(self.pool())
                .await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Deletes the summary SMS counts from before `before`; returns how many.
    pub async fn purge_summary_sms(&self, before: i64) -> sqlx::Result<u64> {
        let done = sqlx::query("DELETE FROM summary_sms WHERE sent_at < $1")
            .bind(before)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }

    /// Deletes verifications that expired before `before`; returns how many.
    pub async fn purge_verifications(&self, before: i64) -> sqlx::Result<u64> {
        let done = sqlx::query("DELETE FROM verifications WHERE expires_at < $1")
            .bind(before)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }
}
