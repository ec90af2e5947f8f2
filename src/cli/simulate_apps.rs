//! `unbind-gateway simulate-apps`: runs the simulated app adapters on their own, e.g. for a
//! gateway started separately or for the benchmark harness, and writes the `[[apps]]` catalog a
//! gateway configuration can paste. With `--tls-cert`/`--tls-key` (e.g. `certs/adapter.pem` and
//! `certs/adapter.key` from `unbind-gateway certs`) the apps serve TLS, and with `--tls-client-ca`
//! they also require the gateway's client certificate.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

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
    /// Serve TLS with this certificate (PEM); the endpoints become https://localhost:PORT.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM); needs --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
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
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            if self.tls_client_ca.is_some() {
                anyhow::bail!("--tls-client-ca needs --tls-cert and --tls-key");
            }
            return Ok(None);
        };
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path).with_context(|| format!("{what}: cannot read {}", path.display()))
        };
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
            read(cert, "--tls-cert")?,
            read(key, "--tls-key")?,
        ));
        if let Some(ca) = &self.tls_client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(read(ca, "--tls-client-ca")?));
        }
        Ok(Some(tls))
    }
}

/// Runs the simulator until Ctrl-C or SIGTERM.
pub async fn run(args: SimulateAppsArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let tls = args.tls()?;
    let client_certificates = args.tls_client_ca.is_some();
    let serves_tls = tls.is_some();
    let simulator = Simulator::start_with_tls(config, tls)
        .await
        .context("starting the simulated apps")?;
    let apps = simulator.apps();

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
            println!("App catalog written to {}", path.display());
        }
        None => println!("{catalog}"),
    }

    let ports: Vec<u16> = apps
        .iter()
        .filter_map(|app| simulator.addr(&app.id))
        .map(|addr| addr.port())
        .collect();
    match (ports.iter().min(), ports.iter().max()) {
        (Some(low), Some(high)) => println!(
            "Serving {} simulated apps on {} ports {low}-{high}. Ctrl-C to stop.",
            apps.len(),
            args.bind
        ),
        _ => println!("No apps to simulate (--apps 0). Ctrl-C to stop."),
    }
    if serves_tls {
        println!(
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
    println!("Stopping the simulated apps…");
    simulator.shutdown().await;
    Ok(())
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
