//! `unbind-gateway simulate-apps`: runs the simulated app adapters on their own, e.g. for a
//! gateway started separately or for the benchmark harness, and writes the `[[apps]]` catalog a
//! gateway configuration can paste. With `--tls-cert`/`--tls-key` (e.g. `certs/adapter.pem` and
//! `certs/adapter.key` from `unbind-gateway certs`) the apps serve TLS, and with `--tls-client-ca`
//! they also require the gateway's client certificate.
//!
//! With `--print-test-account NUMBER` it also prints, for each app (or the `--app` one), its
//! endpoint and an account id it holds for that number and can unbind: what
//! `check-adapter --endpoint URL --phone NUMBER --unbind-account ID` needs to run every check,
//! the destructive ones included. The number is printed masked; the account ids are the
//! simulator's own, made up from the seed.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use tonic::transport::ServerTlsConfig;

use crate::cli::say;
use crate::cli::tls_args::ServerTlsArgs;

use crate::domain::E164;
use crate::testkit::simulated_apps::{
    Behaviour, Latency, Simulator, SimulatorConfig, catalog_toml,
};

/// Options of `simulate-apps`.
#[derive(clap::Args, Debug, Clone)]
pub struct SimulateAppsArgs {
    /// How many apps to simulate (app-001, app-002, …), one port each.
    #[arg(long, default_value_t = 200)]
    pub apps: usize,
    /// Seeds the accounts every app holds for a number.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// App n listens on base-port + n - 1 (0 takes ephemeral ports).
    #[arg(long, default_value_t = 60000)]
    pub base_port: u16,
    /// The address to listen on.
    #[arg(long = "bind", default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// Time before each answer, e.g. "20ms".
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    pub latency: Duration,
    /// If set, each answer waits uniformly between --latency and this.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub latency_max: Option<Duration>,
    /// Fraction of calls answered with INTERNAL (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub error_rate: f64,
    /// Fraction of calls that never answer (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub stall_rate: f64,
    /// How long an accepted unbind takes to complete ("0s" answers DONE at once).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub unbind_completion: Duration,
    /// Write the `[[apps]]` catalog here instead of printing it.
    #[arg(long)]
    pub catalog_out: Option<PathBuf>,
    #[command(flatten)]
    pub server_tls: ServerTlsArgs,
    /// Also print, for each app, its endpoint and an account id it holds for this test number
    /// (E.164) and can unbind: for `check-adapter --endpoint URL --phone NUMBER --unbind-account
    /// ID`. Each account can be unbound once per run. The number is printed masked.
    #[arg(long, value_name = "E164", value_parser = parse_phone)]
    pub print_test_account: Option<E164>,
    /// With --print-test-account: only this app (e.g. app-007).
    #[arg(long, value_name = "APP_ID", requires = "print_test_account")]
    pub app: Option<String>,
}

impl SimulateAppsArgs {
    /// The simulator configuration these options describe.
    pub fn config(&self) -> anyhow::Result<SimulatorConfig> {
        let latency = match self.latency_max {
            None => Latency::Fixed(self.latency),
            Some(max) if max < self.latency => anyhow::bail!(
                "--latency-max ({}) is below --latency ({})",
                humantime::format_duration(max),
                humantime::format_duration(self.latency)
            ),
            Some(max) => Latency::Uniform {
                min: self.latency,
                max,
            },
        };
        Ok(SimulatorConfig {
            apps: self.apps,
            seed: self.seed,
            behaviour: Behaviour {
                latency,
                error_rate: self.error_rate,
                stall_rate: self.stall_rate,
                unbind_completion: self.unbind_completion,
            },
            bind_ip: self.bind,
            base_port: (self.base_port != 0).then_some(self.base_port),
        })
    }

    /// The apps' TLS, read from the files the options name; `None` serves plain text.
    pub fn tls(&self) -> anyhow::Result<Option<ServerTlsConfig>> {
        self.server_tls.config()
    }
}

/// Runs the simulator until Ctrl-C or SIGTERM.
pub async fn run(args: SimulateAppsArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let tls = args.tls()?;
    let client_certificates = args.server_tls.requires_client_certificates();
    let serves_tls = tls.is_some();
    let simulator = Simulator::start_with_tls(config, tls)
        .await
        .context("starting the simulated apps")?;
    let apps = simulator.apps();
    if let Some(id) = &args.app
        && !apps.iter().any(|app| &app.id == id)
    {
        let range = match (apps.first(), apps.last()) {
            (Some(first), Some(last)) => format!("{} to {}", first.id, last.id),
            _ => "none: --apps 0".to_owned(),
        };
        simulator.shutdown().await;
        anyhow::bail!("--app {id}: no such simulated app (the apps are {range})");
    }

    let catalog = format!(
        "# {} simulated apps (seed {}), for the gateway configuration.\n\n{}",
        apps.len(),
        args.seed,
        catalog_toml(&apps).context("writing the app catalog")?
    );
    match &args.catalog_out {
        Some(path) => {
            tokio::fs::write(path, catalog)
                .await
                .with_context(|| format!("writing the app catalog to {}", path.display()))?;
            say!("App catalog written to {}", path.display());
        }
        None => say!("{catalog}"),
    }

    if let Some(phone) = &args.print_test_account {
        let tls = match (serves_tls, client_certificates) {
            (false, _) => TestTls::None,
            (true, false) => TestTls::Server,
            (true, true) => TestTls::Mutual,
        };
        for line in test_account_lines(&simulator, phone, args.app.as_deref(), tls) {
            say!("{line}");
        }
    }

    let ports: Vec<u16> = apps
        .iter()
        .filter_map(|app| simulator.addr(&app.id))
        .map(|addr| addr.port())
        .collect();
    match (ports.iter().min(), ports.iter().max()) {
        (Some(low), Some(high)) => say!(
            "Serving {} simulated apps on {} ports {low}-{high}. Ctrl-C to stop.",
            apps.len(),
            args.bind
        ),
        _ => say!("No apps to simulate (--apps 0). Ctrl-C to stop."),
    }
    if serves_tls {
        say!(
            "TLS{}: give the gateway `[outbound_tls]` with the CA that signed --tls-cert{}.",
            if client_certificates {
                ", client certificates required"
            } else {
                ""
            },
            if client_certificates {
                " and a client certificate signed by --tls-client-ca"
            } else {
                ""
            }
        );
    }

    wait_for_stop_signal().await?;
    say!("Stopping the simulated apps…");
    simulator.shutdown().await;
    Ok(())
}

/// What a client of the apps needs besides the endpoint, for the check-adapter line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TestTls {
    None,
    /// --ca.
    Server,
    /// --ca, --cert and --key.
    Mutual,
}

/// The lines `--print-test-account` prints: a table of each app (or `only`) with an account it
/// holds for `phone` and can unbind, its endpoint and that account's id; then how to check one
/// with `check-adapter`. The number is printed masked.
fn test_account_lines(
    simulator: &Simulator,
    phone: &E164,
    only: Option<&str>,
    tls: TestTls,
) -> Vec<String> {
    let rows: Vec<(String, String, String)> = simulator
        .apps()
        .into_iter()
        .filter(|app| only.is_none_or(|id| app.id == id))
        .filter_map(|app| {
            let account = simulator.test_account(&app.id, phone.expose())?;
            Some((app.id, app.endpoint, account))
        })
        .collect();
    let Some((_, endpoint, account)) = rows.first() else {
        return vec![match only {
            Some(id) => format!(
                "{id} holds no account for {phone} that it can unbind: leave out --app to see \
                 the apps that do, or try another number."
            ),
            None => format!(
                "No app holds an account for {phone} that it can unbind: try another number, or \
                 more --apps."
            ),
        }];
    };
    let width = rows.iter().map(|(_, e, _)| e.len()).max().unwrap_or(0) + 2;
    let mut lines = vec![
        format!(
            "Test accounts for {phone} (the --print-test-account number): each app below holds \
             this account for it and can unbind it, once per run of simulate-apps."
        ),
        format!("{:<10}{:<width$}ACCOUNT_ID", "APP", "ENDPOINT"),
    ];
    lines.extend(
        rows.iter()
            .map(|(app, endpoint, account)| format!("{app:<10}{endpoint:<width$}{account}")),
    );
    let (flags, files) = match tls {
        TestTls::None => ("", ""),
        TestTls::Server => (
            " --ca CA.pem",
            ", CA.pem the CA that signed --tls-cert (certs/ca.pem)",
        ),
        TestTls::Mutual => (
            " --ca CA.pem --cert CLIENT.pem --key CLIENT.key",
            ", CA.pem the CA that signed --tls-cert (certs/ca.pem) and CLIENT.pem/.key a \
             certificate --tls-client-ca signed (certs/gateway-client.pem and .key)",
        ),
    };
    lines.push(format!(
        "Check one with every check (this unbinds its account), NUMBER being the number given to \
         --print-test-account{files}:"
    ));
    lines.push(format!(
        "  unbind-gateway check-adapter --endpoint {endpoint}{flags} --phone NUMBER \
         --unbind-account {account}"
    ));
    lines
}

/// A test number, as `check-adapter --phone` takes it.
fn parse_phone(input: &str) -> Result<E164, String> {
    E164::parse(input)
        .map_err(|_| "not a valid mobile number (E.164, e.g. +8613800138000)".to_owned())
}

/// Waits for Ctrl-C, or SIGTERM where there is one.
async fn wait_for_stop_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("listening for SIGTERM")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("listening for Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("listening for Ctrl-C")?;
    Ok(())
}

/// A fraction between 0 and 1.
fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("{rate} is not between 0.0 and 1.0"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use tonic::transport::{Certificate, Identity};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateAppsArgs,
    }

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["x"]).expect("defaults parse");
        assert_eq!(cli.args.apps, 200);
        assert_eq!(cli.args.seed, 42);
        assert_eq!(cli.args.base_port, 60000);
        assert_eq!(cli.args.latency, Duration::from_millis(20));
        assert_eq!(cli.args.unbind_completion, Duration::from_secs(2));
        let config = cli.args.config().expect("a valid configuration");
        assert_eq!(
            config.behaviour.latency,
            Latency::Fixed(Duration::from_millis(20))
        );
        assert_eq!(config.base_port, Some(60000));
    }

    #[test]
    fn uniform_latency_and_rates() {
        let cli = Cli::try_parse_from([
            "x",
            "--latency",
            "5ms",
            "--latency-max",
            "50ms",
            "--error-rate",
            "0.1",
            "--base-port",
            "0",
        ])
        .expect("options parse");
        let config = cli.args.config().expect("a valid configuration");
        assert_eq!(
            config.behaviour.latency,
            Latency::Uniform {
                min: Duration::from_millis(5),
                max: Duration::from_millis(50)
            }
        );
        assert!((config.behaviour.error_rate - 0.1).abs() < f64::EPSILON);
        assert_eq!(config.base_port, None);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Cli::try_parse_from(["x", "--error-rate", "1.5"]).is_err());
        assert!(Cli::try_parse_from(["x", "--stall-rate", "abc"]).is_err());
        let cli = Cli::try_parse_from(["x", "--latency", "50ms", "--latency-max", "5ms"])
            .expect("options parse");
        assert!(cli.args.config().is_err());
    }

    #[test]
    fn a_test_account_is_asked_for_with_a_valid_number() {
        let cli = Cli::try_parse_from(["x", "--print-test-account", "13800138000"])
            .expect("options parse");
        let phone = cli.args.print_test_account.expect("a number");
        assert_eq!(phone.expose(), "+8613800138000");
        assert!(Cli::try_parse_from(["x", "--print-test-account", "12345"]).is_err());
        // --app narrows --print-test-account; alone it means nothing.
        assert!(Cli::try_parse_from(["x", "--app", "app-001"]).is_err());
        let cli = Cli::try_parse_from([
            "x",
            "--print-test-account",
            "+8613800138000",
            "--app",
            "app-001",
        ])
        .expect("options parse");
        assert_eq!(cli.args.app.as_deref(), Some("app-001"));
    }

    #[tokio::test]
    async fn test_account_lines_name_real_accounts_and_mask_the_number() {
        let simulator = Simulator::start(SimulatorConfig {
            apps: 20,
            ..SimulatorConfig::default()
        })
        .await
        .expect("the apps start");
        let phone = E164::parse("+8613800138000").expect("a number");
        let lines = test_account_lines(&simulator, &phone, None, TestTls::Mutual);
        let text = lines.join("\n");
        assert!(text.contains("138****8000"), "{text}");
        assert!(!text.contains("13800138000"), "{text}");
        assert!(text.contains("--ca CA.pem --cert CLIENT.pem"), "{text}");
        let rows: Vec<Vec<&str>> = lines
            .iter()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|w| w.len() == 3 && w[0].starts_with("app-"))
            .collect();
        assert!(!rows.is_empty(), "{text}");
        for row in &rows {
            assert_eq!(
                simulator.test_account(row[0], phone.expose()).as_deref(),
                Some(row[2])
            );
        }
        let none = simulator
            .apps()
            .into_iter()
            .find(|a| simulator.test_account(&a.id, phone.expose()).is_none())
            .expect("an app without one");
        let lines = test_account_lines(&simulator, &phone, Some(&none.id), TestTls::None);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("holds no account"), "{lines:?}");
        simulator.shutdown().await;
    }

    #[test]
    fn tls_options_go_together() {
        assert!(Cli::try_parse_from(["x", "--tls-cert", "a.pem"]).is_err());
        assert!(Cli::try_parse_from(["x", "--tls-key", "a.key"]).is_err());
        assert!(Cli::try_parse_from(["x", "--tls-client-ca", "ca.pem"]).is_err());
        let cli = Cli::try_parse_from(["x"]).expect("defaults parse");
        assert!(cli.args.tls().expect("no TLS").is_none());
        let cli = Cli::try_parse_from([
            "x",
            "--tls-cert",
            "/nonexistent/adapter.pem",
            "--tls-key",
            "/nonexistent/adapter.key",
        ])
        .expect("options parse");
        let error = format!("{:#}", cli.args.tls().expect_err("missing files"));
        assert!(error.contains("--tls-cert"), "{error}");
    }

    #[tokio::test]
    async fn serves_tls_from_the_development_certificates() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let pki = crate::pki::generate(dir.path(), &[], &[], 1, false).expect("a PKI");
        let path = |p: &std::path::Path| p.to_str().expect("a UTF-8 path").to_owned();
        let cli = Cli::try_parse_from([
            "x".to_owned(),
            "--apps".to_owned(),
            "1".to_owned(),
            "--base-port".to_owned(),
            "0".to_owned(),
            "--tls-cert".to_owned(),
            path(&pki.adapter.cert),
            "--tls-key".to_owned(),
            path(&pki.adapter.key),
            "--tls-client-ca".to_owned(),
            path(&pki.ca.cert),
        ])
        .expect("options parse");
        let tls = cli.args.tls().expect("the files are read");
        let simulator = Simulator::start_with_tls(cli.args.config().expect("a config"), tls)
            .await
            .expect("the apps start");
        let app = simulator.apps().remove(0);
        assert!(app.endpoint.starts_with("https://localhost:"), "{app:?}");
        // Started again, the app serves TLS still, to a client with the gateway's certificate.
        simulator.stop_app(&app.id).await;
        simulator.start_app(&app.id).await.expect("restarts");
        let read = |p: &std::path::Path| std::fs::read(p).expect("readable");
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&pki.ca.cert)))
            .identity(Identity::from_pem(
                read(&pki.gateway_client.cert),
                read(&pki.gateway_client.key),
            ));
        let channel = tonic::transport::Endpoint::from_shared(app.endpoint.clone())
            .expect("a URL")
            .tls_config(tls)
            .expect("TLS settings")
            .connect()
            .await
            .expect("connects");
        crate::proto::app_adapter_client::AppAdapterClient::new(channel)
            .find_accounts(crate::proto::FindAccountsRequest {
                request_id: "req-1".to_owned(),
                phone_number: "+8613800138000".to_owned(),
            })
            .await
            .expect("answers over mTLS");
        assert_eq!(simulator.stats(&app.id).find_calls, 1);
        simulator.shutdown().await;
    }
}
