//! One client per app for all four adapter RPCs, built once from the app's catalog entry. Every
//! call to an app goes through it, whoever makes it (a look-up, the ticket worker, the push
//! worker), so the app's limits hold for all of them together:
//!
//! - **one concurrency limit**: calls in flight to the app at once, look-ups, unbinds, status
//!   checks and pushes counted together (a push of ten thousand numbers waits its turn like any
//!   call; waiting counts within the call's timeout);
//! - **one circuit breaker**: an app failing its look-ups is not sent unbinds meanwhile, and the
//!   other way round;
//! - **one timeout**: the app's `timeout` bounds every call, the wait for a slot included (the
//!   config checks it is well under the workers' lease);
//! - **a decoding limit per RPC**: a look-up answer by [`answer::decoding_limit`], every other
//!   answer [`SMALL_ANSWER_BYTES`];
//! - **retry only for `FindAccounts`**, the one call that is read-only and answered while a person
//!   waits ([`super::adapter`]); the workers' calls are retried by the workers, with backoff, under
//!   the same idempotency key.
//!
//! Workers decide what to call and what an answer means; they never wire transport.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{sync::Semaphore, time::Instant};
use tonic::{Code, transport::Channel};

use super::{
    adapter::{AppService, CallError, app_stack},
    answer,
    breaker::CircuitBreaker,
    metrics::AppMetrics,
};
use crate::{
    config::{BreakerConfig, RetryConfig},
    proto::{
        GetUnbindStatusRequest, NotifyNumbersRecycledRequest, UnbindAccountRequest,
        UnbindAccountResponse, app_adapter_client::AppAdapterClient,
    },
};

/// The decoding limit of every answer but `FindAccounts`': an unbind state, a `detail` and a
/// `vendor_ref` (kept to [`answer::MAX_DETAIL_CHARS`] and [`answer::MAX_VENDOR_REF_BYTES`]) fit
/// many times over.
pub const SMALL_ANSWER_BYTES: usize = 64 * 1024;

/// The calls the workers make (`FindAccounts` goes through [`AppClient::lookup`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    UnbindAccount,
    GetUnbindStatus,
    NotifyNumbersRecycled,
}

impl Rpc {
    /// The word in the metric's `rpc` label.
    pub fn as_label(self) -> &'static str {
        match self {
            Rpc::UnbindAccount => "unbind_account",
            Rpc::GetUnbindStatus => "get_unbind_status",
            Rpc::NotifyNumbersRecycled => "notify_numbers_recycled",
        }
    }
}

/// Whether an open breaker stops a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Not called while the breaker is open: the app is failing, the caller waits its backoff.
    Breaker,
    /// Called even so: the one status check that decides a ticket at its due date. It neither
    /// waits for nor counts as the breaker's probe.
    FinalCheck,
}

/// Why a worker's call gave no answer.
#[derive(Debug)]
pub enum RpcError {
    /// Not called: the app's breaker is open.
    CircuitOpen,
    /// The app answered with an error, or was not reached or not answered in time (as the status
    /// a caller would see: `UNAVAILABLE`, `DEADLINE_EXCEEDED`).
    Status(tonic::Status),
}

impl RpcError {
    /// The status code, `UNAVAILABLE` when the app was not called.
    pub fn code(&self) -> Code {
        match self {
            RpcError::CircuitOpen => Code::Unavailable,
            RpcError::Status(status) => status.code(),
        }
    }

    /// Whether the same call may succeed later: the app was not reached, was busy or failed
    /// inside. A refusal (`INVALID_ARGUMENT`, `PERMISSION_DENIED`, ...) will not change.
    pub fn is_transient(&self) -> bool {
        is_transient(self.code())
    }
}

/// Whether an app's error is worth retrying, and counts against its breaker.
pub fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Internal
            | Code::Unknown
    )
}

/// An app's settings as its client needs them.
pub(crate) struct ClientSettings<'a> {
    pub timeout: Duration,
    pub concurrency: usize,
    pub max_accounts: usize,
    pub breaker: &'a BreakerConfig,
    pub retry: &'a RetryConfig,
}

/// The client of one app's adapter: the channel, and the limits every call to the app shares.
pub struct AppClient {
    /// For every call but `FindAccounts`, with the small decoding limit.
    small: AppAdapterClient<Channel>,
    /// `FindAccounts` through retry, breaker and concurrency limit.
    pub(crate) lookup: AppService,
    pub(crate) breaker: Arc<CircuitBreaker>,
    /// Calls in flight to the app, whoever makes them.
    limit: Arc<Semaphore>,
    timeout: Duration,
    metrics: AppMetrics,
}

impl AppClient {
    pub(crate) fn new(channel: Channel, settings: ClientSettings<'_>, metrics: AppMetrics) -> Self {
        let breaker = Arc::new(CircuitBreaker::new(settings.breaker.clone()));
        let limit = Arc::new(Semaphore::new(settings.concurrency));
        // An answer larger than the accounts it may hold could need is refused while decoding,
        // before it is held in memory whole.
        let lookup_client = AppAdapterClient::new(channel.clone())
            .max_decoding_message_size(answer::decoding_limit(settings.max_accounts));
        let lookup = app_stack(
            lookup_client,
            Arc::clone(&limit),
            settings.max_accounts,
            Arc::clone(&breaker),
            settings.retry,
        );
        Self {
            small: AppAdapterClient::new(channel).max_decoding_message_size(SMALL_ANSWER_BYTES),
            lookup,
            breaker,
            limit,
            timeout: settings.timeout,
            metrics,
        }
    }

    /// `UnbindAccount`: asks the app to unbind one account (the request carries the ticket's
    /// idempotency key).
    pub async fn unbind_account(
        &self,
        request: UnbindAccountRequest,
    ) -> Result<UnbindAccountResponse, RpcError> {
        self.call(
            Rpc::UnbindAccount,
            Gate::Breaker,
            self.timeout,
            request,
            |mut c, r| async move { c.unbind_account(r).await },
        )
        .await
    }

    /// `GetUnbindStatus`: where the app is with an unbind it accepted.
    pub async fn get_unbind_status(
        &self,
        request: GetUnbindStatusRequest,
        gate: Gate,
    ) -> Result<UnbindAccountResponse, RpcError> {
        self.call(
            Rpc::GetUnbindStatus,
            gate,
            self.timeout,
            request,
            |mut c, r| async move { c.get_unbind_status(r).await },
        )
        .await
    }

    /// `NotifyNumbersRecycled`: one batch of a carrier push (its id is the idempotency key).
    pub async fn notify_numbers_recycled(
        &self,
        request: NotifyNumbersRecycledRequest,
    ) -> Result<(), RpcError> {
        self.call(
            Rpc::NotifyNumbersRecycled,
            Gate::Breaker,
            self.timeout,
            request,
            |mut c, r| async move { c.notify_numbers_recycled(r).await },
        )
        .await
        .map(|_| ())
    }

    /// One call: the breaker's permit, then a concurrency slot and the call itself, both within
    /// `timeout`; the outcome counted in the breaker and the metrics.
    async fn call<Req, Resp, F, Fut>(
        &self,
        rpc: Rpc,
        gate: Gate,
        timeout: Duration,
        request: Req,
        send: F,
    ) -> Result<Resp, RpcError>
    where
        F: FnOnce(AppAdapterClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let permit = match self.breaker.try_acquire() {
            Ok(permit) => Some(permit),
            Err(_) if gate == Gate::FinalCheck => None,
            Err(_) => {
                self.metrics.record_rpc(rpc, "circuit_open");
                return Err(RpcError::CircuitOpen);
            }
        };
        let deadline = Instant::now() + timeout;
        let client = self.small.clone();
        let answer = tokio::time::timeout_at(deadline, async {
            // Never closed: the semaphore lives as long as the client.
            let _slot = self
                .limit
                .acquire()
                .await
                .expect("the app's limit is never closed");
            let mut request = tonic::Request::new(request);
            request.set_timeout(deadline.saturating_duration_since(Instant::now()));
            send(client, request).await
        })
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::deadline_exceeded(
                "the app did not answer in time",
            ))
        });
        let transient = answer
            .as_ref()
            .err()
            .is_some_and(|s| is_transient(s.code()));
        match permit {
            Some(permit) if transient => permit.failure(),
            // An answer, even a refusal, is an app at work.
            Some(permit) => permit.success(),
            None => {}
        }
        // Told apart as for look-ups: the transport's own timer is a timeout too.
        let outcome = match &answer {
            Ok(_) => "answered",
            Err(status) => CallError::from_status(status).as_str(),
        };
        self.metrics.record_rpc(rpc, outcome);
        answer
            .map(tonic::Response::into_inner)
            .map_err(RpcError::Status)
    }
}
