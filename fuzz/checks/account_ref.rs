// What the `account_ref` fuzz target checks on each input; included by
// fuzz/fuzz_targets/account_ref.rs and tests/fuzz_seeds.rs, so the fuzzer and the seed test check
// the same thing.

use std::sync::LazyLock;

use unbind_gateway::{
    domain::E164,
    security::{AccountRef, Keys, NumberHash, SealFor},
};

static KEYS: LazyLock<Keys> =
    LazyLock::new(|| Keys::derive(b"fuzz-account-ref-secret-0123456789abcdef"));
static NUMBER: LazyLock<NumberHash> =
    LazyLock::new(|| KEYS.number_hash(&E164::parse("13800138000").expect("a valid number")));

/// Longest token text `open` accepts (`MAX_ENCODED_LEN` in `security/sealed.rs`).
const MAX_TOKEN_LEN: usize = 4096;

/// `AccountRef::open` with a fixed key, on two inputs: the text as a sealed ref must be `None`
/// (nobody without the key can make one); the bytes sealed as an account-ref payload, to reach
/// the JSON parsing behind the MAC, must not panic, and a ref it accepts must re-seal to itself
/// and be for its own number only.
///
/// Returns whether the parser accepted the input, so the seed test can tell that its seeds
/// still reach the checks behind the parser.
pub fn check(data: &[u8]) -> bool {
    let keys = &*KEYS;
    let text = String::from_utf8_lossy(data);
    assert!(
        AccountRef::open(keys, &text).is_none(),
        "an unsealed input was accepted"
    );

    let sealed = keys.seal(SealFor::AccountRef, data);
    let Some(account) = AccountRef::open(keys, &sealed) else {
        return false;
    };
    // Only a ref carrying exactly the first 32 hex characters of the hash is for the number.
    let hex = NUMBER.hex();
    assert_eq!(account.is_for(&NUMBER), account.number == hex[..32]);
    let resealed = account.seal(keys);
    if resealed.len() <= MAX_TOKEN_LEN {
        assert_eq!(AccountRef::open(keys, &resealed).as_ref(), Some(&account));
    }
    true
}
