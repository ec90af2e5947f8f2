//! `unbind-gateway demo`: the whole system in one process on loopback — the gateway, the
//! simulated subscriber registry, and simulated apps ([`crate::testkit::stack`]), and the web
//! portal over the gateway ([`crate::portal`]) — with SQLite in a data directory, no config
//! needed. Development mode: plain text and throw-away secrets, and
//! it says so.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;

use crate::cli::say;
use crate::shutdown;
use crate::testkit::stack::{Stack, StackOptions};

/// Flags of `demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Where the gateway listens.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Data directory (SQLite file, subscribers, sms.jsonl). Default: a new temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Number of simulated apps.
    #[arg(long, default_value_t = 200)]
    pub apps: usize,
    /// How many of them (the last ones) never answer, so that the page and `query` show how an
    /// app that does not answer in time is listed: apart, with its customer-service number,
    /// never as "no accounts". 0 for none.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub silent_apps: usize,
    /// Seed of the simulated accounts.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Where the admin HTTP endpoint (metrics, health) listens; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub admin_listen: SocketAddr,
    /// Keep the production limits on verifications (5 codes per number per hour) and summary
    /// SMS. Without it the demo allows 100 of each, so trying the error paths does not lock the
    /// three demo numbers out for an hour.
    #[arg(long)]
    pub strict_limits: bool,
    /// Where the web portal listens (port 0 picks a free one). Default: 127.0.0.1:8080, or no
    /// portal (said in the banner) when that port is taken.
    #[arg(long, value_name = "ADDR")]
    pub portal_listen: Option<SocketAddr>,
}

/// Where the demo's portal listens unless `--portal-listen` says otherwise.
pub const DEFAULT_PORTAL_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);

/// Codes and summary SMS per number per hour in the demo unless `--strict-limits`.
pub const RELAXED_PER_HOUR: u32 = 100;

/// Runs the demo until Ctrl-C.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let (data_dir, _temp) = match &args.data_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            (dir.clone(), None)
        }
        None => {
            let temp = tempfile::Builder::new().prefix("unbind-demo-").tempdir()?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    let admin_listen = args.admin_listen;
    let strict_limits = args.strict_limits;
    let mut stack = Stack::start(
        StackOptions {
            apps: args.apps,
            seed: args.seed,
            listen: args.listen,
            echo_sms: true,
            ..StackOptions::new(data_dir.clone())
        },
        |c| {
            c.admin = Some(crate::config::AdminConfig {
                listen: admin_listen,
            });
            if !strict_limits {
                c.verification.max_codes_per_hour = RELAXED_PER_HOUR;
                c.verification.max_summary_sms_per_hour = RELAXED_PER_HOUR;
            }
        },
    )
    .await?;
    let silent = silence_the_last(&stack, args.silent_apps);
    // A port given on the command line must work; the default may be taken (another demo, a
    // web server), which costs the portal only.
    let portal = match args.portal_listen {
        Some(listen) => stack.start_portal(listen).await?,
        None => match stack.start_portal(DEFAULT_PORTAL_LISTEN).await {
            Ok(url) => url,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "the demo's portal did not start");
                String::new()
            }
        },
    };
    let admin = stack
        .gateway
        .as_ref()
        .and_then(|g| g.admin_addr)
        .map(|a| format!("http://{a}/metrics"))
        .unwrap_or_default();
    say!(
        "{}",
        banner(
            &portal,
            &stack.endpoint(),
            &apps_line(args.apps, &silent, &stack.config),
            &data_dir,
            &stack.sms_file,
            &admin,
            &limits_line(&stack.config),
        )
    );
    shutdown::shutdown_signal().await;
    stack.stop().await
}

/// Makes the last `count` simulated apps stall every call; their names, in order.
fn silence_the_last(stack: &Stack, count: usize) -> Vec<String> {
    let apps = stack.simulator.apps();
    let silent = &apps[apps.len().saturating_sub(count)..];
    for app in silent {
        stack.simulator.set_behaviour(
            &app.id,
            crate::testkit::simulated_apps::Behaviour {
                stall_rate: 1.0,
                ..crate::testkit::simulated_apps::Behaviour::default()
            },
        );
    }
    silent.iter().map(|a| a.name.clone()).collect()
}

/// The banner's line on the simulated apps, naming the ones that never answer.
fn apps_line(apps: usize, silent: &[String], config: &crate::config::Config) -> String {
    let timeout = format!("{:.1} s", config.app_defaults.timeout.as_secs_f64());
    match silent {
        [] => format!("{apps}, all answering"),
        [one] => format!(
            "{apps}; \"{one}\" never answers (--silent-apps): it is listed\n{:17}as not answering after {timeout}, with its customer-service number",
            ""
        ),
        many => format!(
            "{apps}; {} never answer (--silent-apps), from \"{}\" on: they are\n{:17}listed as not answering after {timeout}, with their customer-service numbers",
            many.len(),
            many[0],
            ""
        ),
    }
}

/// The banner's line on the verification limits in force.
fn limits_line(config: &crate::config::Config) -> String {
    let codes = config.verification.max_codes_per_hour;
    if codes == RELAXED_PER_HOUR {
        format!(
            "{codes} codes per number per hour, relaxed for the demo\n{:17}(production: {}; --strict-limits keeps them)",
            "",
            crate::config::VerificationConfig::default().max_codes_per_hour
        )
    } else {
        format!(
            "{codes} codes per number per hour\n{:17}(a restart without --data-dir resets them)",
            ""
        )
    }
}

fn banner(
    portal: &str,
    endpoint: &str,
    apps: &str,
    data_dir: &std::path::Path,
    sms_file: &std::path::Path,
    metrics: &str,
    limits: &str,
) -> String {
    let (data, sms) = (data_dir.display(), sms_file.display());
    let portal_line = if portal.is_empty() {
        format!(
            "  (no web portal: {DEFAULT_PORTAL_LISTEN} is taken; --portal-listen 127.0.0.1:0 picks a free port)"
        )
    } else {
        format!("  open {portal}   in a browser: the web portal, in English or Chinese")
    };
    // One line per element: a string continuation (`\` at a line's end) would eat the
    // indentation.
    [
        "",
        "==========================================================================",
        "  DEVELOPMENT MODE: plain-text gRPC, a throw-away signing key, simulated",
        "  apps and registry. Never expose this process to a real network.",
        "==========================================================================",
        "",
        "unbind-gateway demo is running",
        &portal_line,
        "",
        &format!("  gateway        {endpoint}"),
        &format!("  simulated apps {apps}"),
        &format!("  data dir       {data}"),
        &format!("  SMS messages   printed here and appended to {sms}"),
        &format!("  metrics        {metrics}  (also /healthz, /readyz)"),
        &format!("  limits         {limits}"),
        "",
        "Try it in another terminal (the code arrives by \"SMS\" here):",
        &format!("  cargo run --release -- query --endpoint {endpoint}"),
        "    number: 13800138000   ID characters: 12345X   (holder since 2024-03-01;",
        "    accounts bound before then belong to a previous holder, listed apart)",
        "",
        "Or without typing:",
        &format!("  cargo run --release -- query --endpoint {endpoint} --phone 13800138000 \\"),
        &format!("    --id-last-six 12345X --code-from-sms-file {sms}"),
        "",
        "Press Ctrl-C to stop.",
        "",
    ]
    .join("\n")
}
