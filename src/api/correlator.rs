//! A tower layer around the whole gRPC server that:
//! - echoes the caller's `x-correlator` metadata on every answer, success or error;
//! - opens the request's tracing span (method and correlator, nothing personal);
//! - turns tonic's "message too large" (`OUT_OF_RANGE`, raised before our code runs) into our
//!   `INVALID_ARGUMENT` / `MESSAGE_TOO_LARGE`, so oversized requests get the documented answer.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};
use tracing::Instrument;

use super::ApiError;

/// The metadata key echoed back.
pub const CORRELATOR: &str = "x-correlator";

/// Adds [`Correlator`] around a service.
#[derive(Clone, Copy, Debug, Default)]
pub struct CorrelatorLayer;

impl<S> Layer<S> for CorrelatorLayer {
    type Service = Correlator<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Correlator { inner }
    }
}

/// See the module docs.
#[derive(Clone, Debug)]
pub struct Correlator<S> {
    inner: S,
}

/// The request's correlator, if acceptable (for the audit trail); empty otherwise.
pub fn correlator_of<T>(request: &tonic::Request<T>) -> String {
    request
        .metadata()
        .get(CORRELATOR)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|c| c.is_ascii_graphic()))
        .unwrap_or_default()
        .to_owned()
}

/// A correlator we are willing to echo and log: short, visible ASCII.
fn acceptable(value: &HeaderValue) -> bool {
    let b = value.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

impl<S, B, RB> Service<Request<B>> for Correlator<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Send,
    S::Future: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let correlator = request
            .headers()
            .get(CORRELATOR)
            .filter(|v| acceptable(v))
            .cloned();
        let span = tracing::info_span!(
            "rpc",
            method = %request.uri().path(),
            correlator = correlator.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
        );
        let future = self.inner.call(request);
        Box::pin(
            async move {
                let mut response = future.await?;
                rewrite_too_large(&mut response);
                if let Some(c) = correlator {
                    response.headers_mut().insert(CORRELATOR, c);
                }
                Ok(response)
            }
            .instrument(span),
        )
    }
}

fn rewrite_too_large<RB>(response: &mut Response<RB>) {
    let headers = response.headers();
    let too_large = headers.get("grpc-status").map(HeaderValue::as_bytes) == Some(b"11")
        && headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| {
                m.contains("message%20length%20too%20large")
                    || m.contains("message length too large")
            });
    if !too_large {
        return;
    }
    let headers = response.headers_mut();
    headers.remove("grpc-message");
    headers.remove("grpc-status-details-bin");
    if ApiError::MessageTooLarge
        .to_status()
        .add_header(headers)
        .is_err()
    {
        tracing::warn!("could not rewrite an oversized-message status");
    }
}
