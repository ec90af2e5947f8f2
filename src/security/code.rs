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

    /// The digest the store keeps, bound to the verification id.
    pub fn digest(&self, keys: &Keys, verification_id: &str) -> String {
        let mut data = Vec::with_capacity(verification_id.len() + 1 + self.0.len());
        data.extend_from_slice(verification_id.as_bytes());
        data.push(0);
        data.extend_from_slice(self.0.as_bytes());
        keys::hex(&keys::hmac_label(&keys.code, &data))
    }

    /// A digest of the same shape that no code matches: what a verification whose ID characters
    /// did not match stores, so neither a guessed code nor a reader of the store can tell it
    /// from a real one, and the store needs no column saying which it is.
    pub fn unusable_digest(keys: &Keys, verification_id: &str) -> String {
        // A 32-character secret that is not six digits, forgotten at once.
        let never_sent = Self(random_id("none"));
        never_sent.digest(keys, verification_id)
    }

    /// Whether this code matches a stored digest, in constant time.
    pub fn matches(&self, keys: &Keys, verification_id: &str, stored_digest: &str) -> bool {
        let digest = self.digest(keys, verification_id);
        digest.len() == stored_digest.len()
            && bool::from(digest.as_bytes().ct_eq(stored_digest.as_bytes()))
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
    fn ids_are_unique_and_prefixed() {
        let a = random_id("ver");
        assert!(a.starts_with("ver_") && a.len() == 36);
        assert_ne!(a, random_id("ver"));
    }
}
