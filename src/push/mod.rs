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
    store::{AppProgress, PushedNumber, Store},
};

/// Numbers per `NotifyNumbersRecycled` call.
pub const BATCH_SIZE: usize = 1_000;

/// Most numbers in one submission.
pub const MAX_NUMBERS: usize = 1_000_000;

/// Why a push could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("store: {0}")]
    Store(#[from] sqlx::Error),
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
    pub async fn submit(&self, tenant: &str, numbers: &[Recycled]) -> Result<String, PushError> {
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
        self.store
            .create_submission(&id, tenant, &pushed, &apps, BATCH_SIZE, self.clock.now_ms())
            .await?;
        tracing::info!(submission = %id, numbers = numbers.len(), apps = apps.len(), "recycled numbers stored");
        self.wake.notify_one();
        Ok(id)
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
