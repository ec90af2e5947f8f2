//! Shared test data for the query's unit tests: accounts, app results and tickets as the
//! gateway would send them.

use crate::cli::query::QueryArgs;
use crate::proto::app_result::State;
use crate::proto::linked_account::Ownership;
use crate::proto::unbind_ticket::State as TicketState;
use crate::proto::{AppResult, LinkedAccount, UnbindTicket};

use super::selection::ordered_accounts;

pub(super) fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

// 2019-03-02T00:00:00Z and 2023-01-10T00:00:00Z.
pub(super) const MARCH_2019: i64 = 1_551_484_800;
pub(super) const JAN_2023: i64 = 1_673_308_800;

pub(super) fn account(
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

pub(super) fn result(app_id: &str, app_name: &str, state: State, count: u32) -> AppResult {
    AppResult {
        app_id: app_id.to_owned(),
        app_name: app_name.to_owned(),
        state: state as i32,
        account_count: count,
        customer_service: format!("cs-{app_id}"),
        ..Default::default()
    }
}

pub(super) fn ticket(id: &str, app_id: &str, state: TicketState) -> UnbindTicket {
    UnbindTicket {
        ticket_id: id.to_owned(),
        app_id: app_id.to_owned(),
        state: state as i32,
        due_at: ts(JAN_2023),
        ..Default::default()
    }
}

/// Rows in table order: a previous holder's (alipay, taobao unsupported), unknown (wechat), yours
/// (alipay).
pub(super) fn sample_rows() -> Vec<LinkedAccount> {
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

/// The query's flags as clap parses them.
#[derive(clap::Parser)]
pub(super) struct Cli {
    #[command(flatten)]
    pub(super) args: QueryArgs,
}
