//! The files a config names: the app catalog file it includes (`apps_file`), and what
//! `serve --check-config` checks beyond the text itself: that every certificate, key and CA file
//! exists and parses, that each key belongs to its certificate, that no certificate has expired,
//! and that the SQLite file's directory exists or can be made. Errors name the key and the path,
//! never a file's contents.

use std::path::Path;

use anyhow::{Context, bail};
use rcgen::PublicKeyData;
use serde::Deserialize;

use super::{AppConfig, Config};

/// A catalog file: `[[apps]]` entries and nothing else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppsFile {
    #[serde(default)]
    apps: Vec<AppConfig>,
}

/// The `[[apps]]` entries of `apps_file`.
pub fn read_apps_file(path: &Path) -> anyhow::Result<Vec<AppConfig>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("`apps_file`: cannot read {}", path.display()))?;
    let file: AppsFile =
        super::from_toml(&text).with_context(|| format!("`apps_file` {}", path.display()))?;
    Ok(file.apps)
}

impl Config {
    /// Checks every file the config names (see the module's documentation). Returns one line
    /// per file checked, for `--check-config` to print.
    pub fn check_files(&self) -> anyhow::Result<Vec<String>> {
        let mut checked = Vec::new();
        if let Some(tls) = &self.tls {
            let cert = certificates(&tls.cert, "tls.cert")?;
            key_matches(&tls.key, "tls.key", &cert[0], &tls.cert)?;
            checked.push(format!(
                "tls.cert {} and tls.key {}",
                tls.cert.display(),
                tls.key.display()
            ));
            if let Some(ca) = &tls.client_ca {
                certificates(ca, "tls.client_ca")?;
                checked.push(format!("tls.client_ca {}", ca.display()));
            }
        }
        checked.extend(self.check_outbound_files()?);
        if let Some(path) = crate::store::sqlite_path(&self.store.url) {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            match nearest_existing(dir) {
                Some(existing) if existing.is_dir() => checked.push(if existing == dir {
                    format!("store.url: SQLite file {}", path.display())
                } else {
                    format!(
                        "store.url: SQLite file {} (its directory will be made)",
                        path.display()
                    )
                }),
                _ => bail!(
                    "`store.url`: the SQLite file's directory {} cannot be made",
                    dir.display()
                ),
            }
        }
        Ok(checked)
    }
}

impl Config {
    /// Checks the files of the gateway's client side (`outbound_tls`, the apps' `tls_ca`): each
    /// parses, the key is the certificate's, no certificate has expired. Also what a reload
    /// checks before the apps and the registry are given renewed files. One line per file.
    pub fn check_outbound_files(&self) -> anyhow::Result<Vec<String>> {
        let mut checked = Vec::new();
        if let Some(out) = &self.outbound_tls {
            certificates(&out.ca, "outbound_tls.ca")?;
            checked.push(format!("outbound_tls.ca {}", out.ca.display()));
            if let (Some(cert_path), Some(key)) = (&out.cert, &out.key) {
                let cert = certificates(cert_path, "outbound_tls.cert")?;
                key_matches(key, "outbound_tls.key", &cert[0], cert_path)?;
                checked.push(format!(
                    "outbound_tls.cert {} and outbound_tls.key {}",
                    cert_path.display(),
                    key.display()
                ));
            }
        }
        for (i, app) in self.apps.iter().enumerate() {
            if let Some(ca) = &app.tls_ca {
                certificates(ca, &format!("apps[{i}].tls_ca"))?;
                checked.push(format!("apps[{i}].tls_ca {}", ca.display()));
            }
        }
        Ok(checked)
    }
}

/// The nearest of `dir` and its ancestors that exists (a relative path's last ancestor, the empty
/// path, is the working directory).
fn nearest_existing(dir: &Path) -> Option<&Path> {
    dir.ancestors()
        .map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        })
        .find(|d| d.exists())
}

/// A DER certificate, kept for matching its key.
struct Der(Vec<u8>);

/// The certificates of a PEM file: at least one, each parsed and within its validity.
fn certificates(path: &Path, key: &str) -> anyhow::Result<Vec<Der>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("`{key}`: cannot read {}", path.display()))?;
    let mut found = Vec::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(&bytes) {
        let pem =
            pem.map_err(|e| anyhow::anyhow!("`{key}`: {} is not PEM: {e}", path.display()))?;
        if pem.label != "CERTIFICATE" {
            continue;
        }
        let cert = pem.parse_x509().map_err(|e| {
            anyhow::anyhow!(
                "`{key}`: {} holds a certificate that does not parse: {e}",
                path.display()
            )
        })?;
        if !cert.validity().is_valid() {
            bail!(
                "`{key}`: the certificate in {} is not valid now (valid from {} to {})",
                path.display(),
                cert.validity().not_before,
                cert.validity().not_after
            );
        }
        found.push(Der(pem.contents.clone()));
    }
    if found.is_empty() {
        bail!(
            "`{key}`: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(found)
}

/// Checks that the private key at `path` parses and is the key of `cert`.
fn key_matches(path: &Path, key: &str, cert: &Der, cert_path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("`{key}`: cannot read {}", path.display()))?;
    // The parser's error never holds key material.
    let pair = rcgen::KeyPair::from_pem(&text).map_err(|e| {
        anyhow::anyhow!(
            "`{key}`: {} is not a PEM private key (PKCS#8): {e}",
            path.display()
        )
    })?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert.0)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert_path.display()))?;
    if parsed.tbs_certificate.subject_pki.raw != pair.subject_public_key_info().as_slice() {
        bail!(
            "`{key}`: {} is not the key of the certificate in {}",
            path.display(),
            cert_path.display()
        );
    }
    Ok(())
}
