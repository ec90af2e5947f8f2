//! `AppId`: the identifier of an integrated app in the catalog (`[a-z0-9][a-z0-9._-]{0,63}`).

use std::{fmt, sync::Arc};

/// A catalog app id. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppId(Arc<str>);

/// The input is not a well-formed app id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "an app id is 1 to 64 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit"
)]
pub struct InvalidAppId;

impl AppId {
    /// Parses an app id.
    pub fn parse(input: &str) -> Result<Self, InvalidAppId> {
        let ok = !input.is_empty()
            && input.len() <= 64
            && input
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
            && input.as_bytes()[0].is_ascii_alphanumeric();
        if ok {
            Ok(Self(input.into()))
        } else {
            Err(InvalidAppId)
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AppId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_the_id() {
        let id = AppId::parse("app-001").unwrap();
        assert_eq!(format!("{id}"), "app-001");
        assert_eq!(format!("{id:?}"), "AppId(app-001)");
    }

    #[test]
    fn parses_catalog_ids() {
        assert_eq!(AppId::parse("app-001").unwrap().as_str(), "app-001");
        assert!(AppId::parse("wechat.pay_2").is_ok());
        for bad in ["", "-x", "App", "a b", &"a".repeat(65)] {
            assert!(AppId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
