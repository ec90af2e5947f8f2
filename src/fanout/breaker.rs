//! A circuit breaker for the calls to one app's adapter, and a tower layer that puts it in front
//! of a service.
//!
//! - **Closed**: every call goes through. The breaker opens after `consecutive_failures` failures
//!   in a row, or when at least `min_calls` calls ended within the rolling `window` (ten time
//!   buckets, so memory is bounded whatever the call rate) and the share of failures among them
//!   reached `failure_ratio`.
//! - **Open**: calls are refused at once with [`CallError::CircuitOpen`] until the open period
//!   ends: `open_base`, doubled for every probe that failed in a row, capped at `open_max`, then
//!   stretched by a random factor in `[1, 1 + jitter]`.
//! - **Half-open**: once the period ended, the first caller becomes the *probe*; others are refused
//!   while it is out. Its success closes the breaker (counts, window and doubling reset); its
//!   failure, or its permit dropped unreported, opens it again for the doubled period.
//!
//! Every transition starts a new generation, and a permit reports only into the generation that
//! issued it: a slow call admitted before the breaker opened cannot disturb what came after.

use std::{
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::future::BoxFuture;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::CallError;
use crate::{
    backoff::{Backoff, stretch_up},
    config::BreakerConfig,
};

/// Where a breaker is, as reported by [`CircuitBreaker::state`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// The value of a state gauge: 0 closed, 1 half-open, 2 open.
    pub fn as_gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen => 1,
            Self::Open => 2,
        }
    }
}

const BUCKETS: usize = 10;

#[derive(Clone, Copy, Default)]
struct Bucket {
    index: u64,
    calls: u32,
    failures: u32,
}

/// Outcomes within the rolling window, in `BUCKETS` buckets of `window / BUCKETS` each; an
/// outcome ages out between `window - window / BUCKETS` and `window` after it was recorded.
struct Window {
    epoch: Instant,
    width: Duration,
    buckets: [Bucket; BUCKETS],
}

impl Window {
    fn new(window: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            width: (window / BUCKETS as u32).max(Duration::from_nanos(1)),
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    /// Records one outcome; returns the calls and failures now within the window.
    fn record(&mut self, now: Instant, ok: bool) -> (u32, u32) {
        let elapsed = now.saturating_duration_since(self.epoch).as_nanos();
        let index = u64::try_from(elapsed / self.width.as_nanos()).unwrap_or(u64::MAX);
        let bucket = &mut self.buckets[(index % BUCKETS as u64) as usize];
        if bucket.index != index {
            *bucket = Bucket {
                index,
                ..Bucket::default()
            };
        }
        bucket.calls = bucket.calls.saturating_add(1);
        bucket.failures = bucket.failures.saturating_add(u32::from(!ok));
        self.buckets
            .iter()
            .filter(|b| index.saturating_sub(b.index) < BUCKETS as u64)
            .fold((0u32, 0u32), |(calls, failures), b| {
                (
                    calls.saturating_add(b.calls),
                    failures.saturating_add(b.failures),
                )
            })
    }

    fn clear(&mut self) {
        self.buckets = [Bucket::default(); BUCKETS];
    }
}

enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    /// The probe is out.
    HalfOpen,
}

struct Inner {
    phase: Phase,
    generation: u64,
    consecutive_failures: u32,
    window: Window,
    /// Probes that failed in a row: the exponent of the open period.
    failed_probes: u32,
}

/// A transition, logged once the lock is released.
enum Transition {
    Opened {
        period: Duration,
        reason: &'static str,
    },
    HalfOpen,
    Closed,
}

impl Transition {
    fn log(self) {
        match self {
            Self::Opened { period, reason } => {
                let open_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
                tracing::info!(target: "unbind_gateway::breaker", state = "open", reason, open_ms, "circuit breaker opened");
            }
            Self::HalfOpen => {
                tracing::info!(target: "unbind_gateway::breaker", state = "half_open", "circuit breaker probing");
            }
            Self::Closed => {
                tracing::info!(target: "unbind_gateway::breaker", state = "closed", "circuit breaker closed");
            }
        }
    }
}

/// The circuit breaker of one app. Thread-safe; every acquire and report is one short critical
/// section.
pub struct CircuitBreaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
    times_opened: AtomicU64,
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> Self {
        let window = Window::new(config.window);
        Self {
            config,
            inner: Mutex::new(Inner {
                phase: Phase::Closed,
                generation: 0,
                consecutive_failures: 0,
                window,
                failed_probes: 0,
            }),
            times_opened: AtomicU64::new(0),
        }
    }

    /// Asks to make one call now. `Err(CallError::CircuitOpen)` while open, or while half-open
    /// with the probe already out. Once the open period elapsed, the first caller becomes the
    /// half-open probe.
    pub fn try_acquire(self: &Arc<Self>) -> Result<BreakerPermit, CallError> {
        let (generation, probe) = {
            let mut inner = self.lock();
            match inner.phase {
                Phase::Closed => (inner.generation, false),
                Phase::Open { until } if Instant::now() >= until => {
                    inner.phase = Phase::HalfOpen;
                    inner.generation += 1;
                    (inner.generation, true)
                }
                Phase::Open { .. } | Phase::HalfOpen => return Err(CallError::CircuitOpen),
            }
        };
        if probe {
            Transition::HalfOpen.log();
        }
        Ok(BreakerPermit {
            breaker: Some(Arc::clone(self)),
            generation,
            probe,
        })
    }

    /// The current state. An open breaker whose period elapsed, with no probe taken yet, reports
    /// `HalfOpen` ("ready to probe"): the next caller will be let through.
    pub fn state(&self) -> BreakerState {
        match self.lock().phase {
            Phase::Closed => BreakerState::Closed,
            Phase::HalfOpen => BreakerState::HalfOpen,
            Phase::Open { until } if Instant::now() >= until => BreakerState::HalfOpen,
            Phase::Open { .. } => BreakerState::Open,
        }
    }

    /// How many times the breaker went from closed or half-open to open.
    pub fn times_opened(&self) -> u64 {
        self.times_opened.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn report(&self, generation: u64, probe: bool, ok: bool) {
        let transition = {
            let mut inner = self.lock();
            if inner.generation != generation {
                return; // Issued in an earlier state.
            }
            let now = Instant::now();
            match inner.phase {
                Phase::HalfOpen if probe && ok => {
                    inner.phase = Phase::Closed;
                    inner.generation += 1;
                    inner.consecutive_failures = 0;
                    inner.failed_probes = 0;
                    inner.window.clear();
                    Some(Transition::Closed)
                }
                Phase::HalfOpen if probe => {
                    inner.failed_probes = inner.failed_probes.saturating_add(1);
                    Some(self.open(&mut inner, now, "probe_failed"))
                }
                Phase::Closed if !probe => {
                    inner.consecutive_failures = if ok {
                        0
                    } else {
                        inner.consecutive_failures.saturating_add(1)
                    };
                    let (calls, failures) = inner.window.record(now, ok);
                    let c = &self.config;
                    let reason = if c.consecutive_failures > 0
                        && inner.consecutive_failures >= c.consecutive_failures
                    {
                        Some("consecutive_failures")
                    } else if failures > 0
                        && calls >= c.min_calls
                        && f64::from(failures) / f64::from(calls) >= c.failure_ratio
                    {
                        Some("failure_ratio")
                    } else {
                        None
                    };
                    reason.map(|reason| self.open(&mut inner, now, reason))
                }
                _ => None,
            }
        };
        if let Some(transition) = transition {
            transition.log();
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant, reason: &'static str) -> Transition {
        let period = self.open_period(inner.failed_probes);
        inner.phase = Phase::Open {
            until: now + period,
        };
        inner.generation += 1;
        self.times_opened.fetch_add(1, Ordering::Relaxed);
        Transition::Opened { period, reason }
    }

    /// `open_base * 2^failed_probes`, capped at `open_max`, stretched by up to `jitter`; exact
    /// when `jitter` is 0.
    fn open_period(&self, failed_probes: u32) -> Duration {
        let c = &self.config;
        let period = Backoff::new(c.open_base, c.open_max).nth(failed_probes);
        stretch_up(period, c.jitter)
    }
}

/// One admitted call; report how it ended with [`success`](Self::success) or
/// [`failure`](Self::failure). Dropped without a report, it counts as a failure if it was the
/// half-open probe (so the probe slot is never lost), and is ignored otherwise.
#[must_use = "report how the call ended with `success()` or `failure()`"]
pub struct BreakerPermit {
    breaker: Option<Arc<CircuitBreaker>>,
    generation: u64,
    probe: bool,
}

impl BreakerPermit {
    pub fn success(mut self) {
        self.report(true);
    }

    pub fn failure(mut self) {
        self.report(false);
    }

    /// Whether this is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    fn report(&mut self, ok: bool) {
        if let Some(breaker) = self.breaker.take() {
            breaker.report(self.generation, self.probe, ok);
        }
    }

    /// Whether the breaker is still in the state that issued this permit.
    fn is_current(&self) -> bool {
        self.breaker
            .as_ref()
            .is_some_and(|b| b.lock().generation == self.generation)
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if self.probe {
            self.report(false);
        }
    }
}

impl std::fmt::Debug for BreakerPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerPermit")
            .field("generation", &self.generation)
            .field("probe", &self.probe)
            .finish()
    }
}

/// Puts a [`CircuitBreaker`] in front of a service.
#[derive(Clone)]
pub struct BreakerLayer {
    breaker: Arc<CircuitBreaker>,
}

impl BreakerLayer {
    pub fn new(breaker: Arc<CircuitBreaker>) -> Self {
        Self { breaker }
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = Breaker<S>;

    fn layer(&self, inner: S) -> Breaker<S> {
        Breaker {
            inner,
            breaker: Arc::clone(&self.breaker),
            admission: None,
        }
    }
}

/// A service behind a circuit breaker. `poll_ready` asks the breaker first: refused, it is ready
/// at once (without polling the inner service) and `call` answers `CircuitOpen`; admitted, it
/// holds the permit while the inner service gets ready, and the call reports how it ended.
pub struct Breaker<S> {
    inner: S,
    breaker: Arc<CircuitBreaker>,
    /// The breaker's answer, from `poll_ready` until `call`.
    admission: Option<Result<BreakerPermit, CallError>>,
}

/// A clone holds no permit nor refusal of its own.
impl<S: Clone> Clone for Breaker<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            breaker: Arc::clone(&self.breaker),
            admission: None,
        }
    }
}

impl<S, Req> Service<Req> for Breaker<S>
where
    S: Service<Req, Error = CallError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = CallError;
    type Future = BoxFuture<'static, Result<S::Response, CallError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        // A permit held while the inner service was not ready may be from a state that has
        // ended since (the breaker opened meanwhile): ask again.
        if matches!(&self.admission, Some(Ok(permit)) if !permit.is_current()) {
            self.admission = None;
        }
        let admission = self
            .admission
            .get_or_insert_with(|| self.breaker.try_acquire());
        if admission.is_err() {
            return Poll::Ready(Ok(()));
        }
        let ready = self.inner.poll_ready(cx);
        if let Poll::Ready(Err(error)) = ready {
            // The inner service failed before the call: that is how this call ended.
            if let Some(Ok(permit)) = self.admission.take()
                && error != CallError::CircuitOpen
            {
                permit.failure();
            }
        }
        ready
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match self.admission.take() {
            Some(Ok(permit)) => {
                let call = self.inner.call(request);
                Box::pin(async move {
                    let result = call.await;
                    match &result {
                        Ok(_) => permit.success(),
                        // Not the app's doing: not counted (a probe so ended still reopens, see Drop).
                        Err(CallError::CircuitOpen | CallError::CallerDeadline) => drop(permit),
                        Err(_) => permit.failure(),
                    }
                    result
                })
            }
            Some(Err(refused)) => Box::pin(futures::future::ready(Err(refused))),
            None => panic!("Breaker::call without poll_ready"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    use futures::FutureExt;
    use tokio::time::advance;
    use tower::{ServiceExt, limit::ConcurrencyLimit};

    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    /// Three failures in a row open; the ratio is off unless a test turns it on.
    fn config() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_ratio: 0.5,
            min_calls: 1000,
            window: 10 * SEC,
            open_base: SEC,
            open_max: 4 * SEC,
            jitter: 0.0,
            timeout_floor: Duration::ZERO,
        }
    }

    fn ratio_config() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 1000,
            min_calls: 4,
            ..config()
        }
    }

    fn breaker(config: BreakerConfig) -> Arc<CircuitBreaker> {
        Arc::new(CircuitBreaker::new(config))
    }

    fn fail(b: &Arc<CircuitBreaker>, n: usize) {
        (0..n).for_each(|_| b.try_acquire().unwrap().failure());
    }

    fn succeed(b: &Arc<CircuitBreaker>, n: usize) {
        (0..n).for_each(|_| b.try_acquire().unwrap().success());
    }

    fn refused(b: &Arc<CircuitBreaker>) -> bool {
        b.try_acquire().err() == Some(CallError::CircuitOpen)
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_success_resets_the_count() {
        let b = breaker(config());
        fail(&b, 2);
        succeed(&b, 1);
        fail(&b, 2);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.times_opened(), 0);
        fail(&b, 1);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(refused(&b));
        assert_eq!(b.times_opened(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_failure_ratio_from_min_calls_on() {
        let b = breaker(ratio_config());
        fail(&b, 3); // 100 % failures, but below min_calls.
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b, 1);
        assert_eq!(b.state(), BreakerState::Open);

        let b = breaker(ratio_config());
        succeed(&b, 3);
        fail(&b, 1); // 1 of 4.
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b, 1); // 2 of 5.
        succeed(&b, 1); // 2 of 6.
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b, 1); // 3 of 7.
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b, 1); // 4 of 8 = failure_ratio.
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_permit_prints_its_generation_and_role() {
        let b = breaker(config());
        let permit = b.try_acquire().unwrap();
        assert_eq!(
            format!("{permit:?}"),
            "BreakerPermit { generation: 0, probe: false }"
        );
    }

    #[test]
    fn states_have_their_words_and_gauge_values() {
        let all = [
            BreakerState::Closed,
            BreakerState::HalfOpen,
            BreakerState::Open,
        ];
        let words: Vec<_> = all.iter().map(|s| s.as_str()).collect();
        assert_eq!(words, ["closed", "half_open", "open"]);
        let gauges: Vec<_> = all.iter().map(|s| s.as_gauge()).collect();
        assert_eq!(gauges, [0, 1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn closing_forgets_the_failures_that_opened_it() {
        let b = breaker(ratio_config());
        succeed(&b, 2);
        fail(&b, 2); // 2 of 4: open.
        assert_eq!(b.state(), BreakerState::Open);
        advance(SEC).await;
        b.try_acquire().unwrap().success();
        assert_eq!(b.state(), BreakerState::Closed);
        // Still within the window: had the earlier outcomes been kept, 3 of 5 would reopen it.
        fail(&b, 1);
        assert_eq!(b.state(), BreakerState::Closed);
        succeed(&b, 2);
        fail(&b, 1); // 2 of 4 since it closed.
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn old_outcomes_age_out_of_the_window() {
        let b = breaker(ratio_config());
        fail(&b, 3);
        advance(10 * SEC).await;
        fail(&b, 1); // The three earlier failures are out: 1 call.
        succeed(&b, 2);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b, 1); // 2 of 4.
        assert_eq!(b.state(), BreakerState::Open);

        // Also when their bucket was not reused since.
        let b = breaker(ratio_config());
        fail(&b, 3);
        advance(15 * SEC).await;
        fail(&b, 1);
        assert_eq!(b.state(), BreakerState::Closed);

        // Within the window (bucket granularity: window / 10), they still count.
        let b = breaker(ratio_config());
        fail(&b, 3);
        advance(9 * SEC + 999 * MS).await;
        fail(&b, 1);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn one_probe_after_the_period_and_failed_probes_double_it_up_to_the_cap() {
        let b = breaker(config());
        fail(&b, 3);
        for period in [SEC, 2 * SEC, 4 * SEC, 4 * SEC] {
            advance(period - MS).await;
            assert!(refused(&b));
            assert_eq!(b.state(), BreakerState::Open);
            advance(MS).await;
            assert_eq!(b.state(), BreakerState::HalfOpen);
            let probe = b.try_acquire().unwrap();
            assert!(probe.is_probe());
            assert!(refused(&b), "a second caller while the probe is out");
            assert_eq!(b.state(), BreakerState::HalfOpen);
            probe.failure();
            assert_eq!(b.state(), BreakerState::Open);
        }
        assert_eq!(b.times_opened(), 5);

        // A successful probe closes and resets the doubling.
        advance(4 * SEC).await;
        b.try_acquire().unwrap().success();
        assert_eq!(b.state(), BreakerState::Closed);
        let permit = b.try_acquire().unwrap();
        assert!(!permit.is_probe());
        permit.success();
        fail(&b, 2);
        assert_eq!(b.state(), BreakerState::Closed, "the count was reset");
        fail(&b, 1);
        advance(SEC - MS).await;
        assert!(refused(&b));
        advance(MS).await;
        assert!(b.try_acquire().unwrap().is_probe());
        assert_eq!(b.times_opened(), 7); // 6, then the probe dropped above.
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_reopens_instead_of_leaking_the_slot() {
        let b = breaker(config());
        fail(&b, 3);
        advance(SEC).await;
        drop(b.try_acquire().unwrap());
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.times_opened(), 2);
        advance(2 * SEC - MS).await;
        assert!(refused(&b));
        advance(MS).await;
        assert!(b.try_acquire().unwrap().is_probe());
    }

    #[tokio::test(start_paused = true)]
    async fn reports_from_stale_permits_are_ignored() {
        let b = breaker(config());
        let slow_ok = b.try_acquire().unwrap();
        let slow_failures: Vec<_> = (0..4).map(|_| b.try_acquire().unwrap()).collect();
        fail(&b, 3);
        slow_ok.success();
        assert_eq!(
            b.state(),
            BreakerState::Open,
            "a stale success does not close"
        );

        advance(SEC).await;
        let probe = b.try_acquire().unwrap();
        let mut slow_failures = slow_failures.into_iter();
        slow_failures.next().unwrap().failure();
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen,
            "a stale failure does not reopen"
        );
        assert!(refused(&b));
        probe.success();
        assert_eq!(b.state(), BreakerState::Closed);

        slow_failures.for_each(BreakerPermit::failure);
        fail(&b, 2);
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "stale failures are not counted"
        );
        (0..5).for_each(|_| drop(b.try_acquire().unwrap()));
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "unreported calls are ignored"
        );
        assert_eq!(b.times_opened(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn open_period_is_exact_without_jitter_and_stretched_within_bounds_with_it() {
        let b = breaker(config());
        let periods: Vec<_> = [0, 1, 2, 3, 31, 32, u32::MAX]
            .map(|n| b.open_period(n))
            .into();
        assert_eq!(periods, [1, 2, 4, 4, 4, 4, 4].map(|s| s * SEC));

        let b = breaker(BreakerConfig {
            jitter: 0.5,
            ..config()
        });
        for (n, base) in [(0, SEC), (1, 2 * SEC), (5, 4 * SEC)] {
            for _ in 0..200 {
                let period = b.open_period(n);
                assert!(period >= base && period <= base.mul_f64(1.5), "{period:?}");
            }
        }
        fail(&b, 3);
        advance(SEC - MS).await;
        assert!(refused(&b));
        advance(SEC / 2 + MS).await;
        assert!(b.try_acquire().unwrap().is_probe());
    }

    /// An adapter that fails on command and counts its calls.
    #[derive(Clone, Default)]
    struct Adapter {
        calls: Arc<AtomicUsize>,
        fail: Arc<AtomicBool>,
        /// What `poll_ready` answers: 0 ready, 1 pending, 2 unavailable.
        readiness: Arc<AtomicUsize>,
    }

    impl Adapter {
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl Service<()> for Adapter {
        type Response = ();
        type Error = CallError;
        type Future = futures::future::Ready<Result<(), CallError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), CallError>> {
            match self.readiness.load(Ordering::SeqCst) {
                0 => Poll::Ready(Ok(())),
                1 => Poll::Pending,
                _ => Poll::Ready(Err(CallError::Unavailable)),
            }
        }

        fn call(&mut self, (): ()) -> Self::Future {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let failed = self.fail.load(Ordering::SeqCst);
            futures::future::ready(if failed {
                Err(CallError::Unavailable)
            } else {
                Ok(())
            })
        }
    }

    async fn call<S: Service<(), Response = (), Error = CallError>>(
        svc: &mut S,
    ) -> Result<(), CallError> {
        svc.ready().await?.call(()).await
    }

    #[tokio::test(start_paused = true)]
    async fn an_inner_service_failing_before_the_call_counts_as_a_failure() {
        let b = breaker(config());
        let adapter = Adapter::default();
        adapter.readiness.store(2, Ordering::SeqCst);
        let mut svc = BreakerLayer::new(Arc::clone(&b)).layer(adapter.clone());
        for _ in 0..3 {
            assert_eq!(call(&mut svc).await, Err(CallError::Unavailable));
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(adapter.calls(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_waiting_for_the_inner_service_keeps_its_slot() {
        let b = breaker(config());
        let adapter = Adapter::default();
        let mut svc = BreakerLayer::new(Arc::clone(&b)).layer(adapter.clone());
        fail(&b, 3);
        advance(SEC).await;
        adapter.readiness.store(1, Ordering::SeqCst);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..3 {
            assert!(Service::<()>::poll_ready(&mut svc, &mut cx).is_pending());
            assert_eq!(b.state(), BreakerState::HalfOpen, "the probe is still out");
        }
        adapter.readiness.store(0, Ordering::SeqCst);
        assert_eq!(call(&mut svc).await, Ok(()));
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.times_opened(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn layer_answers_circuit_open_without_calling_the_inner_service() {
        let b = breaker(config());
        let adapter = Adapter::default();
        adapter.fail.store(true, Ordering::SeqCst);
        let mut svc = BreakerLayer::new(Arc::clone(&b)).layer(adapter.clone());
        for _ in 0..3 {
            assert_eq!(call(&mut svc).await, Err(CallError::Unavailable));
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(call(&mut svc).await, Err(CallError::CircuitOpen));
        assert_eq!(adapter.calls(), 3);

        // The refusal held by `svc` is not cloned: the clone probes, and its success closes.
        ServiceExt::<()>::ready(&mut svc).await.unwrap();
        let mut clone = svc.clone();
        advance(SEC).await;
        adapter.fail.store(false, Ordering::SeqCst);
        assert_eq!(call(&mut clone).await, Ok(()));
        assert_eq!(adapter.calls(), 4);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(svc.call(()).await, Err(CallError::CircuitOpen));
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_does_not_wait_for_the_inner_concurrency_limit() {
        let b = breaker(config());
        let adapter = Adapter::default();
        let limited = ConcurrencyLimit::new(adapter.clone(), 1);
        let mut hog = limited.clone();
        ServiceExt::<()>::ready(&mut hog).await.unwrap(); // Takes the only permit.
        let layer = BreakerLayer::new(Arc::clone(&b));

        // Closed: admitted, so it waits for the limit.
        let mut waiting = layer.layer(limited.clone());
        assert!(
            ServiceExt::<()>::ready(&mut waiting)
                .now_or_never()
                .is_none()
        );

        fail(&b, 3);
        let mut fresh = layer.layer(limited.clone());
        assert!(matches!(
            ServiceExt::<()>::ready(&mut fresh).now_or_never(),
            Some(Ok(_))
        ));
        assert_eq!(
            fresh.call(()).now_or_never(),
            Some(Err(CallError::CircuitOpen))
        );
        // The one that was waiting with a permit from before the breaker opened is refused too.
        assert!(matches!(
            ServiceExt::<()>::ready(&mut waiting).now_or_never(),
            Some(Ok(_))
        ));
        assert_eq!(
            waiting.call(()).now_or_never(),
            Some(Err(CallError::CircuitOpen))
        );
        assert_eq!(adapter.calls(), 0);
    }
}
