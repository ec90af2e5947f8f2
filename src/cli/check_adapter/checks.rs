//! The checks, in the order they run, and the `Suite` that runs them against one adapter: each
//! calls the adapter the way the gateway does and concludes PASS, FAIL or SKIP with a reason.
//!
//! The reasons are written for the adapter's vendor, who knows adapter.proto and nothing of the
//! gateway's insides: what the adapter did and what it should do, in the proto's terms (RPC
//! names, fields, status codes).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use rand::Rng as _;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::cli::plural;
use crate::domain::E164;
use crate::metrics::code_name;
use crate::proto::app_adapter_client::AppAdapterClient;
use crate::proto::unbind_account_request::Reason;
use crate::proto::unbind_account_response::State;
use crate::proto::{
    AdapterAccount, FindAccountsRequest, GetUnbindStatusRequest, NotifyNumbersRecycledRequest,
    UnbindAccountRequest, UnbindAccountResponse,
};
use crate::security::{MAX_ACCOUNT_ID_BYTES, escaped_len, random_id};

use super::CheckAdapterArgs;
use super::report::{Outcome, Reporter, Verdict, describe, fail, pass, skip, vendor_text};
use super::services::{APP_ADAPTER, served_services};

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

/// One check of the suite. [`Check::ALL`] is the order they run and are reported in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Reachable,
    UnknownNumber,
    MalformedNumber,
    AccountsWellFormed,
    AccountsStable,
    StatusUnknownKey,
    RecycledEmptyBatch,
    RecycledBatchReplay,
    Concurrency,
    UnbindAnswer,
    UnbindIdempotent,
    UnbindStatus,
    UnbindRemovesAccount,
}

impl Check {
    /// Every check, in the order it runs.
    pub const ALL: [Check; 13] = [
        Check::Reachable,
        Check::UnknownNumber,
        Check::MalformedNumber,
        Check::AccountsWellFormed,
        Check::AccountsStable,
        Check::StatusUnknownKey,
        Check::RecycledEmptyBatch,
        Check::RecycledBatchReplay,
        Check::Concurrency,
        Check::UnbindAnswer,
        Check::UnbindIdempotent,
        Check::UnbindStatus,
        Check::UnbindRemovesAccount,
    ];

    /// The check's name in the report and `--help`.
    pub fn name(self) -> &'static str {
        match self {
            Check::Reachable => "reachable",
            Check::UnknownNumber => "unknown-number",
            Check::MalformedNumber => "malformed-number",
            Check::AccountsWellFormed => "accounts-well-formed",
            Check::AccountsStable => "accounts-stable",
            Check::StatusUnknownKey => "status-unknown-key",
            Check::RecycledEmptyBatch => "recycled-empty-batch",
            Check::RecycledBatchReplay => "recycled-batch-replay",
            Check::Concurrency => "concurrency",
            Check::UnbindAnswer => "unbind-answer",
            Check::UnbindIdempotent => "unbind-idempotent",
            Check::UnbindStatus => "unbind-status",
            Check::UnbindRemovesAccount => "unbind-removes-account",
        }
    }
}

/// The first unbind of the destructive checks: its key and the adapter's first answer.
struct FirstUnbind {
    key: String,
    answer: UnbindAccountResponse,
}

/// The endpoint answered UNIMPLEMENTED to the first `FindAccounts` and does not list
/// `unbind.v1.AppAdapter` by reflection: it is not an adapter (a wrong port, the gateway's own
/// address), and the suite does not run.
#[derive(Debug)]
pub(super) struct NotAnAdapter {
    /// The answer, as printed: `UNIMPLEMENTED`, with the server's message if it sent one.
    pub(super) answer: String,
    /// What it serves instead, when it answers reflection.
    pub(super) serves: Option<Vec<String>>,
}

/// The adapter under test and what earlier checks learned from it.
pub(super) struct Suite {
    client: AppAdapterClient<Channel>,
    /// The same connection, to ask by reflection what a server that is not an adapter serves.
    channel: Channel,
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
    pub(super) fn new(channel: Channel, args: &CheckAdapterArgs) -> Self {
        Self {
            client: AppAdapterClient::new(channel.clone()),
            channel,
            timeout: args.timeout,
            phone: args.phone.clone(),
            account: args.unbind_account.clone(),
            listed: None,
            first_batch: None,
            unbind: None,
        }
    }

    /// Runs every check in order, reporting each as it finishes; an unreachable adapter skips
    /// the rest. `Err` before anything is reported when the endpoint is not an adapter at all.
    pub(super) async fn run(&mut self, report: &mut Reporter) -> Result<(), NotAnAdapter> {
        for check in Check::ALL {
            let started = Instant::now();
            let (outcome, stop) = self.check(check).await?;
            let elapsed = (outcome.verdict != Verdict::Skip).then(|| started.elapsed());
            report.record(check, outcome, elapsed);
            if stop {
                report.skip_rest("not run: the adapter is not reachable");
                return Ok(());
            }
        }
        Ok(())
    }

    /// Runs one check; true as well when the suite cannot go on (the adapter is not reachable).
    async fn check(&mut self, check: Check) -> Result<(Outcome, bool), NotAnAdapter> {
        let outcome = match check {
            Check::Reachable => return self.reachable().await,
            Check::UnknownNumber => self.unknown_number().await,
            Check::MalformedNumber => self.malformed_number().await,
            Check::AccountsWellFormed => self.accounts_well_formed().await,
            Check::AccountsStable => self.accounts_stable().await,
            Check::StatusUnknownKey => self.status_unknown_key().await,
            Check::RecycledEmptyBatch => self.recycled_empty_batch().await,
            Check::RecycledBatchReplay => self.recycled_batch_replay().await,
            Check::Concurrency => self.concurrency().await,
            Check::UnbindAnswer => self.unbind_answer().await,
            Check::UnbindIdempotent => self.unbind_idempotent().await,
            Check::UnbindStatus => self.unbind_status().await,
            Check::UnbindRemovesAccount => self.unbind_removes_account().await,
        };
        Ok((outcome, false))
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
    /// UNIMPLEMENTED from a server that does not list `unbind.v1.AppAdapter` by reflection (or
    /// does not answer reflection) is [`NotAnAdapter`]: every other check would fail the same way.
    async fn reachable(&mut self) -> Result<(Outcome, bool), NotAnAdapter> {
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
                Ok((outcome, false))
            }
            Err(status) => {
                if status.code() == Code::Unimplemented {
                    let serves = served_services(self.channel.clone(), self.timeout).await;
                    let adapter = serves
                        .as_ref()
                        .is_some_and(|s| s.iter().any(|name| name == APP_ADAPTER));
                    if !adapter {
                        return Err(NotAnAdapter {
                            answer: describe(&status),
                            serves,
                        });
                    }
                }
                let unreachable = is_unreachable(&status);
                let outcome = fail(format!(
                    "FindAccounts for {which} answered {} after {}: expected OK",
                    describe(&status),
                    millis(elapsed)
                ));
                Ok((outcome, unreachable))
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
            "{} ({supported} with unbind_supported): unique account_ids of at most {longest} \
             bytes (limit {MAX_ACCOUNT_ID_BYTES}), masked display_hints, bound_at in the past",
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
                "{}; expected NOT_FOUND for an unbind the adapter never received (on NOT_FOUND \
                 the gateway sends its UnbindAccount again)",
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
            "with an account_id over {MAX_ACCOUNT_ID_BYTES} bytes once JSON-escaped, the \
             longest the gateway accepts"
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
        "without bound_at (when the number was bound to the account: without it UnbindAccount \
         can only ever be sent with reason NUMBER_RECYCLED)",
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

/// A random valid mobile number (+86 199…), never `avoid`: the adapter should hold nothing for it.
fn random_number(avoid: Option<&E164>) -> String {
    let mut rng = rand::rng();
    loop {
        let candidate = format!("+86199{:08}", rng.random_range(0..100_000_000u32));
        if let Ok(number) = E164::parse(&candidate)
            && avoid.is_none_or(|a| a != &number)
        {
            return number.expose().to_owned();
        }
    }
}

fn millis(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn hints_need_a_mask() {
        assert!(is_masked("z***g"));
        assert!(is_masked(""));
        assert!(is_masked("张*"));
        assert!(!is_masked("zhangwei"));
    }
}
