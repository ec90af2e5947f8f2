//! Account refs: the opaque handle a client passes back to `Unbind`. Sealed so a client can neither
//! forge one for an account it was not shown nor move one to another number (the ref carries the
//! keyed hash of the number it was shown for), and so a previous holder's account id stays hidden.

use serde::{Deserialize, Serialize};

use super::{Keys, NumberHash, Purpose};

/// Whose account this is, decided from `bound_at` against `holder_since`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ownership {
    /// Bound on or after the current holder got the number.
    CurrentHolder,
    /// Bound before: a previous holder's account.
    PreviousHolder,
    /// The app gave no binding date.
    Unknown,
}

impl Ownership {
    /// Ownership of an account bound at `bound_at_ms` for a holder since `holder_since_ms`.
    pub fn decide(bound_at_ms: Option<i64>, holder_since_ms: i64) -> Self {
        match bound_at_ms {
            Some(b) if b < holder_since_ms => Self::PreviousHolder,
            Some(_) => Self::CurrentHolder,
            None => Self::Unknown,
        }
    }
}

/// What an account ref stands for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRef {
    #[serde(rename = "a")]
    pub app_id: String,
    #[serde(rename = "i")]
    pub account_id: String,
    /// First 32 hex characters of the number's keyed hash.
    #[serde(rename = "n")]
    pub number: String,
    #[serde(rename = "o")]
    pub ownership: Ownership,
    /// Whether the app said this account can be unbound.
    #[serde(rename = "u")]
    pub unbind_supported: bool,
}

impl AccountRef {
    /// A ref for an account of `app_id` shown for the number hashed as `number`.
    pub fn new(
        app_id: &str,
        account_id: &str,
        number: &NumberHash,
        ownership: Ownership,
        unbind_supported: bool,
    ) -> Self {
        Self {
            app_id: app_id.to_owned(),
            account_id: account_id.to_owned(),
            number: number.hex_prefix(16),
            ownership,
            unbind_supported,
        }
    }

    /// Seals the ref for a client.
    pub fn seal(&self, keys: &Keys) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        keys.seal(Purpose::AccountRef, &bytes)
    }

    /// Opens a ref; `None` when forged or altered.
    pub fn open(keys: &Keys, sealed: &str) -> Option<Self> {
        serde_json::from_slice(&keys.open(Purpose::AccountRef, sealed)?).ok()
    }

    /// Whether this ref was issued for the number hashed as `number`.
    pub fn is_for(&self, number: &NumberHash) -> bool {
        number.hex().starts_with(&self.number) && self.number.len() == 32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::E164;

    #[test]
    fn ownership_from_dates() {
        assert_eq!(Ownership::decide(Some(5), 10), Ownership::PreviousHolder);
        assert_eq!(Ownership::decide(Some(10), 10), Ownership::CurrentHolder);
        assert_eq!(Ownership::decide(None, 10), Ownership::Unknown);
    }

    #[test]
    fn bound_to_its_number_and_opaque() {
        let k = Keys::derive(&[4; 32]);
        let a = k.number_hash(&E164::parse("13800138000").unwrap());
        let b = k.number_hash(&E164::parse("13900139000").unwrap());
        let r = AccountRef::new(
            "app-001",
            "acct-secret-42",
            &a,
            Ownership::PreviousHolder,
            true,
        );
        let sealed = r.seal(&k);
        assert!(!sealed.contains("acct-secret-42"));
        let opened = AccountRef::open(&k, &sealed).unwrap();
        assert_eq!(opened, r);
        assert!(opened.is_for(&a));
        assert!(!opened.is_for(&b));
        assert!(AccountRef::open(&k, &format!("{sealed}x")).is_none());
    }
}
