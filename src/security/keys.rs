//! Key derivation from the configured secret, and the keyed hash of phone numbers.
//!
//! One secret in the config yields independent keys per use (HMAC-SHA256 of the secret with a
//! label), so a token key can never be used to reverse a number hash and vice versa. Replicas
//! sharing a database must share the secret.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::{E164, IdLastSix};

pub(super) type HmacSha256 = Hmac<Sha256>;

/// The keys derived from the signing secret. The HMAC keys are kept keyed (the inner and outer
/// pads already hashed), so each use costs the message's hashing only: sealing an account ref for
/// every account of a look-up is on the hot path.
#[derive(Clone)]
pub struct Keys {
    pub(super) encryption: [u8; 32],
    pub(super) mac: HmacSha256,
    number: HmacSha256,
    pub(super) code: HmacSha256,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

/// A keyed hash of a phone number: lets the store, the cache and the audit trail group by number
/// without holding it, and cannot be reversed by enumerating numbers without the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NumberHash([u8; 32]);

impl NumberHash {
    /// Parses the hex form back (for cache invalidation from a stored ticket).
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }

    /// Lower-case hex, for the store and logs.
    pub fn hex(&self) -> String {
        hex(&self.0)
    }

    /// The hex of the first `bytes` bytes (at most all 32).
    pub fn hex_prefix(&self, bytes: usize) -> String {
        hex(&self.0[..bytes.min(self.0.len())])
    }

    /// The first 16 bytes, a compact cache key (collisions need 2^64 numbers).
    pub fn short(&self) -> u128 {
        let mut b = [0u8; 16];
        b.copy_from_slice(&self.0[..16]);
        u128::from_be_bytes(b)
    }
}

impl std::fmt::Debug for NumberHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NumberHash({}…)", &self.hex()[..12])
    }
}

impl Keys {
    /// Derives every key from the secret (at least 32 bytes; the config checks).
    pub fn derive(secret: &[u8]) -> Self {
        let root = keyed(secret);
        let key = |label: &[u8]| hmac_label(&root, label);
        Self {
            encryption: key(b"unbind-gateway/v1/encryption"),
            mac: keyed(&key(b"unbind-gateway/v1/mac")),
            number: keyed(&key(b"unbind-gateway/v1/number-hash")),
            code: keyed(&key(b"unbind-gateway/v1/one-time-code")),
        }
    }

    /// A keyed digest naming one account of one app bound to one number, so the store can find
    /// an account's open ticket without holding the account id in the clear.
    pub fn account_key(&self, number: &NumberHash, app_id: &str, account_id: &str) -> String {
        let mut data = Vec::with_capacity(32 + app_id.len() + account_id.len() + 2);
        data.extend_from_slice(&number.0);
        data.extend_from_slice(app_id.as_bytes());
        data.push(0);
        data.extend_from_slice(account_id.as_bytes());
        hex(&hmac_label(&self.number, &data))
    }

    /// A keyed digest of a number together with the ID characters someone typed for it: what
    /// per-number limits and superseding are keyed on, so starts with other ID characters (a
    /// stranger's guesses) never count against, or replace, the holder's. As irreversible as the
    /// number hash without the key; with it, the ID space (341,000 endings) could be searched,
    /// which is why the store keeps the digest only as long as the verification.
    pub fn pair_hash(&self, phone: &E164, id: &IdLastSix) -> String {
        let mut data = Vec::with_capacity(40);
        data.extend_from_slice(b"id-pair\0");
        data.extend_from_slice(phone.expose().as_bytes());
        data.push(0);
        data.extend_from_slice(id.expose().as_bytes());
        hex(&hmac_label(&self.number, &data))
    }

    /// The keyed hash of a phone number.
    pub fn number_hash(&self, phone: &E164) -> NumberHash {
        NumberHash(hmac_label(&self.number, phone.expose().as_bytes()))
    }
}

/// HMAC-SHA256 keyed with `key`, ready for a message.
pub(super) fn keyed(key: &[u8]) -> HmacSha256 {
    <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| {
        // HMAC accepts keys of any length; this branch cannot be taken.
        unreachable!("HMAC-SHA256 takes any key length")
    })
}

/// HMAC-SHA256 of `data` under the already keyed `key`.
pub(super) fn hmac_label(key: &HmacSha256, data: &[u8]) -> [u8; 32] {
    let mut mac = key.clone();
    mac.update(data);
    mac.finalize().into_bytes().into()
}

pub(super) fn hex(bytes: &[u8]) -> String {
    // A table, not `write!("{:02x}")`: this runs for every account ref of every look-up.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_no_key_material_and_a_hash_prefix_only() {
        let keys = Keys::derive(b"keys-debug-test-secret-0123456789ab");
        assert_eq!(format!("{keys:?}"), "Keys(..)");
        let hash = keys.number_hash(&crate::domain::E164::parse("13800138000").unwrap());
        assert_eq!(
            format!("{hash:?}"),
            format!("NumberHash({}…)", &hash.hex()[..12])
        );
        // The cache's short key is the hash's first 16 bytes.
        assert_eq!(
            hash.short(),
            u128::from_str_radix(&hash.hex()[..32], 16).unwrap()
        );
    }

    #[test]
    fn number_hash_is_keyed_and_stable() {
        let n = E164::parse("13800138000").unwrap();
        let a = Keys::derive(&[1; 32]);
        let b = Keys::derive(&[2; 32]);
        assert_eq!(a.number_hash(&n), a.number_hash(&n));
        assert_ne!(a.number_hash(&n), b.number_hash(&n));
        assert_eq!(a.number_hash(&n).hex().len(), 64);
        assert!(!format!("{:?}", a.number_hash(&n)).contains("13800138000"));
        let h = a.number_hash(&n);
        assert_eq!(NumberHash::from_hex(&h.hex()), Some(h));
        assert_eq!(NumberHash::from_hex("zz"), None);
        let id = |s| IdLastSix::parse(s).unwrap();
        assert_eq!(
            a.pair_hash(&n, &id("12345X")),
            a.pair_hash(&n, &id("12345x"))
        );
        assert_ne!(
            a.pair_hash(&n, &id("12345X")),
            a.pair_hash(&n, &id("123450"))
        );
        assert_ne!(
            a.pair_hash(&n, &id("12345X")),
            b.pair_hash(&n, &id("12345X"))
        );
        assert_ne!(a.pair_hash(&n, &id("12345X")), a.number_hash(&n).hex());
        assert_ne!(
            a.account_key(&h, "app-1", "x"),
            a.account_key(&h, "app-1", "y")
        );
    }
}
