//! Fuzzes `IdLastSix::parse` on any text: it accepts exactly a day of the month (`01`-`31`),
//! three ASCII digits, then a digit or X/x (after trimming), normalises to upper case, and
//! `Debug` never shows the characters.
//!
//! The checks live in `fuzz/checks/id_last_six.rs`, shared with the seed test `tests/fuzz_seeds.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

mod check {
    include!("../checks/id_last_six.rs");
}

fuzz_target!(|data: &[u8]| {
    check::check(data);
});
