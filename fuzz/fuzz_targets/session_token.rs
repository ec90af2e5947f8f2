//! Fuzzes `Session::verify` with a fixed key. Two inputs from each fuzz case:
//! - the text as a token: nobody without the key can make one, so it must be `Malformed`;
//! - the bytes sealed as a session payload (what a token from a buggy issuer would carry), to
//!   reach the claims parsing behind the MAC: it must not panic, and a session it accepts must
//!   survive its own `token` → `verify` round trip unchanged.
//!
//! The checks live in `fuzz/checks/session_token.rs`, shared with the seed test `tests/fuzz_seeds.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

mod check {
    include!("../checks/session_token.rs");
}

fuzz_target!(|data: &[u8]| {
    check::check(data);
});
