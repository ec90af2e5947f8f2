//! TLS settings from files: the listeners' identities, re-read when they change (`LiveTls`:
//! the gRPC listener with the CA that verifies tenants' client certificates, the HTTP API and
//! the portal), and the gateway's client side towards adapters and the registry (its own client
//! certificate, the CA to trust, the server name to expect, through tonic). rustls throughout.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};

use anyhow::Context;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, RootCertStore,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::WebPkiClientVerifier,
    },
    server::TlsStream,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::{
    config::{OutboundTlsConfig, TlsConfig},
    connections::ListenerMetrics,
};

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{what}: cannot read {}", path.display()))
}

/// The files of a listener's TLS, and the names its user knows them by (`tls.cert`,
/// `--tls-cert`), for errors.
struct TlsFiles {
    cert: (PathBuf, &'static str),
    key: (PathBuf, &'static str),
    /// Tenants' client certificates must chain to this CA (mTLS), when given.
    client_ca: Option<(PathBuf, &'static str)>,
    alpn: &'static [u8],
}

/// What one reading of the files gave.
struct Loaded {
    config: Arc<rustls::ServerConfig>,
    /// The leaf certificate's `notAfter`, in seconds since the Unix epoch.
    not_after: i64,
}

/// A listener's TLS identity, read from its files at start and again by `reload` (on SIGHUP or
/// a change: the reload module's `watch_tls`), so a renewed certificate (or a new client CA) is
/// served without a restart. A new connection's handshake uses the identity read last; connections
/// already open keep theirs. Files that do not make an identity valid now are rejected and the
/// running identity is kept.
pub struct LiveTls {
    listener: &'static str,
    files: TlsFiles,
    current: RwLock<Loaded>,
}

impl LiveTls {
    /// The gateway's gRPC listener: HTTP/2, and client certificates checked against
    /// `tls.client_ca` when set.
    pub fn grpc(tls: &TlsConfig) -> anyhow::Result<Self> {
        Self::load(
            "grpc",
            TlsFiles {
                cert: (tls.cert.clone(), "tls.cert"),
                key: (tls.key.clone(), "tls.key"),
                client_ca: tls.client_ca.clone().map(|ca| (ca, "tls.client_ca")),
                alpn: b"h2",
            },
        )
    }

    /// An HTTP/1.1 listener (`listener` names it in logs and metrics) serving the PEM chain
    /// `cert` with the key `key`; `flags` name them as the user knows them (`("tls.cert",
    /// "tls.key")`, `("--tls-cert", "--tls-key")`).
    pub fn http(
        listener: &'static str,
        cert: &Path,
        key: &Path,
        flags: (&'static str, &'static str),
    ) -> anyhow::Result<Self> {
        Self::load(
            listener,
            TlsFiles {
                cert: (cert.to_path_buf(), flags.0),
                key: (key.to_path_buf(), flags.1),
                client_ca: None,
                alpn: b"http/1.1",
            },
        )
    }

    fn load(listener: &'static str, files: TlsFiles) -> anyhow::Result<Self> {
        let loaded = files.read()?;
        Ok(Self {
            listener,
            files,
            current: RwLock::new(loaded),
        })
    }

    /// The listener's name.
    pub fn listener(&self) -> &'static str {
        self.listener
    }

    /// The acceptor for the next handshake: the identity read last.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .config,
        ))
    }

    /// When the certificate served now expires, in seconds since the Unix epoch.
    pub fn not_after(&self) -> i64 {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .not_after
    }

    /// A digest of the files' contents: what a change is seen by (no copy of the key is kept).
    pub fn fingerprint(&self) -> [u8; 32] {
        let paths: Vec<PathBuf> = self.files.paths().map(Path::to_path_buf).collect();
        files_digest(&paths)
    }

    /// Reads the files again and serves what they hold from the next handshake on; on an error
    /// (a file missing, a key that is not the certificate's, a certificate not valid now) the
    /// running identity is kept. Returns the new certificate's `notAfter`.
    pub fn reload(&self) -> anyhow::Result<i64> {
        let loaded = self.files.read()?;
        let not_after = loaded.not_after;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        Ok(not_after)
    }
}

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [&self.cert.0, &self.key.0]
            .into_iter()
            .chain(self.client_ca.as_ref().map(|(p, _)| p))
            .map(PathBuf::as_path)
    }

    fn read(&self) -> anyhow::Result<Loaded> {
        let (cert_path, cert_flag) = (&self.cert.0, self.cert.1);
        let (key_path, key_flag) = (&self.key.0, self.key.1);
        let certs = pem_certificates(cert_path, cert_flag)?;
        let not_after = valid_until(&certs[0], cert_path, cert_flag)?;
        let key = PrivateKeyDer::from_pem_file(key_path).with_context(|| {
            format!(
                "{key_flag}: cannot read a PEM private key from {}",
                key_path.display()
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?;
        let builder = match &self.client_ca {
            Some((ca_path, ca_flag)) => {
                let mut roots = RootCertStore::empty();
                for ca in pem_certificates(ca_path, ca_flag)? {
                    roots.add(ca).with_context(|| {
                        format!("{ca_flag}: {} holds an unusable CA", ca_path.display())
                    })?;
                }
                builder.with_client_cert_verifier(
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .with_context(|| format!("{ca_flag}: {}", ca_path.display()))?,
                )
            }
            None => builder.with_no_client_auth(),
        };
        // rustls checks that the key is the certificate's.
        let mut config = builder
            .with_single_cert(certs, key)
            .with_context(|| format!("{cert_flag} and {key_flag} do not make a TLS identity"))?;
        config.alpn_protocols = vec![self.alpn.to_vec()];
        Ok(Loaded {
            config: Arc::new(config),
            not_after,
        })
    }
}

/// `incoming`'s connections after their TLS handshake, with the identity `tls` holds when each
/// connection arrives. Each handshake runs on a task of its own (a slow one holds up no other)
/// and gets at most `limit`; one that fails or stalls is closed. The accept loop is one of
/// `critical`'s tasks. tonic reads a tenant's
/// certificate from the stream this yields (`Request::peer_certs`) as from its own TLS.
pub fn handshakes<S, IO>(
    incoming: S,
    tls: Arc<LiveTls>,
    limit: Duration,
    metrics: ListenerMetrics,
    critical: &crate::critical::CriticalTasks,
) -> impl Stream<Item = std::io::Result<TlsStream<IO>>> + Send + use<S, IO>
where
    S: Stream<Item = std::io::Result<IO>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (done, ready) = tokio::sync::mpsc::channel(64);
    critical.spawn("TLS accept loop", async move {
        let mut incoming = std::pin::pin!(incoming);
        loop {
            // The server dropped the stream (it is stopping): stop accepting, which closes the
            // listening socket.
            let next = tokio::select! {
                next = incoming.next() => next,
                () = done.closed() => break,
            };
            let io = match next {
                None => break,
                // Accept errors are logged where they happen.
                Some(Err(_)) => continue,
                Some(Ok(io)) => io,
            };
            let acceptor = tls.acceptor();
            let done = done.clone();
            let (listener, metrics) = (tls.listener(), metrics.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(limit, acceptor.accept(io)).await {
                    Ok(Ok(stream)) => {
                        let _ = done.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        metrics.handshake_failed(listener, handshake_failure(&e));
                        tracing::debug!(error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        metrics.handshake_failed(listener, "timeout");
                        tracing::debug!(?limit, "TLS handshake not done in time: closed");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(ready)
}

/// Why a handshake failed, as a closed set (a metric label): `no_client_certificate`,
/// `client_certificate_expired`, `client_certificate_refused` (not signed by the client CA,
/// revoked, not for a client, ...), `incompatible` (no common protocol version, cipher or ALPN),
/// `not_tls` (the first bytes were not a TLS record: plain text on a TLS port), `other` (the
/// peer closed or reset mid-handshake, and the rest).
pub fn handshake_failure(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(Error::NoCertificatesPresented) => "no_client_certificate",
        Some(Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) => "client_certificate_expired",
        Some(Error::InvalidCertificate(_)) => "client_certificate_refused",
        Some(Error::PeerIncompatible(_) | Error::NoApplicationProtocol) => "incompatible",
        Some(Error::InvalidMessage(_) | Error::InappropriateMessage { .. }) => "not_tls",
        _ => "other",
    }
}

/// The certificates of a PEM file, at least one.
fn pem_certificates(path: &Path, flag: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("{flag}: cannot read {}", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{flag}: {} holds no PEM certificate",
        path.display()
    );
    Ok(certs)
}

/// The leaf's `notAfter` (seconds since the Unix epoch), if it is valid now.
fn valid_until(leaf: &CertificateDer<'_>, path: &Path, flag: &str) -> anyhow::Result<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| anyhow::anyhow!("{flag}: {} does not parse: {e}", path.display()))?;
    let validity = cert.validity();
    anyhow::ensure!(
        validity.is_valid(),
        "{flag}: the certificate in {} is not valid now (valid from {} to {})",
        path.display(),
        validity.not_before,
        validity.not_after
    );
    Ok(validity.not_after.timestamp())
}

/// The files the client TLS of an outbound endpoint reads ([`client_config`]): the CA it trusts
/// (`ca_override` or `outbound_tls.ca`) and the gateway's client certificate and key. None for a
/// plain `http://` endpoint.
pub fn client_files(
    endpoint: &str,
    outbound: Option<&OutboundTlsConfig>,
    ca_override: Option<&Path>,
) -> Vec<PathBuf> {
    if !endpoint.starts_with("https://") {
        return Vec::new();
    }
    let ca = ca_override.or(outbound.map(|o| o.ca.as_path()));
    ca.into_iter()
        .chain(outbound.and_then(|o| o.cert.as_deref()))
        .chain(outbound.and_then(|o| o.key.as_deref()))
        .map(Path::to_path_buf)
        .collect()
}

/// A digest of what `paths` hold now (a file that cannot be read counts as such): what tells
/// that TLS files changed without keeping, or ever printing, a key.
pub fn files_digest<'a>(paths: impl IntoIterator<Item = &'a PathBuf>) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    for path in paths {
        digest.update(path.as_os_str().as_encoded_bytes());
        match std::fs::read(path) {
            Ok(bytes) => {
                digest.update((bytes.len() as u64).to_le_bytes());
                digest.update(&bytes);
            }
            Err(_) => digest.update(u64::MAX.to_le_bytes()),
        }
    }
    digest.finalize().into()
}

/// When the first certificate in the PEM file `path` expires, in seconds since the Unix epoch;
/// an error if it is not valid now. `flag` names the file as the user knows it.
pub fn certificate_not_after(path: &Path, flag: &str) -> anyhow::Result<i64> {
    let certs = pem_certificates(path, flag)?;
    valid_until(&certs[0], path, flag)
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
