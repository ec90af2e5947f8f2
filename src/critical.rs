//! The gateway's long-lived tasks that nothing else would notice stopping: the ticket and push
//! workers and their recorders, the audit writer, the outcome notifier, housekeeping, re-sealing,
//! the readiness check, the TLS accept loop, the HTTP API and the admin endpoint.
//!
//! A tokio task that panics ends alone: the process goes on without it. For these that is the
//! worst outcome: a gateway whose ticket recorder died keeps claiming tickets and calling apps but
//! records nothing (each ticket sent again whenever its lease runs out); one whose audit writer
//! died loses every record from then on; one whose accept loop died takes no connection while its
//! admin endpoint still says it is healthy. So each is spawned through [`CriticalTasks`]: one that
//! ends unexpectedly is logged by name, and the gateway stops (gracefully: it drains, its worker
//! releases what it holds) with an error, so whatever runs it restarts it whole.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The first critical task that ended unexpectedly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The task's name, e.g. "ticket recorder".
    pub task: &'static str,
    /// It panicked (rather than returned).
    pub panicked: bool,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = if self.panicked { "panicked" } else { "stopped" };
        write!(f, "the gateway's {} {how}", self.task)
    }
}

/// Spawns the critical tasks and tells when one ended unexpectedly. Clones share their state.
#[derive(Clone)]
pub struct CriticalTasks {
    inner: Arc<Inner>,
}

struct Inner {
    /// From now on a task ending is expected.
    stopping: AtomicBool,
    failed: watch::Sender<Option<Failure>>,
}

impl Default for CriticalTasks {
    fn default() -> Self {
        Self::new()
    }
}

impl CriticalTasks {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                stopping: AtomicBool::new(false),
                failed: watch::channel(None).0,
            }),
        }
    }

    /// Spawns a task meant to run until the gateway stops: one that returns or panics before
    /// [`CriticalTasks::stopping`] is a failure.
    pub fn spawn<T, F>(&self, task: &'static str, future: F) -> JoinHandle<T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.spawn_watched(task, future, true)
    }

    /// Spawns a task that may end by itself (the queue it reads closed, its work done): only a
    /// panic is a failure.
    pub fn spawn_finite<T, F>(&self, task: &'static str, future: F) -> JoinHandle<T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.spawn_watched(task, future, false)
    }

    fn spawn_watched<T, F>(&self, task: &'static str, future: F, forever: bool) -> JoinHandle<T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            // An aborted task never gets past this await: aborting is never a failure.
            match AssertUnwindSafe(future).catch_unwind().await {
                Ok(value) => {
                    if forever {
                        inner.ended(task, false);
                    }
                    value
                }
                Err(panic) => {
                    inner.ended(task, true);
                    std::panic::resume_unwind(panic)
                }
            }
        })
    }

    /// The gateway is stopping: tasks ending from now on are expected.
    pub fn stopping(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
    }

    /// The first task that ended unexpectedly, if one did.
    pub fn failure(&self) -> Option<Failure> {
        self.inner.failed.borrow().clone()
    }

    /// Resolves when a task ends unexpectedly (at once if one has).
    pub async fn failed(&self) -> Failure {
        let mut seen = self.inner.failed.subscribe();
        let failure = seen
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|failure| failure.clone());
        match failure {
            Some(failure) => failure,
            // The sender lives as long as `self`: never closed while this waits.
            None => std::future::pending().await,
        }
    }
}

impl Inner {
    fn ended(&self, task: &'static str, panicked: bool) {
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        tracing::error!(
            task,
            panicked,
            "a gateway task ended unexpectedly: the gateway stops, to be restarted whole"
        );
        self.failed.send_if_modified(|failed| {
            if failed.is_some() {
                return false;
            }
            *failed = Some(Failure { task, panicked });
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_task_that_panics_or_returns_early_is_a_failure_the_first_one_named() {
        let tasks = CriticalTasks::new();
        assert_eq!(tasks.failure(), None);
        let panicked = tasks.spawn("recorder", async { panic!("injected") });
        assert!(
            panicked.await.unwrap_err().is_panic(),
            "the panic still reaches the handle"
        );
        let failure = tokio::time::timeout(Duration::from_secs(5), tasks.failed())
            .await
            .unwrap();
        assert_eq!(
            failure,
            Failure {
                task: "recorder",
                panicked: true
            }
        );
        assert_eq!(failure.to_string(), "the gateway's recorder panicked");
        // A later one does not replace the first.
        tasks.spawn("housekeeping", async {}).await.unwrap();
        assert_eq!(tasks.failure().unwrap().task, "recorder");

        let tasks = CriticalTasks::new();
        assert_eq!(tasks.spawn("housekeeping", async { 7 }).await.unwrap(), 7);
        assert_eq!(
            tasks.failure().unwrap().to_string(),
            "the gateway's housekeeping stopped"
        );
    }

    #[tokio::test]
    async fn ending_while_stopping_aborted_or_a_reader_whose_queue_closed_is_not() {
        let tasks = CriticalTasks::new();
        // A reader ends when its queue closes.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let reader =
            tasks.spawn_finite(
                "audit writer",
                async move { while rx.recv().await.is_some() {} },
            );
        drop(tx);
        reader.await.unwrap();
        // Aborted (the server aborts housekeeping when it stops).
        let forever = tasks.spawn("housekeeping", std::future::pending::<()>());
        forever.abort();
        assert!(forever.await.unwrap_err().is_cancelled());
        assert_eq!(tasks.failure(), None);
        // Once stopping, even a panic is the stop's business.
        tasks.stopping();
        let _ = tasks
            .spawn("worker", async { panic!("while stopping") })
            .await;
        tasks.spawn("worker", async {}).await.unwrap();
        assert_eq!(tasks.failure(), None);
    }
}
