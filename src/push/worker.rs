//! The push worker: the job loop ([`crate::jobs`], as for tickets: leases, so replicas share the
//! work and a dead replica's batches are taken over) over undelivered batches; each attempt calls
//! the app's `NotifyNumbersRecycled` through its client with the batch id as idempotency key, and
//! a failure is retried with the shared backoff until the app has it: delivery is at least once.

use std::sync::Arc;

use tokio::sync::{Notify, watch};

use crate::critical::CriticalTasks;
use crate::{
    clock::{Clock, timestamp_from_ms},
    config::UnbindConfig,
    fanout::Catalog,
    jobs::{self, Done, Jobs, LoopSettings},
    proto::{NotifyNumbersRecycledRequest, RecycledNumber},
    security::{Keys, SealFor},
    store::{Delivery, DeliveryState, Store},
};

/// Batches a replica delivers at once.
const CONCURRENCY: usize = 32;

pub struct PushWorker {
    pub(crate) store: Store,
    pub(crate) keys: Arc<Keys>,
    pub(crate) clock: Clock,
    pub(crate) catalog: Arc<Catalog>,
    /// Lease, poll and retry settings are shared with the ticket worker.
    pub(crate) config: UnbindConfig,
    pub(crate) wake: Arc<Notify>,
    pub(crate) owner: String,
    pub(crate) critical: CriticalTasks,
}

impl PushWorker {
    /// Runs the job loop ([`crate::jobs::run`]) until `shutdown`; then releases what it holds.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let settings = LoopSettings::from_config(&self.owner, CONCURRENCY, &self.config);
        let (clock, wake) = (self.clock.clone(), Arc::clone(&self.wake));
        let critical = self.critical.clone();
        jobs::run(self, clock, settings, wake, shutdown, critical).await;
    }
}

impl Jobs for PushWorker {
    type Job = Delivery;
    type Outcome = DeliveryState;
    const KIND: &'static str = "push deliveries";
    const RECORDER: &'static str = "push recorder";

    async fn claim(
        &self,
        lease: &str,
        now: i64,
        lease_until: i64,
        limit: usize,
    ) -> sqlx::Result<Vec<Delivery>> {
        self.store
            .claim_deliveries(lease, now, lease_until, limit as i64)
            .await
    }

    async fn attempt(&self, delivery: &Delivery) -> DeliveryState {
        self.try_deliver(delivery).await
    }

    /// Records each delivery, fenced on its lease: delivered or dropped for good, or due again
    /// after the shared backoff.
    async fn record(&self, done: &[Done<Delivery, DeliveryState>]) {
        let now = self.clock.now_ms();
        for Done {
            job: d,
            lease,
            outcome,
        } in done
        {
            let next = match outcome {
                DeliveryState::Pending => {
                    now + jobs::retry_delay(&self.config, d.attempts).as_millis() as i64
                }
                _ => now,
            };
            if let Err(e) = self.store.finish_delivery(d, lease, *outcome, next).await {
                tracing::warn!(error = %e, "could not record a push delivery; it will be retried");
            }
        }
    }

    async fn release(&self, owner: &str) -> sqlx::Result<u64> {
        self.store.release_delivery_leases(owner).await
    }
}

impl PushWorker {
    /// One attempt at one batch: delivered, still pending (retried with backoff), or dropped
    /// because the app left the catalog. A disabled app's batches wait until it is enabled again
    /// or removed.
    async fn try_deliver(&self, d: &Delivery) -> DeliveryState {
        let Some(app) = self.catalog.get(&d.app_id) else {
            tracing::info!(app = %d.app_id, "push batch dropped: the app is no longer in the catalog");
            return DeliveryState::AppRemoved;
        };
        if !app.enabled {
            return DeliveryState::Pending;
        }
        let rows = match self.store.batch_numbers(d).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "could not read a push batch");
                return DeliveryState::Pending;
            }
        };
        let mut numbers = Vec::with_capacity(rows.len());
        let mut unreadable = 0usize;
        for (number_hash, sealed, cancelled, reissued) in &rows {
            let row = SealFor::Number(number_hash);
            match self
                .keys
                .open(row, sealed)
                .and_then(|b| String::from_utf8(b).ok())
            {
                Some(phone) => numbers.push(RecycledNumber {
                    phone_number: phone,
                    cancelled_at: Some(timestamp_from_ms(*cancelled)),
                    reissued_at: Some(timestamp_from_ms(*reissued)),
                }),
                None => {
                    // A key this replica does not hold is the operator's to fix: the batch
                    // waits for it whole rather than reaching the app without its numbers.
                    if let Some(key) = self.keys.unheld_key(row, sealed) {
                        tracing::error!(
                            app = %d.app_id,
                            key = %key,
                            "a push batch is sealed under a key this replica does not hold; it waits until the keyring has it"
                        );
                        return DeliveryState::Pending;
                    }
                    unreadable += 1;
                }
            }
        }
        if unreadable > 0 {
            tracing::warn!(
                app = %d.app_id,
                numbers = unreadable,
                "pushed numbers whose sealed values do not open (altered in the store) are left out of a batch"
            );
        }
        let request = NotifyNumbersRecycledRequest {
            batch_id: format!("{}-{}", d.submission_id, d.batch_no),
            numbers,
        };
        // Through the app's client: its breaker, its concurrency limit shared with look-ups and
        // unbinds, its timeout.
        match app.client.notify_numbers_recycled(request).await {
            Ok(()) => DeliveryState::Delivered,
            Err(e) => {
                tracing::debug!(app = %app.id, code = ?e.code(), "push batch not delivered");
                DeliveryState::Pending
            }
        }
    }
}
