//! The carrier push: the daily list of cancelled and re-issued numbers, stored first (so nothing
//! is lost once `SubmitRecycledNumbers` answers), then delivered to every enabled app by the
//! push worker in batches of at most 1,000 numbers, at least once, the batch id as idempotency
//! key; plus `CheckNumberRecycled` for app vendors, answered from what carriers pushed.

pub mod worker;

use std::sync::Arc;

use crate::{
    clock::Clock,
    domain::E164,
    fanout::Catalog,
    security::{Keys, Purpose, random_id},
    store::{AppProgress, PushedNumber, Store, SubmitOutcome},
};

/// Numbers per `NotifyNumbersRecycled` call.
pub const BATCH_SIZE: usize = 1_000;

/// The longest submission key a carrier may send.
pub const MAX_SUBMISSION_KEY_LEN: usize = 128;

/// Most numbers in one submission.
pub const MAX_NUMBERS: usize = 1_000_000;

/// Why a push could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("store: {0}")]
    Store(#[from] sqlx::Error),
    /// The submission key came before with other numbers.
    #[error("submission key reused with other content")]
    KeyReused,
}

/// A submission as stored, or as first stored when the carrier sent it again under its key.
pub struct Submitted {
    pub id: String,
    pub replayed: bool,
}

/// What a push holds, for comparing a resent push with the first: a digest of each number's
/// keyed hash and dates, in order (the raw numbers never enter it).
fn fingerprint(numbers: &[PushedNumber]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for n in numbers {
        hasher.update(n.number_hash.as_bytes());
        hasher.update(n.cancelled_at.to_be_bytes());
        hasher.update(n.reissued_at.to_be_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One number as a carrier sends it, validated.
pub struct Recycled {
    pub phone: E164,
    pub cancelled_at: i64,
    pub reissued_at: i64,
}

/// Stores submissions and answers questions about them.
pub struct Pusher {
    store: Store,
    keys: Arc<Keys>,
    clock: Clock,
    catalog: Arc<Catalog>,
    pub(crate) wake: Arc<tokio::sync::Notify>,
}

impl Pusher {
    pub fn new(store: Store, keys: Arc<Keys>, clock: Clock, catalog: Arc<Catalog>) -> Self {
        Self {
            store,
            keys,
            clock,
            catalog,
            wake: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Stores a submission and its deliveries (one per enabled app and batch); returns its id.
    pub async fn submit(
        &self,
        tenant: &str,
        key: Option<&str>,
        numbers: &[Recycled],
    ) -> Result<Submitted, PushError> {
        let id = random_id("sub");
        let pushed: Vec<PushedNumber> = numbers
            .iter()
            .map(|n| PushedNumber {
                number_hash: self.keys.number_hash(&n.phone).hex(),
                sealed_number: self
                    .keys
                    .seal(Purpose::StoredNumber, n.phone.expose().as_bytes()),
                cancelled_at: n.cancelled_at,
                reissued_at: n.reissued_at,
            })
            .collect();
        let apps: Vec<String> = self
            .catalog
            .snapshot()
            .enabled()
            .map(|a| a.id.to_string())
            .collect();
        let fingerprint = key.map(|_| fingerprint(&pushed));
        let key = key.zip(fingerprint.as_deref());
        let outcome = self
            .store
            .create_submission(
                &id,
                tenant,
                key,
                &pushed,
                &apps,
                BATCH_SIZE,
                self.clock.now_ms(),
            )
            .await?;
        match outcome {
            SubmitOutcome::Created => {
                tracing::info!(submission = %id, numbers = numbers.len(), apps = apps.len(), "recycled numbers stored");
                self.wake.notify_one();
                Ok(Submitted {
                    id,
                    replayed: false,
                })
            }
            SubmitOutcome::Replayed(first) => {
                tracing::info!(submission = %first, "a push sent again under its key: the first submission answers");
                Ok(Submitted {
                    id: first,
                    replayed: true,
                })
            }
            SubmitOutcome::KeyReused => Err(PushError::KeyReused),
        }
    }

    /// A submission's tenant, total, creation time and per-app progress; `None` if unknown.
    pub async fn progress(
        &self,
        id: &str,
    ) -> Result<Option<(String, i64, i64, Vec<AppProgress>)>, PushError> {
        let Some((tenant, total, created_at)) = self.store.submission(id).await? else {
            return Ok(None);
        };
        let apps = self.store.submission_progress(id).await?;
        Ok(Some((tenant, total, created_at, apps)))
    }

    /// Whether the number's holder changed after `since_ms`, as far as carriers have pushed.
    pub async fn recycled_since(&self, phone: &E164, since_ms: i64) -> Result<bool, PushError> {
        let hash = self.keys.number_hash(phone).hex();
        Ok(self
            .store
            .reissued_at(&hash)
            .await?
            .is_some_and(|at| at > since_ms))
    }
}
