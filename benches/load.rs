//! The load harness: the gateway as its own process (`unbind-gateway serve`), measured against the
//! physical limit with the same client in the same run.
//!
//! The client (this process) records every latency in an HDR histogram, checks every gRPC status
//! (an error is never a success; errors are counted by code), and reads the gateway process's CPU
//! time and peak RSS from `/proc`. The simulated apps are a third process
//! (`unbind-gateway simulate-apps`); the registry (used once, to verify) runs in this one.
//!
//! Scenarios, each next to its baseline, for N simulated apps (default 16, 200 and 1,000):
//! - `rpc`: raw RPC baseline, `grpc.health.v1.Health/Check` on the gateway process itself (one
//!   trivial tonic call through the same server stack): requests/s and gateway CPU per call;
//! - `cached`: cached look-ups, closed loop: requests/s, latency, gateway CPU per look-up vs `rpc`;
//! - `uncached`: uncached look-ups, open loop at `--calls-per-second` over N apps (default 2,000)
//!   with every app answering after 20 ms, next to the raw fan-out (the client calling every app's
//!   `FindAccounts` itself at the same rate); latency − 20 ms is the overhead;
//! - `saturation`: closed loop of uncached look-ups vs closed loop of raw fan-outs: app calls/s;
//! - `stragglers` (200 apps): 1% of app calls never answer, 300 ms deadline, open loop;
//! - `memory`: RSS of a look-up cache holding 1,000,000 (number, app) answers (in this process);
//! - `check`: the recycled-number check over HTTP (the CAMARA API, keep-alive connections, an
//!   ES256 access token verified on every request) next to `CheckNumberRecycled` over gRPC and
//!   the raw RPC, closed loops of 8: requests/s and gateway CPU per request;
//! - `mtls`: mutual TLS (the caller a carrier tenant identified by its certificate) next to plain
//!   text, two gateways alternated phase by phase: the raw RPC, cached look-ups, and new
//!   connections (TCP, handshake, one health check, closed) per second, with gateway CPU each;
//! - `push`: a carrier push of 1,000,000 numbers (1,000 messages of 1,000) to a gateway with 16
//!   apps, streamed by this process while it starts a verification every 250 ms: the time until
//!   the push is answered, the gateway's RSS before and at its peak, and how the verifications
//!   fared (answered, failed, slowest).
//!
//! `cargo bench --bench load` (options: `-- --runs 5 --apps 16,200,1000 --seconds 4 --quick
//! --only rpc,cached,uncached,saturation,stragglers,memory,check,mtls,push --calls-per-second 2000`).
//! `--quick` runs every scenario once, briefly, in under a minute.
//!
//! To measure another build of the gateway side by side (an A/B run), set `UNBIND_GATEWAY_BIN`
//! to its binary; `UNBIND_BENCH_DROP_KEYS` (comma-separated dotted keys, e.g.
//! `limits.handshake_timeout`) leaves out config keys that build does not know.

mod common;
#[path = "../tests/common/https.rs"]
mod https;

use std::{
    collections::BTreeMap,
    future::Future,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::{arg, arg_value, flag, median};
use futures::{FutureExt, future::BoxFuture};
use hdrhistogram::Histogram;
use tonic::{
    Request,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use unbind_gateway::{
    clock::Clock,
    config::{AdminConfig, AppConfig},
    domain::AppId,
    fanout::{LookupCache, accounts},
    proto::{
        FindAccountsRequest, ListLinkedAccountsRequest,
        account_gateway_client::AccountGatewayClient, app_adapter_client::AppAdapterClient,
    },
    security::Keys,
    testkit::simulated_apps::accounts_for,
    testkit::simulated_registry::{SimulatedRegistry, SimulatedRegistryOptions, write_subscribers},
    testkit::stack::{demo_config, demo_subscribers, numbered_subscribers, verified_session_over},
};

/// Distinct numbers the load rotates over.
const NUMBERS: usize = 64;

/// The numbers of the numbered subscribers, for the raw fan-out.
fn phones() -> Arc<Vec<String>> {
    Arc::new(
        numbered_subscribers(NUMBERS)
            .into_iter()
            .map(|s| s.phone_number.expose().to_owned())
            .collect(),
    )
}
/// The allocator the `unbind-gateway` binary uses, so the memory scenario measures what it would.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const APP_LATENCY: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------------------------
// Options

struct Options {
    runs: usize,
    apps: Vec<usize>,
    seconds: f64,
    quick: bool,
    only: Option<Vec<String>>,
    /// Offered app calls per second in the open-loop `uncached` scenario.
    calls_per_second: f64,
}

impl Options {
    fn parse() -> Self {
        let quick = flag("--quick");
        Self {
            runs: arg("--runs", if quick { 1 } else { 5 }),
            apps: arg_value("--apps")
                .map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect())
                .unwrap_or_else(|| vec![16, 200, 1000]),
            seconds: arg("--seconds", if quick { 0.7 } else { 4.0 }),
            quick,
            only: arg_value("--only").map(|v| v.split(',').map(str::to_owned).collect()),
            calls_per_second: arg("--calls-per-second", 2_000.0),
        }
    }

    fn wants(&self, scenario: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|s| s == scenario))
    }

    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }
}

// ---------------------------------------------------------------------------------------------
// Measuring

/// One measured phase: every latency, every outcome.
struct Recorder {
    latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    ok: u64,
    elapsed: Duration,
    cpu: Option<f64>,
}

impl Recorder {
    fn new() -> Self {
        Self {
            // 1 µs .. 60 s, 3 significant digits.
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            errors: BTreeMap::new(),
            ok: 0,
            elapsed: Duration::ZERO,
            cpu: None,
        }
    }

    fn record(&mut self, latency: Duration, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.ok += 1;
                let _ = self.latency.record(latency.as_micros().max(1) as u64);
            }
            Err(code) => *self.errors.entry(code).or_default() += 1,
        }
    }

    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    /// Gateway CPU seconds per successful request.
    fn cpu_per_request(&self) -> Option<f64> {
        self.cpu.map(|c| c / self.ok.max(1) as f64)
    }

    fn line(&self, label: &str) -> String {
        let errors = if self.errors.is_empty() {
            "0".to_owned()
        } else {
            format!("{:?}", self.errors)
        };
        let cpu = self
            .cpu_per_request()
            .map(|c| format!("  cpu/req={:.1} µs", c * 1e6))
            .unwrap_or_default();
        format!(
            "{label:<34} n={:<6} {:>9.1}/s  p50={:>7.2} p90={:>7.2} p99={:>7.2} p99.9={:>7.2} ms{cpu}  errors={errors}",
            self.ok,
            self.rate(),
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.ms(0.999),
        )
    }
}

type Call = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

fn code_name(status: &tonic::Status) -> String {
    format!("{:?}", status.code())
}

/// `concurrency` callers, each calling again as soon as its call ends, for `duration`.
async fn closed_loop(concurrency: usize, duration: Duration, call: Call) -> Recorder {
    let started = Instant::now();
    let end = started + duration;
    let workers = (0..concurrency).map(|_| {
        let call = Arc::clone(&call);
        tokio::spawn(async move {
            let mut r = Recorder::new();
            while Instant::now() < end {
                let t = Instant::now();
                let outcome = call().await;
                r.record(t.elapsed(), outcome);
            }
            r
        })
    });
    let mut total = Recorder::new();
    for w in futures::future::join_all(workers).await {
        let r = w.expect("a load worker");
        total.latency.add(&r.latency).expect("same bounds");
        total.ok += r.ok;
        for (k, v) in r.errors {
            *total.errors.entry(k).or_default() += v;
        }
    }
    total.elapsed = started.elapsed();
    total
}

/// A fixed rate of calls for `duration`, whatever the answers take; latency counts from each
/// call's scheduled start (no coordinated omission).
async fn open_loop(rate: f64, duration: Duration, call: Call) -> Recorder {
    let n = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let gap = Duration::from_secs_f64(1.0 / rate);
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let due = started + gap.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        let call = Arc::clone(&call);
        tasks.push(tokio::spawn(async move {
            let outcome = call().await;
            (due.elapsed(), outcome)
        }));
    }
    let mut r = Recorder::new();
    for t in tasks {
        let (latency, outcome) = t.await.expect("a call task");
        r.record(latency, outcome);
    }
    r.elapsed = started.elapsed();
    r
}

/// CPU seconds (user + system) of process `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat; here (after the state field) 11 and 12.
    (ticks(11) + ticks(12)) / 100.0
}

/// A `/proc/PID/status` value in kB (`VmHWM`: peak RSS; `VmRSS`: current).
fn status_kb(pid: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

async fn measured(pid: u32, phase: impl Future<Output = Recorder>) -> Recorder {
    let before = cpu_seconds(pid);
    let mut r = phase.await;
    r.cpu = Some(cpu_seconds(pid) - before);
    r
}

// ---------------------------------------------------------------------------------------------
// The world: simulated apps and registry here, the gateway as a child process

struct World {
    /// `unbind-gateway simulate-apps`, its own process.
    apps: Child,
    catalog: Vec<AppConfig>,
    registry: SimulatedRegistry,
    gateway: Child,
    endpoint: String,
    /// How callers reach the gateway when it serves mutual TLS: the CA and a tenant's identity.
    client_tls: Option<ClientTlsConfig>,
    sms_file: PathBuf,
    _dir: tempfile::TempDir,
}

/// The simulator's `[[apps]]` catalog, once it is fully written.
async fn read_catalog(path: &std::path::Path, apps: usize) -> anyhow::Result<Vec<AppConfig>> {
    #[derive(serde::Deserialize)]
    struct Catalog {
        apps: Vec<AppConfig>,
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(c) = toml::from_str::<Catalog>(&text)
            && c.apps.len() == apps
        {
            return Ok(c.apps);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the simulated apps did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The gateway binary under test: this build's, or `UNBIND_GATEWAY_BIN`'s.
fn gateway_bin() -> PathBuf {
    std::env::var_os("UNBIND_GATEWAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_unbind-gateway")))
}

/// The config file, without the keys `UNBIND_BENCH_DROP_KEYS` names (for an older binary).
fn config_text(config: &unbind_gateway::config::Config) -> anyhow::Result<String> {
    let mut value = toml::Value::try_from(config)?;
    for key in std::env::var("UNBIND_BENCH_DROP_KEYS")
        .unwrap_or_default()
        .split(',')
        .filter(|k| !k.is_empty())
    {
        let (table, last) = key.rsplit_once('.').unwrap_or(("", key));
        let mut at = &mut value;
        for part in table.split('.').filter(|p| !p.is_empty()) {
            at = at
                .get_mut(part)
                .ok_or_else(|| anyhow::anyhow!("no {part} in the config"))?;
        }
        if let Some(t) = at.as_table_mut() {
            t.remove(last);
        }
    }
    Ok(toml::to_string(&value)?)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl World {
    /// `apps` simulated apps answering after 20 ms, `stall_rate` of their calls never answered.
    async fn start(apps: usize, stall_rate: f64) -> anyhow::Result<Self> {
        Self::start_with(apps, stall_rate, None, |_, _| Ok(())).await
    }

    /// As [`World::start`], the gateway's config adjusted by `tweak` (given the world's
    /// directory); with `client_tls`, callers reach it over TLS with that (`tweak` must give
    /// the gateway its `[tls]`).
    async fn start_with(
        apps: usize,
        stall_rate: f64,
        client_tls: Option<ClientTlsConfig>,
        tweak: impl FnOnce(&mut unbind_gateway::config::Config, &std::path::Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let catalog_file = dir.path().join("apps.toml");
        let simulator = Command::new(env!("CARGO_BIN_EXE_unbind-gateway"))
            .arg("simulate-apps")
            .args(["--apps", &apps.to_string(), "--base-port", "0"])
            .args(["--latency", &format!("{}ms", APP_LATENCY.as_millis())])
            .args(["--stall-rate", &stall_rate.to_string()])
            .arg("--catalog-out")
            .arg(&catalog_file)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?;
        let catalog = read_catalog(&catalog_file, apps).await?;
        let subscribers: Vec<_> = demo_subscribers()
            .into_iter()
            .chain(numbered_subscribers(NUMBERS))
            .collect();
        write_subscribers(&dir.path().join("subscribers.toml"), &subscribers)?;
        let sms_file = dir.path().join("sms.jsonl");
        let registry = SimulatedRegistry::start(
            SimulatedRegistryOptions {
                subscribers,
                sms_file: sms_file.clone(),
                echo_sms: false,
            },
            tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        )
        .await?;
        let listen = format!("127.0.0.1:{}", free_port()).parse()?;
        let mut config = demo_config(listen, dir.path(), &registry.endpoint(), catalog.clone());
        config.verification.session_ttl = Duration::from_secs(3600);
        config.limits.max_in_flight = 100_000;
        config.admin = Some(AdminConfig {
            listen: format!("127.0.0.1:{}", free_port()).parse()?,
        });
        tweak(&mut config, dir.path())?;
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config_text(&config)?)?;
        let log = std::fs::File::create(dir.path().join("gateway.log"))?;
        let gateway = Command::new(gateway_bin())
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let world = Self {
            apps: simulator,
            catalog,
            registry,
            gateway,
            endpoint: format!(
                "{}://{listen}",
                if client_tls.is_some() {
                    "https"
                } else {
                    "http"
                }
            ),
            client_tls,
            sms_file,
            _dir: dir,
        };
        world.wait_until_serving().await?;
        Ok(world)
    }

    fn pid(&self) -> u32 {
        self.gateway.id()
    }

    async fn wait_until_serving(&self) -> anyhow::Result<()> {
        use tonic_health::pb::{
            HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(channel) = self.channel().await {
                let status = HealthClient::new(channel)
                    .check(HealthCheckRequest::default())
                    .await
                    .map(|r| r.into_inner().status);
                if status.is_ok_and(|s| s == ServingStatus::Serving as i32) {
                    return Ok(());
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "the gateway did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(self.endpoint()?.connect().await?)
    }

    /// The gateway's endpoint, with the TLS a caller needs.
    fn endpoint(&self) -> anyhow::Result<Endpoint> {
        let endpoint = Channel::from_shared(self.endpoint.clone())?;
        Ok(match &self.client_tls {
            Some(tls) => endpoint.tls_config(tls.clone())?,
            None => endpoint,
        })
    }

    /// Sessions for [`NUMBERS`] different numbers: look-ups rotate over them, so concurrent
    /// look-ups are not folded into one adapter call per app by the gateway's coalescing.
    async fn sessions(&self) -> anyhow::Result<Arc<Vec<String>>> {
        let mut tokens = Vec::with_capacity(NUMBERS);
        for s in numbered_subscribers(NUMBERS) {
            tokens.push(
                self.session(s.phone_number.expose(), s.id_last_six.expose())
                    .await?,
            );
        }
        Ok(Arc::new(tokens))
    }

    async fn session(&self, phone: &str, id_last_six: &str) -> anyhow::Result<String> {
        verified_session_over(self.channel().await?, &self.sms_file, phone, id_last_six).await
    }

    fn peak_rss_mb(&self) -> f64 {
        status_kb(&self.pid().to_string(), "VmHWM:") as f64 / 1024.0
    }

    async fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let _ = tokio::task::spawn_blocking(move || self.gateway.wait()).await;
        self.registry.shutdown().await;
        let _ = self.apps.kill();
        let _ = self.apps.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Calls

fn health_call(channel: Channel) -> Call {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    Arc::new(move || {
        let mut client = HealthClient::new(channel.clone());
        async move {
            client
                .check(HealthCheckRequest::default())
                .await
                .map(|_| ())
                .map_err(|s| code_name(&s))
        }
        .boxed()
    })
}

/// A new connection each call: TCP, the TLS handshake when `endpoint` has TLS, HTTP/2's
/// preface and one health check; the connection is closed when the call ends.
fn connect_call(endpoint: Endpoint) -> Call {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    Arc::new(move || {
        let endpoint = endpoint.clone();
        async move {
            let channel = endpoint
                .connect()
                .await
                .map_err(|_| "ConnectFailed".to_owned())?;
            HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
                .map(|_| ())
                .map_err(|s| code_name(&s))
        }
        .boxed()
    })
}

/// `CheckNumberRecycled` over gRPC, rotating over the numbers.
fn grpc_check_call(channel: Channel) -> Call {
    use unbind_gateway::proto::{
        CheckNumberRecycledRequest, number_status_client::NumberStatusClient,
    };
    let phones = phones();
    let next = Arc::new(AtomicUsize::new(0));
    Arc::new(move || {
        let mut client = NumberStatusClient::new(channel.clone());
        let phone = phones[next.fetch_add(1, Ordering::Relaxed) % phones.len()].clone();
        async move {
            client
                .check_number_recycled(CheckNumberRecycledRequest {
                    phone_number: phone,
                    specified_date: Some(prost_types::Timestamp {
                        seconds: CHECK_SINCE,
                        nanos: 0,
                    }),
                })
                .await
                .map(|_| ())
                .map_err(|s| code_name(&s))
        }
        .boxed()
    })
}

/// 2024-06-01T00:00:00+08:00, the day both surfaces ask about.
const CHECK_SINCE: i64 = 1_717_171_200;

type HttpSender = hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>>;

/// `POST /number-recycling/v0.3/check` with a bearer token, on keep-alive connections (one per
/// caller at a time, from a pool), rotating over the numbers; `Err` unless 200.
fn http_check_call(addr: std::net::SocketAddr, token: Arc<String>) -> Call {
    use http_body_util::BodyExt;
    let pool: Arc<std::sync::Mutex<Vec<HttpSender>>> = Arc::default();
    let phones = phones();
    let next = Arc::new(AtomicUsize::new(0));
    Arc::new(move || {
        let pool = Arc::clone(&pool);
        let token = Arc::clone(&token);
        let phone = phones[next.fetch_add(1, Ordering::Relaxed) % phones.len()].clone();
        async move {
            let pooled = pool.lock().unwrap().pop();
            let mut sender = match pooled {
                Some(sender) => sender,
                None => {
                    let tcp = tokio::net::TcpStream::connect(addr)
                        .await
                        .map_err(|e| e.to_string())?;
                    let _ = tcp.set_nodelay(true);
                    let (sender, connection) =
                        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                            .await
                            .map_err(|e| e.to_string())?;
                    tokio::spawn(connection);
                    sender
                }
            };
            sender.ready().await.map_err(|e| e.to_string())?;
            let body = format!(r#"{{"phoneNumber":"{phone}","specifiedDate":"2024-06-01"}}"#);
            let request = http::Request::post("/number-recycling/v0.3/check")
                .header("host", "localhost")
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {token}"))
                .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
                .map_err(|e| e.to_string())?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            pool.lock().unwrap().push(sender);
            if status == 200 && body.starts_with(b"{\"phoneNumberRecycled\"") {
                Ok(())
            } else {
                Err(format!("HTTP {}", status.as_u16()))
            }
        }
        .boxed()
    })
}

/// A look-up; `Err` unless the gateway answered and (if `complete`) every app answered.
fn lookup_call(
    channel: Channel,
    tokens: Arc<Vec<String>>,
    bypass_cache: bool,
    deadline: Duration,
    must_be_complete: bool,
) -> Call {
    let next = AtomicUsize::new(0);
    Arc::new(move || {
        let mut client = AccountGatewayClient::new(channel.clone());
        let token = tokens[next.fetch_add(1, Ordering::Relaxed) % tokens.len()].clone();
        async move {
            let mut request = Request::new(ListLinkedAccountsRequest {
                session_token: token,
                bypass_cache,
                ..Default::default()
            });
            request.set_timeout(deadline);
            let answer = client
                .list_linked_accounts(request)
                .await
                .map_err(|s| code_name(&s))?
                .into_inner();
            if must_be_complete && !answer.complete {
                return Err("incomplete".to_owned());
            }
            Ok(())
        }
        .boxed()
    })
}

/// The baseline fan-out: this client calling every app's `FindAccounts` itself, concurrently,
/// each call bounded by `deadline`; `Err` if any call failed (when `must_all_answer`).
fn fanout_call(
    clients: Arc<Vec<AppAdapterClient<Channel>>>,
    phones: Arc<Vec<String>>,
    deadline: Duration,
    must_all_answer: bool,
) -> Call {
    let next = AtomicUsize::new(0);
    Arc::new(move || {
        let clients = Arc::clone(&clients);
        let phone = phones[next.fetch_add(1, Ordering::Relaxed) % phones.len()].clone();
        async move {
            // Each call a task of its own, as the gateway runs them, so both cores serve them.
            let calls = clients.iter().map(|c| {
                let mut c = c.clone();
                let phone = phone.clone();
                tokio::spawn(async move {
                    let mut request = Request::new(FindAccountsRequest {
                        request_id: "bench".into(),
                        phone_number: phone,
                    });
                    request.set_timeout(deadline);
                    tokio::time::timeout(deadline, c.find_accounts(request)).await
                })
            });
            let answers = futures::future::join_all(calls).await;
            if must_all_answer {
                for a in answers {
                    match a {
                        Ok(Ok(Ok(_))) => {}
                        Ok(Ok(Err(s))) => return Err(code_name(&s)),
                        Ok(Err(_)) => return Err("DeadlineExceeded".to_owned()),
                        Err(_) => return Err("TaskFailed".to_owned()),
                    }
                }
            }
            Ok(())
        }
        .boxed()
    })
}

async fn app_clients(catalog: &[AppConfig]) -> anyhow::Result<Arc<Vec<AppAdapterClient<Channel>>>> {
    let mut clients = Vec::new();
    for app in catalog {
        clients.push(AppAdapterClient::new(
            Channel::from_shared(app.endpoint.clone())?
                .connect()
                .await?,
        ));
    }
    Ok(Arc::new(clients))
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// Results per scenario row: label → per-run values.
#[derive(Default)]
struct Table {
    rows: BTreeMap<String, Vec<f64>>,
}

impl Table {
    fn add(&mut self, key: impl Into<String>, value: f64) {
        self.rows.entry(key.into()).or_default().push(value);
    }
}

async fn scenarios_for(apps: usize, o: &Options, table: &mut Table) -> anyhow::Result<()> {
    let world = World::start(apps, 0.0).await?;
    let token = world.sessions().await?;
    let channel = world.channel().await?;
    let clients = app_clients(&world.catalog).await?;
    let pid = world.pid();
    let d = o.duration();
    let deadline = Duration::from_secs(5);
    // `--calls-per-second` app calls/s, at most 200 look-ups/s.
    let rate = (o.calls_per_second / apps as f64).min(200.0);
    // Warm-up: connections to every app from both the gateway and this client, and every
    // number's answers in the cache.
    let warm = lookup_call(channel.clone(), Arc::clone(&token), false, deadline, true);
    for _ in 0..NUMBERS {
        warm().await.ok();
    }
    open_loop(
        rate,
        Duration::from_millis(500),
        fanout_call(Arc::clone(&clients), phones(), deadline, true),
    )
    .await;
    println!("--- {apps} apps ---");
    for run in 1..=o.runs {
        if o.wants("rpc") || o.wants("cached") {
            let rpc = measured(pid, closed_loop(8, d, health_call(channel.clone()))).await;
            println!("run {run} {}", rpc.line("raw RPC (health check)"));
            let cached = measured(
                pid,
                closed_loop(
                    8,
                    d,
                    lookup_call(channel.clone(), Arc::clone(&token), false, deadline, true),
                ),
            )
            .await;
            println!("run {run} {}", cached.line("cached look-up"));
            let ratio =
                cached.cpu_per_request().unwrap_or(0.0) / rpc.cpu_per_request().unwrap_or(f64::NAN);
            println!("run {run}   cached look-up CPU / raw RPC CPU = {ratio:.1}");
            table.add(format!("{apps:>4} apps rpc/s"), rpc.rate());
            table.add(
                format!("{apps:>4} apps rpc cpu µs"),
                rpc.cpu_per_request().unwrap_or(0.0) * 1e6,
            );
            table.add(format!("{apps:>4} apps cached/s"), cached.rate());
            table.add(format!("{apps:>4} apps cached p50 ms"), cached.ms(0.5));
            table.add(format!("{apps:>4} apps cached p99 ms"), cached.ms(0.99));
            table.add(
                format!("{apps:>4} apps cached cpu µs"),
                cached.cpu_per_request().unwrap_or(0.0) * 1e6,
            );
            table.add(format!("{apps:>4} apps cached cpu ratio"), ratio);
        }
        if o.wants("uncached") {
            let raw = open_loop(
                rate,
                d,
                fanout_call(Arc::clone(&clients), phones(), deadline, true),
            )
            .await;
            println!(
                "run {run} {}",
                raw.line(&format!("raw fan-out @{rate:.0}/s"))
            );
            let gw = measured(
                pid,
                open_loop(
                    rate,
                    d,
                    lookup_call(channel.clone(), Arc::clone(&token), true, deadline, true),
                ),
            )
            .await;
            println!(
                "run {run} {}",
                gw.line(&format!("uncached look-up @{rate:.0}/s"))
            );
            table.add(format!("{apps:>4} apps uncached p50 ms"), gw.ms(0.5));
            table.add(format!("{apps:>4} apps uncached p99 ms"), gw.ms(0.99));
            table.add(format!("{apps:>4} apps raw fan-out p50 ms"), raw.ms(0.5));
            table.add(format!("{apps:>4} apps raw fan-out p99 ms"), raw.ms(0.99));
            table.add(
                format!("{apps:>4} apps uncached cpu µs"),
                gw.cpu_per_request().unwrap_or(0.0) * 1e6,
            );
        }
        if o.wants("saturation") {
            let concurrency = (4_000 / apps).clamp(2, 64);
            let raw = closed_loop(
                concurrency,
                d,
                fanout_call(Arc::clone(&clients), phones(), deadline, true),
            )
            .await;
            println!(
                "run {run} {}  = {:.0} app calls/s",
                raw.line(&format!("raw fan-out x{concurrency}")),
                raw.rate() * apps as f64
            );
            let gw = measured(
                pid,
                closed_loop(
                    concurrency,
                    d,
                    lookup_call(channel.clone(), Arc::clone(&token), true, deadline, true),
                ),
            )
            .await;
            println!(
                "run {run} {}  = {:.0} app calls/s",
                gw.line(&format!("uncached look-up x{concurrency}")),
                gw.rate() * apps as f64
            );
            table.add(
                format!("{apps:>4} apps saturation gateway calls/s"),
                gw.rate() * apps as f64,
            );
            table.add(
                format!("{apps:>4} apps saturation raw calls/s"),
                raw.rate() * apps as f64,
            );
            table.add(
                format!("{apps:>4} apps saturation ratio"),
                gw.rate() / raw.rate(),
            );
        }
    }
    println!(
        "gateway peak RSS with {apps} apps: {:.0} MB",
        world.peak_rss_mb()
    );
    table.add(
        format!("{apps:>4} apps gateway peak RSS MB"),
        world.peak_rss_mb(),
    );
    world.stop().await;
    Ok(())
}

async fn stragglers(o: &Options, table: &mut Table) -> anyhow::Result<()> {
    let apps = 200;
    // 1% of calls never answer (a 1 s straggler is the same thing to a 300 ms deadline).
    let world = World::start(apps, 0.01).await?;
    let token = world.sessions().await?;
    let channel = world.channel().await?;
    let clients = app_clients(&world.catalog).await?;
    let deadline = Duration::from_millis(300);
    let rate = 20.0;
    println!("--- stragglers: {apps} apps, 1% of calls stall, deadline 300 ms, {rate}/s ---");
    for run in 1..=o.runs {
        let raw = open_loop(
            rate,
            o.duration(),
            fanout_call(Arc::clone(&clients), phones(), deadline, false),
        )
        .await;
        println!(
            "run {run} {}",
            raw.line("raw fan-out (waits for the deadline)")
        );
        let gw = open_loop(
            rate,
            o.duration(),
            lookup_call(channel.clone(), Arc::clone(&token), true, deadline, false),
        )
        .await;
        println!("run {run} {}", gw.line("uncached look-up"));
        table.add("stragglers look-up p50 ms", gw.ms(0.5));
        table.add("stragglers look-up p99 ms", gw.ms(0.99));
        table.add("stragglers raw fan-out p50 ms", raw.ms(0.5));
        table.add("stragglers raw fan-out p99 ms", raw.ms(0.99));
    }
    world.stop().await;
    Ok(())
}

/// RSS of this process before and after filling a look-up cache with `entries` answers, each
/// what a simulated app holds for a number (most hold nothing; some one or two accounts).
fn memory(entries: usize, table: &mut Table) {
    let numbers = entries.div_ceil(200);
    let keys = Keys::derive(b"a benchmark secret of at least thirty-two bytes");
    let cache = LookupCache::new(Duration::from_secs(3600), entries as u64, Clock::system());
    let before = status_kb("self", "VmRSS:");
    let started = Instant::now();
    // One id per app, shared by all its entries, as the gateway's catalog entries do.
    let app_ids: Vec<(String, AppId)> = (1..=200)
        .map(|i| {
            let id = format!("app-{i:03}");
            let parsed = AppId::parse(&id).expect("an app id");
            (id, parsed)
        })
        .collect();
    let mut inserted = 0;
    'fill: for n in 0..numbers {
        let phone = format!("+86139{n:08}");
        let e164 = unbind_gateway::domain::E164::parse(&phone).expect("a valid number");
        let short = keys.number_hash(&e164).short();
        for (id, app) in &app_ids {
            let found = accounts_for(42, id, &phone);
            cache.insert((short, app.clone()), accounts(found));
            inserted += 1;
            if inserted == entries {
                break 'fill;
            }
        }
    }
    let held = cache.len();
    let after = status_kb("self", "VmRSS:");
    let mb = (after.saturating_sub(before)) as f64 / 1024.0;
    println!(
        "--- memory: {held} cache entries, RSS +{mb:.0} MB ({:.0} bytes/entry), filled in {:.1} s ---",
        (after.saturating_sub(before) * 1024) as f64 / held.max(1) as f64,
        started.elapsed().as_secs_f64()
    );
    table.add(
        "memory MB for 1M entries",
        mb * 1_000_000.0 / held.max(1) as f64,
    );
}

/// A carrier push of `numbers` numbers, with verifications started meanwhile.
async fn push(numbers: usize, o: &Options, table: &mut Table) -> anyhow::Result<()> {
    use unbind_gateway::proto::{
        RecycledNumber, StartVerificationRequest, SubmitRecycledNumbersRequest,
        carrier_push_client::CarrierPushClient,
    };
    const PER_MESSAGE: usize = 1_000;
    let millions = numbers as f64 / 1e6;
    for run in 0..o.runs {
        let world = World::start(16, 0.0).await?;
        let pid = world.pid().to_string();
        let channel = world.channel().await?;
        let rss_before = status_kb(&pid, "VmRSS:") as f64 / 1024.0;
        let date = |days: i64| {
            Some(unbind_gateway::clock::timestamp_from_ms(
                1_740_787_200_000 + days * 86_400_000,
            ))
        };
        // Built as the stream is read, so this process does not hold the push either.
        let messages = futures::stream::iter((0..numbers.div_ceil(PER_MESSAGE)).map(move |m| {
            SubmitRecycledNumbersRequest {
                numbers: (m * PER_MESSAGE..((m + 1) * PER_MESSAGE).min(numbers))
                    .map(|i| RecycledNumber {
                        phone_number: format!("+86135{i:08}"),
                        cancelled_at: date(0),
                        reissued_at: date(30),
                    })
                    .collect(),
                submission_key: if m == 0 {
                    format!("bench-{run}")
                } else {
                    String::new()
                },
            }
        }));
        let pushing = {
            let mut client = CarrierPushClient::new(channel.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let answer = client.submit_recycled_numbers(messages).await;
                (answer.map(|a| a.into_inner().accepted), started.elapsed())
            })
        };
        // One verification start every 250 ms while the push streams in.
        let mut gateway = AccountGatewayClient::new(channel.clone());
        let (mut answered, mut failed, mut slowest) = (0u32, 0u32, Duration::ZERO);
        let subscribers = numbered_subscribers(NUMBERS);
        let mut i = 0;
        while !pushing.is_finished() {
            let s = &subscribers[i % NUMBERS];
            i += 1;
            let started = Instant::now();
            let result = gateway
                .start_verification(StartVerificationRequest {
                    phone_number: s.phone_number.expose().to_owned(),
                    id_last_six: s.id_last_six.expose().to_owned(),
                })
                .await;
            slowest = slowest.max(started.elapsed());
            match result {
                Ok(_) => answered += 1,
                Err(status) => {
                    failed += 1;
                    println!(
                        "run {run} verification during the push: {:?}",
                        status.code()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let (accepted, took) = pushing.await?;
        let accepted = accepted?;
        anyhow::ensure!(
            accepted as usize == numbers,
            "{accepted} of {numbers} accepted"
        );
        let peak = world.peak_rss_mb();
        println!(
            "run {run} push of {numbers} numbers answered in {:.1} s; gateway RSS {rss_before:.0} MB before, peak {peak:.0} MB (+{:.0}); verifications during it: {answered} answered, {failed} failed, slowest {} ms",
            took.as_secs_f64(),
            peak - rss_before,
            slowest.as_millis()
        );
        table.add(
            format!("push {millions}M: answered in s"),
            took.as_secs_f64(),
        );
        table.add(format!("push {millions}M: gateway peak RSS MB"), peak);
        table.add(
            format!("push {millions}M: RSS growth MB"),
            peak - rss_before,
        );
        table.add(
            format!("push {millions}M: verifications failed"),
            f64::from(failed),
        );
        table.add(
            format!("push {millions}M: slowest verification ms"),
            slowest.as_millis() as f64,
        );
        world.stop().await;
    }
    Ok(())
}

/// Mutual TLS, as carriers and portals reach the gateway in production, next to plain text in
/// the same run: two gateways with `apps` apps each, one serving TLS with client certificates
/// (the caller a carrier tenant, identified by its certificate), alternated phase by phase: the
/// raw RPC, cached look-ups (each answer ~40 KB for 200 apps, encrypted), and new connections
/// (TCP, handshake, one health check, closed).
async fn mtls(apps: usize, o: &Options, table: &mut Table) -> anyhow::Result<()> {
    use unbind_gateway::config::{Role, TenantConfig, TlsConfig};
    let pki_dir = tempfile::tempdir()?;
    let tenant = "bench-carrier";
    let pki = unbind_gateway::pki::generate(
        pki_dir.path(),
        &[(tenant.to_owned(), Role::Carrier)],
        &[],
        30,
        false,
    )?;
    let files = &pki.tenants[0].files;
    let client_tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&pki.ca.cert)?))
        .identity(Identity::from_pem(
            std::fs::read(&files.cert)?,
            std::fs::read(&files.key)?,
        ))
        .domain_name("localhost");
    let plain = World::start(apps, 0.0).await?;
    let tls = World::start_with(apps, 0.0, Some(client_tls), |config, _| {
        config.tls = Some(TlsConfig {
            cert: pki.gateway.cert.clone(),
            key: pki.gateway.key.clone(),
            client_ca: Some(pki.ca.cert.clone()),
        });
        // Its rate limit far above the load.
        config.tenants.push(TenantConfig {
            name: tenant.into(),
            role: Role::Carrier,
            requests_per_second: 1e6,
            burst: 1_000_000,
            max_code_failures_per_hour: None,
            wrong_codes_alert_per_hour: 1000,
            per_visitor: None,
        });
        Ok(())
    })
    .await?;
    let d = o.duration();
    let deadline = Duration::from_secs(5);
    let mut sides = Vec::new();
    for (name, world) in [("plain", &plain), ("mTLS", &tls)] {
        let token = world.sessions().await?;
        let channel = world.channel().await?;
        // Warm-up: every number's answers in the cache.
        let warm = lookup_call(channel.clone(), Arc::clone(&token), false, deadline, true);
        for _ in 0..NUMBERS {
            warm()
                .await
                .map_err(|e| anyhow::anyhow!("{name} warm-up: {e}"))?;
        }
        sides.push((name, world, token, channel));
    }
    println!("--- mutual TLS next to plain text, {apps} apps ---");
    for run in 1..=o.runs {
        for (name, world, token, channel) in &sides {
            let pid = world.pid();
            let cpu = |r: &Recorder| r.cpu_per_request().unwrap_or(0.0) * 1e6;
            let rpc = measured(pid, closed_loop(8, d, health_call(channel.clone()))).await;
            println!("run {run} {}", rpc.line(&format!("{name}: raw RPC")));
            let cached = measured(
                pid,
                closed_loop(
                    8,
                    d,
                    lookup_call(channel.clone(), Arc::clone(token), false, deadline, true),
                ),
            )
            .await;
            println!(
                "run {run} {}",
                cached.line(&format!("{name}: cached look-up"))
            );
            let connect = measured(pid, closed_loop(8, d, connect_call(world.endpoint()?))).await;
            println!(
                "run {run} {}",
                connect.line(&format!("{name}: new connection"))
            );
            table.add(format!("{apps:>4} apps {name} rpc cpu µs"), cpu(&rpc));
            table.add(format!("{apps:>4} apps {name} cached cpu µs"), cpu(&cached));
            table.add(format!("{apps:>4} apps {name} cached/s"), cached.rate());
            table.add(
                format!("{apps:>4} apps {name} cached p50 ms"),
                cached.ms(0.5),
            );
            table.add(
                format!("{apps:>4} apps {name} cached cpu / rpc cpu"),
                cpu(&cached) / cpu(&rpc),
            );
            table.add(
                format!("{apps:>4} apps {name} connections/s"),
                connect.rate(),
            );
            table.add(
                format!("{apps:>4} apps {name} connection cpu µs"),
                cpu(&connect),
            );
        }
    }
    plain.stop().await;
    tls.stop().await;
    Ok(())
}

/// The recycled-number check over HTTP and gRPC, and the raw RPC, alternated in each run.
async fn check(o: &Options, table: &mut Table) -> anyhow::Result<()> {
    let issuer = https::Issuer::new("bench");
    let http_port = free_port();
    let jwks = https::Issuer::jwks(&[&issuer]);
    let world = World::start_with(16, 0.0, None, |config, dir| {
        let jwks_file = dir.join("jwks.json");
        std::fs::write(&jwks_file, &jwks)?;
        // The token's client: a tenant of role `app`, its rate limit far above the load (gRPC
        // callers, without certificates in development, are the development tenant, unlimited).
        config.tenants.push(unbind_gateway::config::TenantConfig {
            name: "bench".into(),
            role: unbind_gateway::config::Role::App,
            requests_per_second: 1e6,
            burst: 1_000_000,
            max_code_failures_per_hour: None,
            wrong_codes_alert_per_hour: 1000,
            per_visitor: None,
        });
        config.number_status.history_starts = Some("2024-01-01".into());
        config.number_status.time_zone = Some("Asia/Shanghai".into());
        config.http = Some(unbind_gateway::config::HttpConfig {
            listen: format!("127.0.0.1:{http_port}").parse()?,
            max_connections: unbind_gateway::config::DEFAULT_MAX_CONNECTIONS,
            auth: Some(unbind_gateway::config::HttpAuthConfig {
                jwks_file,
                issuer: "https://auth.bench".into(),
                audience: "unbind-gateway".into(),
                leeway: Duration::from_secs(30),
            }),
        });
        Ok(())
    })
    .await?;
    let token = Arc::new(issuer.sign(&serde_json::json!({
        "iss": "https://auth.bench", "aud": "unbind-gateway", "client_id": "bench",
        "scope": "number-recycling:check", "exp": https::now_secs() + 3600,
    })));
    let channel = world.channel().await?;
    let pid = world.pid();
    let d = o.duration();
    let http_addr: std::net::SocketAddr = format!("127.0.0.1:{http_port}").parse()?;
    // The token is verified on every request (ES256), as an authorization server's would be.
    let http = http_check_call(http_addr, Arc::clone(&token));
    // Warm-up: connections, and the answer of one request each way.
    for _ in 0..8 {
        http()
            .await
            .map_err(|e| anyhow::anyhow!("the HTTP check: {e}"))?;
    }
    grpc_check_call(channel.clone())()
        .await
        .map_err(|e| anyhow::anyhow!("gRPC check: {e}"))?;
    println!("--- recycled-number check ---");
    for run in 1..=o.runs {
        let rpc = measured(pid, closed_loop(8, d, health_call(channel.clone()))).await;
        println!("run {run} {}", rpc.line("raw RPC (health check)"));
        let grpc = measured(pid, closed_loop(8, d, grpc_check_call(channel.clone()))).await;
        println!("run {run} {}", grpc.line("CheckNumberRecycled (gRPC)"));
        let web = measured(pid, closed_loop(8, d, Arc::clone(&http))).await;
        println!("run {run} {}", web.line("POST .../check (HTTP, JWT)"));
        let cpu = |r: &Recorder| r.cpu_per_request().unwrap_or(0.0) * 1e6;
        table.add("check grpc/s", grpc.rate());
        table.add("check http/s", web.rate());
        table.add("check rpc/s", rpc.rate());
        table.add("check grpc cpu µs", cpu(&grpc));
        table.add("check http cpu µs", cpu(&web));
        table.add("check rpc cpu µs", cpu(&rpc));
        table.add("check http/grpc cpu ratio", cpu(&web) / cpu(&grpc));
        table.add("check grpc p50 ms", grpc.ms(0.5));
        table.add("check http p50 ms", web.ms(0.5));
    }
    world.stop().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = Options::parse();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    println!(
        "machine: {} cores, {cpu}; runs {}, {} s per phase{}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        o.runs,
        o.seconds,
        if o.quick { " (quick)" } else { "" }
    );
    let started = Instant::now();
    let mut table = Table::default();
    let apps: Vec<usize> = if o.quick {
        vec![16, 200]
    } else {
        o.apps.clone()
    };
    if ["rpc", "cached", "uncached", "saturation"]
        .iter()
        .any(|s| o.wants(s))
    {
        for &n in &apps {
            scenarios_for(n, &o, &mut table).await?;
        }
    }
    if o.wants("stragglers") {
        stragglers(&o, &mut table).await?;
    }
    if o.wants("memory") {
        memory(if o.quick { 100_000 } else { 1_000_000 }, &mut table);
    }
    if o.wants("check") {
        check(&o, &mut table).await?;
    }
    if o.wants("mtls") {
        for &n in &apps {
            mtls(n, &o, &mut table).await?;
        }
    }
    if o.wants("push") {
        push(if o.quick { 100_000 } else { 1_000_000 }, &o, &mut table).await?;
    }
    println!(
        "=== medians over {} run(s), {:.0} s in all ===",
        o.runs,
        started.elapsed().as_secs_f64()
    );
    for (key, values) in &table.rows {
        println!(
            "{key:<44} {:>12.2}   runs: {values:.2?}",
            median(values.clone())
        );
    }
    Ok(())
}
