//! The keyring: keys with ids and purposes, and the keyed hashes built on them.
//!
//! Every key serves one purpose ([`KeyPurpose`]): sealing session tokens, sealing account refs,
//! sealing data at rest (numbers and account ids), hashing numbers, or digesting one-time codes.
//! Keys come from a keyring the operator manages (a TOML file, a directory of them, or the
//! `UNBIND_GATEWAY_KEYS` environment variable; see [`KeySources`]) and, for deployments that
//! began with one, from the legacy `signing_secret`, from which a key per purpose is derived under
//! the id `signing-secret`.
//!
//! Per purpose one key is active: it seals, signs and hashes everything new. The others still
//! open and verify what they made, and every sealed value and code digest names its key, so a
//! key can be retired (removed from the keyring) once nothing made with it is still needed.
//!
//! The number hash is an index, not a secret to rotate lightly: the keyring holds exactly one
//! number-hash key, the same on every replica for the life of the data (see the README, "Keys").

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use aes_gcm_siv::{Aes256GcmSiv, KeyInit};
use anyhow::{Context, bail};
use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::domain::{E164, IdLastSix};

pub(super) type HmacSha256 = Hmac<Sha256>;

/// The environment variable that may hold a keyring (the text of a keys file), for containers.
pub const KEYS_ENV: &str = "UNBIND_GATEWAY_KEYS";

/// The id of the keys derived from the legacy `signing_secret`.
pub const SIGNING_SECRET_ID: &str = "signing-secret";

/// Longest key id, in bytes; it travels in every sealed value.
pub const MAX_KEY_ID_LEN: usize = 32;

/// Bytes in every key's secret.
pub const KEY_BYTES: usize = 32;

/// What a key is for. A key serves exactly one purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyPurpose {
    /// Seals session tokens.
    Session,
    /// Seals account refs.
    AccountRef,
    /// Seals numbers and account ids at rest in the store.
    StoredData,
    /// The keyed hash of numbers (and the digests built on it): the store's index.
    NumberHash,
    /// Digests of one-time codes.
    Code,
}

impl KeyPurpose {
    /// Every purpose, in the order they are listed.
    pub const ALL: [KeyPurpose; 5] = [
        KeyPurpose::Session,
        KeyPurpose::AccountRef,
        KeyPurpose::StoredData,
        KeyPurpose::NumberHash,
        KeyPurpose::Code,
    ];

    /// The name used in key files.
    pub fn name(self) -> &'static str {
        match self {
            KeyPurpose::Session => "session",
            KeyPurpose::AccountRef => "account-ref",
            KeyPurpose::StoredData => "stored-data",
            KeyPurpose::NumberHash => "number-hash",
            KeyPurpose::Code => "code",
        }
    }

    /// Parses a name as written in key files.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

impl std::fmt::Display for KeyPurpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One `[[key]]` entry of a keys file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: String,
    purpose: KeyPurpose,
    /// 32 random bytes, standard base64.
    secret: String,
    /// Whether this key makes new values for its purpose (one per purpose).
    #[serde(default)]
    active: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(default)]
    key: Vec<KeyEntry>,
}

/// Where the keys come from: keys files (each named, for messages) and the legacy secret.
#[derive(Default)]
pub struct KeySources {
    /// `(where it came from, the text of a keys file)`.
    pub files: Vec<(String, String)>,
    /// The legacy `signing_secret`, when configured.
    pub signing_secret: Option<Vec<u8>>,
}

impl KeySources {
    /// The keys files named by `[keys] file` and `[keys] dir` (every `*.toml` in it, in name
    /// order), the `UNBIND_GATEWAY_KEYS` variable, and the signing secret.
    pub fn gather(
        file: Option<&PathBuf>,
        dir: Option<&PathBuf>,
        env: Option<String>,
        signing_secret: Option<Vec<u8>>,
    ) -> anyhow::Result<Self> {
        let mut files = Vec::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("`keys.file`: cannot read {}", path.display()))?;
            files.push((path.display().to_string(), text));
        }
        if let Some(dir) = dir {
            let mut paths = std::fs::read_dir(dir)
                .with_context(|| format!("`keys.dir`: cannot read {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect::<Vec<_>>();
            paths.sort();
            for path in paths {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("`keys.dir`: cannot read {}", path.display()))?;
                files.push((path.display().to_string(), text));
            }
        }
        if let Some(text) = env.filter(|t| !t.trim().is_empty()) {
            files.push((format!("${KEYS_ENV}"), text));
        }
        Ok(Self {
            files,
            signing_secret,
        })
    }
}

/// A key that seals (an AEAD key).
pub(super) struct SealKey {
    pub(super) id: String,
    pub(super) aead: Aes256GcmSiv,
}

/// A key that hashes or digests (HMAC-SHA256, kept keyed).
pub(super) struct MacKey {
    pub(super) id: String,
    pub(super) mac: HmacSha256,
}

/// The keys of one purpose: the active one first.
pub(super) struct Ring<K> {
    keys: Vec<Arc<K>>,
}

impl<K> Ring<K> {
    pub(super) fn active(&self) -> &K {
        &self.keys[0]
    }
}

impl Ring<SealKey> {
    pub(super) fn get(&self, id: &[u8]) -> Option<&SealKey> {
        self.keys
            .iter()
            .find(|k| k.id.as_bytes() == id)
            .map(|k| &**k)
    }
}

impl Ring<MacKey> {
    pub(super) fn get(&self, id: &str) -> Option<&MacKey> {
        self.keys.iter().find(|k| k.id == id).map(|k| &**k)
    }
}

/// The keys the legacy secret derived before the keyring (version 1 sealed values and digests):
/// kept to open and check what they made.
pub(super) struct LegacyKeys {
    pub(super) encryption: [u8; 32],
    pub(super) mac: HmacSha256,
    pub(super) code: HmacSha256,
}

/// The keyring. The HMAC keys are kept keyed (the inner and outer pads already hashed), so each
/// use costs the message's hashing only: sealing an account ref for every account of a look-up
/// is on the hot path.
#[derive(Clone)]
pub struct Keys {
    pub(super) session: Arc<Ring<SealKey>>,
    pub(super) account_ref: Arc<Ring<SealKey>>,
    pub(super) stored: Arc<Ring<SealKey>>,
    number: Arc<MacKey>,
    pub(super) code: Arc<Ring<MacKey>>,
    pub(super) legacy: Option<Arc<LegacyKeys>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

/// What the keyring holds, without any secret: for `keys list` and start-up logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub purpose: KeyPurpose,
    pub id: String,
    pub active: bool,
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

/// Whether `id` is a usable key id: 1 to 32 of `A-Z a-z 0-9 . _ -`.
pub fn valid_key_id(id: &str) -> bool {
    (1..=MAX_KEY_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Keys {
    /// A keyring of the keys the legacy secret derives (one per purpose, id `signing-secret`),
    /// which also opens what that secret sealed before the keyring existed. For tests, and for
    /// deployments configured with `signing_secret` only.
    pub fn derive(secret: &[u8]) -> Self {
        Self::load(&KeySources {
            files: Vec::new(),
            signing_secret: Some(secret.to_vec()),
        })
        .unwrap_or_else(|e| unreachable!("a signing secret alone always makes a keyring: {e}"))
    }

    /// Builds the keyring from its sources. Refused, with a message naming the key and where it
    /// came from (never its secret): a malformed file or entry, a bad id, a secret that is not 32
    /// bytes of base64, an id used twice in a purpose, two active keys for a purpose, a purpose
    /// with no active key, or more than one number-hash key.
    pub fn load(sources: &KeySources) -> anyhow::Result<Self> {
        // purpose -> id -> (secret, active)
        let mut entries: BTreeMap<KeyPurpose, Vec<(String, [u8; KEY_BYTES], bool)>> =
            BTreeMap::new();
        for (origin, text) in &sources.files {
            let file: KeyFile = toml::from_str(text).map_err(|e| {
                // The message only: a span would quote the file, secrets and all.
                anyhow::anyhow!("keys in {origin}: {}", e.message().trim_end())
            })?;
            for entry in file.key {
                let KeyEntry {
                    id,
                    purpose,
                    secret,
                    active,
                } = entry;
                if !valid_key_id(&id) || id == SIGNING_SECRET_ID {
                    bail!(
                        "keys in {origin}: key id {:?} must be 1 to {MAX_KEY_ID_LEN} of A-Z a-z 0-9 . _ - (and not {SIGNING_SECRET_ID:?})",
                        id.chars().take(40).collect::<String>()
                    );
                }
                let bytes: [u8; KEY_BYTES] = STANDARD
                    .decode(secret.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .with_context(|| {
                        format!(
                            "keys in {origin}: the secret of key {id:?} ({purpose}) is not {KEY_BYTES} bytes of base64 (make one with `unbind-gateway keys new`)"
                        )
                    })?;
                let ring = entries.entry(purpose).or_default();
                if ring.iter().any(|(other, _, _)| *other == id) {
                    bail!("keys in {origin}: key {id:?} ({purpose}) is listed twice");
                }
                ring.push((id, bytes, active));
            }
        }
        let legacy = sources.signing_secret.as_deref().map(|secret| {
            let root = keyed(secret);
            let key = |label: &[u8]| hmac_label(&root, label);
            (
                root.clone(),
                LegacyKeys {
                    encryption: key(b"unbind-gateway/v1/encryption"),
                    mac: keyed(&key(b"unbind-gateway/v1/mac")),
                    code: keyed(&key(b"unbind-gateway/v1/one-time-code")),
                },
                key(b"unbind-gateway/v1/number-hash"),
            )
        });

        // The signing secret's key of each purpose: active unless the keyring names one.
        let mut rings: BTreeMap<KeyPurpose, Vec<(String, [u8; KEY_BYTES], bool)>> = entries;
        if let Some((root, _, number_key)) = &legacy {
            for purpose in KeyPurpose::ALL {
                let derived = match purpose {
                    // The number hash and code digests keep the values the secret always gave.
                    KeyPurpose::NumberHash => *number_key,
                    KeyPurpose::Code => hmac_label(root, b"unbind-gateway/v1/one-time-code"),
                    _ => hmac_label(
                        root,
                        format!("unbind-gateway/v2/{}", purpose.name()).as_bytes(),
                    ),
                };
                let ring = rings.entry(purpose).or_default();
                if purpose == KeyPurpose::NumberHash && !ring.is_empty() {
                    // The store's index was made with one of the two: a keyring key other than
                    // the secret's would leave every number already stored unreachable.
                    if let Some((id, _, _)) = ring.iter().find(|(_, bytes, _)| bytes != number_key)
                    {
                        bail!(
                            "the keyring's `number-hash` key {id:?} is not the one `signing_secret` \
                             derives: the store's index was made with the secret's, and numbers \
                             already stored would no longer be found. Use the entry \
                             `unbind-gateway keys number-hash-from-secret` prints, or drop \
                             `signing_secret`"
                        );
                    }
                    continue;
                }
                let active = !ring.iter().any(|(_, _, a)| *a);
                ring.push((SIGNING_SECRET_ID.to_owned(), derived, active));
            }
        }

        let mut seal_rings = BTreeMap::new();
        let mut mac_rings = BTreeMap::new();
        for purpose in KeyPurpose::ALL {
            let mut ring = rings.remove(&purpose).unwrap_or_default();
            match ring.iter().filter(|(_, _, active)| *active).count() {
                1 => {}
                0 if ring.is_empty() => bail!(
                    "no `{purpose}` key: add one to the keyring (`unbind-gateway keys new` makes one) or set `signing_secret`"
                ),
                0 => bail!(
                    "no active `{purpose}` key: mark one of {} `active = true`",
                    ids(&ring)
                ),
                _ => bail!(
                    "more than one active `{purpose}` key ({}): one per purpose makes new values",
                    ring.iter()
                        .filter(|(_, _, a)| *a)
                        .map(|(id, _, _)| format!("{id:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
            if purpose == KeyPurpose::NumberHash && ring.len() > 1 {
                bail!(
                    "more than one `number-hash` key ({}): the number hash is the store's index and keeps one key for the life of the data (README, \"Keys\")",
                    ids(&ring)
                );
            }
            ring.sort_by_key(|(_, _, active)| !active);
            match purpose {
                KeyPurpose::Session | KeyPurpose::AccountRef | KeyPurpose::StoredData => {
                    let keys = ring
                        .into_iter()
                        .map(|(id, secret, _)| {
                            Arc::new(SealKey {
                                id,
                                aead: Aes256GcmSiv::new(&secret.into()),
                            })
                        })
                        .collect();
                    seal_rings.insert(purpose, Arc::new(Ring { keys }));
                }
                KeyPurpose::NumberHash | KeyPurpose::Code => {
                    let keys = ring
                        .into_iter()
                        .map(|(id, secret, _)| {
                            Arc::new(MacKey {
                                id,
                                mac: keyed(&secret),
                            })
                        })
                        .collect();
                    mac_rings.insert(purpose, Arc::new(Ring { keys }));
                }
            }
        }
        let mut seal = |p| {
            seal_rings
                .remove(&p)
                .expect("every sealing purpose has a ring")
        };
        let (session, account_ref, stored) = (
            seal(KeyPurpose::Session),
            seal(KeyPurpose::AccountRef),
            seal(KeyPurpose::StoredData),
        );
        let mut mac = |p| mac_rings.remove(&p).expect("every MAC purpose has a ring");
        let (number, code) = (mac(KeyPurpose::NumberHash), mac(KeyPurpose::Code));
        Ok(Self {
            session,
            account_ref,
            stored,
            number: Arc::clone(&number.keys[0]),
            code,
            legacy: legacy.map(|(_, keys, _)| Arc::new(keys)),
        })
    }

    /// Every key held, by purpose, the active one first; no secrets.
    pub fn list(&self) -> Vec<KeyInfo> {
        let seal = |purpose, ring: &Ring<SealKey>| {
            ring.keys
                .iter()
                .enumerate()
                .map(move |(i, k)| KeyInfo {
                    purpose,
                    id: k.id.clone(),
                    active: i == 0,
                })
                .collect::<Vec<_>>()
        };
        let mut out = seal(KeyPurpose::Session, &self.session);
        out.extend(seal(KeyPurpose::AccountRef, &self.account_ref));
        out.extend(seal(KeyPurpose::StoredData, &self.stored));
        out.push(KeyInfo {
            purpose: KeyPurpose::NumberHash,
            id: self.number.id.clone(),
            active: true,
        });
        out.extend(self.code.keys.iter().enumerate().map(|(i, k)| KeyInfo {
            purpose: KeyPurpose::Code,
            id: k.id.clone(),
            active: i == 0,
        }));
        out
    }

    /// Whether the `stored-data` purpose holds keys besides the active one (or the legacy
    /// secret): then values at rest may need rewriting under the active key.
    pub fn stored_data_has_older_keys(&self) -> bool {
        self.stored.keys.len() > 1 || self.legacy.is_some()
    }

    /// Whether values sealed before the keyring (by the signing secret) can still be opened.
    pub fn opens_legacy_values(&self) -> bool {
        self.legacy.is_some()
    }

    /// A keyed digest naming one account of one app bound to one number, so the store can find
    /// an account's open ticket without holding the account id in the clear.
    pub fn account_key(&self, number: &NumberHash, app_id: &str, account_id: &str) -> String {
        let mut data = Vec::with_capacity(32 + app_id.len() + account_id.len() + 2);
        data.extend_from_slice(&number.0);
        data.extend_from_slice(app_id.as_bytes());
        data.push(0);
        data.extend_from_slice(account_id.as_bytes());
        hex(&hmac_label(&self.number.mac, &data))
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
        hex(&hmac_label(&self.number.mac, &data))
    }

    /// The keyed hash of a phone number.
    pub fn number_hash(&self, phone: &E164) -> NumberHash {
        NumberHash(hmac_label(&self.number.mac, phone.expose().as_bytes()))
    }
}

fn ids(ring: &[(String, [u8; KEY_BYTES], bool)]) -> String {
    ring.iter()
        .map(|(id, _, _)| format!("{id:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A new random key for `purpose` as a keys-file entry, inactive unless `active`.
pub fn new_key_entry(id: &str, purpose: KeyPurpose, active: bool) -> String {
    use rand::Rng;
    let mut secret = [0u8; KEY_BYTES];
    rand::rng().fill(&mut secret);
    key_entry(id, purpose, &secret, active)
}

/// The keys-file entry for the number-hash key the legacy secret derives: what lets a deployment
/// that began with `signing_secret` move to a keyring without changing its index.
pub fn signing_secret_number_key_entry(secret: &[u8], id: &str) -> String {
    let root = keyed(secret);
    key_entry(
        id,
        KeyPurpose::NumberHash,
        &hmac_label(&root, b"unbind-gateway/v1/number-hash"),
        true,
    )
}

fn key_entry(id: &str, purpose: KeyPurpose, secret: &[u8], active: bool) -> String {
    format!(
        "[[key]]\nid = \"{id}\"\npurpose = \"{purpose}\"\nsecret = \"{}\"\nactive = {active}\n",
        STANDARD.encode(secret)
    )
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

    fn file(text: &str) -> KeySources {
        KeySources {
            files: vec![("test.toml".into(), text.into())],
            signing_secret: None,
        }
    }

    fn all_purposes(id: &str) -> String {
        KeyPurpose::ALL
            .iter()
            .map(|&p| new_key_entry(id, p, true))
            .collect()
    }

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

    #[test]
    fn the_signing_secrets_number_hash_is_what_it_always_was_and_moves_to_a_keyring() {
        // The value the secret gave before the keyring: HMAC(HMAC(secret, label), number).
        let secret = b"an old deployment's signing secret, 32+ chars";
        let n = E164::parse("13800138000").unwrap();
        let derived = hmac_label(&keyed(secret), b"unbind-gateway/v1/number-hash");
        let before = hex(&hmac_label(&keyed(&derived), n.expose().as_bytes()));
        let keys = Keys::derive(secret);
        assert_eq!(keys.number_hash(&n).hex(), before);
        // The exported entry, in a keyring without the secret, hashes the same.
        let mut text: String = KeyPurpose::ALL
            .iter()
            .filter(|&&p| p != KeyPurpose::NumberHash)
            .map(|&p| new_key_entry("k1", p, true))
            .collect();
        text.push_str(&signing_secret_number_key_entry(secret, "index"));
        let moved = Keys::load(&file(&text)).unwrap();
        assert_eq!(moved.number_hash(&n).hex(), before);
        assert!(!moved.opens_legacy_values());
    }

    #[test]
    fn a_keyring_lists_its_keys_active_first_and_names_no_secret() {
        let mut text = all_purposes("2026-12");
        text.push_str(&new_key_entry("2026-06", KeyPurpose::StoredData, false));
        let keys = Keys::load(&file(&text)).unwrap();
        let listed = keys.list();
        assert_eq!(listed.len(), 6);
        let stored: Vec<_> = listed
            .iter()
            .filter(|k| k.purpose == KeyPurpose::StoredData)
            .map(|k| (k.id.as_str(), k.active))
            .collect();
        assert_eq!(stored, [("2026-12", true), ("2026-06", false)]);
        // With the secret too, its keys stand behind the keyring's in every purpose but the
        // number hash, which stays the keyring's one key: the one the secret derives (another
        // would lose the store's index, and is refused).
        let secret = vec![9; 32];
        let refused = Keys::load(&KeySources {
            files: vec![("k".into(), text.clone())],
            signing_secret: Some(secret.clone()),
        })
        .unwrap_err()
        .to_string();
        assert!(
            refused.contains("is not the one `signing_secret` derives"),
            "{refused}"
        );
        let mut text: String = text
            .split("[[key]]")
            .filter(|entry| !entry.contains("number-hash") && !entry.trim().is_empty())
            .map(|entry| format!("[[key]]{entry}"))
            .collect();
        text.push_str(&signing_secret_number_key_entry(&secret, "index"));
        let both = Keys::load(&KeySources {
            files: vec![("k".into(), text)],
            signing_secret: Some(secret),
        })
        .unwrap();
        assert!(both.opens_legacy_values());
        let listed = both.list();
        assert!(
            listed
                .iter()
                .filter(|k| k.purpose != KeyPurpose::NumberHash)
                .all(|k| k.active == (k.id == "2026-12"))
        );
        assert_eq!(
            listed
                .iter()
                .filter(|k| k.purpose == KeyPurpose::NumberHash)
                .count(),
            1
        );
    }

    #[test]
    fn bad_keyrings_are_refused_with_a_reason_and_no_secret() {
        let good = all_purposes("k1");
        let entry = new_key_entry("k2", KeyPurpose::Session, true);
        let secret = entry
            .lines()
            .find_map(|l| l.strip_prefix("secret = \""))
            .unwrap()
            .trim_end_matches('"')
            .to_owned();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "no `session` key"),
            (
                format!("{good}{entry}"),
                "more than one active `session` key",
            ),
            (
                format!(
                    "{good}{}",
                    entry
                        .replace("active = true", "active = false")
                        .replace("k2", "k1")
                ),
                "listed twice",
            ),
            (
                good.replace("active = true", "active = false"),
                "no active `session` key",
            ),
            (
                format!(
                    "{good}{}",
                    new_key_entry("k2", KeyPurpose::NumberHash, false)
                ),
                "more than one `number-hash` key",
            ),
            (good.replacen("k1", "bad id!", 1), "key id \"bad id!\""),
            (good.replacen("k1", SIGNING_SECRET_ID, 1), "key id"),
            (
                format!(
                    "{good}{}",
                    entry.replace(&secret, "c2hvcnQ=").replace("true", "false")
                ),
                "is not 32 bytes of base64",
            ),
            (format!("{good}[[key]]\nid = \"x\"\n"), "missing field"),
            (
                format!("{good}{}", entry.replace("session", "sessions")),
                "unknown variant",
            ),
            (format!("{good}[[key]]\nsecrets = 1\n"), "unknown field"),
        ];
        for (text, expected) in cases {
            let e = Keys::load(&file(&text)).unwrap_err().to_string();
            assert!(e.contains(expected), "{expected:?} not in {e:?}");
            assert!(!e.contains(&secret), "{e}");
            for line in good.lines().filter(|l| l.starts_with("secret")) {
                assert!(!e.contains(&line[10..40]), "{e}");
            }
        }
    }

    #[test]
    fn key_ids_are_short_and_plain() {
        assert!(valid_key_id("2026-12.a_b"));
        assert!(valid_key_id(&"a".repeat(MAX_KEY_ID_LEN)));
        for bad in ["", "a b", "é", "a/b", &"a".repeat(MAX_KEY_ID_LEN + 1)] {
            assert!(!valid_key_id(bad), "{bad:?}");
        }
        assert_eq!(
            KeyPurpose::parse("number-hash"),
            Some(KeyPurpose::NumberHash)
        );
        assert_eq!(KeyPurpose::parse("nope"), None);
    }
}
