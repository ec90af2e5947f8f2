//! What a person reads at the terminal: the look-up's header, the accounts table (numbered rows
//! for `--unbind`), the apps that did not answer (never "0 accounts"), the tickets table and the
//! words for states. Text from an app is cleaned of control characters; widths count East Asian
//! characters as two columns so Chinese app names line up.

use chrono::{DateTime, TimeZone, Utc};

use crate::cli::plural;
use crate::cli::support::text::{LINE_COLUMNS, clean, display_width, wrap};
use crate::proto::app_result::State;
use crate::proto::linked_account::Ownership;
use crate::proto::unbind_ticket::State as TicketState;
use crate::proto::{AppResult, LinkedAccount, ListLinkedAccountsResponse, UnbindTicket};

use super::selection::app_order;

/// Formats everything below the header for a look-up: the accounts table (or, with
/// `summary_only`, per-app counts), one line per app that did not answer, and one line counting
/// the apps with no account. `rows` must be `ordered_accounts(&response.accounts)`.
pub fn render_listing<Tz: TimeZone>(
    response: &ListLinkedAccountsResponse,
    rows: &[LinkedAccount],
    holder_since: Option<&prost_types::Timestamp>,
    tz: &Tz,
) -> String {
    let mut lines = vec![wrap(&format_header(response), LINE_COLUMNS)];
    if !rows.is_empty() {
        lines.push(String::new());
        lines.extend(format_accounts_table(rows, holder_since, tz));
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

/// The widest an app's name is shown in a table, in columns: the tables fit 80 columns.
const APP_COLUMNS: usize = 24;
/// The widest an app's free text (a ticket's detail) is shown in a table.
const DETAIL_COLUMNS: usize = 24;

/// The groups the accounts table shows apart, in table order (see
/// [`super::selection::ordered_accounts`]): a previous holder's first (what a person most often
/// came to unbind), then the ones nobody can tell, then the holder's own.
pub(super) fn ownership_group(ownership: Ownership) -> u8 {
    match ownership {
        Ownership::PreviousHolder => 0,
        Ownership::Unknown | Ownership::Unspecified => 1,
        Ownership::CurrentHolder => 2,
    }
}

/// The heading of a group of the accounts table.
fn group_heading(ownership: Ownership, count: usize, since: Option<&str>) -> String {
    let accounts = plural(count, "account", "accounts");
    match (ownership_group(ownership), since) {
        (0, Some(day)) => format!("A previous holder's, bound before {day}: {accounts}"),
        (0, None) => format!("A previous holder's: {accounts}"),
        (1, _) => {
            format!("Whose is unknown (no binding date, or too near the change): {accounts}")
        }
        (_, Some(day)) => format!("Yours, bound since {day}: {accounts}"),
        (_, None) => format!("Yours: {accounts}"),
    }
}

/// The accounts table: one numbered row per account, in the order given (grouped by
/// [`ownership_group`]), with a heading before each group, in columns that line up across the
/// groups.
pub fn format_accounts_table<Tz: TimeZone>(
    rows: &[LinkedAccount],
    holder_since: Option<&prost_types::Timestamp>,
    tz: &Tz,
) -> Vec<String> {
    let body: Vec<Vec<String>> = rows
        .iter()
        .enumerate()
        .map(|(i, a)| {
            vec![
                (i + 1).to_string(),
                fit(&clean(&app_label(&a.app_name, &a.app_id)), APP_COLUMNS),
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
    let mut headers = vec!["#", "App", "Account", "Bound", "Unbind", "Ticket"];
    if rows.iter().all(|a| a.open_ticket.is_none()) {
        // No unbind under way: leave out the empty column.
        headers.pop();
    }
    let table = render_table(&headers, &body);
    let since = holder_since.map(|t| format_date(Some(t), tz));
    let mut lines = vec![table[0].clone()];
    let mut group = None;
    for (row, line) in rows.iter().zip(&table[1..]) {
        let this = ownership_group(row.ownership());
        if group != Some(this) {
            group = Some(this);
            let count = rows
                .iter()
                .filter(|a| ownership_group(a.ownership()) == this)
                .count();
            lines.push(group_heading(row.ownership(), count, since.as_deref()));
        }
        lines.push(line.clone());
    }
    lines
}

/// `text` cut to `columns` terminal columns, with "…" when cut.
fn fit(text: &str, columns: usize) -> String {
    if display_width(text) <= columns {
        return text.to_owned();
    }
    let mut out = String::new();
    let mut width = 0;
    for c in text.chars() {
        let w = display_width(c.encode_utf8(&mut [0; 4]));
        if width + w + 1 > columns {
            break;
        }
        width += w;
        out.push(c);
    }
    out.push('…');
    out
}

/// The row of the look-up a ticket is for (by its account ref), numbered from 1.
pub(super) fn ticket_row(ticket: &UnbindTicket, rows: &[LinkedAccount]) -> Option<usize> {
    rows.iter()
        .position(|a| !ticket.account_ref.is_empty() && a.account_ref == ticket.account_ref)
        .map(|i| i + 1)
}

/// What a person is shown of the account a ticket is for: the app's name and the account's hint,
/// as the ticket carries them (else from the look-up's row, else the app's id).
pub(super) fn ticket_account(ticket: &UnbindTicket, rows: &[LinkedAccount]) -> (String, String) {
    let row = ticket_row(ticket, rows).map(|n| &rows[n - 1]);
    let name = if !ticket.app_name.is_empty() {
        ticket.app_name.clone()
    } else {
        row.map(|a| app_label(&a.app_name, &a.app_id))
            .unwrap_or_else(|| ticket.app_id.clone())
    };
    let hint = if !ticket.display_hint.is_empty() {
        ticket.display_hint.clone()
    } else {
        row.map(|a| a.display_hint.clone()).unwrap_or_default()
    };
    (clean(&name), clean(&hint))
}

/// The tickets an unbind created (or a watch found), one row each: the look-up's row number, the
/// app, the account, the state and the day the app must have acted by; then what "Due by" means
/// and the zone of the dates.
pub fn format_tickets_table<Tz: TimeZone>(
    tickets: &[UnbindTicket],
    rows: &[LinkedAccount],
    tz: &Tz,
) -> Vec<String>
where
    Tz::Offset: std::fmt::Display,
{
    let body: Vec<Vec<String>> = tickets
        .iter()
        .map(|t| {
            let mut due = format_date(t.due_at.as_ref(), tz);
            if t.overdue {
                due.push_str(" (overdue)");
            }
            let (app, hint) = ticket_account(t, rows);
            vec![
                ticket_row(t, rows)
                    .map(|n| n.to_string())
                    .unwrap_or_default(),
                fit(&app, APP_COLUMNS),
                hint,
                ticket_state_word(t.state()).to_owned(),
                due,
                fit(&clean(&t.detail), DETAIL_COLUMNS),
            ]
        })
        .collect();
    let mut lines = render_table(&["#", "App", "Account", "State", "Due by", "Detail"], &body);
    lines.push(format!(
        "Due by: the day the app must have acted by (dates in {}).",
        zone_name(tz)
    ));
    lines
}

/// The zone dates and times are shown in: "UTC+08:00".
pub(super) fn zone_name<Tz: TimeZone>(tz: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    Utc::now().with_timezone(tz).format("UTC%:z").to_string()
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
    // A failure the gateway can explain (an answer it refused) says what it was.
    let status = if result.state() == State::Failed && !result.reason.is_empty() {
        format!("failed: {}", clean(&result.reason))
    } else {
        status.to_owned()
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

pub(super) fn app_label(name: &str, id: &str) -> String {
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

pub(super) fn ticket_state_word(state: TicketState) -> &'static str {
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

pub(super) fn to_datetime(ts: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).unwrap_or(0))
}

/// YYYY-MM-DD in `tz`, or "-" when the time is absent or out of range.
pub(super) fn format_date<Tz: TimeZone>(ts: Option<&prost_types::Timestamp>, tz: &Tz) -> String {
    ts.and_then(to_datetime)
        .map(|t| t.with_timezone(tz).date_naive().to_string())
        .unwrap_or_else(|| "-".to_owned())
}

/// "HH:MM:SS UTC+08:00" in `tz`, or "?" when the time is absent or out of range.
pub(super) fn format_clock<Tz: TimeZone>(ts: Option<&prost_types::Timestamp>, tz: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    ts.and_then(to_datetime)
        .map(|t| t.with_timezone(tz).format("%H:%M:%S UTC%:z").to_string())
        .unwrap_or_else(|| "?".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::query::flow::ticket_changes;
    use crate::cli::query::samples::*;
    use crate::cli::query::selection::is_terminal;
    use std::collections::BTreeMap;

    #[test]
    fn table_is_grouped_by_whose_then_app_and_numbered() {
        let rows = sample_rows();
        let apps: Vec<&str> = rows.iter().map(|a| a.app_id.as_str()).collect();
        // A previous holder's first, then unknown, then yours; by app name within each.
        assert_eq!(apps, ["alipay", "taobao", "wechat", "alipay"]);
        assert_eq!(rows[0].display_hint, "z***g");

        let mut rows = rows;
        rows[3].open_ticket = Some(ticket("t1", "alipay", TicketState::Accepted));
        let since = ts(JAN_2023 - 86_400);
        let lines = format_accounts_table(&rows, since.as_ref(), &Utc);
        assert!(lines[0].starts_with("#  App"), "{}", lines[0]);
        let words = |i: usize| lines[i].split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(
            lines[1],
            "A previous holder's, bound before 2023-01-09: 2 accounts"
        );
        assert_eq!(words(2), "1 Alipay z***g 2019-03-02 yes");
        assert_eq!(words(3), "2 Taobao t***o 2019-03-02 no");
        assert!(lines[4].starts_with("Whose is unknown"), "{}", lines[4]);
        assert_eq!(words(5), "3 WeChat w***n - yes");
        assert_eq!(lines[6], "Yours, bound since 2023-01-09: 1 account");
        assert_eq!(words(7), "4 Alipay l***i 2023-01-10 yes accepted");
        assert_eq!(lines.len(), 8);
        // Columns line up across the groups: "Account" starts at the same place.
        let col = lines[0].find("Account").unwrap();
        assert_eq!(&lines[2][col..col + 5], "z***g");
        assert_eq!(&lines[7][col..col + 5], "l***i");
        assert!(lines.iter().all(|l| display_width(l) <= 80));
    }

    #[test]
    fn long_app_names_are_cut_to_fit_80_columns() {
        let rows = vec![account(
            "long",
            "An Extraordinarily Long Application Name Indeed",
            "a***b",
            Ownership::PreviousHolder,
            true,
        )];
        let lines = format_accounts_table(&rows, None, &Utc);
        assert!(
            lines[2].contains("An Extraordinarily Long…"),
            "{}",
            lines[2]
        );
        assert!(lines.iter().all(|l| display_width(l) <= 80));
        assert_eq!(
            display_width(&fit("微信支付微信支付微信支付微信支付", 10)),
            9
        );
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
        let lines = format_accounts_table(&rows, None, &Utc);
        assert!(!lines.iter().any(|l| l.contains('\u{1b}')));
        let hint_at = |l: &str, hint: &str| display_width(&l[..l.find(hint).unwrap()]);
        assert_eq!(hint_at(&lines[2], "a***b"), hint_at(&lines[3], "c***d"));
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
        let text = render_listing(&response, &rows, None, &Utc);
        // The header, wrapped to the terminal's 80 columns.
        let head: Vec<&str> = text.lines().take(2).collect();
        assert_eq!(
            head,
            [
                "4 accounts found; 186 of 190 apps answered; INCOMPLETE: apps that did not answer",
                "  are listed below"
            ]
        );
        assert!(text.lines().all(|l| display_width(l) <= 80), "{text}");
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
                .any(|l| l.split_whitespace().take(2).eq(["2", "Taobao"])),
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
        let text = render_listing(&response, &[], None, &Utc);
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
        // A failure the gateway explains is shown with its reason, cleaned.
        let mut r = result("x", "", State::Failed, 0);
        r.customer_service.clear();
        r.reason = "answered more than 1000 accounts\u{1b}[2J".into();
        assert_eq!(
            format_app_status(&r),
            "x: failed: answered more than 1000 accounts?[2J"
        );
    }

    #[test]
    fn ticket_table_and_changes() {
        let rows = sample_rows();
        let mut first = ticket("t1", "alipay", TicketState::Queued);
        first.account_ref = rows[0].account_ref.clone();
        // A ticket for no row of this look-up shows what it carries, else its app's id.
        let mut late = ticket("t2", "other", TicketState::Sent);
        late.overdue = true;
        late.detail = "retrying".to_owned();
        let tickets = vec![first, late];
        let lines = format_tickets_table(&tickets, &rows, &Utc);
        let words = |i: usize| lines[i].split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(words(0), "# App Account State Due by Detail");
        assert_eq!(words(1), "1 Alipay z***g queued 2023-01-10");
        assert_eq!(words(2), "other sent 2023-01-10 (overdue) retrying");
        let mut carried = ticket("t3", "other", TicketState::Completed);
        carried.app_name = "Other App".into();
        carried.display_hint = "o***r".into();
        let carried_lines = format_tickets_table(&[carried], &rows, &Utc);
        let carried_words = carried_lines[1]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(carried_words, "Other App o***r completed 2023-01-10");
        assert_eq!(
            lines[3],
            "Due by: the day the app must have acted by (dates in UTC+00:00)."
        );

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
}
