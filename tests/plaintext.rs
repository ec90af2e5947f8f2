//! Plain text only where it is harmless. Outside development every outbound endpoint (the
//! registry, each app) must be `https://`, and development mode itself only listens on loopback:
//! `serve --check-config` refuses such a file naming the key, and so does a live catalog reload
//! on a production gateway. A development gateway serving TLS without client certificates says
//! loudly, in the log and boxed on stderr, that every caller is the carrier.

mod common;

use std::{path::Path, process::Stdio, sync::Arc, time::Duration};

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use unbind_gateway::{
    config::{Config, Role, TenantConfig, TlsConfig},
    pki::{DevPki, generate},
    reload::{Reloaded, Reloader},
    testkit::stack::BackendTls,
};

const BIN: &str = env!("CARGO_BIN_EXE_unbind-gateway");
/// Longest the binary may take to check a file, or to start serving.
const PROCESS_DEADLINE: Duration = Duration::from_secs(60);

/// A production config (TLS with client certificates, a tenant, `https://` registry) with four
/// apps, the last at `last_app`. Its TLS files are a development PKI in `dir` (the check reads
/// them).
fn production_toml(dir: &Path, last_app: &str) -> String {
    let pki = generate(&dir.join("certs"), &[], &[], 30, true).unwrap();
    let mut text = format!(
        r#"
listen = "0.0.0.0:50051"
development = false
signing_secret = "0123456789abcdef0123456789abcdef"
[tls]
cert = "{}"
key = "{}"
client_ca = "{}"
[[tenants]]
name = "carrier-a"
role = "carrier"
[store]
url = "sqlite://{}"
[registry]
endpoint = "https://registry.example:443"
"#,
        pki.gateway.cert.display(),
        pki.gateway.key.display(),
        pki.ca.cert.display(),
        dir.join("unbind.db").display()
    );
    for (i, endpoint) in [
        "https://a.example:443",
        "https://b.example:443",
        "https://c.example:443",
        last_app,
    ]
    .iter()
    .enumerate()
    {
        text.push_str(&format!(
            "[[apps]]\nid = \"app-00{i}\"\nname = \"App {i}\"\nendpoint = \"{endpoint}\"\n"
        ));
    }
    text
}

/// `unbind-gateway serve --config FILE --check-config` on `text`: whether it succeeded, and what
/// it printed.
async fn check_config(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let output = tokio::process::Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PROCESS_DEADLINE, output)
        .await
        .expect("--check-config finishes")
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    (output.status.success(), printed)
}

#[tokio::test]
async fn check_config_refuses_plain_http_outside_development_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, printed) = check_config(&production_toml(dir.path(), "https://d.example:443")).await;
    assert!(ok, "{printed}");

    let (ok, printed) = check_config(&production_toml(dir.path(), "http://d.example:80")).await;
    assert!(!ok, "{printed}");
    assert!(
        printed.contains("apps[3].endpoint: plain http:// is only allowed in development"),
        "{printed}"
    );

    let registry = production_toml(dir.path(), "https://d.example:443")
        .replace("https://registry.example:443", "http://registry.example:80");
    let (ok, printed) = check_config(&registry).await;
    assert!(!ok, "{printed}");
    assert!(
        printed.contains("registry.endpoint: plain http:// is only allowed in development"),
        "{printed}"
    );
}

#[tokio::test]
async fn check_config_refuses_development_off_loopback_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let development = |listen: &str| {
        production_toml(dir.path(), "http://127.0.0.1:60003")
            .replace("development = false", "development = true")
            .replace("0.0.0.0:50051", listen)
    };
    for listen in ["127.0.0.1:50051", "[::1]:50051"] {
        let (ok, printed) = check_config(&development(listen)).await;
        assert!(ok, "{listen}: {printed}");
    }
    for listen in ["0.0.0.0:50051", "[::]:50051", "192.0.2.7:50051"] {
        let (ok, printed) = check_config(&development(listen)).await;
        assert!(!ok, "{listen}: {printed}");
        assert!(
            printed.contains("listen: development = true is only allowed on a loopback address"),
            "{listen}: {printed}"
        );
    }
}

/// A development PKI with one carrier tenant.
fn pki(dir: &Path) -> DevPki {
    generate(
        dir,
        &[("carrier-a".to_owned(), Role::Carrier)],
        &[],
        1,
        false,
    )
    .unwrap()
}

#[tokio::test]
async fn a_reload_adding_a_plain_http_app_outside_development_is_rejected() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = pki(pki_dir.path());
    let tls = TlsConfig {
        cert: pki.gateway.cert.clone(),
        key: pki.gateway.key.clone(),
        client_ca: Some(pki.ca.cert.clone()),
    };
    let h = Harness::start(Options {
        apps: 3,
        backend_tls: Some(BackendTls::from_pki(&pki).unwrap()),
        ..Options::default()
    })
    .await;
    // The running gateway is a development one; the file it reloads is production: the reload
    // checks the file as start-up would, whatever runs now.
    let mut config: Config = h.stack.config.clone();
    config.development = false;
    config.tls = Some(tls);
    config.tenants = vec![TenantConfig {
        name: "carrier-a".into(),
        role: Role::Carrier,
        requests_per_second: 10.0,
        burst: 10,
        max_code_failures_per_hour: None,
        wrong_codes_alert_per_hour: 100,
        per_visitor: None,
    }];
    config.validate().unwrap();
    let gateway = Arc::clone(&h.stack.gateway.as_ref().unwrap().gateway);
    let path = h.dir.path().join("gateway.toml");
    let reloader = Reloader::new(Arc::clone(&gateway), path.clone(), |_| {});
    let write = |config: &Config| std::fs::write(&path, toml::to_string(config).unwrap()).unwrap();

    // An https:// app is added.
    let mut added = config.clone();
    let mut app = added.apps[0].clone();
    app.id = "app-https".into();
    added.apps.push(app.clone());
    write(&added);
    match reloader.reload() {
        Reloaded::Applied(change) => assert_eq!(change.added, vec!["app-https".to_owned()]),
        other => panic!("{other:?}"),
    }
    // A plain-text one is refused, and the catalog stays as it was.
    app.id = "app-plain".into();
    app.endpoint = app.endpoint.replace("https://", "http://");
    added.apps.push(app);
    write(&added);
    let Reloaded::Rejected(reason) = reloader.reload() else {
        panic!("a plain http:// app was applied outside development")
    };
    assert!(
        reason.contains("apps[4].endpoint: plain http:// is only allowed in development"),
        "{reason}"
    );
    assert!(gateway.catalog.get("app-plain").is_none());
    assert!(gateway.catalog.get("app-https").is_some());
    h.stop().await;
}

#[tokio::test]
async fn development_tls_without_client_ca_says_every_caller_is_the_carrier() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(&dir.path().join("pki"));
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            r#"
listen = "127.0.0.1:0"
development = true
signing_secret = "0123456789abcdef0123456789abcdef"
[tls]
cert = "{}"
key = "{}"
[store]
url = "sqlite://{}"
[registry]
endpoint = "http://127.0.0.1:1"
"#,
            pki.gateway.cert.display(),
            pki.gateway.key.display(),
            dir.path().join("unbind.db").display()
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let (mut logged, mut boxed) = (false, false);
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            logged |=
                line.contains("WARN") && line.contains("every caller is treated as the carrier");
            boxed |= line.contains("EVERY CALLER IS TREATED AS THE CARRIER, WITH NO LIMITS");
            seen.push_str(&line);
            seen.push('\n');
            if logged && boxed {
                break;
            }
        }
    };
    let finished = tokio::time::timeout(PROCESS_DEADLINE, read).await.is_ok();
    child.start_kill().unwrap();
    let _ = child.wait().await;
    assert!(finished && logged && boxed, "{seen}");
}

/// The README's full config example is a production config that start-up would accept (given
/// its keys file): what it shows is what works.
#[test]
fn the_readmes_config_example_is_accepted() {
    let readme = include_str!("../README.md");
    let section = &readme[readme.find("### The config file").unwrap()..];
    let start = section.find("```toml\n").unwrap() + "```toml\n".len();
    let end = start + section[start..].find("```").unwrap();
    // The keyring it names, made as the README's "Keys" section says.
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    let ring: String = unbind_gateway::security::KeyPurpose::ALL
        .iter()
        .map(|&p| unbind_gateway::security::new_key_entry("2026-12", p, true))
        .collect();
    std::fs::write(&keys, ring).unwrap();
    let text = section[start..end].replace(
        "\"/etc/unbind/keys.toml\"",
        &format!("{:?}", keys.display().to_string()),
    );
    let config = Config::parse(&text).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(!config.development);
    assert!(config.registry.endpoint.starts_with("https://"));
    assert!(
        config
            .apps
            .iter()
            .all(|a| a.endpoint.starts_with("https://"))
    );
}
