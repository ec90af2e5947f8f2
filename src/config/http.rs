//! `[http]`: the CAMARA Number Recycling API (HTTP/JSON) on a listener of its own, and
//! `[http.auth]`: the OAuth 2.0 access tokens it takes (JWTs from the operator's authorization
//! server, checked against the keys of a JWKS file).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::bail;
use serde::{Deserialize, Serialize};

/// The HTTP/JSON listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// e.g. `0.0.0.0:8443`. Served with the `[tls]` certificate (no client certificate: callers
    /// are identified by their access tokens); plain text only with `development = true`, on a
    /// loopback address.
    pub listen: SocketAddr,
    /// The access tokens. Required unless `development = true`; without it (development only)
    /// every request is the `development` tenant's, two-legged, and no token is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<HttpAuthConfig>,
    /// Connections open at once; at the cap a new one waits (in the kernel's backlog) until one
    /// closes. Idle ones close themselves: the TLS handshake and a request's head have
    /// `limits.handshake_timeout` and 10 s.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

/// The default `max_connections` of an HTTP listener (the portal's too): well within a
/// process's usual 65,536 file descriptors next to the gateway's own connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}

/// How access tokens are checked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpAuthConfig {
    /// The authorization server's public keys, a JWKS document (`{"keys": [...]}`: RSA, EC
    /// P-256/P-384 or Ed25519 keys; symmetric keys are refused). Read again when it changes
    /// (checked every `reload.watch_interval`, and on SIGHUP); a file that does not parse is
    /// rejected with the reason logged, and the keys in use are kept.
    pub jwks_file: PathBuf,
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The `aud` every token must carry (one of its values).
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

impl HttpConfig {
    pub(super) fn check(&self, development: bool, tls: bool) -> anyhow::Result<()> {
        if self.max_connections == 0 {
            bail!("`http.max_connections` must be at least 1");
        }
        if !tls && !development {
            bail!("`http.listen` is served with the `[tls]` certificate: `tls` is required");
        }
        if !tls && !self.listen.ip().to_canonical().is_loopback() {
            bail!(
                "`http.listen`: plain-text HTTP (development without `[tls]`) is only allowed on a \
                 loopback address, not {}",
                self.listen
            );
        }
        match &self.auth {
            None if !development => bail!(
                "`http.auth` is required unless `development = true`: access tokens identify \
                 the callers of the HTTP API"
            ),
            None => {}
            Some(auth) => {
                if auth.issuer.trim().is_empty() {
                    bail!("`http.auth.issuer` must name the authorization server (its `iss`)");
                }
                if auth.audience.trim().is_empty() {
                    bail!("`http.auth.audience` must be the `aud` tokens for this gateway carry");
                }
                if auth.leeway > Duration::from_secs(300) {
                    bail!("`http.auth.leeway` must be at most 5m");
                }
            }
        }
        Ok(())
    }
}
