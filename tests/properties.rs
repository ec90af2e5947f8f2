//! Property tests for every parser of untrusted input: phone numbers, ID characters, app ids,
//! one-time codes, sealed tokens (sessions, account refs), `grpc-timeout` values and the config
//! file. Each parser must never panic on any string, must accept exactly what it documents, and
//! must never let a secret through `Debug`, `Display` or a masked form. Sealed tokens must
//! round-trip, and any alteration, truncation, other key or other purpose must be refused.
//!
//! Kept fast (256 cases per property, well under the suite's time budget). The `fuzz/` crate
//! runs the same parsers under libFuzzer for longer.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use proptest::prelude::*;
use unbind_gateway::{
    api::deadline::parse_grpc_timeout,
    config::Config,
    domain::{AppId, E164, IdLastSix},
    security::{AccountRef, Keys, OneTimeCode, SealFor, Session, SessionError},
};

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// The national part of a Chinese mobile number the metadata calls valid (13x, 145, 147, 15x
/// without 154, 162, 165-167, 17x without 174/179, 18x, 19x without 194).
const CN_MOBILE: &str = "1(3[0-9]|4[57]|5[0-35-9]|6[25-7]|7[0-35-8]|8[0-9]|9[0-35-9])[0-9]{8}";

fn cn_mobile() -> impl Strategy<Value = String> {
    proptest::string::string_regex(CN_MOBILE).unwrap()
}

/// Whether an 11-digit national number is a Chinese mobile number according to the metadata's
/// own pattern (`1740[0-5]\d{6}` or the prefixes of [`CN_MOBILE`]).
fn is_cn_mobile(national: &str) -> bool {
    let b = national.as_bytes();
    if b.len() != 11 || !b.iter().all(u8::is_ascii_digit) || b[0] != b'1' {
        return false;
    }
    match (b[1], b[2]) {
        (b'3' | b'8', _) => true,
        (b'4', b'5' | b'7') => true,
        (b'5' | b'9', c) => c != b'4',
        (b'6', b'2' | b'5'..=b'7') => true,
        (b'7', b'4') => b[3] == b'0' && (b'0'..=b'5').contains(&b[4]),
        (b'7', c) => c != b'9',
        _ => false,
    }
}

/// Valid mobile numbers of other countries, in E.164: the UK (country code 2 digits, mobile),
/// the US (1 digit, fixed-line-or-mobile) and Hong Kong (3 digits, 8-digit national numbers).
fn foreign_mobile() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::string::string_regex(r"\+447[1-3][0-9]{8}").unwrap(),
        proptest::string::string_regex(r"\+1201[2-9][0-9]{6}").unwrap(),
        proptest::string::string_regex(r"\+8529[467][0-9]{6}").unwrap(),
    ]
}

/// Any string: arbitrary code points (control characters, NUL, non-BMP), sometimes long.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        2 => prop::collection::vec(any::<char>(), 0..64).prop_map(String::from_iter),
        1 => prop::collection::vec(any::<char>(), 0..4096).prop_map(String::from_iter),
        1 => proptest::string::string_regex(r"[\x00-\x1f\x7f -~]{0,80}").unwrap(),
    ]
}

/// Text that looks almost like input the parsers accept (digits, separators, signs, units,
/// letters, whitespace), so the interesting branches are reached.
fn near_miss_text() -> impl Strategy<Value = String> {
    proptest::string::string_regex(r"[+\- 0-9xXHMSmunaé\t\u{3000}１]{0,40}").unwrap()
}

/// What a value is sealed for, rows included: another use or another row must refuse it.
fn purpose() -> impl Strategy<Value = SealFor<'static>> {
    prop_oneof![
        Just(SealFor::Session),
        Just(SealFor::AccountRef),
        Just(SealFor::Number("row-a")),
        Just(SealFor::Number("row-b")),
        Just(SealFor::AccountId("row-a")),
        Just(SealFor::AccountId("row-b")),
    ]
}

/// A binding date as an app may send it: none, or any instant.
fn bound_at() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![Just(None), any::<i64>().prop_map(Some)]
}

/// Short arbitrary text for token fields (ids, tenants, account ids): any code point, including
/// quotes, backslashes and control characters that JSON must escape.
fn field_text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..max).prop_map(String::from_iter)
}

/// A signing secret, and a second one that gives different keys. HMAC pads short keys with
/// zeros, so secrets that differ only by trailing NULs are the same key; those are excluded.
fn two_secrets() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let secret = || prop::collection::vec(any::<u8>(), 0..64);
    (secret(), secret()).prop_filter("secrets equal as HMAC keys", |(a, b)| {
        let trim = |s: &[u8]| s.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        a[..trim(a)] != b[..trim(b)]
    })
}

fn keys() -> Keys {
    Keys::derive(b"property-tests-secret-0123456789abcdef")
}

/// Every window of `width` consecutive characters of `digits`.
fn windows(digits: &str, width: usize) -> impl Iterator<Item = &str> {
    (0..=digits.len().saturating_sub(width)).map(move |i| &digits[i..(i + width).min(digits.len())])
}

/// Checks that no printed form of `phone` shows too much of its national number `national`.
fn assert_masked(phone: &E164, national: &str) -> Result<(), TestCaseError> {
    let shown = [
        phone.masked(),
        phone.masked_international(),
        format!("{phone}"),
        format!("{phone:?}"),
        format!("{phone:#?}"),
    ];
    for s in &shown {
        prop_assert!(!s.contains(national), "{s:?} shows {national}");
        prop_assert!(!s.contains(phone.expose()), "{s:?} shows the E.164 form");
        if national.len() >= 8 {
            for w in windows(national, 8) {
                prop_assert!(!s.contains(w), "{s:?} shows the 8 digits {w}");
            }
        }
    }
    let masked = phone.masked();
    prop_assert_eq!(masked.chars().count(), national.len());
    prop_assert!(masked.chars().filter(|&c| c == '*').count() >= 4.min(national.len()));
    Ok(())
}

/// Inserts separators (space or dash) at the given positions between digits.
fn with_separators(digits: &str, seps: &[(usize, bool)]) -> String {
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && seps.iter().any(|&(at, _)| at == i) {
            let dash = seps.iter().find(|&&(at, _)| at == i).is_some_and(|s| s.1);
            out.push(if dash { '-' } else { ' ' });
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// No parser panics
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_parser_panics_on_any_string(s in prop_oneof![any_text(), near_miss_text()]) {
        let k = keys();
        let _ = E164::parse(&s);
        let _ = IdLastSix::parse(&s);
        let _ = AppId::parse(&s);
        let _ = OneTimeCode::parse(&s);
        let _ = Config::parse(&s);
        for p in [SealFor::Session, SealFor::AccountRef, SealFor::Number(""), SealFor::AccountId("")] {
            prop_assert!(k.open(p, &s).is_none());
        }
        prop_assert!(AccountRef::open(&k, &s).is_none());
        prop_assert_eq!(
            Session::verify(&k, &s, "tenant", 0).map(|_| ()),
            Err(SessionError::Malformed)
        );
    }

    /// `parse_grpc_timeout` on any ASCII string (the only kind a header value's `to_str` yields).
    #[test]
    fn grpc_timeout_never_panics_on_ascii(s in r"[\x00-\x7f]{0,16}") {
        let _ = parse_grpc_timeout(&s);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `parse_grpc_timeout` on any string. Once panicked when the last character was multi-byte
    /// (`split_at(len - 1)`); unreachable through a header's `to_str`, but the function is public.
    #[test]
    fn grpc_timeout_never_panics_on_any_string(s in prop_oneof![any_text(), near_miss_text()]) {
        let _ = parse_grpc_timeout(&s);
    }
}

/// Regression: the smallest inputs that made `parse_grpc_timeout` panic.
#[test]
fn grpc_timeout_with_multibyte_last_char_is_none() {
    for s in ["é", "1é", "300ḿ", "1\u{10000}", "ກ"] {
        assert_eq!(parse_grpc_timeout(s), None, "{s:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// E164
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn cn_mobile_parses_and_round_trips(
        national in cn_mobile(),
        seps in prop::collection::vec((1usize..11, any::<bool>()), 0..6),
        plus_space in any::<bool>(),
        pad in r"[ \t]{0,3}",
    ) {
        let e164 = format!("+86{national}");
        let plus = E164::parse(&e164).unwrap();
        prop_assert_eq!(plus.expose(), e164.as_str());

        // The bare 11 digits mean +86.
        let bare = E164::parse(&national).unwrap();
        prop_assert_eq!(&bare, &plus);

        // Spaces and dashes between digits, and surrounding whitespace, change nothing.
        let spaced = with_separators(&national, &seps);
        let written = format!("{pad}+86{}{spaced}{pad}", if plus_space { " " } else { "" });
        let parsed = E164::parse(&written).unwrap();
        let digits_only = written.replace([' ', '-', '\t'], "");
        prop_assert_eq!(parsed.expose(), digits_only.as_str());
        prop_assert_eq!(&E164::parse(&spaced).unwrap(), &plus);

        // The normal form parses to itself.
        prop_assert_eq!(&E164::parse(plus.expose()).unwrap(), &plus);

        assert_masked(&plus, &national)?;
        prop_assert_eq!(plus.masked(), format!("{}****{}", &national[..3], &national[7..]));
    }

    /// Over every `1\d{10}`: the bare form and the `+86` form agree, and exactly the numbers the
    /// metadata calls mobile are accepted.
    #[test]
    fn bare_eleven_digits_equal_plus_86(national in r"1[0-9]{10}") {
        let bare = E164::parse(&national);
        let plus = E164::parse(&format!("+86{national}"));
        prop_assert_eq!(&bare, &plus);
        prop_assert_eq!(bare.is_ok(), is_cn_mobile(&national), "{}", national);
    }

    #[test]
    fn foreign_mobiles_parse_and_are_masked(e164 in foreign_mobile()) {
        let phone = E164::parse(&e164).unwrap();
        prop_assert_eq!(phone.expose(), e164.as_str());
        let cc_len = if e164.starts_with("+1") { 1 } else if e164.starts_with("+44") { 2 } else { 3 };
        assert_masked(&phone, &e164[1 + cc_len..])?;
        prop_assert_eq!(&E164::parse(phone.expose()).unwrap(), &phone);
    }

    #[test]
    fn anything_with_a_letter_is_rejected(
        national in cn_mobile(),
        at in 0usize..=11,
        letter in prop_oneof![
            proptest::char::range('a', 'z'),
            proptest::char::range('A', 'Z'),
            Just('é'),
            Just('一'),
            Just('Ⅷ'),
        ],
        plus in any::<bool>(),
    ) {
        let mut s = national.clone();
        s.insert(at, letter);
        if plus {
            s.insert_str(0, "+86");
        }
        prop_assert!(E164::parse(&s).is_err(), "{:?}", s);
    }

    /// An accepted number is in E.164 form, parses to itself, and its printed forms hide at
    /// least four digits and never show the whole national number. The inputs are valid numbers
    /// by construction (Chinese mobiles bare, with +86, or with separators; mobiles of countries
    /// whose codes have one, two and three digits), so every case checks something: the
    /// assertion that they parse is part of the property.
    #[test]
    fn accepted_numbers_are_normal_and_masked(s in prop_oneof![
        cn_mobile(),
        cn_mobile().prop_map(|n| format!("+86{n}")),
        cn_mobile().prop_map(|n| format!("+86 {}-{}-{}", &n[..3], &n[3..7], &n[7..])),
        foreign_mobile(),
    ]) {
        let phone = E164::parse(&s);
        prop_assert!(phone.is_ok(), "{s:?} is a valid number by construction");
        let phone = phone.unwrap();
        let e = phone.expose();
        prop_assert!(e.starts_with('+') && e.len() >= 6 && e.len() <= 16, "{e}");
        prop_assert!(e[1..].bytes().all(|b| b.is_ascii_digit()));
        prop_assert_eq!(&E164::parse(e).unwrap(), &phone);
        // The masked international form starts with the country code it hides behind.
        let intl = phone.masked_international();
        let cc = intl[1..].split(' ').next().unwrap_or_default();
        prop_assert!(e[1..].starts_with(cc));
        assert_masked(&phone, &e[1 + cc.len()..])?;
    }

    /// Whatever else is typed, an accepted number is still in E.164 form (most of these inputs
    /// are refused; the property is that nothing malformed gets through).
    #[test]
    fn whatever_is_accepted_is_e164(s in prop_oneof![
        r"\+?[0-9 \-]{0,34}",
        r"\+[1-9][0-9]{6,14}",
        near_miss_text(),
    ]) {
        if let Ok(phone) = E164::parse(&s) {
            let e = phone.expose();
            prop_assert!(e.starts_with('+') && e[1..].bytes().all(|b| b.is_ascii_digit()), "{e}");
            prop_assert_eq!(&E164::parse(e).unwrap(), &phone);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// IdLastSix, AppId, OneTimeCode
// ---------------------------------------------------------------------------------------------

/// The documented grammar of the ID characters: a day of the month (`01`-`31`), three ASCII
/// digits, then a digit or X/x, after trimming.
fn id_last_six_oracle(s: &str) -> Option<String> {
    let t = s.trim().as_bytes();
    let ok = t.len() == 6
        && t[..5].iter().all(u8::is_ascii_digit)
        && (t[5].is_ascii_digit() || t[5] == b'x' || t[5] == b'X')
        && (b"01".as_slice()..=b"31".as_slice()).contains(&&t[..2]);
    ok.then(|| s.trim().to_ascii_uppercase())
}

fn app_id_oracle(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=64).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn id_last_six_accepts_and_upper_cases(
        id in r"(0[1-9]|[12][0-9]|3[01])[0-9]{3}[0-9Xx]",
        pad_l in r"[ \t\n\u{3000}]{0,2}",
        pad_r in r"[ \t\n\u{3000}]{0,2}",
    ) {
        let parsed = IdLastSix::parse(&format!("{pad_l}{id}{pad_r}")).unwrap();
        prop_assert_eq!(parsed.expose(), id.to_ascii_uppercase());
        let debug = format!("{parsed:?}");
        prop_assert_eq!(debug.as_str(), "IdLastSix(******)");
        prop_assert!(!debug.contains(&id[..5]));
        prop_assert_eq!(&IdLastSix::parse(parsed.expose()).unwrap(), &parsed);
    }

    #[test]
    fn id_last_six_rejects_other_lengths(id in r"[0-9]{0,5}|[0-9]{7,20}|[0-9]{4}X[0-9]|[0-9]{5}[A-WYZa-wyz]|(00|3[2-9]|[4-9][0-9])[0-9]{3}[0-9Xx]") {
        prop_assert!(IdLastSix::parse(&id).is_err(), "{:?}", id);
    }

    /// Accepts exactly the documented grammar, whatever the input.
    #[test]
    fn id_last_six_matches_its_grammar(s in prop_oneof![
        any_text(),
        near_miss_text(),
        r"\s?[0-9]{4,6}[0-9xXyY１]?\s?",
    ]) {
        let parsed = IdLastSix::parse(&s);
        prop_assert_eq!(parsed.as_ref().ok().map(|p| p.expose().to_owned()), id_last_six_oracle(&s));
        if let Ok(p) = parsed {
            prop_assert_eq!(format!("{p:?}"), "IdLastSix(******)");
        }
    }

    #[test]
    fn app_id_matches_its_grammar(s in prop_oneof![
        r"[a-z0-9][a-z0-9._\-]{0,63}",
        r"[a-zA-Z0-9._\- é]{0,70}",
        any_text(),
    ]) {
        let parsed = AppId::parse(&s);
        prop_assert_eq!(parsed.is_ok(), app_id_oracle(&s), "{:?}", s);
        if let Ok(id) = parsed {
            prop_assert_eq!(id.as_str(), s.as_str());
            prop_assert_eq!(id.to_string(), s.clone());
        }
    }

    #[test]
    fn one_time_code_is_exactly_six_digits(s in prop_oneof![
        r"\s?[0-9]{5,7}\s?",
        r"[0-9]{3}[ a-z１][0-9]{2}",
        any_text(),
    ]) {
        let t = s.trim();
        let expected = t.len() == 6 && t.bytes().all(|b| b.is_ascii_digit());
        let parsed = OneTimeCode::parse(&s);
        prop_assert_eq!(parsed.is_some(), expected, "{:?}", s);
        if let Some(code) = parsed {
            prop_assert_eq!(code.expose(), t);
            let debug = format!("{code:?}");
            prop_assert!(!debug.contains(t));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sealed tokens
// ---------------------------------------------------------------------------------------------

/// Longest token text `open` accepts (`MAX_ENCODED_LEN` in `security/sealed.rs`).
const MAX_TOKEN_LEN: usize = 4096;

/// Longest plaintext whose sealed token fits [`MAX_TOKEN_LEN`]: 4096 base64 characters are 3072
/// bytes, minus 3 header bytes, the key id (`signing-secret`, 14), 12 nonce and 16 tag bytes.
const MAX_SEALABLE: usize = MAX_TOKEN_LEN / 4 * 3 - 3 - 14 - 12 - 16;

/// The limit is where the documentation puts it: the longest sealable plaintext opens, one byte
/// more makes a token `open` refuses unread.
#[test]
fn sealed_token_length_limit() {
    let k = keys();
    let longest = k.seal(SealFor::AccountRef, &[0xa5; MAX_SEALABLE]);
    assert!(longest.len() <= MAX_TOKEN_LEN);
    assert_eq!(
        k.open(SealFor::AccountRef, &longest),
        Some(vec![0xa5; MAX_SEALABLE])
    );
    let over = k.seal(SealFor::AccountRef, &[0xa5; MAX_SEALABLE + 1]);
    assert!(over.len() > MAX_TOKEN_LEN);
    assert_eq!(k.open(SealFor::AccountRef, &over), None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sealed_round_trip(
        (secret, other_secret) in two_secrets(),
        p in purpose(),
        q in purpose(),
        plaintext in prop::collection::vec(any::<u8>(), 0..=MAX_SEALABLE),
    ) {
        let k = Keys::derive(&secret);
        let token = k.seal(p, &plaintext);
        prop_assert!(token.len() <= MAX_TOKEN_LEN);
        prop_assert_eq!(k.open(p, &token), Some(plaintext.clone()));
        // A fresh nonce every time, and both seal the same plaintext.
        let again = k.seal(p, &plaintext);
        prop_assert_ne!(&again, &token);
        prop_assert_eq!(k.open(p, &again), Some(plaintext.clone()));
        // Another purpose or another key refuses it.
        if q != p {
            prop_assert_eq!(k.open(q, &token), None);
        }
        prop_assert_eq!(Keys::derive(&other_secret).open(p, &token), None);
    }

    #[test]
    fn altered_sealed_tokens_are_refused(
        p in purpose(),
        plaintext in prop::collection::vec(any::<u8>(), 0..200),
        flip_at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
        cut in any::<prop::sample::Index>(),
        extra in prop::collection::vec(any::<u8>(), 1..8),
    ) {
        let k = keys();
        let token = k.seal(p, &plaintext);
        let bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();

        // Any bit flip in any byte (version, purpose, nonce, ciphertext, tag).
        let mut flipped = bytes.clone();
        flipped[flip_at.index(bytes.len())] ^= mask;
        prop_assert_eq!(k.open(p, &URL_SAFE_NO_PAD.encode(&flipped)), None);

        // Truncating the bytes or the text, or appending bytes.
        let shorter = &bytes[..cut.index(bytes.len())];
        prop_assert_eq!(k.open(p, &URL_SAFE_NO_PAD.encode(shorter)), None);
        prop_assert_eq!(k.open(p, &token[..cut.index(token.len())]), None);
        let mut longer = bytes.clone();
        longer.extend_from_slice(&extra);
        prop_assert_eq!(k.open(p, &URL_SAFE_NO_PAD.encode(&longer)), None);
    }

    /// Any edit to a token's text (replace, delete or insert one character) is refused by
    /// `open`, which does not trim; there is exactly one text for each token.
    #[test]
    fn edited_token_text_is_refused(
        p in purpose(),
        plaintext in prop::collection::vec(any::<u8>(), 0..100),
        at in any::<prop::sample::Index>(),
        c in prop_oneof![
            proptest::char::ranges(vec!['A'..='Z', 'a'..='z', '0'..='9'].into()),
            prop::sample::select(vec!['-', '_', '+', '/', '=', ' ', '\n', '.', 'é']),
            any::<char>(),
        ],
        op in 0u8..3,
    ) {
        let k = keys();
        let token = k.seal(p, &plaintext);
        let mut chars: Vec<char> = token.chars().collect();
        let i = at.index(chars.len() + 1);
        match op {
            0 if i < chars.len() => chars[i] = c,
            1 if i < chars.len() => {
                chars.remove(i);
            }
            _ => chars.insert(i, c),
        }
        let edited = String::from_iter(chars);
        if edited != token {
            prop_assert_eq!(k.open(p, &edited), None, "{:?}", edited);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Session tokens
// ---------------------------------------------------------------------------------------------

fn session_parts() -> impl Strategy<Value = (String, String, String, i64, i64, i64)> {
    (
        field_text(40),
        cn_mobile(),
        field_text(40),
        any::<i64>(),
        any::<i64>(),
        any::<i64>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn session_round_trip_expiry_and_tenant(
        (id, national, tenant, holder_since_ms, a, b) in session_parts(),
        other_tenant in field_text(40),
    ) {
        prop_assume!(a != b);
        let (now, expires_ms) = (a.min(b), a.max(b));
        let k = keys();
        let phone = E164::parse(&national).unwrap();
        let session = Session {
            id: id.clone(),
            phone: phone.clone(),
            tenant: tenant.clone(),
            holder_since_ms: Some(holder_since_ms).filter(|&ms| ms != 0),
            issued_ms: now,
            expires_ms,
        };
        let token = session.token(&k);
        prop_assert!(!token.contains(&national));

        let s = Session::verify(&k, &token, &tenant, now).unwrap();
        prop_assert_eq!(&s.id, &id);
        prop_assert_eq!(&s.phone, &phone);
        prop_assert_eq!(&s.tenant, &tenant);
        prop_assert_eq!(s.holder_since_ms, session.holder_since_ms);
        // A token claiming no start (0) reads as starting when it ends: no history.
        prop_assert_eq!(s.issued_ms, if now > 0 { now } else { expires_ms });
        prop_assert_eq!(s.expires_ms, expires_ms);
        let debug = format!("{s:?}");
        prop_assert!(!debug.contains(&national));
        // Surrounding whitespace is ignored.
        let padded = format!(" {token}\n");
        prop_assert!(Session::verify(&k, &padded, &tenant, now).is_ok());

        // Expired at and after `expires_ms`, whoever asks.
        prop_assert_eq!(
            Session::verify(&k, &token, &tenant, expires_ms).map(|_| ()),
            Err(SessionError::Expired)
        );
        prop_assert_eq!(
            Session::verify(&k, &token, &other_tenant, i64::MAX).map(|_| ()),
            Err(SessionError::Expired)
        );
        // Another tenant, before expiry.
        if other_tenant != tenant {
            prop_assert_eq!(
                Session::verify(&k, &token, &other_tenant, now).map(|_| ()),
                Err(SessionError::OtherTenant)
            );
        }
        // Another key, or the token presented as an account ref.
        prop_assert_eq!(
            Session::verify(&Keys::derive(b"another secret"), &token, &tenant, now).map(|_| ()),
            Err(SessionError::Malformed)
        );
        prop_assert!(AccountRef::open(&k, &token).is_none());
    }

    /// Any edit to a session token's text either fails or (only when the edit is whitespace
    /// around it) yields exactly the original session.
    #[test]
    fn edited_session_tokens_never_verify_differently(
        national in cn_mobile(),
        at in any::<prop::sample::Index>(),
        c in prop_oneof![
            proptest::char::ranges(vec!['A'..='Z', 'a'..='z', '0'..='9'].into()),
            prop::sample::select(vec!['-', '_', '=', ' ', '\t', '\n']),
            any::<char>(),
        ],
        op in 0u8..3,
    ) {
        let k = keys();
        let session = Session {
            id: "ses_1".into(),
            phone: E164::parse(&national).unwrap(),
            tenant: "carrier".into(),
            holder_since_ms: Some(1_700_000_000_000),
            issued_ms: 1_700_000_000_000,
            expires_ms: 1_800_000_000_000,
        };
        let token = session.token(&k);
        let mut chars: Vec<char> = token.chars().collect();
        let i = at.index(chars.len() + 1);
        match op {
            0 if i < chars.len() => chars[i] = c,
            1 if i < chars.len() => {
                chars.remove(i);
            }
            _ => chars.insert(i, c),
        }
        let edited = String::from_iter(chars);
        match Session::verify(&k, &edited, "carrier", 1_750_000_000_000) {
            Ok(s) => {
                prop_assert_eq!(edited.trim(), token.as_str());
                prop_assert_eq!(s.phone, session.phone);
                prop_assert_eq!(s.id, session.id);
            }
            Err(e) => prop_assert_eq!(e, SessionError::Malformed),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Account refs
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn account_ref_round_trip_and_binding(
        app_id in r"[a-z0-9][a-z0-9._\-]{0,63}",
        account_id in prop_oneof![field_text(100), r"[ -~]{0,2500}"],
        a in cn_mobile(),
        b in cn_mobile(),
        bound in bound_at(),
        session in r"ses_[0-9a-f]{32}",
        unbind_supported in any::<bool>(),
    ) {
        let k = keys();
        let pa = E164::parse(&a).unwrap();
        let pb = E164::parse(&b).unwrap();
        let ha = k.number_hash(&pa);
        let r = AccountRef::new(&app_id, &account_id, &ha, &session, bound, unbind_supported);
        let sealed = r.seal(&k);
        prop_assert!(!sealed.contains(&a));
        prop_assert!(account_id.len() < 8 || !sealed.contains(&account_id));

        let opened = AccountRef::open(&k, &sealed).unwrap();
        prop_assert_eq!(&opened, &r);
        prop_assert!(opened.is_for(&ha));
        prop_assert!(opened.shown_in(&session) && !opened.shown_in("ses_other"));
        prop_assert_eq!(opened.is_for(&k.number_hash(&pb)), a == b);
        // The same number hashed under another key is another number.
        prop_assert!(!opened.is_for(&Keys::derive(b"another secret").number_hash(&pa)));

        // Not openable with another key, nor as a session.
        prop_assert!(AccountRef::open(&Keys::derive(b"another secret"), &sealed).is_none());
        prop_assert_eq!(
            Session::verify(&k, &sealed, "tenant", 0).map(|_| ()),
            Err(SessionError::Malformed)
        );
    }
}

/// Regression: `open` once refused tokens over 1024 characters, so an adapter's account id of
/// more than about 650 bytes gave a ref that `Unbind` rejected as forged. Refs now hold account
/// ids of up to about 2.5 KB.
#[test]
fn account_ref_with_long_account_id_round_trips() {
    let k = keys();
    let n = k.number_hash(&E164::parse("13800138000").unwrap());
    let r = AccountRef::new(
        "app-001",
        &"a".repeat(2500),
        &n,
        "ses_1",
        Some(i64::MIN),
        true,
    );
    assert_eq!(AccountRef::open(&k, &r.seal(&k)), Some(r));
}

// ---------------------------------------------------------------------------------------------
// grpc-timeout
// ---------------------------------------------------------------------------------------------

fn grpc_timeout_oracle(s: &str) -> Option<Duration> {
    let b = s.as_bytes();
    if !(2..=9).contains(&b.len()) || !b[..b.len() - 1].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = s[..s.len() - 1].parse().ok()?;
    Some(match b[b.len() - 1] {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn grpc_timeout_valid_values(n in 0u64..100_000_000, width in 0usize..=8, unit in r"[HMSmun]") {
        // Leading zeros are allowed as long as there are at most 8 digits.
        let digits = format!("{n:0width$}");
        prop_assume!(digits.len() <= 8);
        let value = format!("{digits}{unit}");
        let expected = match unit.as_str() {
            "H" => Duration::from_secs(n * 3600),
            "M" => Duration::from_secs(n * 60),
            "S" => Duration::from_secs(n),
            "m" => Duration::from_millis(n),
            "u" => Duration::from_micros(n),
            _ => Duration::from_nanos(n),
        };
        prop_assert_eq!(parse_grpc_timeout(&value), Some(expected));
    }

    /// On ASCII input (what a header yields), accepts exactly `\d{1,8}[HMSmun]`.
    #[test]
    fn grpc_timeout_matches_its_grammar(s in prop_oneof![
        r"[0-9]{0,10}[HMSmunhsx]?",
        r"[-+ .0-9]{0,4}[0-9]{0,6}[HMSmun ]",
        r"[\x00-\x7f]{0,12}",
    ]) {
        prop_assert_eq!(parse_grpc_timeout(&s), grpc_timeout_oracle(&s), "{:?}", s);
    }
}

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// A TOML basic string holding `s`, whatever it contains.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A config with every value the template leaves open filled in. Never names a
/// `signing_secret_file`, so parsing reads no file.
fn config_text(
    listen: &str,
    registry: &str,
    ttl: &str,
    tenant: &str,
    app_id: &str,
    app_endpoint: &str,
    app_timeout: &str,
) -> String {
    format!(
        r#"
listen = {}
development = true
signing_secret = "0123456789abcdef0123456789abcdef"
[store]
url = "sqlite://unbind.db"
[registry]
endpoint = {}
[cache]
ttl = {}
[unbind]
# Longer than any app timeout generated (the config requires it).
lease = "300000d"
[[tenants]]
name = {}
role = "portal"
[[apps]]
id = {}
name = "Sim Pay"
endpoint = {}
timeout = {}
"#,
        toml_string(listen),
        toml_string(registry),
        toml_string(ttl),
        toml_string(tenant),
        toml_string(app_id),
        toml_string(app_endpoint),
        toml_string(app_timeout),
    )
}

fn duration_text() -> impl Strategy<Value = (String, Duration)> {
    (1u64..100_000, 0usize..5).prop_map(|(n, u)| {
        let (unit, secs) = [("ms", 0), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)][u];
        let d = if u == 0 {
            Duration::from_millis(n)
        } else {
            Duration::from_secs(n * secs)
        };
        (format!("{n}{unit}"), d)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn config_never_panics_on_any_text(s in prop_oneof![
        any_text(),
        r#"[\[\]{}="'a-z0-9 .,:\n#]{0,200}"#,
    ]) {
        let _ = Config::parse(&s);
    }

    /// Arbitrary values in every free-form field: errors are fine, panics are not.
    #[test]
    fn config_never_panics_on_any_values(
        listen in prop_oneof![any_text(), r"[0-9.:\[\]a-f]{0,30}"],
        registry in prop_oneof![any_text(), r"(https?|ftp)?:?/{0,3}[a-z0-9.:@\[\]%/?#-]{0,30}"],
        ttl in prop_oneof![any_text(), r"[0-9]{0,25}\s?[a-zμ]{0,6}"],
        tenant in prop_oneof![any_text(), r"[a-z0-9._\-A-Z]{0,70}"],
        app_id in prop_oneof![any_text(), r"[a-z0-9._\-A-Z]{0,70}"],
        app_endpoint in prop_oneof![any_text(), r"https?://[a-z0-9.:@\[\]%-]{0,30}"],
        app_timeout in prop_oneof![any_text(), r"[0-9]{0,25}(ns|us|ms|s|m|h|d|w|M|y)?"],
    ) {
        let _ = Config::parse(&config_text(
            &listen, &registry, &ttl, &tenant, &app_id, &app_endpoint, &app_timeout,
        ));
    }

    #[test]
    fn config_accepts_valid_values(
        port in 1u16..,
        (ttl, ttl_d) in duration_text(),
        (timeout, timeout_d) in duration_text(),
        app_id in r"[a-z0-9][a-z0-9._\-]{0,63}",
        tenant in r"[a-z0-9][a-z0-9._\-]{0,63}",
        host in r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,5})?",
        https in any::<bool>(),
    ) {
        let scheme = if https { "https" } else { "http" };
        let text = config_text(
            &format!("127.0.0.1:{port}"),
            &format!("{scheme}://{host}:7000"),
            &ttl,
            &tenant,
            &app_id,
            &format!("{scheme}://{host}"),
            &timeout,
        );
        let c = Config::parse(&text).unwrap();
        prop_assert_eq!(c.listen.port(), port);
        prop_assert_eq!(c.cache.ttl, ttl_d);
        prop_assert_eq!(&c.apps[0].id, &app_id);
        prop_assert_eq!(&c.tenants[0].name, &tenant);
        prop_assert_eq!(c.apps[0].timeout, Some(timeout_d));
    }
}

/// Deeply nested TOML must be an error, not a stack overflow.
#[test]
fn config_refuses_deep_nesting() {
    for (open, close) in [("[", "]"), ("{a=", "}")] {
        let text = format!("x = {}1{}", open.repeat(10_000), close.repeat(10_000));
        assert!(Config::parse(&text).is_err());
    }
}
