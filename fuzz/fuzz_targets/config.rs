//! Fuzzes `Config::parse`: errors are expected, panics are bugs. Each fuzz case is tried twice:
//! as a whole config file, and split on NUL into the free-form values (listen address, endpoints,
//! durations, tenant name, app id) of an otherwise valid config, to reach the validation behind the TOML
//! parser. Configs that name a `signing_secret_file` are skipped: parsing reads that file, and a
//! path such as `/dev/zero` would hang the fuzzer.
//!
//! The checks live in `fuzz/checks/config.rs`, shared with the seed test `tests/fuzz_seeds.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

mod check {
    include!("../checks/config.rs");
}

fuzz_target!(|data: &[u8]| {
    check::check(data);
});
