//! `POST /number-recycling/v0.3/check`: the CAMARA Number Recycling API, version 0.3.0 (release
//! r3.3, Commonalities 0.9.0), as its OpenAPI definition and test scenarios have it.
//!
//! - Request `{"phoneNumber"?: "+E.164", "specifiedDate": "YYYY-MM-DD"}`, nothing else (an unknown
//!   property is `400 INVALID_ARGUMENT`). `specifiedDate` is a day in the carrier's time zone
//!   (`[number_status] time_zone`); the check asks whether the holder changed after that day
//!   began. (From its first instant rather than its last: an app that knew its user on that day
//!   is told "recycled" if the number changed hands that very day, and verifies again, rather than
//!   keep a stranger bound.)
//! - Answer `200 {"phoneNumberRecycled": bool}`; errors `{status, code, message}` with CAMARA's
//!   codes; a valid `x-correlator` is echoed on every answer, an invalid one is
//!   `400 INVALID_ARGUMENT` (and not echoed).
//! - The number comes from a three-legged token's subject or from the body, never both
//!   (`422 UNNECESSARY_IDENTIFIER`) and never neither (`422 MISSING_IDENTIFIER`).
//!
//! The check itself is `crate::api::number_status`, shared with gRPC `CheckNumberRecycled`; the
//! tenant, its role and rate limit, and the audit record are those of a gRPC caller.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Map, Value, json};

use super::{HttpApi, auth::TokenError};
use crate::{
    api::{
        ApiError,
        number_status::{CAMARA_FIELDS, Question, check_recycled},
        tenant::Action,
    },
    audit::{AuditAction, Entry},
};

/// The path of the one operation.
pub const CHECK_PATH: &str = "/number-recycling/v0.3/check";

/// The largest request body read (the request is two short strings).
const MAX_BODY_BYTES: usize = 16 * 1024;

/// The `x-correlator` header.
const CORRELATOR: &str = "x-correlator";

/// An answer other than 200, in CAMARA's error body.
#[derive(Debug)]
pub struct CamaraError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// `WWW-Authenticate` for 401 and 403 (RFC 6750).
    challenge: Option<&'static str>,
    retry_after: Option<u64>,
}

impl CamaraError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            challenge: None,
            retry_after: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }

    fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", message);
        e.retry_after = Some(1);
        e
    }

    /// The answer, with the correlator echoed when there is one.
    pub fn into_response_with(self, correlator: Option<&HeaderValue>) -> Response {
        let body = json!({
            "status": self.status.as_u16(),
            "code": self.code,
            "message": self.message,
        });
        let mut response = json_response(self.status, &body);
        let headers = response.headers_mut();
        if let Some(value) = correlator {
            headers.insert(CORRELATOR, value.clone());
        }
        if let Some(challenge) = self.challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }

    /// The code, for metrics and the audit trail.
    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<TokenError> for CamaraError {
    fn from(e: TokenError) -> Self {
        if e.is_forbidden() {
            let mut error = Self::new(StatusCode::FORBIDDEN, "PERMISSION_DENIED", e.to_string());
            error.challenge = Some(
                "Bearer realm=\"unbind-gateway\", error=\"insufficient_scope\", \
                 scope=\"number-recycling:check\"",
            );
            return error;
        }
        let mut error = Self::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            format!(
                "Request not authenticated due to missing, invalid, or expired credentials: {e}."
            ),
        );
        error.challenge = Some(if e == TokenError::Missing {
            "Bearer realm=\"unbind-gateway\""
        } else {
            "Bearer realm=\"unbind-gateway\", error=\"invalid_token\""
        });
        error
    }
}

/// The check's refusals, in CAMARA's terms. Messages never hold the number.
impl From<ApiError> for CamaraError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::OutOfRange { field, description } => Self::new(
                StatusCode::BAD_REQUEST,
                "OUT_OF_RANGE",
                format!("{field} {description}."),
            ),
            // The pattern was checked before: a number that fits it but is no phone number at
            // all is one the operator does not have (CAMARA's scenario C02.02).
            ApiError::NumberNotServed | ApiError::InvalidPhoneNumber { .. } => Self::new(
                StatusCode::NOT_FOUND,
                "IDENTIFIER_NOT_FOUND",
                "Phone number not found: it is not one of this operator's mobile numbers.",
            ),
            ApiError::NotMobile { .. } => Self::unprocessable(
                "SERVICE_NOT_APPLICABLE",
                "The service is not available for the provided phone number: it is not a \
                 mobile number.",
            ),
            ApiError::PermissionDenied { why } => Self::new(
                StatusCode::FORBIDDEN,
                "PERMISSION_DENIED",
                format!(
                    "Client does not have sufficient permissions to perform this action: {why}."
                ),
            ),
            ApiError::RateLimited { retry_after }
            | ApiError::VisitorRateLimited { retry_after }
            | ApiError::Overloaded { retry_after } => {
                let mut error = Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TOO_MANY_REQUESTS",
                    "Too many requests from this client: retry after the time in Retry-After.",
                );
                error.retry_after = Some(retry_after.as_secs_f64().ceil().max(1.0) as u64);
                error
            }
            ApiError::Unavailable { what } => Self::unavailable(format!(
                "Service unavailable: {what} does not answer; retry."
            )),
            ApiError::InvalidField { field, .. } | ApiError::InvalidPhoneNumberAt { field } => {
                Self::invalid(format!("{field} is not valid."))
            }
            _ => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "Unknown server error: retry, and report it if it persists.",
            ),
        }
    }
}

/// A JSON answer.
fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The request body, checked against `CreateCheckNumRecycling`.
struct CheckBody {
    phone_number: Option<String>,
    specified_date: chrono::NaiveDate,
}

/// CAMARA's `PhoneNumber`: `^\+[1-9][0-9]{4,14}$`.
fn is_phone_number(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (5..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// `specifiedDate`: exactly `YYYY-MM-DD`, a real day.
fn specified_date(s: &str) -> Option<chrono::NaiveDate> {
    let b = s.as_bytes();
    let shaped = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    shaped
        .then(|| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
        .flatten()
}

/// Parses and checks the body. Messages name the property, never echo its value.
fn parse_body(content_type: Option<&HeaderValue>, bytes: &[u8]) -> Result<CheckBody, CamaraError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(CamaraError::invalid(
            "A JSON request body is required: {\"specifiedDate\": \"YYYY-MM-DD\"} (and \
             \"phoneNumber\" with a two-legged token).",
        ));
    }
    let json_type = content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json_type {
        return Err(CamaraError::invalid(
            "The request body must be JSON, sent with Content-Type: application/json.",
        ));
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|_| CamaraError::invalid("The request body is not valid JSON."))?;
    let Value::Object(object) = value else {
        return Err(CamaraError::invalid(
            "The request body must be a JSON object.",
        ));
    };
    parse_object(object)
}

fn parse_object(mut object: Map<String, Value>) -> Result<CheckBody, CamaraError> {
    let date = object.remove("specifiedDate");
    let phone = object.remove("phoneNumber");
    if !object.is_empty() {
        return Err(CamaraError::invalid(
            "The request body has a property this API does not define: only phoneNumber and \
             specifiedDate are allowed.",
        ));
    }
    let specified_date = match date {
        None => {
            return Err(CamaraError::invalid(
                "specifiedDate is required: a date in RFC 3339 full-date format (YYYY-MM-DD).",
            ));
        }
        Some(Value::String(s)) => specified_date(&s).ok_or_else(|| {
            CamaraError::invalid(
                "specifiedDate must be a date in RFC 3339 full-date format (YYYY-MM-DD).",
            )
        })?,
        Some(_) => {
            return Err(CamaraError::invalid(
                "specifiedDate must be a string: a date in RFC 3339 full-date format (YYYY-MM-DD).",
            ));
        }
    };
    let phone_number = match phone {
        None => None,
        Some(Value::String(s)) if is_phone_number(&s) => Some(s),
        Some(_) => {
            return Err(CamaraError::invalid(
                "phoneNumber must be a string in E.164 format: '+' and 5 to 15 digits, the \
                 first not 0.",
            ));
        }
    };
    Ok(CheckBody {
        phone_number,
        specified_date,
    })
}

/// The request's `x-correlator`: `Ok(None)` when absent or empty, an error when it is not one.
pub fn correlator(headers: &HeaderMap) -> Result<Option<HeaderValue>, CamaraError> {
    let mut values = headers.get_all(CORRELATOR).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) if v.is_empty() => Ok(None),
        (Some(v), None) if crate::api::correlator::is_correlator(v.as_bytes()) => {
            Ok(Some(v.clone()))
        }
        _ => Err(CamaraError::invalid(
            "x-correlator must be at most 256 characters of a-z, A-Z, 0-9 and - _ : ; . / < > { }.",
        )),
    }
}

/// The handler.
pub async fn check(State(api): State<Arc<HttpApi>>, headers: HeaderMap, body: Body) -> Response {
    let correlator = match correlator(&headers) {
        Ok(c) => c,
        Err(e) => {
            api.count(e.code());
            return e.into_response_with(None);
        }
    };
    let correlator_text = correlator
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let result = answer(&api, &headers, body, &correlator_text).await;
    match result {
        Ok(recycled) => {
            api.count("OK");
            let mut response =
                json_response(StatusCode::OK, &json!({ "phoneNumberRecycled": recycled }));
            if let Some(value) = &correlator {
                response.headers_mut().insert(CORRELATOR, value.clone());
            }
            response
        }
        Err(e) => {
            api.count(e.code());
            if e.status().is_server_error() {
                tracing::warn!(code = e.code(), "number-recycling check failed");
            }
            e.into_response_with(correlator.as_ref())
        }
    }
}

/// Authenticates, admits, parses and checks; audits what reached the check.
async fn answer(
    api: &HttpApi,
    headers: &HeaderMap,
    body: Body,
    correlator: &str,
) -> Result<bool, CamaraError> {
    const ACTION: AuditAction = AuditAction::CheckRecycled;
    let _permit = api
        .in_flight
        .try_acquire()
        .map_err(|_| CamaraError::unavailable("The gateway is at capacity: retry shortly."))?;
    // Who is calling: the token's client, or (development without `[http.auth]`) the
    // development tenant.
    let caller = match &api.tokens {
        Some(tokens) => {
            let authorization = headers
                .get(header::AUTHORIZATION)
                .map(|v| v.to_str().map_err(|_| TokenError::NotBearer))
                .transpose()?;
            Some(tokens.verify(authorization).map_err(|e| {
                let e = CamaraError::from(e);
                api.edge
                    .refused_because("", "", ACTION, correlator, e.code());
                e
            })?)
        }
        None => None,
    };
    let tenant = api
        .edge
        .admit_named(
            caller.as_ref().map(|c| c.client.as_str()),
            Action::CheckNumber,
            ACTION,
            correlator,
        )
        .await?;
    let refused = |e: CamaraError, hash: &str| {
        api.edge
            .refused_because(&tenant.name, hash, ACTION, correlator, e.code());
        e
    };
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            refused(
                CamaraError::invalid(format!(
                    "The request body is larger than {MAX_BODY_BYTES} bytes, or was cut short."
                )),
                "",
            )
        })?;
    let request =
        parse_body(headers.get(header::CONTENT_TYPE), &bytes).map_err(|e| refused(e, ""))?;
    let subject = caller.as_ref().and_then(|c| c.subject_number.as_deref());
    let phone_number = match (subject, request.phone_number.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(refused(
                CamaraError::unprocessable(
                    "UNNECESSARY_IDENTIFIER",
                    "The phone number is already identified by the access token: leave \
                     phoneNumber out of the request body.",
                ),
                "",
            ));
        }
        (None, None) => {
            return Err(refused(
                CamaraError::unprocessable(
                    "MISSING_IDENTIFIER",
                    "The phone number cannot be identified: with a two-legged access token, \
                     phoneNumber is required in the request body.",
                ),
                "",
            ));
        }
        (Some(number), None) | (None, Some(number)) => number,
    };
    let question = Question {
        phone_number,
        since_ms: api
            .gateway
            .config
            .number_status
            .day_start_ms(request.specified_date),
        fields: CAMARA_FIELDS,
    };
    let mut hash = String::new();
    match check_recycled(&api.gateway, &question, &mut hash).await {
        Ok(recycled) => {
            api.gateway.audit.record(Entry {
                tenant: &tenant.name,
                number_hash: &hash,
                action: ACTION,
                apps: String::new(),
                outcome: format!("recycled={recycled}"),
                correlator,
            });
            Ok(recycled)
        }
        Err(e) => {
            api.edge
                .refused(&tenant.name, &hash, ACTION, correlator, &e);
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_follow_camaras_pattern() {
        for ok in ["+8613800138000", "+12345", "+123456789012345"] {
            assert!(is_phone_number(ok), "{ok}");
        }
        for bad in [
            "8613800138000",
            "+0123456",
            "+1234",
            "+1234567890123456",
            "+86 138",
            "+86-138",
            "",
            "+",
        ] {
            assert!(!is_phone_number(bad), "{bad}");
        }
    }

    #[test]
    fn dates_are_exactly_full_dates() {
        assert!(specified_date("2024-02-29").is_some());
        for bad in [
            "2023-02-29",
            "2024-2-29",
            "2024-02-29T00:00:00Z",
            "20240229",
            "2024/02/29",
            "+2024-02-29",
            " 2024-02-29",
            "2024-13-01",
            "",
        ] {
            assert!(specified_date(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn bodies_refuse_unknown_properties_and_wrong_types() {
        let json = |s: &str| {
            let ct = HeaderValue::from_static("application/json");
            parse_body(Some(&ct), s.as_bytes()).map(|b| (b.phone_number, b.specified_date))
        };
        assert!(json(r#"{"specifiedDate":"2024-01-01"}"#).is_ok());
        assert!(json(r#"{"specifiedDate":"2024-01-01","phoneNumber":"+8613800138000"}"#).is_ok());
        for bad in [
            "",
            "{}",
            "[]",
            "null",
            r#"{"specifiedDate":"2024-01-01","extra":1}"#,
            r#"{"specifiedDate":20240101}"#,
            r#"{"specifiedDate":"2024-01-01","phoneNumber":8613800138000}"#,
            r#"{"phoneNumber":"+8613800138000"}"#,
            r#"{"specifiedDate":"2024-01-01""#,
        ] {
            let e = json(bad).expect_err(bad);
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(e.code(), "INVALID_ARGUMENT", "{bad}");
            assert!(!e.message.contains("8613800138000"), "{bad}: {}", e.message);
        }
        let text = HeaderValue::from_static("text/plain");
        assert!(parse_body(Some(&text), br#"{"specifiedDate":"2024-01-01"}"#).is_err());
        let charset = HeaderValue::from_static("application/json; charset=utf-8");
        assert!(parse_body(Some(&charset), br#"{"specifiedDate":"2024-01-01"}"#).is_ok());
    }
}
