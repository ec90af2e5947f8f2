//! Session tokens: proof that a person verified a number, bound to the number, the tenant that
//! verified it, and when the current holder got the number (`holder_since`, which decides whose
//! accounts are whose). Sealed (encrypted, HMAC-signed), so any replica can check one without the
//! store, and nobody holding one can read or alter the number inside.

use serde::{Deserialize, Serialize};

use super::{Keys, SealFor};
use crate::domain::E164;

/// A verified session.
#[derive(Clone)]
pub struct Session {
    /// Random id, for the audit trail.
    pub id: String,
    /// The verified number.
    pub phone: E164,
    /// The tenant that verified it.
    pub tenant: String,
    /// When the current holder got the number (ms since the epoch); `None` when the registry
    /// did not say, and then no account is taken for the holder's own (fail closed).
    pub holder_since_ms: Option<i64>,
    /// When the session began (ms since the epoch); without `holder_since`, the session reads
    /// no ticket of the number from before it.
    pub issued_ms: i64,
    /// When the session ends (ms since the epoch).
    pub expires_ms: i64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("phone", &self.phone)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

/// Why a token was refused. Callers all get the same answer (`INVALID_SESSION`); the variants
/// exist for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("session token missing, malformed or forged")]
    Malformed,
    #[error("session expired")]
    Expired,
    #[error("session belongs to another tenant")]
    OtherTenant,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sid: String,
    ph: String,
    /// Digits of the country code in `ph` (0 in tokens from before it was added).
    #[serde(default)]
    cc: usize,
    tn: String,
    /// Absent (or 0, as tokens from before it could be absent said) when the registry gave no
    /// date.
    #[serde(default)]
    hs: Option<i64>,
    #[serde(default)]
    iat: i64,
    exp: i64,
}

impl Session {
    /// Seals this session into a token.
    pub fn token(&self, keys: &Keys) -> String {
        let claims = Claims {
            sid: self.id.clone(),
            ph: self.phone.expose().to_owned(),
            cc: self.phone.country_code_len(),
            tn: self.tenant.clone(),
            hs: self.holder_since_ms,
            iat: self.issued_ms,
            exp: self.expires_ms,
        };
        // Serialising a struct of strings and integers cannot fail.
        let bytes = serde_json::to_vec(&claims).unwrap_or_default();
        keys.seal(SealFor::Session, &bytes)
    }

    /// Opens and checks a token presented by `tenant` at `now_ms`.
    pub fn verify(
        keys: &Keys,
        token: &str,
        tenant: &str,
        now_ms: i64,
    ) -> Result<Session, SessionError> {
        let bytes = keys
            .open(SealFor::Session, token.trim())
            .ok_or(SessionError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&bytes).map_err(|_| SessionError::Malformed)?;
        if now_ms >= claims.exp {
            return Err(SessionError::Expired);
        }
        if claims.tn != tenant {
            return Err(SessionError::OtherTenant);
        }
        // The number was validated when the session was issued and the token is authenticated:
        // its shape is checked, not the numbering plan again (that costs ~30 µs a request).
        let phone = match E164::from_sealed(&claims.ph, claims.cc) {
            Some(phone) => phone,
            None => E164::parse(&claims.ph).map_err(|_| SessionError::Malformed)?,
        };
        Ok(Session {
            id: claims.sid,
            phone,
            tenant: claims.tn,
            holder_since_ms: claims.hs.filter(|&ms| ms != 0),
            // A token from before `iat` existed claims no start: then it reads no history at
            // all rather than all of it.
            issued_ms: if claims.iat > 0 {
                claims.iat
            } else {
                claims.exp
            },
            expires_ms: claims.exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session {
            id: "s1".into(),
            phone: E164::parse("13800138000").unwrap(),
            tenant: "dev".into(),
            holder_since_ms: Some(1_700_000_000_000),
            issued_ms: 1_000,
            expires_ms: 2_000,
        }
    }

    #[test]
    fn verifies_until_expiry_for_its_tenant_only() {
        let k = Keys::derive(&[3; 32]);
        let t = session().token(&k);
        let s = Session::verify(&k, &t, "dev", 1_999).unwrap();
        assert_eq!(s.phone.expose(), "+8613800138000");
        assert_eq!(s.holder_since_ms, Some(1_700_000_000_000));
        assert_eq!(s.issued_ms, 1_000);
        let unknown = Session {
            holder_since_ms: None,
            ..session()
        };
        let s = Session::verify(&k, &unknown.token(&k), "dev", 1).unwrap();
        assert_eq!(s.holder_since_ms, None);
        assert_eq!(
            Session::verify(&k, &t, "dev", 2_000).unwrap_err(),
            SessionError::Expired
        );
        assert_eq!(
            Session::verify(&k, &t, "other", 1).unwrap_err(),
            SessionError::OtherTenant
        );
        assert_eq!(
            Session::verify(&k, "nope", "dev", 1).unwrap_err(),
            SessionError::Malformed
        );
        assert!(!t.contains("13800138000"));
        assert!(!format!("{s:?}").contains("13800138000"));
    }

    #[test]
    fn a_token_without_a_start_reads_no_history() {
        let k = Keys::derive(&[3; 32]);
        let old = Session {
            issued_ms: 0,
            ..session()
        };
        let s = Session::verify(&k, &old.token(&k), "dev", 1).unwrap();
        assert_eq!(s.issued_ms, s.expires_ms);
    }

    #[test]
    fn debug_shows_the_masked_number_only() {
        assert_eq!(
            format!("{:?}", session()),
            "Session { id: \"s1\", phone: E164(138****8000), tenant: \"dev\", .. }"
        );
    }
}
