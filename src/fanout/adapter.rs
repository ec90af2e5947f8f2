//! One look-up call to one app's adapter, through the app's tower stack, and the classification
//! of how it ended (answered, timed out, unreachable, failed, not asked).
//!
//! The stack, outermost first:
//! 1. **retry** of calls that found the app unreachable (`FindAccounts` is read-only), within a
//!    per-app retry budget and the call's deadline;
//! 2. **circuit breaker** ([`super::breaker`]): an app that keeps failing is answered at once as
//!    `CircuitOpen`, then probed;
//! 3. **concurrency limit** shared by every call to the app, look-ups and the workers' calls
//!    alike ([`super::client`]);
//! 4. the gRPC call itself, bounded by the call's deadline (sent as `grpc-timeout` too), and the
//!    answer checked against what an adapter may answer ([`super::answer`]).
//!
//! The caller bounds the whole stack, waiting for a concurrency permit included, by the same
//! deadline, so a saturated app times out rather than queueing forever.

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::{FutureExt, future::BoxFuture};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tonic::{Code, transport::Channel};
use tower::{
    Service, ServiceBuilder, ServiceExt,
    limit::GlobalConcurrencyLimitLayer,
    retry::budget::{Budget, TpsBudget},
    util::BoxCloneSyncService,
};

use super::{
    App,
    answer::{self, Refusal},
    breaker::{BreakerLayer, CircuitBreaker},
};
use crate::{
    config::RetryConfig,
    domain::E164,
    proto::{
        AdapterAccount, FindAccountsRequest, app_adapter_client::AppAdapterClient, app_info::Health,
    },
    security::random_id,
};

/// Why an app gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("timed out")]
    TimedOut,
    #[error("unreachable")]
    Unavailable,
    #[error("failed with {0:?}")]
    Failed(Code),
    /// Not asked: the app's circuit breaker is open.
    #[error("circuit open")]
    CircuitOpen,
    /// The app answered something no adapter may answer (too many accounts, a field too long).
    #[error("{0}")]
    Refused(Refusal),
    /// Timed out, but the caller's deadline gave the app too little time for that to count
    /// against it (under `breaker.timeout_floor` and less than its own timeout). Inside the stack
    /// only, so a tenant sending tiny deadlines cannot open every app's breaker;
    /// [`find_accounts`] reports it as [`CallError::TimedOut`].
    #[error("timed out (caller's deadline)")]
    CallerDeadline,
}

impl CallError {
    pub(super) fn from_status(status: &tonic::Status) -> Self {
        // The client's own `grpc-timeout` timer surfaces as a transport error: still a timeout.
        let mut source = std::error::Error::source(status);
        while let Some(e) = source {
            if e.is::<tonic::TimeoutExpired>() {
                return Self::TimedOut;
            }
            source = e.source();
        }
        // A connection that broke under the call (refused TLS, reset) is an app we never
        // reached, whatever code the transport surfaced it with.
        if std::error::Error::source(status).is_some_and(|e| e.is::<tonic::transport::Error>()) {
            return Self::Unavailable;
        }
        match status.code() {
            Code::DeadlineExceeded | Code::Cancelled => Self::TimedOut,
            Code::Unavailable => Self::Unavailable,
            code => Self::Failed(code),
        }
    }

    /// The outcome word used in logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            CallError::TimedOut | CallError::CallerDeadline => "timed_out",
            CallError::Unavailable => "unavailable",
            CallError::Failed(_) => "failed",
            CallError::CircuitOpen => "circuit_open",
            CallError::Refused(_) => "refused",
        }
    }

    /// Why the app gave no answer, as the caller reads it in its `AppResult`.
    pub fn reason(&self) -> String {
        match self {
            CallError::TimedOut | CallError::CallerDeadline => "timed out".to_owned(),
            CallError::Unavailable => "could not be reached".to_owned(),
            CallError::Failed(code) => format!(
                "answered with the error {}",
                crate::metrics::code_name(*code)
            ),
            CallError::CircuitOpen => "not asked: it has been failing".to_owned(),
            CallError::Refused(refusal) => refusal.to_string(),
        }
    }
}

/// One look-up call: the number, and when the caller stops waiting.
#[derive(Clone)]
pub struct AppCall {
    pub phone: E164,
    pub deadline: Instant,
    /// Whether a timeout of this call counts against the app (its breaker).
    pub timeout_counts: bool,
}

/// An app's `FindAccounts` behind its stack.
pub type AppService = BoxCloneSyncService<AppCall, Vec<AdapterAccount>, CallError>;

/// Builds the stack for one app.
pub(crate) fn app_stack(
    client: AppAdapterClient<Channel>,
    limit: Arc<Semaphore>,
    max_accounts: usize,
    breaker: Arc<CircuitBreaker>,
    retry: &RetryConfig,
) -> AppService {
    let policy = RetryPolicy {
        budget: Arc::new(TpsBudget::new(
            Duration::from_secs(10),
            retry.min_per_second,
            retry.budget_ratio as f32,
        )),
        retries_left: retry.max_retries,
        backoff: retry.backoff,
        first: true,
        last: None,
    };
    let service = ServiceBuilder::new()
        .retry(policy)
        .layer(BreakerLayer::new(breaker))
        .layer(GlobalConcurrencyLimitLayer::with_semaphore(limit))
        .service(Adapter {
            client,
            max_accounts,
        });
    BoxCloneSyncService::new(service)
}

/// The gRPC call at the bottom of the stack, and the check of its answer.
#[derive(Clone)]
struct Adapter {
    client: AppAdapterClient<Channel>,
    max_accounts: usize,
}

impl Service<AppCall> for Adapter {
    type Response = Vec<AdapterAccount>;
    type Error = CallError;
    type Future = BoxFuture<'static, Result<Vec<AdapterAccount>, CallError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: AppCall) -> Self::Future {
        let mut client = self.client.clone();
        let max_accounts = self.max_accounts;
        async move {
            let mut request = tonic::Request::new(FindAccountsRequest {
                request_id: random_id("req"),
                phone_number: call.phone.expose().to_owned(),
            });
            request.set_timeout(call.deadline.saturating_duration_since(Instant::now()));
            // Our timer, or the `grpc-timeout` enforced by either side: the same timeout.
            let outcome =
                match tokio::time::timeout_at(call.deadline, client.find_accounts(request)).await {
                    Ok(Ok(answer)) => {
                        let accounts = answer.into_inner().accounts;
                        answer::check(&accounts, max_accounts)
                            .map(|()| accounts)
                            .map_err(CallError::Refused)
                    }
                    Ok(Err(status)) if answer::is_over_decoding_limit(&status) => {
                        Err(CallError::Refused(Refusal::AnswerTooLarge {
                            limit: answer::decoding_limit(max_accounts),
                        }))
                    }
                    Ok(Err(status)) if answer::is_undecodable(&status) => {
                        Err(CallError::Refused(Refusal::Malformed))
                    }
                    Ok(Err(status)) => Err(CallError::from_status(&status)),
                    Err(_) => Err(CallError::TimedOut),
                };
            match outcome {
                Err(CallError::TimedOut) if !call.timeout_counts => Err(CallError::CallerDeadline),
                outcome => outcome,
            }
        }
        .boxed()
    }
}

/// Retries calls that found the app unreachable, while the budget and the deadline allow.
#[derive(Clone)]
struct RetryPolicy {
    budget: Arc<TpsBudget>,
    retries_left: u32,
    backoff: Duration,
    first: bool,
    /// How the previous attempt failed.
    last: Option<CallError>,
}

impl tower::retry::Policy<AppCall, Vec<AdapterAccount>, CallError> for RetryPolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        call: &mut AppCall,
        result: &mut Result<Vec<AdapterAccount>, CallError>,
    ) -> Option<Self::Future> {
        if std::mem::take(&mut self.first) {
            // Every first attempt earns the budget its share of retries.
            self.budget.deposit();
        }
        // A retry the breaker refused (the first attempt's failure opened it) did not ask the
        // app: the answer is how the app last failed.
        if let (Err(CallError::CircuitOpen), Some(last)) = (&result, self.last) {
            *result = Err(last);
            return None;
        }
        self.last = result.as_ref().err().copied();
        let retryable = matches!(result, Err(CallError::Unavailable));
        // Worth retrying only if a retry has time to be answered.
        let room = self.backoff * 3;
        if !retryable
            || self.retries_left == 0
            || Instant::now() + room >= call.deadline
            || !self.budget.withdraw()
        {
            return None;
        }
        self.retries_left -= 1;
        Some(tokio::time::sleep(self.backoff))
    }

    fn clone_request(&mut self, call: &AppCall) -> Option<AppCall> {
        // Always kept, even with no retry left: `retry` must see the last attempt's result to
        // report a breaker refusal as the app's own failure.
        Some(call.clone())
    }
}

/// The span of one app call, a child of the current (request) span; `find_accounts` records the
/// outcome and latency in it.
pub fn app_call_span(app: &App) -> tracing::Span {
    tracing::debug_span!(
        "app_call",
        app = %app.id,
        outcome = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    )
}

/// Asks `app` for the accounts of `phone`, giving up at `deadline`. Run it instrumented with
/// [`app_call_span`].
pub async fn find_accounts(
    app: Arc<App>,
    phone: E164,
    deadline: Instant,
) -> Result<Vec<AdapterAccount>, CallError> {
    let started = Instant::now();
    // A timeout counts against the app when it had its whole timeout, or at least the floor.
    let given = deadline.saturating_duration_since(started);
    let timeout_counts = given >= app.timeout || given >= app.timeout_floor;
    let service = app.client.lookup.clone();
    let call = AppCall {
        phone,
        deadline,
        timeout_counts,
    };
    let outcome = tokio::time::timeout_at(deadline, service.oneshot(call))
        .await
        .unwrap_or(Err(CallError::TimedOut))
        .map_err(|e| match e {
            CallError::CallerDeadline => CallError::TimedOut,
            e => e,
        });
    let latency = started.elapsed();
    match &outcome {
        Ok(_) => app.record_health(Health::Healthy),
        Err(CallError::CircuitOpen) => {}
        Err(_) => app.record_health(Health::Degraded),
    }
    app.metrics.record(
        outcome.as_ref().map(|_| ()).map_err(|e| *e),
        latency.as_secs_f64(),
    );
    let span = tracing::Span::current();
    span.record(
        "outcome",
        outcome
            .as_ref()
            .map(|_| "answered")
            .unwrap_or_else(|e| e.as_str()),
    );
    span.record("latency_ms", latency.as_millis() as u64);
    tracing::debug!("adapter call done");
    outcome
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn policy(max_retries: u32, min_per_second: u32) -> RetryPolicy {
        RetryPolicy {
            budget: Arc::new(TpsBudget::new(Duration::from_secs(10), min_per_second, 0.0)),
            retries_left: max_retries,
            backoff: Duration::from_millis(10),
            first: true,
            last: None,
        }
    }

    /// Runs one call through `policy` against a service answering `answers` in turn; returns the
    /// result and the number of attempts.
    async fn run(
        policy: RetryPolicy,
        answers: Vec<Result<(), CallError>>,
        deadline: Duration,
    ) -> (Result<Vec<AdapterAccount>, CallError>, u32) {
        let attempts = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&attempts);
        let service = tower::service_fn(move |_: AppCall| {
            let n = counter.fetch_add(1, Ordering::SeqCst) as usize;
            let answer = answers[n.min(answers.len() - 1)];
            async move { answer.map(|()| Vec::new()) }
        });
        let call = AppCall {
            phone: E164::parse("+8613800138000").unwrap(),
            deadline: Instant::now() + deadline,
            timeout_counts: true,
        };
        let result = tower::retry::Retry::new(policy, service)
            .oneshot(call)
            .await;
        (result, attempts.load(Ordering::SeqCst))
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_app_is_retried_once_then_answers() {
        let (result, attempts) = run(
            policy(1, 10),
            vec![Err(CallError::Unavailable), Ok(())],
            Duration::from_secs(1),
        )
        .await;
        assert!(result.is_ok());
        assert_eq!(attempts, 2);
        // Retries stop at max_retries.
        let (result, attempts) = run(
            policy(1, 10),
            vec![Err(CallError::Unavailable)],
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(result.unwrap_err(), CallError::Unavailable);
        assert_eq!(attempts, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_that_a_retry_would_not_fix_are_not_retried() {
        for error in [
            CallError::Failed(Code::Internal),
            CallError::Failed(Code::InvalidArgument),
            CallError::TimedOut,
            CallError::CircuitOpen,
        ] {
            let (result, attempts) =
                run(policy(3, 10), vec![Err(error)], Duration::from_secs(1)).await;
            assert_eq!(result.unwrap_err(), error);
            assert_eq!(attempts, 1, "{error:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_without_time_left_or_budget() {
        // 20 ms left, a retry needs three backoffs (30 ms).
        let (_, attempts) = run(
            policy(1, 10),
            vec![Err(CallError::Unavailable)],
            Duration::from_millis(20),
        )
        .await;
        assert_eq!(attempts, 1);
        // An empty budget: no floor and no deposits worth a retry.
        let (_, attempts) = run(
            policy(1, 0),
            vec![Err(CallError::Unavailable)],
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(attempts, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_refused_by_the_breaker_reports_the_apps_own_failure() {
        let (result, attempts) = run(
            policy(1, 10),
            vec![Err(CallError::Unavailable), Err(CallError::CircuitOpen)],
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(result.unwrap_err(), CallError::Unavailable);
        assert_eq!(attempts, 2);
    }
}
