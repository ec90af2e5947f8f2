//! Fuzzes `E164::parse` on any text. An accepted number must be in E.164 form, parse to itself,
//! and no printed form (`masked`, `masked_international`, `Display`, `Debug`) may show the whole
//! national number, any 8 consecutive digits of it, or fewer than four stars.
//!
//! The checks live in `fuzz/checks/phone.rs`, shared with the seed test `tests/fuzz_seeds.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

mod check {
    include!("../checks/phone.rs");
}

fuzz_target!(|data: &[u8]| {
    check::check(data);
});
