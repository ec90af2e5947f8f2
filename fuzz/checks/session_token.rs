// What the `session_token` fuzz target checks on each input; included by
// fuzz/fuzz_targets/session_token.rs and tests/fuzz_seeds.rs, so the fuzzer and the seed test
// check the same thing.

use std::sync::LazyLock;

use unbind_gateway::security::{Keys, SealFor, Session, SessionError};

static KEYS: LazyLock<Keys> =
    LazyLock::new(|| Keys::derive(b"fuzz-session-secret-0123456789abcdef"));

const TENANT: &str = "carrier";
const NOW_MS: i64 = 1_750_000_000_000;

/// Longest token text `open` accepts (`MAX_ENCODED_LEN` in `security/sealed.rs`).
const MAX_TOKEN_LEN: usize = 4096;

/// `Session::verify` with a fixed key, on two inputs: the text as a token must be `Malformed`
/// (nobody without the key can make one); the bytes sealed as a session payload (what a token
/// from a buggy issuer would carry), to reach the claims parsing behind the MAC, must not panic,
/// and a session it accepts must survive its own `token` → `verify` round trip unchanged.
///
/// Returns whether the parser accepted the input, so the seed test can tell that its seeds
/// still reach the checks behind the parser.
pub fn check(data: &[u8]) -> bool {
    let keys = &*KEYS;
    let text = String::from_utf8_lossy(data);
    assert_eq!(
        Session::verify(keys, &text, TENANT, NOW_MS).map(|_| ()),
        Err(SessionError::Malformed),
        "an unsealed input was accepted"
    );

    let token = keys.seal(SealFor::Session, data);
    let Ok(session) = Session::verify(keys, &token, TENANT, NOW_MS) else {
        return false;
    };
    assert!(session.expires_ms > NOW_MS);
    assert_eq!(session.tenant, TENANT);
    // Re-serialising may lengthen the claims (the number gains its +86), past what `open`
    // accepts; only tokens within the limit must round-trip.
    let resealed = session.token(keys);
    if resealed.len() <= MAX_TOKEN_LEN {
        let again =
            Session::verify(keys, &resealed, TENANT, NOW_MS).expect("a verified session re-seals");
        assert_eq!(again.id, session.id);
        assert_eq!(again.phone, session.phone);
        assert_eq!(again.holder_since_ms, session.holder_since_ms);
        assert_eq!(again.expires_ms, session.expires_ms);
    }
    let debug = format!("{session:?}");
    let national = session.phone.expose().get(3..).unwrap_or_default();
    assert!(national.len() < 8 || !debug.contains(national), "{debug}");
    true
}
