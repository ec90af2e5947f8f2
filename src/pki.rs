//! A development PKI for a full mTLS set-up — one CA, the gateway's server and client
//! certificates, one client certificate per tenant, and server certificates for the adapters and
//! the registry — written by `unbind-gateway certs` and by the test kit. Production uses the
//! carrier's PKI with the same layout; these files exist so that every TLS path can be exercised
//! on a laptop.
//!
//! A tenant's name travels in its certificate (URI SAN `urn:unbind-gateway:tenant:<name>` and
//! the subject CN); its role does not: roles live in the gateway config's `[[tenants]]` table, so
//! a role change never requires re-issuing a certificate.

use std::{
    collections::BTreeSet,
    fs::{self, OpenOptions},
    io::Write,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};

pub use crate::{
    api::tenant::{TENANT_URI_PREFIX, tenant_of_certificate},
    config::{Role, UnknownRole},
};
use chrono::{Datelike, Days, NaiveDate, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, date_time_ymd, string::Ia5String,
};

/// The subject CN of the certificate the gateway presents to adapters and the registry.
pub const GATEWAY_CLIENT_NAME: &str = "unbind-gateway";

/// The subject CN of the development CA.
pub const CA_NAME: &str = "unbind-gateway development CA";

/// How long the development CA is valid.
pub const CA_DAYS: u32 = 3650;

/// Names every server certificate carries, so loopback works whatever the client dials.
const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// A certificate and its private key, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertAndKey {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// The private key (PEM, PKCS#8; mode 0600 on Unix).
    pub key: PathBuf,
}

/// A tenant's client certificate, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantFiles {
    /// The tenant's name (the certificate's CN and URI SAN).
    pub name: String,
    /// The role to put in the gateway config (not in the certificate).
    pub role: Role,
    /// The files.
    pub files: CertAndKey,
}

/// Paths of everything [`generate`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPki {
    /// The output directory.
    pub dir: PathBuf,
    /// The development CA: every peer trusts `ca.pem`.
    pub ca: CertAndKey,
    /// The gateway's server certificate (its listener).
    pub gateway: CertAndKey,
    /// The certificate the gateway presents to adapters and the registry.
    pub gateway_client: CertAndKey,
    /// The server certificate of adapters and the simulator.
    pub adapter: CertAndKey,
    /// The server certificate of the subscriber registry.
    pub registry: CertAndKey,
    /// The web portal's HTTPS certificate, for browsers (`portal --tls-cert`): the loopback
    /// names and the `--gateway-name` ones, where a development portal is served too.
    pub portal: CertAndKey,
    /// One client certificate per tenant.
    pub tenants: Vec<TenantFiles>,
}

impl DevPki {
    /// Every file written, certificates and keys.
    pub fn files(&self) -> Vec<&Path> {
        let mut pairs = vec![
            &self.ca,
            &self.gateway,
            &self.gateway_client,
            &self.adapter,
            &self.registry,
            &self.portal,
        ];
        pairs.extend(self.tenants.iter().map(|t| &t.files));
        pairs
            .into_iter()
            .flat_map(|p| [p.cert.as_path(), p.key.as_path()])
            .collect()
    }

    /// The `[[tenants]]` entries to paste into the gateway config.
    pub fn tenants_toml(&self) -> String {
        self.tenants
            .iter()
            .map(|t| {
                format!(
                    "[[tenants]]\nname = \"{}\"\nrole = \"{}\"\n",
                    t.name, t.role
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Parses a `NAME:ROLE` tenant argument.
pub fn parse_tenant(s: &str) -> anyhow::Result<(String, Role)> {
    let Some((name, role)) = s.trim().split_once(':') else {
        bail!("tenant {s:?}: expected NAME:ROLE (role: carrier, portal, app)");
    };
    validate_tenant_name(name)?;
    let role = role
        .parse::<Role>()
        .with_context(|| format!("tenant {s:?}"))?;
    Ok((name.to_owned(), role))
}

/// Checks `[a-z0-9][a-z0-9._-]{0,63}`: the name ends up in a file name and in a URI, so no
/// separators, no upper case (two names that differ only in case would be confusing), no
/// leading dot or dash.
pub fn validate_tenant_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if !first_ok || !rest_ok || name.len() > 64 {
        bail!(
            "invalid tenant name {name:?}: 1 to 64 characters of a-z, 0-9, '.', '_', '-', \
             starting with a letter or digit"
        );
    }
    // The gateway's own client certificate carries this name (as its CN): a tenant of the same
    // name would be indistinguishable from the gateway to anyone trusting the same CA.
    if name == GATEWAY_CLIENT_NAME {
        bail!("invalid tenant name {name:?}: reserved for the gateway's own client certificate");
    }
    Ok(())
}

/// Generates the development PKI under `out`. Nothing is written unless every input is valid
/// and, without `force`, no target file exists yet.
pub fn generate(
    out: &Path,
    tenants: &[(String, Role)],
    gateway_names: &[String],
    days: u32,
    force: bool,
) -> anyhow::Result<DevPki> {
    // A leaf outliving its CA would be rejected anyway; zero days would be born expired.
    if days == 0 || days > CA_DAYS {
        bail!("--days must be between 1 and {CA_DAYS}, got {days}");
    }
    let mut seen = BTreeSet::new();
    for (name, _) in tenants {
        validate_tenant_name(name)?;
        if !seen.insert(name.as_str()) {
            bail!("duplicate tenant name {name:?}");
        }
    }
    let gateway_sans = server_sans(gateway_names)?;
    let loopback_sans = server_sans(&[])?;

    let pair = |stem: &str| CertAndKey {
        cert: out.join(format!("{stem}.pem")),
        key: out.join(format!("{stem}.key")),
    };
    let pki = DevPki {
        dir: out.to_path_buf(),
        ca: pair("ca"),
        gateway: pair("gateway"),
        gateway_client: pair("gateway-client"),
        adapter: pair("adapter"),
        registry: pair("registry"),
        portal: pair("portal"),
        tenants: tenants
            .iter()
            .map(|(name, role)| TenantFiles {
                name: name.clone(),
                role: *role,
                files: pair(&format!("tenant-{name}")),
            })
            .collect(),
    };
    // Checked up front so that a refusal leaves the directory exactly as it was.
    if !force {
        for path in pki.files() {
            if path.exists() {
                bail!(
                    "{} already exists; pass --force to overwrite it",
                    path.display()
                );
            }
        }
    }
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;

    let today = Utc::now().date_naive();
    // Back-dated a day so that a peer whose clock is slightly behind still accepts the files.
    let not_before = today
        .checked_sub_days(Days::new(1))
        .context("the system date is out of range")?;
    let until = |days: u32| {
        today
            .checked_add_days(Days::new(u64::from(days)))
            .context("the validity period is out of range")
    };

    let (ca_params, ca_key) = {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, CA_NAME);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, not_before, until(CA_DAYS)?)?;
        let key = KeyPair::generate().context("generating the CA key")?;
        let cert = params.self_signed(&key).context("signing the CA")?;
        write_file(&pki.ca.cert, cert.pem().as_bytes(), force, false)?;
        write_file(&pki.ca.key, key.serialize_pem().as_bytes(), force, true)?;
        (params, key)
    };
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_not_after = until(days)?;

    let issue = |files: &CertAndKey,
                 common_name: &str,
                 sans: Vec<SanType>,
                 usage: ExtendedKeyUsagePurpose|
     -> anyhow::Result<()> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        // Lets verifiers pick the right CA key when several development CAs are around.
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, not_before, leaf_not_after)?;
        let key = KeyPair::generate()
            .with_context(|| format!("generating the key of {}", files.cert.display()))?;
        let cert = params
            .signed_by(&key, &issuer)
            .with_context(|| format!("signing {}", files.cert.display()))?;
        write_file(&files.cert, cert.pem().as_bytes(), force, false)?;
        write_file(&files.key, key.serialize_pem().as_bytes(), force, true)?;
        Ok(())
    };

    issue(
        &pki.gateway,
        "unbind-gateway server",
        gateway_sans.clone(),
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    issue(
        &pki.portal,
        "unbind-gateway portal",
        gateway_sans,
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    issue(
        &pki.gateway_client,
        GATEWAY_CLIENT_NAME,
        Vec::new(),
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    issue(
        &pki.adapter,
        "unbind-gateway adapter",
        loopback_sans.clone(),
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    issue(
        &pki.registry,
        "unbind-gateway registry",
        loopback_sans,
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    for tenant in &pki.tenants {
        let uri = Ia5String::try_from(format!("{TENANT_URI_PREFIX}{}", tenant.name))
            .with_context(|| format!("tenant {:?}", tenant.name))?;
        issue(
            &tenant.files,
            &tenant.name,
            vec![SanType::URI(uri)],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
    }
    Ok(pki)
}

/// The SANs of a server certificate: the loopback names, then `extra` (deduplicated).
fn server_sans(extra: &[String]) -> anyhow::Result<Vec<SanType>> {
    let mut sans = Vec::new();
    let names = LOOPBACK_NAMES
        .iter()
        .map(|n| (*n).to_owned())
        .chain(extra.iter().map(|n| n.trim().to_ascii_lowercase()));
    for name in names {
        let san = if let Ok(ip) = name.parse::<IpAddr>() {
            SanType::IpAddress(ip)
        } else {
            validate_dns_name(&name)?;
            SanType::DnsName(
                Ia5String::try_from(name.as_str())
                    .with_context(|| format!("gateway name {name:?}"))?,
            )
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

/// A host name a TLS client could match: labels of letters, digits and '-', optionally a leading
/// `*.` wildcard. Anything else would produce a certificate no client accepts.
fn validate_dns_name(name: &str) -> anyhow::Result<()> {
    let host = name.strip_prefix("*.").unwrap_or(name);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if host.is_empty() || name.len() > 253 || !host.split('.').all(label_ok) {
        bail!("invalid gateway name {name:?}: expected a DNS name or an IP address");
    }
    Ok(())
}

/// Sets a certificate's validity to midnight UTC of `from` through midnight UTC of `to`
/// (through `date_time_ymd`, so the `time` crate need not be a direct dependency).
fn set_validity(
    params: &mut CertificateParams,
    from: NaiveDate,
    to: NaiveDate,
) -> anyhow::Result<()> {
    let ymd = |date: NaiveDate| -> anyhow::Result<(i32, u8, u8)> {
        // `date_time_ymd` panics outside the years `time` supports; chrono's calendar is wider.
        if !(1..=9999).contains(&date.year()) {
            bail!("date {date} is out of range for a certificate");
        }
        let month = u8::try_from(date.month()).context("month out of range")?;
        let day = u8::try_from(date.day()).context("day out of range")?;
        Ok((date.year(), month, day))
    };
    let (y, m, d) = ymd(from)?;
    params.not_before = date_time_ymd(y, m, d);
    let (y, m, d) = ymd(to)?;
    params.not_after = date_time_ymd(y, m, d);
    Ok(())
}

/// Writes `contents` to `path`. Without `force` the file must not exist (`create_new`, so a file
/// appearing since the up-front check is still not clobbered). Keys are created with mode 0600;
/// an existing file is removed first rather than truncated so that it never keeps a laxer mode.
fn write_file(path: &Path, contents: &[u8], force: bool, private: bool) -> anyhow::Result<()> {
    if force {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "{} already exists; pass --force to overwrite it",
                path.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("creating {}", path.display()))
        }
    })?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    if private {
        // The umask cannot widen 0600, but make the guarantee explicit and independent of it.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, Ipv6Addr},
        time::Duration,
    };

    use tonic::transport::{
        Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
    };
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use x509_parser::{certificate::X509Certificate, extensions::GeneralName, pem::parse_x509_pem};

    use super::*;

    fn demo_tenants() -> Vec<(String, Role)> {
        vec![
            ("carrier-demo".into(), Role::Carrier),
            ("portal-demo".into(), Role::Portal),
            ("app-demo".into(), Role::App),
        ]
    }

    fn generate_default(dir: &Path) -> DevPki {
        generate(
            dir,
            &demo_tenants(),
            &["gateway.example.test".into(), "10.1.2.3".into()],
            30,
            false,
        )
        .unwrap()
    }

    /// The DER of a PEM certificate file.
    fn der_of(path: &Path) -> Vec<u8> {
        let pem = fs::read(path).unwrap();
        let (rest, pem) = parse_x509_pem(&pem).unwrap();
        assert!(rest.iter().all(u8::is_ascii_whitespace));
        assert_eq!(pem.label, "CERTIFICATE");
        pem.contents
    }

    fn parse(der: &[u8]) -> X509Certificate<'_> {
        let (rest, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        assert!(rest.is_empty());
        cert
    }

    fn common_name(cert: &X509Certificate<'_>) -> String {
        let cn = cert.subject().iter_common_name().next().unwrap();
        cn.as_str().unwrap().to_owned()
    }

    #[derive(Clone, Debug, Default, PartialEq)]
    struct Sans {
        dns: Vec<String>,
        ips: Vec<IpAddr>,
        uris: Vec<String>,
    }

    fn sans(cert: &X509Certificate<'_>) -> Sans {
        let mut out = Sans::default();
        let Some(ext) = cert.subject_alternative_name().unwrap() else {
            return out;
        };
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => out.dns.push((*d).to_owned()),
                GeneralName::URI(u) => out.uris.push((*u).to_owned()),
                GeneralName::IPAddress(b) => out.ips.push(match b.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()),
                    _ => IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()),
                }),
                other => panic!("unexpected SAN {other:?}"),
            }
        }
        out
    }

    /// (serverAuth, clientAuth)
    fn ekus(cert: &X509Certificate<'_>) -> (bool, bool) {
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(!eku.any && eku.other.is_empty());
        (eku.server_auth, eku.client_auth)
    }

    fn loopback() -> Vec<IpAddr> {
        vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]
    }

    #[test]
    fn roles_parse_and_display() {
        for role in [Role::Carrier, Role::Portal, Role::App] {
            assert_eq!(role.to_string().parse::<Role>(), Ok(role));
        }
        assert!("Carrier".parse::<Role>().is_err());
        assert!("admin".parse::<Role>().is_err());
        assert_eq!(
            parse_tenant("portal-1:portal").unwrap(),
            ("portal-1".to_owned(), Role::Portal)
        );
        for bad in [
            "portal-1",
            "portal-1:admin",
            ":portal",
            "Portal:portal",
            "-x:app",
            ".x:app",
            "a/b:app",
            "a b:app",
            "unbind-gateway:app",
        ] {
            assert!(parse_tenant(bad).is_err(), "{bad}");
        }
        assert!(validate_tenant_name(&"a".repeat(64)).is_ok());
        assert!(validate_tenant_name(&"a".repeat(65)).is_err());
        assert!(validate_tenant_name("0.a_b-c").is_ok());
        assert!(validate_tenant_name("").is_err());
        assert!(validate_tenant_name("é").is_err());
    }

    #[test]
    fn writes_a_consistent_pki() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs");
        let pki = generate_default(&out);
        assert_eq!(pki.files().len(), 2 * (6 + 3));
        for path in pki.files() {
            assert!(path.starts_with(&out), "{}", path.display());
            assert!(path.is_file(), "{}", path.display());
        }
        let names: Vec<_> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(
            names,
            [
                "adapter.key",
                "adapter.pem",
                "ca.key",
                "ca.pem",
                "gateway-client.key",
                "gateway-client.pem",
                "gateway.key",
                "gateway.pem",
                "portal.key",
                "portal.pem",
                "registry.key",
                "registry.pem",
                "tenant-app-demo.key",
                "tenant-app-demo.pem",
                "tenant-carrier-demo.key",
                "tenant-carrier-demo.pem",
                "tenant-portal-demo.key",
                "tenant-portal-demo.pem",
            ]
        );

        let ca_der = der_of(&pki.ca.cert);
        let ca = parse(&ca_der);
        assert_eq!(common_name(&ca), CA_NAME);
        assert_eq!(ca.issuer(), ca.subject());
        assert!(ca.is_ca());
        let ku = ca.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        ca.verify_signature(None).unwrap();
        let now = Utc::now().timestamp();
        let ca_validity = ca.validity();
        assert!(ca_validity.not_before.timestamp() <= now);
        let ca_days = (ca_validity.not_after.timestamp() - now) / 86_400;
        assert!((3649..=3650).contains(&ca_days), "{ca_days}");

        // The gateway's and the portal's: the loopback names and the --gateway-name ones.
        let served = Sans {
            dns: vec!["localhost".into(), "gateway.example.test".into()],
            ips: vec![
                Ipv4Addr::LOCALHOST.into(),
                Ipv6Addr::LOCALHOST.into(),
                Ipv4Addr::new(10, 1, 2, 3).into(),
            ],
            uris: vec![],
        };
        // (files, CN, SANs, (serverAuth, clientAuth))
        let mut leaves = vec![
            (
                &pki.gateway,
                "unbind-gateway server".to_owned(),
                served.clone(),
                (true, false),
            ),
            (
                &pki.portal,
                "unbind-gateway portal".to_owned(),
                served.clone(),
                (true, false),
            ),
            (
                &pki.gateway_client,
                "unbind-gateway".to_owned(),
                Sans::default(),
                (false, true),
            ),
        ];
        for files in [&pki.adapter, &pki.registry] {
            let cn = if files == &pki.adapter {
                "unbind-gateway adapter"
            } else {
                "unbind-gateway registry"
            };
            leaves.push((
                files,
                cn.to_owned(),
                Sans {
                    dns: vec!["localhost".into()],
                    ips: loopback(),
                    uris: vec![],
                },
                (true, false),
            ));
        }
        for t in &pki.tenants {
            leaves.push((
                &t.files,
                t.name.clone(),
                Sans {
                    uris: vec![format!("urn:unbind-gateway:tenant:{}", t.name)],
                    ..Sans::default()
                },
                (false, true),
            ));
        }
        for (files, cn, expected_sans, expected_ekus) in leaves {
            let der = der_of(&files.cert);
            let cert = parse(&der);
            let what = files.cert.display();
            assert_eq!(cert.issuer(), ca.subject(), "{what}");
            cert.verify_signature(Some(ca.public_key()))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(!cert.is_ca(), "{what}");
            assert_eq!(common_name(&cert), cn, "{what}");
            assert_eq!(sans(&cert), expected_sans, "{what}");
            assert_eq!(ekus(&cert), expected_ekus, "{what}");
            let validity = cert.validity();
            assert!(validity.not_before.timestamp() <= now, "{what}");
            let days = (validity.not_after.timestamp() - now) / 86_400;
            assert!((29..=30).contains(&days), "{what}: {days}");
            assert!(validity.not_after <= ca_validity.not_after, "{what}");
            // Each leaf has its own key.
            assert_ne!(cert.public_key().raw, ca.public_key().raw, "{what}");
            let key = fs::read_to_string(&files.key).unwrap();
            assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{what}");
        }
        assert_eq!(
            pki.tenants_toml(),
            "[[tenants]]\nname = \"carrier-demo\"\nrole = \"carrier\"\n\n\
             [[tenants]]\nname = \"portal-demo\"\nrole = \"portal\"\n\n\
             [[tenants]]\nname = \"app-demo\"\nrole = \"app\"\n"
        );
    }

    #[cfg(unix)]
    #[test]
    fn keys_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pki = generate_default(dir.path());
        // A pre-existing lax key is replaced, not truncated in place, so it cannot keep 0644.
        fs::set_permissions(&pki.gateway.key, fs::Permissions::from_mode(0o644)).unwrap();
        let pki = generate(dir.path(), &demo_tenants(), &[], 30, true).unwrap();
        for path in pki.files() {
            let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
            if path.extension().is_some_and(|e| e == "key") {
                assert_eq!(mode, 0o600, "{}", path.display());
            } else {
                assert_eq!(mode & 0o077 & !0o044, 0, "{}", path.display());
            }
        }
    }

    #[test]
    fn tenant_of_certificate_reads_uri_then_cn() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate_default(dir.path());
        for t in &pki.tenants {
            assert_eq!(
                tenant_of_certificate(&der_of(&t.files.cert)).as_deref(),
                Some(t.name.as_str())
            );
        }
        assert_eq!(
            tenant_of_certificate(&der_of(&pki.gateway_client.cert)).as_deref(),
            Some("unbind-gateway")
        );
        assert_eq!(tenant_of_certificate(b"not a certificate"), None);
        let mut trailing = der_of(&pki.gateway_client.cert);
        trailing.push(0);
        assert_eq!(tenant_of_certificate(&trailing), None);

        let make = |cn: Option<&str>, uris: &[&str]| {
            let mut params = CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            if let Some(cn) = cn {
                params.distinguished_name.push(DnType::CommonName, cn);
            }
            params.subject_alt_names = uris
                .iter()
                .map(|u| SanType::URI(Ia5String::try_from(*u).unwrap()))
                .collect();
            let key = KeyPair::generate().unwrap();
            params.self_signed(&key).unwrap().der().to_vec()
        };
        // The URI SAN wins over the CN.
        let der = make(Some("cn-name"), &["urn:unbind-gateway:tenant:uri-name"]);
        assert_eq!(tenant_of_certificate(&der).as_deref(), Some("uri-name"));
        // Unrelated URIs are ignored: the CN decides.
        let der = make(Some("cn-name"), &["https://example.test/x"]);
        assert_eq!(tenant_of_certificate(&der).as_deref(), Some("cn-name"));
        // Neither.
        assert_eq!(tenant_of_certificate(&make(None, &[])), None);
        // Two different tenants in one certificate: no identity, and no fall-back to the CN.
        let der = make(
            Some("cn-name"),
            &[
                "urn:unbind-gateway:tenant:one",
                "urn:unbind-gateway:tenant:two",
            ],
        );
        assert_eq!(tenant_of_certificate(&der), None);
        let der = make(Some("cn-name"), &["urn:unbind-gateway:tenant:"]);
        assert_eq!(tenant_of_certificate(&der), None);
    }

    #[test]
    fn refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate_default(dir.path());
        let before = fs::read(&pki.ca.cert).unwrap();
        let err = generate(dir.path(), &demo_tenants(), &[], 30, false).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("ca.pem") && msg.contains("--force"), "{msg}");
        assert_eq!(fs::read(&pki.ca.cert).unwrap(), before);

        // Only one file in the way: still refused, named, and nothing else written.
        let other = tempfile::tempdir().unwrap();
        fs::write(other.path().join("tenant-app-demo.key"), "mine").unwrap();
        let err = generate(other.path(), &demo_tenants(), &[], 30, false).unwrap_err();
        assert!(
            format!("{err:#}").contains("tenant-app-demo.key"),
            "{err:#}"
        );
        assert_eq!(fs::read_dir(other.path()).unwrap().count(), 1);

        let again = generate(dir.path(), &demo_tenants(), &[], 30, true).unwrap();
        assert_ne!(fs::read(&again.ca.cert).unwrap(), before);
    }

    #[test]
    fn rejects_bad_input_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let tenants = |list: &[(&str, Role)]| -> Vec<(String, Role)> {
            list.iter().map(|(n, r)| ((*n).to_owned(), *r)).collect()
        };
        // (tenants, gateway names, days, what the error names)
        type Case = (Vec<(String, Role)>, Vec<String>, u32, &'static str);
        let cases: Vec<Case> = vec![
            (tenants(&[("Bad", Role::App)]), vec![], 30, "Bad"),
            (tenants(&[("a/b", Role::App)]), vec![], 30, "a/b"),
            (
                tenants(&[("dup", Role::App), ("dup", Role::Portal)]),
                vec![],
                30,
                "duplicate",
            ),
            (vec![], vec!["bad name".into()], 30, "bad name"),
            (vec![], vec!["".into()], 30, "gateway name"),
            (vec![], vec!["-x.test".into()], 30, "-x.test"),
            (vec![], vec![], 0, "--days"),
            (vec![], vec![], 3651, "--days"),
        ];
        for (tenants, names, days, needle) in cases {
            let err = generate(&out, &tenants, &names, days, false).unwrap_err();
            assert!(format!("{err:#}").contains(needle), "{err:#}");
            assert!(!out.exists());
        }
        // Accepted: upper case is folded, wildcards and IPv6 are fine, duplicates collapse.
        let pki = generate(
            &out,
            &[],
            &[
                "GW.Example.Test".into(),
                "*.svc.test".into(),
                "fd00::1".into(),
                "localhost".into(),
            ],
            1,
            false,
        )
        .unwrap();
        let der = der_of(&pki.gateway.cert);
        let got = sans(&parse(&der));
        assert_eq!(got.dns, ["localhost", "gw.example.test", "*.svc.test"]);
        assert_eq!(got.ips.len(), 3);
    }

    /// A TLS server on 127.0.0.1:0 with the health service, requiring client certificates
    /// issued by `ca`.
    async fn tls_server(cert: &CertAndKey, ca: &Path) -> (u16, tokio::task::JoinHandle<()>) {
        let identity =
            Identity::from_pem(fs::read(&cert.cert).unwrap(), fs::read(&cert.key).unwrap());
        let tls = ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(Certificate::from_pem(fs::read(ca).unwrap()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let router = Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(health);
        let task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = router.serve_with_incoming(incoming).await;
        });
        (port, task)
    }

    /// A health check over TLS to `localhost:port`, trusting `ca`, presenting `client` if any.
    async fn health_check(port: u16, ca: &Path, client: Option<&CertAndKey>) -> Result<(), String> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(fs::read(ca).unwrap()))
            .domain_name("localhost");
        if let Some(client) = client {
            tls = tls.identity(Identity::from_pem(
                fs::read(&client.cert).unwrap(),
                fs::read(&client.key).unwrap(),
            ));
        }
        let attempt = async {
            let channel = Endpoint::from_shared(format!("https://localhost:{port}"))
                .map_err(|e| e.to_string())?
                .tls_config(tls)
                .map_err(|e| e.to_string())?
                .connect()
                .await
                .map_err(|e| format!("connect: {e:?}"))?;
            let answer = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map_err(|e| format!("check: {e:?}"))?;
            // 1 = SERVING
            if answer.into_inner().status == 1 {
                Ok(())
            } else {
                Err("not serving".to_owned())
            }
        };
        tokio::time::timeout(Duration::from_secs(10), attempt)
            .await
            .map_err(|_| "timed out".to_owned())?
    }

    /// The handshake failed, for the reason rustls names `why`.
    fn assert_refused(result: Result<(), String>, why: &str) {
        match result {
            Ok(()) => panic!("expected a TLS failure ({why}), got a health answer"),
            Err(e) => assert!(e.contains(why), "expected {why}, got {e}"),
        }
    }

    #[tokio::test]
    async fn mutual_tls_handshakes_work_with_the_generated_files() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate_default(dir.path());
        let portal = &pki.tenants[1].files;

        // Tenants -> gateway listener.
        let (port, server) = tls_server(&pki.gateway, &pki.ca.cert).await;
        health_check(port, &pki.ca.cert, Some(portal))
            .await
            .unwrap();
        for t in &pki.tenants {
            health_check(port, &pki.ca.cert, Some(&t.files))
                .await
                .unwrap();
        }
        assert_refused(
            health_check(port, &pki.ca.cert, None).await,
            "CertificateRequired",
        );
        // A server-only certificate is no client certificate (EKU serverAuth only).
        assert_refused(
            health_check(port, &pki.ca.cert, Some(&pki.adapter)).await,
            "UnsupportedCertificate",
        );
        // A certificate from another development CA is not trusted: both CAs have the same name,
        // so the chain is built and its signature fails.
        let other_dir = tempfile::tempdir().unwrap();
        let other = generate_default(other_dir.path());
        assert_refused(
            health_check(port, &pki.ca.cert, Some(&other.tenants[1].files)).await,
            "DecryptError",
        );
        // ... and the client does not trust a gateway it cannot chain to its CA.
        assert_refused(
            health_check(port, &other.ca.cert, Some(&other.tenants[1].files)).await,
            "BadSignature",
        );
        server.abort();

        // Gateway outbound -> adapters and the registry.
        for target in [&pki.adapter, &pki.registry] {
            let (port, server) = tls_server(target, &pki.ca.cert).await;
            health_check(port, &pki.ca.cert, Some(&pki.gateway_client))
                .await
                .unwrap();
            assert_refused(
                health_check(port, &pki.ca.cert, None).await,
                "CertificateRequired",
            );
            server.abort();
        }
    }
}
