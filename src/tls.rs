//! TLS settings from config files: the listener's identity and the CA that verifies tenants'
//! client certificates, and the gateway's client side towards adapters and the registry (its own
//! client certificate, the CA to trust, the server name to expect). rustls, through tonic.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

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

/// The URL a client on this machine uses to reach a local server bound at `addr` (the simulated
/// apps, the simulated registry): `http://IP:PORT`, with loopback standing in for an unspecified bind address. With TLS,
/// `https://localhost:PORT` for loopback and unspecified addresses (certificates name hosts, and
/// the development adapter certificate names `localhost`), else `https://IP:PORT`.
pub fn endpoint_for(addr: SocketAddr, tls: bool) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    match (tls, ip.is_loopback()) {
        (false, _) => format!("http://{}", SocketAddr::new(ip, addr.port())),
        (true, true) => format!("https://localhost:{}", addr.port()),
        (true, false) => format!("https://{}", SocketAddr::new(ip, addr.port())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_advertise_loopback_for_unspecified_addresses() {
        let any: SocketAddr = "0.0.0.0:60001".parse().expect("a socket address");
        assert_eq!(endpoint_for(any, false), "http://127.0.0.1:60001");
        let v6: SocketAddr = "[::]:60002".parse().expect("a socket address");
        assert_eq!(endpoint_for(v6, false), "http://[::1]:60002");
    }

    #[test]
    fn tls_endpoints_name_localhost_for_loopback() {
        let loopback: SocketAddr = "127.0.0.1:60001".parse().expect("a socket address");
        assert_eq!(endpoint_for(loopback, true), "https://localhost:60001");
        let any: SocketAddr = "[::]:60002".parse().expect("a socket address");
        assert_eq!(endpoint_for(any, true), "https://localhost:60002");
        let lan: SocketAddr = "10.0.0.5:60003".parse().expect("a socket address");
        assert_eq!(endpoint_for(lan, true), "https://10.0.0.5:60003");
    }

    #[test]
    fn endpoints_name_localhost_only_with_tls() {
        let any: SocketAddr = "0.0.0.0:7000".parse().expect("a socket address");
        assert_eq!(endpoint_for(any, false), "http://127.0.0.1:7000");
        assert_eq!(endpoint_for(any, true), "https://localhost:7000");
        let v6: SocketAddr = "[::1]:7001".parse().expect("a socket address");
        assert_eq!(endpoint_for(v6, false), "http://[::1]:7001");
        assert_eq!(endpoint_for(v6, true), "https://localhost:7001");
        let lan: SocketAddr = "10.0.0.7:7002".parse().expect("a socket address");
        assert_eq!(endpoint_for(lan, true), "https://10.0.0.7:7002");
    }
}
