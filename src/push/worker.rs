//! The push worker: claims undelivered batches (leases, as for tickets, so replicas share the
//! work and a dead replica's batches are taken over), calls the app's `NotifyNumbersRecycled`
//! with the batch id as idempotency key, and retries failures with exponential backoff until the
//! app has them: delivery is at least once.

use std::sync::Arc;

use tokio::sync::{Notify, watch};

use crate::{
    backoff::Backoff,
    clock::{Clock, timestamp_from_ms},
    config::UnbindConfig,
    fanout::Catalog,
    proto::{NotifyNumbersRecycledRequest, RecycledNumber},
    security::{Keys, Purpose},
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
}

impl PushWorker {
    /// Runs until `shutdown`; then releases what it holds.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut claims: u64 = 0;
        while !*shutdown.borrow() {
            claims += 1;
            let lease = format!("{}/{claims}", self.owner);
            let now = self.clock.now_ms();
            let until = now + self.config.lease.as_millis() as i64;
            match self
                .store
                .claim_deliveries(&lease, now, until, CONCURRENCY as i64)
                .await
            {
                Ok(batch) if !batch.is_empty() => {
                    let attempts = batch.iter().map(|d| self.deliver(d, &lease));
                    futures::future::join_all(attempts).await;
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not claim push deliveries"),
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.config.poll_interval) => {}
                _ = shutdown.changed() => {}
            }
        }
        if let Err(e) = self.store.release_delivery_leases(&self.owner).await {
            tracing::warn!(error = %e, "could not release push delivery leases");
        }
    }

    async fn deliver(&self, d: &Delivery, lease: &str) {
        let outcome = self.try_deliver(d).await;
        let now = self.clock.now_ms();
        let c = &self.config;
        let next = match outcome {
            DeliveryState::Pending => {
                now + Backoff::new(c.retry_base, c.retry_max)
                    .retry(d.attempts, c.retry_jitter)
                    .as_millis() as i64
            }
            _ => now,
        };
        if let Err(e) = self.store.finish_delivery(d, lease, outcome, next).await {
            tracing::warn!(error = %e, "could not record a push delivery; it will be retried");
        }
    }

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
        let numbers: Vec<RecycledNumber> = rows
            .iter()
            .filter_map(|(sealed, cancelled, reissued)| {
                let phone =
                    String::from_utf8(self.keys.open(Purpose::StoredNumber, sealed)?).ok()?;
                Some(RecycledNumber {
                    phone_number: phone,
                    cancelled_at: Some(timestamp_from_ms(*cancelled)),
                    reissued_at: Some(timestamp_from_ms(*reissued)),
                })
            })
            .collect();
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
