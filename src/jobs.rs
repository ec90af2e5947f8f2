//! The one job loop of the workers that carry durable work to the apps: the ticket worker
//! (`unbind::worker`) and the push worker (`push::worker`). Each replica runs one loop per kind;
//! the store is what they share.
//!
//! claim with a lease -> attempt -> record, fenced on the lease -> release:
//! - **claim**: due jobs, as many as there are free slots, under a lease name unique to this
//!   claim (`owner/n`), so a write from an older claim never lands on a job claimed again since;
//!   a replica that dies keeps its jobs only until their leases run out;
//! - **attempt**: each job in a task of its own, at most `concurrency` at once; the lease stays
//!   held until the outcome is written, so no one else claims the job meanwhile (the config
//!   checks that the longest app call is well under the lease);
//! - **record**: outcomes in batches, one store transaction for whatever finished together;
//!   every write is fenced on the job's lease (a worker that lost it writes nothing);
//! - **release**: on shutdown, in-flight attempts get `shutdown_grace`, then every lease still
//!   held is released so another replica carries on at once.
//!
//! And one backoff ([`retry_delay`]) for whatever a job's kind decides to try again.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{
    sync::{Notify, Semaphore, mpsc, watch},
    task::JoinSet,
};

use crate::{backoff::Backoff, clock::Clock, config::UnbindConfig, critical::CriticalTasks};

/// Most outcomes recorded in one store transaction.
const MAX_BATCH: usize = 512;

/// One kind of durable job, as the loop drives it.
pub trait Jobs: Send + Sync + 'static {
    type Job: Send + Sync + 'static;
    type Outcome: Send + 'static;

    /// What the jobs are, in log lines.
    const KIND: &'static str;
    /// The task writing their outcomes, as [`crate::critical`] names it.
    const RECORDER: &'static str;

    /// Claims up to `limit` due jobs under `lease` until `lease_until`.
    fn claim(
        &self,
        lease: &str,
        now: i64,
        lease_until: i64,
        limit: usize,
    ) -> impl Future<Output = sqlx::Result<Vec<Self::Job>>> + Send;

    /// One attempt at one job: what happened, to be recorded.
    fn attempt(&self, job: &Self::Job) -> impl Future<Output = Self::Outcome> + Send;

    /// Records outcomes that finished together, each fenced on its lease.
    fn record(&self, done: &[Done<Self::Job, Self::Outcome>]) -> impl Future<Output = ()> + Send;

    /// Releases every lease `owner`'s claims still hold.
    fn release(&self, owner: &str) -> impl Future<Output = sqlx::Result<u64>> + Send;
}

/// An attempt that finished, with the lease it ran under.
pub struct Done<J, O> {
    pub job: J,
    pub lease: Arc<str>,
    pub outcome: O,
}

/// How one loop runs.
#[derive(Clone, Debug)]
pub struct LoopSettings {
    /// This loop's lease-owner name, unique per process.
    pub owner: String,
    /// Attempts in flight at once.
    pub concurrency: usize,
    pub lease: Duration,
    /// How long an idle loop sleeps before it looks again (a local wake comes at once).
    pub poll_interval: Duration,
    /// How long in-flight attempts get on shutdown.
    pub shutdown_grace: Duration,
}

impl LoopSettings {
    /// A loop of `concurrency` attempts at once, with the lease, poll and grace of `[unbind]`
    /// (shared by tickets and pushes).
    pub fn from_config(owner: &str, concurrency: usize, config: &UnbindConfig) -> Self {
        Self {
            owner: owner.to_owned(),
            concurrency,
            lease: config.lease,
            poll_interval: config.poll_interval,
            shutdown_grace: config.shutdown_grace,
        }
    }
}

/// The delay before retry number `attempts` of a job: `unbind.retry_base` doubled per attempt,
/// capped at `unbind.retry_max`, spread down when `unbind.retry_jitter`. Tickets and push
/// deliveries alike.
pub fn retry_delay(config: &UnbindConfig, attempts: i64) -> Duration {
    Backoff::new(config.retry_base, config.retry_max).retry(attempts, config.retry_jitter)
}

/// Runs the loop until `shutdown` turns true; then stops claiming, waits up to
/// `shutdown_grace` for in-flight attempts, records their outcomes and releases the rest.
pub async fn run<J: Jobs>(
    jobs: Arc<J>,
    clock: Clock,
    settings: LoopSettings,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
    critical: CriticalTasks,
) {
    let permits = Arc::new(Semaphore::new(settings.concurrency));
    let (done_tx, done_rx) = mpsc::channel(settings.concurrency.max(16));
    let recorder = critical.spawn_finite(J::RECORDER, record(Arc::clone(&jobs), done_rx));
    let mut tasks = JoinSet::new();
    let mut claims: u64 = 0;
    tracing::info!(owner = %settings.owner, kind = J::KIND, "worker started");
    while !*shutdown.borrow() {
        // Without its recorder an outcome is never written and each job would be attempted
        // again whenever its lease ran out: claim no more (the gateway is stopping for it).
        if recorder.is_finished() {
            tracing::error!(
                kind = J::KIND,
                "the recorder has stopped: claiming no more jobs"
            );
            break;
        }
        while tasks.try_join_next().is_some() {}
        let free = permits.available_permits();
        claims += 1;
        let lease: Arc<str> = format!("{}/{claims}", settings.owner).into();
        let claimed = if free == 0 {
            Ok(Vec::new())
        } else {
            let now = clock.now_ms();
            let lease_until = now + settings.lease.as_millis() as i64;
            jobs.claim(&lease, now, lease_until, free).await
        };
        match claimed {
            Ok(claimed) if !claimed.is_empty() => {
                for job in claimed {
                    let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                        break;
                    };
                    let jobs = Arc::clone(&jobs);
                    let done = done_tx.clone();
                    let lease = Arc::clone(&lease);
                    tasks.spawn(async move {
                        let outcome = jobs.attempt(&job).await;
                        // The lease stays ours until the recorder writes the outcome.
                        let _ = done
                            .send(Done {
                                job,
                                lease,
                                outcome,
                            })
                            .await;
                        drop(permit);
                    });
                }
                // Claim again at once: more may be due.
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(kind = J::KIND, error = %e, "could not claim jobs"),
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(settings.poll_interval) => {}
            _ = shutdown.changed() => {}
            Some(_) = tasks.join_next(), if !tasks.is_empty() && permits.available_permits() == 0 => {}
        }
    }
    // Give in-flight attempts a moment; whatever is left is released for others.
    let grace = tokio::time::sleep(settings.shutdown_grace);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            next = tasks.join_next() => if next.is_none() { break },
            () = &mut grace => { tasks.abort_all(); break }
        }
    }
    drop(done_tx);
    let _ = recorder.await;
    match jobs.release(&settings.owner).await {
        Ok(n) => tracing::info!(kind = J::KIND, released = n, "worker stopped"),
        Err(e) => tracing::warn!(kind = J::KIND, error = %e, "could not release leases"),
    }
}

/// Writes outcomes in batches: whatever arrived together, in one go.
async fn record<J: Jobs>(jobs: Arc<J>, mut done: mpsc::Receiver<Done<J::Job, J::Outcome>>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while done.recv_many(&mut batch, MAX_BATCH).await > 0 {
        jobs.record(&batch).await;
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Jobs numbered 0..n, each due once; attempts double the number.
    struct Numbers {
        due: Mutex<Vec<u32>>,
        leases: Mutex<Vec<String>>,
        recorded: Mutex<Vec<(u32, u32)>>,
        released: Mutex<Vec<String>>,
        /// Recording panics (a defect no input should reach).
        record_panics: bool,
    }

    impl Numbers {
        fn new(n: u32, record_panics: bool) -> Arc<Self> {
            Arc::new(Numbers {
                due: Mutex::new((0..n).collect()),
                leases: Mutex::default(),
                recorded: Mutex::default(),
                released: Mutex::default(),
                record_panics,
            })
        }
    }

    /// The loop over `jobs` on its own task: 8 at once, a 30 s lease, 50 ms polls, 1 s grace.
    fn spawn_run(
        jobs: &Arc<Numbers>,
        shutdown: watch::Receiver<bool>,
        critical: CriticalTasks,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(run(
            Arc::clone(jobs),
            Clock::system(),
            settings(),
            Arc::new(Notify::new()),
            shutdown,
            critical,
        ))
    }

    fn settings() -> LoopSettings {
        LoopSettings {
            owner: "w1".into(),
            concurrency: 8,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(50),
            shutdown_grace: Duration::from_secs(1),
        }
    }

    impl Jobs for Numbers {
        type Job = u32;
        type Outcome = u32;
        const KIND: &'static str = "numbers";
        const RECORDER: &'static str = "numbers recorder";

        async fn claim(&self, lease: &str, _: i64, _: i64, limit: usize) -> sqlx::Result<Vec<u32>> {
            let mut due = self.due.lock().unwrap();
            let n = limit.min(due.len());
            if n > 0 {
                self.leases.lock().unwrap().push(lease.to_owned());
            }
            Ok(due.drain(..n).collect())
        }

        async fn attempt(&self, job: &u32) -> u32 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            job * 2
        }

        async fn record(&self, done: &[Done<u32, u32>]) {
            assert!(!self.record_panics, "recording failed");
            let mut recorded = self.recorded.lock().unwrap();
            recorded.extend(done.iter().map(|d| (d.job, d.outcome)));
        }

        async fn release(&self, owner: &str) -> sqlx::Result<u64> {
            self.released.lock().unwrap().push(owner.to_owned());
            Ok(0)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_claimed_job_is_attempted_recorded_and_the_leases_released() {
        let jobs = Numbers::new(50, false);
        let (stop, shutdown) = watch::channel(false);
        let running = spawn_run(&jobs, shutdown, CriticalTasks::new());
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.send(true).unwrap();
        running.await.unwrap();
        let mut recorded = jobs.recorded.lock().unwrap().clone();
        recorded.sort();
        assert_eq!(recorded, (0..50).map(|n| (n, n * 2)).collect::<Vec<_>>());
        // Never more than the free slots per claim, each claim under a lease of its own.
        let leases = jobs.leases.lock().unwrap().clone();
        assert!(leases.len() >= 50 / 8, "{leases:?}");
        let mut unique = leases.clone();
        unique.dedup();
        assert_eq!(unique, leases);
        assert!(leases.iter().all(|l| l.starts_with("w1/")));
        assert_eq!(*jobs.released.lock().unwrap(), ["w1"]);
    }

    /// A recorder that dies (here a panic) stops the loop claiming: otherwise every job would
    /// be attempted and never recorded, again each time its lease ran out. The loop ends by
    /// itself, releases its leases, and the failure is the gateway's to act on (it stops).
    #[tokio::test(start_paused = true)]
    async fn without_its_recorder_the_loop_claims_no_more_and_the_failure_is_named() {
        let jobs = Numbers::new(500, true);
        let critical = CriticalTasks::new();
        let (_stop, shutdown) = watch::channel(false);
        let running = spawn_run(&jobs, shutdown, critical.clone());
        tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("the loop ended by itself")
            .unwrap();
        assert!(jobs.recorded.lock().unwrap().is_empty());
        let left = jobs.due.lock().unwrap().len();
        assert!(left > 400, "it went on claiming: {left} of 500 left");
        assert_eq!(*jobs.released.lock().unwrap(), ["w1"]);
        assert_eq!(
            critical.failure().map(|f| f.to_string()).as_deref(),
            Some("the gateway's numbers recorder panicked")
        );
    }

    #[test]
    fn tickets_and_deliveries_back_off_alike() {
        let config = UnbindConfig {
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(4),
            retry_jitter: false,
            ..UnbindConfig::default()
        };
        let delays: Vec<u128> = (1..=5)
            .map(|a| retry_delay(&config, a).as_millis())
            .collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 4000]);
    }
}
