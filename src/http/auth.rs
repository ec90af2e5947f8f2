//! OAuth 2.0 access tokens as CAMARA's security profile has them: `Authorization: Bearer <JWT>`,
//! signed by the operator's authorization server with a key from the JWKS file
//! (`[http.auth] jwks_file`), its `iss` and `aud` those configured, within `exp` and `nbf` (with
//! `leeway`), and carrying the scope `number-recycling:check`. Verification is jsonwebtoken's;
//! what this module adds is the key set (which keys, which algorithms for each), the claims the
//! gateway reads, and the reasons a caller is given.
//!
//! Claims read:
//! - `client_id` (RFC 9068), else `azp`: the tenant, by its name in `[[tenants]]`;
//! - `scope`: space-separated (or a list); must hold `number-recycling:check`;
//! - `sub`: `tel:+<E.164>` makes the token three-legged (the number is the subject); anything
//!   else (or none) is two-legged.
//!
//! Only public keys verify: a JWKS holding a symmetric (`oct`) key is refused, so no token can be
//! made with a secret the gateway holds, and `alg: none` never passes.
//!
//! An app sends the same token with every request until it expires, and an ES256 signature costs
//! about 140 µs to verify (`cargo bench --bench micro -- token`), twice the rest of a check. A
//! token that passed is remembered (by its SHA-256, at most 10,000 of them, for at most 5
//! minutes) and only its expiry is checked again; the memory is cleared whenever the key set is
//! replaced, so a key removed from the JWKS file stops every token it signed at once. Refusals
//! are never remembered.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::{Context, bail};
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse},
};
use serde::Deserialize;
use sha2::Digest;

use crate::{clock::Clock, config::HttpAuthConfig};

/// The scope the check needs.
pub const SCOPE: &str = "number-recycling:check";

/// The most of a JWKS file read (a key set is a few KiB).
const MAX_JWKS_BYTES: u64 = 1 << 20;

/// Tokens remembered as verified, and for how long at most.
const VERIFIED_TOKENS: u64 = 10_000;
const VERIFIED_FOR: Duration = Duration::from_secs(300);

/// One verifying key and the algorithms it may verify.
struct Key {
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// The keys of one JWKS file.
pub struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    /// Keys without a `kid`: usable for a token without one when they are the only key.
    all: Vec<Arc<Key>>,
}

impl KeySet {
    /// Reads and checks a JWKS file.
    pub fn read(path: &Path) -> anyhow::Result<KeySet> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("`http.auth.jwks_file`: cannot read {}", path.display()))?;
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(file, MAX_JWKS_BYTES + 1),
            &mut text,
        )
        .with_context(|| format!("`http.auth.jwks_file`: cannot read {}", path.display()))?;
        if text.len() as u64 > MAX_JWKS_BYTES {
            bail!(
                "`http.auth.jwks_file` {}: larger than 1 MiB, not a key set",
                path.display()
            );
        }
        Self::parse(&text).with_context(|| format!("`http.auth.jwks_file` {}", path.display()))
    }

    /// Parses a JWKS document.
    pub fn parse(text: &str) -> anyhow::Result<KeySet> {
        let set: JwkSet = serde_json::from_str(text)
            .map_err(|e| anyhow::anyhow!("not a JWKS document ({{\"keys\": [...]}}): {e}"))?;
        let mut by_kid = HashMap::new();
        let mut all = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                bail!(
                    "keys[{i}] is a symmetric (oct) key: only the authorization server's public \
                     keys belong here (RSA, EC or OKP)"
                );
            }
            // An encryption key is not for verifying signatures.
            if matches!(
                jwk.common.public_key_use,
                Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
            ) {
                continue;
            }
            let algorithms = algorithms_for(jwk).with_context(|| format!("keys[{i}]"))?;
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|e| anyhow::anyhow!("keys[{i}] is not a usable public key: {e}"))?;
            let key = Arc::new(Key { key, algorithms });
            if let Some(kid) = &jwk.common.key_id
                && by_kid.insert(kid.clone(), Arc::clone(&key)).is_some()
            {
                bail!("keys[{i}]: the kid {kid:?} is used twice");
            }
            all.push(key);
        }
        if all.is_empty() {
            bail!("no signature key: the set holds no RSA, EC or OKP key for signatures");
        }
        Ok(KeySet { by_kid, all })
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// The key a token names (`kid`), or the only key when it names none.
    fn key_for(&self, kid: Option<&str>) -> Option<&Arc<Key>> {
        match kid {
            Some(kid) => self.by_kid.get(kid),
            None if self.all.len() == 1 => self.all.first(),
            None => None,
        }
    }
}

/// The signature algorithms a JWK may verify: its `alg` when it names one, else every
/// algorithm of its key type.
fn algorithms_for(jwk: &Jwk) -> anyhow::Result<Vec<Algorithm>> {
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => bail!("an EC key must be on P-256 or P-384"),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            _ => bail!("an OKP key must be Ed25519"),
        },
        _ => bail!("an unsupported key type (RSA, EC or OKP only)"),
    };
    let Some(alg) = jwk.common.key_algorithm else {
        return Ok(by_type);
    };
    let named = match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        other => bail!("alg {other} is not a public-key signature algorithm"),
    };
    if !by_type.contains(&named) {
        bail!("alg {alg} does not fit the key's type");
    }
    Ok(vec![named])
}

/// Why a request's token was refused. The messages are what the caller reads: they say what to
/// fix, never echo the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("an access token is required: Authorization: Bearer <token>")]
    Missing,
    #[error("the Authorization header must be `Bearer <token>`")]
    NotBearer,
    #[error("the access token is not a JWT this gateway can read")]
    Malformed,
    #[error("the access token is signed by a key the gateway does not know")]
    UnknownKey,
    #[error("the access token's signature or algorithm is not valid")]
    BadSignature,
    #[error("the access token has expired: request a new one")]
    Expired,
    #[error("the access token is not valid yet")]
    NotYetValid,
    #[error("the access token was not issued by this gateway's authorization server")]
    WrongIssuer,
    #[error("the access token is not meant for this API (aud)")]
    WrongAudience,
    #[error("the access token lacks the claim {0}")]
    MissingClaim(&'static str),
    /// A valid token without the scope: 403, not 401.
    #[error("the access token lacks the scope number-recycling:check")]
    MissingScope,
    #[error("the access token names no client (client_id or azp)")]
    NoClient,
}

impl TokenError {
    /// 403 rather than 401: the token is good, its grant is not.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Self::MissingScope)
    }
}

/// What a valid token says about its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The tenant (`client_id`, else `azp`).
    pub client: String,
    /// The number a three-legged token's subject is (`tel:+...`, without `tel:`).
    pub subject_number: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

impl ScopeClaim {
    fn has(&self, scope: &str) -> bool {
        match self {
            Self::Text(text) => text.split_ascii_whitespace().any(|s| s == scope),
            Self::List(list) => list.iter().any(|s| s == scope),
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    exp: Option<f64>,
    nbf: Option<f64>,
    sub: Option<String>,
    client_id: Option<String>,
    azp: Option<String>,
    scope: Option<ScopeClaim>,
}

/// Checks access tokens against the current key set; the key set is replaced when the file
/// changes ([`TokenVerifier::spawn_reload`]).
pub struct TokenVerifier {
    keys: RwLock<Arc<KeySet>>,
    /// Tokens that passed, by their SHA-256: the caller and the token's `exp`.
    verified: moka::sync::Cache<[u8; 32], (Caller, f64)>,
    path: PathBuf,
    issuer: String,
    audience: String,
    leeway: Duration,
    clock: Clock,
}

impl TokenVerifier {
    /// Reads the key set; fails (naming the file and the fault) if it cannot be used.
    pub fn new(config: &HttpAuthConfig, clock: Clock) -> anyhow::Result<Self> {
        let keys = KeySet::read(&config.jwks_file)?;
        Ok(Self {
            keys: RwLock::new(Arc::new(keys)),
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_TOKENS)
                .time_to_live(VERIFIED_FOR)
                .build(),
            path: config.jwks_file.clone(),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway,
            clock,
        })
    }

    fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Reads the file again; on a fault keeps the keys in use and says why.
    pub fn reload(&self) -> anyhow::Result<usize> {
        let keys = KeySet::read(&self.path)?;
        let n = keys.len();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        // What the old keys verified is verified no more.
        self.verified.invalidate_all();
        Ok(n)
    }

    /// Checks the `Authorization` header's value (`None`: no header).
    pub fn verify(&self, authorization: Option<&str>) -> Result<Caller, TokenError> {
        let value = authorization.ok_or(TokenError::Missing)?;
        let token = value
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .ok_or(TokenError::NotBearer)?;
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = self.clock.now_ms() as f64 / 1000.0;
        if let Some((caller, exp)) = self.verified.get(&digest) {
            if exp + self.leeway.as_secs_f64() <= now {
                return Err(TokenError::Expired);
            }
            return Ok(caller);
        }
        let (caller, exp) = self.verify_fully(token, now)?;
        self.verified.insert(digest, (caller.clone(), exp));
        Ok(caller)
    }

    /// The signature and every claim; the caller and the token's `exp`.
    fn verify_fully(&self, token: &str, now: f64) -> Result<(Caller, f64), TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let keys = self.current();
        let key = keys
            .key_for(header.kid.as_deref())
            .ok_or(TokenError::UnknownKey)?;
        if !key.algorithms.contains(&header.alg) {
            return Err(TokenError::BadSignature);
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = key.algorithms.clone();
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        // Times are checked below against the gateway's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidIssuer => TokenError::WrongIssuer,
                K::InvalidAudience => TokenError::WrongAudience,
                K::MissingRequiredClaim(claim) => TokenError::MissingClaim(match claim.as_str() {
                    "iss" => "iss",
                    "aud" => "aud",
                    _ => "exp",
                }),
                K::InvalidSignature
                | K::InvalidAlgorithm
                | K::InvalidEcdsaKey
                | K::InvalidEddsaKey
                | K::InvalidRsaKey(_) => TokenError::BadSignature,
                _ => TokenError::Malformed,
            }
        })?;
        let claims = data.claims;
        let leeway = self.leeway.as_secs_f64();
        let exp = match claims.exp {
            Some(exp) if exp + leeway <= now => return Err(TokenError::Expired),
            Some(exp) => exp,
            None => return Err(TokenError::MissingClaim("exp")),
        };
        if claims.nbf.is_some_and(|nbf| nbf - leeway > now) {
            return Err(TokenError::NotYetValid);
        }
        if !claims.scope.as_ref().is_some_and(|s| s.has(SCOPE)) {
            return Err(TokenError::MissingScope);
        }
        let client = claims
            .client_id
            .or(claims.azp)
            .filter(|c| !c.is_empty())
            .ok_or(TokenError::NoClient)?;
        let subject_number = claims
            .sub
            .as_deref()
            .and_then(|sub| sub.strip_prefix("tel:"))
            .map(str::to_owned);
        Ok((
            Caller {
                client,
                subject_number,
            },
            exp,
        ))
    }

    /// Re-reads the key set when its file changes (checked every `interval`) and on SIGHUP, until
    /// the task is aborted. A file that cannot be used is logged and the keys in use are kept.
    pub fn spawn_reload(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let verifier = Arc::clone(self);
        let path = self.path.clone();
        crate::reload::watch(
            interval,
            move || std::fs::read(&path).ok(),
            move |_| match verifier.reload() {
                Ok(keys) => tracing::info!(keys, "http.auth.jwks_file reloaded"),
                Err(e) => tracing::error!(
                    reason = %format!("{e:#}"),
                    "http.auth.jwks_file rejected; the keys in use are kept"
                ),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EC: &str = r#"{"kty":"EC","crv":"P-256","kid":"a","alg":"ES256","use":"sig",
        "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

    fn set(keys: &str) -> anyhow::Result<KeySet> {
        KeySet::parse(&format!("{{\"keys\": [{keys}]}}"))
    }

    #[test]
    fn a_public_key_set_is_read_with_each_keys_algorithms() {
        let keys = set(EC).unwrap();
        assert_eq!(keys.len(), 1);
        let key = keys.key_for(Some("a")).unwrap();
        assert_eq!(key.algorithms, vec![Algorithm::ES256]);
        // A token without a kid may use the only key; an unknown kid none.
        assert!(keys.key_for(None).is_some());
        assert!(keys.key_for(Some("b")).is_none());
    }

    #[test]
    fn symmetric_keys_and_unusable_sets_are_refused() {
        let oct = r#"{"kty":"oct","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}"#;
        let e = set(oct).err().unwrap().to_string();
        assert!(e.contains("symmetric"), "{e}");
        assert!(set("").is_err(), "no key at all");
        assert!(KeySet::parse("{}").is_err());
        assert!(KeySet::parse("not json").is_err());
        let twice = format!("{EC},{EC}");
        assert!(set(&twice).err().unwrap().to_string().contains("twice"));
        // An EC key that claims an RSA algorithm does not fit its type.
        let mismatched = EC.replace("ES256", "RS256");
        assert!(set(&mismatched).is_err());
        // An encryption key is skipped, leaving none to verify with.
        let enc = EC.replace("\"sig\"", "\"enc\"");
        assert!(set(&enc).is_err());
    }

    #[test]
    fn scopes_are_space_separated_or_listed() {
        let text = ScopeClaim::Text("openid number-recycling:check".into());
        assert!(text.has(SCOPE));
        assert!(!ScopeClaim::Text("number-recycling:checks".into()).has(SCOPE));
        assert!(ScopeClaim::List(vec![SCOPE.into()]).has(SCOPE));
        assert!(!ScopeClaim::List(vec![]).has(SCOPE));
    }

    /// A P-256 key: its JWKS entry and its signing key.
    fn key(kid: &str) -> (String, jsonwebtoken::EncodingKey) {
        use base64::Engine;
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = pair.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwk = format!(
            r#"{{"kty":"EC","crv":"P-256","kid":"{kid}","x":"{}","y":"{}"}}"#,
            b64(&raw[1..33]),
            b64(&raw[33..65])
        );
        let signing =
            jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        (jwk, signing)
    }

    #[test]
    fn a_remembered_token_still_expires_and_is_forgotten_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let (jwk, signing) = key("k1");
        std::fs::write(&path, format!("{{\"keys\": [{jwk}]}}")).unwrap();
        let clock = Clock::system();
        let verifier = TokenVerifier::new(
            &HttpAuthConfig {
                jwks_file: path.clone(),
                issuer: "i".into(),
                audience: "a".into(),
                leeway: Duration::ZERO,
            },
            clock.clone(),
        )
        .unwrap();
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some("k1".into());
        let exp = clock.now_ms() / 1000 + 60;
        let token = jsonwebtoken::encode(
            &header,
            &serde_json::json!({"iss": "i", "aud": "a", "exp": exp, "azp": "app",
                "scope": SCOPE, "sub": "tel:+8613800138000"}),
            &signing,
        )
        .unwrap();
        let bearer = format!("Bearer {token}");
        let caller = verifier.verify(Some(&bearer)).unwrap();
        assert_eq!(caller.client, "app");
        assert_eq!(caller.subject_number.as_deref(), Some("+8613800138000"));
        // Remembered, and still answered the same.
        assert_eq!(verifier.verify(Some(&bearer)), Ok(caller));
        // A new key set forgets it: the key that signed it is gone.
        let (other, _) = key("k2");
        std::fs::write(&path, format!("{{\"keys\": [{other}]}}")).unwrap();
        verifier.reload().unwrap();
        assert_eq!(verifier.verify(Some(&bearer)), Err(TokenError::UnknownKey));
        // Back, remembered again, and refused once it has expired.
        std::fs::write(&path, format!("{{\"keys\": [{jwk}]}}")).unwrap();
        verifier.reload().unwrap();
        assert!(verifier.verify(Some(&bearer)).is_ok());
        clock.advance(Duration::from_secs(61));
        assert_eq!(verifier.verify(Some(&bearer)), Err(TokenError::Expired));
    }

    #[test]
    fn only_bearer_tokens_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, format!("{{\"keys\": [{EC}]}}")).unwrap();
        let verifier = TokenVerifier::new(
            &HttpAuthConfig {
                jwks_file: path,
                issuer: "i".into(),
                audience: "a".into(),
                leeway: Duration::from_secs(30),
            },
            Clock::system(),
        )
        .unwrap();
        assert_eq!(verifier.verify(None), Err(TokenError::Missing));
        assert_eq!(
            verifier.verify(Some("Basic abc")),
            Err(TokenError::NotBearer)
        );
        assert_eq!(verifier.verify(Some("Bearer ")), Err(TokenError::NotBearer));
        assert_eq!(
            verifier.verify(Some("Bearer x.y.z")),
            Err(TokenError::Malformed)
        );
    }
}
