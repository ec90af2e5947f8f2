//! `unbind-gateway registry`: the file-backed subscriber registry
//! ([`crate::testkit::simulated_registry`]) as a server of its own, the one `demo` runs inside
//! its process. It is a development and test stand-in for the carrier's real registry: a real
//! one implements `unbind.v1.SubscriberRegistry` (proto/unbind/v1/registry.proto) over its
//! real-name records and its SMS gateway. This one reads its subscribers from a TOML file (the
//! format `demo` writes, e.g. examples/subscribers.toml) and "sends" each SMS by appending it to
//! a JSON-lines file (the template, its params, the code on its own and the text), and printing
//! it, as the handset's screen. The text is written in each subscriber's language (Chinese or
//! English) from built-in templates a `--templates` file may replace, as a carrier's SMS
//! platform holds its own.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

use crate::cli::tls_args::ServerTlsArgs;
use crate::cli::{plural, say};
use crate::testkit::simulated_registry::{
    SimulatedRegistry, SimulatedRegistryOptions, SmsTemplates, load_subscribers,
};

/// Flags of `registry`.
#[derive(clap::Args, Debug)]
pub struct RegistryArgs {
    /// The subscribers (TOML: `[[subscribers]]` with phone_number, id_last_six, holder_since),
    /// as `demo` writes them; examples/subscribers.toml holds the demo's three.
    #[arg(long, value_name = "FILE")]
    pub subscribers: PathBuf,
    /// Every SMS is appended here as a JSON line (created if missing); `query
    /// --code-from-sms-file` reads codes from it.
    #[arg(long, value_name = "FILE", default_value = "sms.jsonl")]
    pub sms_file: PathBuf,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,
    /// Do not print each SMS (they still go to --sms-file).
    #[arg(long)]
    pub quiet: bool,
    /// SMS texts (TOML, `[zh]` and `[en]` tables of template = "text with {param}") over the
    /// built-in Chinese and English ones; each subscriber's `language` picks one.
    #[arg(long, value_name = "FILE")]
    pub templates: Option<PathBuf>,
    #[command(flatten)]
    pub tls: ServerTlsArgs,
}

/// Serves the registry until Ctrl-C or SIGTERM.
pub async fn run(args: RegistryArgs) -> anyhow::Result<()> {
    let subscribers = load_subscribers(&args.subscribers)?;
    let templates = match &args.templates {
        Some(path) => SmsTemplates::load(path)?,
        None => SmsTemplates::default(),
    };
    let tls = args.tls.config()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (--listen): is another process using it?",
                args.listen
            )
        })?;
    let count = subscribers.len();
    let registry = SimulatedRegistry::start_with_templates(
        SimulatedRegistryOptions {
            subscribers,
            sms_file: args.sms_file.clone(),
            echo_sms: !args.quiet,
        },
        listener,
        tls,
        templates,
    )
    .await?;
    let security = match (
        registry.endpoint().starts_with("https://"),
        args.tls.requires_client_certificates(),
    ) {
        (false, _) => "plain text",
        (true, false) => "TLS",
        (true, true) => "mutual TLS: callers need a certificate signed by --tls-client-ca",
    };
    say!(
        "Subscriber registry (a development stand-in for the carrier's) serving {} from {}\n  \
         endpoint   {} ({security})\n  \
         SMS        appended to {}\n\
         Give the gateway `[registry] endpoint = \"{}\"`. Ctrl-C to stop.",
        plural(count, "subscriber", "subscribers"),
        args.subscribers.display(),
        registry.endpoint(),
        args.sms_file.display(),
        registry.endpoint(),
    );
    crate::shutdown::shutdown_signal().await;
    registry.shutdown().await;
    say!("Subscriber registry stopped.");
    Ok(())
}
