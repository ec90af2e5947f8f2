//! The connection cap every listener shares (the gateway's gRPC port, the HTTP API, the portal
//! and its admin port): at most `max` connections open at once. At the cap the next connection
//! is not accepted: it waits in the kernel's backlog until one closes, so a partner that opens
//! connections without end holds at most `max` descriptors and the rest of the process lives.
//! Each time the cap is reached is logged once, with how long it stayed full.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `unbind_connections_open` | gauge | `listener` |
//! | `unbind_connections_max` | gauge | `listener` |
//! | `unbind_connection_cap_waits_total` | counter | `listener` |
//! | `unbind_tls_certificate_expiry_seconds` | gauge | `listener` |
//! | `unbind_tls_reloads_total` | counter | `listener`, `result` |
//!
//! The last two are the listeners' TLS identities (`crate::tls::LiveTls`): when the certificate
//! served now expires (Unix seconds, to alert on), and each re-read of its files, `applied` or
//! `rejected` (the running one kept).

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::{Stream, StreamExt};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

use crate::metrics::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    listener: &'static str,
    result: &'static str,
}

/// The listeners' metrics of one registry (connections, TLS identity), shared by its
/// listeners; cheap to clone.
#[derive(Clone, Default)]
pub struct ListenerMetrics {
    open: Family<ListenerLabels, Gauge>,
    max: Family<ListenerLabels, Gauge>,
    waits: Family<ListenerLabels, Counter>,
    certificate_expiry: Family<ListenerLabels, Gauge>,
    tls_reloads: Family<ReloadLabels, Counter>,
}

impl ListenerMetrics {
    /// Declares the families in `metrics`' registry (once per registry).
    pub fn register(metrics: &Metrics) -> Self {
        let m = Self::default();
        metrics.register(
            "connections_open",
            "Connections open, by listener",
            m.open.clone(),
        );
        metrics.register(
            "connections_max",
            "The connection cap of each listener",
            m.max.clone(),
        );
        metrics.register(
            "connection_cap_waits",
            "Connections that waited in the backlog because the listener was at its cap",
            m.waits.clone(),
        );
        metrics.register(
            "tls_certificate_expiry_seconds",
            "When the certificate each listener serves expires (seconds since the Unix epoch)",
            m.certificate_expiry.clone(),
        );
        metrics.register(
            "tls_reloads",
            "Re-reads of a listener's TLS files: applied, or rejected (the running identity kept)",
            m.tls_reloads.clone(),
        );
        m
    }

    /// The certificate `listener` serves now expires at `not_after` (Unix seconds).
    pub fn certificate_expires(&self, listener: &'static str, not_after: i64) {
        self.certificate_expiry
            .get_or_create(&ListenerLabels { listener })
            .set(not_after);
    }

    /// A re-read of `listener`'s TLS files, `applied` or `rejected`.
    pub fn tls_reload(&self, listener: &'static str, result: &'static str) {
        self.tls_reloads
            .get_or_create(&ReloadLabels { listener, result })
            .inc();
    }
}

/// The cap of one listener. `place` is called before each accept.
pub struct ConnectionCap {
    name: &'static str,
    max: usize,
    places: Arc<Semaphore>,
    open: Gauge,
    waits: Counter,
    full_since: Option<Instant>,
}

impl ConnectionCap {
    /// A cap of `max` (at least 1) connections for the listener `name`.
    pub fn new(name: &'static str, max: usize, metrics: &ListenerMetrics) -> Self {
        let max = max.max(1);
        let labels = ListenerLabels { listener: name };
        metrics
            .max
            .get_or_create(&labels)
            .set(i64::try_from(max).unwrap_or(i64::MAX));
        Self {
            name,
            max,
            places: Arc::new(Semaphore::new(max)),
            open: metrics.open.get_or_create(&labels).clone(),
            waits: metrics.waits.get_or_create(&labels).clone(),
            full_since: None,
        }
    }

    /// A place for the next connection, waiting while `max` are open. Hold it as long as the
    /// connection lives.
    pub async fn place(&mut self) -> Place {
        let permit = match Arc::clone(&self.places).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                self.waits.inc();
                if self.full_since.is_none() {
                    self.full_since = Some(Instant::now());
                    tracing::warn!(
                        listener = self.name,
                        max_connections = self.max,
                        "connection cap reached: new connections wait until one closes"
                    );
                }
                // The semaphore is never closed.
                let Ok(permit) = Arc::clone(&self.places).acquire_owned().await else {
                    unreachable!("the connection cap's semaphore is never closed")
                };
                permit
            }
        };
        if let Some(since) = self.full_since.take() {
            tracing::info!(
                listener = self.name,
                full_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
                "connection cap: a place is free again"
            );
        }
        self.open.inc();
        Place {
            _permit: permit,
            open: self.open.clone(),
        }
    }
}

/// One connection's place under the cap, given back when dropped.
pub struct Place {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// A connection holding its place: the place is given back when the connection is dropped,
/// however it ends (closed by either side, a failed TLS handshake, a drain).
pub struct Capped<IO> {
    io: IO,
    _place: Place,
}

/// `incoming` with at most `cap.max` of its connections alive at once: the next one is taken
/// from `incoming` only when a place is free. Accept errors (out of file descriptors and the
/// like) pause the stream for a moment rather than let the server spin on them.
pub fn capped<S, IO>(incoming: S, cap: ConnectionCap) -> impl Stream<Item = io::Result<Capped<IO>>>
where
    S: Stream<Item = io::Result<IO>> + Unpin,
{
    futures::stream::unfold((incoming, cap), |(mut incoming, mut cap)| async move {
        let place = cap.place().await;
        let next = match incoming.next().await? {
            Ok(io) => Ok(Capped { io, _place: place }),
            Err(e) => {
                tracing::warn!(listener = cap.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err(e)
            }
        };
        Some((next, (incoming, cap)))
    })
}

impl<IO: AsyncRead + Unpin> AsyncRead for Capped<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Capped<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// tonic reads the peer's address (and, under TLS, its certificates) from the connection it
/// wraps: a capped connection says what the connection under it says.
impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for Capped<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}
