//! The edge: every error a caller can see is an [`ApiError`], and this is the only place that
//! turns one into a gRPC status. Each status carries a `google.rpc.ErrorInfo` (domain
//! `unbind-gateway`, reason from `unbind.v1.ErrorReason`), invalid fields a `BadRequest`, rate
//! limits a `RetryInfo`. Messages never contain a phone number, ID characters, code or token.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{
    proto::ErrorReason, push::PushError, security::SessionError, unbind::UnbindError,
    verification::VerifyError,
};

/// The `ErrorInfo.domain` of every error.
pub const ERROR_DOMAIN: &str = "unbind-gateway";

/// Everything that can go wrong, as callers see it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("`{field}` is not a valid mobile phone number")]
    InvalidPhoneNumber { field: &'static str },
    #[error("`{field}` must be a day of the month (01-31), three digits, then a digit or X")]
    InvalidIdLastSix { field: &'static str },
    #[error("`{field}`: {description}")]
    InvalidField { field: String, description: String },
    #[error("`{field}` is not a valid mobile phone number")]
    InvalidPhoneNumberAt { field: String },
    #[error("`{field}`: {description}")]
    OutOfRange { field: String, description: String },
    #[error("no such {what}")]
    NotFound { what: &'static str },
    #[error("this number is not one of the carrier's: the gateway knows nothing of its holders")]
    NumberNotServed,
    #[error("`{field}` is not a mobile number: only mobile numbers are recycled and bound to apps")]
    NotMobile { field: &'static str },
    #[error("`{field}`: no app {app_id:?} in the catalog")]
    UnknownApp { field: String, app_id: String },
    #[error("the request is larger than the gateway accepts")]
    MessageTooLarge,
    #[error("wrong code")]
    InvalidCode,
    #[error("the verification expired, was replaced by a newer one, or was already used")]
    VerificationExpired,
    #[error("too many wrong codes: start a new verification")]
    VerificationFailed,
    #[error("too many codes requested for this number: try again later")]
    MaxCodesExceeded { retry_after: Duration },
    #[error("missing, expired or invalid session token")]
    InvalidSession,
    #[error("`{field}` is not an account ref this gateway issued")]
    InvalidAccountRef { field: String },
    #[error("`{field}` is an account ref of another number")]
    ForeignAccountRef { field: String },
    #[error("`{field}`: the app does not support unbinding this account")]
    UnbindNotSupported { field: String },
    #[error("this idempotency_key was used with a different request")]
    IdempotencyKeyReused,
    #[error("permission denied: {why}")]
    PermissionDenied { why: String },
    #[error("too many requests from this tenant: slow down")]
    RateLimited { retry_after: Duration },
    #[error("too many requests from this visitor: slow down")]
    VisitorRateLimited { retry_after: Duration },
    #[error("{what} is unavailable: try again")]
    Unavailable { what: &'static str },
    #[error("the gateway is at capacity: retry shortly")]
    Overloaded { retry_after: Duration },
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// An invalid field with a description.
    pub fn field(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidField {
            field: field.into(),
            description: description.into(),
        }
    }

    /// The gRPC code and the `ErrorReason` of this error.
    pub fn code_and_reason(&self) -> (Code, ErrorReason) {
        use ErrorReason as R;
        match self {
            Self::InvalidPhoneNumber { .. } => (Code::InvalidArgument, R::InvalidPhoneNumber),
            Self::InvalidIdLastSix { .. } => (Code::InvalidArgument, R::InvalidIdLastSix),
            Self::InvalidField { .. } => (Code::InvalidArgument, R::InvalidField),
            Self::InvalidPhoneNumberAt { .. } => (Code::InvalidArgument, R::InvalidPhoneNumber),
            Self::OutOfRange { .. } => (Code::InvalidArgument, R::OutOfRange),
            Self::NotFound { .. } | Self::NumberNotServed => (Code::NotFound, R::NotFound),
            Self::NotMobile { .. } => (Code::FailedPrecondition, R::InvalidPhoneNumber),
            Self::UnknownApp { .. } => (Code::InvalidArgument, R::UnknownApp),
            Self::MessageTooLarge => (Code::InvalidArgument, R::MessageTooLarge),
            Self::InvalidCode => (Code::InvalidArgument, R::InvalidCode),
            Self::VerificationExpired => (Code::FailedPrecondition, R::VerificationExpired),
            Self::VerificationFailed => (Code::FailedPrecondition, R::VerificationFailed),
            Self::MaxCodesExceeded { .. } => (Code::ResourceExhausted, R::MaxCodesExceeded),
            Self::InvalidSession => (Code::Unauthenticated, R::InvalidSession),
            Self::InvalidAccountRef { .. } => (Code::InvalidArgument, R::InvalidAccountRef),
            Self::ForeignAccountRef { .. } => (Code::PermissionDenied, R::InvalidAccountRef),
            Self::UnbindNotSupported { .. } => (Code::FailedPrecondition, R::InvalidField),
            Self::IdempotencyKeyReused => (Code::AlreadyExists, R::IdempotencyKeyReused),
            Self::PermissionDenied { .. } => (Code::PermissionDenied, R::PermissionDenied),
            Self::RateLimited { .. } | Self::VisitorRateLimited { .. } => {
                (Code::ResourceExhausted, R::RateLimited)
            }
            Self::Unavailable { .. } | Self::Overloaded { .. } => {
                (Code::Unavailable, R::ServiceUnavailable)
            }
            Self::Internal => (Code::Internal, R::Internal),
        }
    }

    /// The status sent to the caller.
    pub fn to_status(&self) -> Status {
        let (code, reason) = self.code_and_reason();
        let mut metadata = HashMap::new();
        let mut details = ErrorDetails::new();
        match self {
            Self::InvalidPhoneNumber { field }
            | Self::InvalidIdLastSix { field }
            | Self::NotMobile { field } => {
                metadata.insert("field".to_owned(), (*field).to_owned());
                details.add_bad_request_violation(*field, self.to_string());
            }
            Self::InvalidField { field, .. }
            | Self::InvalidPhoneNumberAt { field }
            | Self::OutOfRange { field, .. }
            | Self::UnknownApp { field, .. }
            | Self::InvalidAccountRef { field }
            | Self::ForeignAccountRef { field }
            | Self::UnbindNotSupported { field } => {
                metadata.insert("field".to_owned(), field.clone());
                details.add_bad_request_violation(field.clone(), self.to_string());
            }
            Self::InvalidCode => {
                details.add_bad_request_violation("code", self.to_string());
            }
            Self::MaxCodesExceeded { retry_after }
            | Self::RateLimited { retry_after }
            | Self::VisitorRateLimited { retry_after }
            | Self::Overloaded { retry_after } => {
                details.set_retry_info(Some(*retry_after));
            }
            _ => {}
        }
        details.set_error_info(reason.as_str_name(), ERROR_DOMAIN, metadata);
        Status::with_error_details(code, self.to_string(), details)
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        e.to_status()
    }
}

impl From<SessionError> for ApiError {
    fn from(_: SessionError) -> Self {
        // One answer for every kind of bad token, so callers learn nothing from the difference.
        Self::InvalidSession
    }
}

impl From<VerifyError> for ApiError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::InvalidCode => Self::InvalidCode,
            VerifyError::Expired => Self::VerificationExpired,
            VerifyError::Failed => Self::VerificationFailed,
            VerifyError::MaxCodesExceeded { retry_after } => Self::MaxCodesExceeded { retry_after },
            VerifyError::Registry(_) => Self::Unavailable {
                what: "the subscriber registry",
            },
            VerifyError::Store(e) => Self::store(e),
        }
    }
}

impl From<UnbindError> for ApiError {
    fn from(e: UnbindError) -> Self {
        let at = |index: usize| format!("account_refs[{index}]");
        match e {
            UnbindError::Empty => {
                Self::field("account_refs", "at least one account ref is required")
            }
            UnbindError::TooMany { max } => Self::field(
                "account_refs",
                format!("at most {max} account refs per request"),
            ),
            UnbindError::Duplicate { index } => Self::field(at(index), "duplicate account ref"),
            UnbindError::Forged { index } => Self::InvalidAccountRef { field: at(index) },
            UnbindError::Foreign { index } => Self::ForeignAccountRef { field: at(index) },
            UnbindError::UnknownApp { index, app_id } => Self::UnknownApp {
                field: at(index),
                app_id,
            },
            UnbindError::NotSupported { index } => Self::UnbindNotSupported { field: at(index) },
            UnbindError::BadKey => Self::field(
                "idempotency_key",
                "required: 1 to 128 visible ASCII characters, the same on every retry",
            ),
            UnbindError::KeyReused => Self::IdempotencyKeyReused,
            UnbindError::Store(e) => Self::store(e),
        }
    }
}

impl From<PushError> for ApiError {
    fn from(e: PushError) -> Self {
        match e {
            PushError::Store(e) => Self::store(e),
            PushError::KeyReused => Self::IdempotencyKeyReused,
        }
    }
}

/// For the push services, whose handlers answer with a `Status` (stream errors are statuses).
impl From<PushError> for Status {
    fn from(e: PushError) -> Self {
        ApiError::from(e).into()
    }
}

impl ApiError {
    /// A store failure: logged here, reported as unavailable.
    pub fn store(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "store error");
        Self::Unavailable { what: "the store" }
    }
}

/// Reads the `ErrorInfo.reason` of a status (for clients and tests).
pub fn reason_of(status: &Status) -> Option<String> {
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
}
