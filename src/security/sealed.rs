//! Sealed values: AES-256-GCM-SIV under a key of the keyring, encoded as URL-safe base64.
//!
//! Session tokens and account refs are handed to clients; numbers and account ids are sealed at
//! rest in the store. The AEAD makes every sealed value tamper-evident and keeps what is inside
//! unreadable. Its nonce is drawn at random for every value and never needs counting: GCM-SIV is
//! nonce-misuse resistant, so even a repeated nonce reveals only that two values are equal.
//! (XChaCha20-Poly1305, the other choice the crates offer, measured 3.5 times slower on a
//! 180-byte account ref, and an account ref is sealed for every account of every look-up.)
//!
//! Layout (version 2): `2 | use(1) | id length(1) | key id | nonce(12) | ciphertext | tag(16)`.
//! The associated data is everything before the nonce (so the use and the key id are
//! authenticated) followed by the row the value belongs to ([`SealFor`]): a number sealed for
//! one row does not open as another number's, an account id does not open as another account's,
//! and a session token is not an account ref.
//!
//! Version 1 values (ChaCha20 then HMAC-SHA256, no key id, no row), made before the keyring by
//! the signing secret, still open while that secret is configured.

use aes_gcm_siv::{AeadInPlace, Nonce, Tag};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chacha20::{
    ChaCha20,
    cipher::{KeyIvInit, StreamCipher},
};
use hmac::Mac;
use rand::Rng;

use super::keys::{Keys, LegacyKeys, Ring, SealKey};

const VERSION: u8 = 2;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Longest encoded value accepted; checked before decoding so junk costs nothing. Room for an
/// account ref whose app uses account ids of up to `MAX_ACCOUNT_ID_BYTES`.
pub(super) const MAX_ENCODED_LEN: usize = 4096;
/// The most a value's key id and framing add to its plaintext, in bytes.
pub const MAX_OVERHEAD: usize = 3 + super::keys::MAX_KEY_ID_LEN + NONCE_LEN + TAG_LEN;

const V1: u8 = 1;
const V1_NONCE_LEN: usize = 12;
const V1_HEADER_LEN: usize = 2 + V1_NONCE_LEN;

/// What a value is sealed for, and the row it belongs to: part of the authenticated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealFor<'a> {
    /// A session token.
    Session,
    /// An account ref.
    AccountRef,
    /// A phone number at rest, bound to its row's number hash (hex).
    Number(&'a str),
    /// An account id at rest, bound to its ticket's account key.
    AccountId(&'a str),
}

impl SealFor<'_> {
    fn code(self) -> u8 {
        match self {
            SealFor::Session => 1,
            SealFor::AccountRef => 2,
            SealFor::Number(_) => 3,
            SealFor::AccountId(_) => 4,
        }
    }

    fn row_bytes(&self) -> &[u8] {
        match self {
            SealFor::Session | SealFor::AccountRef => &[],
            SealFor::Number(row) | SealFor::AccountId(row) => row.as_bytes(),
        }
    }

    /// The purpose byte version 1 used.
    fn v1_purpose(self) -> u8 {
        match self {
            SealFor::Session => 1,
            SealFor::AccountRef => 2,
            SealFor::Number(_) | SealFor::AccountId(_) => 3,
        }
    }
}

impl Keys {
    fn ring(&self, for_: SealFor<'_>) -> &Ring<SealKey> {
        match for_ {
            SealFor::Session => &self.session,
            SealFor::AccountRef => &self.account_ref,
            SealFor::Number(_) | SealFor::AccountId(_) => &self.stored,
        }
    }

    /// Seals `plaintext` for `for_` under the purpose's active key.
    pub fn seal(&self, for_: SealFor<'_>, plaintext: &[u8]) -> String {
        let key = self.ring(for_).active();
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill(&mut nonce);
        let id = key.id.as_bytes();
        let header_len = 3 + id.len();
        let mut buf = Vec::with_capacity(header_len + NONCE_LEN + plaintext.len() + TAG_LEN);
        buf.extend_from_slice(&[VERSION, for_.code(), id.len() as u8]);
        buf.extend_from_slice(id);
        buf.extend_from_slice(&nonce);
        buf.extend_from_slice(plaintext);
        let aad = associated_data(&buf[..header_len], for_);
        let (head, body) = buf.split_at_mut(header_len + NONCE_LEN);
        let tag = key
            .aead
            .encrypt_in_place_detached(Nonce::from_slice(&head[header_len..]), &aad, body)
            .unwrap_or_else(|_| unreachable!("a value under 4 KiB is within AES-GCM-SIV's limits"));
        buf.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(buf)
    }

    /// Opens a value sealed for `for_`; `None` if it is malformed, altered, for another use or
    /// row, or made by a key this keyring does not hold (retired or foreign).
    pub fn open(&self, for_: SealFor<'_>, token: &str) -> Option<Vec<u8>> {
        self.open_naming_key(for_, token).map(|(plain, _)| plain)
    }

    /// [`Keys::open`], and whether the value was made by the purpose's active key (a value that
    /// was not is rewritten when next written).
    pub fn open_naming_key(&self, for_: SealFor<'_>, token: &str) -> Option<(Vec<u8>, bool)> {
        if token.len() > MAX_ENCODED_LEN {
            return None;
        }
        let mut buf = URL_SAFE_NO_PAD.decode(token).ok()?;
        match *buf.first()? {
            VERSION => {}
            V1 => return open_v1(self.legacy.as_deref()?, for_, buf).map(|p| (p, false)),
            _ => return None,
        }
        let id_len = usize::from(*buf.get(2)?);
        let header_len = 3 + id_len;
        if buf[1] != for_.code() || buf.len() < header_len + NONCE_LEN + TAG_LEN {
            return None;
        }
        let ring = self.ring(for_);
        let key = ring.get(&buf[3..header_len])?;
        let is_active = std::ptr::eq(key, ring.active());
        let aad = associated_data(&buf[..header_len], for_);
        let body_end = buf.len() - TAG_LEN;
        let tag = Tag::clone_from_slice(&buf[body_end..]);
        let (head, rest) = buf.split_at_mut(header_len + NONCE_LEN);
        key.aead
            .decrypt_in_place_detached(
                Nonce::from_slice(&head[header_len..]),
                &aad,
                &mut rest[..body_end - header_len - NONCE_LEN],
                &tag,
            )
            .ok()?;
        buf.truncate(body_end);
        Some((buf.split_off(header_len + NONCE_LEN), is_active))
    }

    /// The id of the key a sealed value names (without opening it), for operators' counts.
    pub fn sealed_key_id(token: &str) -> Option<String> {
        // 48 characters are 36 bytes: more than the longest header.
        let head = URL_SAFE_NO_PAD
            .decode(if token.len() <= 48 {
                token
            } else {
                token.get(..48)?
            })
            .ok()?;
        match *head.first()? {
            V1 => Some(super::keys::SIGNING_SECRET_ID.to_owned()),
            VERSION => {
                let len = usize::from(*head.get(2)?);
                String::from_utf8(head.get(3..3 + len)?.to_vec()).ok()
            }
            _ => None,
        }
    }
}

impl Keys {
    /// The id of the key `token` names when this keyring does not hold it (a key retired too
    /// early, or not yet given to this replica): what turns "cannot open" into "wait for the
    /// operator" rather than "the value is bad".
    pub fn unheld_key(&self, for_: SealFor<'_>, token: &str) -> Option<String> {
        let id = Self::sealed_key_id(token)?;
        // Version 1 values name no key: they are the signing secret's, opened by its legacy keys.
        let held = self.ring(for_).get(id.as_bytes()).is_some()
            || (id == super::keys::SIGNING_SECRET_ID && self.legacy.is_some());
        (!held).then_some(id)
    }
}

/// The header, then the row.
fn associated_data(header: &[u8], for_: SealFor<'_>) -> Vec<u8> {
    let row = for_.row_bytes();
    let mut aad = Vec::with_capacity(header.len() + row.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(row);
    aad
}

/// Opens a version 1 value (encrypt-then-MAC under the signing secret's derived keys).
fn open_v1(legacy: &LegacyKeys, for_: SealFor<'_>, mut buf: Vec<u8>) -> Option<Vec<u8>> {
    if buf.len() < V1_HEADER_LEN + TAG_LEN || buf[1] != for_.v1_purpose() {
        return None;
    }
    let body_len = buf.len() - TAG_LEN;
    let mut mac = legacy.mac.clone();
    mac.update(&buf[..body_len]);
    mac.verify_truncated_left(&buf[body_len..]).ok()?;
    let mut nonce = [0u8; V1_NONCE_LEN];
    nonce.copy_from_slice(&buf[2..V1_HEADER_LEN]);
    buf.truncate(body_len);
    let mut cipher = ChaCha20::new(&legacy.encryption.into(), &nonce.into());
    cipher.apply_keystream(&mut buf[V1_HEADER_LEN..]);
    Some(buf.split_off(V1_HEADER_LEN))
}

/// Seals as version 1 did, for tests of what older deployments left in their stores.
#[cfg(test)]
fn seal_v1_for_tests(keys: &Keys, for_: SealFor<'_>, plaintext: &[u8]) -> Option<String> {
    let legacy = keys.legacy.as_deref()?;
    let mut nonce = [0u8; V1_NONCE_LEN];
    rand::rng().fill(&mut nonce);
    let mut buf = vec![V1, for_.v1_purpose()];
    buf.extend_from_slice(&nonce);
    buf.extend_from_slice(plaintext);
    let mut cipher = ChaCha20::new(&legacy.encryption.into(), &nonce.into());
    cipher.apply_keystream(&mut buf[V1_HEADER_LEN..]);
    let mut mac = legacy.mac.clone();
    mac.update(&buf);
    let tag = mac.finalize().into_bytes();
    buf.extend_from_slice(&tag[..TAG_LEN]);
    Some(URL_SAFE_NO_PAD.encode(buf))
}

#[cfg(test)]
mod tests {
    use super::super::keys::{KeyPurpose, KeySources, new_key_entry};
    use super::*;

    const H1: &str = "aa11";
    const H2: &str = "bb22";

    fn keys() -> Keys {
        Keys::derive(&[7; 32])
    }

    fn keyring(entries: &[(&str, KeyPurpose, bool)], secret: Option<&[u8]>) -> Keys {
        Keys::load(&KeySources {
            files: vec![(
                "t".into(),
                entries
                    .iter()
                    .map(|(id, p, a)| new_key_entry(id, *p, *a))
                    .collect(),
            )],
            signing_secret: secret.map(<[u8]>::to_vec),
        })
        .unwrap()
    }

    #[test]
    fn an_empty_payload_seals_and_opens() {
        let keys = keys();
        let token = keys.seal(SealFor::Session, b"");
        assert_eq!(keys.open(SealFor::Session, &token), Some(Vec::new()));
        let short = URL_SAFE_NO_PAD.encode([VERSION, 1, 0]);
        assert_eq!(keys.open(SealFor::Session, &short), None);
    }

    #[test]
    fn round_trip_and_opacity() {
        let k = keys();
        let t = k.seal(SealFor::Number(H1), b"+8613800138000");
        assert!(!t.contains("13800138000"));
        assert_eq!(k.open(SealFor::Number(H1), &t).unwrap(), b"+8613800138000");
        assert_ne!(t, k.seal(SealFor::Number(H1), b"+8613800138000"));
        assert_eq!(Keys::sealed_key_id(&t).as_deref(), Some("signing-secret"));
    }

    #[test]
    fn wrong_use_wrong_row_foreign_key_altered_and_truncated_values_fail() {
        let k = keys();
        let t = k.seal(SealFor::AccountId(H1), b"payload");
        assert!(k.open(SealFor::AccountId(H1), &t).is_some());
        for other in [
            SealFor::Session,
            SealFor::AccountRef,
            SealFor::Number(H1),
            SealFor::AccountId(H2),
        ] {
            assert!(k.open(other, &t).is_none(), "{other:?}");
        }
        assert!(
            Keys::derive(&[8; 32])
                .open(SealFor::AccountId(H1), &t)
                .is_none()
        );
        let mut bytes = URL_SAFE_NO_PAD.decode(&t).unwrap();
        for i in 0..bytes.len() {
            bytes[i] ^= 1;
            let altered = URL_SAFE_NO_PAD.encode(&bytes);
            assert!(k.open(SealFor::AccountId(H1), &altered).is_none(), "{i}");
            bytes[i] ^= 1;
        }
        for cut in 0..bytes.len() {
            let truncated = URL_SAFE_NO_PAD.encode(&bytes[..cut]);
            assert!(k.open(SealFor::AccountId(H1), &truncated).is_none());
        }
        for junk in ["", "a", "!!!!", &"A".repeat(5000)] {
            assert!(k.open(SealFor::AccountRef, junk).is_none());
        }
    }

    #[test]
    fn older_keys_open_until_retired_and_only_the_active_one_seals() {
        use KeyPurpose::*;
        let base = [
            (Session, true),
            (AccountRef, true),
            (NumberHash, true),
            (Code, true),
        ];
        let with = |stored: &[(&'static str, bool)]| {
            let mut e: Vec<(&str, KeyPurpose, bool)> =
                base.iter().map(|&(p, a)| ("k", p, a)).collect();
            e.extend(stored.iter().map(|&(id, a)| (id, StoredData, a)));
            e
        };
        // The same secrets across the three keyrings: build one and reuse its text.
        let text: String = with(&[("old", true), ("new", false)])
            .iter()
            .map(|(id, p, a)| new_key_entry(id, *p, *a))
            .collect();
        let load = |t: &str| {
            Keys::load(&KeySources {
                files: vec![("t".into(), t.into())],
                signing_secret: None,
            })
            .unwrap()
        };
        let before = load(&text);
        let old_value = before.seal(SealFor::Number(H1), b"n");
        assert_eq!(Keys::sealed_key_id(&old_value).as_deref(), Some("old"));
        // Step 2: the new key is made active; the old one still opens.
        let switched_text = flip_active(&text, "old", "new");
        let switched = load(&switched_text);
        assert_eq!(
            switched.open_naming_key(SealFor::Number(H1), &old_value),
            Some((b"n".to_vec(), false))
        );
        let new_value = switched.seal(SealFor::Number(H1), b"n");
        assert_eq!(Keys::sealed_key_id(&new_value).as_deref(), Some("new"));
        assert_eq!(
            switched.open_naming_key(SealFor::Number(H1), &new_value),
            Some((b"n".to_vec(), true))
        );
        // Replicas not yet switched open the new key's values too.
        assert!(before.open(SealFor::Number(H1), &new_value).is_some());
        // Step 4: the old key retired (removed): its values no longer open.
        let retired = load(&remove_key(&switched_text, "old"));
        assert!(retired.open(SealFor::Number(H1), &old_value).is_none());
        assert!(retired.open(SealFor::Number(H1), &new_value).is_some());
    }

    fn flip_active(text: &str, from: &str, to: &str) -> String {
        text.split("[[key]]")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let e = if e.contains(&format!("id = \"{from}\"")) {
                    e.replace("active = true", "active = false")
                } else if e.contains(&format!("id = \"{to}\"")) {
                    e.replace("active = false", "active = true")
                } else {
                    e.to_owned()
                };
                format!("[[key]]{e}")
            })
            .collect()
    }

    fn remove_key(text: &str, id: &str) -> String {
        text.split("[[key]]")
            .filter(|e| !e.is_empty() && !e.contains(&format!("id = \"{id}\"")))
            .map(|e| format!("[[key]]{e}"))
            .collect()
    }

    #[test]
    fn version_1_values_open_while_the_signing_secret_is_configured() {
        let secret = [5u8; 32];
        let old = Keys::derive(&secret);
        let v1 = seal_v1_for_tests(&old, SealFor::Number(H1), b"+8613800138000").unwrap();
        assert_eq!(Keys::sealed_key_id(&v1).as_deref(), Some("signing-secret"));
        // v1 had no rows: any number row opens it, but not another purpose.
        assert_eq!(
            old.open_naming_key(SealFor::Number(H2), &v1),
            Some((b"+8613800138000".to_vec(), false))
        );
        assert!(old.open(SealFor::Session, &v1).is_none());
        // A keyring that also holds the secret opens it; one without does not.
        use KeyPurpose::*;
        let all = [Session, AccountRef, StoredData, NumberHash, Code];
        let entries: Vec<_> = all.iter().map(|&p| ("k1", p, true)).collect();
        // Beside the secret, the number hash stays the secret's (another is refused).
        let beside_secret: Vec<_> = entries
            .iter()
            .copied()
            .filter(|(_, p, _)| *p != NumberHash)
            .collect();
        assert!(
            keyring(&beside_secret, Some(&secret))
                .open(SealFor::Number(H1), &v1)
                .is_some()
        );
        assert!(
            keyring(&entries, None)
                .open(SealFor::Number(H1), &v1)
                .is_none()
        );
        // Tampered v1 values are refused.
        let mut bytes = URL_SAFE_NO_PAD.decode(&v1).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(
            old.open(SealFor::Number(H1), &URL_SAFE_NO_PAD.encode(&bytes))
                .is_none()
        );
    }
}
