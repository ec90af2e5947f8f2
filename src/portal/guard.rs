//! What makes the portal safe to put in front of the public, in one place: the signed visitor
//! cookie, the CSRF token tied to it, the language cookie, and the headers every answer carries.
//!
//! - The visitor cookie `uv` holds a random visitor id and its HMAC (a key made at start-up), so
//!   only ids this process issued are accepted. It is the browser's only handle on the visit:
//!   the gateway's session token stays on the server, in the visitor's state
//!   ([`super::visitor`]), and never reaches a URL, a page or a script. `HttpOnly; Secure;
//!   SameSite=Strict`: browsers accept `Secure` cookies on `http://localhost` and
//!   `http://127.0.0.1`, so development on loopback keeps the flag too.
//! - Every form carries a CSRF token, the HMAC of the visitor id under its own label: a page of
//!   another site can neither read it nor guess it, and it is worthless with another visitor's
//!   cookie. `SameSite=Strict` already keeps the cookie off cross-site posts; the token holds
//!   where that does not (old browsers, a sibling subdomain).
//! - Every answer: a Content-Security-Policy that allows nothing but this origin's own script,
//!   style and forms, in no frame; `nosniff`; no referrer (the pages' URLs carry nothing
//!   secret, but neither need the apps or anyone else learn them); `no-store`, so a shared
//!   computer's back button or cache shows no one's accounts.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue, header};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::i18n::Locale;

/// The visitor cookie's name.
pub const VISITOR_COOKIE: &str = "uv";
/// The language cookie's name.
pub const LANG_COOKIE: &str = "lang";
/// The hidden field every form carries.
pub const CSRF_FIELD: &str = "csrf";

/// The policy of every page: this origin's script and style, forms posted here only, no frames,
/// nothing else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// The key the visitor cookies and CSRF tokens are signed with: random per process (a restart
/// starts every visit afresh, as the visitors' state lives in memory anyway).
#[derive(Clone)]
pub struct Keys {
    key: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

impl Keys {
    /// A fresh random key.
    pub fn random() -> Keys {
        Keys {
            key: rand::random(),
        }
    }

    fn mac(&self, label: &str, id: &str) -> Hmac<Sha256> {
        // An HMAC takes a key of any length: this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(label.as_bytes());
        mac.update(b"\0");
        mac.update(id.as_bytes());
        mac
    }

    /// A new visitor id and its cookie value, "<id>.<signature>".
    pub fn new_visitor(&self) -> (String, String) {
        let id = format!("{:032x}", rand::random::<u128>());
        let value = self.cookie_value(&id);
        (id, value)
    }

    fn cookie_value(&self, id: &str) -> String {
        let tag = self.mac("visitor", id).finalize().into_bytes();
        format!("{id}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The visitor id of a cookie value this process signed; `None` for anything else.
    pub fn verify_visitor(&self, value: &str) -> Option<String> {
        let (id, tag) = value.split_once('.')?;
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        self.mac("visitor", id).verify_slice(&tag).ok()?;
        Some(id.to_owned())
    }

    /// The CSRF token of a visitor.
    pub fn csrf_token(&self, visitor_id: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.mac("csrf", visitor_id).finalize().into_bytes())
    }

    /// The name the gateway knows the visitor by (`x-visitor` metadata, for its per-visitor
    /// rate within the portal's): a keyed hash of the visitor id, so the gateway (and its logs,
    /// were it to log it) never holds the cookie's id itself.
    pub fn gateway_visitor(&self, visitor_id: &str) -> String {
        URL_SAFE_NO_PAD.encode(
            self.mac("gateway-visitor", visitor_id)
                .finalize()
                .into_bytes(),
        )
    }

    /// Whether `token` is the visitor's CSRF token (compared in constant time).
    pub fn csrf_ok(&self, visitor_id: &str, token: &str) -> bool {
        let expected = self.csrf_token(visitor_id);
        expected.len() == token.len() && bool::from(expected.as_bytes().ct_eq(token.as_bytes()))
    }
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim())
}

/// The `Set-Cookie` of the visitor cookie: for the browser's session only.
pub fn visitor_set_cookie(value: &str) -> String {
    format!("{VISITOR_COOKIE}={value}; Path=/; HttpOnly; Secure; SameSite=Strict")
}

/// The `Set-Cookie` that remembers the chosen language for a year.
pub fn lang_set_cookie(locale: Locale) -> String {
    format!(
        "{LANG_COOKIE}={}; Path=/; Max-Age=31536000; HttpOnly; Secure; SameSite=Strict",
        locale.tag()
    )
}

/// Adds the headers every answer carries (leaving any a handler set); over HTTPS, also
/// `Strict-Transport-Security`, so the browser never comes back over plain HTTP.
pub fn add_security_headers(headers: &mut HeaderMap, https: bool) {
    let set = |headers: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY,
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(headers, header::CACHE_CONTROL, "no-store");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(
        headers,
        header::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    if https {
        set(headers, header::STRICT_TRANSPORT_SECURITY, HSTS);
    }
}

/// A year of HTTPS only, for this host alone (the portal cannot speak for its subdomains).
pub const HSTS: &str = "max-age=31536000";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visitor_cookies_verify_only_when_signed_here() {
        let keys = Keys::random();
        let (id, value) = keys.new_visitor();
        assert_eq!(keys.verify_visitor(&value).as_deref(), Some(id.as_str()));
        assert_eq!(Keys::random().verify_visitor(&value), None);
        let other = format!("{:032x}", 7u128);
        let forged = format!("{other}.{}", value.split_once('.').unwrap().1);
        assert_eq!(keys.verify_visitor(&forged), None);
        for junk in ["", ".", "abc", "x.y", &format!("{id}.")] {
            assert_eq!(keys.verify_visitor(junk), None, "{junk}");
        }
    }

    #[test]
    fn csrf_tokens_belong_to_one_visitor() {
        let keys = Keys::random();
        let (a, _) = keys.new_visitor();
        let (b, _) = keys.new_visitor();
        let token = keys.csrf_token(&a);
        assert!(keys.csrf_ok(&a, &token));
        assert!(!keys.csrf_ok(&b, &token));
        assert!(!keys.csrf_ok(&a, ""));
        assert!(!keys.csrf_ok(&a, &token[1..]));
        // The gateway's name for a visitor: neither its id nor its token, and what the gateway
        // accepts (1 to 128 of A-Z a-z 0-9 - _ . :).
        let name = keys.gateway_visitor(&a);
        assert!(name != a && name != token && name != keys.gateway_visitor(&b));
        assert!(name.len() <= 128);
        assert!(
            name.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(&c))
        );
    }

    #[test]
    fn cookies_are_read_from_every_header() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; lang=zh-CN"));
        headers.append(header::COOKIE, HeaderValue::from_static("uv=xyz"));
        assert_eq!(cookie(&headers, "lang"), Some("zh-CN"));
        assert_eq!(cookie(&headers, "uv"), Some("xyz"));
        assert_eq!(cookie(&headers, "b"), None);
        let set = visitor_set_cookie("v");
        for flag in ["HttpOnly", "Secure", "SameSite=Strict"] {
            assert!(set.contains(flag), "{set}");
        }
    }
}
