//! Account refs: the opaque handle a client passes back to `Unbind`. Sealed so a client can neither
//! forge one for an account it was not shown nor move one to another number (the ref carries the
//! keyed hash of the number it was shown for), and so a previous holder's account id stays hidden.

use serde::{Deserialize, Serialize};

use super::{Keys, NumberHash, SealFor, sealed::MAX_ENCODED_LEN};

/// Whose account this is, decided from `bound_at` against `holder_since`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ownership {
    /// Bound after the current holder got the number (beyond the margin).
    CurrentHolder,
    /// Bound before: a previous holder's account.
    PreviousHolder,
    /// Nobody can tell: no binding date, no `holder_since`, a date in the future, or one too
    /// close to `holder_since` to trust. Treated like a previous holder's (fail closed).
    Unknown,
}

/// How ownership is decided. Only an account the dates clearly put after the holder got the
/// number is the holder's own: every doubt falls to `Unknown`, which shows as little as a
/// previous holder's account and is never unbound as the holder's request.
#[derive(Clone, Copy, Debug)]
pub struct OwnershipRule {
    /// Clock skew allowed between the carrier and the apps, either side of `holder_since`.
    pub margin_ms: i64,
}

impl OwnershipRule {
    /// Ownership of an account bound at `bound_at_ms` for a holder since `holder_since_ms`, at
    /// `now_ms`.
    pub fn decide(
        &self,
        bound_at_ms: Option<i64>,
        holder_since_ms: Option<i64>,
        now_ms: i64,
    ) -> Ownership {
        let (Some(bound), Some(since)) = (bound_at_ms, holder_since_ms) else {
            return Ownership::Unknown;
        };
        if bound > now_ms {
            // A binding in the future is a broken or lying clock: no evidence either way.
            Ownership::Unknown
        } else if bound < since.saturating_sub(self.margin_ms) {
            Ownership::PreviousHolder
        } else if bound > since.saturating_add(self.margin_ms) {
            Ownership::CurrentHolder
        } else {
            Ownership::Unknown
        }
    }
}

/// The longest `account_id` the gateway can carry, in bytes once JSON-escaped. The gateway seals
/// each account id into an account ref (JSON
/// `{"a":app,"i":id,"n":32 hex,"s":session id,"b":bound_at ms,"u":bool}`) and refuses refs
/// longer than 4096 base64 characters (`security::sealed::MAX_ENCODED_LEN`): 3072 bytes, less
/// 63 of framing with the longest key id (`MAX_OVERHEAD`), less 132 of JSON around the fields
/// (with a 36-character session id and a 20-character date) and 64 of the longest app id,
/// leaves 2813. A unit test below seals an id of exactly this length under a 32-character key id.
/// The ref also carries the hint the listing showed (`"h"`, at most 32 characters: 199 bytes
/// with its key, escaped); for an id too long to leave room for it (over about 2,600 bytes) the
/// hint is left out rather than the ref made too long to accept ([`AccountRef::seal`]).
pub const MAX_ACCOUNT_ID_BYTES: usize = 2813;

/// An account id's length in the ref: its bytes once JSON-escaped (a quote takes two).
pub fn escaped_len(account_id: &str) -> usize {
    serde_json::to_string(account_id)
        .map(|s| s.len().saturating_sub(2))
        .unwrap_or(usize::MAX)
}

/// What an account ref stands for. It carries the binding date, not a verdict: `Unbind` decides
/// ownership again from the session's `holder_since`, and refuses a ref shown to another session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRef {
    #[serde(rename = "a")]
    pub app_id: String,
    #[serde(rename = "i")]
    pub account_id: String,
    /// First 32 hex characters of the number's keyed hash.
    #[serde(rename = "n")]
    pub number: String,
    /// The session the account was shown to.
    #[serde(rename = "s")]
    pub session: String,
    /// When the app said the account was bound (ms since the epoch).
    #[serde(rename = "b")]
    pub bound_at_ms: Option<i64>,
    /// Whether the app said this account can be unbound.
    #[serde(rename = "u")]
    pub unbind_supported: bool,
    /// The hint the listing showed for this account (as shown: masked unless it was the
    /// holder's own), so the ticket an `Unbind` makes can show it again. Empty in a ref made
    /// before refs carried it (a session's refs live 10 minutes, so across an upgrade a client
    /// may still send one) and in a ref that has no room for it ([`AccountRef::seal`]).
    #[serde(rename = "h", default, skip_serializing_if = "String::is_empty")]
    pub display_hint: String,
}

impl AccountRef {
    /// A ref for an account of `app_id` shown in `session` for the number hashed as `number`.
    pub fn new(
        app_id: &str,
        account_id: &str,
        number: &NumberHash,
        session: &str,
        bound_at_ms: Option<i64>,
        unbind_supported: bool,
    ) -> Self {
        Self {
            app_id: app_id.to_owned(),
            account_id: account_id.to_owned(),
            number: number.hex_prefix(16),
            session: session.to_owned(),
            bound_at_ms,
            unbind_supported,
            display_hint: String::new(),
        }
    }

    /// The same ref, carrying the hint the listing shows for the account.
    pub fn with_hint(mut self, display_hint: &str) -> Self {
        self.display_hint = display_hint.to_owned();
        self
    }

    /// Seals the ref for a client. The hint is only along for the ride: a ref that would be too
    /// long for `Unbind` to accept with it (an account id near [`MAX_ACCOUNT_ID_BYTES`]) is
    /// sealed without it, so every ref the gateway issues stays one it accepts; that account's
    /// ticket then shows no hint.
    pub fn seal(&self, keys: &Keys) -> String {
        let sealed = keys.seal(
            SealFor::AccountRef,
            &serde_json::to_vec(self).unwrap_or_default(),
        );
        if sealed.len() <= MAX_ENCODED_LEN || self.display_hint.is_empty() {
            return sealed;
        }
        let without_hint = Self {
            display_hint: String::new(),
            ..self.clone()
        };
        keys.seal(
            SealFor::AccountRef,
            &serde_json::to_vec(&without_hint).unwrap_or_default(),
        )
    }

    /// Opens a ref; `None` when forged or altered.
    pub fn open(keys: &Keys, sealed: &str) -> Option<Self> {
        serde_json::from_slice(&keys.open(SealFor::AccountRef, sealed)?).ok()
    }

    /// Whether this ref was issued for the number hashed as `number`.
    pub fn is_for(&self, number: &NumberHash) -> bool {
        number.hex().starts_with(&self.number) && self.number.len() == 32
    }

    /// Whether this ref was shown in the session `session_id` (and no other).
    pub fn shown_in(&self, session_id: &str) -> bool {
        !self.session.is_empty() && self.session == session_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::E164;

    #[test]
    fn the_account_id_limit_is_what_a_sealed_ref_can_carry() {
        use crate::security::{KeyPurpose, KeySources, new_key_entry};
        let longest_id = "k".repeat(crate::security::keys::MAX_KEY_ID_LEN);
        let keys = Keys::load(&KeySources {
            files: vec![(
                "t".into(),
                KeyPurpose::ALL
                    .iter()
                    .map(|&p| new_key_entry(&longest_id, p, true))
                    .collect(),
            )],
            signing_secret: None,
        })
        .unwrap();
        let number = keys.number_hash(&E164::parse("+8613800138000").unwrap());
        let app_id = "a".repeat(64);
        let session = crate::security::random_id("ses");
        let sealed = |id: &str| {
            AccountRef::new(&app_id, id, &number, &session, Some(i64::MIN), false).seal(&keys)
        };
        let longest = "x".repeat(MAX_ACCOUNT_ID_BYTES);
        assert!(AccountRef::open(&keys, &sealed(&longest)).is_some());
        let too_long = "x".repeat(MAX_ACCOUNT_ID_BYTES + 1);
        assert!(AccountRef::open(&keys, &sealed(&too_long)).is_none());
        // Escaping counts: a quote takes two bytes in the ref.
        assert_eq!(escaped_len("a\"b"), 4);
        // The longest hint a listing shows (32 characters, each escaped to six bytes): the
        // longest id leaves no room for it, so the ref is sealed without it, and opens.
        let hint: String = ['\u{1}'; 32].iter().collect();
        assert_eq!(escaped_len(&hint), 192);
        let with_hint = |id: &str| {
            AccountRef::new(&app_id, id, &number, &session, Some(i64::MIN), false)
                .with_hint(&hint)
                .seal(&keys)
        };
        let opened = AccountRef::open(&keys, &with_hint(&longest)).unwrap();
        assert_eq!(opened.account_id, longest);
        assert_eq!(opened.display_hint, "");
        // An id 199 bytes shorter (the hint and `,"h":""`) always has room for it.
        let shorter = "x".repeat(MAX_ACCOUNT_ID_BYTES - 199);
        let opened = AccountRef::open(&keys, &with_hint(&shorter)).unwrap();
        assert_eq!(opened.display_hint, hint);
    }

    #[test]
    fn the_hint_rides_along_when_it_fits_and_old_refs_still_open() {
        let k = Keys::derive(&[4; 32]);
        let number = k.number_hash(&E164::parse("13800138000").unwrap());
        let r = AccountRef::new("app-001", "acct-1", &number, "ses_1", Some(5), true);
        // A ref without a hint seals exactly as before refs carried one.
        let plain = serde_json::to_string(&r).unwrap();
        assert!(!plain.contains("\"h\""), "{plain}");
        let hinted = r.clone().with_hint("z***g");
        let opened = AccountRef::open(&k, &hinted.seal(&k)).unwrap();
        assert_eq!(opened.display_hint, "z***g");
        assert_eq!(opened, hinted);
        // A ref sealed before the hint existed opens, with no hint.
        let old = br#"{"a":"app-001","i":"acct-1","n":"00","s":"ses_1","b":5,"u":true}"#;
        let opened = AccountRef::open(&k, &k.seal(SealFor::AccountRef, old)).unwrap();
        assert_eq!(opened.display_hint, "");
        assert_eq!(opened.account_id, "acct-1");
    }

    #[test]
    fn ownership_from_dates_fails_closed() {
        let rule = OwnershipRule { margin_ms: 10 };
        let now = 1_000;
        let decide = |bound, since| rule.decide(bound, since, now);
        assert_eq!(decide(Some(89), Some(100)), Ownership::PreviousHolder);
        assert_eq!(decide(Some(111), Some(100)), Ownership::CurrentHolder);
        // Within the margin of holder_since, either side: nobody can tell.
        for bound in [90, 95, 100, 105, 110] {
            assert_eq!(
                decide(Some(bound), Some(100)),
                Ownership::Unknown,
                "{bound}"
            );
        }
        // No date, no holder_since, or a date in the future.
        assert_eq!(decide(None, Some(100)), Ownership::Unknown);
        assert_eq!(decide(Some(500), None), Ownership::Unknown);
        assert_eq!(decide(Some(now + 1), Some(100)), Ownership::Unknown);
        assert_eq!(decide(Some(now), Some(100)), Ownership::CurrentHolder);
        assert_eq!(
            rule.decide(Some(i64::MIN), Some(i64::MIN), now),
            Ownership::Unknown
        );
    }

    #[test]
    fn bound_to_its_number_and_opaque() {
        let k = Keys::derive(&[4; 32]);
        let a = k.number_hash(&E164::parse("13800138000").unwrap());
        let b = k.number_hash(&E164::parse("13900139000").unwrap());
        let r = AccountRef::new("app-001", "acct-secret-42", &a, "ses_1", Some(5), true);
        let sealed = r.seal(&k);
        assert!(!sealed.contains("acct-secret-42"));
        let opened = AccountRef::open(&k, &sealed).unwrap();
        assert_eq!(opened, r);
        assert!(opened.is_for(&a));
        assert!(!opened.is_for(&b));
        assert!(opened.shown_in("ses_1") && !opened.shown_in("ses_2"));
        assert!(AccountRef::open(&k, &format!("{sealed}x")).is_none());
    }
}
