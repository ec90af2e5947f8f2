//! Keys and secrets: the keyed hash of phone numbers, sealed tokens (sessions and account refs)
//! and one-time codes. Everything derives from one signing secret in the config.

mod account_ref;
mod code;
mod keys;
mod sealed;
mod session;

pub use account_ref::{AccountRef, MAX_ACCOUNT_ID_BYTES, Ownership, OwnershipRule, escaped_len};
pub use code::{CODE_LENGTH, OneTimeCode, random_id};
pub use keys::{Keys, NumberHash};
pub use sealed::Purpose;
pub use session::{Session, SessionError};
