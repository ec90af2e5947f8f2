//! Sealed tokens: encrypt-then-MAC (ChaCha20, then HMAC-SHA256 truncated to 128 bits) over a
//! small payload, encoded as URL-safe base64.
//!
//! Session tokens and account refs are handed to clients. The MAC makes them tamper-evident (a
//! client cannot forge or alter one); the encryption keeps what is inside (the number, a previous
//! holder's account id) unreadable to whoever holds the token. The purpose byte is covered by the
//! MAC, so an account ref can never be replayed as a session token or the reverse.
//!
//! Layout: `version(1) | purpose(1) | nonce(12) | ciphertext | tag(16)`.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chacha20::{
    ChaCha20,
    cipher::{KeyIvInit, StreamCipher},
};
use hmac::Mac;
use rand::Rng;

use super::{Keys, keys::HmacSha256};

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 2 + NONCE_LEN;
/// Longest encoded token accepted; checked before decoding so junk costs nothing. Room for an
/// account ref whose app uses account ids of up to ~2.5 KB.
pub(super) const MAX_ENCODED_LEN: usize = 4096;

/// What a sealed token is for; part of the authenticated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Purpose {
    /// A session token.
    Session = 1,
    /// An account reference.
    AccountRef = 2,
    /// A phone number at rest in the store.
    StoredNumber = 3,
}

impl Keys {
    /// Seals `plaintext` for `purpose`.
    pub fn seal(&self, purpose: Purpose, plaintext: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill(&mut nonce);
        let mut buf = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        buf.push(VERSION);
        buf.push(purpose as u8);
        buf.extend_from_slice(&nonce);
        buf.extend_from_slice(plaintext);
        let mut cipher = ChaCha20::new(&self.encryption.into(), &nonce.into());
        cipher.apply_keystream(&mut buf[HEADER_LEN..]);
        let tag = self.tag(&buf);
        buf.extend_from_slice(&tag.finalize().into_bytes()[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(buf)
    }

    /// Opens a token sealed for `purpose`; `None` if it is malformed, altered, or for another
    /// purpose. Constant-time in the tag comparison.
    pub fn open(&self, purpose: Purpose, token: &str) -> Option<Vec<u8>> {
        if token.len() > MAX_ENCODED_LEN {
            return None;
        }
        let mut buf = URL_SAFE_NO_PAD.decode(token).ok()?;
        if buf.len() < HEADER_LEN + TAG_LEN || buf[0] != VERSION || buf[1] != purpose as u8 {
            return None;
        }
        let body_len = buf.len() - TAG_LEN;
        self.tag(&buf[..body_len])
            .verify_truncated_left(&buf[body_len..])
            .ok()?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&buf[2..HEADER_LEN]);
        buf.truncate(body_len);
        let mut cipher = ChaCha20::new(&self.encryption.into(), &nonce.into());
        cipher.apply_keystream(&mut buf[HEADER_LEN..]);
        Some(buf.split_off(HEADER_LEN))
    }

    fn tag(&self, data: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(data);
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_payload_seals_and_opens() {
        let keys = Keys::derive(&[7; 32]);
        let token = keys.seal(Purpose::Session, b"");
        assert_eq!(keys.open(Purpose::Session, &token), Some(Vec::new()));
        // One byte short of a header and a tag: refused.
        let short = URL_SAFE_NO_PAD.encode(vec![0u8; HEADER_LEN + TAG_LEN - 1]);
        assert_eq!(keys.open(Purpose::Session, &short), None);
    }

    fn keys() -> Keys {
        Keys::derive(&[7; 32])
    }

    #[test]
    fn round_trip_and_opacity() {
        let k = keys();
        let t = k.seal(Purpose::Session, b"+8613800138000");
        assert!(!t.contains("13800138000"));
        assert_eq!(k.open(Purpose::Session, &t).unwrap(), b"+8613800138000");
        // Fresh nonce each time.
        assert_ne!(t, k.seal(Purpose::Session, b"+8613800138000"));
    }

    #[test]
    fn altered_foreign_or_wrong_purpose_tokens_fail() {
        let k = keys();
        let t = k.seal(Purpose::AccountRef, b"payload");
        assert!(k.open(Purpose::Session, &t).is_none());
        assert!(
            Keys::derive(&[8; 32])
                .open(Purpose::AccountRef, &t)
                .is_none()
        );
        let mut bytes = URL_SAFE_NO_PAD.decode(&t).unwrap();
        for i in 0..bytes.len() {
            bytes[i] ^= 1;
            assert!(
                k.open(Purpose::AccountRef, &URL_SAFE_NO_PAD.encode(&bytes))
                    .is_none()
            );
            bytes[i] ^= 1;
        }
        for junk in ["", "a", "!!!!", &"A".repeat(5000)] {
            // (5000 characters is over the limit: refused before decoding.)
            assert!(k.open(Purpose::AccountRef, junk).is_none());
        }
    }
}
