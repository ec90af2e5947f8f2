//! Keys and secrets: the keyring, the keyed hash of phone numbers, sealed values (sessions,
//! account refs, numbers and account ids at rest) and one-time codes.

mod account_ref;
mod code;
mod keys;
mod sealed;
mod session;

pub use account_ref::{AccountRef, MAX_ACCOUNT_ID_BYTES, Ownership, OwnershipRule, escaped_len};
pub use code::{CODE_LENGTH, OneTimeCode, random_id};
pub use keys::{
    KEYS_ENV, KeyInfo, KeyPurpose, KeySources, Keys, NumberHash, SIGNING_SECRET_ID, new_key_entry,
    signing_secret_number_key_entry, valid_key_id,
};
pub use sealed::{MAX_OVERHEAD, SealFor};
pub use session::{Session, SessionError};
