//! A small HTTP/1.1 client for the HTTP API's tests: hyper over a TCP connection, with TLS
//! (rustls, trusting one CA) when the server has it. One connection per request.
//!
//! Included with `#[path]` by the tests that need it.

#![allow(dead_code)]

use std::{net::SocketAddr, path::Path, sync::Arc};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio_rustls::{
    TlsConnector,
    rustls::{
        self, RootCertStore,
        pki_types::{CertificateDer, ServerName, pem::PemObject},
    },
};

/// An answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Where requests go.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    tls: Option<TlsConnector>,
}

impl Client {
    /// Plain text.
    pub fn plain(addr: SocketAddr) -> Self {
        Self { addr, tls: None }
    }

    /// TLS, trusting the CA in `ca_pem`; the server is expected to be `localhost`.
    pub fn tls(addr: SocketAddr, ca_pem: &Path) -> Self {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_pem).expect("the CA file") {
            roots.add(cert.expect("a CA certificate")).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        Self {
            addr,
            tls: Some(TlsConnector::from(Arc::new(config))),
        }
    }

    /// Whether a TLS handshake with the server succeeds (its certificate chains to the CA this
    /// client trusts and names `localhost`).
    pub async fn handshakes(&self) -> bool {
        let Some(tls) = &self.tls else { return false };
        let Ok(tcp) = tokio::net::TcpStream::connect(self.addr).await else {
            return false;
        };
        tls.connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .is_ok()
    }

    /// Sends one request; `body` `None` sends none.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        let mut builder = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("localhost:{}", self.addr.port()));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
            .unwrap();
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("the HTTP API accepts connections");
        let response = match &self.tls {
            Some(tls) => {
                let stream = tls
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await
                    .expect("the TLS handshake");
                send(TokioIo::new(stream), request).await
            }
            None => send(TokioIo::new(tcp), request).await,
        };
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.expect("the body").to_bytes();
        Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// `POST` with a JSON body.
    pub async fn post_json(&self, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.request("POST", path, &all, Some(body)).await
    }
}

async fn send<IO>(
    io: TokioIo<IO>,
    request: http::Request<Full<Bytes>>,
) -> http::Response<hyper::body::Incoming>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .expect("an HTTP/1.1 connection");
    tokio::spawn(connection);
    sender.send_request(request).await.expect("an answer")
}

/// An authorization server's signing key for tests: a P-256 key pair, its JWKS, and tokens.
pub struct Issuer {
    key: jsonwebtoken::EncodingKey,
    pub kid: String,
    jwk: serde_json::Value,
}

impl Issuer {
    pub fn new(kid: &str) -> Self {
        use base64::Engine;
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = pair.public_key_raw();
        // Uncompressed point: 0x04, x (32 bytes), y (32 bytes).
        assert_eq!(raw.len(), 65);
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
        });
        Self {
            key: jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
            kid: kid.to_owned(),
            jwk,
        }
    }

    /// A JWKS document holding the public keys of `issuers`.
    pub fn jwks(issuers: &[&Issuer]) -> String {
        serde_json::json!({ "keys": issuers.iter().map(|i| i.jwk.clone()).collect::<Vec<_>>() })
            .to_string()
    }

    /// A token with `claims` (as given: nothing added), signed ES256 under this key's kid.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}
