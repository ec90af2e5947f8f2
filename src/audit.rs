//! The audit trail: every verification, look-up and unbind leaves a record (tenant, keyed hash of
//! the number, action, apps, outcome, correlator, time). Records go through a queue to a writer
//! that stores them in batches, so auditing never puts a database round trip on the request path;
//! `flush` waits until everything queued so far is stored (graceful shutdown, tests).

use tokio::sync::{mpsc, oneshot};

use crate::{
    clock::Clock,
    store::{AuditRecord, Store},
};

enum Message {
    Record(AuditRecord),
    Flush(oneshot::Sender<()>),
}

/// The audit queue. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Message>,
    clock: Clock,
}

/// What one audited action was.
pub struct Entry<'a> {
    pub tenant: &'a str,
    pub number_hash: &'a str,
    pub action: &'a str,
    pub apps: String,
    pub outcome: String,
    pub correlator: &'a str,
}

impl AuditLog {
    /// Starts the writer.
    pub fn start(store: Store, clock: Clock) -> Self {
        let (tx, rx) = mpsc::channel(100_000);
        tokio::spawn(write(store, rx));
        Self { tx, clock }
    }

    /// Queues a record. If the queue is full the record is logged as lost (never blocks).
    pub fn record(&self, entry: Entry<'_>) {
        let record = AuditRecord {
            at: self.clock.now_ms(),
            tenant: entry.tenant.to_owned(),
            number_hash: entry.number_hash.to_owned(),
            action: entry.action.to_owned(),
            apps: entry.apps,
            outcome: entry.outcome,
            correlator: entry.correlator.to_owned(),
        };
        if self.tx.try_send(Message::Record(record)).is_err() {
            tracing::error!(action = entry.action, "audit record lost: queue full");
        }
    }

    /// Waits until every record queued before this call is stored.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Message::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

async fn write(store: Store, mut rx: mpsc::Receiver<Message>) {
    let mut messages = Vec::with_capacity(1024);
    while rx.recv_many(&mut messages, 1024).await > 0 {
        let mut records = Vec::with_capacity(messages.len());
        let mut waiting = Vec::new();
        for m in messages.drain(..) {
            match m {
                Message::Record(r) => records.push(r),
                Message::Flush(done) => waiting.push(done),
            }
        }
        if !records.is_empty() {
            if let Err(e) = store.append_audit(&records).await {
                tracing::error!(records = records.len(), error = %e, "audit records could not be stored");
            }
        }
        for done in waiting {
            let _ = done.send(());
        }
    }
}
