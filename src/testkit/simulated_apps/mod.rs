//! Simulated app adapters for the demo, the tests and the benchmarks: real gRPC
//! `unbind.v1.AppAdapter` servers for any number of apps, all in one process, each on its own TCP
//! port so a gateway sees them as separate endpoints.
//!
//! What each app answers is deterministic ([`accounts_for`]); how it answers (latency, errors,
//! stalls, how long an unbind takes) is set per app with [`Behaviour`] and can change while it
//! runs. Apps can be stopped (the port refuses connections) and started again on the same port,
//! and each app counts the calls it got ([`AppStats`]) so tests can check what a gateway did.
//!
//! [`Simulator::start_with_tls`] serves every app over TLS instead of plain text (optionally
//! requiring client certificates), so a gateway's client side — its CA, its own certificate, the
//! server name it expects — can be exercised against real adapters.

mod accounts;
mod service;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Mutex as AsyncMutex, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Server, ServerTlsConfig};

pub use accounts::accounts_for;
use service::{AppState, SimulatedAdapter};

use crate::proto::app_adapter_server::AppAdapterServer;

/// How long `stop_app` waits for the app's connections to close before it drops the server
/// outright. In-flight calls are interrupted at once, so only a client that never finishes its
/// HTTP/2 handshake takes this long; the listening socket is closed before the wait starts, so
/// new connections are refused either way.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How long a simulated app waits before it answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Latency {
    /// Always this long.
    Fixed(Duration),
    /// Uniformly distributed between `min` and `max` (inclusive).
    Uniform { min: Duration, max: Duration },
}

/// How a simulated app behaves; applies to every RPC (so transient failures can be simulated for
/// look-ups, unbinds, status polls and recycled-number notices alike).
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// Waited before answering.
    pub latency: Latency,
    /// Fraction of calls answered with `INTERNAL` (after the latency).
    pub error_rate: f64,
    /// Fraction of calls that never answer: the caller's deadline ends them.
    pub stall_rate: f64,
    /// `UnbindAccount` answers `ACCEPTED` and the unbind becomes `DONE` after this long; zero
    /// answers `DONE` at once.
    pub unbind_completion: Duration,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            latency: Latency::Fixed(Duration::ZERO),
            error_rate: 0.0,
            stall_rate: 0.0,
            unbind_completion: Duration::ZERO,
        }
    }
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimulatorConfig {
    /// How many apps (`app-001`, `app-002`, …).
    pub apps: usize,
    /// Seeds the accounts every app holds (see [`accounts_for`]).
    pub seed: u64,
    /// The initial behaviour of every app.
    pub behaviour: Behaviour,
    /// The address the apps listen on; an unspecified address (`0.0.0.0`) is advertised as
    /// loopback in the endpoints.
    pub bind_ip: IpAddr,
    /// App n listens on `base_port + n - 1`; `None` takes ephemeral ports.
    pub base_port: Option<u16>,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            apps: 3,
            seed: 42,
            behaviour: Behaviour::default(),
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            base_port: None,
        }
    }
}

/// One simulated app as a gateway's catalog sees it. Serializes to the keys of an `[[apps]]`
/// table (see [`catalog_toml`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SimulatedApp {
    pub id: String,
    pub name: String,
    pub category: String,
    pub customer_service: String,
    /// E.g. `http://127.0.0.1:60000`; with TLS, `https://localhost:60000` (the name the
    /// development adapter certificate carries).
    pub endpoint: String,
}

impl SimulatedApp {
    /// The gateway's catalog entry for this app; `timeout` overrides `app_defaults`.
    pub fn catalog_entry(&self, timeout: Option<Duration>) -> crate::config::AppConfig {
        crate::config::AppConfig {
            category: self.category.clone(),
            customer_service: self.customer_service.clone(),
            timeout,
            ..crate::config::AppConfig::new(&self.id, &self.name, &self.endpoint)
        }
    }
}

/// What one simulated app was asked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppStats {
    pub find_calls: u64,
    /// Every `UnbindAccount` call, replays included.
    pub unbind_calls: u64,
    pub status_calls: u64,
    pub notify_calls: u64,
    /// Distinct idempotency keys of the unbinds the app handled, in first-seen order.
    pub unbind_keys: Vec<String>,
    /// Distinct batch ids of the recycled-number notices the app handled, in first-seen order.
    pub notified_batches: Vec<String>,
    /// Every well-formed recycled-number notice the app received, replays and calls it then
    /// failed included, in order: what a gateway sent, to check none was sent under two ids.
    pub notices: Vec<Notice>,
}

/// One recycled-number notice as an app received it: its batch id and a digest of its numbers
/// (not the numbers: a long demo would keep millions of them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub batch_id: String,
    pub numbers: usize,
    pub digest: u64,
}

/// The digest [`Notice`] keeps of a batch's numbers, in order, with their dates.
pub fn notice_digest(numbers: &[crate::proto::RecycledNumber]) -> u64 {
    use std::hash::{Hash, Hasher};
    // `DefaultHasher::new` has fixed keys: the same numbers give the same digest throughout a
    // build (the tests compare digests computed by the same binary).
    let mut hasher = std::hash::DefaultHasher::new();
    for n in numbers {
        n.phone_number.hash(&mut hasher);
        n.cancelled_at
            .map(|t| (t.seconds, t.nanos))
            .hash(&mut hasher);
        n.reissued_at
            .map(|t| (t.seconds, t.nanos))
            .hash(&mut hasher);
    }
    hasher.finish()
}

/// A running gRPC server of one app.
struct RunningServer {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

struct AppSlot {
    app: SimulatedApp,
    addr: SocketAddr,
    state: Arc<AppState>,
    /// `None` while the app is stopped. An async mutex, so a stop and a start of the same app
    /// never interleave.
    server: AsyncMutex<Option<RunningServer>>,
}

struct Inner {
    seed: u64,
    /// Every app's TLS, also when it is started again; `None` serves plain text.
    tls: Option<ServerTlsConfig>,
    slots: Vec<AppSlot>,
    by_id: HashMap<String, usize>,
}

/// The simulated apps. Cloning gives another handle to the same apps. Dropping the last handle
/// closes every app's port too, but only [`Simulator::shutdown`] also ends stalled calls and waits
/// until the servers have stopped.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("apps", &self.inner.slots.len())
            .field("seed", &self.inner.seed)
            .finish()
    }
}

impl Simulator {
    /// Binds one port per app and starts serving them all, in plain text.
    pub async fn start(config: SimulatorConfig) -> std::io::Result<Simulator> {
        Self::start_with_tls(config, None).await
    }

    /// Like [`Simulator::start`], but with `Some(tls)` every app serves TLS: its identity (which
    /// must be set), and with `client_ca_root` client certificates signed by that CA are required.
    /// The endpoints are then `https://localhost:PORT` when the apps listen on a loopback or
    /// unspecified address (the name the development adapter certificate carries), else
    /// `https://IP:PORT`.
    pub async fn start_with_tls(
        config: SimulatorConfig,
        tls: Option<ServerTlsConfig>,
    ) -> std::io::Result<Simulator> {
        if let Some(tls) = &tls {
            // Checked once up front, so a bad certificate or key fails the start before any port
            // is bound rather than leaving some apps serving.
            Server::builder()
                .tls_config(tls.clone())
                .map_err(|e| invalid_tls(&e))?;
        }
        let mut slots = Vec::with_capacity(config.apps);
        let mut by_id = HashMap::with_capacity(config.apps);
        let mut listeners = Vec::with_capacity(config.apps);
        for number in 1..=config.apps {
            let port = match config.base_port {
                None => 0,
                Some(base) => u16::try_from(usize::from(base) + number - 1).map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!(
                            "{} apps from base port {base} go past port 65535",
                            config.apps
                        ),
                    )
                })?,
            };
            let listener = bind(SocketAddr::new(config.bind_ip, port)).await?;
            let addr = listener.local_addr()?;
            let entry = accounts::catalog_entry(number);
            let app = SimulatedApp {
                endpoint: crate::tls::endpoint_for(addr, tls.is_some()),
                id: entry.id,
                name: entry.name,
                category: entry.category,
                customer_service: entry.customer_service,
            };
            by_id.insert(app.id.clone(), slots.len());
            slots.push(AppSlot {
                state: Arc::new(AppState::new(
                    app.id.clone(),
                    config.seed,
                    config.behaviour.clone(),
                )),
                app,
                addr,
                server: AsyncMutex::new(None),
            });
            listeners.push(listener);
        }
        for (slot, listener) in slots.iter().zip(listeners) {
            *slot.server.lock().await = Some(serve(slot, listener, tls.as_ref())?);
        }
        tracing::info!(
            apps = config.apps,
            tls = tls.is_some(),
            "simulated apps serving"
        );
        Ok(Simulator {
            inner: Arc::new(Inner {
                seed: config.seed,
                tls,
                slots,
                by_id,
            }),
        })
    }

    /// The apps, in id order.
    pub fn apps(&self) -> Vec<SimulatedApp> {
        self.inner.slots.iter().map(|s| s.app.clone()).collect()
    }

    /// The seed the accounts derive from.
    pub fn seed(&self) -> u64 {
        self.inner.seed
    }

    /// An account id `app_id` holds for `phone_number` (E.164, as the gateway sends it) that a
    /// test may unbind, e.g. with `check-adapter --unbind-account`: `FindAccounts` lists it, with
    /// `unbind_supported`, and nobody has asked to unbind it yet. The first such in the app's
    /// list; `None` when there is none (or no such app). Unbinds are remembered only while the
    /// simulator runs: started again, it holds every account again.
    pub fn test_account(&self, app_id: &str, phone_number: &str) -> Option<String> {
        self.slot(app_id)?
            .state
            .unbindable_accounts(phone_number)
            .into_iter()
            .next()
            .map(|a| a.account_id)
    }

    /// The address an app listens on (also while it is stopped).
    pub fn addr(&self, app_id: &str) -> Option<SocketAddr> {
        self.slot(app_id).map(|s| s.addr)
    }

    /// Changes how an app behaves, from its next call on. Unknown ids are ignored.
    pub fn set_behaviour(&self, app_id: &str, behaviour: Behaviour) {
        if let Some(slot) = self.slot(app_id) {
            slot.state.set_behaviour(behaviour);
        }
    }

    /// Makes every unbind an app accepted done now (its `GetUnbindStatus` answers `DONE`), so a
    /// test can hold an unbind in `ACCEPTED` as long as it needs and then end it. Unknown ids
    /// are ignored.
    pub fn finish_unbinds(&self, app_id: &str) {
        if let Some(slot) = self.slot(app_id) {
            slot.state.finish_unbinds();
        }
    }

    /// Changes how every app behaves, from its next call on.
    pub fn set_behaviour_all(&self, behaviour: &Behaviour) {
        for slot in &self.inner.slots {
            slot.state.set_behaviour(behaviour.clone());
        }
    }

    /// Stops serving an app: when this returns, its port refuses connections. In-flight calls end
    /// (stalled ones and ones waiting out their latency answer `UNAVAILABLE`). Stopping a stopped
    /// or unknown app does nothing.
    pub async fn stop_app(&self, app_id: &str) {
        if let Some(slot) = self.slot(app_id) {
            stop(slot).await;
        }
    }

    /// Serves an app again on its port. Starting a running app does nothing.
    pub async fn start_app(&self, app_id: &str) -> std::io::Result<()> {
        let slot = self.slot(app_id).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no simulated app {app_id}"),
            )
        })?;
        let mut server = slot.server.lock().await;
        if server.is_none() {
            let listener = bind(slot.addr).await?;
            *server = Some(serve(slot, listener, self.inner.tls.as_ref())?);
            tracing::info!(app_id, "simulated app started");
        }
        Ok(())
    }

    /// Whether an app is serving.
    pub async fn is_running(&self, app_id: &str) -> bool {
        match self.slot(app_id) {
            Some(slot) => slot.server.lock().await.is_some(),
            None => false,
        }
    }

    /// What an app was asked since the start (or the last [`Simulator::reset_stats`]). Empty for an
    /// unknown id.
    pub fn stats(&self, app_id: &str) -> AppStats {
        self.slot(app_id)
            .map(|s| s.state.stats())
            .unwrap_or_default()
    }

    /// `FindAccounts` calls over all apps.
    pub fn total_find_calls(&self) -> u64 {
        self.inner.slots.iter().map(|s| s.state.find_calls()).sum()
    }

    /// Zeroes every app's counters (unbinds already done stay done).
    pub fn reset_stats(&self) {
        for slot in &self.inner.slots {
            slot.state.reset_stats();
        }
    }

    /// Stops every app (all at once) and waits until they have stopped.
    pub async fn shutdown(self) {
        futures::future::join_all(self.inner.slots.iter().map(stop)).await;
        tracing::info!("simulated apps stopped");
    }

    fn slot(&self, app_id: &str) -> Option<&AppSlot> {
        self.inner
            .by_id
            .get(app_id)
            .and_then(|&i| self.inner.slots.get(i))
    }
}

/// The `[[apps]]` tables of a gateway configuration listing these apps (keys `id`, `name`,
/// `category`, `customer_service`, `endpoint`).
pub fn catalog_toml(apps: &[SimulatedApp]) -> Result<String, toml::ser::Error> {
    #[derive(Serialize)]
    struct Catalog<'a> {
        apps: &'a [SimulatedApp],
    }
    toml::to_string(&Catalog { apps })
}

/// Binds a listening socket. `SO_REUSEADDR` lets a stopped app take its port back at once, even
/// while connections it closed linger in `TIME_WAIT`.
async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Serves one app on `listener` (over TLS if `tls` is given) until told to stop.
fn serve(
    slot: &AppSlot,
    listener: TcpListener,
    tls: Option<&ServerTlsConfig>,
) -> std::io::Result<RunningServer> {
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls.clone())
            .map_err(|e| invalid_tls(&e))?;
    }
    let (shutdown, signal) = oneshot::channel::<()>();
    let service = AppAdapterServer::new(SimulatedAdapter::new(Arc::clone(&slot.state)));
    // Small gRPC frames on loopback would otherwise wait on Nagle's algorithm and delayed ACKs.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|stream| {
            let _ = stream.set_nodelay(true);
        })
    });
    let app_id = slot.app.id.clone();
    let router = builder.add_service(service);
    let task = tokio::spawn(async move {
        let result = router
            .serve_with_incoming_shutdown(incoming, async {
                // A dropped sender means the simulator is gone: stop as well.
                let _ = signal.await;
            })
            .await;
        if let Err(error) = result {
            tracing::warn!(app_id, %error, "simulated app server failed");
        }
    });
    Ok(RunningServer { shutdown, task })
}

/// A TLS configuration tonic refused (e.g. a certificate or key that does not parse).
fn invalid_tls(error: &tonic::transport::Error) -> std::io::Error {
    // The source says what is wrong; the transport error's own text only says "transport error".
    let detail = std::error::Error::source(error)
        .map(ToString::to_string)
        .unwrap_or_else(|| error.to_string());
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("simulated apps: invalid TLS configuration: {detail}"),
    )
}

/// Stops one app's server and waits until its listener is closed.
async fn stop(slot: &AppSlot) {
    let mut server = slot.server.lock().await;
    let Some(running) = server.take() else {
        return;
    };
    // The receiver is gone only if the task already ended; nothing to signal then.
    let _ = running.shutdown.send(());
    slot.state.interrupt_calls();
    let mut task = running.task;
    // tonic drops the listener as soon as it sees the signal, then drains connections. Bound the
    // drain: a client that never reads its answer must not hang the caller.
    if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
        task.abort();
        let _ = task.await;
    }
    // One line per app would be 200 at the demo's shutdown: the simulator says it once.
    tracing::debug!(app_id = %slot.app.id, "simulated app stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_is_a_list_of_apps_tables() {
        let apps = vec![SimulatedApp {
            id: "app-001".into(),
            name: "Sim Pay 1".into(),
            category: "payments".into(),
            customer_service: "+86 400-800-0001".into(),
            endpoint: "http://127.0.0.1:60000".into(),
        }];
        let text = catalog_toml(&apps).expect("the catalog serializes");
        assert!(text.contains("[[apps]]"), "{text}");
        assert!(text.contains("id = \"app-001\""), "{text}");
        assert!(
            text.contains("endpoint = \"http://127.0.0.1:60000\""),
            "{text}"
        );
        let back: toml::Value = toml::from_str(&text).expect("the catalog parses");
        assert_eq!(
            back["apps"][0]["customer_service"].as_str(),
            Some("+86 400-800-0001")
        );
    }
}
