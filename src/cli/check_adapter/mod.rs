//! `unbind-gateway check-adapter`: the adapter conformance suite (SPEC §2.2, §4). A vendor runs it
//! against their `unbind.v1.AppAdapter` before going live, and a carrier runs it before adding
//! the app to the catalog; it calls the adapter the way the gateway does (same requests, a
//! `grpc-timeout` on each call, mTLS with the gateway's client certificate) and reports each check
//! as PASS, FAIL or SKIP with a one-line reason. Any FAIL makes the process exit non-zero.
//!
//! Read-only by default: look-ups, status queries for keys never used, and an empty
//! recycled-number batch. Unbinding is checked only with `--unbind-account`, which really unbinds
//! that test account.
//!
//! Privacy: the test number is printed masked (`138****8000`), account ids never (counts only),
//! and whatever text the adapter sends back is cleaned of control characters, of the test number
//! and account id, and of any other long digit run before it is printed.
//!
//! An endpoint that answers UNIMPLEMENTED to the first `FindAccounts` and does not list
//! `unbind.v1.AppAdapter` by reflection is not an adapter (a wrong port, the gateway's own
//! address): the person gets one line saying so, no table, and exit status 2.
//!
//! Every reason is worded for the adapter's vendor, in adapter.proto's terms; a closed stdout
//! (`| head -1`) stops the printing, not the checks, so the exit status is still theirs.
//!
//! To try it without an adapter of one's own, `unbind-gateway simulate-apps
//! --print-test-account NUMBER` prints, for each simulated app, its endpoint and an account id it
//! holds for the number, for `--unbind-account`.
//!
//! [`checks`] holds the checks (one [`Check`] each, run in order by the `Suite`); [`report`]
//! prints them, redacted; [`services`] asks a server that is not an adapter what it serves.

mod checks;
mod report;
mod services;

use std::fmt;
use std::time::Duration;

use crate::cli::support::deadline::parse_deadline;
use crate::cli::support::endpoint::endpoint_with_tls;
use crate::cli::support::status::error_chain;
use crate::cli::tls_args::ClientTlsArgs;
use crate::domain::E164;

pub use checks::Check;
use checks::{NotAnAdapter, Suite};
pub use report::Verdict;
use report::{Redactor, Reporter, fail};

/// Shown after `--help`: what is checked, where to get a test account, and what the exit status
/// means.
pub const AFTER_HELP: &str = "\
Checks (adapter.proto's unbind.v1.AppAdapter): reachable (FindAccounts answers OK in time),
unknown-number (FindAccounts: OK with an empty list), malformed-number (INVALID_ARGUMENT),
accounts-well-formed and accounts-stable (with --phone), status-unknown-key (GetUnbindStatus:
NOT_FOUND), recycled-empty-batch and recycled-batch-replay (NotifyNumbersRecycled), concurrency
(16 FindAccounts at once), and with --unbind-account only: unbind-answer, unbind-idempotent,
unbind-status, unbind-removes-account (UnbindAccount and GetUnbindStatus).

To try it against simulated adapters: `unbind-gateway simulate-apps --print-test-account
+8613800138000` prints each simulated app's endpoint and an account id it holds for that number,
to pass as --endpoint, --phone +8613800138000 and --unbind-account.

Exit status: 0 when no check failed (skipped checks allowed), 1 when a check failed, 2 when the
suite could not run (bad options, unreadable files, or an endpoint that does not serve
unbind.v1.AppAdapter). The test number is printed masked and account ids are never printed.";

/// `unbind-gateway check-adapter`: run the conformance suite against one adapter.
#[derive(clap::Args)]
// The shared help of --cert speaks of the gateway's own callers; here it is the adapter's client.
#[command(mut_arg("cert", |arg| arg.help(
    "The client certificate (PEM) to present for mutual TLS, e.g. the gateway's client \
     certificate the adapter expects; with --key"
)))]
pub struct CheckAdapterArgs {
    /// The adapter's address: http://HOST:PORT, or https://HOST:PORT (needs --ca).
    #[arg(long, value_name = "URL")]
    pub endpoint: String,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// A test number (E.164) the adapter holds at least one account for. Without it the checks
    /// of the accounts FindAccounts lists are skipped. Printed masked only.
    #[arg(long, value_name = "E164", value_parser = parse_phone)]
    pub phone: Option<E164>,
    /// DESTRUCTIVE: really unbinds this test account (an account_id FindAccounts lists for the
    /// --phone number), to check UnbindAccount, its idempotency, GetUnbindStatus and that the
    /// account is gone afterwards. Use only an account you can re-create, never a customer's.
    /// Nothing is unbound without it. For a simulated app, `simulate-apps --print-test-account`
    /// prints one.
    #[arg(long, value_name = "ACCOUNT_ID", requires = "phone")]
    pub unbind_account: Option<String>,
    /// The deadline of each call (sent as grpc-timeout), e.g. "800ms", "5s". An accepted unbind
    /// is awaited for up to six times this.
    #[arg(long, default_value = "5s", value_parser = parse_deadline)]
    pub timeout: Duration,
    /// Print one JSON object per check instead of the table.
    #[arg(long)]
    pub json: bool,
}

impl fmt::Debug for CheckAdapterArgs {
    /// The number is masked by `E164`'s own `Debug`; the account id is redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckAdapterArgs")
            .field("endpoint", &self.endpoint)
            .field("tls", &self.tls)
            .field("phone", &self.phone)
            .field(
                "unbind_account",
                &self.unbind_account.as_ref().map(|_| "<redacted>"),
            )
            .field("timeout", &self.timeout)
            .field("json", &self.json)
            .finish()
    }
}

fn parse_phone(input: &str) -> Result<E164, String> {
    E164::parse(input)
        .map_err(|_| "not a valid mobile number (E.164, e.g. +8613800138000)".to_owned())
}

/// Runs the suite and prints the results; `Ok(true)` when no check failed. `Err` only when the
/// suite cannot run: bad options, unreadable TLS files, or an endpoint that does not serve
/// `unbind.v1.AppAdapter` (its message is the one line the person gets; nothing else is printed).
pub async fn run(args: CheckAdapterArgs) -> anyhow::Result<bool> {
    let endpoint = args.endpoint.trim().to_owned();
    let target = endpoint_with_tls(&endpoint, &args.tls, args.timeout)?;

    let mut report = Reporter::new(args.json, Redactor::new(&args));
    report.header(&args, &endpoint);
    let channel = match tokio::time::timeout(args.timeout, target.connect()).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(e)) => {
            let why = format!("cannot connect: {}", error_chain(&e));
            return Ok(unreachable(report, why));
        }
        Err(_) => {
            let why = format!(
                "no connection within {}",
                humantime::format_duration(args.timeout)
            );
            return Ok(unreachable(report, why));
        }
    };

    match Suite::new(channel, &args).run(&mut report).await {
        Ok(()) => Ok(report.finish()),
        Err(not) => Err(anyhow::anyhow!(
            "{}",
            report.clean(&not_an_adapter(&endpoint, &not))
        )),
    }
}

/// The one line for an endpoint that is not an adapter: what it answered, what it serves instead
/// if it says, and the likely cause.
fn not_an_adapter(endpoint: &str, not: &NotAnAdapter) -> String {
    let serves = not
        .serves
        .as_deref()
        .map(services::worth_naming)
        .filter(|names| !names.is_empty())
        .map(|names| {
            let names: Vec<String> = names.iter().map(|n| report::vendor_text(n, "")).collect();
            format!("; it serves {}", names.join(", "))
        })
        .unwrap_or_default();
    format!(
        "{endpoint} does not serve {} (it answered {} to FindAccounts{serves}): is this the \
         adapter's address?",
        services::APP_ADAPTER,
        not.answer
    )
}

/// Reports `reachable` failed for `why` and every other check skipped; false (a check failed).
fn unreachable(mut report: Reporter, why: String) -> bool {
    report.record(Check::Reachable, fail(why), None);
    report.skip_rest("not run: the adapter is not reachable");
    report.finish()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::report::{MAX_VENDOR_TEXT, vendor_text};
    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: CheckAdapterArgs,
    }

    fn parse(argv: &[&str]) -> Result<CheckAdapterArgs, clap::Error> {
        let mut full = vec!["check-adapter"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full).map(|c| c.args)
    }

    #[test]
    fn options_parse_and_tls_options_are_checked() {
        let args = parse(&["--endpoint", "http://127.0.0.1:1"]).unwrap();
        assert_eq!(args.timeout, Duration::from_secs(5));
        assert!(args.tls.config(&args.endpoint).unwrap().is_none());

        // The destructive flag needs the number; the key needs the certificate.
        assert!(parse(&["--endpoint", "http://x:1", "--unbind-account", "a"]).is_err());
        assert!(parse(&["--endpoint", "http://x:1", "--key", "k.pem"]).is_err());
        assert!(parse(&["--endpoint", "http://x:1", "--phone", "12345"]).is_err());
        assert!(parse(&["--endpoint", "http://x:1", "--timeout", "0s"]).is_err());
        assert!(parse(&["--endpoint", "http://x:1", "--timeout", "800ms"]).is_ok());

        let https = parse(&["--endpoint", "https://x:1"]).unwrap();
        let err = https.tls.config(&https.endpoint).unwrap_err().to_string();
        assert!(err.contains("--ca"), "{err}");
        let mixed = parse(&["--endpoint", "http://x:1", "--ca", "ca.pem"]).unwrap();
        assert!(mixed.tls.config(&mixed.endpoint).is_err());
        let bare = parse(&["--endpoint", "x:1"]).unwrap();
        assert!(bare.tls.config(&bare.endpoint).is_err());
    }
    #[test]
    fn printed_text_never_carries_the_number_or_the_account() {
        let args = parse(&[
            "--endpoint",
            "http://127.0.0.1:1",
            "--phone",
            "13800138000",
            "--unbind-account",
            "acct-secret-42",
        ])
        .unwrap();
        let redactor = Redactor::new(&args);
        let text = redactor
            .clean("no +8613800138000 or 8613800138000 or 13800138000 and no acct-secret-42 here");
        assert!(!text.contains("13800138000"), "{text}");
        assert!(!text.contains("acct-secret-42"), "{text}");
        assert!(text.contains("138****8000"), "{text}");

        assert_eq!(
            redactor.clean(&vendor_text("bad\nnumber 19912345678 (code 42)", "")),
            "bad number 199****5678 (code 42)"
        );
        assert_eq!(vendor_text("  ", "(none)"), "(none)");
        assert!(vendor_text(&"x".repeat(500), "").chars().count() <= MAX_VENDOR_TEXT + 1);

        let debug = format!("{args:?}");
        assert!(
            !debug.contains("13800138000") && !debug.contains("acct-secret-42"),
            "{debug}"
        );
    }

    #[test]
    fn an_endpoint_that_is_not_an_adapter_is_told_in_one_line() {
        let endpoint = "http://127.0.0.1:50051";
        let gateway = NotAnAdapter {
            answer: "UNIMPLEMENTED".to_owned(),
            serves: Some(
                [
                    "unbind.v1.AccountGateway",
                    "grpc.health.v1.Health",
                    "grpc.reflection.v1.ServerReflection",
                ]
                .map(str::to_owned)
                .into(),
            ),
        };
        assert_eq!(
            not_an_adapter(endpoint, &gateway),
            "http://127.0.0.1:50051 does not serve unbind.v1.AppAdapter (it answered \
             UNIMPLEMENTED to FindAccounts; it serves unbind.v1.AccountGateway): is this the \
             adapter's address?"
        );
        // No reflection, or nothing but plumbing: no list.
        for serves in [None, Some(vec!["grpc.health.v1.Health".to_owned()])] {
            let line = not_an_adapter(
                endpoint,
                &NotAnAdapter {
                    answer: "UNIMPLEMENTED".to_owned(),
                    serves,
                },
            );
            assert!(!line.contains("it serves"), "{line}");
            assert!(!line.contains('\n'), "{line}");
        }
        // A service name is the server's text: cleaned like any other.
        let odd = NotAnAdapter {
            answer: "UNIMPLEMENTED".to_owned(),
            serves: Some(vec!["x\ny".to_owned()]),
        };
        assert!(!not_an_adapter(endpoint, &odd).contains('\n'));
    }
}
