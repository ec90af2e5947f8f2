//! Fuzzes `AccountRef::open` with a fixed key. Two inputs from each fuzz case:
//! - the text as a sealed ref: nobody without the key can make one, so it must be `None`;
//! - the bytes sealed as an account-ref payload, to reach the JSON parsing behind the MAC: it
//!   must not panic, and a ref it accepts must re-seal to itself and be for its own number only.
//!
//! The checks live in `fuzz/checks/account_ref.rs`, shared with the seed test `tests/fuzz_seeds.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

mod check {
    include!("../checks/account_ref.rs");
}

fuzz_target!(|data: &[u8]| {
    check::check(data);
});
