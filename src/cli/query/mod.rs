//! `unbind-gateway query`: the client a person runs at a terminal to see every account bound to
//! their mobile number and unbind the ones they no longer want; scripts drive it with flags.
//!
//! The flow follows the gateway's API (SPEC §2.1): `StartVerification` (number + last six ID
//! characters) → SMS code → `CompleteVerification` → `ListLinkedAccounts` (or the stream) →
//! optionally `Unbind` and `GetUnbindTickets` until the tickets settle. [`flow`] walks it as
//! small steps, each returning a value: verify → look up → choose → unbind → watch.
//!
//! Everything that decides what the person sees is a pure function in its own file, unit-tested
//! without a gateway: the row choice "1,3,5" / "2-4" / "previous" / "all" ([`selection`]), the
//! tables and per-app status lines ([`table`]), the JSON lines ([`json`]), reading a code from the
//! demo's SMS file ([`sms`]). The ID characters, the SMS code and the session token are never
//! printed, and `QueryArgs`'s `Debug` redacts them.

mod flow;
mod json;
mod prompt;
#[cfg(test)]
mod samples;
mod selection;
mod sms;
mod table;

use std::fmt;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::support::deadline::parse_deadline;
use crate::cli::tls_args::ClientTlsArgs;
use selection::parse_selection;

pub use selection::Selection;

/// `unbind-gateway query`: verify a number, list the accounts bound to it, optionally unbind.
#[derive(clap::Args)]
pub struct QueryArgs {
    /// The gateway's address: http://HOST:PORT, or https://HOST:PORT with --ca (and, for a
    /// gateway that requires tenant certificates, --cert and --key).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub endpoint: String,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// The mobile number (E.164, or a bare 11-digit Chinese number); asked for if absent.
    #[arg(long)]
    pub phone: Option<String>,
    /// The last six characters of the holder's national ID; asked for if absent.
    #[arg(long)]
    pub id_last_six: Option<String>,
    /// The SMS code; asked for if absent (unless --code-from-sms-file).
    #[arg(long)]
    pub code: Option<String>,
    /// Read the code from the demo's SMS JSON-lines file (waits up to 10 s for it).
    #[arg(long, value_name = "PATH")]
    pub code_from_sms_file: Option<PathBuf>,
    /// Comma-separated app ids to ask; default: every enabled app.
    #[arg(long, value_delimiter = ',')]
    pub apps: Vec<String>,
    /// Per-app counts only, no account details.
    #[arg(long)]
    pub summary_only: bool,
    /// Ask the apps even if the gateway has a cached answer.
    #[arg(long)]
    pub bypass_cache: bool,
    /// Also send the holder a one-line summary by SMS.
    #[arg(long)]
    pub sms: bool,
    /// Use StreamLinkedAccounts and print each app's line as it answers.
    #[arg(long)]
    pub stream: bool,
    /// Unbind without asking: "previous" (previous holders' accounts), "all", or row numbers
    /// such as "1,3,5" or "2-4".
    #[arg(long, value_name = "WHICH", value_parser = parse_selection)]
    pub unbind: Option<Selection>,
    /// After unbinding, poll the tickets every second until they finish (at most 60 s).
    #[arg(long)]
    pub watch: bool,
    /// Print JSON lines (one per account, per app result, per ticket) instead of tables.
    #[arg(long)]
    pub json: bool,
    /// The look-up's gRPC deadline, e.g. "800ms", "5s".
    #[arg(long, default_value = "5s", value_parser = parse_deadline)]
    pub deadline: Duration,
}

impl fmt::Debug for QueryArgs {
    /// Redacts the number, the ID characters and the code: `Debug` output may end up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn redacted<T>(value: &Option<T>) -> &'static str {
            if value.is_some() {
                "Some(<redacted>)"
            } else {
                "None"
            }
        }
        f.debug_struct("QueryArgs")
            .field("endpoint", &self.endpoint)
            .field("tls", &self.tls)
            .field("phone", &redacted(&self.phone))
            .field("id_last_six", &redacted(&self.id_last_six))
            .field("code", &redacted(&self.code))
            .field("code_from_sms_file", &self.code_from_sms_file)
            .field("apps", &self.apps)
            .field("summary_only", &self.summary_only)
            .field("bypass_cache", &self.bypass_cache)
            .field("sms", &self.sms)
            .field("stream", &self.stream)
            .field("unbind", &self.unbind)
            .field("watch", &self.watch)
            .field("json", &self.json)
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// Runs `unbind-gateway query`. Any failed call is printed as "error: <code>: <message>" (plus
/// the gateway's reason) and returned as an error, so the process exits non-zero.
pub async fn run(args: QueryArgs) -> anyhow::Result<()> {
    flow::run_with(args, std::io::stdin().is_terminal()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::query::samples::Cli;
    use clap::Parser;

    #[test]
    fn flags_parse_and_debug_redacts_secrets() {
        let cli = Cli::try_parse_from(["query"]).unwrap();
        assert_eq!(cli.args.endpoint, "http://127.0.0.1:50051");
        assert_eq!(cli.args.deadline, Duration::from_secs(5));
        assert!(cli.args.apps.is_empty() && cli.args.unbind.is_none());

        let cli = Cli::try_parse_from([
            "query",
            "--phone",
            "13800138000",
            "--id-last-six",
            "12345X",
            "--code",
            "154321",
            "--apps",
            "alipay,wechat",
            "--unbind",
            "2-3",
            "--deadline",
            "800ms",
            "--stream",
            "--json",
            "--watch",
        ])
        .unwrap();
        assert_eq!(cli.args.apps, ["alipay", "wechat"]);
        assert_eq!(cli.args.unbind, Some(Selection::Rows(vec![2, 3])));
        assert_eq!(cli.args.deadline, Duration::from_millis(800));
        let debug = format!("{:?}", cli.args);
        for secret in ["13800138000", "12345X", "154321"] {
            assert!(!debug.contains(secret), "{debug}");
        }

        assert!(Cli::try_parse_from(["query", "--unbind", "0"]).is_err());
        assert!(Cli::try_parse_from(["query", "--deadline", "0s"]).is_err());
        assert!(Cli::try_parse_from(["query", "--deadline", "soon"]).is_err());
    }
}
