//! One-time SMS codes and random identifiers.
//!
//! Codes are 6 digits drawn from the thread-local CSPRNG (ChaCha, seeded from the OS). The store
//! keeps only an HMAC of the code bound to its verification id, and checks compare those digests
//! in constant time.

use rand::Rng;
use subtle::ConstantTimeEq;

use super::{Keys, keys};

/// Digits in a code.
pub const CODE_LENGTH: u32 = 6;

/// A one-time code. `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct OneTimeCode(String);

impl std::fmt::Debug for OneTimeCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OneTimeCode(******)")
    }
}

impl OneTimeCode {
    /// A fresh random code.
    pub fn generate() -> Self {
        let n: u32 = rand::rng().random_range(0..10u32.pow(CODE_LENGTH));
        Self(format!("{n:0width$}", width = CODE_LENGTH as usize))
    }

    /// Parses a code typed by a person: exactly six digits after trimming.
    pub fn parse(input: &str) -> Option<Self> {
        let s = input.trim();
        (s.len() == CODE_LENGTH as usize && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| Self(s.to_owned()))
    }

    /// The digits, only for the SMS.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The digest the store keeps, bound to the verification id, under the active code key:
    /// `key id$hex`, so a rotated keyring still checks the codes already sent.
    pub fn digest(&self, keys: &Keys, verification_id: &str) -> String {
        let key = keys.code.active();
        format!(
            "{}${}",
            key.id,
            keys::hex(&keys::hmac_label(&key.mac, &self.message(verification_id)))
        )
    }

    fn message(&self, verification_id: &str) -> Vec<u8> {
        let mut data = Vec::with_capacity(verification_id.len() + 1 + self.0.len());
        data.extend_from_slice(verification_id.as_bytes());
        data.push(0);
        data.extend_from_slice(self.0.as_bytes());
        data
    }

    /// A digest of the same shape that no code matches: what a verification whose ID characters
    /// did not match stores, so neither a guessed code nor a reader of the store can tell it
    /// from a real one, and the store needs no column saying which it is.
    pub fn unusable_digest(keys: &Keys, verification_id: &str) -> String {
        // A 32-character secret that is not six digits, forgotten at once.
        let never_sent = Self(random_id("none"));
        never_sent.digest(keys, verification_id)
    }

    /// Whether this code matches a stored digest, in constant time, under the key the digest
    /// names (a digest from before the keyring names none: the signing secret's). A digest made
    /// by a key no longer held matches nothing.
    pub fn matches(&self, keys: &Keys, verification_id: &str, stored_digest: &str) -> bool {
        let (mac, stored_hex) = match stored_digest.split_once('$') {
            Some((id, hex)) => match keys.code.get(id) {
                Some(key) => (&key.mac, hex),
                None => return false,
            },
            None => match keys.legacy.as_deref() {
                Some(legacy) => (&legacy.code, stored_digest),
                None => return false,
            },
        };
        let digest = keys::hex(&keys::hmac_label(mac, &self.message(verification_id)));
        digest.len() == stored_hex.len()
            && bool::from(digest.as_bytes().ct_eq(stored_hex.as_bytes()))
    }
}

/// A random identifier with a prefix, e.g. `ver_3f…` (128 bits, hex).
pub fn random_id(prefix: &str) -> String {
    let n: u128 = rand::rng().random();
    format!("{prefix}_{n:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_six_digits_and_match_only_their_digest() {
        let k = Keys::derive(&[9; 32]);
        let c = OneTimeCode::generate();
        assert_eq!(c.expose().len(), 6);
        let d = c.digest(&k, "ver_1");
        assert!(c.matches(&k, "ver_1", &d));
        assert!(!c.matches(&k, "ver_2", &d));
        let other = OneTimeCode::parse(if c.expose() == "000000" {
            "000001"
        } else {
            "000000"
        });
        assert!(!other.unwrap().matches(&k, "ver_1", &d));
        assert!(OneTimeCode::parse("12345").is_none());
        let unusable = OneTimeCode::unusable_digest(&k, "ver_1");
        assert_eq!(unusable.len(), d.len());
        assert!(!c.matches(&k, "ver_1", &unusable));
        assert!(OneTimeCode::parse("12345a").is_none());
        assert_eq!(format!("{c:?}"), "OneTimeCode(******)");
    }

    #[test]
    fn digests_name_their_key_and_older_digests_still_match() {
        let k = Keys::derive(&[9; 32]);
        let c = OneTimeCode::parse("123456").unwrap();
        let d = c.digest(&k, "ver_1");
        assert!(d.starts_with("signing-secret$"), "{d}");
        // A digest from before the keyring: the bare hex under the secret's code key.
        let bare = d.split_once('$').unwrap().1.to_owned();
        assert!(c.matches(&k, "ver_1", &bare));
        // A key this keyring does not hold matches nothing, whatever the hex.
        assert!(!c.matches(&k, "ver_1", &format!("gone${bare}")));
        assert!(!c.matches(&Keys::derive(&[8; 32]), "ver_1", &d));
        assert!(!c.matches(&k, "ver_1", ""));
        assert!(!c.matches(&k, "ver_1", "$"));
    }

    #[test]
    fn ids_are_unique_and_prefixed() {
        let a = random_id("ver");
        assert!(a.starts_with("ver_") && a.len() == 36);
        assert_ne!(a, random_id("ver"));
    }
}
