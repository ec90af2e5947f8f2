//! `unbind-gateway query`: the client a person runs at a terminal to see every account bound to
//! their mobile number and unbind the ones they no longer want; scripts drive it with flags.
//!
//! The flow follows the gateway's API (SPEC §2.1): `StartVerification` (number + last six ID
//! characters) → SMS code → `CompleteVerification` → `ListLinkedAccounts` (or the stream) →
//! optionally `Unbind` and `GetUnbindTickets` until the tickets settle.
//!
//! Everything that decides what the person sees (the table, the per-app status lines, the JSON
//! lines, the row choice "1,3,5" / "2-4" / "previous" / "all", reading a code from the demo's SMS
//! file) is a pure function below, so it is unit-tested without a gateway. The ID characters, the
//! SMS code and the session token are never printed, and `QueryArgs`'s `Debug` redacts them.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use chrono::{DateTime, Local, SecondsFormat, TimeZone, Utc};
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};
use tonic_types::StatusExt;

use crate::cli::{plural, tls_args::ClientTlsArgs};
use crate::metrics::code_name;
use crate::proto::SummarySms;
use crate::proto::account_gateway_client::AccountGatewayClient;
use crate::proto::app_result::State;
use crate::proto::linked_account::Ownership;
use crate::proto::unbind_ticket::State as TicketState;
use crate::proto::{
    AppResult, CompleteVerificationRequest, CompleteVerificationResponse, GetUnbindTicketsRequest,
    LinkedAccount, ListLinkedAccountsRequest, ListLinkedAccountsResponse, StartVerificationRequest,
    UnbindRequest, UnbindTicket,
};

/// How long `--code-from-sms-file` waits for the code to appear.
const SMS_WAIT: Duration = Duration::from_secs(10);
/// How often the SMS file is re-read while waiting.
const SMS_POLL: Duration = Duration::from_millis(200);
/// How long tickets are watched after an unbind.
const WATCH_FOR: Duration = Duration::from_secs(60);
/// How often tickets are polled while watching.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// The gateway allows five tries per code; the prompt offers as many.
const CODE_TRIES: usize = 5;
/// Connecting to the gateway gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest `--deadline` (and `check-adapter --timeout`) accepted (a session lives 10 minutes
/// anyway).
const MAX_DEADLINE: Duration = Duration::from_secs(600);
/// The most rows one range ("1-100") may name; guards against "1-999999999".
const MAX_RANGE_ROWS: usize = 10_000;

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

/// Which accounts to unbind, as typed at the prompt or given with `--unbind`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Unbind nothing (Enter at the prompt, or "none").
    Nothing,
    /// Every previous holder's account that the app lets the gateway unbind.
    Previous,
    /// Every account that the app lets the gateway unbind.
    All,
    /// These rows of the table, numbered from 1, in the order given, without repeats.
    Rows(Vec<usize>),
}

/// Parses a choice: "", "none", "previous", "all", or row numbers and ranges ("1,3,5", "2-4",
/// "1, 4-6 9"; commas and spaces both separate).
pub fn parse_selection(input: &str) -> Result<Selection, String> {
    let text = input.trim().to_ascii_lowercase();
    match text.as_str() {
        "" | "none" | "n" | "no" => return Ok(Selection::Nothing),
        "previous" | "prev" => return Ok(Selection::Previous),
        "all" => return Ok(Selection::All),
        _ => {}
    }
    let mut rows = Vec::new();
    let mut seen = HashSet::new();
    for token in text.split(|c: char| c == ',' || c.is_whitespace()) {
        if token.is_empty() {
            continue;
        }
        let (first, last) = match token.split_once('-') {
            Some((a, b)) => (parse_row(a, token)?, parse_row(b, token)?),
            None => {
                let n = parse_row(token, token)?;
                (n, n)
            }
        };
        if first > last {
            return Err(format!(
                "\"{token}\": a range goes from low to high, e.g. 2-4"
            ));
        }
        if last - first >= MAX_RANGE_ROWS {
            return Err(format!("\"{token}\": range too large"));
        }
        for row in first..=last {
            if seen.insert(row) {
                rows.push(row);
            }
        }
    }
    if rows.is_empty() {
        return Err("expected row numbers, 'previous', 'all' or nothing".to_owned());
    }
    Ok(Selection::Rows(rows))
}

fn parse_row(text: &str, token: &str) -> Result<usize, String> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "\"{token}\" is not a row number or range (expected e.g. 1,3,5 or 2-4, 'previous' or 'all')"
        ));
    }
    match text.parse::<usize>() {
        Ok(0) => Err("rows are numbered from 1".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("\"{token}\": row number too large")),
    }
}

pub(crate) fn parse_deadline(input: &str) -> Result<Duration, String> {
    let deadline = humantime::parse_duration(input.trim()).map_err(|e| e.to_string())?;
    if deadline.is_zero() || deadline > MAX_DEADLINE {
        return Err("must be more than 0 and at most 10m".to_owned());
    }
    Ok(deadline)
}

/// The accounts a selection resolved to, and why any named account was left out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Indexes (0-based) into the rows, in the order they will be sent.
    pub chosen: Vec<usize>,
    /// One human-readable note per account that was named or implied but not chosen.
    pub skipped: Vec<String>,
}

/// Maps a selection onto the table's rows (in table order, see [`ordered_accounts`]).
///
/// Accounts whose app does not support unbinding through the gateway, and accounts with an
/// unbind already under way, are skipped with a note; a row number past the table is an error.
pub fn resolve_selection(
    selection: &Selection,
    rows: &[LinkedAccount],
) -> Result<Resolved, String> {
    let candidates: Vec<usize> = match selection {
        Selection::Nothing => return Ok(Resolved::default()),
        Selection::Previous => (0..rows.len())
            .filter(|&i| rows[i].ownership() == Ownership::PreviousHolder)
            .collect(),
        Selection::All => (0..rows.len()).collect(),
        Selection::Rows(numbers) => {
            let mut indexes = Vec::with_capacity(numbers.len());
            for &n in numbers {
                if n == 0 || n > rows.len() {
                    return Err(match rows.len() {
                        0 => format!("there is no row {n}: the table is empty"),
                        len => format!("there is no row {n} (rows are 1-{len})"),
                    });
                }
                indexes.push(n - 1);
            }
            indexes
        }
    };
    let mut resolved = Resolved::default();
    for i in candidates {
        let account = &rows[i];
        let name = app_label(&account.app_name, &account.app_id);
        if !account.unbind_supported {
            resolved.skipped.push(format!(
                "row {} ({name}): this app cannot unbind through the gateway; contact its customer service",
                i + 1
            ));
        } else if let Some(ticket) = open_ticket(account) {
            resolved.skipped.push(format!(
                "row {} ({name}): an unbind is already under way ({})",
                i + 1,
                ticket_state_word(ticket.state())
            ));
        } else {
            resolved.chosen.push(i);
        }
    }
    Ok(resolved)
}

/// The account's ticket if one is still under way (a finished one does not block a new unbind).
fn open_ticket(account: &LinkedAccount) -> Option<&UnbindTicket> {
    account
        .open_ticket
        .as_ref()
        .filter(|t| !is_terminal(t.state()))
}

fn is_terminal(state: TicketState) -> bool {
    matches!(
        state,
        TicketState::Completed | TicketState::Rejected | TicketState::Failed
    )
}

/// The accounts in table order: grouped by app (by name, then id), each app's accounts in the
/// order the gateway gave them. Row `n` of the table is element `n - 1`.
pub fn ordered_accounts(accounts: &[LinkedAccount]) -> Vec<LinkedAccount> {
    let mut rows = accounts.to_vec();
    // A stable sort keeps the gateway's order inside each app.
    rows.sort_by(|a, b| app_order(&a.app_name, &a.app_id, &b.app_name, &b.app_id));
    rows
}

/// Apps ordered by name, then id, the way a person reads them: "Bank 2" before "Bank 10".
fn app_order(name_a: &str, id_a: &str, name_b: &str, id_b: &str) -> Ordering {
    natural_cmp(name_a, name_b).then_with(|| natural_cmp(id_a, id_b))
}

/// Compares strings with runs of ASCII digits compared as numbers.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a, b);
    loop {
        match (a.chars().next(), b.chars().next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let (run_a, rest_a) = split_digits(a);
                let (run_b, rest_b) = split_digits(b);
                let (trim_a, trim_b) =
                    (run_a.trim_start_matches('0'), run_b.trim_start_matches('0'));
                let order = trim_a
                    .len()
                    .cmp(&trim_b.len())
                    .then_with(|| trim_a.cmp(trim_b))
                    .then_with(|| run_a.len().cmp(&run_b.len()));
                if order != Ordering::Equal {
                    return order;
                }
                (a, b) = (rest_a, rest_b);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(&y);
                }
                (a, b) = (&a[x.len_utf8()..], &b[y.len_utf8()..]);
            }
        }
    }
}

fn split_digits(text: &str) -> (&str, &str) {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    text.split_at(end)
}

/// Formats everything below the header for a look-up: the accounts table (or, with
/// `summary_only`, per-app counts), one line per app that did not answer, and one line counting
/// the apps with no account. `rows` must be `ordered_accounts(&response.accounts)`.
pub fn render_listing<Tz: TimeZone>(
    response: &ListLinkedAccountsResponse,
    rows: &[LinkedAccount],
    tz: &Tz,
) -> String {
    let mut lines = vec![format_header(response)];
    if !rows.is_empty() {
        lines.push(String::new());
        lines.extend(format_accounts_table(rows, tz));
    } else {
        // Summary-only answers carry counts but no accounts.
        let counted: Vec<String> = sorted_results(&response.app_results)
            .into_iter()
            .filter(|r| r.state() == State::Answered && r.account_count > 0)
            .map(|r| {
                format!(
                    "{}: {}",
                    app_label_with_id(&r.app_name, &r.app_id),
                    plural(r.account_count as usize, "account", "accounts")
                )
            })
            .collect();
        if !counted.is_empty() {
            lines.push(String::new());
            lines.extend(counted);
        }
    }
    let missing: Vec<String> = sorted_results(&response.app_results)
        .into_iter()
        .filter(|r| r.state() != State::Answered)
        .map(format_app_status)
        .collect();
    if !missing.is_empty() {
        lines.push(String::new());
        lines.push("Apps that did not answer (they may hold accounts too):".to_owned());
        lines.extend(missing.into_iter().map(|l| format!("  {l}")));
    }
    let empty = response
        .app_results
        .iter()
        .filter(|r| r.state() == State::Answered && r.account_count == 0)
        .count();
    if empty > 0 {
        lines.push(String::new());
        lines.push(if empty == 1 {
            "1 app has no account bound to this number".to_owned()
        } else {
            format!("{empty} apps have no account bound to this number")
        });
    }
    lines.join("\n")
}

fn sorted_results(results: &[AppResult]) -> Vec<&AppResult> {
    let mut sorted: Vec<&AppResult> = results.iter().collect();
    sorted.sort_by(|a, b| app_order(&a.app_name, &a.app_id, &b.app_name, &b.app_id));
    sorted
}

/// "3 accounts found; 198 of 200 apps answered; incomplete ...".
pub fn format_header(response: &ListLinkedAccountsResponse) -> String {
    let asked = response.app_results.len();
    let answered = response
        .app_results
        .iter()
        .filter(|r| r.state() == State::Answered)
        .count();
    let found = plural(response.total_accounts as usize, "account", "accounts");
    let completeness = if response.complete {
        "complete".to_owned()
    } else {
        "INCOMPLETE: apps that did not answer are listed below".to_owned()
    };
    format!("{found} found; {answered} of {asked} apps answered; {completeness}")
}

/// The accounts table, one numbered row per account, in the order given.
pub fn format_accounts_table<Tz: TimeZone>(rows: &[LinkedAccount], tz: &Tz) -> Vec<String> {
    let body: Vec<Vec<String>> = rows
        .iter()
        .enumerate()
        .map(|(i, a)| {
            vec![
                (i + 1).to_string(),
                clean(&app_label(&a.app_name, &a.app_id)),
                ownership_word(a.ownership()).to_owned(),
                clean(&a.display_hint),
                format_date(a.bound_at.as_ref(), tz),
                if a.unbind_supported { "yes" } else { "no" }.to_owned(),
                a.open_ticket
                    .as_ref()
                    .map(|t| ticket_state_word(t.state()).to_owned())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    let mut headers = vec![
        "#",
        "App",
        "Ownership",
        "Account",
        "Bound",
        "Unbind",
        "Ticket",
    ];
    if rows.iter().all(|a| a.open_ticket.is_none()) {
        // No unbind under way: leave out the empty column.
        headers.pop();
    }
    render_table(&headers, &body)
}

/// The tickets an unbind created (or a watch found), one row each.
pub fn format_tickets_table<Tz: TimeZone>(
    tickets: &[UnbindTicket],
    app_names: &HashMap<String, String>,
    tz: &Tz,
) -> Vec<String> {
    let body: Vec<Vec<String>> = tickets
        .iter()
        .map(|t| {
            let mut due = format_date(t.due_at.as_ref(), tz);
            if t.overdue {
                due.push_str(" (overdue)");
            }
            vec![
                clean(&t.ticket_id),
                clean(&ticket_app(t, app_names)),
                ticket_state_word(t.state()).to_owned(),
                due,
                clean(&t.detail),
            ]
        })
        .collect();
    render_table(&["Ticket", "App", "State", "Due", "Detail"], &body)
}

fn ticket_app(ticket: &UnbindTicket, app_names: &HashMap<String, String>) -> String {
    match app_names.get(&ticket.app_id) {
        Some(name) => app_label(name, &ticket.app_id),
        None => ticket.app_id.clone(),
    }
}

/// Lays out a table: columns padded to their widest cell (by terminal width, so Chinese app
/// names line up), the first column right-aligned, no trailing spaces.
fn render_table(headers: &[&str], body: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = headers.iter().map(|h| display_width(h)).collect();
    for row in body {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(display_width(cell));
        }
    }
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    std::iter::once(&header)
        .chain(body)
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (cell, &w))| {
                    let pad = " ".repeat(w.saturating_sub(display_width(cell)));
                    if i == 0 {
                        format!("{pad}{cell}")
                    } else {
                        format!("{cell}{pad}")
                    }
                })
                .collect();
            cells.join("  ").trim_end().to_owned()
        })
        .collect()
}

/// The number of terminal columns a string takes: East Asian wide characters take two.
fn display_width(text: &str) -> usize {
    text.chars().map(char_width).sum()
}

fn char_width(c: char) -> usize {
    if c.is_control() {
        return 0;
    }
    match u32::from(c) {
        0x1100..=0x115F
        | 0x2E80..=0x303E
        | 0x3041..=0x33FF
        | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF
        | 0xA000..=0xA4CF
        | 0xAC00..=0xD7A3
        | 0xF900..=0xFAFF
        | 0xFE30..=0xFE4F
        | 0xFF00..=0xFF60
        | 0xFFE0..=0xFFE6
        | 0x1F300..=0x1F64F
        | 0x1F900..=0x1F9FF
        | 0x20000..=0x3FFFD => 2,
        _ => 1,
    }
}

/// Replaces control characters, so text from an app cannot move the cursor or recolour the
/// terminal.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// "App name (app id): timed out — customer service 95188", for an app that did not answer; for
/// one that did, its count (never "0 accounts" for an app that did not answer).
pub fn format_app_status(result: &AppResult) -> String {
    let label = clean(&app_label_with_id(&result.app_name, &result.app_id));
    let status = match result.state() {
        State::Answered => {
            let mut line = format!(
                "{label}: {}",
                plural(result.account_count as usize, "account", "accounts")
            );
            let mut notes = Vec::new();
            if result.from_cache {
                notes.push("from cache".to_owned());
            }
            notes.push(format!("{} ms", result.latency_ms));
            line.push_str(&format!(" ({})", notes.join(", ")));
            return line;
        }
        State::TimedOut => "timed out",
        State::Unavailable => "unavailable",
        State::Failed => "failed",
        State::SkippedCircuitOpen => "skipped (circuit open)",
        State::Unspecified => "no answer",
    };
    if result.customer_service.is_empty() {
        format!("{label}: {status}")
    } else {
        format!(
            "{label}: {status} — customer service {}",
            clean(&result.customer_service)
        )
    }
}

fn app_label(name: &str, id: &str) -> String {
    if name.is_empty() {
        id.to_owned()
    } else {
        name.to_owned()
    }
}

fn app_label_with_id(name: &str, id: &str) -> String {
    if name.is_empty() || name == id {
        id.to_owned()
    } else {
        format!("{name} ({id})")
    }
}

fn ownership_word(ownership: Ownership) -> &'static str {
    match ownership {
        Ownership::CurrentHolder => "yours",
        Ownership::PreviousHolder => "previous holder",
        Ownership::Unknown | Ownership::Unspecified => "unknown",
    }
}

fn ticket_state_word(state: TicketState) -> &'static str {
    match state {
        TicketState::Unspecified => "unknown",
        TicketState::Queued => "queued",
        TicketState::Sent => "sent",
        TicketState::Accepted => "accepted",
        TicketState::Completed => "completed",
        TicketState::Rejected => "rejected",
        TicketState::Failed => "failed",
    }
}

fn to_datetime(ts: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).unwrap_or(0))
}

/// YYYY-MM-DD in `tz`, or "-" when the time is absent or out of range.
fn format_date<Tz: TimeZone>(ts: Option<&prost_types::Timestamp>, tz: &Tz) -> String {
    ts.and_then(to_datetime)
        .map(|t| t.with_timezone(tz).date_naive().to_string())
        .unwrap_or_else(|| "-".to_owned())
}

/// HH:MM:SS in `tz`, or "?" when the time is absent or out of range.
fn format_clock<Tz: TimeZone>(ts: Option<&prost_types::Timestamp>, tz: &Tz) -> String {
    ts.and_then(to_datetime)
        .map(|t| {
            t.with_timezone(tz)
                .naive_local()
                .format("%H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|| "?".to_owned())
}

fn rfc3339(ts: Option<&prost_types::Timestamp>) -> Value {
    ts.and_then(to_datetime)
        .map(|t| Value::String(t.to_rfc3339_opts(SecondsFormat::Secs, true)))
        .unwrap_or(Value::Null)
}

/// One JSON line for an account; `row` is its number in the table (for `--unbind`).
pub fn account_json(row: usize, account: &LinkedAccount) -> Value {
    json!({
        "type": "account",
        "row": row,
        "app_id": account.app_id,
        "app_name": account.app_name,
        "account_ref": account.account_ref,
        "display_hint": account.display_hint,
        "bound_at": rfc3339(account.bound_at.as_ref()),
        "ownership": account.ownership().as_str_name(),
        "unbind_supported": account.unbind_supported,
        "open_ticket": account.open_ticket.as_ref().map(ticket_json),
    })
}

/// One JSON line for an app's result; `account_count` is null unless the app answered.
pub fn app_result_json(result: &AppResult) -> Value {
    let answered = result.state() == State::Answered;
    json!({
        "type": "app_result",
        "app_id": result.app_id,
        "app_name": result.app_name,
        "state": result.state().as_str_name(),
        "account_count": answered.then_some(result.account_count),
        "from_cache": result.from_cache,
        "latency_ms": result.latency_ms,
        "customer_service": result.customer_service,
    })
}

/// The closing JSON line of a look-up.
pub fn summary_json(response: &ListLinkedAccountsResponse) -> Value {
    let answered = response
        .app_results
        .iter()
        .filter(|r| r.state() == State::Answered)
        .count();
    json!({
        "type": "summary",
        "total_accounts": response.total_accounts,
        "apps_answered": answered,
        "apps_asked": response.app_results.len(),
        "complete": response.complete,
        "generated_at": rfc3339(response.generated_at.as_ref()),
    })
}

/// One JSON line for a ticket.
pub fn ticket_json(ticket: &UnbindTicket) -> Value {
    json!({
        "type": "ticket",
        "ticket_id": ticket.ticket_id,
        "app_id": ticket.app_id,
        "account_ref": ticket.account_ref,
        "state": ticket.state().as_str_name(),
        "detail": ticket.detail,
        "created_at": rfc3339(ticket.created_at.as_ref()),
        "updated_at": rfc3339(ticket.updated_at.as_ref()),
        "due_at": rfc3339(ticket.due_at.as_ref()),
        "overdue": ticket.overdue,
    })
}

/// The JSON lines of a whole look-up: every app result (unless they were already printed as
/// they streamed in), every account (numbered as in the table), then a summary.
pub fn listing_json_lines(
    response: &ListLinkedAccountsResponse,
    rows: &[LinkedAccount],
    with_app_results: bool,
) -> Vec<Value> {
    let app_results: &[AppResult] = if with_app_results {
        &response.app_results
    } else {
        &[]
    };
    app_results
        .iter()
        .map(app_result_json)
        .chain(rows.iter().enumerate().map(|(i, a)| account_json(i + 1, a)))
        .chain(std::iter::once(summary_json(response)))
        .collect()
}

/// Builds the unary answer from the stream's messages, so the rest of the flow is the same.
pub fn collect_stream(results: Vec<AppResult>) -> ListLinkedAccountsResponse {
    let complete = results.iter().all(|r| r.state() == State::Answered);
    let total: u32 = results
        .iter()
        .filter(|r| r.state() == State::Answered)
        .map(|r| r.account_count)
        .sum();
    let mut accounts = Vec::new();
    let mut app_results = Vec::with_capacity(results.len());
    for mut result in results {
        accounts.append(&mut result.accounts);
        app_results.push(result);
    }
    let now = Utc::now();
    ListLinkedAccountsResponse {
        total_accounts: total.max(u32::try_from(accounts.len()).unwrap_or(u32::MAX)),
        accounts,
        app_results,
        complete,
        generated_at: Some(prost_types::Timestamp {
            seconds: now.timestamp(),
            nanos: i32::try_from(now.timestamp_subsec_nanos()).unwrap_or(0),
        }),
        summary_sms: SummarySms::Unspecified as i32,
    }
}

/// The newest code sent to `phone` in the demo's SMS JSON-lines file contents (lines
/// `{"phone_number", "text", "sent_at"}`, text containing "code is NNNNNN"). Lines that are not
/// JSON, are for another number, or carry no code are ignored.
pub fn newest_code(contents: &str, phone: &str) -> Option<String> {
    // The file is append-only, so the newest message is the last one.
    contents
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<Value>(line.trim()).ok())
        .filter(|msg| {
            msg.get("phone_number")
                .and_then(Value::as_str)
                .is_some_and(|n| same_number(n, phone))
        })
        .filter_map(|msg| {
            msg.get("text")
                .and_then(Value::as_str)
                .and_then(extract_code)
        })
        .next()
}

/// The digits after "code is" in an SMS text.
fn extract_code(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let start = lower.find("code is")? + "code is".len();
    let digits: String = text
        .get(start..)?
        .trim_start_matches([' ', ':'])
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (!digits.is_empty()).then_some(digits)
}

/// Whether two spellings name the same number: "+86 138 0013 8000", "13800138000" and
/// "+8613800138000" all do (a bare 11-digit number is a Chinese mobile number).
fn same_number(a: &str, b: &str) -> bool {
    let (a, b) = (national_digits(a), national_digits(b));
    !a.is_empty() && a == b
}

fn national_digits(number: &str) -> String {
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    if digits.len() == 11 && digits.starts_with('1') {
        format!("86{digits}")
    } else {
        digits
    }
}

/// The lines printed for a failed call: "error: <code>: <message>", then the ErrorInfo reason,
/// the fields a BadRequest names, and the RetryInfo delay, when the gateway sent them.
pub fn describe_status(status: &Status) -> Vec<String> {
    let mut lines = vec![format!(
        "error: {}: {}",
        code_name(status.code()),
        clean(status.message())
    )];
    // A call that never reached the gateway's handler (TLS refused, connection reset): the
    // transport's own account of why, e.g. the TLS alert.
    if let Some(source) = std::error::Error::source(status) {
        lines.push(format!("cause: {}", clean(&error_chain(source))));
        lines.push(
            "hint: the call did not reach the gateway's service: check --endpoint and, for \
             https://, --ca and --tls-server-name, and --cert and --key (a gateway with tenants \
             requires a tenant's client certificate)"
                .to_owned(),
        );
    }
    let details = status.get_error_details();
    if let Some(info) = details.error_info() {
        if !info.reason.is_empty() {
            lines.push(format!("reason: {}", clean(&info.reason)));
        }
    }
    if let Some(bad) = details.bad_request() {
        for v in &bad.field_violations {
            lines.push(format!(
                "field {}: {}",
                clean(&v.field),
                clean(&v.description)
            ));
        }
    }
    if let Some(delay) = details.retry_info().and_then(|r| r.retry_delay) {
        lines.push(format!(
            "retry after {}",
            humantime::format_duration(Duration::from_secs(delay.as_secs().max(1)))
        ));
    }
    lines
}

/// An error and its causes, "a: b: c", without repeats.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

fn error_reason(status: &Status) -> Option<String> {
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
}

/// Prints a failed call and turns it into the error `run` returns (so the exit code is non-zero).
fn report(rpc: &str, status: &Status) -> anyhow::Error {
    for line in describe_status(status) {
        eprintln!("{line}");
    }
    anyhow!("{rpc} failed: {}", code_name(status.code()))
}

/// Accepts "host:port" as shorthand for "http://host:port".
fn normalise_endpoint(endpoint: &str) -> anyhow::Result<String> {
    let endpoint = endpoint.trim();
    if endpoint.contains("://") {
        Ok(endpoint.to_owned())
    } else {
        Ok(format!("http://{endpoint}"))
    }
}

/// Where informational lines go: stdout normally, stderr with `--json` so stdout stays JSON.
#[derive(Clone, Copy)]
struct Printer {
    json: bool,
}

impl Printer {
    fn info(self, line: &str) {
        if self.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }

    fn json_line(self, value: &Value) {
        println!("{value}");
    }
}

/// Writes `question` to stderr and reads one trimmed line from stdin (on a blocking thread).
async fn prompt(question: &str) -> anyhow::Result<String> {
    let question = question.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let mut err = std::io::stderr().lock();
        write!(err, "{question}")?;
        err.flush()?;
        let mut line = String::new();
        let read = std::io::stdin().lock().read_line(&mut line)?;
        if read == 0 {
            bail!("no answer: standard input is closed");
        }
        Ok(line.trim().to_owned())
    })
    .await
    .context("reading standard input")?
}

/// Asks until a non-empty answer comes (once only when stdin is not a terminal).
async fn prompt_required(question: &str, interactive: bool) -> anyhow::Result<String> {
    loop {
        let answer = prompt(question).await?;
        if !answer.is_empty() {
            return Ok(answer);
        }
        if !interactive {
            bail!("no answer to \"{}\"", question.trim_end_matches([':', ' ']));
        }
    }
}

/// The size of the SMS file now, so only messages written after it count.
async fn sms_file_len(path: &Path) -> u64 {
    tokio::fs::metadata(path)
        .await
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Waits (up to 10 s, re-reading every 200 ms) for a code to `phone` written after `offset`.
async fn wait_for_sms_code(path: &Path, phone: &str, offset: u64) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + SMS_WAIT;
    loop {
        match tokio::fs::read(path).await {
            Ok(bytes) => {
                // A file that shrank was replaced: everything in it is new.
                let start = usize::try_from(offset)
                    .ok()
                    .filter(|&s| s <= bytes.len())
                    .unwrap_or(0);
                let fresh = String::from_utf8_lossy(&bytes[start..]);
                if let Some(code) = newest_code(&fresh, phone) {
                    return Ok(code);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "no code for this number appeared in {} within {} s (none is sent when the ID \
                 characters do not match the number)",
                path.display(),
                SMS_WAIT.as_secs()
            );
        }
        tokio::time::sleep(SMS_POLL).await;
    }
}

async fn connect(
    endpoint: &str,
    tls: &ClientTlsArgs,
) -> anyhow::Result<AccountGatewayClient<Channel>> {
    let endpoint = normalise_endpoint(endpoint)?;
    let mut target = Endpoint::from_shared(endpoint.clone())
        .with_context(|| format!("invalid endpoint {endpoint}"))?
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(config) = tls.config(&endpoint)? {
        target = target
            .tls_config(config)
            .context("cannot use the TLS settings given with --ca / --cert / --key")?;
    }
    let channel = target
        .connect()
        .await
        .with_context(|| format!("cannot connect to the gateway at {endpoint}"))?;
    Ok(AccountGatewayClient::new(channel))
}

/// Runs `unbind-gateway query`. Any failed call is printed as "error: <code>: <message>" (plus
/// the gateway's reason) and returned as an error, so the process exits non-zero.
/// Most account refs sent in one `Unbind` request (the gateway's default limit).
const UNBIND_CHUNK: usize = 100;

pub async fn run(args: QueryArgs) -> anyhow::Result<()> {
    run_with(args, std::io::stdin().is_terminal()).await
}

/// `run`, with whether to ask questions (stdin is a terminal) decided by the caller.
async fn run_with(args: QueryArgs, interactive: bool) -> anyhow::Result<()> {
    let out = Printer { json: args.json };
    let mut client = connect(&args.endpoint, &args.tls).await?;

    let phone = match args.phone.as_deref().map(str::trim) {
        Some(p) if !p.is_empty() => p.to_owned(),
        _ => prompt_required("Mobile number: ", interactive).await?,
    };
    let id_last_six = match args.id_last_six.as_deref().map(str::trim) {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => prompt_required("Last six characters of the holder's ID: ", interactive).await?,
    };

    // Measured before the code is sent, so an older code in the file is never picked up.
    let sms_file = match (&args.code, &args.code_from_sms_file) {
        (None, Some(path)) => Some((path.as_path(), sms_file_len(path).await)),
        _ => None,
    };

    let started = client
        .start_verification(StartVerificationRequest {
            phone_number: phone.clone(),
            id_last_six,
        })
        .await
        .map_err(|s| report("StartVerification", &s))?
        .into_inner();
    out.info(&format!(
        "A code was sent by SMS to the number if it matches the ID characters (valid until {}).",
        format_clock(started.expires_at.as_ref(), &Local)
    ));

    let verified = complete_verification(
        &mut client,
        &args,
        &phone,
        &started.verification_id,
        started.code_length,
        sms_file,
        interactive,
    )
    .await?;
    out.info(&format!("Verified {}", clean(&verified.phone_number)));
    let session = verified.session_token;

    let request = ListLinkedAccountsRequest {
        session_token: session.clone(),
        app_ids: args
            .apps
            .iter()
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect(),
        summary_only: args.summary_only,
        bypass_cache: args.bypass_cache,
        deliver_by_sms: args.sms,
    };
    let response = if args.stream {
        stream_lookup(&mut client, request, args.deadline, out).await?
    } else {
        let mut request = Request::new(request);
        request.set_timeout(args.deadline);
        client
            .list_linked_accounts(request)
            .await
            .map_err(|s| report("ListLinkedAccounts", &s))?
            .into_inner()
    };

    let rows = ordered_accounts(&response.accounts);
    if args.json {
        for line in listing_json_lines(&response, &rows, !args.stream) {
            out.json_line(&line);
        }
    } else {
        println!("{}", render_listing(&response, &rows, &Local));
    }
    if args.sms {
        out.info(match response.summary_sms() {
            SummarySms::Sent => "A summary was also sent by SMS.",
            _ => "No SMS was sent: this number has had its summaries for this hour.",
        });
    }

    let (selection, resolved) = match &args.unbind {
        Some(selection) => (
            selection.clone(),
            resolve_selection(selection, &rows).map_err(|e| anyhow!(e))?,
        ),
        None if interactive && !rows.is_empty() => ask_selection(&rows).await?,
        None => (Selection::Nothing, Resolved::default()),
    };
    for note in &resolved.skipped {
        out.info(&format!("skipped {note}"));
    }
    if resolved.chosen.is_empty() {
        if selection != Selection::Nothing {
            out.info("Nothing to unbind.");
        }
        return Ok(());
    }
    if interactive && args.unbind.is_none() && !confirm(&resolved).await? {
        out.info("Nothing was unbound.");
        return Ok(());
    }

    let app_names: HashMap<String, String> = rows
        .iter()
        .map(|a| (a.app_id.clone(), a.app_name.clone()))
        .collect();
    // The gateway takes at most UNBIND_CHUNK refs per request: send them in chunks, each with
    // its own idempotency key (a retry of a chunk would reuse its key).
    let refs: Vec<String> = resolved
        .chosen
        .iter()
        .map(|&i| rows[i].account_ref.clone())
        .collect();
    let batch_key = format!("{:032x}", rand::random::<u128>());
    let mut tickets = Vec::with_capacity(refs.len());
    for (n, chunk) in refs.chunks(UNBIND_CHUNK).enumerate() {
        let answer = client
            .unbind(UnbindRequest {
                session_token: session.clone(),
                account_refs: chunk.to_vec(),
                idempotency_key: format!("{batch_key}-{n}"),
            })
            .await
            .map_err(|s| report("Unbind", &s))?
            .into_inner();
        tickets.extend(answer.tickets);
    }
    if args.json {
        for ticket in &tickets {
            out.json_line(&ticket_json(ticket));
        }
    } else {
        println!();
        println!(
            "{}",
            plural(tickets.len(), "unbind ticket", "unbind tickets")
        );
        for line in format_tickets_table(&tickets, &app_names, &Local) {
            println!("{line}");
        }
    }

    if args.watch || interactive {
        watch(&mut client, &session, tickets, &app_names, out).await?;
    }
    Ok(())
}

/// Trades the code for a session. A code typed at the prompt may be retyped after a typo.
async fn complete_verification(
    client: &mut AccountGatewayClient<Channel>,
    args: &QueryArgs,
    phone: &str,
    verification_id: &str,
    code_length: u32,
    sms_file: Option<(&Path, u64)>,
    interactive: bool,
) -> anyhow::Result<CompleteVerificationResponse> {
    let question = if code_length > 0 {
        format!("Code from the SMS ({code_length} digits): ")
    } else {
        "Code from the SMS: ".to_owned()
    };
    for attempt in 1..=CODE_TRIES {
        let (code, typed) = match (attempt, &args.code, sms_file) {
            (1, Some(code), _) => (code.trim().to_owned(), false),
            (1, None, Some((path, offset))) => {
                let code = wait_for_sms_code(path, phone, offset).await?;
                eprintln!("Read the code from {}.", path.display());
                (code, false)
            }
            _ => (prompt_required(&question, interactive).await?, true),
        };
        let answer = client
            .complete_verification(CompleteVerificationRequest {
                verification_id: verification_id.to_owned(),
                code,
            })
            .await;
        match answer {
            Ok(response) => return Ok(response.into_inner()),
            Err(status)
                if typed
                    && interactive
                    && attempt < CODE_TRIES
                    && error_reason(&status).as_deref() == Some("INVALID_CODE") =>
            {
                for line in describe_status(&status) {
                    eprintln!("{line}");
                }
            }
            Err(status) => return Err(report("CompleteVerification", &status)),
        }
    }
    bail!("the code was not accepted")
}

/// Runs the streaming look-up, printing each app's line as it answers.
async fn stream_lookup(
    client: &mut AccountGatewayClient<Channel>,
    request: ListLinkedAccountsRequest,
    deadline: Duration,
    out: Printer,
) -> anyhow::Result<ListLinkedAccountsResponse> {
    let mut request = Request::new(request);
    request.set_timeout(deadline);
    let response = client
        .stream_linked_accounts(request)
        .await
        .map_err(|s| report("StreamLinkedAccounts", &s))?;
    let summary_sms = match response
        .metadata()
        .get(crate::api::gateway::SUMMARY_SMS_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        Some("sent") => SummarySms::Sent,
        Some("limited") => SummarySms::Limited,
        _ => SummarySms::Unspecified,
    };
    let mut stream = response.into_inner();
    let mut results = Vec::new();
    while let Some(result) = stream
        .message()
        .await
        .map_err(|s| report("StreamLinkedAccounts", &s))?
    {
        if out.json {
            out.json_line(&app_result_json(&result));
        } else {
            println!("{}", format_app_status(&result));
        }
        results.push(result);
    }
    if !out.json {
        println!();
    }
    Ok(ListLinkedAccountsResponse {
        summary_sms: summary_sms as i32,
        ..collect_stream(results)
    })
}

/// Asks until the answer names rows that exist (or nothing).
async fn ask_selection(rows: &[LinkedAccount]) -> anyhow::Result<(Selection, Resolved)> {
    loop {
        let answer =
            prompt("Unbind which accounts? (row numbers, 'previous', 'all', or Enter for none) ")
                .await?;
        match parse_selection(&answer)
            .and_then(|selection| Ok((selection.clone(), resolve_selection(&selection, rows)?)))
        {
            Ok(chosen) => return Ok(chosen),
            Err(e) => eprintln!("{e}"),
        }
    }
}

async fn confirm(resolved: &Resolved) -> anyhow::Result<bool> {
    let numbers: Vec<String> = resolved
        .chosen
        .iter()
        .map(|i| (i + 1).to_string())
        .collect();
    let answer = prompt(&format!(
        "Unbind {} (rows {})? [y/N] ",
        plural(resolved.chosen.len(), "account", "accounts"),
        numbers.join(", ")
    ))
    .await?;
    Ok(matches!(answer.to_ascii_lowercase().as_str(), "y" | "yes"))
}

/// The tickets whose state differs from `known`, with the state they had (None if new).
pub fn ticket_changes<'a>(
    known: &BTreeMap<String, TicketState>,
    tickets: &'a [UnbindTicket],
) -> Vec<(&'a UnbindTicket, Option<TicketState>)> {
    tickets
        .iter()
        .filter_map(|t| {
            let before = known.get(&t.ticket_id).copied();
            (before != Some(t.state())).then_some((t, before))
        })
        .collect()
}

/// Polls the tickets every second until each is COMPLETED, REJECTED or FAILED, or 60 s pass,
/// printing every change of state.
async fn watch(
    client: &mut AccountGatewayClient<Channel>,
    session: &str,
    tickets: Vec<UnbindTicket>,
    app_names: &HashMap<String, String>,
    out: Printer,
) -> anyhow::Result<()> {
    let ids: Vec<String> = tickets.iter().map(|t| t.ticket_id.clone()).collect();
    let mut known: BTreeMap<String, TicketState> = tickets
        .iter()
        .map(|t| (t.ticket_id.clone(), t.state()))
        .collect();
    let mut apps: BTreeMap<String, String> = tickets
        .iter()
        .map(|t| (t.ticket_id.clone(), ticket_app(t, app_names)))
        .collect();
    let deadline = tokio::time::Instant::now() + WATCH_FOR;
    if !known.values().all(|&s| is_terminal(s)) {
        out.info(&format!(
            "Watching the tickets for up to {} s...",
            WATCH_FOR.as_secs()
        ));
    }
    loop {
        if known.values().all(|&s| is_terminal(s)) {
            out.info("Every unbind ticket has finished.");
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let pending = known.values().filter(|&&s| !is_terminal(s)).count();
            out.info(&format!(
                "{} still under way after {} s; the apps have until the due date.",
                plural(pending, "ticket is", "tickets are"),
                WATCH_FOR.as_secs()
            ));
            return Ok(());
        }
        tokio::time::sleep(WATCH_EVERY).await;
        let current = client
            .get_unbind_tickets(GetUnbindTicketsRequest {
                session_token: session.to_owned(),
                ticket_ids: ids.clone(),
            })
            .await
            .map_err(|s| report("GetUnbindTickets", &s))?
            .into_inner()
            .tickets;
        for (ticket, before) in ticket_changes(&known, &current) {
            if out.json {
                out.json_line(&ticket_json(ticket));
            } else {
                let app = apps
                    .entry(ticket.ticket_id.clone())
                    .or_insert_with(|| ticket_app(ticket, app_names));
                let from = before.map(ticket_state_word).unwrap_or("new");
                let mut line = format!(
                    "ticket {} ({}): {from} -> {}",
                    clean(&ticket.ticket_id),
                    clean(app),
                    ticket_state_word(ticket.state())
                );
                if !ticket.detail.is_empty() {
                    line.push_str(&format!(" ({})", clean(&ticket.detail)));
                }
                println!("{line}");
            }
        }
        for ticket in &current {
            known.insert(ticket.ticket_id.clone(), ticket.state());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use tonic::Code;
    use tonic_types::{ErrorDetails, FieldViolation};

    fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    // 2019-03-02T00:00:00Z and 2023-01-10T00:00:00Z.
    const MARCH_2019: i64 = 1_551_484_800;
    const JAN_2023: i64 = 1_673_308_800;

    fn account(
        app_id: &str,
        app_name: &str,
        hint: &str,
        ownership: Ownership,
        supported: bool,
    ) -> LinkedAccount {
        LinkedAccount {
            app_id: app_id.to_owned(),
            app_name: app_name.to_owned(),
            account_ref: format!("ref-{app_id}-{hint}"),
            display_hint: hint.to_owned(),
            bound_at: ts(if ownership == Ownership::PreviousHolder {
                MARCH_2019
            } else {
                JAN_2023
            }),
            ownership: ownership as i32,
            unbind_supported: supported,
            open_ticket: None,
        }
    }

    fn result(app_id: &str, app_name: &str, state: State, count: u32) -> AppResult {
        AppResult {
            app_id: app_id.to_owned(),
            app_name: app_name.to_owned(),
            state: state as i32,
            account_count: count,
            customer_service: format!("cs-{app_id}"),
            ..Default::default()
        }
    }

    fn ticket(id: &str, app_id: &str, state: TicketState) -> UnbindTicket {
        UnbindTicket {
            ticket_id: id.to_owned(),
            app_id: app_id.to_owned(),
            state: state as i32,
            due_at: ts(JAN_2023),
            ..Default::default()
        }
    }

    /// Rows in table order: alipay (previous, yours), taobao (previous, unsupported), wechat (unknown).
    fn sample_rows() -> Vec<LinkedAccount> {
        let mut unknown = account("wechat", "WeChat", "w***n", Ownership::Unknown, true);
        unknown.bound_at = None;
        ordered_accounts(&[
            unknown,
            account("alipay", "Alipay", "z***g", Ownership::PreviousHolder, true),
            account(
                "taobao",
                "Taobao",
                "t***o",
                Ownership::PreviousHolder,
                false,
            ),
            account("alipay", "Alipay", "l***i", Ownership::CurrentHolder, true),
        ])
    }

    #[test]
    fn selection_words() {
        assert_eq!(parse_selection(""), Ok(Selection::Nothing));
        assert_eq!(parse_selection("  "), Ok(Selection::Nothing));
        assert_eq!(parse_selection("none"), Ok(Selection::Nothing));
        assert_eq!(parse_selection("previous"), Ok(Selection::Previous));
        assert_eq!(parse_selection(" Previous "), Ok(Selection::Previous));
        assert_eq!(parse_selection("ALL"), Ok(Selection::All));
    }

    #[test]
    fn selection_rows_and_ranges() {
        assert_eq!(parse_selection("1,3,5"), Ok(Selection::Rows(vec![1, 3, 5])));
        assert_eq!(parse_selection("2-4"), Ok(Selection::Rows(vec![2, 3, 4])));
        assert_eq!(parse_selection("7"), Ok(Selection::Rows(vec![7])));
        assert_eq!(
            parse_selection("5, 1-3 2,5"),
            Ok(Selection::Rows(vec![5, 1, 2, 3]))
        );
        assert_eq!(parse_selection("3-3"), Ok(Selection::Rows(vec![3])));
    }

    #[test]
    fn selection_rejects_nonsense() {
        for bad in [
            "0",
            "4-2",
            "x",
            "1,x",
            "1-",
            "-3",
            "1.5",
            "1-2-3",
            ",",
            "1-999999999",
            "99999999999999999999999",
        ] {
            assert!(parse_selection(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn previous_picks_previous_holders_that_can_be_unbound() {
        let rows = sample_rows();
        let resolved = resolve_selection(&Selection::Previous, &rows).unwrap();
        // Row 1 is Alipay's previous holder's account; Taobao's cannot be unbound.
        assert_eq!(resolved.chosen, vec![0]);
        assert_eq!(resolved.skipped.len(), 1);
        assert!(resolved.skipped[0].contains("row 3 (Taobao)"));
    }

    #[test]
    fn all_skips_unsupported_and_open_tickets() {
        let mut rows = sample_rows();
        rows[1].open_ticket = Some(ticket("t1", "alipay", TicketState::Sent));
        let resolved = resolve_selection(&Selection::All, &rows).unwrap();
        assert_eq!(resolved.chosen, vec![0, 3]);
        assert_eq!(resolved.skipped.len(), 2);
        assert!(resolved.skipped[0].contains("already under way (sent)"));
        // A finished ticket does not block a new unbind.
        rows[1].open_ticket = Some(ticket("t1", "alipay", TicketState::Rejected));
        let resolved = resolve_selection(&Selection::All, &rows).unwrap();
        assert_eq!(resolved.chosen, vec![0, 1, 3]);
    }

    #[test]
    fn rows_resolve_in_order_and_out_of_range_is_an_error() {
        let rows = sample_rows();
        let resolved = resolve_selection(&Selection::Rows(vec![4, 1]), &rows).unwrap();
        assert_eq!(resolved.chosen, vec![3, 0]);
        let err = resolve_selection(&Selection::Rows(vec![1, 5]), &rows).unwrap_err();
        assert!(err.contains("no row 5"), "{err}");
        assert!(resolve_selection(&Selection::Rows(vec![1]), &[]).is_err());
        assert_eq!(
            resolve_selection(&Selection::Nothing, &rows).unwrap(),
            Resolved::default()
        );
    }

    #[test]
    fn table_is_grouped_by_app_and_numbered() {
        let rows = sample_rows();
        let apps: Vec<&str> = rows.iter().map(|a| a.app_id.as_str()).collect();
        // Grouped by app name; the gateway's order kept inside Alipay.
        assert_eq!(apps, ["alipay", "alipay", "taobao", "wechat"]);
        assert_eq!(rows[0].display_hint, "z***g");

        let mut rows = rows;
        rows[1].open_ticket = Some(ticket("t1", "alipay", TicketState::Accepted));
        let lines = format_accounts_table(&rows, &Utc);
        assert_eq!(lines.len(), 5);
        assert!(lines[0].starts_with("#  App"), "{}", lines[0]);
        let words = |i: usize| lines[i].split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(words(1), "1 Alipay previous holder z***g 2019-03-02 yes");
        assert_eq!(words(2), "2 Alipay yours l***i 2023-01-10 yes accepted");
        assert_eq!(words(3), "3 Taobao previous holder t***o 2019-03-02 no");
        assert_eq!(words(4), "4 WeChat unknown w***n - yes");
        // Columns line up: "Ownership" starts at the same place on every line.
        let col = lines[0].find("Ownership").unwrap();
        assert_eq!(&lines[2][col..col + 5], "yours");
    }

    #[test]
    fn apps_sort_naturally() {
        let mut names = vec![
            "Bank 10", "Bank 2", "Bank 1", "Bank", "Chat 1", "Bank 02", "银行",
        ];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            [
                "Bank", "Bank 1", "Bank 2", "Bank 02", "Bank 10", "Chat 1", "银行"
            ]
        );
        let rows = ordered_accounts(&[
            account(
                "app-010",
                "Sim Bank 10",
                "a***a",
                Ownership::CurrentHolder,
                true,
            ),
            account(
                "app-002",
                "Sim Bank 2",
                "b***b",
                Ownership::CurrentHolder,
                true,
            ),
        ]);
        assert_eq!(rows[0].app_id, "app-002");
        // Without an open ticket the Ticket column is left out.
        let lines = format_accounts_table(&rows, &Utc);
        assert!(lines[0].ends_with("Unbind"), "{}", lines[0]);
    }

    #[test]
    fn table_aligns_wide_characters_and_strips_control_characters() {
        let rows = vec![
            account("wx", "微信", "a***b", Ownership::CurrentHolder, true),
            account(
                "zz",
                "Zed\u{1b}[31m",
                "c***d",
                Ownership::CurrentHolder,
                true,
            ),
        ];
        let lines = format_accounts_table(&rows, &Utc);
        assert!(!lines.iter().any(|l| l.contains('\u{1b}')));
        let own_at = |l: &str| display_width(&l[..l.find("yours").unwrap()]);
        assert_eq!(own_at(&lines[1]), own_at(&lines[2]));
        assert_eq!(display_width("微信"), 4);
    }

    #[test]
    fn listing_reports_missing_apps_and_counts_empty_ones() {
        let rows = sample_rows();
        let mut app_results = vec![
            result("alipay", "Alipay", State::Answered, 2),
            result("taobao", "Taobao", State::Answered, 1),
            result("wechat", "WeChat", State::Answered, 1),
            result("slow", "Slow App", State::TimedOut, 0),
            result("down", "Down App", State::SkippedCircuitOpen, 0),
            result("gone", "Gone App", State::Unavailable, 0),
            result("bad", "Bad App", State::Failed, 0),
        ];
        for i in 0..183 {
            app_results.push(result(&format!("e{i}"), "Empty", State::Answered, 0));
        }
        let response = ListLinkedAccountsResponse {
            accounts: rows.clone(),
            app_results,
            total_accounts: 4,
            complete: false,
            generated_at: ts(JAN_2023),
            summary_sms: 0,
        };
        let text = render_listing(&response, &rows, &Utc);
        let first = text.lines().next().unwrap();
        assert_eq!(
            first,
            "4 accounts found; 186 of 190 apps answered; INCOMPLETE: apps that did not answer are listed below"
        );
        assert!(text.contains("Slow App (slow): timed out — customer service cs-slow"));
        assert!(
            text.contains("Down App (down): skipped (circuit open) — customer service cs-down")
        );
        assert!(text.contains("Gone App (gone): unavailable"));
        assert!(text.contains("Bad App (bad): failed"));
        assert!(text.contains("183 apps have no account bound to this number"));
        // An app that did not answer is never reported as having no account.
        assert!(!text.contains("Slow App (slow): 0"));
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().take(2).eq(["3", "Taobao"])),
            "{text}"
        );
    }

    #[test]
    fn listing_complete_and_summary_only() {
        let response = ListLinkedAccountsResponse {
            accounts: vec![],
            app_results: vec![
                result("alipay", "Alipay", State::Answered, 2),
                result("empty", "Empty", State::Answered, 0),
            ],
            total_accounts: 2,
            complete: true,
            generated_at: None,
            summary_sms: 0,
        };
        let text = render_listing(&response, &[], &Utc);
        assert!(text.starts_with("2 accounts found; 2 of 2 apps answered; complete"));
        assert!(text.contains("Alipay (alipay): 2 accounts"));
        assert!(text.contains("1 app has no account bound to this number"));
        assert!(!text.contains("did not answer"));
    }

    #[test]
    fn app_status_line_for_an_answer() {
        let mut r = result("alipay", "Alipay", State::Answered, 1);
        r.from_cache = true;
        r.latency_ms = 35;
        assert_eq!(
            format_app_status(&r),
            "Alipay (alipay): 1 account (from cache, 35 ms)"
        );
        let mut r = result("x", "", State::TimedOut, 0);
        r.customer_service.clear();
        assert_eq!(format_app_status(&r), "x: timed out");
    }

    #[test]
    fn json_lines() {
        let rows = sample_rows();
        let line = account_json(1, &rows[0]);
        assert_eq!(line["type"], "account");
        assert_eq!(line["row"], 1);
        assert_eq!(line["ownership"], "PREVIOUS_HOLDER");
        assert_eq!(line["bound_at"], "2019-03-02T00:00:00Z");
        assert_eq!(line["account_ref"], "ref-alipay-z***g");
        assert!(line["open_ticket"].is_null());

        let missing = app_result_json(&result("slow", "Slow", State::TimedOut, 0));
        assert_eq!(missing["state"], "TIMED_OUT");
        assert!(missing["account_count"].is_null());
        let answered = app_result_json(&result("a", "A", State::Answered, 0));
        assert_eq!(answered["account_count"], 0);

        let response = ListLinkedAccountsResponse {
            accounts: rows.clone(),
            app_results: vec![result("a", "A", State::Answered, 4)],
            total_accounts: 4,
            complete: true,
            generated_at: ts(JAN_2023),
            summary_sms: 0,
        };
        assert_eq!(listing_json_lines(&response, &rows, false).len(), 4 + 1);
        let lines = listing_json_lines(&response, &rows, true);
        assert_eq!(lines.len(), 1 + 4 + 1);
        assert_eq!(lines[4]["row"], 4);
        assert_eq!(lines[5]["type"], "summary");
        assert_eq!(lines[5]["apps_answered"], 1);
        assert_eq!(lines[5]["complete"], true);
        // One line each: serialised JSON never contains a raw newline.
        assert!(lines.iter().all(|l| !l.to_string().contains('\n')));
    }

    #[test]
    fn stream_results_become_one_answer() {
        let mut a = result("alipay", "Alipay", State::Answered, 2);
        a.accounts = vec![
            account("alipay", "Alipay", "z***g", Ownership::PreviousHolder, true),
            account("alipay", "Alipay", "l***i", Ownership::CurrentHolder, true),
        ];
        let b = result("slow", "Slow", State::TimedOut, 0);
        let response = collect_stream(vec![a, b]);
        assert_eq!(response.accounts.len(), 2);
        assert_eq!(response.total_accounts, 2);
        assert_eq!(response.app_results.len(), 2);
        assert!(!response.complete);
        assert!(response.app_results[0].accounts.is_empty());
        assert!(collect_stream(vec![result("a", "A", State::Answered, 3)]).complete);
        assert_eq!(
            collect_stream(vec![result("a", "A", State::Answered, 3)]).total_accounts,
            3
        );
    }

    #[test]
    fn sms_file_newest_code_for_the_number() {
        let file = concat!(
            r#"{"phone_number":"+8613800138000","text":"Your unbind code is 111111.","sent_at":"2024-01-01T00:00:00Z"}"#,
            "\n",
            "not json\n",
            r#"{"phone_number":"+8613900139000","text":"Your code is 999999","sent_at":"2024-01-01T00:00:01Z"}"#,
            "\n",
            r#"{"phone_number":"+8613800138000","text":"You have 2 accounts","sent_at":"2024-01-01T00:00:02Z"}"#,
            "\n",
            r#"{"phone_number":"+8613800138000","text":"Your unbind code is 222222, valid 5 minutes","sent_at":"2024-01-01T00:00:03Z"}"#,
            "\n",
            r#"{"phone_number":"+8613800138000","text":"#,
        );
        assert_eq!(
            newest_code(file, "+8613800138000").as_deref(),
            Some("222222")
        );
        // A bare 11-digit number, or one with spaces, is the same +86 number.
        assert_eq!(newest_code(file, "13800138000").as_deref(), Some("222222"));
        assert_eq!(
            newest_code(file, "+86 138 0013 8000").as_deref(),
            Some("222222")
        );
        assert_eq!(newest_code(file, "13900139000").as_deref(), Some("999999"));
        assert_eq!(newest_code(file, "13700137000"), None);
        assert_eq!(newest_code("", "13800138000"), None);
        assert_eq!(extract_code("Code is: 123456"), Some("123456".to_owned()));
        assert_eq!(extract_code("code is soon"), None);
    }

    #[tokio::test]
    async fn sms_file_ignores_codes_written_before_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sms.jsonl");
        let old = r#"{"phone_number":"+8613800138000","text":"code is 111111","sent_at":"x"}"#;
        std::fs::write(&path, format!("{old}\n")).unwrap();
        let offset = sms_file_len(&path).await;
        let new = r#"{"phone_number":"+8613800138000","text":"code is 333333","sent_at":"y"}"#;
        std::fs::write(&path, format!("{old}\n{new}\n")).unwrap();
        let code = wait_for_sms_code(&path, "13800138000", offset)
            .await
            .unwrap();
        assert_eq!(code, "333333");
    }

    #[tokio::test(start_paused = true)]
    async fn sms_file_gives_up_after_ten_seconds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.jsonl");
        let err = wait_for_sms_code(&path, "13800138000", 0)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("within 10 s"), "{err}");
    }

    #[test]
    fn status_lines_carry_code_reason_and_fields() {
        let mut details =
            ErrorDetails::with_error_info("INVALID_ID_LAST_SIX", "unbind-gateway", HashMap::new());
        details.set_bad_request(vec![FieldViolation::new(
            "id_last_six",
            "five digits then a digit or X",
        )]);
        details.set_retry_info(Some(Duration::from_secs(30)));
        let status =
            Status::with_error_details(Code::InvalidArgument, "bad ID characters", details);
        assert_eq!(
            describe_status(&status),
            [
                "error: INVALID_ARGUMENT: bad ID characters",
                "reason: INVALID_ID_LAST_SIX",
                "field id_last_six: five digits then a digit or X",
                "retry after 30s",
            ]
        );
        assert_eq!(
            error_reason(&status).as_deref(),
            Some("INVALID_ID_LAST_SIX")
        );
        let plain = Status::unauthenticated("session expired");
        assert_eq!(
            describe_status(&plain),
            ["error: UNAUTHENTICATED: session expired"]
        );
        assert_eq!(error_reason(&plain), None);
    }

    #[test]
    fn ticket_table_and_changes() {
        let names: HashMap<String, String> = [("alipay".to_owned(), "Alipay".to_owned())]
            .into_iter()
            .collect();
        let mut late = ticket("t2", "other", TicketState::Sent);
        late.overdue = true;
        late.detail = "retrying".to_owned();
        let tickets = vec![ticket("t1", "alipay", TicketState::Queued), late];
        let lines = format_tickets_table(&tickets, &names, &Utc);
        let words = |i: usize| lines[i].split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(words(0), "Ticket App State Due Detail");
        assert_eq!(words(1), "t1 Alipay queued 2023-01-10");
        assert_eq!(words(2), "t2 other sent 2023-01-10 (overdue) retrying");

        let known: BTreeMap<String, TicketState> = [
            ("t1".to_owned(), TicketState::Queued),
            ("t2".to_owned(), TicketState::Queued),
        ]
        .into_iter()
        .collect();
        let changes = ticket_changes(&known, &tickets);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].0.ticket_id, "t2");
        assert_eq!(changes[0].1, Some(TicketState::Queued));
        assert!(is_terminal(TicketState::Completed) && !is_terminal(TicketState::Accepted));
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            normalise_endpoint("127.0.0.1:50051").unwrap(),
            "http://127.0.0.1:50051"
        );
        assert_eq!(normalise_endpoint(" http://gw:1 ").unwrap(), "http://gw:1");
        assert_eq!(normalise_endpoint("https://gw:1").unwrap(), "https://gw:1");
    }

    /// A scripted gateway on 127.0.0.1:0 that records what `run` sends it.
    #[derive(Default)]
    struct FakeGateway {
        seen: std::sync::Mutex<Seen>,
        /// The status CompleteVerification fails with, if any.
        fail_complete: Option<Code>,
    }

    #[derive(Default)]
    struct Seen {
        phone: String,
        id_last_six: String,
        code: String,
        app_ids: Vec<String>,
        lookup_timeout: Option<String>,
        streamed: bool,
        unbind: Option<UnbindRequest>,
        polls: usize,
    }

    const SESSION: &str = "session-token-secret";

    fn fake_accounts() -> Vec<LinkedAccount> {
        vec![
            account(
                "app-2",
                "Sim Bank 2",
                "z***g",
                Ownership::PreviousHolder,
                true,
            ),
            account(
                "app-10",
                "Sim Bank 10",
                "l***i",
                Ownership::CurrentHolder,
                true,
            ),
            account(
                "app-10",
                "Sim Bank 10",
                "w***u",
                Ownership::PreviousHolder,
                true,
            ),
            account(
                "app-10",
                "Sim Bank 10",
                "q***n",
                Ownership::PreviousHolder,
                false,
            ),
        ]
    }

    fn fake_results() -> Vec<AppResult> {
        vec![
            result("app-2", "Sim Bank 2", State::Answered, 1),
            result("app-10", "Sim Bank 10", State::Answered, 3),
            result("app-3", "Sim Slow 3", State::TimedOut, 0),
        ]
    }

    fn session_ok(token: &str) -> Result<(), Status> {
        if token == SESSION {
            Ok(())
        } else {
            Err(Status::unauthenticated("invalid session"))
        }
    }

    #[tonic::async_trait]
    impl crate::proto::account_gateway_server::AccountGateway for FakeGateway {
        async fn start_verification(
            &self,
            request: Request<StartVerificationRequest>,
        ) -> Result<tonic::Response<crate::proto::StartVerificationResponse>, Status> {
            let request = request.into_inner();
            let mut seen = self.seen.lock().unwrap();
            seen.phone = request.phone_number;
            seen.id_last_six = request.id_last_six;
            Ok(tonic::Response::new(
                crate::proto::StartVerificationResponse {
                    verification_id: "v1".to_owned(),
                    expires_at: ts(JAN_2023),
                    code_length: 6,
                },
            ))
        }

        async fn complete_verification(
            &self,
            request: Request<CompleteVerificationRequest>,
        ) -> Result<tonic::Response<CompleteVerificationResponse>, Status> {
            self.seen.lock().unwrap().code = request.into_inner().code;
            if let Some(code) = self.fail_complete {
                let details =
                    ErrorDetails::with_error_info("INVALID_CODE", "unbind-gateway", HashMap::new());
                return Err(Status::with_error_details(code, "wrong code", details));
            }
            Ok(tonic::Response::new(CompleteVerificationResponse {
                session_token: SESSION.to_owned(),
                expires_at: ts(JAN_2023),
                phone_number: "+86 138****8000".to_owned(),
                holder_since: None,
            }))
        }

        async fn list_linked_accounts(
            &self,
            request: Request<ListLinkedAccountsRequest>,
        ) -> Result<tonic::Response<ListLinkedAccountsResponse>, Status> {
            let timeout = request
                .metadata()
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let request = request.into_inner();
            session_ok(&request.session_token)?;
            let mut seen = self.seen.lock().unwrap();
            seen.app_ids = request.app_ids;
            seen.lookup_timeout = timeout;
            Ok(tonic::Response::new(ListLinkedAccountsResponse {
                accounts: fake_accounts(),
                app_results: fake_results(),
                total_accounts: 4,
                complete: false,
                generated_at: ts(JAN_2023),
                summary_sms: 0,
            }))
        }

        type StreamLinkedAccountsStream =
            tokio_stream::Iter<std::vec::IntoIter<Result<AppResult, Status>>>;

        async fn stream_linked_accounts(
            &self,
            request: Request<ListLinkedAccountsRequest>,
        ) -> Result<tonic::Response<Self::StreamLinkedAccountsStream>, Status> {
            session_ok(&request.get_ref().session_token)?;
            self.seen.lock().unwrap().streamed = true;
            let accounts = fake_accounts();
            let results: Vec<Result<AppResult, Status>> = fake_results()
                .into_iter()
                .map(|mut r| {
                    r.accounts = accounts
                        .iter()
                        .filter(|a| a.app_id == r.app_id)
                        .cloned()
                        .collect();
                    Ok(r)
                })
                .collect();
            Ok(tonic::Response::new(tokio_stream::iter(results)))
        }

        async fn unbind(
            &self,
            request: Request<UnbindRequest>,
        ) -> Result<tonic::Response<crate::proto::UnbindResponse>, Status> {
            let request = request.into_inner();
            session_ok(&request.session_token)?;
            let tickets = request
                .account_refs
                .iter()
                .enumerate()
                .map(|(i, r)| UnbindTicket {
                    account_ref: r.clone(),
                    ..ticket(&format!("t{i}"), "app-10", TicketState::Queued)
                })
                .collect();
            self.seen.lock().unwrap().unbind = Some(request);
            Ok(tonic::Response::new(crate::proto::UnbindResponse {
                tickets,
            }))
        }

        async fn get_unbind_tickets(
            &self,
            request: Request<GetUnbindTicketsRequest>,
        ) -> Result<tonic::Response<crate::proto::GetUnbindTicketsResponse>, Status> {
            let request = request.into_inner();
            session_ok(&request.session_token)?;
            let mut seen = self.seen.lock().unwrap();
            seen.polls += 1;
            // First poll: one done, one accepted; second poll: both done.
            let tickets = request
                .ticket_ids
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    let state = if i == 0 || seen.polls > 1 {
                        TicketState::Completed
                    } else {
                        TicketState::Accepted
                    };
                    ticket(id, "app-10", state)
                })
                .collect();
            Ok(tonic::Response::new(
                crate::proto::GetUnbindTicketsResponse { tickets },
            ))
        }

        async fn list_apps(
            &self,
            _request: Request<crate::proto::ListAppsRequest>,
        ) -> Result<tonic::Response<crate::proto::ListAppsResponse>, Status> {
            Err(Status::unimplemented("not in this fake"))
        }
    }

    /// Serves `gateway` on a free loopback port; returns its endpoint and the shared state.
    async fn serve(gateway: FakeGateway) -> (String, std::sync::Arc<FakeGateway>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let gateway = std::sync::Arc::new(gateway);
        let service =
            crate::proto::account_gateway_server::AccountGatewayServer::from_arc(gateway.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (endpoint, gateway)
    }

    fn args(endpoint: &str, extra: &[&str]) -> QueryArgs {
        let mut argv = vec!["query", "--endpoint", endpoint];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().args
    }

    #[tokio::test]
    async fn scripted_run_reads_the_sms_file_unbinds_previous_and_watches() {
        let (endpoint, gateway) = serve(FakeGateway::default()).await;
        let dir = tempfile::tempdir().unwrap();
        let sms = dir.path().join("sms.jsonl");
        // An older code for the number is already there: it must not be used.
        std::fs::write(
            &sms,
            "{\"phone_number\":\"+8613800138000\",\"text\":\"code is 111111\",\"sent_at\":\"a\"}\n",
        )
        .unwrap();
        let writer = {
            let sms = sms.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let mut file = std::fs::OpenOptions::new().append(true).open(&sms).unwrap();
                writeln!(
                    file,
                    "{{\"phone_number\":\"+8613800138000\",\"text\":\"Your code is 424242.\",\"sent_at\":\"b\"}}"
                )
                .unwrap();
            })
        };
        let sms_arg = sms.display().to_string();
        let args = args(
            &endpoint,
            &[
                "--phone",
                "13800138000",
                "--id-last-six",
                "12345X",
                "--code-from-sms-file",
                &sms_arg,
                "--apps",
                "app-2, app-10",
                "--deadline",
                "2s",
                "--unbind",
                "previous",
                "--watch",
            ],
        );
        run_with(args, false).await.unwrap();
        writer.await.unwrap();

        let seen = gateway.seen.lock().unwrap();
        assert_eq!(seen.phone, "13800138000");
        assert_eq!(seen.id_last_six, "12345X");
        assert_eq!(seen.code, "424242");
        assert_eq!(seen.app_ids, ["app-2", "app-10"]);
        assert_eq!(seen.lookup_timeout.as_deref(), Some("2000000u"));
        assert!(!seen.streamed);
        let unbind = seen.unbind.as_ref().unwrap();
        // Table order is Sim Bank 2, then Sim Bank 10: previous holders' accounts that can be
        // unbound are rows 1 and 3; row 4 cannot be unbound.
        assert_eq!(unbind.account_refs, ["ref-app-2-z***g", "ref-app-10-w***u"]);
        // A random batch key plus the chunk number.
        let (batch, chunk) = unbind.idempotency_key.split_once('-').unwrap();
        assert_eq!(batch.len(), 32);
        assert!(batch.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(chunk, "0");
        assert_eq!(seen.polls, 2, "polled until every ticket finished");
    }

    #[tokio::test]
    async fn streamed_run_with_rows_and_json() {
        let (endpoint, gateway) = serve(FakeGateway::default()).await;
        let args = args(
            &endpoint,
            &[
                "--phone",
                "13800138000",
                "--id-last-six",
                "12345X",
                "--code",
                "123456",
                "--stream",
                "--json",
                "--unbind",
                "2",
            ],
        );
        run_with(args, false).await.unwrap();
        let seen = gateway.seen.lock().unwrap();
        assert!(seen.streamed);
        assert_eq!(seen.code, "123456");
        // Row 2 is Sim Bank 10's first account; no --watch, so no polling.
        let unbind = seen.unbind.as_ref().unwrap();
        assert_eq!(unbind.account_refs, ["ref-app-10-l***i"]);
        assert_eq!(seen.polls, 0);
    }

    #[tokio::test]
    async fn failed_verification_is_an_error_and_nothing_is_listed() {
        let gateway = FakeGateway {
            fail_complete: Some(Code::InvalidArgument),
            ..Default::default()
        };
        let (endpoint, gateway) = serve(gateway).await;
        let args = args(
            &endpoint,
            &[
                "--phone",
                "13800138000",
                "--id-last-six",
                "12345X",
                "--code",
                "000000",
            ],
        );
        let err = run_with(args, false).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "CompleteVerification failed: INVALID_ARGUMENT"
        );
        assert!(gateway.seen.lock().unwrap().app_ids.is_empty());
    }

    #[tokio::test]
    async fn unknown_row_is_an_error_before_anything_is_unbound() {
        let (endpoint, gateway) = serve(FakeGateway::default()).await;
        let args = args(
            &endpoint,
            &[
                "--phone",
                "13800138000",
                "--id-last-six",
                "12345X",
                "--code",
                "123456",
                "--unbind",
                "9",
            ],
        );
        let err = run_with(args, false).await.unwrap_err();
        assert!(err.to_string().contains("no row 9"), "{err}");
        assert!(gateway.seen.lock().unwrap().unbind.is_none());
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: QueryArgs,
    }

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
