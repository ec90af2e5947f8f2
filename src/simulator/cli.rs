//! `unbind-gateway simulate-apps`: runs the simulated app adapters on their own, e.g. for a
//! gateway started separately or for the benchmark harness, and writes the `[[apps]]` catalog a
//! gateway configuration can paste.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use super::{Behaviour, Latency, Simulator, SimulatorConfig, catalog_toml};

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
}

/// Runs the simulator until Ctrl-C or SIGTERM.
pub async fn run(args: SimulateAppsArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let simulator = Simulator::start(config)
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
}
