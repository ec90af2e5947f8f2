//! Fuzzes `parse_grpc_timeout` on any text: it must never panic, and must accept exactly
//! `\d{1,8}[HMSmun]` with the value the unit says.
//!
//! The checks live in `fuzz/checks/grpc_timeout.rs`, shared with the seed test `tests/fuzz_seeds.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

mod check {
    include!("../checks/grpc_timeout.rs");
}

fuzz_target!(|data: &[u8]| {
    check::check(data);
});
