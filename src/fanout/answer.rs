//! What an adapter may answer. Adapters are other companies' servers, so every `FindAccounts`
//! answer is checked before the gateway caches, merges or seals any of it. An answer over a limit
//! is refused whole: the app is `FAILED` for that look-up, with a reason the caller reads in its
//! `AppResult` and the operator in `unbind_app_answers_refused_total{app, reason}`; every other
//! app's answer is unaffected. A refusal counts against the app's breaker like any failure, and
//! nothing of it is cached.
//!
//! The limits, and why:
//! - **accounts per answer**: `max_accounts` (`[app_defaults]`, or per app), 1,000 by default.
//!   A person holds a handful of accounts per app; a thousand leaves room for a business line
//!   while bounding what one answer costs: a thousand refs of a few hundred bytes each.
//! - **`account_id`**: not empty, and at most [`MAX_ACCOUNT_ID_BYTES`] once JSON-escaped, so every
//!   ref the gateway issues is one `Unbind` accepts.
//! - **`display_hint`**: at most [`MAX_HINT_BYTES`] (a person is shown 32 characters of it).
//! - **the answer on the wire**: [`BYTES_PER_ACCOUNT`] per allowed account, as the app client's
//!   decoding limit, so an oversized answer is refused before it is held in memory whole; and it
//!   must decode (a `string` that is not UTF-8 fails the whole answer: `malformed`).
//! - **`bound_at`**: a date before 1970 or more than a day ahead is dropped, as if missing
//!   ([`plausible_date`]): the account's ownership is then unknown, shown like a previous
//!   holder's, never the holder's own on a made-up date.
//!
//! And for `UnbindAccount` / `GetUnbindStatus` answers (applied by the unbind worker): a
//! `vendor_ref` of at most [`MAX_VENDOR_REF_BYTES`] without control characters is kept, another
//! is dropped; `detail` is kept to [`MAX_DETAIL_CHARS`] characters, control characters removed.

use crate::proto::AdapterAccount;
use crate::security::{MAX_ACCOUNT_ID_BYTES, escaped_len};

/// The longest `display_hint` an answer may carry, in bytes.
pub const MAX_HINT_BYTES: usize = 128;

/// The longest `vendor_ref` the gateway keeps, in bytes.
pub const MAX_VENDOR_REF_BYTES: usize = 128;

/// The most characters of an unbind answer's `detail` the gateway keeps.
pub const MAX_DETAIL_CHARS: usize = 200;

/// Wire bytes allowed per account an answer may hold: the longest id, the longest hint, a date
/// and the framing fit well within it.
pub const BYTES_PER_ACCOUNT: usize = 4096;

/// The smallest decoding limit, whatever `max_accounts` says.
const MIN_DECODING_LIMIT: usize = 64 * 1024;

/// Why an answer was refused. The text is what the caller reads after the app's name; it never
/// holds a value from the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("answered more than {limit} accounts")]
    TooManyAccounts { limit: usize },
    #[error("answered an empty account_id")]
    EmptyAccountId,
    #[error("answered an account_id over {MAX_ACCOUNT_ID_BYTES} bytes")]
    AccountIdTooLong,
    #[error("answered a display_hint over {MAX_HINT_BYTES} bytes")]
    HintTooLong,
    #[error("answered more than {limit} bytes")]
    AnswerTooLarge { limit: usize },
    /// Not protobuf, or a text field that is not UTF-8.
    #[error("answered a message that does not decode")]
    Malformed,
}

impl Refusal {
    /// The word in the metric's `reason` label.
    pub fn as_label(self) -> &'static str {
        match self {
            Refusal::TooManyAccounts { .. } => "too_many_accounts",
            Refusal::EmptyAccountId => "empty_account_id",
            Refusal::AccountIdTooLong => "account_id_too_long",
            Refusal::HintTooLong => "hint_too_long",
            Refusal::AnswerTooLarge { .. } => "answer_too_large",
            Refusal::Malformed => "malformed",
        }
    }
}

/// The decoding limit of an app's client: [`BYTES_PER_ACCOUNT`] per allowed account.
pub fn decoding_limit(max_accounts: usize) -> usize {
    max_accounts
        .saturating_mul(BYTES_PER_ACCOUNT)
        .max(MIN_DECODING_LIMIT)
}

/// Checks a `FindAccounts` answer against the limits.
pub fn check(accounts: &[AdapterAccount], max_accounts: usize) -> Result<(), Refusal> {
    if accounts.len() > max_accounts {
        return Err(Refusal::TooManyAccounts {
            limit: max_accounts,
        });
    }
    for account in accounts {
        if account.account_id.is_empty() {
            return Err(Refusal::EmptyAccountId);
        }
        // Bytes first: escaping cannot shrink a string, and the cheap test settles most ids.
        if account.account_id.len() > MAX_ACCOUNT_ID_BYTES
            || escaped_len(&account.account_id) > MAX_ACCOUNT_ID_BYTES
        {
            return Err(Refusal::AccountIdTooLong);
        }
        if account.display_hint.len() > MAX_HINT_BYTES {
            return Err(Refusal::HintTooLong);
        }
    }
    Ok(())
}

/// Whether a failed call is the client refusing to decode an answer over its limit (tonic says so
/// with `OUT_OF_RANGE` and this message; an adapter's own `OUT_OF_RANGE` says something else).
pub fn is_over_decoding_limit(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::OutOfRange
        && status
            .message()
            .starts_with("Error, decoded message length too large")
}

/// Whether a failed call is the client refusing an answer that does not decode (tonic says so
/// with `INTERNAL` and prost's message: invalid wire data, or a `string` that is not UTF-8).
pub fn is_undecodable(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Internal
        && status
            .message()
            .starts_with("failed to decode Protobuf message")
}

/// A binding date worth passing on: not before 1970 and not in the future (an app's clock may be
/// a day ahead). Any other date is treated as missing: no evidence of whose account it is.
pub fn plausible_date(bound_at_ms: i64, now_ms: i64) -> bool {
    const DAY_MS: i64 = 86_400_000;
    (0..=now_ms.saturating_add(DAY_MS)).contains(&bound_at_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(id: &str, hint: &str) -> AdapterAccount {
        AdapterAccount {
            account_id: id.to_owned(),
            display_hint: hint.to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn an_answer_within_every_limit_passes() {
        let longest_id = "x".repeat(MAX_ACCOUNT_ID_BYTES);
        let longest_hint = "h".repeat(MAX_HINT_BYTES);
        let answer = vec![account(&longest_id, &longest_hint); 3];
        assert_eq!(check(&answer, 3), Ok(()));
        assert_eq!(check(&[], 0), Ok(()));
    }

    #[test]
    fn each_limit_is_refused_one_past_it() {
        assert_eq!(
            check(&vec![account("a", ""); 4], 3),
            Err(Refusal::TooManyAccounts { limit: 3 })
        );
        assert_eq!(check(&[account("", "")], 3), Err(Refusal::EmptyAccountId));
        let too_long = "x".repeat(MAX_ACCOUNT_ID_BYTES + 1);
        assert_eq!(
            check(&[account(&too_long, "")], 3),
            Err(Refusal::AccountIdTooLong)
        );
        // Within the bytes, over once escaped: every quote takes two in the ref.
        let quotes = "\"".repeat(MAX_ACCOUNT_ID_BYTES / 2 + 1);
        assert!(quotes.len() <= MAX_ACCOUNT_ID_BYTES);
        assert_eq!(
            check(&[account(&quotes, "")], 3),
            Err(Refusal::AccountIdTooLong)
        );
        let long_hint = "h".repeat(MAX_HINT_BYTES + 1);
        assert_eq!(
            check(&[account("a", &long_hint)], 3),
            Err(Refusal::HintTooLong)
        );
    }

    #[test]
    fn reasons_name_the_limit_never_a_value() {
        let reason = Refusal::TooManyAccounts { limit: 1000 }.to_string();
        assert_eq!(reason, "answered more than 1000 accounts");
        assert_eq!(
            Refusal::AccountIdTooLong.to_string(),
            format!("answered an account_id over {MAX_ACCOUNT_ID_BYTES} bytes")
        );
        assert_eq!(Refusal::HintTooLong.as_label(), "hint_too_long");
    }

    #[test]
    fn the_decoding_limit_grows_with_the_accounts_allowed() {
        assert_eq!(decoding_limit(1000), 1000 * BYTES_PER_ACCOUNT);
        assert_eq!(decoding_limit(1), MIN_DECODING_LIMIT);
        assert_eq!(decoding_limit(usize::MAX), usize::MAX);
        let over = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 5000000 bytes, the limit is: 4096000 bytes",
        );
        assert!(is_over_decoding_limit(&over));
        assert!(!is_over_decoding_limit(&tonic::Status::out_of_range("no")));
        assert!(!is_over_decoding_limit(&tonic::Status::internal(
            "Error, decoded message length too large"
        )));
    }
}
