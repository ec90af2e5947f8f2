//! Fuzzes `AccountRef::open` with a fixed key. Two inputs from each fuzz case:
//! - the text as a sealed ref: nobody without the key can make one, so it must be `None`;
//! - the bytes sealed as an account-ref payload, to reach the JSON parsing behind the MAC: it
//!   must not panic, and a ref it accepts must re-seal to itself and be for its own number only.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use unbind_gateway::{
    domain::E164,
    security::{AccountRef, Keys, NumberHash, Purpose},
};

static KEYS: LazyLock<Keys> =
    LazyLock::new(|| Keys::derive(b"fuzz-account-ref-secret-0123456789abcdef"));
static NUMBER: LazyLock<NumberHash> =
    LazyLock::new(|| KEYS.number_hash(&E164::parse("13800138000").expect("a valid number")));

/// Longest token text `open` accepts (`MAX_ENCODED_LEN` in `security/sealed.rs`).
const MAX_TOKEN_LEN: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let keys = &*KEYS;
    let text = String::from_utf8_lossy(data);
    assert!(
        AccountRef::open(keys, &text).is_none(),
        "an unsealed input was accepted"
    );

    let sealed = keys.seal(Purpose::AccountRef, data);
    let Some(account) = AccountRef::open(keys, &sealed) else {
        return;
    };
    // Only a ref carrying exactly the first 32 hex characters of the hash is for the number.
    let hex = NUMBER.hex();
    assert_eq!(account.is_for(&NUMBER), account.number == hex[..32]);
    let resealed = account.seal(keys);
    if resealed.len() <= MAX_TOKEN_LEN {
        assert_eq!(AccountRef::open(keys, &resealed).as_ref(), Some(&account));
    }
});
