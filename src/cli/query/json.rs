//! `--json`: one JSON object per line for each app result, account (numbered as in the table)
//! and ticket, then a summary, so scripts read the same look-up a person sees.

use chrono::SecondsFormat;
use serde_json::{Value, json};

use crate::proto::app_result::State;
use crate::proto::{AppResult, LinkedAccount, ListLinkedAccountsResponse, UnbindTicket};

use super::table::to_datetime;

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
        "reason": result.reason,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::query::samples::*;

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
}
