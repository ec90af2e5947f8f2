//! The `unbind-gateway` command: `serve`, `demo`, `query`, `simulate-apps`, `check-adapter`,
//! `certs`, `audit`, `keys`, `erase`, `registry`, `portal`.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use unbind_gateway::{cli, clock::Clock, config::Config, server, shutdown, telemetry};

/// mimalloc instead of the system allocator: a profile of the gateway at saturation spent about a
/// fifth of its CPU in glibc's malloc and free (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "unbind-gateway",
    version,
    about = "Find and unbind every app account bound to a mobile number"
)]
struct Cli {
    /// Log as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway from a config file.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
        /// Overrides `store.url` (e.g. postgres://...).
        #[arg(long)]
        database_url: Option<String>,
        /// Validate the config file (as start-up and a reload would) and exit: status 0 if it
        /// would be accepted, else non-zero with the reason naming the key.
        #[arg(long)]
        check_config: bool,
    },
    /// Everything in one process on loopback: gateway, registry, simulated apps.
    Demo(cli::demo::DemoArgs),
    /// An interactive client: verify, list accounts, unbind.
    Query(cli::query::QueryArgs),
    /// The reference web portal over a gateway: verify, see and unbind accounts in a browser.
    Portal(cli::portal::PortalArgs),
    /// Write a development CA and certificates for mutual TLS under certs/.
    Certs(cli::certs::CertsArgs),
    /// List audit records (numbers are hashed before the search).
    Audit(cli::audit::AuditArgs),
    /// Erase everything held about one number (audit records keep only its keyed hash).
    Erase(cli::erase::EraseArgs),
    /// Make keys for the keyring, and list what a config's keyring holds.
    #[command(subcommand)]
    Keys(cli::keys::KeysCommand),
    /// The file-backed subscriber registry on its own: a development stand-in for the carrier's.
    Registry(cli::registry::RegistryArgs),
    /// Simulated app adapters alone.
    SimulateApps(cli::simulate_apps::SimulateAppsArgs),
    /// Run the adapter conformance suite against an app's adapter.
    #[command(after_help = cli::check_adapter::AFTER_HELP)]
    CheckAdapter(cli::check_adapter::CheckAdapterArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // Printed once, plainly, whatever RUST_BACKTRACE says: these are the errors a person can
        // act on (a file, an address, a refused call), not bugs.
        Err(e) => {
            cli::support::status::print_error(&e);
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            config,
            database_url,
            check_config,
        } => {
            telemetry::init(cli.log_json);
            let path = config;
            let mut config = Config::load(&path)?;
            let adjust = move |config: &mut Config| {
                if let Some(url) = &database_url {
                    config.store.url = url.clone();
                }
            };
            adjust(&mut config);
            if check_config {
                config
                    .validate()
                    .with_context(|| format!("invalid config file {}", path.display()))?;
                let mut checked = config
                    .check_files()
                    .with_context(|| format!("invalid config file {}", path.display()))?;
                checked.extend(
                    unbind_gateway::http::check_files(&config)
                        .with_context(|| format!("invalid config file {}", path.display()))?,
                );
                println!(
                    "{}: the config is valid ({} apps, store: {})",
                    path.display(),
                    config.apps.len(),
                    unbind_gateway::store::describe_url(&config.store.url)
                );
                for line in checked {
                    println!("  checked {line}");
                }
                return Ok(());
            }
            // The files it names, before anything starts: a missing certificate or a key that
            // is not its certificate's is named here, not as a TLS error later.
            config
                .check_files()
                .with_context(|| format!("invalid config file {}", path.display()))?;
            let watch_interval = config.reload.watch_interval;
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on {} (`listen` in {}): is another process using it?",
                        config.listen,
                        path.display()
                    )
                })?;
            let running = server::start(config, Clock::system(), listener).await?;
            let reloader = unbind_gateway::reload::Reloader::new(
                std::sync::Arc::clone(&running.gateway),
                path,
                adjust,
            )
            .spawn(watch_interval);
            shutdown::shutdown_signal().await;
            reloader.abort();
            running.stop().await
        }
        Command::Demo(args) => {
            telemetry::init(cli.log_json);
            cli::demo::run(args).await
        }
        Command::Query(args) => cli::query::run(args).await,
        Command::Portal(args) => {
            telemetry::init(cli.log_json);
            cli::portal::run(args).await
        }
        Command::CheckAdapter(args) => match cli::check_adapter::run(args).await {
            Ok(true) => Ok(()),
            // A failed check, after the table has been printed.
            Ok(false) => std::process::exit(1),
            // The suite could not run at all (as for clap's usage errors): scripts tell the two
            // apart.
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::exit(2)
            }
        },
        Command::Audit(args) => cli::audit::run(args).await,
        Command::Keys(command) => cli::keys::run(command),
        Command::Erase(args) => cli::erase::run(args).await,
        Command::Certs(args) => cli::certs::run(&args),
        Command::Registry(args) => {
            telemetry::init(cli.log_json);
            cli::registry::run(args).await
        }
        Command::SimulateApps(args) => {
            telemetry::init(cli.log_json);
            cli::simulate_apps::run(args).await
        }
    }
}
