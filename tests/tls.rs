//! Trust on a real network: the gateway served over TLS with client certificates from
//! `unbind-gateway certs`. A call without a client certificate is refused; tenants are who their
//! certificate says; roles decide what they may call; a session from one tenant is useless to
//! another; per-tenant rate limits answer RESOURCE_EXHAUSTED with RetryInfo; an unconfigured
//! certificate is refused; plain text is refused outside development mode, on the listener and
//! towards the apps and the registry (which serve mutual TLS from the same development PKI).

mod common;

use std::time::Duration;

use common::*;
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tonic_types::StatusExt;
use unbind_gateway::{
    config::{Role, TenantConfig, TlsConfig},
    pki::{DevPki, generate},
    proto::{
        CompleteVerificationRequest, ListAppsRequest, ListLinkedAccountsRequest,
        StartVerificationRequest, account_gateway_client::AccountGatewayClient,
    },
    testkit::stack::BackendTls,
};

type Client = AccountGatewayClient<Channel>;

static PKI: std::sync::OnceLock<(tempfile::TempDir, DevPki)> = std::sync::OnceLock::new();

fn pki() -> &'static DevPki {
    &PKI.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let tenants = [
            ("carrier-a", Role::Carrier),
            ("portal-b", Role::Portal),
            ("app-c", Role::App),
            ("portal-unknown", Role::Portal),
            ("portal-slow", Role::Portal),
        ]
        .map(|(n, r)| (n.to_owned(), r));
        let pki = generate(dir.path(), &tenants, &[], 30, false).unwrap();
        (dir, pki)
    })
    .1
}

/// The apps and the registry over mutual TLS from [`pki`]: a production-mode gateway refuses
/// `http://` backends.
fn backends() -> Option<BackendTls> {
    Some(BackendTls::from_pki(pki()).unwrap())
}

/// Production mode: TLS with client certificates, and the tenants. Goes with [`backends`].
fn secure(c: &mut unbind_gateway::config::Config) {
    let pki = pki();
    c.development = false;
    c.tls = Some(TlsConfig {
        cert: pki.gateway.cert.clone(),
        key: pki.gateway.key.clone(),
        client_ca: Some(pki.ca.cert.clone()),
    });
    let tenant = |name: &str, role, rate: f64, burst| TenantConfig {
        name: name.into(),
        role,
        requests_per_second: rate,
        burst,
        // The operator's opt-in hard cap, on one tenant only.
        max_code_failures_per_hour: (name == "carrier-a").then_some(3),
        wrong_codes_alert_per_hour: 1000,
        per_visitor: None,
    };
    c.tenants = vec![
        tenant("carrier-a", Role::Carrier, 100.0, 100),
        tenant("portal-b", Role::Portal, 100.0, 100),
        tenant("app-c", Role::App, 100.0, 100),
        tenant("portal-slow", Role::Portal, 0.1, 3),
    ];
}

async fn client(h: &Harness, tenant: Option<&str>) -> Result<Client, tonic::transport::Error> {
    Ok(AccountGatewayClient::new(tls_channel(h, tenant).await?))
}

async fn tls_channel(
    h: &Harness,
    tenant: Option<&str>,
) -> Result<Channel, tonic::transport::Error> {
    let pki = pki();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&pki.ca.cert).unwrap()))
        .domain_name("localhost");
    if let Some(name) = tenant {
        let files = &pki.tenants.iter().find(|t| t.name == name).unwrap().files;
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&files.cert).unwrap(),
            std::fs::read(&files.key).unwrap(),
        ));
    }
    let addr = h.stack.gateway.as_ref().unwrap().addr;
    Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect()
        .await
}

async fn session(h: &Harness, client: &mut Client) -> String {
    let before = h.codes_sent_to(PHONE).len();
    let verification_id = client
        .start_verification(StartVerificationRequest {
            phone_number: PHONE.into(),
            id_last_six: ID_LAST_SIX.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .verification_id;
    let code = h.wait_for_code(PHONE, before + 1).await;
    client
        .complete_verification(CompleteVerificationRequest {
            verification_id,
            code,
        })
        .await
        .unwrap()
        .into_inner()
        .session_token
}

#[tokio::test]
async fn tenants_are_their_certificates_and_roles_decide() {
    let h = Harness::start(Options {
        apps: 3,
        tweak: secure,
        backend_tls: backends(),
        ..Options::default()
    })
    .await;

    // No client certificate: the handshake (or the first call) is refused.
    let refused = match client(&h, None).await {
        Err(_) => true,
        Ok(mut c) => c.list_apps(ListAppsRequest {}).await.is_err(),
    };
    assert!(refused, "a call without a client certificate must fail");

    // A portal verifies and looks up.
    let mut portal = client(&h, Some("portal-b")).await.unwrap();
    let token = session(&h, &mut portal).await;
    let answer = portal
        .list_linked_accounts(ListLinkedAccountsRequest {
            session_token: token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(answer.complete);

    // Its session is useless to another tenant.
    let mut carrier = client(&h, Some("carrier-a")).await.unwrap();
    let err = carrier
        .list_linked_accounts(ListLinkedAccountsRequest {
            session_token: token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::Unauthenticated, "INVALID_SESSION");

    // An app vendor may not use the holder's API.
    let mut app = client(&h, Some("app-c")).await.unwrap();
    let err = app
        .start_verification(StartVerificationRequest {
            phone_number: PHONE.into(),
            id_last_six: ID_LAST_SIX.into(),
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "PERMISSION_DENIED");

    // A certificate from the right CA naming no configured tenant.
    let mut stranger = client(&h, Some("portal-unknown")).await.unwrap();
    let err = stranger.list_apps(ListAppsRequest {}).await.unwrap_err();
    assert_error(&err, Code::PermissionDenied, "PERMISSION_DENIED");

    // Rate limits per tenant: a burst of 3, then RESOURCE_EXHAUSTED with a retry delay.
    let mut slow = client(&h, Some("portal-slow")).await.unwrap();
    for _ in 0..3 {
        slow.list_apps(ListAppsRequest {}).await.unwrap();
    }
    let err = slow.list_apps(ListAppsRequest {}).await.unwrap_err();
    assert_error(&err, Code::ResourceExhausted, "RATE_LIMITED");
    let retry = err
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
        .unwrap();
    assert!(retry > Duration::ZERO && retry <= Duration::from_secs(10));
    // Other tenants are unaffected.
    portal.list_apps(ListAppsRequest {}).await.unwrap();

    // A tenant whose callers keep entering wrong codes loses verification for a while (this
    // one may fail 3 times an hour); its other calls, and other tenants, carry on.
    let verification_id = carrier
        .start_verification(StartVerificationRequest {
            phone_number: OTHER_PHONE.into(),
            id_last_six: "010000".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .verification_id;
    for _ in 0..3 {
        let err = carrier
            .complete_verification(CompleteVerificationRequest {
                verification_id: verification_id.clone(),
                code: "123456".into(),
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err.code(), Code::InvalidArgument | Code::FailedPrecondition),
            "{err:?}"
        );
    }
    let err = carrier
        .start_verification(StartVerificationRequest {
            phone_number: OTHER_PHONE.into(),
            id_last_six: OTHER_ID.into(),
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::ResourceExhausted, "RATE_LIMITED");
    carrier.list_apps(ListAppsRequest {}).await.unwrap();
    session(&h, &mut portal).await;
    h.stop().await;
}

#[tokio::test]
async fn only_carriers_push_and_only_apps_and_carriers_check_numbers() {
    use unbind_gateway::proto::{
        CheckNumberRecycledRequest, RecycledNumber, SubmitRecycledNumbersRequest,
        carrier_push_client::CarrierPushClient, number_status_client::NumberStatusClient,
    };
    let h = Harness::start(Options {
        apps: 2,
        tweak: secure,
        backend_tls: backends(),
        ..Options::default()
    })
    .await;
    let channel = |name: &'static str| {
        let h = &h;
        async move { tls_channel(h, Some(name)).await.unwrap() }
    };
    let batch = || {
        futures::stream::iter(vec![SubmitRecycledNumbersRequest {
            numbers: vec![RecycledNumber {
                phone_number: OTHER_PHONE.into(),
                cancelled_at: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
                reissued_at: Some(prost_types::Timestamp {
                    seconds: 1_710_000_000,
                    nanos: 0,
                }),
            }],
            ..Default::default()
        }])
    };
    let check = CheckNumberRecycledRequest {
        phone_number: OTHER_PHONE.into(),
        specified_date: Some(prost_types::Timestamp {
            seconds: 1_705_000_000,
            nanos: 0,
        }),
    };
    // A portal cannot push, nor can an app vendor.
    for name in ["portal-b", "app-c"] {
        let mut push = CarrierPushClient::new(channel(name).await);
        let err = push.submit_recycled_numbers(batch()).await.unwrap_err();
        assert_error(&err, Code::PermissionDenied, "PERMISSION_DENIED");
    }
    // A carrier can.
    let mut push = CarrierPushClient::new(channel("carrier-a").await);
    assert_eq!(
        push.submit_recycled_numbers(batch())
            .await
            .unwrap()
            .into_inner()
            .accepted,
        1
    );
    // App vendors (and carriers) may check numbers; portals may not.
    let mut status = NumberStatusClient::new(channel("app-c").await);
    assert!(
        status
            .check_number_recycled(check.clone())
            .await
            .unwrap()
            .into_inner()
            .recycled
    );
    let mut status = NumberStatusClient::new(channel("portal-b").await);
    let err = status.check_number_recycled(check).await.unwrap_err();
    assert_error(&err, Code::PermissionDenied, "PERMISSION_DENIED");
    h.stop().await;
}

#[tokio::test]
async fn plain_text_is_refused_outside_development() {
    let h = Harness::start(Options {
        apps: 1,
        ..Options::default()
    })
    .await;
    let mut config = h.stack.config.clone();
    config.development = false;
    let err = format!("{:#}", config.validate().unwrap_err());
    assert!(err.contains("tls"), "{err}");
    // With TLS and tenants, but the apps and the registry still at http://: refused, naming the
    // key.
    secure(&mut config);
    let err = format!("{:#}", config.validate().unwrap_err());
    assert!(
        err.contains("registry.endpoint: plain http:// is only allowed in development"),
        "{err}"
    );
    config.registry.endpoint = config.registry.endpoint.replace("http://", "https://");
    let err = format!("{:#}", config.validate().unwrap_err());
    assert!(
        err.contains("apps[0].endpoint: plain http:// is only allowed in development"),
        "{err}"
    );
    // And a plain-text client cannot talk to a TLS gateway.
    h.stop().await;
    let h = Harness::start(Options {
        apps: 1,
        tweak: secure,
        backend_tls: backends(),
        ..Options::default()
    })
    .await;
    let addr = h.stack.gateway.as_ref().unwrap().addr;
    let plain = async {
        let mut c = AccountGatewayClient::connect(format!("http://{addr}")).await?;
        c.list_apps(ListAppsRequest {})
            .await
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error>)?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    // Refused, and promptly: a call left hanging is not a refusal.
    let answered = tokio::time::timeout(Duration::from_secs(10), plain)
        .await
        .expect("a plain-text call to a TLS gateway is refused, not left hanging");
    assert!(answered.is_err(), "a plain-text call was served");
    h.stop().await;
}

/// `unbind-gateway query` reaches a gateway that requires tenant certificates: with the CA and a
/// portal's certificate it verifies, looks up and lists every app; without a certificate it
/// fails, with no raw number in what it prints.
#[tokio::test]
async fn query_speaks_mutual_tls_with_a_tenant_certificate() {
    let h = Harness::start(Options {
        apps: 3,
        tweak: secure,
        backend_tls: backends(),
        ..Options::default()
    })
    .await;
    let pki = pki();
    let portal = &pki
        .tenants
        .iter()
        .find(|t| t.name == "portal-b")
        .unwrap()
        .files;
    let addr = h.stack.gateway.as_ref().unwrap().addr;
    let query = |certificate: Option<&unbind_gateway::pki::CertAndKey>| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_unbind-gateway"));
        command
            .arg("query")
            .args(["--endpoint", &format!("https://{addr}")])
            .arg("--ca")
            .arg(&pki.ca.cert)
            .args(["--tls-server-name", "localhost"])
            .args(["--phone", PHONE, "--id-last-six", ID_LAST_SIX])
            .arg("--code-from-sms-file")
            .arg(&h.sms_file)
            .arg("--json")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(files) = certificate {
            command.arg("--cert").arg(&files.cert);
            command.arg("--key").arg(&files.key);
        }
        async move {
            tokio::time::timeout(Duration::from_secs(60), command.output())
                .await
                .expect("query finishes")
                .unwrap()
        }
    };

    let listed = query(Some(portal)).await;
    let stdout = String::from_utf8_lossy(&listed.stdout);
    let stderr = String::from_utf8_lossy(&listed.stderr);
    assert!(listed.status.success(), "{stderr}\n{stdout}");
    for app in h.simulator.apps() {
        assert!(stdout.contains(&format!("\"{}\"", app.id)), "{stdout}");
    }

    let refused = query(None).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("--cert and --key"), "{stderr}");
    let all = format!("{stderr}{}", String::from_utf8_lossy(&refused.stdout));
    assert!(!all.contains(PHONE_BARE), "{all}");
    h.stop().await;
}

/// A channel to `addr` trusting `pki`'s CA, with its tenant `tenant`'s certificate.
async fn channel_with(
    addr: std::net::SocketAddr,
    pki: &DevPki,
    tenant: &str,
) -> Result<Channel, tonic::transport::Error> {
    let files = &pki.tenants.iter().find(|t| t.name == tenant).unwrap().files;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&pki.ca.cert).unwrap()))
        .domain_name("localhost")
        .identity(Identity::from_pem(
            std::fs::read(&files.cert).unwrap(),
            std::fs::read(&files.key).unwrap(),
        ));
    Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect()
        .await
}

/// `ListApps` over a new connection to `addr` with `pki`'s CA and tenant.
async fn lists_apps(addr: std::net::SocketAddr, pki: &DevPki) -> bool {
    match channel_with(addr, pki, "portal-r").await {
        Ok(channel) => AccountGatewayClient::new(channel)
            .list_apps(ListAppsRequest {})
            .await
            .is_ok(),
        Err(_) => false,
    }
}

/// The gateway's certificate and client CA are re-read when their files change, without a
/// restart: new connections get the new identity (and tenants of the new CA are let in, those of
/// the old one no longer), a connection already open goes on, and files that do not make an
/// identity (a key that is not the certificate's) are rejected with the running one kept. On
/// main the files were read once, at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_and_client_ca_are_served_without_a_restart() {
    let tenants = [("portal-r".to_owned(), Role::Portal)];
    let (old_dir, new_dir, live) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let old = generate(old_dir.path(), &tenants, &[], 30, false).unwrap();
    let new = generate(new_dir.path(), &tenants, &[], 30, false).unwrap();
    let (cert, key, ca) = (
        live.path().join("gateway.pem"),
        live.path().join("gateway.key"),
        live.path().join("ca.pem"),
    );
    let install = |pki: &DevPki| {
        std::fs::copy(&pki.gateway.cert, &cert).unwrap();
        std::fs::copy(&pki.gateway.key, &key).unwrap();
        std::fs::copy(&pki.ca.cert, &ca).unwrap();
    };
    install(&old);
    let mut h = Harness::start(Options {
        apps: 1,
        ..Options::default()
    })
    .await;
    let c = &mut h.stack.config;
    c.tls = Some(TlsConfig {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: Some(ca.clone()),
    });
    c.tenants = vec![TenantConfig {
        name: "portal-r".into(),
        role: Role::Portal,
        requests_per_second: 1000.0,
        burst: 1000,
        max_code_failures_per_hour: None,
        wrong_codes_alert_per_hour: 1000,
        per_visitor: None,
    }];
    c.reload.watch_interval = Duration::from_millis(100);
    h.restart_gateway().await;
    let running = h.stack.gateway.as_ref().unwrap();
    let addr = running.addr;
    let gateway = std::sync::Arc::clone(&running.gateway);
    let mut open = AccountGatewayClient::new(channel_with(addr, &old, "portal-r").await.unwrap());
    open.list_apps(ListAppsRequest {}).await.unwrap();
    assert!(
        !lists_apps(addr, &new).await,
        "the new CA was trusted before it was installed"
    );
    let expiry = gateway.metrics.encode();
    assert!(
        expiry.contains("unbind_tls_certificate_expiry_seconds{listener=\"grpc\"}"),
        "{expiry}"
    );

    // A key that is not the certificate's: rejected, the running identity kept.
    std::fs::copy(&new.gateway.key, &key).unwrap();
    let rejected = "unbind_tls_reloads_total{listener=\"grpc\",result=\"rejected\"}";
    let mut seen = false;
    for _ in 0..100 {
        if gateway.metrics.encode().contains(rejected) {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "the mismatched key was not rejected");
    assert!(
        lists_apps(addr, &old).await,
        "the running identity was not kept"
    );

    // The renewed identity and CA: new connections get them, the open one goes on.
    install(&new);
    let mut renewed = false;
    for _ in 0..100 {
        if lists_apps(addr, &new).await {
            renewed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(renewed, "the new certificate was not served within 10 s");
    assert!(
        !lists_apps(addr, &old).await,
        "a tenant of the old CA was let in after the CA changed"
    );
    open.list_apps(ListAppsRequest {})
        .await
        .expect("a connection opened before the change goes on");
    let metrics = gateway.metrics.encode();
    assert!(
        metrics.contains("unbind_tls_reloads_total{listener=\"grpc\",result=\"applied\"}"),
        "{metrics}"
    );
    h.stop().await;
}

/// Failed handshakes are counted by a closed set of reasons, so an operator sees a partner whose
/// certificate is missing or from the wrong CA, plain text sent to the TLS port, and connections
/// that never finish: `unbind_tls_handshake_failures_total{listener,reason}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshakes_are_counted_by_reason() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    fn shorter_handshakes(c: &mut unbind_gateway::config::Config) {
        secure(c);
        c.limits.handshake_timeout = Duration::from_secs(1);
    }
    let h = Harness::start(Options {
        apps: 1,
        tweak: shorter_handshakes,
        backend_tls: backends(),
        ..Options::default()
    })
    .await;
    let running = h.stack.gateway.as_ref().unwrap();
    let addr = running.addr;
    // No client certificate.
    let refused = match client(&h, None).await {
        Err(_) => true,
        Ok(mut c) => c.list_apps(ListAppsRequest {}).await.is_err(),
    };
    assert!(refused);
    // A certificate another CA signed (the client trusts the gateway's CA).
    let other_dir = tempfile::tempdir().unwrap();
    let other = generate(
        other_dir.path(),
        &[("portal-b".to_owned(), Role::Portal)],
        &[],
        30,
        false,
    )
    .unwrap();
    let files = &other.tenants[0].files;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read(&pki().ca.cert).unwrap(),
        ))
        .domain_name("localhost")
        .identity(Identity::from_pem(
            std::fs::read(&files.cert).unwrap(),
            std::fs::read(&files.key).unwrap(),
        ));
    let foreign = async {
        let channel = Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config(tls)?
            .connect()
            .await?;
        AccountGatewayClient::new(channel)
            .list_apps(ListAppsRequest {})
            .await
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error>)?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    assert!(
        foreign.await.is_err(),
        "another CA's certificate was let in"
    );
    // Plain text on the TLS port.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buf)).await;
    // A connection that never starts its handshake (closed after 1 s).
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;

    let expected = [
        "no_client_certificate",
        "client_certificate_refused",
        "not_tls",
        "timeout",
    ];
    let counted = |metrics: &str, reason: &str| {
        metrics.contains(&format!(
            "unbind_tls_handshake_failures_total{{listener=\"grpc\",reason=\"{reason}\"}}"
        ))
    };
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = running.gateway.metrics.encode();
        if expected.iter().all(|reason| counted(&metrics, reason)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for reason in expected {
        assert!(
            counted(&metrics, reason),
            "{reason} not counted:\n{metrics}"
        );
    }
    h.stop().await;
}
