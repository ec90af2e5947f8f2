//! The client TLS options of the commands that call a gRPC server (`query` calls the gateway,
//! `check-adapter` an adapter): one set of flags, turned into tonic's client TLS by the function
//! the gateway uses for its own outbound calls, so a command connects as the gateway would.

use std::path::PathBuf;

use anyhow::{Context, bail};
use tonic::transport::ClientTlsConfig;

use crate::config::OutboundTlsConfig;

/// `--ca`, `--cert`, `--key`, `--tls-server-name`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ClientTlsArgs {
    /// The CA (PEM) that signed the server's certificate; required for https://.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// The client certificate (PEM) to present for mutual TLS (a tenant's towards the gateway,
    /// the gateway's towards an adapter); with --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// The name the server's certificate must carry, when it differs from the endpoint's host.
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
}

impl ClientTlsArgs {
    /// The client TLS for `endpoint`: none for http://; for https:// the CA (required), the
    /// client certificate if given, and the expected server name.
    pub fn config(&self, endpoint: &str) -> anyhow::Result<Option<ClientTlsConfig>> {
        let https = endpoint.starts_with("https://");
        if !https && !endpoint.starts_with("http://") {
            bail!("the endpoint must start with http:// or https://, e.g. https://host:443");
        }
        let any = self.ca.is_some()
            || self.cert.is_some()
            || self.key.is_some()
            || self.tls_server_name.is_some();
        if !https {
            if any {
                bail!("--ca, --cert, --key and --tls-server-name need an https:// endpoint");
            }
            return Ok(None);
        }
        let Some(ca) = &self.ca else {
            bail!(
                "an https:// endpoint needs --ca FILE: the CA that signed the server's certificate"
            );
        };
        let outbound = OutboundTlsConfig {
            ca: ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        };
        crate::tls::client_config(
            endpoint,
            Some(&outbound),
            None,
            self.tls_server_name.as_deref(),
        )
        .context("reading the files given with --ca / --cert / --key")
    }

    /// How the connection is protected, in words.
    pub fn describe(&self) -> &'static str {
        match (&self.ca, &self.cert) {
            (None, _) => "plain text",
            (Some(_), None) => "TLS, no client certificate",
            (Some(_), Some(_)) => "mutual TLS",
        }
    }
}

/// `--tls-cert`, `--tls-key`, `--tls-client-ca`: what a development server started from the
/// command line (the simulated registry, the simulated apps) serves.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ServerTlsArgs {
    /// Serve TLS with this certificate (PEM); the endpoint becomes https://localhost:PORT.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM); needs --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

impl ServerTlsArgs {
    /// The server TLS the flags name, read from their files; `None` serves plain text.
    pub fn config(&self) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            if self.tls_client_ca.is_some() {
                bail!("--tls-client-ca needs --tls-cert and --tls-key");
            }
            return Ok(None);
        };
        let read = |path: &PathBuf, flag: &str| {
            std::fs::read(path).with_context(|| format!("{flag}: cannot read {}", path.display()))
        };
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
            read(cert, "--tls-cert")?,
            read(key, "--tls-key")?,
        ));
        if let Some(ca) = &self.tls_client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(read(ca, "--tls-client-ca")?));
        }
        Ok(Some(tls))
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.tls_client_ca.is_some()
    }
}
