//! The recycled-number check: one implementation behind `unbind.v1.NumberStatus`'s
//! `CheckNumberRecycled` (gRPC) and the CAMARA Number Recycling API's `POST .../check`
//! (the HTTP surface). It answers only what the gateway knows:
//!
//! - `true` when the holder behind the number changed after the date (the carrier pushed a
//!   re-issue later than it), a date between cancellation and re-issue included;
//! - `false` only for one of the carrier's numbers, from a date inside the history the carrier's
//!   pushes are complete for, with nothing pushed since;
//! - otherwise an error, never a guess: a date in the future, before `[number_status]
//!   history_starts` or older than the history kept is `OUT_OF_RANGE`; a number outside
//!   `[number_status] number_ranges` is another carrier's (`NumberNotServed`); a number that is
//!   not a mobile one is `NotMobile`.

use crate::{domain::E164, gateway::Gateway};

use super::ApiError;

/// How the two surfaces name the fields, for the errors.
#[derive(Clone, Copy, Debug)]
pub struct Fields {
    pub phone_number: &'static str,
    pub specified_date: &'static str,
}

/// `CheckNumberRecycledRequest`'s field names.
pub const GRPC_FIELDS: Fields = Fields {
    phone_number: "phone_number",
    specified_date: "specified_date",
};

/// The CAMARA API's property names.
pub const CAMARA_FIELDS: Fields = Fields {
    phone_number: "phoneNumber",
    specified_date: "specifiedDate",
};

/// What is asked.
pub struct Question<'a> {
    /// As the caller sent it; parsed here.
    pub phone_number: &'a str,
    /// The instant the caller last knew the holder, in milliseconds since the epoch (for the HTTP
    /// API, the first instant of `specifiedDate` in the carrier's time zone).
    pub since_ms: i64,
    pub fields: Fields,
}

/// Answers `question`; `number_hash` is set once the number is known (for the audit trail).
pub async fn check_recycled(
    gateway: &Gateway,
    question: &Question<'_>,
    number_hash: &mut String,
) -> Result<bool, ApiError> {
    let fields = question.fields;
    let phone = E164::parse(question.phone_number).map_err(|_| {
        if E164::is_valid_but_not_mobile(question.phone_number) {
            ApiError::NotMobile {
                field: fields.phone_number,
            }
        } else {
            ApiError::InvalidPhoneNumber {
                field: fields.phone_number,
            }
        }
    })?;
    *number_hash = gateway.keys.number_hash(&phone).hex();
    let status = &gateway.config.number_status;
    // Another carrier's number: its re-issues are never pushed here, so "not recycled" would be
    // a guess.
    if !status.serves(phone.expose()) {
        return Err(ApiError::NumberNotServed);
    }
    let since = question.since_ms;
    let now = gateway.clock.now_ms();
    let out_of_range = |description: String| ApiError::OutOfRange {
        field: fields.specified_date.into(),
        description,
    };
    if since > now {
        return Err(out_of_range("must not be in the future".into()));
    }
    // Before the carrier's pushes were complete, a number never pushed may still have changed
    // hands.
    if let Ok(Some(starts)) = status.history_starts_ms()
        && since < starts
    {
        return Err(out_of_range(format!(
            "must not be before {} (the start of the carrier's recycled-number history)",
            status.history_starts.as_deref().unwrap_or_default()
        )));
    }
    // Re-issue dates older than the history window are deleted: before it, the gateway does not
    // know, and says so rather than answer "not recycled".
    let window = gateway.config.retention.recycled_history;
    if since < now - window.as_millis() as i64 {
        return Err(out_of_range(format!(
            "must be within the last {} days (the recycled-number history kept)",
            window.as_secs() / 86_400
        )));
    }
    Ok(gateway.pusher.recycled_since(&phone, since).await?)
}
