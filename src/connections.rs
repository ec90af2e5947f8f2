//! The connection cap every listener shares (the gateway's gRPC port, the HTTP API, the portal
//! and its admin port): at most `max` connections open at once. At the cap the next connection
//! is not accepted: it waits in the kernel's backlog until one closes, so a partner that opens
//! connections without end holds at most `max` descriptors and the rest of the process lives.
//! Each time the cap is reached is logged once, with how long it stayed full.
//!
//! A listener may also cap the connections of one client address (`max_per_ip`): without it a
//! single source could hold every place (connections that never finish a handshake, renewed as
//! they time out) and lock every other partner out. A connection over its address's share is
//! closed as soon as it is accepted. IPv6 addresses count by their /64 (what one host is
//! usually given); IPv4-mapped ones as IPv4. No address is ever logged or put in a label.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `unbind_connections_open` | gauge | `listener` |
//! | `unbind_connections_max` | gauge | `listener` |
//! | `unbind_connection_cap_waits_total` | counter | `listener` |
//! | `unbind_connections_refused_total` | counter | `listener` (over the address's share) |
//! | `unbind_tls_certificate_expiry_seconds` | gauge | `listener` |
//! | `unbind_tls_reloads_total` | counter | `listener`, `result` |
//! | `unbind_tls_handshake_failures_total` | counter | `listener`, `reason` |
//!
//! The last three are about the listeners' TLS (`LiveTls` in the tls module): when the
//! certificate served now expires (Unix seconds, to alert on); each re-read of its files,
//! `applied` or `rejected` (the running one kept); and the handshakes that failed, by a closed
//! set of reasons (`handshake_failure` in the tls module), so a partner whose certificate expired
//! or is not signed by the client CA shows here, not only in its own errors.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv6Addr},
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
    refused: Family<ListenerLabels, Counter>,
    certificate_expiry: Family<ListenerLabels, Gauge>,
    tls_reloads: Family<ReloadLabels, Counter>,
    handshake_failures: Family<ReasonLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    listener: &'static str,
    reason: &'static str,
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
            "connections_refused",
            "Connections closed at once because their client address had its share open",
            m.refused.clone(),
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
        metrics.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out, by listener and reason",
            m.handshake_failures.clone(),
        );
        m
    }

    /// A TLS handshake on `listener` that failed for `reason` (a closed set).
    pub fn handshake_failed(&self, listener: &'static str, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&ReasonLabels { listener, reason })
            .inc();
    }

    /// The certificate `listener` serves now expires at `not_after` (Unix seconds).
    pub fn certificate_expires(&self, listener: &'static str, not_after: i64) {
        self.certificate_expiry
            .get_or_create(&ListenerLabels { listener })
            .set(not_after);
    }

    /// `listener` no longer has a certificate (one taken out of the config): its expiry is no
    /// longer reported.
    pub fn certificate_gone(&self, listener: &'static str) {
        self.certificate_expiry.remove(&ListenerLabels { listener });
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
    per_ip: Option<Arc<PerIp>>,
    refused: Counter,
    /// When a refusal was last logged, and how many since.
    refusals_logged: (Option<Instant>, u64),
}

/// Connections open per client address (see the module's documentation).
struct PerIp {
    max: usize,
    open: std::sync::Mutex<HashMap<IpAddr, usize>>,
}

/// The key an address counts under: IPv4 (mapped ones too) as it is, IPv6 by its /64.
fn share_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(
            u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000,
        )),
        v4 => v4,
    }
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
            per_ip: None,
            refused: metrics.refused.get_or_create(&labels).clone(),
            refusals_logged: (None, 0),
        }
    }

    /// At most `max` (at least 1) connections open per client address; `None`: no such cap.
    pub fn with_max_per_ip(mut self, max: Option<usize>) -> Self {
        self.per_ip = max.map(|max| {
            Arc::new(PerIp {
                max: max.max(1),
                open: std::sync::Mutex::new(HashMap::new()),
            })
        });
        self
    }

    /// Counts the connection holding `place` against its client address `peer`. False when the
    /// address already has its share open: close the connection (counted, and logged at most
    /// every 10 s, without the address).
    pub fn admit(&mut self, place: &mut Place, peer: Option<IpAddr>) -> bool {
        let (Some(per_ip), Some(peer)) = (&self.per_ip, peer) else {
            return true;
        };
        let key = share_of(peer);
        {
            let mut open = per_ip.open.lock().unwrap_or_else(|p| p.into_inner());
            let count = open.entry(key).or_insert(0);
            if *count < per_ip.max {
                *count += 1;
                place.peer = Some((Arc::clone(per_ip), key));
                return true;
            }
        }
        self.refused.inc();
        let (last, since) = &mut self.refusals_logged;
        *since += 1;
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            tracing::warn!(
                listener = self.name,
                max_per_ip = per_ip.max,
                refused = *since,
                "connections refused: their client address already had its share open"
            );
            *last = Some(Instant::now());
            *since = 0;
        }
        false
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
            peer: None,
        }
    }
}

/// One connection's place under the cap, given back when dropped.
pub struct Place {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
    /// The address share this connection counts against, if any.
    peer: Option<(Arc<PerIp>, IpAddr)>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.open.dec();
        if let Some((per_ip, key)) = self.peer.take() {
            let mut open = per_ip.open.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = open.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    open.remove(&key);
                }
            }
        }
    }
}

/// A connection holding its place: the place is given back when the connection is dropped,
/// however it ends (closed by either side, a failed TLS handshake, a drain).
pub struct Capped<IO> {
    io: IO,
    _place: Place,
}

/// `incoming` with at most `cap.max` of its connections alive at once: the next one is taken
/// from `incoming` only when a place is free; one whose client address (`peer`) has its share
/// open is closed at once. Accept errors (out of file descriptors and the like) pause the
/// stream for a moment rather than let the server spin on them.
pub fn capped<S, IO>(
    incoming: S,
    cap: ConnectionCap,
    peer: fn(&IO) -> Option<IpAddr>,
) -> impl Stream<Item = io::Result<Capped<IO>>>
where
    S: Stream<Item = io::Result<IO>> + Unpin,
{
    futures::stream::unfold((incoming, cap), move |(mut incoming, mut cap)| async move {
        loop {
            let mut place = cap.place().await;
            let next = match incoming.next().await? {
                Ok(io) => {
                    if !cap.admit(&mut place, peer(&io)) {
                        // Closed: dropped with its place.
                        continue;
                    }
                    Ok(Capped { io, _place: place })
                }
                Err(e) => {
                    tracing::warn!(listener = cap.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err(e)
                }
            };
            return Some((next, (incoming, cap)));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn an_address_counts_as_ipv4_or_by_its_ipv6_64() {
        assert_eq!(share_of(ip("10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(share_of(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(share_of(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            share_of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            share_of(ip("2001:db8:1:2::9"))
        );
        assert_ne!(
            share_of(ip("2001:db8:1:3::1")),
            share_of(ip("2001:db8:1:2::1"))
        );
    }

    #[tokio::test]
    async fn an_address_gets_its_share_back_when_its_connections_close() {
        let metrics = ListenerMetrics::default();
        let mut cap = ConnectionCap::new("test", 10, &metrics).with_max_per_ip(Some(2));
        let peer = Some(ip("192.0.2.1"));
        let mut first = cap.place().await;
        let mut second = cap.place().await;
        let mut third = cap.place().await;
        assert!(cap.admit(&mut first, peer));
        assert!(cap.admit(&mut second, peer));
        assert!(!cap.admit(&mut third, peer));
        // Another address, and a connection whose address is unknown, are not counted.
        assert!(cap.admit(&mut third, Some(ip("192.0.2.2"))));
        let mut unknown = cap.place().await;
        assert!(cap.admit(&mut unknown, None));
        drop(first);
        let mut again = cap.place().await;
        assert!(cap.admit(&mut again, peer));
        drop((second, again));
        let open = cap.per_ip.as_ref().map(|p| p.open.lock().unwrap().len());
        assert_eq!(open, Some(1), "only 192.0.2.2 still has a connection open");
    }
}
