//! `unbind-gateway demo`: the whole system in one process on loopback — the gateway, the
//! simulated subscriber registry, and simulated apps ([`crate::testkit::stack`]) — with SQLite in
//! a data directory, no config needed. Development mode: plain text and throw-away secrets, and
//! it says so.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;

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
    /// Seed of the simulated accounts.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Where the admin HTTP endpoint (metrics, health) listens; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub admin_listen: SocketAddr,
}

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
    let stack = Stack::start(
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
            })
        },
    )
    .await?;
    let admin = stack
        .gateway
        .as_ref()
        .and_then(|g| g.admin_addr)
        .map(|a| format!("http://{a}/metrics"))
        .unwrap_or_default();
    println!(
        "{}",
        banner(
            &stack.endpoint(),
            args.apps,
            &data_dir,
            &stack.sms_file,
            &admin
        )
    );
    shutdown::shutdown_signal().await;
    stack.stop().await
}

fn banner(
    endpoint: &str,
    apps: usize,
    data_dir: &std::path::Path,
    sms_file: &std::path::Path,
    metrics: &str,
) -> String {
    format!(
        "\n\
==========================================================================\n\
  DEVELOPMENT MODE: plain-text gRPC, a throw-away signing key, simulated\n\
  apps and registry. Never expose this process to a real network.\n\
==========================================================================\n\
\n\
unbind-gateway demo is running\n\
  gateway        {endpoint}\n\
  simulated apps {apps}\n\
  data dir       {data}\n\
  SMS messages   printed here and appended to {sms}\n\
  metrics        {metrics}  (also /healthz, /readyz)\n\
\n\
Try it in another terminal (the code arrives by \"SMS\" here):\n\
  cargo run --release -- query --endpoint {endpoint}\n\
    number: 13800138000   ID characters: 12345X   (holder since 2024-03-01;\n\
    the number had a previous holder, whose accounts are shown apart)\n\
\n\
Or without typing:\n\
  cargo run --release -- query --endpoint {endpoint} --phone 13800138000 \\\n\
    --id-last-six 12345X --code-from-sms-file {sms}\n\
\n\
Press Ctrl-C to stop.\n",
        data = data_dir.display(),
        sms = sms_file.display(),
    )
}
