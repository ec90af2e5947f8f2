//! The whole system in one process on loopback: a gateway, the simulated registry and the
//! simulated apps, with SQLite in a data directory (and, on request, the web portal over the
//! gateway). The demo runs it; the integration tests and
//! the benchmarks use it as their harness (with options to run the backends over mutual TLS,
//! restart the gateway, or use PostgreSQL), and read the codes the registry "sent" from its SMS
//! file.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use chrono::{TimeZone, Utc};

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::{
    clock::Clock,
    config::{
        AppConfig, AppDefaults, CacheConfig, Config, LimitsConfig, LookupConfig, OutboundTlsConfig,
        RegistryConfig, StoreConfig, UnbindConfig, VerificationConfig,
    },
    fanout::{Catalog, FanoutMetrics},
    metrics::Metrics,
    pki::{CertAndKey, DevPki},
    proto::{
        CompleteVerificationRequest, StartVerificationRequest,
        account_gateway_client::AccountGatewayClient,
    },
    security::random_id,
    server,
};

use super::simulated_apps::{Behaviour, Latency, Simulator, SimulatorConfig};
use super::simulated_registry::{
    Language, SimulatedRegistry, SimulatedRegistryOptions, Subscriber, read_sms_file,
    write_subscribers,
};

/// The demo's subscribers: the first is the one the README walks through. The first's SMS are
/// in English, the others' in Chinese.
pub fn demo_subscribers() -> Vec<Subscriber> {
    let day = |y, m, d| {
        Utc.with_ymd_and_hms(y, m, d, 0, 0, 0)
            .single()
            .unwrap_or_default()
    };
    [
        ("+8613800138000", "12345X", day(2024, 3, 1), Language::En),
        ("+8613900139000", "154321", day(2019, 6, 15), Language::Zh),
        ("+8618612345678", "30012X", day(2025, 11, 1), Language::Zh),
    ]
    .into_iter()
    .map(|(phone, id, since, language)| {
        Subscriber::new(phone, id, since)
            .expect("a valid demo subscriber")
            .in_language(language)
    })
    .collect()
}

/// What a [`Stack`] runs: the demo's defaults, adjustable for tests and benchmarks.
pub struct StackOptions {
    pub apps: usize,
    pub seed: u64,
    pub behaviour: Behaviour,
    pub listen: SocketAddr,
    /// SQLite file, subscribers and `sms.jsonl` go here.
    pub data_dir: PathBuf,
    /// Print each SMS on stdout (the demo's simulated handset).
    pub echo_sms: bool,
    /// Every app's timeout (default: `app_defaults`).
    pub app_timeout: Option<Duration>,
    /// A store other than the SQLite file in `data_dir`.
    pub store_url: Option<String>,
    pub clock: Clock,
    /// The registry's subscribers.
    pub subscribers: Vec<Subscriber>,
    /// `Some`: the apps and the registry serve mutual TLS and the gateway reaches them over
    /// `https://` (what a production-mode gateway requires). `None`: plain text, as the demo.
    pub backend_tls: Option<BackendTls>,
}

/// The simulated apps and the registry over mutual TLS, and the gateway's side of it.
#[derive(Clone, Debug)]
pub struct BackendTls {
    /// What every simulated app serves.
    pub apps: ServerTlsConfig,
    /// What the registry serves.
    pub registry: ServerTlsConfig,
    /// How the gateway reaches both.
    pub outbound: OutboundTlsConfig,
}

impl BackendTls {
    /// From a development PKI (`unbind-gateway certs`): the apps and the registry present its
    /// adapter and registry certificates and require client certificates signed by its CA; the
    /// gateway trusts that CA and presents its client certificate.
    pub fn from_pki(pki: &DevPki) -> anyhow::Result<Self> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
        };
        let ca = read(&pki.ca.cert)?;
        let serve = |files: &CertAndKey| -> anyhow::Result<ServerTlsConfig> {
            Ok(ServerTlsConfig::new()
                .identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?))
                .client_ca_root(Certificate::from_pem(&ca)))
        };
        Ok(Self {
            apps: serve(&pki.adapter)?,
            registry: serve(&pki.registry)?,
            outbound: OutboundTlsConfig {
                ca: pki.ca.cert.clone(),
                cert: Some(pki.gateway_client.cert.clone()),
                key: Some(pki.gateway_client.key.clone()),
            },
        })
    }
}

impl StackOptions {
    /// The demo's settings, with data in `data_dir`.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            apps: 200,
            seed: 42,
            behaviour: Behaviour {
                latency: Latency::Uniform {
                    min: Duration::from_millis(5),
                    max: Duration::from_millis(60),
                },
                unbind_completion: Duration::from_secs(3),
                ..Behaviour::default()
            },
            listen: ([127, 0, 0, 1], 0).into(),
            data_dir,
            echo_sms: false,
            app_timeout: None,
            store_url: None,
            clock: Clock::system(),
            subscribers: demo_subscribers(),
            backend_tls: None,
        }
    }
}

/// The whole system in one process: simulated apps, the simulated registry and a gateway.
pub struct Stack {
    pub simulator: Simulator,
    pub registry: SimulatedRegistry,
    pub gateway: Option<server::RunningGateway>,
    pub config: Config,
    pub clock: Clock,
    pub sms_file: PathBuf,
    /// The reference web portal over the gateway, once [`Stack::start_portal`] started it.
    pub portal: Option<crate::portal::RunningPortal>,
}

impl Stack {
    /// Starts everything; `tweak` adjusts the gateway config before it starts.
    pub async fn start(
        options: StackOptions,
        tweak: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Self> {
        let tls = options.backend_tls;
        let simulator = Simulator::start_with_tls(
            SimulatorConfig {
                apps: options.apps,
                seed: options.seed,
                behaviour: options.behaviour,
                bind_ip: [127, 0, 0, 1].into(),
                base_port: None,
            },
            tls.as_ref().map(|t| t.apps.clone()),
        )
        .await
        .context("cannot start the simulated apps")?;
        let subscribers = options.subscribers;
        write_subscribers(&options.data_dir.join("subscribers.toml"), &subscribers)?;
        let sms_file = options.data_dir.join("sms.jsonl");
        let registry_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let registry = SimulatedRegistry::start_with_tls(
            SimulatedRegistryOptions {
                subscribers,
                sms_file: sms_file.clone(),
                echo_sms: options.echo_sms,
            },
            registry_listener,
            tls.as_ref().map(|t| t.registry.clone()),
        )
        .await?;
        let apps = simulator
            .apps()
            .iter()
            .map(|a| a.catalog_entry(options.app_timeout))
            .collect();
        let mut config = demo_config(
            options.listen,
            &options.data_dir,
            &registry.endpoint(),
            apps,
        );
        if let Some(url) = options.store_url {
            config.store.url = url;
        }
        config.outbound_tls = tls.map(|t| t.outbound);
        tweak(&mut config);
        config.validate()?;
        let mut stack = Self {
            simulator,
            registry,
            gateway: None,
            config,
            clock: options.clock,
            sms_file,
            portal: None,
        };
        stack.restart_gateway().await?;
        Ok(stack)
    }

    /// Starts the gateway, or stops and starts it again on the same store and secret.
    pub async fn restart_gateway(&mut self) -> anyhow::Result<()> {
        let listen = match self.gateway.take() {
            Some(g) => {
                let addr = g.addr;
                g.stop().await?;
                addr
            }
            None => self.config.listen,
        };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        self.gateway =
            Some(server::start(self.config.clone(), self.clock.clone(), listener).await?);
        Ok(())
    }

    /// The gateway's `http://` endpoint.
    pub fn endpoint(&self) -> String {
        self.gateway
            .as_ref()
            .map(|g| g.endpoint())
            .unwrap_or_default()
    }

    /// The verification codes `phone` (E.164) has received so far, oldest first.
    pub fn codes_sent_to(&self, phone: &str) -> Vec<String> {
        codes_in_sms_file(&self.sms_file, phone)
    }

    /// Waits up to 10 s until `phone` has received `n` codes; returns the `n`th.
    pub async fn wait_for_code(&self, phone: &str, n: usize) -> anyhow::Result<String> {
        wait_for_code_in(&self.sms_file, phone, n).await
    }

    /// A full verification through the gateway (code read from the SMS file): a session token.
    pub async fn verified_session(&self, phone: &str, id_last_six: &str) -> anyhow::Result<String> {
        verified_session_at(&self.endpoint(), &self.sms_file, phone, id_last_six).await
    }

    /// Starts the reference web portal on `listen` (port 0 picks a free one), as a client of
    /// this stack's gateway, with dates in the carrier's default time zone; returns its URL.
    pub async fn start_portal(&mut self, listen: SocketAddr) -> anyhow::Result<String> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen} for the portal"))?;
        let portal = crate::portal::start(
            crate::portal::PortalOptions::new(
                tonic::transport::Endpoint::from_shared(self.endpoint())?
                    .connect_timeout(crate::portal::CONNECT_TIMEOUT)
                    .connect_lazy(),
            ),
            listener,
        )
        .await?;
        let url = portal.url();
        self.portal = Some(portal);
        Ok(url)
    }

    /// Stops everything.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(p) = self.portal.take() {
            p.stop().await?;
        }
        if let Some(g) = self.gateway.take() {
            g.stop().await?;
        }
        self.registry.shutdown().await;
        self.simulator.shutdown().await;
        Ok(())
    }
}

/// `n` more subscribers for load tests: `+86137000000NN`, ID characters `1NNNNN` (the index,
/// zero-padded: born on the 10th to the 19th), holders since 2020-01-01.
pub fn numbered_subscribers(n: usize) -> Vec<Subscriber> {
    let since = Utc
        .with_ymd_and_hms(2020, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    (0..n)
        .map(|i| {
            let (phone, id) = (format!("+86137{i:08}"), format!("1{:05}", i % 100_000));
            Subscriber::new(&phone, &id, since).expect("a valid numbered subscriber")
        })
        .collect()
}

/// Waits up to 10 s until `phone` has received `n` codes in `sms_file`; returns the `n`th.
pub async fn wait_for_code_in(
    sms_file: &std::path::Path,
    phone: &str,
    n: usize,
) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(code) = codes_in_sms_file(sms_file, phone)
            .into_iter()
            .nth(n.saturating_sub(1))
        {
            return Ok(code);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("no SMS code arrived");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A full verification through the gateway at `endpoint`, the code read from the simulated
/// registry's `sms_file`: a session token.
pub async fn verified_session_at(
    endpoint: &str,
    sms_file: &std::path::Path,
    phone: &str,
    id_last_six: &str,
) -> anyhow::Result<String> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
        .connect()
        .await?;
    verified_session_over(channel, sms_file, phone, id_last_six).await
}

/// [`verified_session_at`] over a channel already made (one with a tenant's TLS identity, say).
pub async fn verified_session_over(
    channel: tonic::transport::Channel,
    sms_file: &std::path::Path,
    phone: &str,
    id_last_six: &str,
) -> anyhow::Result<String> {
    let mut client = AccountGatewayClient::new(channel);
    let before = codes_in_sms_file(sms_file, phone).len();
    let verification_id = client
        .start_verification(StartVerificationRequest {
            phone_number: phone.to_owned(),
            id_last_six: id_last_six.to_owned(),
        })
        .await?
        .into_inner()
        .verification_id;
    let code = wait_for_code_in(sms_file, phone, before + 1).await?;
    Ok(client
        .complete_verification(CompleteVerificationRequest {
            verification_id,
            code,
        })
        .await?
        .into_inner()
        .session_token)
}

/// The verification codes `phone` (E.164) received so far according to an simulated registry's
/// SMS file, oldest first.
pub fn codes_in_sms_file(sms_file: &std::path::Path, phone: &str) -> Vec<String> {
    read_sms_file(sms_file)
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.phone_number == phone)
        .filter_map(|m| m.verification_code())
        .collect()
}

/// The gateway config the demo runs with.
pub fn demo_config(
    listen: SocketAddr,
    data_dir: &std::path::Path,
    registry_endpoint: &str,
    apps: Vec<AppConfig>,
) -> Config {
    Config {
        listen,
        development: true,
        tls: None,
        outbound_tls: None,
        tenants: Vec::new(),
        // A fresh secret per run: sessions do not outlive the demo.
        signing_secret: Some(format!("{}{}", random_id("demo"), random_id("key"))),
        signing_secret_file: None,
        keys: Default::default(),
        store: StoreConfig {
            url: format!("sqlite://{}", data_dir.join("unbind.db").display()),
            max_connections: 8,
        },
        registry: RegistryConfig {
            endpoint: registry_endpoint.to_owned(),
            timeout: Duration::from_secs(2),
            tls_server_name: None,
        },
        cache: CacheConfig::default(),
        lookup: LookupConfig::default(),
        verification: VerificationConfig {
            // The simulated registry answers in constant time, in well under this; a real
            // registry's answers are hidden by the default, its whole timeout.
            min_start_latency: Some(Duration::from_millis(250)),
            ..VerificationConfig::default()
        },
        limits: LimitsConfig::default(),
        unbind: UnbindConfig::default(),
        audit: Default::default(),
        retention: Default::default(),
        number_status: Default::default(),
        app_defaults: AppDefaults {
            timeout: Duration::from_millis(1500),
            ..AppDefaults::default()
        },
        breaker: Default::default(),
        retry: Default::default(),
        admin: None,
        http: None,
        reload: Default::default(),
        apps_file: None,
        apps,
    }
}

/// A catalog of `apps` that is never contacted (tonic's channels connect lazily), for tests and
/// benchmarks of what follows the apps' answers. Call it inside a Tokio runtime: the channels
/// spawn their workers on it.
pub fn offline_catalog(apps: Vec<AppConfig>) -> anyhow::Result<Catalog> {
    let config = demo_config(
        ([127, 0, 0, 1], 0).into(),
        &std::env::temp_dir(),
        "http://127.0.0.1:1",
        apps,
    );
    Catalog::new(&config, FanoutMetrics::register(&Metrics::new()))
}
