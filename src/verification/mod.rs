//! Identity verification: phone number + last six ID characters, checked against the carrier's
//! registry, then a one-time SMS code, traded for a session token.
//!
//! Anti-enumeration is the point of the design: `start` does the same work and gives the same
//! answer whether or not the ID characters match. On a mismatch no SMS is sent and the stored
//! digest is of a secret that is not a code, so the verification simply never completes. The
//! SMS itself is sent in the background, and `start` answers no sooner than a floor
//! (`verification.min_start_latency`, by default the registry's timeout), so neither the SMS nor
//! the registry's own speed shows. A registry error that is not transient is a mismatch (see
//! `RegistryClient::verify`).
//!
//! Nobody without the ID characters can stop the holder from verifying. The hourly cap and the
//! superseding of older codes are keyed on (number, ID characters typed), never on the number
//! alone, and a start never supersedes another tenant's verification: a stranger's starts with
//! made-up ID characters count against, and replace, only the stranger's own. That leaks
//! nothing: the cap answers the same whether the pair matched or not (it counts the pair, not
//! matches), so a guesser sees `MAX_CODES_EXCEEDED` after the same number of starts of a pair
//! whatever the truth, and a guesser who changes the ID characters each time never sees it at
//! all. SMS codes go only to matched pairs, so they too are capped per number at
//! `max_codes_per_hour`, without a second, number-wide cap that a stranger could fill.
//!
//! State lives in the store, so `start` and `complete` may run on different replicas.

pub mod metrics;

use std::{collections::HashMap, sync::Arc, time::Duration};

use self::metrics::VerificationMetrics;
use crate::{
    audit::{AuditAction, AuditLog, Entry},
    clock::Clock,
    config::VerificationConfig,
    domain::{E164, IdLastSix},
    registry::{RegistryClient, RegistryError, Verdict, templates},
    security::{Keys, OneTimeCode, SealFor, Session, random_id},
    store::{NewVerification, StartLimits, StartOutcome, Store, VerificationState},
};

/// Why a verification step failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("wrong code")]
    InvalidCode,
    #[error("verification expired, superseded, used or unknown")]
    Expired,
    #[error("too many wrong codes")]
    Failed,
    #[error("too many verifications for this number")]
    MaxCodesExceeded { retry_after: Duration },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("store: {0}")]
    Store(#[from] sqlx::Error),
}

/// A started verification, as the caller sees it.
#[derive(Debug)]
pub struct Started {
    pub verification_id: String,
    pub expires_ms: i64,
}

/// Runs verifications.
pub struct Verifier {
    store: Store,
    audit: AuditLog,
    registry: RegistryClient,
    keys: Arc<Keys>,
    clock: Clock,
    config: VerificationConfig,
    /// `start` answers no sooner than this.
    start_floor: Duration,
    metrics: VerificationMetrics,
}

const HOUR_MS: i64 = 3_600_000;

/// What a verification row seals: the number, a newline, and `holder_since` in 20 characters
/// (`+` and 19 digits, or 20 dashes when the registry gave no date or the ID characters did not
/// match), so every row's sealed value has one length.
fn stored_number(phone: &E164, holder_since: Option<i64>) -> String {
    match holder_since {
        Some(ms) => format!("{}\n{ms:+020}", phone.expose()),
        None => format!("{}\n{}", phone.expose(), "-".repeat(20)),
    }
}

/// The number and `holder_since` back from [`stored_number`]'s text; a row from before it
/// sealed the number alone and kept the date in its `holder_since` column (`legacy`).
fn stored_number_parts(text: &str, legacy: Option<i64>) -> Option<(E164, Option<i64>)> {
    match text.split_once('\n') {
        Some((phone, date)) => Some((
            E164::parse(phone).ok()?,
            if date.bytes().all(|b| b == b'-') {
                None
            } else {
                Some(date.parse().ok()?)
            },
        )),
        None => Some((E164::parse(text).ok()?, legacy)),
    }
}

/// The audit outcome of a verification step.
fn audit_outcome(result: Result<&'static str, &VerifyError>) -> String {
    match result {
        Ok(ok) => ok.to_owned(),
        Err(VerifyError::InvalidCode) => "invalid_code".into(),
        Err(VerifyError::Expired) => "expired".into(),
        Err(VerifyError::Failed) => "failed".into(),
        Err(VerifyError::MaxCodesExceeded { .. }) => "max_codes_exceeded".into(),
        Err(VerifyError::Registry(_)) => "registry_unavailable".into(),
        Err(VerifyError::Store(_)) => "store_unavailable".into(),
    }
}

impl Verifier {
    pub fn new(
        store: Store,
        audit: AuditLog,
        registry: RegistryClient,
        keys: Arc<Keys>,
        clock: Clock,
        config: VerificationConfig,
        metrics: VerificationMetrics,
    ) -> Self {
        let start_floor = config.start_floor(registry.timeout());
        Self {
            store,
            audit,
            registry,
            keys,
            clock,
            config,
            start_floor,
            metrics,
        }
    }

    /// Verification's metrics (the API counts each step's outcome and wrong codes by tenant).
    pub fn metrics(&self) -> &VerificationMetrics {
        &self.metrics
    }

    /// Starts a verification for `phone`, sending a code only if `id` matches the registry, and
    /// audits it (the audit does not say whether the ID matched either).
    pub async fn start(
        &self,
        tenant: &str,
        correlator: &str,
        phone: &E164,
        id: &IdLastSix,
    ) -> Result<Started, VerifyError> {
        let began = tokio::time::Instant::now();
        let result = self.start_inner(tenant, phone, id).await;
        // Every answer, error or not, waits for the floor: how long the registry or the store
        // took must not show.
        tokio::time::sleep_until(began + self.start_floor).await;
        self.audit.record(Entry {
            tenant,
            number_hash: &self.keys.number_hash(phone).hex(),
            action: AuditAction::VerificationStart,
            apps: String::new(),
            outcome: audit_outcome(result.as_ref().map(|_| "started")),
            correlator,
        });
        result
    }

    async fn start_inner(
        &self,
        tenant: &str,
        phone: &E164,
        id: &IdLastSix,
    ) -> Result<Started, VerifyError> {
        let verdict = self.registry.verify(phone, id).await?;
        let now = self.clock.now_ms();
        let verification_id = random_id("ver");
        let code = OneTimeCode::generate();
        // On a mismatch, store a digest no code matches, and no date.
        let (code_digest, holder_since) = match verdict {
            Verdict::Matched { holder_since_ms } => (
                code.digest(&self.keys, &verification_id),
                // A date in the future is no date either.
                holder_since_ms.filter(|&ms| ms <= now),
            ),
            Verdict::NotMatched => (
                OneTimeCode::unusable_digest(&self.keys, &verification_id),
                None,
            ),
        };
        let expires_ms = now + self.config.code_ttl.as_millis() as i64;
        let number_hash = self.keys.number_hash(phone).hex();
        let pair_hash = self.keys.pair_hash(phone, id);
        // The date travels sealed with the number, padded to one length, and the column stays
        // NULL: nothing in the row tells a reader of the store whether the ID characters
        // matched.
        let sealed_number = self.keys.seal(
            SealFor::Number(&number_hash),
            stored_number(phone, holder_since).as_bytes(),
        );
        let outcome = self
            .store
            .start_verification(
                &NewVerification {
                    id: &verification_id,
                    number_hash: &number_hash,
                    pair_hash: &pair_hash,
                    sealed_number: &sealed_number,
                    tenant,
                    code_digest: &code_digest,
                    holder_since: None,
                    created_at: now,
                    expires_at: expires_ms,
                },
                now - HOUR_MS,
                StartLimits {
                    per_pair: self.config.max_codes_per_hour,
                    pairs_per_number: self.config.max_ids_per_number_per_hour,
                },
            )
            .await?;
        match outcome {
            StartOutcome::Kept { pairs_tried } => {
                // Reported once, as the count goes over (it only grows within the hour).
                if pairs_tried == u64::from(self.config.id_guess_alert_per_hour) + 1 {
                    self.report_guessing(tenant, phone, &number_hash);
                }
            }
            StartOutcome::PairCapped => {
                tracing::info!(number = %phone, "verification refused: too many codes this hour for these ID characters");
                return Err(VerifyError::MaxCodesExceeded {
                    retry_after: Duration::from_secs(3600),
                });
            }
            StartOutcome::NumberCapped => {
                tracing::info!(number = %phone, "verification refused: too many different ID characters this hour");
                return Err(VerifyError::MaxCodesExceeded {
                    retry_after: Duration::from_secs(3600),
                });
            }
        }
        if matches!(verdict, Verdict::Matched { .. }) {
            let minutes = self.config.code_ttl.as_secs().div_ceil(60).to_string();
            let params = HashMap::from([
                ("code".to_owned(), code.expose().to_owned()),
                ("minutes".to_owned(), minutes),
            ]);
            self.registry
                .send_sms_detached(phone.clone(), templates::VERIFICATION_CODE, params);
        }
        tracing::info!(number = %phone, "verification started");
        Ok(Started {
            verification_id,
            expires_ms,
        })
    }

    /// Reports a number whose ID characters are being guessed at (many different ones within
    /// the hour): whoever holds the phone learns a match when a code arrives.
    fn report_guessing(&self, tenant: &str, phone: &E164, number_hash: &str) {
        tracing::warn!(
            number = %phone,
            tenant,
            "many different ID characters tried for one number this hour: someone may be guessing"
        );
        self.metrics.id_guessing_alert();
        self.audit.record(Entry {
            tenant,
            number_hash,
            action: AuditAction::IdGuessingAlert,
            apps: String::new(),
            outcome: "over_alert_rate".to_owned(),
            correlator: "",
        });
    }

    /// Checks a code; on success the verification is used up and a session begins. Audited.
    pub async fn complete(
        &self,
        tenant: &str,
        correlator: &str,
        verification_id: &str,
        code: &OneTimeCode,
    ) -> Result<Session, VerifyError> {
        let mut number_hash = String::new();
        let result = self
            .complete_inner(tenant, verification_id, code, &mut number_hash)
            .await;
        self.audit.record(Entry {
            tenant,
            number_hash: &number_hash,
            action: AuditAction::VerificationComplete,
            apps: String::new(),
            outcome: audit_outcome(result.as_ref().map(|_| "verified")),
            correlator,
        });
        result
    }

    async fn complete_inner(
        &self,
        tenant: &str,
        verification_id: &str,
        code: &OneTimeCode,
        number_hash: &mut String,
    ) -> Result<Session, VerifyError> {
        let row = self
            .store
            .verification(verification_id)
            .await?
            // A verification started by another tenant does not exist for this one.
            .filter(|row| row.tenant == tenant)
            .ok_or(VerifyError::Expired)?;
        number_hash.clone_from(&row.number_hash);
        let now = self.clock.now_ms();
        match row.state {
            VerificationState::Pending if now < row.expires_at => {}
            VerificationState::Failed => return Err(VerifyError::Failed),
            _ => return Err(VerifyError::Expired),
        }
        let max_attempts = self.config.max_attempts;
        // A mismatched row holds a digest no code matches. Rows from before pairs were recorded
        // marked a mismatch by a NULL holder_since instead (and held a real code's digest).
        let right = (row.pair_hash.is_some() || row.holder_since.is_some())
            && code.matches(&self.keys, &row.id, &row.code_digest);
        if !right {
            return match self.store.record_wrong_code(&row.id, max_attempts).await? {
                Some(attempts) if attempts < i64::from(max_attempts) => {
                    Err(VerifyError::InvalidCode)
                }
                Some(_) => Err(VerifyError::Failed),
                // Changed under us (used, superseded or failed concurrently).
                None => Err(self.dead_state(&row.id).await),
            };
        }
        if !self.store.consume_verification(&row.id).await? {
            return Err(self.dead_state(&row.id).await);
        }
        let (phone, holder_since) = self
            .keys
            .open(SealFor::Number(&row.number_hash), &row.sealed_number)
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| stored_number_parts(&s, row.holder_since))
            // Only a retired key or an altered row can get here: the row is unusable.
            .ok_or(VerifyError::Expired)?;
        tracing::info!(number = %phone, "verification completed");
        Ok(Session {
            id: random_id("ses"),
            phone,
            tenant: tenant.to_owned(),
            holder_since_ms: holder_since,
            issued_ms: now,
            expires_ms: now + self.config.session_ttl.as_millis() as i64,
        })
    }

    async fn dead_state(&self, id: &str) -> VerifyError {
        match self.store.verification(id).await {
            Ok(Some(row)) if row.state == VerificationState::Failed => VerifyError::Failed,
            Ok(_) => VerifyError::Expired,
            Err(e) => VerifyError::Store(e),
        }
    }

    /// Deletes verifications that expired over an hour ago (they still count towards the hourly
    /// limit until then).
    /// Also forgets the look-up summary SMS counted more than an hour ago.
    pub async fn purge(&self) -> Result<u64, sqlx::Error> {
        let hour_ago = self.clock.now_ms() - HOUR_MS;
        let verifications = self.store.purge_verifications(hour_ago).await?;
        let sms = self.store.purge_summary_sms(hour_ago).await?;
        Ok(verifications + sms)
    }

    /// Whether a look-up summary may go to the number by SMS: at most
    /// `max_summary_sms_per_hour` per number, across replicas. Counted when it says yes.
    pub async fn claim_summary_sms(&self, phone: &E164) -> Result<bool, sqlx::Error> {
        let now = self.clock.now_ms();
        self.store
            .claim_summary_sms(
                &random_id("sms"),
                &self.keys.number_hash(phone).hex(),
                now,
                now - HOUR_MS,
                self.config.max_summary_sms_per_hour,
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sealed_row_text_has_one_length_and_reads_back() {
        let phone = E164::parse("13800138000").unwrap();
        let dated = stored_number(&phone, Some(1_700_000_000_000));
        let undated = stored_number(&phone, None);
        assert_eq!(dated.len(), undated.len());
        assert_eq!(
            stored_number_parts(&dated, None),
            Some((phone.clone(), Some(1_700_000_000_000)))
        );
        assert_eq!(
            stored_number_parts(&undated, Some(5)),
            Some((phone.clone(), None))
        );
        // A row from before: the number alone, the date in its column.
        assert_eq!(
            stored_number_parts("+8613800138000", Some(5)),
            Some((phone, Some(5)))
        );
        assert_eq!(stored_number_parts("+8613800138000\nsoon", None), None);
    }
}
