//! What the person is told when something did not work: every status the gateway can answer
//! with (its `google.rpc.ErrorInfo` reason, see `unbind.v1.ErrorReason`), and the portal's own
//! refusals, become a [`Notice`]: a message key (a sentence in the person's language saying
//! what happened and what to do next), and where to send the person.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::i18n::Messages;

/// A sentence to show once, on the next page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// The message key (`error.*`).
    pub key: &'static str,
    /// Minutes to wait, for the messages that say so (their keys are `key_one` / `key_other`).
    pub minutes: Option<u64>,
}

impl Notice {
    /// A notice without a delay.
    pub const fn new(key: &'static str) -> Notice {
        Notice { key, minutes: None }
    }

    /// The sentence in one language.
    pub fn text(&self, messages: &Messages) -> String {
        if messages.has(self.key) {
            messages.text(self.key, &[])
        } else {
            messages.plural(self.key, self.minutes.unwrap_or(1).max(1), &[])
        }
    }
}

/// Where the person goes after a failed call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// The same step again (a wrong code, a busy gateway).
    Stay,
    /// The start: the verification or the session is gone.
    Restart,
    /// The accounts: the choice is no longer valid.
    Accounts,
}

/// The notice for a failed gateway call, and where to go next.
pub fn from_status(status: &Status) -> (Notice, Next) {
    let details = status.get_error_details();
    let reason = details
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default();
    let minutes = details
        .retry_info()
        .and_then(|r| r.retry_delay)
        .map(minutes_of);
    let with_minutes = |key| Notice { key, minutes };
    use Next::*;
    match reason.as_str() {
        "INVALID_PHONE_NUMBER" => (Notice::new("error.invalid_phone"), Stay),
        "INVALID_ID_LAST_SIX" => (Notice::new("error.invalid_id"), Stay),
        "INVALID_CODE" => (Notice::new("error.invalid_code"), Stay),
        "VERIFICATION_EXPIRED" => (Notice::new("error.verification_expired"), Restart),
        "VERIFICATION_FAILED" => (Notice::new("error.verification_failed"), Restart),
        "MAX_CODES_EXCEEDED" => (with_minutes("error.max_codes"), Restart),
        "INVALID_SESSION" => (Notice::new("error.session_ended"), Restart),
        "IDEMPOTENCY_KEY_REUSED" => (Notice::new("error.key_reused"), Accounts),
        "INVALID_FIELD"
        | "UNKNOWN_APP"
        | "MESSAGE_TOO_LARGE"
        | "INVALID_ACCOUNT_REF"
        | "OUT_OF_RANGE" => (Notice::new("error.selection_invalid"), Accounts),
        "RATE_LIMITED" => (with_minutes("error.rate_limited"), Stay),
        "SERVICE_UNAVAILABLE" => (Notice::new("error.unavailable"), Stay),
        "PERMISSION_DENIED" => (Notice::new("error.permission"), Stay),
        "NOT_FOUND" => (Notice::new("error.not_found"), Restart),
        "INTERNAL" => (Notice::new("error.internal"), Stay),
        // No ErrorInfo: the call did not reach the gateway's handlers (the connection, TLS, a
        // proxy) or the gateway is older than its reasons.
        _ => match status.code() {
            Code::Unauthenticated => (Notice::new("error.session_ended"), Restart),
            Code::PermissionDenied => (Notice::new("error.permission"), Stay),
            Code::ResourceExhausted => (with_minutes("error.rate_limited"), Stay),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                (Notice::new("error.unreachable"), Stay)
            }
            _ => (Notice::new("error.internal"), Stay),
        },
    }
}

/// Whole minutes, rounded up, at least one.
fn minutes_of(delay: Duration) -> u64 {
    delay.as_secs().div_ceil(60).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::error::ApiError;
    use crate::portal::i18n::Locale;

    /// Every error the gateway's edge can produce has a sentence in both languages, and none is
    /// the generic one unless it is an internal error.
    #[test]
    fn every_gateway_error_becomes_a_sentence_in_both_languages() {
        let errors = [
            ApiError::InvalidPhoneNumber {
                field: "phone_number",
            },
            ApiError::InvalidIdLastSix {
                field: "id_last_six",
            },
            ApiError::field("account_refs", "x"),
            ApiError::InvalidPhoneNumberAt { field: "x".into() },
            ApiError::OutOfRange {
                field: "x".into(),
                description: "y".into(),
            },
            ApiError::NotFound {
                what: "verification",
            },
            ApiError::NumberNotServed,
            ApiError::NotMobile {
                field: "phone_number",
            },
            ApiError::UnknownApp {
                field: "x".into(),
                app_id: "y".into(),
            },
            ApiError::MessageTooLarge,
            ApiError::InvalidCode,
            ApiError::VerificationExpired,
            ApiError::VerificationFailed,
            ApiError::MaxCodesExceeded {
                retry_after: Duration::from_secs(1800),
            },
            ApiError::InvalidSession,
            ApiError::InvalidAccountRef { field: "x".into() },
            ApiError::ForeignAccountRef { field: "x".into() },
            ApiError::UnbindNotSupported { field: "x".into() },
            ApiError::IdempotencyKeyReused,
            ApiError::PermissionDenied { why: "role".into() },
            ApiError::RateLimited {
                retry_after: Duration::from_secs(61),
            },
            ApiError::Unavailable { what: "the store" },
            ApiError::Overloaded {
                retry_after: Duration::from_secs(1),
            },
            ApiError::Internal,
        ];
        for error in errors {
            let (notice, _) = from_status(&error.to_status());
            for locale in Locale::ALL {
                let messages = locale.messages();
                assert!(
                    messages.has(notice.key) || messages.has(&format!("{}_other", notice.key)),
                    "{error:?}: {}",
                    notice.key
                );
                let text = notice.text(messages);
                assert!(!text.contains('{'), "{text}");
            }
            if !matches!(error, ApiError::Internal) {
                assert_ne!(notice.key, "error.internal", "{error:?}");
            }
        }
        let (notice, next) = from_status(
            &ApiError::MaxCodesExceeded {
                retry_after: Duration::from_secs(1801),
            }
            .to_status(),
        );
        assert_eq!((notice.minutes, next), (Some(31), Next::Restart));
        assert!(
            notice
                .text(Locale::En.messages())
                .contains("in 31 minutes.")
        );
        let (notice, _) = from_status(
            &ApiError::RateLimited {
                retry_after: Duration::from_millis(300),
            }
            .to_status(),
        );
        assert!(notice.text(Locale::En.messages()).contains("in 1 minute."));
        assert!(notice.text(Locale::Zh.messages()).contains("1 分钟"));
        let (notice, next) = from_status(&Status::unavailable("connection refused"));
        assert_eq!((notice.key, next), ("error.unreachable", Next::Stay));
    }
}
