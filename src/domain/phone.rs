//! `E164`: a mobile phone number, parsed and normalised with the `phonenumber` crate.
//!
//! A bare 11-digit number starting with 1 is a Chinese mobile number (+86). Landlines, toll-free
//! and other non-mobile numbers are refused: only a mobile number can receive the SMS code and be
//! bound to app accounts. `Debug` and `Display` print the masked form (`138****8000`); the raw
//! number is only reachable through [`E164::expose`], which is easy to grep for.

use std::fmt;

use phonenumber::{Mode, Type};

/// Longest input we even try to parse; anything longer is not a phone number.
const MAX_INPUT_LEN: usize = 32;

/// A valid mobile number in E.164 form.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct E164 {
    e164: String,
    /// Length of the country code digits after the `+`, for masking.
    country_code_len: usize,
}

/// The input was not a valid mobile number. Carries no copy of the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid mobile phone number")]
pub struct InvalidPhoneNumber;

/// `input`'s digits, and whether it began with '+', when it is digits with spaces or dashes
/// between them and at most one leading '+' (surrounding white space ignored), of a sane length.
fn digits_of(input: &str) -> Option<(bool, String)> {
    let input = input.trim();
    if input.is_empty() || input.len() > MAX_INPUT_LEN {
        return None;
    }
    let (plus, body) = match input.strip_prefix('+') {
        Some(body) => (true, body),
        None => (false, input),
    };
    if !body
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-'))
    {
        return None;
    }
    Some((plus, body.chars().filter(char::is_ascii_digit).collect()))
}

impl E164 {
    /// Parses user input: E.164 (`+8613800138000`), or a bare 11-digit Chinese mobile number.
    /// Spaces and dashes between digits are accepted.
    pub fn parse(input: &str) -> Result<Self, InvalidPhoneNumber> {
        let (plus, digits) = digits_of(input).ok_or(InvalidPhoneNumber)?;
        let candidate = if plus {
            format!("+{digits}")
        } else if digits.len() == 11 && digits.starts_with('1') {
            format!("+86{digits}")
        } else {
            return Err(InvalidPhoneNumber);
        };
        let number = phonenumber::parse(None, &candidate).map_err(|_| InvalidPhoneNumber)?;
        if !phonenumber::is_valid(&number) {
            return Err(InvalidPhoneNumber);
        }
        match number.number_type(&phonenumber::metadata::DATABASE) {
            Type::Mobile | Type::FixedLineOrMobile => {}
            _ => return Err(InvalidPhoneNumber),
        }
        let e164 = number.format().mode(Mode::E164).to_string();
        let country_code_len = number.code().value().to_string().len();
        Ok(Self {
            e164,
            country_code_len,
        })
    }

    /// Whether `input` is a valid phone number that is not a mobile one (a landline, toll-free,
    /// ...): a number a person may hold, but no app binds to it and no SMS reaches it.
    pub fn is_valid_but_not_mobile(input: &str) -> bool {
        // The library sees only what `parse` would give it: '+' and digits.
        let Some((true, digits)) = digits_of(input) else {
            return false;
        };
        let Ok(number) = phonenumber::parse(None, format!("+{digits}")) else {
            return false;
        };
        phonenumber::is_valid(&number)
            && !matches!(
                number.number_type(&phonenumber::metadata::DATABASE),
                Type::Mobile | Type::FixedLineOrMobile
            )
    }

    /// A number as one system sends it to another: valid, and written exactly in E.164 form
    /// (`+8613800138000`), not in one of the spellings [`E164::parse`] accepts from a person.
    pub fn parse_canonical(input: &str) -> Result<Self, InvalidPhoneNumber> {
        Self::parse(input).and_then(|n| {
            if n.e164 == input {
                Ok(n)
            } else {
                Err(InvalidPhoneNumber)
            }
        })
    }

    /// A number this gateway validated earlier and sealed (in a session token): checked for
    /// shape only. `None` if it does not look like one, and the caller parses it in full.
    pub(crate) fn from_sealed(e164: &str, country_code_len: usize) -> Option<Self> {
        let shaped = is_e164_shaped(e164) && (1..=3).contains(&country_code_len);
        shaped.then(|| Self {
            e164: e164.to_owned(),
            country_code_len,
        })
    }

    /// Digits of the country code.
    pub(crate) fn country_code_len(&self) -> usize {
        self.country_code_len
    }

    /// The raw E.164 string. Only for the wire to the registry and adapters, and the store.
    pub fn expose(&self) -> &str {
        &self.e164
    }

    /// The national number masked for display: first three digits, `****`, last four.
    pub fn masked(&self) -> String {
        let national = &self.e164[1 + self.country_code_len..];
        mask_digits(national)
    }

    /// The masked number with its country code, e.g. `+86 138****8000`.
    pub fn masked_international(&self) -> String {
        format!(
            "+{} {}",
            &self.e164[1..1 + self.country_code_len],
            self.masked()
        )
    }
}

/// Whether `text` has the shape of a number in E.164 form: `+`, then 8 to 15 digits, the first
/// not 0. A cheap check for numbers a system that validated them in full sends on (as the
/// gateway sends them to apps); it says nothing of whether the number exists or is a mobile one.
pub fn is_e164_shaped(text: &str) -> bool {
    text.strip_prefix('+').is_some_and(|digits| {
        (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    })
}

/// Masks a digit string, keeping at most three leading and four trailing digits and always hiding
/// at least four.
pub fn mask_digits(digits: &str) -> String {
    let n = digits.len();
    if n <= 4 {
        return "*".repeat(n);
    }
    let keep_tail = 4.min(n - 4);
    let keep_head = 3.min(n - 4 - keep_tail);
    let hidden = n - keep_head - keep_tail;
    format!(
        "{}{}{}",
        &digits[..keep_head],
        "*".repeat(hidden),
        &digits[n - keep_tail..]
    )
}

impl fmt::Debug for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "E164({})", self.masked())
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_shape_is_a_plus_and_8_to_15_digits() {
        for shaped in ["+8613800138000", "+12345678", "+123456789012345"] {
            assert!(is_e164_shaped(shaped), "{shaped}");
        }
        for not in [
            "8613800138000",
            "+1234567",
            "+1234567890123456",
            "+0613800138000",
            "+86 13800138000",
            "+86138001380a0",
            "",
            "+",
        ] {
            assert!(!is_e164_shaped(not), "{not}");
        }
    }

    #[test]
    fn canonical_numbers_are_written_exactly_in_e164() {
        let n = E164::parse_canonical("+8613800138000").expect("canonical");
        assert_eq!(n.expose(), "+8613800138000");
        // Spellings a person may type, but one system never sends another.
        for other in [
            "13800138000",
            "+86 138 0013 8000",
            "+86-13800138000",
            " +8613800138000",
        ] {
            assert!(E164::parse(other).is_ok(), "{other}");
            assert_eq!(
                E164::parse_canonical(other),
                Err(InvalidPhoneNumber),
                "{other}"
            );
        }
        // Not a mobile number at all.
        assert!(E164::parse_canonical("+861062345678").is_err());
    }

    #[test]
    fn a_sealed_number_is_checked_for_shape() {
        let parsed = E164::parse("+8613800138000").unwrap();
        assert_eq!(E164::from_sealed("+8613800138000", 2), Some(parsed));
        for (e164, cc) in [
            ("8613800138000", 2),     // no '+'
            ("+1234567", 1),          // 7 digits
            ("+1234567890123456", 1), // 16 digits
            ("+8613800138000", 0),    // no country code
            ("+8613800138000", 4),    // too long a country code
            ("+86138001380a0", 2),    // not a digit
            ("+0613800138000", 2),    // leading zero
        ] {
            assert_eq!(E164::from_sealed(e164, cc), None, "{e164} {cc}");
        }
        assert!(E164::from_sealed("+12345678", 1).is_some());
        assert!(E164::from_sealed("+123456789012345", 3).is_some());
    }

    #[test]
    fn input_up_to_32_characters_is_parsed_and_longer_refused() {
        // The same valid number, padded with spaces between its digits.
        let padded = |len: usize| format!("+86{}13800138000", " ".repeat(len - 14));
        assert_eq!(padded(MAX_INPUT_LEN).len(), MAX_INPUT_LEN);
        assert_eq!(
            E164::parse(&padded(MAX_INPUT_LEN)).unwrap().expose(),
            "+8613800138000"
        );
        assert_eq!(
            E164::parse(&padded(MAX_INPUT_LEN + 1)),
            Err(InvalidPhoneNumber)
        );
        assert_eq!(E164::parse(&padded(200)), Err(InvalidPhoneNumber));
        assert_eq!(E164::parse("   "), Err(InvalidPhoneNumber));
    }

    #[test]
    fn bare_chinese_mobile_means_plus_86() {
        let n = E164::parse("13800138000").unwrap();
        assert_eq!(n.expose(), "+8613800138000");
        assert_eq!(n.masked(), "138****8000");
        assert_eq!(n.masked_international(), "+86 138****8000");
        assert_eq!(E164::parse("+86 138-0013-8000").unwrap(), n);
    }

    #[test]
    fn debug_and_display_are_masked() {
        let n = E164::parse("+8613800138000").unwrap();
        assert_eq!(format!("{n}"), "138****8000");
        assert_eq!(format!("{n:?}"), "E164(138****8000)");
    }

    #[test]
    fn other_countries_mobile_numbers_parse() {
        assert_eq!(E164::parse("+8613800138000").unwrap().country_code_len(), 2);
        assert_eq!(E164::parse("+12015550123").unwrap().country_code_len(), 1);
        assert_eq!(
            E164::parse("+8613800138000")
                .unwrap()
                .masked_international(),
            "+86 138****8000"
        );
        let n = E164::parse("+447911123456").unwrap();
        assert_eq!(n.expose(), "+447911123456");
        assert!(!n.masked().contains("7911123456"));
    }

    #[test]
    fn rejects_non_mobile_and_malformed() {
        for bad in [
            "",
            "   ",
            "abc",
            "1380013800a",
            "1380013",
            "138001380001",
            "+861380013800012345678901234567890",
            "+861088888888", // Beijing landline
            "010-88888888",
            "+8640088888888", // no such mobile
            "23800138000",
            "++8613800138000",
        ] {
            assert_eq!(E164::parse(bad), Err(InvalidPhoneNumber), "{bad:?}");
        }
    }

    #[test]
    fn masking_always_hides_at_least_four_digits() {
        assert_eq!(mask_digits("1234"), "****");
        assert_eq!(mask_digits("123456"), "****56");
        assert_eq!(mask_digits("12345678"), "****5678");
        assert_eq!(mask_digits("123456789"), "1****6789");
    }
}
