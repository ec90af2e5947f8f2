//! A posted form (`application/x-www-form-urlencoded`), read into name/value pairs. A name may
//! repeat (the ticked accounts); nothing in it is ever logged.

/// The fields of a posted form, in order.
#[derive(Default)]
pub struct Form {
    fields: Vec<(String, String)>,
}

impl std::fmt::Debug for Form {
    /// The names only: the values hold the number, the ID characters or the code.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.fields.iter().map(|(n, _)| n))
            .finish()
    }
}

impl Form {
    /// Parses a body; bytes that are not UTF-8 after decoding become U+FFFD.
    pub fn parse(body: &[u8]) -> Form {
        let fields = body
            .split(|&b| b == b'&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = match pair.iter().position(|&b| b == b'=') {
                    Some(i) => (&pair[..i], &pair[i + 1..]),
                    None => (pair, &[][..]),
                };
                (decode(name), decode(value))
            })
            .collect();
        Form { fields }
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Percent-decoding, with `+` as a space.
fn decode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_repeat_and_decode() {
        let form = Form::parse(b"csrf=a%2Bb&acct=1&acct=3&phone=+86+138&x&bad=%zz%4&&zh=%E4%B8%AD");
        assert_eq!(form.get("csrf"), Some("a+b"));
        assert_eq!(form.all("acct").collect::<Vec<_>>(), ["1", "3"]);
        assert_eq!(form.get("phone"), Some(" 86 138"));
        assert_eq!(form.get("x"), Some(""));
        assert_eq!(form.get("bad"), Some("%zz%4"));
        assert_eq!(form.get("zh"), Some("中"));
        assert_eq!(form.get("missing"), None);
        assert_eq!(
            format!("{form:?}"),
            r#"["csrf", "acct", "acct", "phone", "x", "bad", "zh"]"#
        );
    }
}
