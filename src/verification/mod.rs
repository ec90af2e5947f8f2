//! Identity verification: phone number + last six ID characters, checked against the carrier's
//! registry, then a one-time SMS code, traded for a session token.
//!
//! Anti-enumeration is the point of the design: `start` does the same work and gives the same
//! answer whether or not the ID characters match. On a mismatch no SMS is sent and the stored
//! digest is of a code nobody knows, so the verification simply never completes. The SMS itself
//! is sent in the background so its latency cannot tell the two cases apart.
//!
//! State lives in the store, so `start` and `complete` may run on different replicas.

use std::{collections::HashMap, sync::Arc, time::Duration};

use crate::{
    audit::{AuditLog, Entry},
    clock::Clock,
    config::VerificationConfig,
    domain::{E164, IdLastSix},
    registry::{RegistryClient, RegistryError, templates},
    security::{Keys, OneTimeCode, Purpose, Session, random_id},
    store::{NewVerification, Store, VerificationState},
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
}

const HOUR_MS: i64 = 3_600_000;

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
    ) -> Self {
        Self {
            store,
            audit,
            registry,
            keys,
            clock,
            config,
        }
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
        let result = self.start_inner(tenant, phone, id).await;
        self.audit.record(Entry {
            tenant,
            number_hash: &self.keys.number_hash(phone).hex(),
            action: "verification.start",
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
        let holder_since = self.registry.verify(phone, id).await?;
        let now = self.clock.now_ms();
        let verification_id = random_id("ver");
        // On a mismatch, store the digest of a code that is never sent.
        let code = OneTimeCode::generate();
        let code_digest = code.digest(&self.keys, &verification_id);
        let expires_ms = now + self.config.code_ttl.as_millis() as i64;
        let number_hash = self.keys.number_hash(phone).hex();
        let sealed_number = self
            .keys
            .seal(Purpose::StoredNumber, phone.expose().as_bytes());
        let kept = self
            .store
            .start_verification(
                &NewVerification {
                    id: &verification_id,
                    number_hash: &number_hash,
                    sealed_number: &sealed_number,
                    tenant,
                    code_digest: &code_digest,
                    holder_since,
                    created_at: now,
                    expires_at: expires_ms,
                },
                now - HOUR_MS,
                self.config.max_codes_per_hour,
            )
            .await?;
        if !kept {
            tracing::info!(number = %phone, "verification refused: too many codes this hour");
            return Err(VerifyError::MaxCodesExceeded {
                retry_after: Duration::from_secs(3600),
            });
        }
        if holder_since.is_some() {
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
            action: "verification.complete",
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
        // A row without holder_since never matched: no code can verify it.
        let right =
            row.holder_since.is_some() && code.matches(&self.keys, &row.id, &row.code_digest);
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
        let phone = self
            .keys
            .open(Purpose::StoredNumber, &row.sealed_number)
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| E164::parse(&s).ok())
            // Only a different signing secret can get here: the row is unusable.
            .ok_or(VerifyError::Expired)?;
        tracing::info!(number = %phone, "verification completed");
        Ok(Session {
            id: random_id("ses"),
            phone,
            tenant: tenant.to_owned(),
            holder_since_ms: row.holder_since.unwrap_or(0),
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
    pub async fn purge(&self) -> Result<u64, sqlx::Error> {
        self.store
            .purge_verifications(self.clock.now_ms() - HOUR_MS)
            .await
    }
}
