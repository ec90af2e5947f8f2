//! `IdLastSix`: the last six characters of a Chinese national ID: the day of birth (`01` to
//! `31`), a three-digit sequence number, and a check character (a digit or `X`). They are a
//! secret: never stored, never logged; `Debug` prints stars.
//!
//! So there are at most 31 × 1,000 × 11 = 341,000 endings, and about 11,000 (1,000 × 11) for
//! someone who knows the holder's birthday: the gateway's limits on codes and tries, not the
//! size of this space, are what stop guessing.

use std::fmt;

/// A day of the month (`01`–`31`), three digits, then a digit or `X` (a lower-case `x` is
/// normalised).
#[derive(Clone, PartialEq, Eq)]
pub struct IdLastSix([u8; 6]);

/// The input was not a day of the month, three digits and a digit or X. Carries no copy of the
/// input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the ID characters must be a day of the month (01-31), three digits, then a digit or X")]
pub struct InvalidIdLastSix;

impl IdLastSix {
    /// Parses and normalises user input (surrounding spaces are ignored).
    pub fn parse(input: &str) -> Result<Self, InvalidIdLastSix> {
        let bytes = input.trim().as_bytes();
        if bytes.len() != 6 {
            return Err(InvalidIdLastSix);
        }
        let mut out = [0u8; 6];
        for (i, &b) in bytes.iter().enumerate() {
            out[i] = match b {
                b'0'..=b'9' => b,
                b'x' | b'X' if i == 5 => b'X',
                _ => return Err(InvalidIdLastSix),
            };
        }
        // No day 00, none after 31 (months are not checked: the day alone is what the ID's
        // structure allows without the birth date).
        let day = (out[0] - b'0') * 10 + (out[1] - b'0');
        if !(1..=31).contains(&day) {
            return Err(InvalidIdLastSix);
        }
        Ok(Self(out))
    }

    /// The raw characters, only for the request to the registry.
    pub fn expose(&self) -> &str {
        // Only ASCII digits and 'X' can be stored, so this cannot fail.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for IdLastSix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdLastSix(******)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_digits_and_trailing_x() {
        assert_eq!(IdLastSix::parse("123456").unwrap().expose(), "123456");
        assert_eq!(IdLastSix::parse("12345x").unwrap().expose(), "12345X");
        assert_eq!(IdLastSix::parse(" 12345X ").unwrap().expose(), "12345X");
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "12345",
            "1234567",
            "1234X5",
            "12345Y",
            "x12345",
            "１２３４５６",
            "12 456",
            "00000X",
        ] {
            assert_eq!(IdLastSix::parse(bad), Err(InvalidIdLastSix), "{bad:?}");
        }
    }

    #[test]
    fn the_first_two_are_a_day_of_the_month() {
        for day in 1..=31 {
            let id = format!("{day:02}000X");
            assert_eq!(IdLastSix::parse(&id).unwrap().expose(), id);
        }
        for bad in ["000000", "00012X", "321234", "399999", "654321", "99999X"] {
            assert_eq!(IdLastSix::parse(bad), Err(InvalidIdLastSix), "{bad:?}");
        }
    }

    #[test]
    fn debug_hides_the_characters() {
        let id = IdLastSix::parse("12345X").unwrap();
        assert_eq!(format!("{id:?}"), "IdLastSix(******)");
    }
}
