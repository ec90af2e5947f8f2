//! A tower layer around the whole gRPC server that:
//! - checks the caller's `x-correlator` metadata against CAMARA's common pattern (at most 256
//!   characters of `[a-zA-Z0-9-_:;./<>{}]`): a request with anything else there is refused at
//!   once with `INVALID_ARGUMENT` naming the header, and the value is neither echoed nor logged
//!   (it could be anything a caller chose to send: a phone number, markup, a terminal escape);
//! - echoes a valid `x-correlator` on every answer, success or error;
//! - opens the request's tracing span (method and correlator, nothing personal);
//! - turns tonic's "message too large" (`OUT_OF_RANGE`, raised before our code runs) into our
//!   `INVALID_ARGUMENT` / `MESSAGE_TOO_LARGE`, so oversized requests get the documented answer.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};
use tracing::Instrument;

use super::ApiError;

/// The metadata key echoed back.
pub const CORRELATOR: &str = "x-correlator";

/// The longest correlator accepted, in characters (CAMARA's limit).
pub const MAX_CORRELATOR_LEN: usize = 256;

/// What the caller sent as `x-correlator`.
#[derive(Debug, PartialEq)]
enum Presented<'a> {
    /// No header, or an empty value. CAMARA's pattern (`{0,256}`) admits the empty string, so a
    /// conforming client may send one; it correlates nothing, so it counts as no correlator:
    /// nothing is echoed or recorded, and the request is served.
    Absent,
    /// One value of the allowed characters.
    Valid(&'a HeaderValue),
    /// Too long, a character outside the set, or the header given more than once.
    Invalid,
}

fn presented(headers: &http::HeaderMap) -> Presented<'_> {
    let mut values = headers.get_all(CORRELATOR).iter();
    match (values.next(), values.next()) {
        (None, _) => Presented::Absent,
        (Some(_), Some(_)) => Presented::Invalid,
        (Some(v), None) if v.is_empty() => Presented::Absent,
        (Some(v), None) if is_correlator(v.as_bytes()) => Presented::Valid(v),
        (Some(_), None) => Presented::Invalid,
    }
}

/// CAMARA's `x-correlator`: at most 256 characters of `[a-zA-Z0-9-_:;./<>{}]` (all ASCII, so
/// characters are bytes).
pub(crate) fn is_correlator(value: &[u8]) -> bool {
    value.len() <= MAX_CORRELATOR_LEN
        && value
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_:;./<>{}".contains(c))
}

/// The answer to a request whose `x-correlator` is not one.
fn refusal() -> tonic::Status {
    ApiError::field(
        CORRELATOR,
        "at most 256 characters of a-z, A-Z, 0-9 and - _ : ; . / < > { }",
    )
    .to_status()
}

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

/// The request's correlator for the audit trail: the `x-correlator` value if it is a valid one
/// (the layer has refused any other), else empty.
pub fn correlator_of<T>(request: &tonic::Request<T>) -> String {
    let mut values = request.metadata().get_all(CORRELATOR).iter();
    match (values.next(), values.next()) {
        (Some(v), None) if is_correlator(v.as_bytes()) => v.to_str().unwrap_or_default().to_owned(),
        _ => String::new(),
    }
}

impl<S, B, RB> Service<Request<B>> for Correlator<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<CorrelatorBody<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let correlator = match presented(request.headers()) {
            Presented::Valid(v) => Some(v.clone()),
            Presented::Absent => None,
            Presented::Invalid => {
                // Before the service (and its logs) sees the request; the value goes nowhere.
                let response = refusal().into_http::<CorrelatorBody<RB>>();
                return Box::pin(std::future::ready(Ok(response)));
            }
        };
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
                Ok(response.map(CorrelatorBody::Served))
            }
            .instrument(span),
        )
    }
}

/// The inner service's body, or none at all for a refusal (a gRPC status travels in the
/// headers of a trailers-only response).
#[derive(Default)]
pub enum CorrelatorBody<B> {
    Served(B),
    #[default]
    Refused,
}

impl<B: Body + Unpin> Body for CorrelatorBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.get_mut() {
            Self::Served(inner) => Pin::new(inner).poll_frame(cx),
            Self::Refused => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Served(inner) => inner.is_end_stream(),
            Self::Refused => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Served(inner) => inner.size_hint(),
            Self::Refused => SizeHint::with_exact(0),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&[u8]]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for v in values {
            map.append(CORRELATOR, HeaderValue::from_bytes(v).unwrap());
        }
        map
    }

    #[test]
    fn camaras_pattern_and_nothing_else() {
        let longest = "a".repeat(MAX_CORRELATOR_LEN);
        for good in [
            "b4333c46-49c0-4f62-80d7-f0ef930f1c46",
            "A-Z_a-z:0-9;./<x>{y}",
            longest.as_str(),
        ] {
            let map = headers(&[good.as_bytes()]);
            assert!(matches!(presented(&map), Presented::Valid(_)), "{good:?}");
            let mut request = tonic::Request::new(());
            *request.metadata_mut() = tonic::metadata::MetadataMap::from_headers(map);
            assert_eq!(correlator_of(&request), good);
        }
        let too_long = "a".repeat(MAX_CORRELATOR_LEN + 1);
        for bad in [
            too_long.as_bytes(),
            b"a b",
            b"a@b",
            b"a\tb",
            b"caf\xc3\xa9",
            b"a+b",
            b"a=b",
            b"\"a\"",
            b"a,b",
        ] {
            let map = headers(&[bad]);
            assert_eq!(presented(&map), Presented::Invalid, "{bad:?}");
            let mut request = tonic::Request::new(());
            *request.metadata_mut() = tonic::metadata::MetadataMap::from_headers(map);
            assert_eq!(correlator_of(&request), "", "{bad:?}");
        }
    }

    #[test]
    fn empty_is_absent_and_twice_is_invalid() {
        assert_eq!(presented(&headers(&[])), Presented::Absent);
        assert_eq!(presented(&headers(&[b""])), Presented::Absent);
        assert_eq!(presented(&headers(&[b"a", b"b"])), Presented::Invalid);
    }
}
