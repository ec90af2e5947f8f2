//! Fuzzes `Keys::load` on a keys file: errors are expected, panics are bugs, and no error quotes
//! a secret. The checks live in `fuzz/checks/keyring.rs`, shared with the seed test
//! `tests/fuzz_seeds.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

mod check {
    include!("../checks/keyring.rs");
}

fuzz_target!(|data: &[u8]| {
    check::check(data);
});
