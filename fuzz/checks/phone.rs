// What the `phone` fuzz target checks on each input; included by fuzz/fuzz_targets/phone.rs and
// tests/fuzz_seeds.rs, so the fuzzer and the seed test check the same thing.

use unbind_gateway::domain::E164;

/// `E164::parse` and `E164::is_valid_but_not_mobile` on the input as text: an accepted number is in E.164 form, parses to itself,
/// and no printed form (`masked`, `masked_international`, `Display`, `Debug`) shows the whole
/// national number, any 8 consecutive digits of it, or fewer than four stars.
///
/// Returns whether the parser accepted the input, so the seed test can tell that its seeds
/// still reach the checks behind the parser.
pub fn check(data: &[u8]) -> bool {
    let input = String::from_utf8_lossy(data);
    // The landline check (what `CheckNumberRecycled` says of a number `parse` refused) takes
    // any text too, and no number is both a mobile one and not.
    let not_mobile = E164::is_valid_but_not_mobile(&input);
    let Ok(phone) = E164::parse(&input) else {
        return false;
    };
    assert!(!not_mobile, "{input:?} is both a mobile number and not");
    let e164 = phone.expose();
    assert!(e164.starts_with('+'), "{e164:?}");
    assert!(e164[1..].bytes().all(|b| b.is_ascii_digit()), "{e164:?}");
    assert!((3..=16).contains(&e164.len()), "{e164:?}");
    assert_eq!(E164::parse(e164).as_ref(), Ok(&phone), "not idempotent");

    let international = phone.masked_international();
    let country_code = international[1..].split(' ').next().unwrap_or_default();
    assert!(e164[1..].starts_with(country_code), "{international:?}");
    let national = &e164[1 + country_code.len()..];

    let masked = phone.masked();
    assert_eq!(masked.len(), national.len());
    assert!(masked.bytes().filter(|&b| b == b'*').count() >= 4.min(national.len()));
    for shown in [
        masked,
        international,
        format!("{phone}"),
        format!("{phone:?}"),
    ] {
        assert!(
            !shown.contains(national),
            "{shown:?} shows the national number"
        );
        for i in 0..national.len().saturating_sub(7) {
            let window = &national[i..i + 8];
            assert!(!shown.contains(window), "{shown:?} shows {window:?}");
        }
    }
    true
}
