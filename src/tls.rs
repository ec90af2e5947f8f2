//! TLS settings from config files: the listener's identity and the CA that verifies tenants'
//! client certificates, and the gateway's client side towards adapters and the registry (its own
//! client certificate, the CA to trust, the server name to expect). rustls, through tonic.

use std::path::Path;

use anyhow::Context;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::{OutboundTlsConfig, TlsConfig};

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{what}: cannot read {}", path.display()))
}

/// The listener's TLS: its certificate, and (mTLS) the CA tenants' certificates must chain to.
pub fn server_config(tls: &TlsConfig) -> anyhow::Result<ServerTlsConfig> {
    let identity = Identity::from_pem(read(&tls.cert, "tls.cert")?, read(&tls.key, "tls.key")?);
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &tls.client_ca {
        config = config.client_ca_root(Certificate::from_pem(read(ca, "tls.client_ca")?));
    }
    Ok(config)
}

/// The client TLS for one outbound endpoint (`https://` only): trust `ca_override` or the
/// configured CA, present the gateway's client certificate, expect `server_name` if given.
pub fn client_config(
    endpoint: &str,
    outbound: Option<&OutboundTlsConfig>,
    ca_override: Option<&Path>,
    server_name: Option<&str>,
) -> anyhow::Result<Option<ClientTlsConfig>> {
    if !endpoint.starts_with("https://") {
        return Ok(None);
    }
    let mut config = ClientTlsConfig::new();
    let ca = ca_override.or(outbound.map(|o| o.ca.as_path()));
    match ca {
        Some(ca) => {
            config = config.ca_certificate(Certificate::from_pem(read(ca, "outbound_tls.ca")?))
        }
        None => anyhow::bail!(
            "{endpoint} is https:// but no CA is configured (`outbound_tls.ca` or the app's `tls_ca`)"
        ),
    }
    if let Some(OutboundTlsConfig {
        cert: Some(cert),
        key: Some(key),
        ..
    }) = outbound
    {
        config = config.identity(Identity::from_pem(
            read(cert, "outbound_tls.cert")?,
            read(key, "outbound_tls.key")?,
        ));
    }
    if let Some(name) = server_name {
        config = config.domain_name(name);
    }
    Ok(Some(config))
}
