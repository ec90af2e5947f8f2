//! The audit trail: every verification, look-up and unbind leaves a record (tenant, keyed hash of
//! the number, action, apps, outcome, correlator, time). Records go through a queue to a writer
//! that stores them in batches, so auditing never puts a database round trip on the request path;
//! `flush` waits until everything queued so far is stored (graceful shutdown, tests).
//!
//! A batch the store refuses (a restart, a failover, a full disk) is kept and written again,
//! backing off up to [`RETRY_MAX`], until it is stored; meanwhile new records wait in the queue.
//! Only if the queue fills ([`QUEUE`] records) are records dropped, each logged and counted
//! (`unbind_audit_records_lost_total`): auditing never blocks or fails a request.

use std::time::Duration;

use futures::{FutureExt, future::BoxFuture};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot};

use crate::{
    backoff::Backoff,
    clock::Clock,
    metrics::Metrics,
    store::{AuditRecord, Store},
};

/// Records the queue holds while the store is slow or away.
const QUEUE: usize = 100_000;
/// Most records stored in one statement.
const BATCH: usize = 1024;
/// First wait before writing a refused batch again; doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

enum Message {
    Record(AuditRecord),
    Flush(oneshot::Sender<()>),
}

/// The audit queue. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Message>,
    clock: Clock,
    metrics: AuditMetrics,
}

/// What an audit record is about; stored as its word (`lookup`, `verification.start`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditAction {
    /// `StartVerification`.
    VerificationStart,
    /// `CompleteVerification`.
    VerificationComplete,
    /// a number had more ID characters tried than the alert rate.
    IdGuessingAlert,
    /// a tenant's callers went over its wrong-code alert rate.
    WrongCodesAlert,
    /// `ListLinkedAccounts`.
    Lookup,
    /// `StreamLinkedAccounts`.
    LookupStream,
    /// A `StreamLinkedAccounts` whose caller went away before the end.
    LookupStreamAbandoned,
    /// `Unbind`.
    Unbind,
    /// `GetUnbindTickets`.
    TicketsRead,
    /// `ListApps`.
    AppsList,
    /// `SubmitRecycledNumbers`.
    Push,
    /// `GetSubmission`.
    PushProgress,
    /// `CheckNumberRecycled`.
    CheckRecycled,
}

impl AuditAction {
    /// The word stored in the record (what `unbind-gateway audit --action` filters on).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VerificationStart => "verification.start",
            Self::VerificationComplete => "verification.complete",
            Self::IdGuessingAlert => "number.id_guessing_alert",
            Self::WrongCodesAlert => "tenant.wrong_codes_alert",
            Self::Lookup => "lookup",
            Self::LookupStream => "lookup.stream",
            Self::LookupStreamAbandoned => "lookup.stream.abandoned",
            Self::Unbind => "unbind",
            Self::TicketsRead => "tickets.read",
            Self::AppsList => "apps.list",
            Self::Push => "push",
            Self::PushProgress => "push.progress",
            Self::CheckRecycled => "check_recycled",
        }
    }
}

/// What one audited action was.
pub struct Entry<'a> {
    pub tenant: &'a str,
    pub number_hash: &'a str,
    pub action: AuditAction,
    pub apps: String,
    pub outcome: String,
    pub correlator: &'a str,
}

/// The audit writer's metrics: batches the store refused (each retried), records lost.
///
/// | metric | type | labels |
/// |---|---|---|
/// | `unbind_audit_write_failures_total` | counter (batches retried) | |
/// | `unbind_audit_records_lost_total` | counter (queue full, or refused for good) | |
#[derive(Clone)]
pub struct AuditMetrics {
    write_failures: Counter,
    lost: Counter,
}

impl AuditMetrics {
    /// Declares the counters in `metrics`' registry (once per registry).
    pub fn register(metrics: &Metrics) -> Self {
        let m = Self {
            write_failures: Counter::default(),
            lost: Counter::default(),
        };
        metrics.register(
            "audit_write_failures",
            "Audit batches the store refused (each is retried until stored)",
            m.write_failures.clone(),
        );
        metrics.register(
            "audit_records_lost",
            "Audit records dropped because the queue to the store was full",
            m.lost.clone(),
        );
        m
    }

    fn audit_write_failed(&self) {
        self.write_failures.inc();
    }

    fn audit_record_lost(&self) {
        self.lost.inc();
    }
}

impl AuditLog {
    /// Starts the writer.
    pub fn start(
        store: Store,
        clock: Clock,
        metrics: AuditMetrics,
        critical: &crate::critical::CriticalTasks,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        critical.spawn_finite("audit writer", write(store, rx, metrics.clone()));
        Self { tx, clock, metrics }
    }

    /// Queues a record. If the queue is full the record is logged as lost (never blocks).
    pub fn record(&self, entry: Entry<'_>) {
        let record = AuditRecord {
            at: self.clock.now_ms(),
            tenant: entry.tenant.to_owned(),
            number_hash: entry.number_hash.to_owned(),
            action: entry.action.as_str().to_owned(),
            apps: entry.apps,
            outcome: entry.outcome,
            correlator: entry.correlator.to_owned(),
        };
        if self.tx.try_send(Message::Record(record)).is_err() {
            self.metrics.audit_record_lost();
            tracing::error!(
                action = entry.action.as_str(),
                "audit record lost: queue full"
            );
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

/// Stores one batch, writing it again after each failure (backing off) until the store takes
/// it, unless the failure is one that no retry can fix (the records themselves are refused): then
/// the batch is dropped, logged and counted as lost rather than blocking every later record.
async fn store_batch<F>(records: &[AuditRecord], mut append: F, metrics: &AuditMetrics)
where
    F: for<'a> FnMut(&'a [AuditRecord]) -> BoxFuture<'a, sqlx::Result<()>>,
{
    let backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
    let mut failures = 0;
    while let Err(e) = append(records).await {
        let wait = backoff.nth(failures);
        failures = failures.saturating_add(1);
        metrics.audit_write_failed();
        if !worth_retrying(&e) {
            for _ in records {
                metrics.audit_record_lost();
            }
            tracing::error!(records = records.len(), error = %e, "audit records refused by the store: lost");
            return;
        }
        tracing::error!(
            records = records.len(),
            error = %e,
            retry_in = ?wait,
            "audit records not stored yet: the store refused them"
        );
        tokio::time::sleep(wait).await;
    }
}

/// Whether writing the same records again may succeed: the store was unreachable, busy, full,
/// restarting, ...; not when it refused the records themselves (a constraint, an encoding).
fn worth_retrying(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.kind() == sqlx::error::ErrorKind::Other,
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

async fn write(store: Store, mut rx: mpsc::Receiver<Message>, metrics: AuditMetrics) {
    let mut messages = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut messages, BATCH).await > 0 {
        let mut records = Vec::with_capacity(messages.len());
        let mut waiting = Vec::new();
        for m in messages.drain(..) {
            match m {
                Message::Record(r) => records.push(r),
                Message::Flush(done) => waiting.push(done),
            }
        }
        if !records.is_empty() {
            store_batch(
                &records,
                |batch| {
                    let store = store.clone();
                    async move { store.append_audit(batch).await }.boxed()
                },
                &metrics,
            )
            .await;
        }
        for done in waiting {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn records(n: usize) -> Vec<AuditRecord> {
        (0..n)
            .map(|i| AuditRecord {
                at: i as i64,
                tenant: "t".into(),
                number_hash: "h".into(),
                action: "lookup".into(),
                apps: String::new(),
                outcome: "ok".into(),
                correlator: String::new(),
            })
            .collect()
    }

    fn io_error() -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_batch_is_written_again_with_backoff_until_stored() {
        let registry = Metrics::new();
        let metrics = AuditMetrics::register(&registry);
        let attempts = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        store_batch(
            &records(3),
            |batch| {
                assert_eq!(batch.len(), 3);
                let n = attempts.fetch_add(1, Ordering::SeqCst);
                async move { if n < 4 { Err(io_error()) } else { Ok(()) } }.boxed()
            },
            &metrics,
        )
        .await;
        assert_eq!(attempts.load(Ordering::SeqCst), 5);
        // 100 + 200 + 400 + 800 ms of backing off.
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
        let text = registry.encode();
        assert!(
            text.contains("unbind_audit_write_failures_total 4"),
            "{text}"
        );
        assert!(text.contains("unbind_audit_records_lost_total 0"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn records_the_store_itself_refuses_are_dropped_and_counted() {
        let registry = Metrics::new();
        let metrics = AuditMetrics::register(&registry);
        let attempts = AtomicU32::new(0);
        store_batch(
            &records(2),
            |_| {
                attempts.fetch_add(1, Ordering::SeqCst);
                async { Err(sqlx::Error::ColumnNotFound("apps".into())) }.boxed()
            },
            &metrics,
        )
        .await;
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
        assert!(
            registry
                .encode()
                .contains("unbind_audit_records_lost_total 2")
        );
    }

    #[test]
    fn only_failures_of_the_store_are_worth_retrying() {
        assert!(worth_retrying(&io_error()));
        assert!(worth_retrying(&sqlx::Error::PoolTimedOut));
        assert!(!worth_retrying(&sqlx::Error::ColumnNotFound("x".into())));
        assert!(!worth_retrying(&sqlx::Error::RowNotFound));
    }
}
