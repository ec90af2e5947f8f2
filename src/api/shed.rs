//! Load shedding and request metrics: a tower layer around the whole gRPC server.
//!
//! Each request takes one of `limits.max_in_flight` permits and keeps it until its response body
//! (the whole stream, for streaming RPCs) is finished or dropped. When none is free the request is
//! answered at once with `UNAVAILABLE` / `SERVICE_UNAVAILABLE` and a `RetryInfo`, instead of
//! queueing: memory and latency stay bounded under any offered load. Health checks and
//! reflection are never shed, so an orchestrator sees a saturated gateway as alive.
//!
//! The same guard counts the request in `unbind_requests_total{method, code}` with the status it
//! ended with (from the headers of a trailers-only answer, else from the trailers), and its
//! duration to the end of the response.
//!
//! Callers cannot starve each other (issue 14, item 5):
//! - each tenant (the name its client certificate carries; callers without one share one
//!   allowance) holds at most `limits.max_in_flight_per_tenant` of the permits: past it, its
//!   requests are answered `RESOURCE_EXHAUSTED` at once and every other tenant is unaffected;
//! - a request body that stalls (nothing for `limits.body_timeout`: a unary call's whole body, or
//!   the gap between messages of a client stream) ends the request, so a caller that sends
//!   headers and nothing more gives its permits back;
//! - `limits.max_streams_per_connection` caps one connection's streams, and
//!   `limits.handshake_timeout` closes a connection that does not finish its TLS handshake in
//!   time; a peer that stops answering HTTP/2 pings (every 30 s, 10 s to answer) is closed too
//!   (all three set where the server is built, `server.rs`).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tower::{Layer, Service};

use super::ApiError;
use super::metrics::ApiMetrics;

/// How long a shed caller is told to wait before retrying.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// What bounds the requests in flight.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Requests at once, in all.
    pub max_in_flight: usize,
    /// Requests at once, per tenant.
    pub per_tenant: usize,
    /// Longest wait for the next part of a request body.
    pub body_timeout: Duration,
}

/// Each tenant's own permits, by the name its certificate carries ("" without one).
#[derive(Default)]
struct TenantPermits {
    by_name: std::sync::Mutex<std::collections::HashMap<String, Arc<Semaphore>>>,
}

impl TenantPermits {
    fn of(&self, name: &str, per_tenant: usize) -> Arc<Semaphore> {
        let mut map = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        // Every request asks: a tenant already seen costs a look-up, no allocation.
        if let Some(permits) = map.get(name) {
            return Arc::clone(permits);
        }
        let permits = Arc::new(Semaphore::new(per_tenant));
        map.insert(name.to_owned(), Arc::clone(&permits));
        permits
    }
}

/// Adds [`Shed`] around a service.
#[derive(Clone)]
pub struct ShedLayer {
    permits: Arc<Semaphore>,
    tenants: Arc<TenantPermits>,
    bounds: Bounds,
    metrics: ApiMetrics,
}

impl ShedLayer {
    /// At most `bounds.max_in_flight` requests at once, `bounds.per_tenant` of one tenant.
    pub fn new(bounds: Bounds, metrics: ApiMetrics) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(bounds.max_in_flight)),
            tenants: Arc::default(),
            bounds,
            metrics,
        }
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Shed {
            inner,
            permits: Arc::clone(&self.permits),
            tenants: Arc::clone(&self.tenants),
            bounds: self.bounds,
            metrics: self.metrics.clone(),
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct Shed<S> {
    inner: S,
    permits: Arc<Semaphore>,
    tenants: Arc<TenantPermits>,
    bounds: Bounds,
    metrics: ApiMetrics,
}

/// The tenant name the caller's client certificate carries, "" without one.
fn tenant_name<B>(request: &Request<B>) -> String {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs())
        .and_then(|certs| {
            certs
                .first()
                .and_then(|c| super::tenant::tenant_of_certificate(c))
        })
        .unwrap_or_default()
}

/// An answer at once, without calling the service.
fn refuse<RB: Default>(error: ApiError) -> Response<GuardedBody<RB>> {
    error
        .to_status()
        .into_http::<RB>()
        .map(|inner| GuardedBody { inner, guard: None })
}

/// Paths never shed nor counted: health checks and reflection.
fn exempt(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

impl<S, RB> Service<Request<tonic::body::Body>> for Shed<S>
where
    S: Service<Request<tonic::body::Body>, Response = Response<RB>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = Response<GuardedBody<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        let path = request.uri().path();
        if exempt(path) {
            let future = self.inner.call(request);
            return Box::pin(async move {
                Ok(future
                    .await?
                    .map(|inner| GuardedBody { inner, guard: None }))
            });
        }
        let method = self.metrics.method_label(path);
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            self.metrics.shed();
            self.metrics.request(method, tonic::Code::Unavailable, 0.0);
            return Box::pin(std::future::ready(Ok(refuse(ApiError::Overloaded {
                retry_after: RETRY_AFTER,
            }))));
        };
        // Then the tenant's own allowance: a tenant at it gives the permit back at once, so it
        // holds no more than its share however many requests it sends.
        let tenant = self
            .tenants
            .of(&tenant_name(&request), self.bounds.per_tenant);
        let Ok(tenant_permit) = tenant.try_acquire_owned() else {
            drop(permit);
            self.metrics
                .request(method, tonic::Code::ResourceExhausted, 0.0);
            return Box::pin(std::future::ready(Ok(refuse(ApiError::RateLimited {
                retry_after: RETRY_AFTER,
            }))));
        };
        let mut guard = Guard::new([permit, tenant_permit], self.metrics.clone(), method);
        let timeout = self.bounds.body_timeout;
        let request = request.map(|body| tonic::body::Body::new(StallLimit::new(body, timeout)));
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            guard.observe(response.headers());
            Ok(response.map(|inner| GuardedBody {
                inner,
                guard: Some(guard),
            }))
        })
    }
}

/// One admitted request: its permit, and what the metrics need when it ends.
pub struct Guard {
    _permits: [OwnedSemaphorePermit; 2],
    metrics: ApiMetrics,
    method: String,
    started: Instant,
    code: Option<tonic::Code>,
}

impl Guard {
    fn new(permits: [OwnedSemaphorePermit; 2], metrics: ApiMetrics, method: String) -> Self {
        metrics.in_flight().inc();
        Self {
            _permits: permits,
            metrics,
            method,
            started: Instant::now(),
            code: None,
        }
    }

    /// Notes the status if these headers (or trailers) carry one.
    fn observe(&mut self, headers: &HeaderMap) {
        if let Some(status) = headers.get("grpc-status") {
            let code = status
                .to_str()
                .ok()
                .and_then(|s| s.parse::<i32>().ok())
                .map(tonic::Code::from_i32)
                .unwrap_or(tonic::Code::Unknown);
            self.code = Some(code);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.metrics.in_flight().dec();
        // A response dropped before its status (the caller went away) counts as cancelled.
        self.metrics.request(
            std::mem::take(&mut self.method),
            self.code.unwrap_or(tonic::Code::Cancelled),
            self.started.elapsed().as_secs_f64(),
        );
    }
}

/// A response body that holds the request's [`Guard`] until it is finished or dropped.
pub struct GuardedBody<B> {
    inner: B,
    guard: Option<Guard>,
}

impl<B: Body + Unpin> Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(guard)) = (&frame, this.guard.as_mut())
            && let Some(trailers) = frame.trailers_ref()
        {
            guard.observe(trailers);
        }
        if let Poll::Ready(None) = frame {
            this.guard = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that ends in an error when nothing of it arrives for `timeout` (from the start,
/// then from each part), so a caller that stalls cannot hold its request open.
struct StallLimit {
    inner: tonic::body::Body,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl StallLimit {
    fn new(inner: tonic::body::Body, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl Body for StallLimit {
    type Data = <tonic::body::Body as Body>::Data;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(frame)) => {
                let next = Instant::now() + this.timeout;
                this.sleep.as_mut().reset(next);
                Poll::Ready(Some(frame))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(tonic::Status::cancelled(
                    "the request body stalled: nothing arrived within limits.body_timeout",
                )))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
