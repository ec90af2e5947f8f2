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
    time::Instant,
};
use tower::{Layer, Service};

use super::ApiError;
use super::metrics::ApiMetrics;

/// How long a shed caller is told to wait before retrying.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// Adds [`Shed`] around a service.
#[derive(Clone)]
pub struct ShedLayer {
    permits: Arc<Semaphore>,
    metrics: ApiMetrics,
}

impl ShedLayer {
    /// At most `max_in_flight` requests at once.
    pub fn new(max_in_flight: usize, metrics: ApiMetrics) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_in_flight)),
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
            metrics: self.metrics.clone(),
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct Shed<S> {
    inner: S,
    permits: Arc<Semaphore>,
    metrics: ApiMetrics,
}

/// Paths never shed nor counted: health checks and reflection.
fn exempt(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

impl<S, B, RB> Service<Request<B>> for Shed<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Send,
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

    fn call(&mut self, request: Request<B>) -> Self::Future {
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
            let response = ApiError::Overloaded {
                retry_after: RETRY_AFTER,
            }
            .to_status()
            .into_http::<RB>();
            return Box::pin(std::future::ready(Ok(
                response.map(|inner| GuardedBody { inner, guard: None })
            )));
        };
        let mut guard = Guard::new(permit, self.metrics.clone(), method);
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
    _permit: OwnedSemaphorePermit,
    metrics: ApiMetrics,
    method: String,
    started: Instant,
    code: Option<tonic::Code>,
}

impl Guard {
    fn new(permit: OwnedSemaphorePermit, metrics: ApiMetrics, method: String) -> Self {
        metrics.in_flight().inc();
        Self {
            _permit: permit,
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
        if let (Poll::Ready(Some(Ok(frame))), Some(guard)) = (&frame, this.guard.as_mut()) {
            if let Some(trailers) = frame.trailers_ref() {
                guard.observe(trailers);
            }
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
