//! One call to one app's adapter, with the app's concurrency limit and a deadline, and the
//! classification of how it ended (answered, timed out, unreachable, failed).

use std::sync::Arc;

use tokio::time::Instant;
use tonic::Code;

use super::App;
use crate::{
    domain::E164,
    proto::{AdapterAccount, FindAccountsRequest, app_info::Health},
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
}

impl CallError {
    fn from_status(status: &tonic::Status) -> Self {
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
}

/// Asks `app` for the accounts of `phone`, giving up at `deadline`.
pub async fn find_accounts(
    app: Arc<App>,
    phone: E164,
    deadline: Instant,
) -> Result<Vec<AdapterAccount>, CallError> {
    let started = Instant::now();
    let outcome = tokio::time::timeout_at(deadline, async {
        // Waiting for a permit counts against the deadline, so a saturated app times out rather
        // than queueing forever.
        let _permit = app
            .permits
            .acquire()
            .await
            .map_err(|_| CallError::Unavailable)?;
        let mut request = tonic::Request::new(FindAccountsRequest {
            request_id: random_id("req"),
            phone_number: phone.expose().to_owned(),
        });
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        app.client()
            .find_accounts(request)
            .await
            .map(|r| r.into_inner().accounts)
            .map_err(|s| CallError::from_status(&s))
    })
    .await
    .unwrap_or(Err(CallError::TimedOut));
    let health = match &outcome {
        Ok(_) => Health::Healthy,
        Err(_) => Health::Degraded,
    };
    app.record_health(health);
    tracing::debug!(
        app = %app.id,
        outcome = outcome.as_ref().map(|_| "answered").unwrap_or_else(|e| match e {
            CallError::TimedOut => "timed_out",
            CallError::Unavailable => "unavailable",
            CallError::Failed(_) => "failed",
        }),
        latency_ms = started.elapsed().as_millis() as u64,
        "adapter call"
    );
    outcome
}
