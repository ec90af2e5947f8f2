//! `unbind-gateway certs`: writes a development PKI ([`crate::pki`]) for a full mTLS set-up and
//! prints what to put in the gateway's config. Production uses the carrier's PKI with the same
//! layout; these files exist so that every TLS path can be exercised on a laptop.

use std::path::{Path, PathBuf};

use crate::pki::{CA_DAYS, CertAndKey, DevPki, GATEWAY_CLIENT_NAME, generate, parse_tenant};

/// Flags of `certs`.
#[derive(clap::Args, Debug)]
pub struct CertsArgs {
    /// Output directory.
    #[arg(long, default_value = "certs")]
    pub out: PathBuf,
    /// Tenants as NAME:ROLE (role: carrier, portal, app), comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "carrier-demo:carrier,portal-demo:portal,app-demo:app"
    )]
    pub tenants: Vec<String>,
    /// Extra DNS names / IPs for the gateway's server certificate (localhost, 127.0.0.1 and ::1
    /// are always included).
    #[arg(long, value_delimiter = ',')]
    pub gateway_names: Vec<String>,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
    /// Days the leaf certificates are valid.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
}

/// `unbind-gateway certs`: writes the files, then prints what it wrote and what to do next.
pub fn run(args: &CertsArgs) -> anyhow::Result<()> {
    // Empty entries (`--tenants ""`, a trailing comma) mean nothing rather than an error.
    let non_empty = |list: &[String]| -> Vec<String> {
        list.iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let tenants = non_empty(&args.tenants)
        .iter()
        .map(|t| parse_tenant(t))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pki = generate(
        &args.out,
        &tenants,
        &non_empty(&args.gateway_names),
        args.days,
        args.force,
    )?;
    print!("{}", summary(&pki, args.days));
    Ok(())
}

/// What `run` prints: paths and instructions only, never key material.
fn summary(pki: &DevPki, days: u32) -> String {
    let d = |p: &Path| p.display().to_string();
    let mut s = String::new();
    s.push_str(&format!(
        "Wrote a DEVELOPMENT PKI to {} (leaf certificates valid {days} days, CA {} years):\n",
        pki.dir.display(),
        CA_DAYS / 365
    ));
    let mut line = |what: &str, pair: &CertAndKey| {
        s.push_str(&format!(
            "  {what:<40} {}  {}\n",
            d(&pair.cert),
            d(&pair.key)
        ));
    };
    line("CA (trusted by every peer)", &pki.ca);
    line("gateway listener (server)", &pki.gateway);
    line("gateway -> adapters/registry (client)", &pki.gateway_client);
    line("adapters / simulator (server)", &pki.adapter);
    line("registry (server)", &pki.registry);
    line("web portal, for browsers (server)", &pki.portal);
    for t in &pki.tenants {
        line(&format!("tenant {} ({})", t.name, t.role), &t.files);
    }
    let ca = d(&pki.ca.cert);
    s.push_str("\nNext steps:\n");
    s.push_str(&format!(
        "  - Gateway listener: certificate {}, key {}, client CA {ca}.\n",
        d(&pki.gateway.cert),
        d(&pki.gateway.key)
    ));
    s.push_str(&format!(
        "  - Gateway outbound (adapters, registry): certificate {}, key {}, server CA {ca}.\n",
        d(&pki.gateway_client.cert),
        d(&pki.gateway_client.key)
    ));
    s.push_str(&format!(
        "  - Adapters and the registry: serve {} / {} (or {} / {}), require client \
         certificates issued by {ca}, and accept only the CN {GATEWAY_CLIENT_NAME} (the same CA \
         signs the tenants).\n",
        d(&pki.adapter.cert),
        d(&pki.adapter.key),
        d(&pki.registry.cert),
        d(&pki.registry.key)
    ));
    s.push_str(&format!(
        "  - The web portal: serve HTTPS with --tls-cert {} --tls-key {} (browsers trust {ca} \
         only if you add it to them).\n",
        d(&pki.portal.cert),
        d(&pki.portal.key)
    ));
    if !pki.tenants.is_empty() {
        s.push_str(
            "  - Roles are not in the certificates: add the tenants to the gateway config:\n\n",
        );
        for line in pki.tenants_toml().lines() {
            if line.is_empty() {
                s.push('\n');
            } else {
                s.push_str(&format!("    {line}\n"));
            }
        }
        s.push('\n');
    }
    if let Some(t) = pki.tenants.first() {
        s.push_str(&format!(
            "  - Try it as tenant {} (README \"Run it without the demo\" walks the whole set-up):\n    \
             unbind-gateway query --endpoint https://localhost:50051 --ca {ca} --cert {} --key {}\n    \
             or with grpcurl (an outside tool): grpcurl -cacert {ca} -cert {} -key {} localhost:50051 list\n",
            t.name,
            d(&t.files.cert),
            d(&t.files.key),
            d(&t.files.cert),
            d(&t.files.key)
        ));
    }
    s.push_str(
        "  - Keep the *.key files private (the repository ignores certs/*.key and certs/*.pem). For development only: production \
         uses the carrier's PKI with the same layout.\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::config::Role;

    #[test]
    fn summary_names_files_but_no_key_material() {
        let dir = tempfile::tempdir().unwrap();
        let tenants = [("portal-demo".to_owned(), Role::Portal)];
        let pki = generate(dir.path(), &tenants, &[], 30, false).unwrap();
        let text = summary(&pki, 30);
        for path in pki.files() {
            assert!(text.contains(&path.display().to_string()), "{text}");
        }
        assert!(text.contains("[[tenants]]") && text.contains("role = \"portal\""));
        assert!(!text.contains("PRIVATE KEY"));
        for files in pki.files() {
            if files.extension().is_some_and(|e| e == "key") {
                let key = fs::read_to_string(files).unwrap();
                let body = key.lines().nth(1).unwrap();
                assert!(!text.contains(body));
            }
        }
    }
}
