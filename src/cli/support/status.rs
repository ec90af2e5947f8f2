//! How a failed call is told at a terminal: the status code's name, the message, the gateway's
//! error details (reason, fields, retry delay) and, for a call that never reached the service,
//! the transport's chain of causes.

use std::time::Duration;

use tonic::Status;
use tonic_types::StatusExt;

use crate::cli::support::text::clean;
use crate::metrics::code_name;

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
    if let Some(cause) = transport_cause(status) {
        lines.push(format!("cause: {}", clean(&cause)));
        lines.push(
            "hint: the call did not reach the gateway's service: check --endpoint and, for \
             https://, --ca and --tls-server-name, and --cert and --key (a gateway with tenants \
             requires a tenant's client certificate)"
                .to_owned(),
        );
    }
    let details = status.get_error_details();
    if let Some(info) = details.error_info()
        && !info.reason.is_empty()
    {
        lines.push(format!("reason: {}", clean(&info.reason)));
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

/// An error that has already been told to the person (a failed call's lines): the process exits
/// non-zero without printing it again.
#[derive(Debug)]
pub struct Reported;

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the error was reported above")
    }
}

impl std::error::Error for Reported {}

/// How the command ends on an error: printed once, as "error: a: b: c" (never Rust's `Debug`
/// form, which adds a backtrace under `RUST_BACKTRACE`), and nothing more for one already
/// [`Reported`].
pub fn print_error(error: &anyhow::Error) {
    if error.downcast_ref::<Reported>().is_none() {
        eprintln!("error: {}", error_chain(error.as_ref()));
    }
}

/// An error and its causes, "a: b: c", without repeats.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
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

/// Why a call failed before reaching the service's handler (TLS refused, connection reset): the
/// transport's own errors, "a: b: c". `None` when the service itself answered.
pub fn transport_cause(status: &Status) -> Option<String> {
    std::error::Error::source(status).map(error_chain)
}

/// The `ErrorInfo` reason the service attached, if any ("INVALID_CODE").
pub fn error_reason(status: &Status) -> Option<String> {
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tonic::Code;
    use tonic_types::{ErrorDetails, FieldViolation};
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
}
