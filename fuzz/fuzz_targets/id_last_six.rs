//! Fuzzes `IdLastSix::parse` on any text: it accepts exactly a day of the month (`01`-`31`),
//! three ASCII digits, then a digit or X/x (after trimming), normalises to upper case, and
//! `Debug` never shows the characters.

#![no_main]

use libfuzzer_sys::fuzz_target;
use unbind_gateway::domain::IdLastSix;

fuzz_target!(|data: &[u8]| {
    let input = String::from_utf8_lossy(data);
    let t = input.trim().as_bytes();
    let expected = (t.len() == 6
        && t[..5].iter().all(u8::is_ascii_digit)
        && matches!(t[5], b'0'..=b'9' | b'x' | b'X')
        && (b"01".as_slice()..=b"31".as_slice()).contains(&&t[..2]))
    .then(|| input.trim().to_ascii_uppercase());

    let parsed = IdLastSix::parse(&input);
    assert_eq!(
        parsed.as_ref().ok().map(|id| id.expose().to_owned()),
        expected
    );
    if let Ok(id) = parsed {
        assert_eq!(format!("{id:?}"), "IdLastSix(******)");
        assert_eq!(IdLastSix::parse(id.expose()).as_ref(), Ok(&id));
    }
});
