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
    security::{Keys, SealFor, random_id},
    store::{AppProgress, PushedNumber, Store, SubmitOutcome},
};

/// Numbers per `NotifyNumbersRecycled` call.
pub const BATCH_SIZE: usize = 1_000;

/// The longest submission key a carrier may send.
pub const MAX_SUBMISSION_KEY_LEN: usize = 128;

/// Most numbers in one submission.
pub const MAX_NUMBERS: usize = 1_000_000;

/// Numbers written per store transaction while a push arrives: five batches. A transaction this
/// size holds SQLite's write lock for milliseconds, so verifications and tickets keep being
/// written during a push of a million numbers, and the gateway holds at most this many numbers
/// of a push in memory.
pub const CHUNK: usize = 5 * BATCH_SIZE;

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
/// keyed hash and dates, in order (the raw numbers never enter it), fed as the numbers arrive.
#[derive(Default)]
struct Fingerprint(sha2::Sha256);

impl Fingerprint {
    fn add(&mut self, n: &PushedNumber) {
        use sha2::Digest;
        self.0.update(n.number_hash.as_bytes());
        self.0.update(n.cancelled_at.to_be_bytes());
        self.0.update(n.reissued_at.to_be_bytes());
    }

    fn hex(self) -> String {
        use sha2::Digest;
        self.0
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
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

    /// Starts receiving a submission for `tenant`, under the carrier's `key` if it sent one.
    /// Numbers go in with [`Receiving::add`] and are written in chunks of [`CHUNK`] as they
    /// arrive; [`Receiving::finish`] completes it. Dropped unfinished (a refused number, a
    /// broken stream), it is discarded.
    pub fn receive(&self, tenant: &str, key: Option<&str>) -> Receiving<'_> {
        Receiving {
            pusher: self,
            id: random_id("sub"),
            tenant: tenant.to_owned(),
            key: key.map(str::to_owned),
            apps: self
                .catalog
                .snapshot()
                .enabled()
                .map(|a| a.id.to_string())
                .collect(),
            pending: Vec::with_capacity(CHUNK),
            stored: 0,
            fingerprint: Fingerprint::default(),
            begun: false,
            finished: false,
        }
    }

    /// Finishes what a stopped replica left half done: submissions still arriving since before
    /// `before` are discarded, complete ones get their dates applied. Run by the housekeeping.
    pub async fn finish_interrupted(&self, before: i64) -> Result<usize, PushError> {
        let (abandoned, unapplied) = self.store.unfinished_submissions(before).await?;
        for id in &abandoned {
            self.store.discard_submission(id, CHUNK).await?;
        }
        for id in &unapplied {
            self.store.apply_submission(id, CHUNK).await?;
        }
        Ok(abandoned.len() + unapplied.len())
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

/// A submission as it arrives: at most [`CHUNK`] numbers held, the rest already in the store.
pub struct Receiving<'a> {
    pusher: &'a Pusher,
    id: String,
    tenant: String,
    key: Option<String>,
    /// The apps enabled when the push began: each gets every batch.
    apps: Vec<String>,
    pending: Vec<PushedNumber>,
    stored: usize,
    fingerprint: Fingerprint,
    /// Whether the submission has a row in the store yet (written with the first chunk).
    begun: bool,
    finished: bool,
}

impl Receiving<'_> {
    /// The carrier's submission key, if it sent one.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Numbers received so far.
    pub fn len(&self) -> usize {
        self.stored + self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds one number; writes a chunk when one is full.
    pub async fn add(&mut self, number: &Recycled) -> Result<(), PushError> {
        let keys = &self.pusher.keys;
        let number_hash = keys.number_hash(&number.phone).hex();
        let pushed = PushedNumber {
            sealed_number: keys.seal(
                SealFor::Number(&number_hash),
                number.phone.expose().as_bytes(),
            ),
            number_hash,
            cancelled_at: number.cancelled_at,
            reissued_at: number.reissued_at,
        };
        self.fingerprint.add(&pushed);
        self.pending.push(pushed);
        if self.pending.len() >= CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), PushError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let store = &self.pusher.store;
        let now = self.pusher.clock.now_ms();
        if !self.begun {
            store.begin_submission(&self.id, &self.tenant, now).await?;
            self.begun = true;
        }
        store
            .store_submission_chunk(
                &self.id,
                self.stored,
                &self.pending,
                &self.apps,
                BATCH_SIZE,
                now,
            )
            .await?;
        self.stored += self.pending.len();
        self.pending.clear();
        Ok(())
    }

    /// Writes the rest and completes the submission: delivered from now on, and answered from
    /// (its re-issue dates are applied before this returns; a replica that stops in between
    /// leaves them to the housekeeping). Sent again under its key, the first submission answers
    /// and this one is discarded.
    pub async fn finish(mut self) -> Result<Submitted, PushError> {
        self.flush().await?;
        let total = self.stored;
        let pusher = self.pusher;
        let fingerprint = std::mem::take(&mut self.fingerprint).hex();
        let key = self.key.as_deref().map(|k| (k, fingerprint.as_str()));
        let outcome = pusher
            .store
            .complete_submission(&self.id, &self.tenant, key, total, pusher.clock.now_ms())
            .await?;
        match outcome {
            SubmitOutcome::Created => {
                self.finished = true;
                pusher.store.apply_submission(&self.id, CHUNK).await?;
                tracing::info!(submission = %self.id, numbers = total, apps = self.apps.len(), "recycled numbers stored");
                pusher.wake.notify_one();
                Ok(Submitted {
                    id: self.id.clone(),
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
}

impl Drop for Receiving<'_> {
    /// An unfinished submission is discarded in the background (the housekeeping discards what a
    /// stopped replica left).
    fn drop(&mut self) {
        if self.begun && !self.finished {
            let store = self.pusher.store.clone();
            let id = std::mem::take(&mut self.id);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if let Err(e) = store.discard_submission(&id, CHUNK).await {
                        tracing::warn!(error = %e, "could not discard an unfinished push; the housekeeping will");
                    }
                });
            }
        }
    }
}
