//! What a person reads at the terminal: the look-up's header, the accounts table (numbered rows
//! for `--unbind`), the apps that did not answer (never "0 accounts"), the tickets table and the
//! words for states. Text from an app is cleaned of control characters; widths count East Asian
//! characters as two columns so Chinese app names line up.

use std::collections::HashMap;

use chrono::{DateTime, TimeZone, Utc};

use crate::cli::plural;
use crate::cli::support::text::{clean, display_width};
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

pub(super) fn ticket_app(ticket: &UnbindTicket, app_names: &HashMap<String, String>) -> String {
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

fn ownership_word(ownership: Ownership) -> &'static str {
    match ownership {
        Ownership::CurrentHolder => "yours",
        Ownership::PreviousHolder => "previous holder",
        Ownership::Unknown | Ownership::Unspecified => "unknown",
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
fn format_date<Tz: TimeZone>(ts: Option<&prost_types::Timestamp>, tz: &Tz) -> String {
    ts.and_then(to_datetime)
        .map(|t| t.with_timezone(tz).date_naive().to_string())
        .unwrap_or_else(|| "-".to_owned())
}

/// HH:MM:SS in `tz`, or "?" when the time is absent or out of range.
pub(super) fn format_clock<Tz: TimeZone>(ts: Option<&prost_types::Timestamp>, tz: &Tz) -> String {
    ts.and_then(to_datetime)
        .map(|t| {
            t.with_timezone(tz)
                .naive_local()
                .format("%H:%M:%S")
                .to_string()
        })
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
}
