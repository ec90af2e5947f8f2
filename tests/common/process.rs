//! The gateway as a real child process (`unbind-gateway serve`), for the tests that kill it or
//! signal it: a [`World`] that outlives every process (simulated apps, the simulated registry with
//! its SMS file, the store, a directory for config files and logs) and the [`GatewayProcess`]es
//! started in it, one after another, on the same store.
//!
//! Included with `#[path]` by the tests that need it, not from `common`, which every test binary
//! compiles.

#![allow(dead_code)]

use std::{
    fs::File,
    net::SocketAddr,
    os::unix::process::ExitStatusExt,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use unbind_gateway::{
    config::{AppDefaults, Config},
    proto::{
        GetUnbindTicketsRequest, ListAppsRequest, ListLinkedAccountsRequest,
        ListLinkedAccountsResponse, UnbindTicket, account_gateway_client::AccountGatewayClient,
    },
    testkit::simulated_apps::{Behaviour, Simulator, SimulatorConfig},
    testkit::simulated_registry::{SimulatedRegistry, SimulatedRegistryOptions, Subscriber},
    testkit::stack::{demo_config, verified_session_at},
};

/// How often the tests look while they wait for a condition.
pub const POLL: Duration = Duration::from_millis(20);
/// Longest a gateway may take to answer after it was spawned.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// What a [`World`] runs, and what its gateways are told.
pub struct WorldOptions {
    pub apps: usize,
    /// Every app's behaviour at the start.
    pub behaviour: Behaviour,
    /// The registry's subscribers.
    pub subscribers: Vec<Subscriber>,
    /// `None`: a SQLite file in the world's directory.
    pub store_url: Option<String>,
    /// The same for every process: tickets seal the number and account id with it, and the
    /// holders' sessions are signed with it.
    pub secret: &'static str,
    /// Adjusts every process's config (written after the gateway's own defaults).
    pub tweak: fn(&mut Config),
}

/// What outlives every gateway process: the simulated apps, the registry with its SMS file, the
/// store, and the directory holding the config files and each process's log.
pub struct World {
    pub simulator: Simulator,
    pub registry: SimulatedRegistry,
    pub subscribers: Vec<Subscriber>,
    pub sms_file: PathBuf,
    pub store_url: String,
    secret: &'static str,
    /// Applied to the config of every process started from now on.
    pub tweak: fn(&mut Config),
    starts: usize,
    // Last, so it is removed after everything that writes into it.
    dir: tempfile::TempDir,
}

impl World {
    pub async fn start(options: WorldOptions) -> World {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let simulator = Simulator::start(SimulatorConfig {
            apps: options.apps,
            behaviour: options.behaviour,
            ..SimulatorConfig::default()
        })
        .await
        .expect("the simulated apps start");
        let sms_file = dir.path().join("sms.jsonl");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for the registry");
        let registry = SimulatedRegistry::start(
            SimulatedRegistryOptions {
                subscribers: options.subscribers.clone(),
                sms_file: sms_file.clone(),
                echo_sms: false,
            },
            listener,
        )
        .await
        .expect("the registry starts");
        let store_url = options
            .store_url
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("unbind.db").display()));
        World {
            simulator,
            registry,
            subscribers: options.subscribers,
            sms_file,
            store_url,
            secret: options.secret,
            tweak: options.tweak,
            starts: 0,
            dir,
        }
    }

    /// Starts a gateway process on the world's store and waits until it answers.
    pub async fn start_gateway(&mut self) -> GatewayProcess {
        self.spawn_gateway(true).await
    }

    /// [`World::start_gateway`] with the process's stdout and stderr closed before it writes
    /// anything (a log collector gone): its log file stays empty.
    pub async fn start_gateway_unheard(&mut self) -> GatewayProcess {
        self.spawn_gateway(false).await
    }

    async fn spawn_gateway(&mut self, heard: bool) -> GatewayProcess {
        self.starts += 1;
        // A port nobody holds right now; each process gets its own, so a dead process's sockets
        // never stand in the way of the next.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = self
            .dir
            .path()
            .join(format!("gateway-{}.toml", self.starts));
        let text = toml::to_string(&self.config(addr)).expect("the config serializes");
        std::fs::write(&config, text).expect("the config file");
        let log = self.dir.path().join(format!("gateway-{}.log", self.starts));
        let mut child = Command::new(env!("CARGO_BIN_EXE_unbind-gateway"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            // Keep the test run's DATABASE_URL out of the child: its store is in the config.
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "info,unbind_gateway::unbind=debug")
            // Plain text: the log is searched, and printed when a test fails.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(if heard { Stdio::null() } else { Stdio::piped() })
            .stderr(if heard {
                Stdio::from(File::create(&log).expect("the log file"))
            } else {
                File::create(&log).expect("the log file");
                Stdio::piped()
            })
            .spawn()
            .expect("the gateway process starts");
        // Closed before the process has got as far as writing.
        drop((child.stdout.take(), child.stderr.take()));
        let mut process = GatewayProcess {
            child,
            addr,
            log,
            config,
            client: None,
        };
        process.wait_until_ready(self.simulator.apps().len()).await;
        process
    }

    /// The config of every process: only the address differs. The gateway's defaults except
    /// where the test's `tweak` says otherwise.
    fn config(&self, listen: SocketAddr) -> Config {
        let apps = self
            .simulator
            .apps()
            .iter()
            .map(|app| app.catalog_entry(None))
            .collect();
        let mut config = demo_config(listen, self.dir.path(), &self.registry.endpoint(), apps);
        config.signing_secret = Some(self.secret.to_owned());
        config.store.url = self.store_url.clone();
        // A config file's default app settings, not the demo's shorter timeout.
        config.app_defaults = AppDefaults::default();
        (self.tweak)(&mut config);
        config
    }

    /// Verifies `subscriber` through `gateway`, the code read from the registry's SMS file; the
    /// session token.
    pub async fn verified_session(
        &self,
        gateway: &GatewayProcess,
        subscriber: &Subscriber,
    ) -> String {
        verified_session_at(
            &gateway.url(),
            &self.sms_file,
            subscriber.phone_number.expose(),
            subscriber.id_last_six.expose(),
        )
        .await
        .expect("a verified session")
    }

    pub async fn stop(self) {
        self.registry.shutdown().await;
        self.simulator.shutdown().await;
    }
}

/// A gateway child process. Dropping it kills it (so no test, passing or failing, leaves one
/// behind); if the test is failing, its log is printed.
pub struct GatewayProcess {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    /// The config file it was started with (and reads again on SIGHUP).
    pub config: PathBuf,
    client: Option<AccountGatewayClient<Channel>>,
}

impl GatewayProcess {
    /// The `http://` address of its API.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::from_shared(self.url())
            .expect("an endpoint")
            // No call of the test may hang it.
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(1))
    }

    /// Waits until it lists all `apps`; fails if it exits first.
    async fn wait_until_ready(&mut self, apps: usize) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("the process's status") {
                panic!("the gateway exited while starting: {status}");
            }
            if let Ok(channel) = self.endpoint().connect().await {
                let mut client = AccountGatewayClient::new(channel);
                if let Ok(listed) = client.list_apps(ListAppsRequest {}).await {
                    assert_eq!(listed.into_inner().apps.len(), apps);
                    self.client = Some(client);
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not answer within {START_DEADLINE:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// A client of this process (it answered `ListApps` before [`World::start_gateway`] returned).
    pub fn client(&self) -> AccountGatewayClient<Channel> {
        self.client.clone().expect("the gateway is ready")
    }

    /// A client on a connection of its own.
    pub async fn connect(&self) -> AccountGatewayClient<Channel> {
        AccountGatewayClient::new(self.channel().await)
    }

    /// A connection of its own, for any of its services.
    pub async fn channel(&self) -> Channel {
        self.endpoint().connect().await.expect("a connection")
    }

    /// SIGKILL: no shutdown handler runs, no lease is released, in-flight calls are cut off.
    pub fn kill(mut self) {
        // If the process had died on its own, it would not report SIGKILL below.
        self.child.kill().expect("SIGKILL");
        let status = self.child.wait().expect("the killed process's status");
        assert_eq!(status.signal(), Some(9), "{status}");
    }

    /// Sends SIGTERM (std has no signal API; `kill` does it); returns when it was sent.
    pub fn sigterm(&mut self) -> Instant {
        self.signal("TERM")
    }

    /// Sends SIGHUP: reload the config file.
    pub fn sighup(&mut self) -> Instant {
        self.signal("HUP")
    }

    /// Sends SIGSTOP: the process freezes where it is, its leases and connections held, as a
    /// replica does in a long GC-like pause or a VM migration.
    pub fn sigstop(&mut self) -> Instant {
        self.signal("STOP")
    }

    /// Sends SIGCONT: a stopped process resumes where it was.
    pub fn sigcont(&mut self) -> Instant {
        self.signal("CONT")
    }

    /// Waits (at most `within`) for a log line containing `text`.
    pub async fn wait_for_log(&self, text: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let line = self.log_line(text);
            if line.contains(text) && !line.starts_with("no log line with") {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {text:?} within {within:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    fn signal(&mut self, name: &str) -> Instant {
        if let Some(status) = self.child.try_wait().expect("the process's status") {
            panic!("the gateway had already exited: {status}");
        }
        let kill = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(kill.success(), "kill -{name}: {kill}");
        Instant::now()
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_for_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("the process's status") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not exit within {within:?} of SIGTERM"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The first line of the log containing `text`, or a note that none does.
    pub fn log_line(&self, text: &str) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains(text))
            .map(|l| l.trim().to_owned())
            .unwrap_or_else(|| format!("no log line with {text:?}"))
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(80)..].join("\n");
            eprintln!(
                "--- last lines of {} ---\n{tail}\n--- end ---",
                self.log.display()
            );
        }
    }
}

/// The tickets, in the order of `ids`; every one must be there.
pub async fn get_tickets(
    client: &mut AccountGatewayClient<Channel>,
    ids: &[String],
) -> Vec<UnbindTicket> {
    let tickets = client
        .get_unbind_tickets(GetUnbindTicketsRequest {
            ticket_ids: ids.to_vec(),
            ..Default::default()
        })
        .await
        .expect("GetUnbindTickets")
        .into_inner()
        .tickets;
    let returned: Vec<&str> = tickets.iter().map(|t| t.ticket_id.as_str()).collect();
    assert_eq!(returned, ids, "tickets went missing");
    tickets
}

/// A fresh look-up (at `apps`, or every app when empty), past the cache.
pub async fn look_up(
    client: &mut AccountGatewayClient<Channel>,
    token: &str,
    apps: &[String],
) -> Result<ListLinkedAccountsResponse, tonic::Status> {
    client
        .list_linked_accounts(ListLinkedAccountsRequest {
            session_token: token.to_owned(),
            app_ids: apps.to_vec(),
            bypass_cache: true,
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}
