//! Which accounts to unbind: the choice a person types ("1,3,5", "2-4", "previous", "all") or
//! gives with `--unbind`, mapped onto the table's rows, and the table's order (apps by name, the
//! way a person reads them: "Bank 2" before "Bank 10").

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use crate::proto::linked_account::Ownership;
use crate::proto::unbind_ticket::State as TicketState;
use crate::proto::{LinkedAccount, UnbindTicket};

use super::table::{app_label, ownership_group, ticket_state_word};
use crate::cli::support::text::clean;
use crate::domain::natural_cmp;

/// The most rows one range ("1-100") may name; guards against "1-999999999".
const MAX_RANGE_ROWS: usize = 10_000;

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
/// Accounts whose app does not support unbinding through the gateway (the note gives the app's
/// customer-service number from `customer_service`, by app id), and accounts with an unbind
/// already under way, are skipped with a note; a row number past the table is an error.
pub fn resolve_selection(
    selection: &Selection,
    rows: &[LinkedAccount],
    customer_service: &HashMap<String, String>,
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
            let contact = match customer_service.get(&account.app_id) {
                Some(number) => format!("call its customer service: {}", clean(number)),
                None => "contact its customer service".to_owned(),
            };
            resolved.skipped.push(format!(
                "row {}, {name}: the app does not unbind through the gateway; {contact}",
                i + 1
            ));
        } else if let Some(ticket) = open_ticket(account) {
            resolved.skipped.push(format!(
                "row {}, {name}: an unbind is already under way ({})",
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

pub(super) fn is_terminal(state: TicketState) -> bool {
    matches!(
        state,
        TicketState::Completed | TicketState::Rejected | TicketState::Failed
    )
}

/// The accounts in table order: a previous holder's, then those whose holder nobody can tell,
/// then the holder's own (see [`ownership_group`]); within each, by app (by name, then id), each
/// app's accounts in the order the gateway gave them. Row `n` of the table is element `n - 1`.
pub fn ordered_accounts(accounts: &[LinkedAccount]) -> Vec<LinkedAccount> {
    let mut rows = accounts.to_vec();
    // A stable sort keeps the gateway's order inside each app.
    rows.sort_by(|a, b| {
        ownership_group(a.ownership())
            .cmp(&ownership_group(b.ownership()))
            .then_with(|| app_order(&a.app_name, &a.app_id, &b.app_name, &b.app_id))
    });
    rows
}

/// Apps ordered by name, then id, the way a person reads them: "Bank 2" before "Bank 10".
pub(super) fn app_order(name_a: &str, id_a: &str, name_b: &str, id_b: &str) -> Ordering {
    natural_cmp(name_a, name_b).then_with(|| natural_cmp(id_a, id_b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::query::samples::*;
    use crate::cli::query::table::format_accounts_table;
    use chrono::Utc;

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
        let contacts = HashMap::from([("taobao".to_owned(), "+86 400-800-0001".to_owned())]);
        let resolved = resolve_selection(&Selection::Previous, &rows, &contacts).unwrap();
        // Row 1 is Alipay's previous holder's account; Taobao's cannot be unbound, and the note
        // says whom to call.
        assert_eq!(resolved.chosen, vec![0]);
        assert_eq!(resolved.skipped.len(), 1);
        assert!(
            resolved.skipped[0].contains("row 2, Taobao")
                && resolved.skipped[0].contains("call its customer service: +86 400-800-0001"),
            "{}",
            resolved.skipped[0]
        );
    }

    #[test]
    fn all_skips_unsupported_and_open_tickets() {
        let mut rows = sample_rows();
        let none = HashMap::new();
        rows[2].open_ticket = Some(ticket("t1", "wechat", TicketState::Sent));
        let resolved = resolve_selection(&Selection::All, &rows, &none).unwrap();
        assert_eq!(resolved.chosen, vec![0, 3]);
        assert_eq!(resolved.skipped.len(), 2);
        assert!(resolved.skipped[0].contains("contact its customer service"));
        assert!(resolved.skipped[1].contains("already under way (sent)"));
        // A finished ticket does not block a new unbind.
        rows[2].open_ticket = Some(ticket("t1", "wechat", TicketState::Rejected));
        let resolved = resolve_selection(&Selection::All, &rows, &none).unwrap();
        assert_eq!(resolved.chosen, vec![0, 2, 3]);
    }

    #[test]
    fn rows_resolve_in_order_and_out_of_range_is_an_error() {
        let rows = sample_rows();
        let none = HashMap::new();
        let resolved = resolve_selection(&Selection::Rows(vec![4, 1]), &rows, &none).unwrap();
        assert_eq!(resolved.chosen, vec![3, 0]);
        let err = resolve_selection(&Selection::Rows(vec![1, 5]), &rows, &none).unwrap_err();
        assert!(err.contains("no row 5"), "{err}");
        assert!(resolve_selection(&Selection::Rows(vec![1]), &[], &none).is_err());
        assert_eq!(
            resolve_selection(&Selection::Nothing, &rows, &none).unwrap(),
            Resolved::default()
        );
    }

    #[test]
    fn apps_sort_naturally() {
        let mut names = vec![
            "Bank 10", "Bank 2", "Bank 1", "Bank", "Chat 1", "Bank 02", "银行",
        ];
        names.sort_by(|a, b| crate::domain::natural_cmp(a, b));
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
        let lines = format_accounts_table(&rows, None, &Utc);
        assert!(lines[0].ends_with("Unbind"), "{}", lines[0]);
    }
}
