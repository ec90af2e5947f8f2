//! The gateway's client side over real TLS: simulated adapters and the simulated registry serve
//! TLS with the development PKI from `unbind-gateway certs` and require client certificates
//! signed by its CA. A gateway configured with `outbound_tls` (the CA, its own client
//! certificate) verifies a number and gets an answer from every app, one of them dialled by IP
//! with a per-app `tls_server_name`. Without its client certificate the registry refuses it, and
//! so does every app. A per-app `tls_ca` naming another CA, or a per-app `tls_server_name` that
//! is not in the adapter's certificate, makes just that app unreachable.

mod common;

use std::collections::BTreeMap;

use common::{ID_LAST_SIX, PHONE, assert_error};
use tonic::{Code, transport::Channel};
use unbind_gateway::{
    clock::Clock,
    config::{AppConfig, Config, OutboundTlsConfig},
    pki::{DevPki, generate},
    proto::{
        CompleteVerificationRequest, ListLinkedAccountsRequest, ListLinkedAccountsResponse,
        StartVerificationRequest, account_gateway_client::AccountGatewayClient, app_result::State,
    },
    server::{self, RunningGateway},
    testkit::simulated_apps::{Simulator, SimulatorConfig, accounts_for},
    testkit::simulated_registry::{SimulatedRegistry, SimulatedRegistryOptions, read_sms_file},
    testkit::stack::{BackendTls, demo_config, demo_subscribers},
};

const APPS: usize = 5;

/// Dialled as `https://127.0.0.1:PORT` with `tls_server_name = "localhost"`.
const BY_IP: &str = "app-002";
/// Given another PKI's CA as its `tls_ca` in the misconfigured gateway.
const WRONG_CA: &str = "app-003";
/// Given a `tls_server_name` the adapter certificate does not carry in the misconfigured gateway.
const WRONG_NAME: &str = "app-004";

/// The adapters and the registry, serving mTLS, and what a gateway needs to reach them.
struct World {
    dir: tempfile::TempDir,
    pki: DevPki,
    /// Another development PKI: its CA signed none of the servers.
    other_pki: DevPki,
    simulator: Simulator,
    registry: SimulatedRegistry,
    sms_file: std::path::PathBuf,
}

impl World {
    async fn start() -> World {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate(&dir.path().join("pki"), &[], &[], 1, false).unwrap();
        let other_pki = generate(&dir.path().join("other-pki"), &[], &[], 1, false).unwrap();
        let backends = BackendTls::from_pki(&pki).unwrap();
        let simulator = Simulator::start_with_tls(
            SimulatorConfig {
                apps: APPS,
                ..SimulatorConfig::default()
            },
            Some(backends.apps),
        )
        .await
        .unwrap();
        let sms_file = dir.path().join("sms.jsonl");
        let registry = SimulatedRegistry::start_with_tls(
            SimulatedRegistryOptions {
                subscribers: demo_subscribers(),
                sms_file: sms_file.clone(),
                echo_sms: false,
            },
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            Some(backends.registry),
        )
        .await
        .unwrap();
        World {
            dir,
            pki,
            other_pki,
            simulator,
            registry,
            sms_file,
        }
    }

    /// A development gateway config (plain-text listener: the point is the outbound side) with
    /// its own data directory, trusting the PKI's CA and presenting the gateway's client
    /// certificate; every app at its `https://localhost` endpoint but [`BY_IP`].
    fn config(&self, name: &str) -> Config {
        let data_dir = self.dir.path().join(name);
        std::fs::create_dir_all(&data_dir).unwrap();
        let apps = self
            .simulator
            .apps()
            .into_iter()
            .map(|a| {
                let by_ip = a.id == BY_IP;
                let port = self.simulator.addr(&a.id).unwrap().port();
                AppConfig {
                    category: a.category,
                    customer_service: a.customer_service,
                    tls_server_name: by_ip.then(|| "localhost".to_owned()),
                    ..AppConfig::new(
                        a.id,
                        a.name,
                        if by_ip {
                            format!("https://127.0.0.1:{port}")
                        } else {
                            a.endpoint
                        },
                    )
                }
            })
            .collect();
        let mut config = demo_config(
            ([127, 0, 0, 1], 0).into(),
            &data_dir,
            &self.registry.endpoint(),
            apps,
        );
        config.outbound_tls = BackendTls::from_pki(&self.pki).ok().map(|b| b.outbound);
        config
    }

    fn codes_sent(&self) -> Vec<String> {
        read_sms_file(&self.sms_file)
            .unwrap()
            .into_iter()
            .filter(|m| m.phone_number == PHONE)
            .filter_map(|m| {
                let (_, rest) = m.text.split_once("code is ")?;
                Some(rest.chars().take_while(char::is_ascii_digit).collect())
            })
            .collect()
    }

    /// Verifies the demo subscriber through `client`: a session token.
    async fn session(&self, client: &mut AccountGatewayClient<Channel>) -> String {
        let before = self.codes_sent().len();
        let verification_id = client
            .start_verification(StartVerificationRequest {
                phone_number: PHONE.into(),
                id_last_six: ID_LAST_SIX.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .verification_id;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let code = loop {
            if let Some(code) = self.codes_sent().get(before) {
                break code.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no SMS code arrived"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
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

    async fn stop(self) {
        self.registry.shutdown().await;
        self.simulator.shutdown().await;
    }
}

async fn start_gateway(config: Config) -> (RunningGateway, AccountGatewayClient<Channel>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = server::start(config, Clock::system(), listener)
        .await
        .unwrap();
    let client = AccountGatewayClient::connect(gateway.endpoint())
        .await
        .unwrap();
    (gateway, client)
}

async fn list(
    client: &mut AccountGatewayClient<Channel>,
    session_token: &str,
) -> ListLinkedAccountsResponse {
    client
        .list_linked_accounts(ListLinkedAccountsRequest {
            session_token: session_token.to_owned(),
            bypass_cache: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// Each app's state.
fn states(answer: &ListLinkedAccountsResponse) -> BTreeMap<String, State> {
    answer
        .app_results
        .iter()
        .map(|r| (r.app_id.clone(), r.state()))
        .collect()
}

/// Every app in `State::Answered`, but the ones listed.
fn expected(world: &World, except: &[(&str, State)]) -> BTreeMap<String, State> {
    world
        .simulator
        .apps()
        .into_iter()
        .map(|a| {
            let state = except
                .iter()
                .find(|(id, _)| *id == a.id)
                .map_or(State::Answered, |(_, state)| *state);
            (a.id, state)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_presents_its_certificate_and_verifies_adapters_and_the_registry() {
    let world = World::start().await;
    for app in world.simulator.apps() {
        assert!(
            app.endpoint.starts_with("https://localhost:"),
            "{}",
            app.endpoint
        );
    }
    assert!(
        world.registry.endpoint().starts_with("https://localhost:"),
        "{}",
        world.registry.endpoint()
    );

    // 1. Configured right: the registry verifies the number, and every app answers over mTLS,
    //    BY_IP included (its endpoint's host is an IP, its certificate is checked for "localhost").
    let config = world.config("good");
    let (good, mut client) = start_gateway(config.clone()).await;
    let token = world.session(&mut client).await;
    let answer = list(&mut client, &token).await;
    assert_eq!(states(&answer), expected(&world, &[]), "{answer:?}");
    assert!(answer.complete);
    for result in &answer.app_results {
        assert_eq!(
            result.account_count as usize,
            accounts_for(world.simulator.seed(), &result.app_id, PHONE).len(),
            "{result:?}"
        );
        assert_eq!(world.simulator.stats(&result.app_id).find_calls, 1);
    }
    good.stop().await.unwrap();

    // 2. Without its client certificate (the same CA, so it still trusts the servers): the
    //    registry refuses the connection, so verification is unavailable...
    world.simulator.reset_stats();
    let verify_calls = world.registry.verify_calls();
    let mut no_cert = config.clone();
    no_cert.store.url = format!("sqlite://{}", world.dir.path().join("no-cert.db").display());
    no_cert.outbound_tls = Some(OutboundTlsConfig {
        ca: world.pki.ca.cert.clone(),
        cert: None,
        key: None,
    });
    let (anonymous, mut client) = start_gateway(no_cert).await;
    let err = client
        .start_verification(StartVerificationRequest {
            phone_number: PHONE.into(),
            id_last_six: ID_LAST_SIX.into(),
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::Unavailable, "SERVICE_UNAVAILABLE");
    assert_eq!(
        world.registry.verify_calls(),
        verify_calls,
        "the registry must not have served a gateway without a client certificate"
    );
    // ...and with a session from the first gateway (same signing secret: a replica), no app
    // serves it: none answers, none is counted as "0 accounts", none even saw the call.
    //
    // Under TLS 1.3 the client's side of the handshake completes before the server checks the
    // (missing) certificate; the server's `certificate_required` alert then ends the connection
    // under the first call, surfacing as `Unknown` or `Cancelled` with a transport-error source.
    // The fan-out reports that as what it is: the app was never reached.
    let answer = list(&mut client, &token).await;
    assert_eq!(answer.app_results.len(), APPS, "{answer:?}");
    for result in &answer.app_results {
        assert_eq!(result.state(), State::Unavailable, "{result:?}");
        // Refused, not waited out: well inside the app's own timeout.
        assert!(
            u128::from(result.latency_ms) < config.app_defaults.timeout.as_millis(),
            "not a refusal but a timeout: {result:?}"
        );
    }
    assert_eq!(answer.total_accounts, 0);
    assert!(!answer.complete);
    assert_eq!(world.simulator.total_find_calls(), 0);
    anonymous.stop().await.unwrap();

    // 3. One app given another CA to trust, another a server name its certificate does not carry
    //    (its endpoint's host, 127.0.0.1, would have matched): just those two are unreachable.
    //    This gateway dials the registry by IP too, expecting "localhost", and verifies itself.
    world.simulator.reset_stats();
    let mut misconfigured = config.clone();
    misconfigured.store.url = format!(
        "sqlite://{}",
        world.dir.path().join("misconfigured.db").display()
    );
    misconfigured.registry.endpoint = format!("https://{}", world.registry.addr());
    misconfigured.registry.tls_server_name = Some("localhost".to_owned());
    for app in &mut misconfigured.apps {
        if app.id == WRONG_CA {
            app.tls_ca = Some(world.other_pki.ca.cert.clone());
        }
        if app.id == WRONG_NAME {
            let port = world.simulator.addr(WRONG_NAME).unwrap().port();
            app.endpoint = format!("https://127.0.0.1:{port}");
            app.tls_server_name = Some("elsewhere.example".to_owned());
        }
    }
    let (partial, mut client) = start_gateway(misconfigured).await;
    let token = world.session(&mut client).await;
    let answer = list(&mut client, &token).await;
    assert_eq!(
        states(&answer),
        expected(
            &world,
            &[
                (WRONG_CA, State::Unavailable),
                (WRONG_NAME, State::Unavailable)
            ]
        ),
        "{answer:?}"
    );
    assert!(!answer.complete);
    assert_eq!(world.simulator.stats(WRONG_CA).find_calls, 0);
    assert_eq!(world.simulator.stats(WRONG_NAME).find_calls, 0);
    assert_eq!(world.simulator.total_find_calls(), (APPS - 2) as u64);
    partial.stop().await.unwrap();

    world.stop().await;
}

/// The gateway's client certificate is read again when its files change: the apps' entries are
/// rebuilt and the registry reconnects, so a renewed certificate is presented without a
/// restart. Here the first one installed is another CA's (refused like an expired one); once
/// the right one is written over it, verification and every app answer. Before, the files were
/// read at start only and the gateway needed a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_client_certificate_is_presented_without_a_restart() {
    let world = World::start().await;
    let live = world.dir.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    let (cert, key) = (
        live.join("gateway-client.pem"),
        live.join("gateway-client.key"),
    );
    let install = |pki: &DevPki| {
        std::fs::copy(&pki.gateway_client.cert, &cert).unwrap();
        std::fs::copy(&pki.gateway_client.key, &key).unwrap();
    };
    install(&world.other_pki);
    let mut config = world.config("renewal");
    let outbound = config.outbound_tls.as_mut().unwrap();
    outbound.cert = Some(cert.clone());
    outbound.key = Some(key.clone());
    let path = world.dir.path().join("renewal.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    let mut without_certificate = config.clone();
    let (gateway, mut client) = start_gateway(config).await;
    let watcher = unbind_gateway::reload::Reloader::new(
        std::sync::Arc::clone(&gateway.gateway),
        path.clone(),
        |_| {},
    )
    .spawn(std::time::Duration::from_millis(100));
    let start = StartVerificationRequest {
        phone_number: PHONE.into(),
        id_last_six: ID_LAST_SIX.into(),
    };
    let err = client.start_verification(start.clone()).await.unwrap_err();
    assert_error(&err, Code::Unavailable, "SERVICE_UNAVAILABLE");
    let metrics = gateway.gateway.metrics.encode();
    let expiry = "unbind_tls_certificate_expiry_seconds{listener=\"outbound\"}";
    assert!(metrics.contains(expiry), "{metrics}");

    install(&world.pki);
    let mut renewed = false;
    for _ in 0..100 {
        if client.start_verification(start.clone()).await.is_ok() {
            renewed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        renewed,
        "the registry did not get the renewed certificate within 10 s"
    );
    let token = world.session(&mut client).await;
    let answer = list(&mut client, &token).await;
    assert_eq!(states(&answer), expected(&world, &[]), "{answer:?}");

    // The client certificate taken out of the config: its expiry is no longer reported, where
    // the last value stayed until a restart (and an alert on it would fire for a certificate
    // nothing presents).
    let outbound = without_certificate.outbound_tls.as_mut().unwrap();
    (outbound.cert, outbound.key) = (None, None);
    std::fs::write(&path, toml::to_string(&without_certificate).unwrap()).unwrap();
    let mut gone = false;
    for _ in 0..100 {
        if !gateway.gateway.metrics.encode().contains(expiry) {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        gone,
        "the outbound certificate's expiry was still reported after 10 s"
    );
    watcher.abort();
    gateway.stop().await.unwrap();
    world.stop().await;
}
