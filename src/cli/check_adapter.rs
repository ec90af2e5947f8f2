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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use rand::Rng as _;
use serde_json::json;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::cli::tls_args::ClientTlsArgs;
use crate::domain::{E164, mask_digits};
use crate::proto::app_adapter_client::AppAdapterClient;
use crate::proto::unbind_account_request::Reason;
use crate::proto::unbind_account_response::State;
use crate::proto::{
    AdapterAccount, FindAccountsRequest, GetUnbindStatusRequest, NotifyNumbersRecycledRequest,
    UnbindAccountRequest, UnbindAccountResponse,
};
use crate::security::random_id;
use crate::{
    cli::{
        plural,
        query::{error_chain, parse_deadline},
    },
    metrics::code_name,
};

/// The longest `account_id` the gateway can carry, in bytes once JSON-escaped. The gateway seals
/// each account id into an account ref (JSON
/// `{"a":app,"i":id,"n":32 hex,"s":session id,"b":bound_at ms,"u":bool}`) and refuses refs
/// longer than 4096 base64 characters (`security::sealed::MAX_ENCODED_LEN`): 3072 bytes, less
/// 30 of header and tag, less 132 of JSON around the fields (with a 36-character session id and
/// a 20-character date) and 64 of the longest app id, leaves 2846. A unit test below seals an id
/// of exactly this length.
pub const MAX_ACCOUNT_ID_BYTES: usize = 2846;
/// How many look-ups the concurrency check sends at once.
const CONCURRENT_CALLS: usize = 16;
/// An accepted unbind is polled for up to this many times `--timeout` before giving up on it.
const SETTLE_FACTOR: u32 = 6;
/// How often an accepted unbind is polled.
const SETTLE_POLL: Duration = Duration::from_millis(250);
/// `bound_at` may be this far ahead of our clock (the vendor's clock may run a little fast).
const CLOCK_SKEW: Duration = Duration::from_secs(300);
/// A `bound_at` before 2000-01-01 is taken for a default value sent by mistake, not a real date.
const PLAUSIBLE_SINCE: i64 = 946_684_800;
/// Characters that show a hint was masked.
const MASK_CHARS: [char; 4] = ['*', '＊', '•', '●'];
/// Numbers no adapter may accept, each with how it is named in the report: not E.164 at all, and
/// 16 digits (E.164 allows at most 15).
const MALFORMED_NUMBERS: [(&str, &str); 3] = [
    ("words", "not-a-phone-number"),
    ("letters after +86", "+86-138-abcd"),
    ("16 digits", "+1234567890123456"),
];
/// Adapter-supplied text (status messages, `detail`) is cut to this many characters.
const MAX_VENDOR_TEXT: usize = 120;

/// Every check, in the order it runs.
const CHECKS: [&str; 13] = [
    REACHABLE,
    UNKNOWN_NUMBER,
    MALFORMED_NUMBER,
    ACCOUNTS_WELL_FORMED,
    ACCOUNTS_STABLE,
    STATUS_UNKNOWN_KEY,
    RECYCLED_EMPTY_BATCH,
    RECYCLED_BATCH_REPLAY,
    CONCURRENCY,
    UNBIND_ANSWER,
    UNBIND_IDEMPOTENT,
    UNBIND_STATUS,
    UNBIND_REMOVES_ACCOUNT,
];
const REACHABLE: &str = "reachable";
const UNKNOWN_NUMBER: &str = "unknown-number";
const MALFORMED_NUMBER: &str = "malformed-number";
const ACCOUNTS_WELL_FORMED: &str = "accounts-well-formed";
const ACCOUNTS_STABLE: &str = "accounts-stable";
const STATUS_UNKNOWN_KEY: &str = "status-unknown-key";
const RECYCLED_EMPTY_BATCH: &str = "recycled-empty-batch";
const RECYCLED_BATCH_REPLAY: &str = "recycled-batch-replay";
const CONCURRENCY: &str = "concurrency";
const UNBIND_ANSWER: &str = "unbind-answer";
const UNBIND_IDEMPOTENT: &str = "unbind-idempotent";
const UNBIND_STATUS: &str = "unbind-status";
const UNBIND_REMOVES_ACCOUNT: &str = "unbind-removes-account";

/// Shown after `--help`: what is checked and what the exit status means.
pub const AFTER_HELP: &str = "\
Checks: reachable, unknown-number (OK with an empty list), malformed-number (INVALID_ARGUMENT),
accounts-well-formed and accounts-stable (with --phone), status-unknown-key (NOT_FOUND),
recycled-empty-batch and recycled-batch-replay, concurrency (16 look-ups at once), and with
--unbind-account only: unbind-answer, unbind-idempotent, unbind-status, unbind-removes-account.

Exit status: 0 when no check failed (skipped checks allowed), 1 when a check failed, 2 when the
suite could not run (bad options, unreadable files). The test number is printed masked and
account ids are never printed.";

/// `unbind-gateway check-adapter`: run the conformance suite against one adapter.
#[derive(clap::Args)]
pub struct CheckAdapterArgs {
    /// The adapter's address: http://HOST:PORT, or https://HOST:PORT (needs --ca).
    #[arg(long, value_name = "URL")]
    pub endpoint: String,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// A test number (E.164) the adapter holds at least one account for. Without it the checks
    /// of the accounts it lists are skipped. Printed masked only.
    #[arg(long, value_name = "E164", value_parser = parse_phone)]
    pub phone: Option<E164>,
    /// DESTRUCTIVE: really unbinds this test account of the --phone number, to check
    /// UnbindAccount, its idempotency, GetUnbindStatus and that the account is gone afterwards.
    /// Use only an account you can re-create, never a customer's. Nothing is unbound without it.
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

/// What one check concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    Skip,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
        }
    }
}

/// A check's verdict and its one-line reason.
struct Outcome {
    verdict: Verdict,
    reason: String,
}

fn pass(reason: impl Into<String>) -> Outcome {
    Outcome {
        verdict: Verdict::Pass,
        reason: reason.into(),
    }
}

fn fail(reason: impl Into<String>) -> Outcome {
    Outcome {
        verdict: Verdict::Fail,
        reason: reason.into(),
    }
}

fn skip(reason: impl Into<String>) -> Outcome {
    Outcome {
        verdict: Verdict::Skip,
        reason: reason.into(),
    }
}

/// Runs the suite and prints the results; `Ok(true)` when no check failed. `Err` only when the
/// suite cannot start (bad options, unreadable TLS files).
pub async fn run(args: CheckAdapterArgs) -> anyhow::Result<bool> {
    let endpoint = args.endpoint.trim().to_owned();
    let tls = args.tls.config(&endpoint)?;
    let mut target = Endpoint::from_shared(endpoint.clone())
        .with_context(|| format!("--endpoint {endpoint:?} is not a valid URL"))?
        .connect_timeout(args.timeout)
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        target = target
            .tls_config(tls)
            .context("cannot use the TLS settings given with --ca / --cert / --key")?;
    }

    let mut report = Reporter::new(args.json, Redactor::new(&args));
    report.header(&args, &endpoint);
    let channel = match tokio::time::timeout(args.timeout, target.connect()).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(e)) => {
            report.record(
                REACHABLE,
                fail(format!("cannot connect: {}", error_chain(&e))),
                None,
            );
            report.skip_rest("not run: the adapter is not reachable");
            return Ok(report.finish());
        }
        Err(_) => {
            report.record(
                REACHABLE,
                fail(format!(
                    "no connection within {}",
                    humantime::format_duration(args.timeout)
                )),
                None,
            );
            report.skip_rest("not run: the adapter is not reachable");
            return Ok(report.finish());
        }
    };

    let mut suite = Suite {
        client: AppAdapterClient::new(channel),
        timeout: args.timeout,
        phone: args.phone.clone(),
        account: args.unbind_account.clone(),
        listed: None,
        first_batch: None,
        unbind: None,
    };
    suite.run(&mut report).await;
    Ok(report.finish())
}

/// The first unbind of the destructive checks: its key and the adapter's first answer.
struct FirstUnbind {
    key: String,
    answer: UnbindAccountResponse,
}

/// The adapter under test and what earlier checks learned from it.
struct Suite {
    client: AppAdapterClient<Channel>,
    timeout: Duration,
    phone: Option<E164>,
    account: Option<String>,
    /// The first `FindAccounts` answer for `--phone`, once it succeeded.
    listed: Option<Vec<AdapterAccount>>,
    /// The batch id and `accepted` of the first empty recycled-number batch.
    first_batch: Option<(String, u32)>,
    unbind: Option<FirstUnbind>,
}

impl Suite {
    async fn run(&mut self, report: &mut Reporter) {
        let started = Instant::now();
        let (outcome, stop) = self.reachable().await;
        report.record(REACHABLE, outcome, Some(started.elapsed()));
        if stop {
            report.skip_rest("not run: the adapter is not reachable");
            return;
        }
        for check in &CHECKS[1..] {
            let started = Instant::now();
            let outcome = match *check {
                UNKNOWN_NUMBER => self.unknown_number().await,
                MALFORMED_NUMBER => self.malformed_number().await,
                ACCOUNTS_WELL_FORMED => self.accounts_well_formed().await,
                ACCOUNTS_STABLE => self.accounts_stable().await,
                STATUS_UNKNOWN_KEY => self.status_unknown_key().await,
                RECYCLED_EMPTY_BATCH => self.recycled_empty_batch().await,
                RECYCLED_BATCH_REPLAY => self.recycled_batch_replay().await,
                CONCURRENCY => self.concurrency().await,
                UNBIND_ANSWER => self.unbind_answer().await,
                UNBIND_IDEMPOTENT => self.unbind_idempotent().await,
                UNBIND_STATUS => self.unbind_status().await,
                UNBIND_REMOVES_ACCOUNT => self.unbind_removes_account().await,
                other => skip(format!("{other}: not implemented")),
            };
            let elapsed = (outcome.verdict != Verdict::Skip).then(|| started.elapsed());
            report.record(check, outcome, elapsed);
        }
    }

    /// Sets the per-call deadline, as the gateway does (`grpc-timeout`).
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.timeout);
        request
    }

    /// Awaits a call for at most the timeout, whatever the adapter does with `grpc-timeout`.
    async fn timed<T>(
        &self,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> (Result<T, Status>, Duration) {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map(Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded("no answer within the timeout")),
        };
        (result, started.elapsed())
    }

    async fn find(&self, phone_number: &str) -> (Result<Vec<AdapterAccount>, Status>, Duration) {
        let mut client = self.client.clone();
        let request = self.request(FindAccountsRequest {
            request_id: random_id("check"),
            phone_number: phone_number.to_owned(),
        });
        let (result, elapsed) = self.timed(client.find_accounts(request)).await;
        (result.map(|r| r.accounts), elapsed)
    }

    async fn unbind_call(
        &self,
        key: &str,
        account_id: &str,
        phone: &E164,
    ) -> Result<UnbindAccountResponse, Status> {
        let mut client = self.client.clone();
        let request = self.request(UnbindAccountRequest {
            request_id: random_id("check"),
            idempotency_key: key.to_owned(),
            account_id: account_id.to_owned(),
            phone_number: phone.expose().to_owned(),
            reason: Reason::HolderRequest as i32,
        });
        self.timed(client.unbind_account(request)).await.0
    }

    async fn status(
        &self,
        vendor_ref: &str,
        idempotency_key: &str,
    ) -> Result<UnbindAccountResponse, Status> {
        let mut client = self.client.clone();
        let request = self.request(GetUnbindStatusRequest {
            vendor_ref: vendor_ref.to_owned(),
            idempotency_key: idempotency_key.to_owned(),
        });
        self.timed(client.get_unbind_status(request)).await.0
    }

    async fn notify(&self, batch_id: &str) -> Result<u32, Status> {
        let mut client = self.client.clone();
        let request = self.request(NotifyNumbersRecycledRequest {
            batch_id: batch_id.to_owned(),
            numbers: Vec::new(),
        });
        self.timed(client.notify_numbers_recycled(request))
            .await
            .0
            .map(|r| r.accepted)
    }

    /// `FindAccounts` for a valid number (the test number if given) answers OK in time. The bool
    /// is true when the adapter could not be reached at all, so the other checks are pointless.
    async fn reachable(&mut self) -> (Outcome, bool) {
        let (number, which) = match &self.phone {
            Some(phone) => (phone.expose().to_owned(), "the --phone number"),
            None => (random_number(None), "a random valid number"),
        };
        let (result, elapsed) = self.find(&number).await;
        match result {
            Ok(accounts) => {
                if self.phone.is_some() {
                    self.listed = Some(accounts);
                }
                let outcome = pass(format!(
                    "FindAccounts answered OK in {} ({which}; timeout {})",
                    millis(elapsed),
                    humantime::format_duration(self.timeout)
                ));
                (outcome, false)
            }
            Err(status) => {
                let unreachable = is_unreachable(&status);
                let outcome = fail(format!(
                    "FindAccounts for {which} answered {} after {}: expected OK",
                    describe(&status),
                    millis(elapsed)
                ));
                (outcome, unreachable)
            }
        }
    }

    /// A number the adapter holds nothing for answers OK with an empty list, never NOT_FOUND.
    async fn unknown_number(&self) -> Outcome {
        let number = random_number(self.phone.as_ref());
        let (result, elapsed) = self.find(&number).await;
        match result {
            Ok(accounts) if accounts.is_empty() => pass(format!(
                "a random valid number got OK with an empty list in {}",
                millis(elapsed)
            )),
            Ok(accounts) => pass(format!(
                "a random valid number got OK with {} in {} (expected none; fine if that number is real)",
                plural(accounts.len(), "account", "accounts"),
                millis(elapsed)
            )),
            Err(status) if status.code() == Code::NotFound => fail(
                "a number without accounts got NOT_FOUND: answer OK with an empty list instead",
            ),
            Err(status) => fail(format!(
                "a number without accounts got {}: expected OK with an empty list",
                describe(&status)
            )),
        }
    }

    /// Numbers that are not E.164 are refused with INVALID_ARGUMENT (not OK, not a server error).
    async fn malformed_number(&self) -> Outcome {
        let mut wrong = Vec::new();
        for (name, input) in MALFORMED_NUMBERS {
            let (result, _) = self.find(input).await;
            match result {
                Err(status) if status.code() == Code::InvalidArgument => {}
                Ok(accounts) => wrong.push(format!(
                    "{name} ({input:?}) got OK with {}",
                    plural(accounts.len(), "account", "accounts")
                )),
                Err(status) => wrong.push(format!(
                    "{name} ({input:?}) got {}",
                    code_name(status.code())
                )),
            }
        }
        if wrong.is_empty() {
            pass(format!(
                "all {} malformed numbers got INVALID_ARGUMENT",
                MALFORMED_NUMBERS.len()
            ))
        } else {
            fail(format!("{}; expected INVALID_ARGUMENT", wrong.join(", ")))
        }
    }

    /// The test number's accounts are well formed (see [`account_problems`]).
    async fn accounts_well_formed(&mut self) -> Outcome {
        let Some(phone) = self.phone.clone() else {
            return skip("needs --phone (a test number with accounts)");
        };
        if self.listed.is_none() {
            match self.find(phone.expose()).await.0 {
                Ok(accounts) => self.listed = Some(accounts),
                Err(status) => {
                    return fail(format!(
                        "FindAccounts for the --phone number answered {}",
                        describe(&status)
                    ));
                }
            }
        }
        let accounts = self.listed.as_deref().unwrap_or_default();
        let problems = account_problems(accounts, chrono::Utc::now().timestamp());
        if !problems.is_empty() {
            return fail(problems.join("; "));
        }
        let supported = accounts.iter().filter(|a| a.unbind_supported).count();
        let longest = accounts
            .iter()
            .map(|a| escaped_len(&a.account_id))
            .max()
            .unwrap_or(0);
        pass(format!(
            "{} ({supported} can be unbound): unique ids of at most {longest} bytes (limit \
             {MAX_ACCOUNT_ID_BYTES}: the most a sealed account ref carries), masked hints, past \
             bound_at",
            plural(accounts.len(), "account", "accounts")
        ))
    }

    /// A second look-up lists the same accounts with the same binding dates.
    async fn accounts_stable(&self) -> Outcome {
        let Some(phone) = &self.phone else {
            return skip("needs --phone (a test number with accounts)");
        };
        let Some(first) = &self.listed else {
            return skip("not run: the first FindAccounts for the --phone number failed");
        };
        let second = match self.find(phone.expose()).await.0 {
            Ok(accounts) => accounts,
            Err(status) => {
                return fail(format!(
                    "the second FindAccounts answered {}",
                    describe(&status)
                ));
            }
        };
        let dates = |accounts: &[AdapterAccount]| -> HashMap<String, Option<(i64, i32)>> {
            accounts
                .iter()
                .map(|a| {
                    (
                        a.account_id.clone(),
                        a.bound_at.as_ref().map(|t| (t.seconds, t.nanos)),
                    )
                })
                .collect()
        };
        let (a, b) = (dates(first), dates(&second));
        let gone = a.keys().filter(|id| !b.contains_key(*id)).count();
        let new = b.keys().filter(|id| !a.contains_key(*id)).count();
        let moved = a
            .iter()
            .filter(|(id, date)| b.get(*id).is_some_and(|d| d != *date))
            .count();
        if gone == 0 && new == 0 && moved == 0 {
            pass(format!(
                "two calls listed the same {}",
                plural(a.len(), "account", "accounts")
            ))
        } else {
            fail(format!(
                "the second call differs: {gone} missing, {new} new, {moved} with another bound_at"
            ))
        }
    }

    /// GetUnbindStatus for a key and a vendor_ref never used answers NOT_FOUND.
    async fn status_unknown_key(&self) -> Outcome {
        let key = random_id("check-unused");
        let vendor_ref = random_id("check-unused-ref");
        let mut wrong = Vec::new();
        for (what, result) in [
            ("idempotency_key", self.status("", &key).await),
            ("vendor_ref", self.status(&vendor_ref, "").await),
        ] {
            match result {
                Err(status) if status.code() == Code::NotFound => {}
                Ok(answer) => wrong.push(format!("by {what}: OK ({})", state_name(answer.state))),
                Err(status) => wrong.push(format!("by {what}: {}", describe(&status))),
            }
        }
        if wrong.is_empty() {
            pass("NOT_FOUND by an unused idempotency_key and by an unused vendor_ref")
        } else {
            fail(format!(
                "{}; expected NOT_FOUND (the gateway re-sends an unbind the app says it lost)",
                wrong.join(", ")
            ))
        }
    }

    /// An empty recycled-number batch is accepted with `accepted = 0`.
    async fn recycled_empty_batch(&mut self) -> Outcome {
        let batch_id = random_id("check-batch");
        match self.notify(&batch_id).await {
            Ok(accepted) => {
                self.first_batch = Some((batch_id, accepted));
                if accepted == 0 {
                    pass("an empty batch got accepted = 0")
                } else {
                    fail(format!(
                        "an empty batch got accepted = {accepted}: expected 0"
                    ))
                }
            }
            Err(status) => fail(format!(
                "an empty batch got {}: expected OK with accepted = 0",
                describe(&status)
            )),
        }
    }

    /// The same batch again gets the same answer.
    async fn recycled_batch_replay(&self) -> Outcome {
        let Some((batch_id, first)) = &self.first_batch else {
            return skip("not run: the first batch failed");
        };
        match self.notify(batch_id).await {
            Ok(again) if again == *first => pass(format!(
                "the same batch_id again got the same accepted = {again}"
            )),
            Ok(again) => fail(format!(
                "the same batch_id got accepted = {first}, then {again}: a repeated batch_id is the same batch"
            )),
            Err(status) => fail(format!(
                "the same batch_id again got {}: a repeated batch_id is the same batch",
                describe(&status)
            )),
        }
    }

    /// Concurrent look-ups all answer in time and without failing (the gateway sends many at
    /// once on one connection). They ask for the test number if given, else for random numbers;
    /// NOT_FOUND for those is the unknown-number check's business, not a failure here.
    async fn concurrency(&self) -> Outcome {
        let numbers: Vec<String> = (0..CONCURRENT_CALLS)
            .map(|_| match &self.phone {
                Some(phone) => phone.expose().to_owned(),
                None => random_number(None),
            })
            .collect();
        let results = futures::future::join_all(numbers.iter().map(|n| self.find(n))).await;
        let slowest = results.iter().map(|(_, d)| *d).max().unwrap_or_default();
        let mut failures: BTreeMap<&'static str, usize> = BTreeMap::new();
        for (result, _) in &results {
            match result {
                Err(status) if status.code() == Code::NotFound && self.phone.is_none() => {}
                Err(status) => *failures.entry(code_name(status.code())).or_default() += 1,
                Ok(_) => {}
            }
        }
        let which = if self.phone.is_some() {
            "the --phone number"
        } else {
            "random numbers"
        };
        if failures.is_empty() {
            pass(format!(
                "{CONCURRENT_CALLS} concurrent FindAccounts ({which}) all answered; slowest {}",
                millis(slowest)
            ))
        } else {
            let failed: usize = failures.values().sum();
            let codes: Vec<String> = failures
                .iter()
                .map(|(code, n)| format!("{n} {code}"))
                .collect();
            fail(format!(
                "{failed} of {CONCURRENT_CALLS} concurrent FindAccounts ({which}) failed: {}",
                codes.join(", ")
            ))
        }
    }

    /// Why the destructive checks cannot run, if they cannot.
    fn unbind_precondition(&self) -> Result<(&E164, &str), Outcome> {
        let (Some(phone), Some(account)) = (&self.phone, &self.account) else {
            return Err(skip(
                "destructive: needs --phone and --unbind-account ACCOUNT_ID",
            ));
        };
        let Some(listed) = &self.listed else {
            return Err(skip(
                "not run: FindAccounts for the --phone number failed, so nothing was unbound",
            ));
        };
        match listed.iter().find(|a| a.account_id == *account) {
            None => Err(skip(
                "not run: FindAccounts does not list the --unbind-account account for the --phone \
                 number (already unbound? use a fresh test account)",
            )),
            Some(a) if !a.unbind_supported => Err(skip(
                "not run: the adapter lists the --unbind-account account with unbind_supported = \
                 false; pick one that can be unbound",
            )),
            Some(_) => Ok((phone, account)),
        }
    }

    /// UnbindAccount answers DONE, ACCEPTED or REJECTED.
    async fn unbind_answer(&mut self) -> Outcome {
        let (phone, account) = match self.unbind_precondition() {
            Ok(target) => target,
            Err(outcome) => return outcome,
        };
        let key = random_id("check-adapter");
        let answer = match self.unbind_call(&key, account, phone).await {
            Ok(answer) => answer,
            Err(status) => {
                return fail(format!("UnbindAccount answered {}", describe(&status)));
            }
        };
        let outcome = match State::try_from(answer.state) {
            Ok(State::Done | State::Accepted) => pass(format!(
                "{}{}",
                state_name(answer.state),
                if answer.vendor_ref.is_empty() {
                    " (no vendor_ref: status is polled by idempotency_key)"
                } else {
                    ""
                }
            )),
            Ok(State::Rejected) => pass(format!(
                "REJECTED: {}",
                vendor_text(&answer.detail, "(no detail)")
            )),
            Ok(State::Unspecified) | Err(_) => fail(format!(
                "UnbindAccount answered state {}: expected DONE, ACCEPTED or REJECTED",
                state_name(answer.state)
            )),
        };
        if outcome.verdict == Verdict::Pass {
            self.unbind = Some(FirstUnbind { key, answer });
        }
        outcome
    }

    /// The same idempotency key again is the same unbind: the same vendor_ref and state (or the
    /// state it has moved on to).
    async fn unbind_idempotent(&self) -> Outcome {
        let Some(first) = &self.unbind else {
            return self.unbind_not_run();
        };
        let (Some(phone), Some(account)) = (&self.phone, &self.account) else {
            return self.unbind_not_run();
        };
        match self.unbind_call(&first.key, account, phone).await {
            Ok(again) => match consistent(&first.answer, &again) {
                Ok(()) => pass(format!(
                    "the same idempotency_key again: {}, same vendor_ref",
                    state_name(again.state)
                )),
                Err(why) => fail(format!(
                    "the same idempotency_key again: {why} (a repeated key is the same request)"
                )),
            },
            Err(status) => fail(format!(
                "the same idempotency_key again got {} (a repeated key is the same request)",
                describe(&status)
            )),
        }
    }

    /// GetUnbindStatus by the key and by the vendor_ref agrees with the unbind's answer.
    async fn unbind_status(&self) -> Outcome {
        let Some(first) = &self.unbind else {
            return self.unbind_not_run();
        };
        let mut lookups = vec![("idempotency_key", "", first.key.as_str())];
        if !first.answer.vendor_ref.is_empty() {
            lookups.push(("vendor_ref", first.answer.vendor_ref.as_str(), ""));
        }
        let mut wrong = Vec::new();
        let mut states = Vec::new();
        for (what, vendor_ref, key) in &lookups {
            match self.status(vendor_ref, key).await {
                Ok(answer) => match consistent(&first.answer, &answer) {
                    Ok(()) => states.push(format!("{} by {what}", state_name(answer.state))),
                    Err(why) => wrong.push(format!("by {what}: {why}")),
                },
                Err(status) => wrong.push(format!("by {what}: {}", describe(&status))),
            }
        }
        if wrong.is_empty() {
            pass(format!("GetUnbindStatus agrees: {}", states.join(", ")))
        } else {
            fail(format!(
                "GetUnbindStatus disagrees with UnbindAccount's {}: {}",
                state_name(first.answer.state),
                wrong.join("; ")
            ))
        }
    }

    /// Once the unbind is DONE, the account is no longer listed.
    async fn unbind_removes_account(&self) -> Outcome {
        let Some(first) = &self.unbind else {
            return self.unbind_not_run();
        };
        let (Some(phone), Some(account)) = (&self.phone, &self.account) else {
            return self.unbind_not_run();
        };
        let mut state = State::try_from(first.answer.state).unwrap_or(State::Unspecified);
        let settle = self.timeout.saturating_mul(SETTLE_FACTOR);
        let until = Instant::now() + settle;
        while state == State::Accepted && Instant::now() < until {
            tokio::time::sleep(SETTLE_POLL).await;
            match self.status(&first.answer.vendor_ref, &first.key).await {
                Ok(answer) => {
                    state = State::try_from(answer.state).unwrap_or(State::Unspecified);
                }
                Err(status) if is_unreachable(&status) => {}
                Err(status) => {
                    return fail(format!(
                        "GetUnbindStatus answered {} while the unbind was ACCEPTED",
                        describe(&status)
                    ));
                }
            }
        }
        match state {
            State::Done => {}
            State::Accepted => {
                return skip(format!(
                    "still ACCEPTED after {}: check later that FindAccounts no longer lists the \
                     account",
                    humantime::format_duration(settle)
                ));
            }
            State::Rejected => return skip("not run: the adapter rejected the unbind"),
            State::Unspecified => {
                return fail("GetUnbindStatus answered STATE_UNSPECIFIED while polling");
            }
        }
        match self.find(phone.expose()).await.0 {
            Ok(accounts) if accounts.iter().any(|a| a.account_id == *account) => {
                fail("the unbind is DONE but FindAccounts still lists the account")
            }
            Ok(accounts) => pass(format!(
                "after DONE, FindAccounts no longer lists the account ({} left)",
                plural(accounts.len(), "account", "accounts")
            )),
            Err(status) => fail(format!(
                "FindAccounts after the unbind answered {}",
                describe(&status)
            )),
        }
    }

    /// The reason a destructive check after `unbind-answer` did not run.
    fn unbind_not_run(&self) -> Outcome {
        match self.unbind_precondition() {
            Err(outcome) => outcome,
            Ok(_) => skip("not run: UnbindAccount did not give a valid answer"),
        }
    }
}

/// What is wrong with a look-up's accounts for a number said to have some; empty when nothing.
/// Counts only: account ids are never quoted.
fn account_problems(accounts: &[AdapterAccount], now_seconds: i64) -> Vec<String> {
    if accounts.is_empty() {
        return vec![
            "no accounts for the --phone number: give a test number the adapter holds accounts for"
                .to_owned(),
        ];
    }
    let mut problems = Vec::new();
    let mut count = |n: usize, what: &str| {
        if n > 0 {
            problems.push(format!("{n} of {} {what}", accounts.len()));
        }
    };
    count(
        accounts.iter().filter(|a| a.account_id.is_empty()).count(),
        "with an empty account_id",
    );
    let mut seen = HashSet::new();
    count(
        accounts
            .iter()
            .filter(|a| !a.account_id.is_empty() && !seen.insert(a.account_id.as_str()))
            .count(),
        "repeat an account_id listed before",
    );
    count(
        accounts
            .iter()
            .filter(|a| escaped_len(&a.account_id) > MAX_ACCOUNT_ID_BYTES)
            .count(),
        &format!(
            "with an account_id over {MAX_ACCOUNT_ID_BYTES} bytes (the gateway seals ids into \
             account refs of at most 4096 characters)"
        ),
    );
    count(
        accounts
            .iter()
            .filter(|a| !is_masked(&a.display_hint))
            .count(),
        "with an unmasked display_hint (use e.g. \"z***g\", or leave it empty)",
    );
    count(
        accounts.iter().filter(|a| a.bound_at.is_none()).count(),
        "without bound_at (the gateway cannot tell a previous holder's account)",
    );
    let skew = i64::try_from(CLOCK_SKEW.as_secs()).unwrap_or(0);
    count(
        accounts
            .iter()
            .filter_map(|a| a.bound_at.as_ref())
            .filter(|t| t.seconds > now_seconds + skew)
            .count(),
        "with bound_at in the future",
    );
    count(
        accounts
            .iter()
            .filter_map(|a| a.bound_at.as_ref())
            .filter(|t| t.seconds < PLAUSIBLE_SINCE || !(0..1_000_000_000).contains(&t.nanos))
            .count(),
        "with an implausible bound_at (before 2000, or invalid nanos: a default value?)",
    );
    problems
}

/// A hint is masked when it is empty or shows a mask character.
fn is_masked(hint: &str) -> bool {
    hint.is_empty() || hint.chars().any(|c| MASK_CHARS.contains(&c))
}

/// The bytes an account id takes inside the gateway's JSON account ref.
fn escaped_len(account_id: &str) -> usize {
    serde_json::to_string(account_id)
        .map(|s| s.len().saturating_sub(2))
        .unwrap_or(usize::MAX)
}

/// Whether `later` is a consistent later answer about the same unbind as `first`: the same
/// vendor_ref, and the same state or an ACCEPTED one that has since finished.
fn consistent(first: &UnbindAccountResponse, later: &UnbindAccountResponse) -> Result<(), String> {
    let (was, now) = (State::try_from(first.state), State::try_from(later.state));
    let state_ok = match (was, now) {
        (Ok(a), Ok(b)) if a == b => a != State::Unspecified,
        (Ok(State::Accepted), Ok(State::Done | State::Rejected)) => true,
        _ => false,
    };
    let mut why = Vec::new();
    if !state_ok {
        why.push(format!(
            "{} after {}",
            state_name(later.state),
            state_name(first.state)
        ));
    }
    if later.vendor_ref != first.vendor_ref {
        why.push("another vendor_ref".to_owned());
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why.join(" and "))
    }
}

fn state_name(state: i32) -> String {
    State::try_from(state)
        .map(|s| s.as_str_name().to_owned())
        .unwrap_or_else(|_| format!("unknown state {state}"))
}

/// Whether a call failed for want of a connection or an answer rather than by the adapter's
/// choice.
fn is_unreachable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
    ) || std::error::Error::source(status).is_some()
}

/// "NOT_FOUND (message)", the message cleaned, and for a transport failure its causes.
fn describe(status: &Status) -> String {
    let mut text = code_name(status.code()).to_owned();
    let mut message = status.message().to_owned();
    if let Some(source) = std::error::Error::source(status) {
        let causes = error_chain(source);
        if message.is_empty() || causes.starts_with(&message) {
            message = causes;
        } else {
            message = format!("{message}: {causes}");
        }
    }
    if !message.is_empty() {
        text.push_str(&format!(" ({})", vendor_text(&message, "")));
    }
    text
}

/// Text from the adapter, made safe to print: control characters replaced, cut to a line. Long
/// digit runs, the test number and the account id are masked later, by the [`Redactor`], with
/// everything else printed.
fn vendor_text(text: &str, empty: &str) -> String {
    let text = text.trim();
    if text.is_empty() {
        return empty.to_owned();
    }
    let mut cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_VENDOR_TEXT)
        .collect();
    if text.chars().count() > MAX_VENDOR_TEXT {
        cleaned.push('…');
    }
    cleaned
}

/// Masks every run of seven or more digits as the project masks numbers
/// ([`mask_digits`]: `13800138000` → `138****8000`).
fn mask_digit_runs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 7 {
            out.push_str(&mask_digits(run));
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Removes from everything printed the test number (in the forms an adapter might echo it, as
/// `138****8000`), the account id, and then any other run of seven or more digits (a number the
/// adapter echoed in another form, an id).
struct Redactor {
    /// (secret, replacement), longest secret first.
    replacements: Vec<(String, String)>,
}

impl Redactor {
    fn new(args: &CheckAdapterArgs) -> Self {
        let mut replacements = Vec::new();
        if let Some(phone) = &args.phone {
            let raw = phone.expose();
            let digits = raw.trim_start_matches('+');
            let national = digits.get(phone.country_code_len()..).unwrap_or(digits);
            for form in [raw, digits, national] {
                replacements.push((form.to_owned(), phone.masked()));
            }
        }
        if let Some(account) = args.unbind_account.as_deref().filter(|a| !a.is_empty()) {
            replacements.push((account.to_owned(), "<account>".to_owned()));
        }
        replacements.sort_by_key(|(secret, _)| std::cmp::Reverse(secret.len()));
        Self { replacements }
    }

    fn clean(&self, text: &str) -> String {
        let redacted = self
            .replacements
            .iter()
            .fold(text.to_owned(), |text, (secret, with)| {
                text.replace(secret.as_str(), with)
            });
        mask_digit_runs(&redacted)
    }
}

/// Prints each check as it finishes (a table, or JSON lines) and keeps count.
struct Reporter {
    json: bool,
    redactor: Redactor,
    done: Vec<(&'static str, Verdict)>,
}

/// The width of the check-name column.
const NAME_WIDTH: usize = 24;

impl Reporter {
    fn new(json: bool, redactor: Redactor) -> Self {
        Self {
            json,
            redactor,
            done: Vec::new(),
        }
    }

    fn header(&self, args: &CheckAdapterArgs, endpoint: &str) {
        if self.json {
            return;
        }
        let tls = args.tls.describe();
        let number = args
            .phone
            .as_ref()
            .map_or_else(|| "no --phone".to_owned(), |p| format!("test number {p}"));
        let destructive = if args.unbind_account.is_some() {
            "destructive checks ON (one test account will be unbound)"
        } else {
            "read-only"
        };
        println!(
            "{}",
            self.redactor.clean(&format!(
                "Checking the adapter at {endpoint} ({tls}; {number}; {destructive}; timeout {})",
                humantime::format_duration(args.timeout)
            ))
        );
        println!("{:<NAME_WIDTH$}{:<8}REASON", "CHECK", "RESULT");
    }

    fn record(&mut self, check: &'static str, outcome: Outcome, elapsed: Option<Duration>) {
        let reason = self.redactor.clean(&outcome.reason);
        if self.json {
            let line = json!({
                "check": check,
                "result": outcome.verdict.as_str(),
                "reason": reason,
                "elapsed_ms": elapsed.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            });
            println!("{line}");
        } else {
            println!(
                "{check:<NAME_WIDTH$}{:<8}{reason}",
                outcome.verdict.as_str()
            );
        }
        self.done.push((check, outcome.verdict));
    }

    /// Skips every check not reported yet.
    fn skip_rest(&mut self, reason: &str) {
        for check in CHECKS {
            if !self.done.iter().any(|(c, _)| *c == check) {
                self.record(check, skip(reason), None);
            }
        }
    }

    /// Prints the summary; true when nothing failed.
    fn finish(self) -> bool {
        let count = |v: Verdict| self.done.iter().filter(|(_, d)| *d == v).count();
        let (passed, failed, skipped) = (
            count(Verdict::Pass),
            count(Verdict::Fail),
            count(Verdict::Skip),
        );
        let failed_names: Vec<&str> = self
            .done
            .iter()
            .filter(|(_, v)| *v == Verdict::Fail)
            .map(|(c, _)| *c)
            .collect();
        let mut summary = format!(
            "{} checks: {passed} passed, {failed} failed, {skipped} skipped",
            self.done.len()
        );
        if !failed_names.is_empty() {
            summary.push_str(&format!(" (failed: {})", failed_names.join(", ")));
        }
        // With --json, stdout carries only the per-check objects.
        if self.json {
            eprintln!("{summary}");
        } else {
            println!("{summary}");
        }
        failed == 0
    }
}

/// A random valid mobile number (+86 199…), never `avoid`: the adapter should hold nothing for it.
fn random_number(avoid: Option<&E164>) -> String {
    let mut rng = rand::rng();
    loop {
        let candidate = format!("+86199{:08}", rng.random_range(0..100_000_000u32));
        if let Ok(number) = E164::parse(&candidate) {
            if avoid.is_none_or(|a| a != &number) {
                return number.expose().to_owned();
            }
        }
    }
}

fn millis(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::security::{AccountRef, Keys};

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
    fn the_account_id_limit_is_what_a_sealed_ref_can_carry() {
        let keys = Keys::derive(&[4; 32]);
        let number = keys.number_hash(&E164::parse("+8613800138000").unwrap());
        let app_id = "a".repeat(64);
        let session = crate::security::random_id("ses");
        let sealed = |id: &str| {
            AccountRef::new(&app_id, id, &number, &session, Some(i64::MIN), false).seal(&keys)
        };
        let longest = "x".repeat(MAX_ACCOUNT_ID_BYTES);
        assert!(AccountRef::open(&keys, &sealed(&longest)).is_some());
        let too_long = "x".repeat(MAX_ACCOUNT_ID_BYTES + 1);
        assert!(AccountRef::open(&keys, &sealed(&too_long)).is_none());
        // Escaping counts: a quote takes two bytes in the ref.
        assert_eq!(escaped_len("a\"b"), 4);
    }

    #[test]
    fn random_numbers_are_valid_and_avoid_the_test_number() {
        let phone = E164::parse("+8613800138000").unwrap();
        for _ in 0..50 {
            let n = random_number(Some(&phone));
            assert!(E164::parse(&n).is_ok(), "{n}");
            assert_ne!(n, phone.expose());
        }
    }

    fn account(id: &str, hint: &str, bound_at: Option<i64>) -> AdapterAccount {
        AdapterAccount {
            account_id: id.to_owned(),
            display_hint: hint.to_owned(),
            bound_at: bound_at.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
            unbind_supported: true,
        }
    }

    #[test]
    fn account_problems_are_counted_without_ids() {
        let now = 1_700_000_000;
        let good = [
            account("a1", "z***g", Some(1_600_000_000)),
            account("a2", "", Some(now)),
        ];
        assert!(account_problems(&good, now).is_empty());
        assert_eq!(account_problems(&[], now).len(), 1);

        let bad = [
            account("secret-1", "zhangwei", Some(1_600_000_000)),
            account("secret-1", "z***g", None),
            account("", "l***i", Some(now + 3600)),
            account("secret-2", "l***i", Some(0)),
        ];
        let problems = account_problems(&bad, now).join("; ");
        for expected in [
            "1 of 4 with an empty account_id",
            "1 of 4 repeat an account_id",
            "1 of 4 with an unmasked display_hint",
            "1 of 4 without bound_at",
            "1 of 4 with bound_at in the future",
            "1 of 4 with an implausible bound_at",
        ] {
            assert!(problems.contains(expected), "{problems}");
        }
        assert!(!problems.contains("secret"), "{problems}");
    }

    #[test]
    fn later_unbind_answers_must_match_the_first() {
        let answer = |state: State, vendor_ref: &str| UnbindAccountResponse {
            state: state as i32,
            vendor_ref: vendor_ref.to_owned(),
            detail: String::new(),
        };
        let accepted = answer(State::Accepted, "r1");
        assert!(consistent(&accepted, &answer(State::Accepted, "r1")).is_ok());
        assert!(consistent(&accepted, &answer(State::Done, "r1")).is_ok());
        assert!(consistent(&answer(State::Done, "r1"), &answer(State::Done, "r1")).is_ok());
        assert!(consistent(&answer(State::Done, "r1"), &answer(State::Done, "r2")).is_err());
        assert!(consistent(&answer(State::Done, "r1"), &answer(State::Rejected, "r1")).is_err());
        assert!(consistent(&accepted, &answer(State::Unspecified, "r1")).is_err());
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
    fn hints_need_a_mask() {
        assert!(is_masked("z***g"));
        assert!(is_masked(""));
        assert!(is_masked("张*"));
        assert!(!is_masked("zhangwei"));
    }
}
