//! Fuzzes `IdLastSix::parse` on any text: it accepts exactly five ASCII digits then a digit or
//! X/x (after trimming), normalises to upper case, and `Debug` never shows the characters.

#![no_main]

use libfuzzer_sys::fuzz_target;
use unbind_gateway::domain::IdLastSix;

fuzz_target!(|data: &[u8]| {
    let input = String::from_utf8_lossy(data);
    let t = input.trim().as_bytes();
    let expected = (t.len() == 6
        && t[..5].iter().all(u8::is_ascii_digit)
        && matches!(t[5], b'0'..=b'9' | b'x' | b'X'))
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
