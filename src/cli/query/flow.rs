//! The query's flow as small steps, each returning a value: [`verify`] (number and ID
//! characters → code → session), [`look_up`] (the accounts, printed as a table or JSON lines),
//! [`choose`] (the rows to unbind, asked or from `--unbind`), [`unbind`] (tickets, in chunks the
//! gateway accepts) and [`watch`] (the tickets until they settle). Any failed call is printed as
//! "error: <code>: <message>" (plus the gateway's reason) and ends the run with an error.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use chrono::{Local, Utc};
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::cli::plural;
use crate::cli::support::endpoint::{endpoint_with_tls, normalise_endpoint};
use crate::cli::support::status::{Reported, describe_status, error_reason};
use crate::cli::support::text::{LINE_COLUMNS, clean, wrap};
use crate::cli::tls_args::ClientTlsArgs;
use crate::domain::{E164, IdLastSix};
use crate::proto::SummarySms;
use crate::proto::account_gateway_client::AccountGatewayClient;
use crate::proto::app_result::State;
use crate::proto::unbind_ticket::State as TicketState;
use crate::proto::{
    AppResult, CompleteVerificationRequest, CompleteVerificationResponse, GetUnbindTicketsRequest,
    LinkedAccount, ListLinkedAccountsRequest, ListLinkedAccountsResponse, StartVerificationRequest,
    UnbindRequest, UnbindTicket,
};

use super::QueryArgs;
use super::json::{app_result_json, listing_json_lines, ticket_json};
use super::prompt::{Printer, ask_selection, confirm, prompt_required};
use super::selection::{Resolved, Selection, is_terminal, ordered_accounts, resolve_selection};
use super::sms::{sms_file_len, wait_for_sms_code};
use super::table::{
    format_app_status, format_clock, format_date, format_tickets_table, render_listing,
    ticket_account, ticket_row, ticket_state_word,
};

/// Connecting to the gateway gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The gateway allows five tries per code; the prompt offers as many.
const CODE_TRIES: usize = 5;
/// How long tickets are watched after an unbind.
const WATCH_FOR: Duration = Duration::from_secs(60);
/// How often tickets are polled while watching.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// Most account refs sent in one `Unbind` request (the gateway's default limit).
const UNBIND_CHUNK: usize = 100;

/// Prints a failed call and turns it into the error `run` returns (so the exit code is non-zero,
/// and nothing more is printed).
fn report(status: &Status) -> anyhow::Error {
    for line in describe_status(status) {
        eprintln!("{}", wrap(&line, LINE_COLUMNS));
    }
    anyhow::Error::new(Reported)
}

/// Connects to the gateway named by `--endpoint` ("host:port" is short for "http://host:port").
async fn connect(
    endpoint: &str,
    tls: &ClientTlsArgs,
) -> anyhow::Result<AccountGatewayClient<Channel>> {
    let endpoint = normalise_endpoint(endpoint);
    let channel = endpoint_with_tls(&endpoint, tls, CONNECT_TIMEOUT)?
        .connect()
        .await
        .with_context(|| format!("cannot connect to the gateway at {endpoint}"))?;
    Ok(AccountGatewayClient::new(channel))
}

/// `run`, with whether to ask questions (stdin is a terminal) decided by the caller.
pub(super) async fn run_with(args: QueryArgs, interactive: bool) -> anyhow::Result<()> {
    let out = Printer { json: args.json };
    let mut client = connect(&args.endpoint, &args.tls).await?;
    let verified = verify(&mut client, &args, interactive, out).await?;
    let session = verified.session.as_str();
    let listing = look_up(&mut client, &args, &verified, out).await?;
    let Some(chosen) = choose(&args, &listing, interactive, out).await? else {
        return Ok(());
    };
    let tickets = unbind(&mut client, session, &listing, &chosen, out).await?;
    if args.watch || interactive {
        watch(&mut client, session, tickets, &listing.rows, out).await?;
    }
    Ok(())
}

/// Number and ID characters (from the flags or asked), the code (from the flag, the SMS file or
/// asked), and the session the gateway issues for them.
async fn verify(
    client: &mut AccountGatewayClient<Channel>,
    args: &QueryArgs,
    interactive: bool,
    out: Printer,
) -> anyhow::Result<Verified> {
    // Each answer is checked as it is given, before the next question: a mistyped number is
    // asked again, not found out after the ID characters were typed.
    let phone = match args.phone.as_deref().map(str::trim) {
        Some(p) if !p.is_empty() => {
            E164::parse(p)
                .map_err(|e| anyhow!("--phone: {e} (e.g. 13800138000 or +8613800138000)"))?;
            p.to_owned()
        }
        _ => {
            ask_until_valid(
                "Mobile number: ",
                interactive,
                |answer| E164::parse(answer).map(|_| ()),
                "e.g. 13800138000 or +8613800138000",
            )
            .await?
        }
    };
    let id_last_six = match args.id_last_six.as_deref().map(str::trim) {
        Some(id) if !id.is_empty() => {
            IdLastSix::parse(id).map_err(|e| anyhow!("--id-last-six: {e}"))?;
            id.to_owned()
        }
        _ => {
            ask_until_valid(
                "Last six characters of the holder's ID: ",
                interactive,
                |answer| IdLastSix::parse(answer).map(|_| ()),
                "e.g. 12345X",
            )
            .await?
        }
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
        .map_err(|s| report(&s))?
        .into_inner();
    out.info(&format!(
        "A code was sent by SMS to the number if it matches the ID characters (valid until {}).",
        format_clock(started.expires_at.as_ref(), &Local)
    ));

    let verified = complete_verification(
        client,
        args,
        &phone,
        &started.verification_id,
        started.code_length,
        sms_file,
        interactive,
    )
    .await?;
    out.info(&format!("Verified {}.", clean(&verified.phone_number)));
    if let Some(since) = verified.holder_since.as_ref() {
        out.info(&format!(
            "This number has been yours since {}. Accounts bound before then belong to a \
             previous holder of the number: you can unbind them without seeing whose they are.",
            format_date(Some(since), &Local)
        ));
    }
    Ok(Verified {
        session: verified.session_token,
        holder_since: verified.holder_since,
    })
}

/// Asks `question` until the answer passes `check`; a wrong answer is told (and, at a terminal,
/// asked again).
async fn ask_until_valid<E: std::fmt::Display>(
    question: &str,
    interactive: bool,
    check: impl Fn(&str) -> Result<(), E>,
    example: &str,
) -> anyhow::Result<String> {
    loop {
        let answer = prompt_required(question, interactive).await?;
        match check(&answer) {
            Ok(()) => return Ok(answer),
            Err(e) if interactive => eprintln!(
                "{}",
                wrap(
                    &format!("That is {e} ({example}); try again."),
                    LINE_COLUMNS
                )
            ),
            Err(e) => bail!("{}: {e} ({example})", question.trim_end_matches([':', ' '])),
        }
    }
}

/// A verified holder: the session, and since when the number has been theirs.
struct Verified {
    session: String,
    holder_since: Option<prost_types::Timestamp>,
}

/// A finished look-up: its accounts in table order (row `n` is element `n - 1`), and each app's
/// customer-service number by app id.
struct Listing {
    rows: Vec<LinkedAccount>,
    customer_service: HashMap<String, String>,
}

/// Asks the gateway for the accounts (unary, or streamed with each app's line printed as it
/// answers) and prints them.
async fn look_up(
    client: &mut AccountGatewayClient<Channel>,
    args: &QueryArgs,
    verified: &Verified,
    out: Printer,
) -> anyhow::Result<Listing> {
    let request = ListLinkedAccountsRequest {
        session_token: verified.session.clone(),
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
        stream_lookup(client, request, args.deadline, out).await?
    } else {
        let mut request = Request::new(request);
        request.set_timeout(args.deadline);
        client
            .list_linked_accounts(request)
            .await
            .map_err(|s| report(&s))?
            .into_inner()
    };

    let rows = ordered_accounts(&response.accounts);
    if args.json {
        for line in listing_json_lines(&response, &rows, !args.stream) {
            out.json_line(&line);
        }
    } else {
        println!(
            "{}",
            render_listing(&response, &rows, verified.holder_since.as_ref(), &Local)
        );
    }
    if args.sms {
        out.info(match response.summary_sms() {
            SummarySms::Sent => "A summary was also sent by SMS.",
            _ => "No SMS was sent: this number has had its summaries for this hour.",
        });
    }
    let customer_service = response
        .app_results
        .iter()
        .filter(|r| !r.customer_service.is_empty())
        .map(|r| (r.app_id.clone(), r.customer_service.clone()))
        .collect();
    Ok(Listing {
        rows,
        customer_service,
    })
}

/// The rows to unbind, from `--unbind` or asked (and confirmed) at a terminal; `None` when there
/// is nothing to unbind or the person declined.
async fn choose(
    args: &QueryArgs,
    listing: &Listing,
    interactive: bool,
    out: Printer,
) -> anyhow::Result<Option<Resolved>> {
    let (rows, contacts) = (&listing.rows, &listing.customer_service);
    let (selection, resolved) = match &args.unbind {
        Some(selection) => (
            selection.clone(),
            resolve_selection(selection, rows, contacts).map_err(|e| anyhow!(e))?,
        ),
        None if interactive && !rows.is_empty() => ask_selection(rows, contacts).await?,
        None => (Selection::Nothing, Resolved::default()),
    };
    for note in &resolved.skipped {
        out.info(&format!("skipped {note}"));
    }
    if resolved.chosen.is_empty() {
        if selection != Selection::Nothing {
            out.info("Nothing to unbind.");
        }
        return Ok(None);
    }
    if interactive && args.unbind.is_none() && !confirm(&resolved).await? {
        out.info("Nothing was unbound.");
        return Ok(None);
    }
    Ok(Some(resolved))
}

/// Sends the chosen accounts' refs and prints the tickets the gateway opened. The gateway takes
/// at most [`UNBIND_CHUNK`] refs per request: they go in chunks, each with its own idempotency
/// key (a retry of a chunk would reuse its key).
async fn unbind(
    client: &mut AccountGatewayClient<Channel>,
    session: &str,
    listing: &Listing,
    chosen: &Resolved,
    out: Printer,
) -> anyhow::Result<Vec<UnbindTicket>> {
    let refs: Vec<String> = chosen
        .chosen
        .iter()
        .map(|&i| listing.rows[i].account_ref.clone())
        .collect();
    let batch_key = format!("{:032x}", rand::random::<u128>());
    let mut tickets = Vec::with_capacity(refs.len());
    for (n, chunk) in refs.chunks(UNBIND_CHUNK).enumerate() {
        let answer = client
            .unbind(UnbindRequest {
                session_token: session.to_owned(),
                account_refs: chunk.to_vec(),
                idempotency_key: format!("{batch_key}-{n}"),
            })
            .await
            .map_err(|s| report(&s))?
            .into_inner();
        tickets.extend(answer.tickets);
    }
    if out.json {
        for ticket in &tickets {
            out.json_line(&ticket_json(ticket));
        }
    } else {
        println!();
        println!(
            "{}",
            plural(tickets.len(), "unbind ticket", "unbind tickets")
        );
        for line in format_tickets_table(&tickets, &listing.rows, &Local) {
            println!("{line}");
        }
    }
    Ok(tickets)
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
                    eprintln!("{}", wrap(&line, LINE_COLUMNS));
                }
            }
            Err(status) => return Err(report(&status)),
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
        .map_err(|s| report(&s))?;
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
    while let Some(result) = stream.message().await.map_err(|s| report(&s))? {
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
/// printing every change of state (the look-up's row, the app, the account), then a tally.
async fn watch(
    client: &mut AccountGatewayClient<Channel>,
    session: &str,
    tickets: Vec<UnbindTicket>,
    rows: &[LinkedAccount],
    out: Printer,
) -> anyhow::Result<()> {
    let ids: Vec<String> = tickets.iter().map(|t| t.ticket_id.clone()).collect();
    let mut known: BTreeMap<String, TicketState> = tickets
        .iter()
        .map(|t| (t.ticket_id.clone(), t.state()))
        .collect();
    let deadline = tokio::time::Instant::now() + WATCH_FOR;
    if !known.values().all(|&s| is_terminal(s)) {
        out.info(&format!(
            "Watching the tickets for up to {} s...",
            WATCH_FOR.as_secs()
        ));
    }
    loop {
        let finished = known.values().all(|&s| is_terminal(s));
        if finished || tokio::time::Instant::now() >= deadline {
            if !out.json {
                println!();
            }
            out.info(&tally(&known));
            return Ok(());
        }
        tokio::time::sleep(WATCH_EVERY).await;
        let current = client
            .get_unbind_tickets(GetUnbindTicketsRequest {
                session_token: session.to_owned(),
                ticket_ids: ids.clone(),
            })
            .await
            .map_err(|s| report(&s))?
            .into_inner()
            .tickets;
        for (ticket, before) in ticket_changes(&known, &current) {
            if out.json {
                out.json_line(&ticket_json(ticket));
            } else {
                println!("{}", change_line(ticket, before, rows));
            }
        }
        for ticket in &current {
            known.insert(ticket.ticket_id.clone(), ticket.state());
        }
    }
}

/// "row 3, Sim Bank 1 y***i: accepted -> completed (unbound)".
fn change_line(
    ticket: &UnbindTicket,
    before: Option<TicketState>,
    rows: &[LinkedAccount],
) -> String {
    let (app, hint) = ticket_account(ticket, rows);
    let row = ticket_row(ticket, rows)
        .map(|n| format!("row {n}, "))
        .unwrap_or_default();
    let from = before.map(ticket_state_word).unwrap_or("new");
    let mut line = format!(
        "{row}{app} {hint}: {from} -> {}",
        ticket_state_word(ticket.state())
    );
    if !ticket.detail.is_empty() {
        line.push_str(&format!(" ({})", clean(&ticket.detail)));
    }
    line
}

/// How the watched tickets ended: "Done: 12 unbound." or "5 unbound, 1 refused by the app, 2
/// still under way after 60 s (the apps have until their due dates)."
fn tally(known: &BTreeMap<String, TicketState>) -> String {
    let count = |state: TicketState| known.values().filter(|&&s| s == state).count();
    let pending = known.values().filter(|&&s| !is_terminal(s)).count();
    let mut parts = vec![format!("{} unbound", count(TicketState::Completed))];
    let refused = count(TicketState::Rejected);
    if refused > 0 {
        parts.push(format!("{refused} refused by the app (see its detail)"));
    }
    let failed = count(TicketState::Failed);
    if failed > 0 {
        parts.push(format!(
            "{failed} failed (the gateway gave up: contact the app's customer service)"
        ));
    }
    if pending == 0 {
        format!(
            "Done: {} of {}.",
            parts.join(", "),
            plural(known.len(), "ticket", "tickets")
        )
    } else {
        parts.push(format!(
            "{pending} still under way after {} s (the apps have until their due dates; \
             GetUnbindTickets or a new look-up shows them)",
            WATCH_FOR.as_secs()
        ));
        format!(
            "So far, of {}: {}.",
            plural(known.len(), "ticket", "tickets"),
            parts.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    use crate::cli::query::samples::*;
    use crate::proto::linked_account::Ownership;
    use clap::Parser;
    use tonic::Code;
    use tonic_types::{ErrorDetails, StatusExt};
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
        // A previous holder's accounts come first: row 2 is Sim Bank 10's previous holder's
        // account; no --watch, so no polling.
        let unbind = seen.unbind.as_ref().unwrap();
        assert_eq!(unbind.account_refs, ["ref-app-10-w***u"]);
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
        // Printed once by `report`; the error itself says nothing more.
        assert!(err.downcast_ref::<Reported>().is_some(), "{err}");
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
}
