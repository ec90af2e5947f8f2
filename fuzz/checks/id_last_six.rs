// What the `id_last_six` fuzz target checks on each input; included by
// fuzz/fuzz_targets/id_last_six.rs and tests/fuzz_seeds.rs, so the fuzzer and the seed test check
// the same thing.

use unbind_gateway::domain::IdLastSix;

/// `IdLastSix::parse` on the input as text accepts exactly a day of the month (`01`-`31`), three
/// ASCII digits, then a digit or X/x (after trimming), normalises to upper case, and `Debug`
/// never shows the characters.
///
/// Returns whether the parser accepted the input, so the seed test can tell that its seeds
/// still reach the checks behind the parser.
pub fn check(data: &[u8]) -> bool {
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
    let Ok(id) = parsed else {
        return false;
    };
    assert_eq!(format!("{id:?}"), "IdLastSix(******)");
    assert_eq!(IdLastSix::parse(id.expose()).as_ref(), Ok(&id));
    true
}
