//! The CAMARA Number Recycling API (0.3.0, release r3.3) against the real binary: every scenario
//! of `number-recycling.feature` (camaraproject/NumberRecycling), and the two r3.3 added (a
//! missing required property, an invalid `x-correlator`), each a test of its own named by the
//! scenario's tag; then what the feature file leaves to implementers (three-legged tokens, the
//! tenant behind a token, rate limits, a rotated key set, the gRPC and HTTP answers side by side,
//! privacy of the log).
//!
//! One production-shaped world serves them all (`harness = false`, so it starts once and is torn
//! down at the end): `unbind-gateway certs`, `unbind-gateway registry` over mTLS, and
//! `unbind-gateway serve` with TLS, mTLS tenants, `[http]` and `[http.auth]`; the tokens are
//! minted here from test keys whose JWKS the gateway reads. Run one scenario with
//! `cargo test --test camara -- <part of its name>`.

#[path = "common/https.rs"]
mod https;

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    process::{Child, Command, ExitCode, Stdio},
    time::Duration,
};

use futures::FutureExt;
use https::{Client, Issuer, Reply, now_secs};
use serde_json::{Value, json};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use unbind_gateway::proto::{
    CheckNumberRecycledRequest, RecycledNumber, SubmitRecycledNumbersRequest,
    carrier_push_client::CarrierPushClient, number_status_client::NumberStatusClient,
};

const BIN: &str = env!("CARGO_BIN_EXE_unbind-gateway");
const PATH: &str = "/number-recycling/v0.3/check";
const ISSUER: &str = "https://auth.carrier.test";
const AUDIENCE: &str = "unbind-gateway";
const CORRELATOR: &str = "b4333c46-49c0-4f62-80d7-f0ef930f1c46";

/// Re-issued: user A held it until 2025-03-01 (cancelled), user B since 2025-04-01.
const RECYCLED: &str = "+8613700000001";
/// Never pushed: the same holder throughout the history.
const KEPT: &str = "+8613700000002";
/// A Beijing landline: a valid number, not a mobile one.
const LANDLINE: &str = "+861065529988";
/// Another country's mobile number: outside the carrier's ranges.
const FOREIGN: &str = "+447911123456";

type Scenario = for<'a> fn(&'a World) -> Pin<Box<dyn Future<Output = ()> + 'a>>;

struct World {
    dir: tempfile::TempDir,
    http: Client,
    grpc: SocketAddr,
    issuer: Issuer,
    /// A key the gateway does not know until the key set is rotated.
    next_issuer: Issuer,
    jwks: PathBuf,
    log: PathBuf,
    admin: SocketAddr,
    config: PathBuf,
    children: Reaper,
}

/// The child processes, killed when dropped (a failed start-up leaves none behind).
struct Reaper(Vec<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
}

async fn wait_for_port(addr: SocketAddr, what: &str, log: &Path) {
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{what} did not listen on {addr}:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

impl World {
    async fn start() -> World {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let certs = d.join("certs");
        let status = Command::new(BIN)
            .args(["certs", "--out"])
            .arg(&certs)
            .args([
                "--tenants",
                "carrier-test:carrier,app-test:app,portal-test:portal",
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "unbind-gateway certs");
        std::fs::write(
            d.join("subscribers.toml"),
            "[[subscribers]]\nphone_number = \"+8613800138000\"\nid_last_six = \"12345X\"\n\
             holder_since = \"2024-03-01\"\n",
        )
        .unwrap();
        let registry = free_addr();
        let registry_log = d.join("registry.log");
        let mut children = Reaper(vec![
            Command::new(BIN)
                .arg("registry")
                .arg("--subscribers")
                .arg(d.join("subscribers.toml"))
                .arg("--sms-file")
                .arg(d.join("sms.jsonl"))
                .arg("--tls-cert")
                .arg(certs.join("registry.pem"))
                .arg("--tls-key")
                .arg(certs.join("registry.key"))
                .arg("--tls-client-ca")
                .arg(certs.join("ca.pem"))
                .arg("--listen")
                .arg(registry.to_string())
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&registry_log).unwrap())
                .spawn()
                .unwrap(),
        ]);
        wait_for_port(registry, "the registry", &registry_log).await;
        let issuer = Issuer::new("key-2026-11");
        let next_issuer = Issuer::new("key-2026-12");
        let jwks = d.join("jwks.json");
        std::fs::write(&jwks, Issuer::jwks(&[&issuer])).unwrap();
        let (grpc, http, admin) = (free_addr(), free_addr(), free_addr());
        let c = |name: &str| certs.join(name).display().to_string();
        let config = format!(
            r#"
listen = "{grpc}"
signing_secret = "camara-scenarios-secret-of-at-least-32-chars"

[tls]
cert = "{gateway_pem}"
key = "{gateway_key}"
client_ca = "{ca}"

[outbound_tls]
ca = "{ca}"
cert = "{client_pem}"
key = "{client_key}"

[[tenants]]
name = "carrier-test"
role = "carrier"
requests_per_second = 1000
burst = 1000

[[tenants]]
name = "app-test"
role = "app"
requests_per_second = 1000
burst = 1000

[[tenants]]
name = "portal-test"
role = "portal"
requests_per_second = 1000
burst = 1000

[[tenants]]
name = "app-slow"
role = "app"
requests_per_second = 0.01
burst = 2

[store]
url = "sqlite://{db}"

[registry]
endpoint = "https://localhost:{registry_port}"

[number_status]
history_starts = "2024-01-01"
number_ranges = ["+86"]
time_zone = "Asia/Shanghai"

[reload]
watch_interval = "100ms"

[admin]
listen = "{admin}"

[http]
listen = "{http}"

[http.auth]
jwks_file = "{jwks}"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
"#,
            gateway_pem = c("gateway.pem"),
            gateway_key = c("gateway.key"),
            ca = c("ca.pem"),
            client_pem = c("gateway-client.pem"),
            client_key = c("gateway-client.key"),
            db = d.join("unbind.db").display(),
            registry_port = registry.port(),
            jwks = jwks.display(),
        );
        std::fs::write(d.join("gateway.toml"), config).unwrap();
        let check = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(d.join("gateway.toml"))
            .arg("--check-config")
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&check.stdout);
        assert!(
            check.status.success() && printed.contains("http.auth.jwks_file"),
            "--check-config: {printed}{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let log = d.join("gateway.log");
        children.0.push(
            Command::new(BIN)
                .arg("serve")
                .arg("--config")
                .arg(d.join("gateway.toml"))
                .env_remove("DATABASE_URL")
                .env("NO_COLOR", "1")
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        wait_for_port(http, "the gateway's HTTP API", &log).await;
        wait_for_port(grpc, "the gateway's gRPC API", &log).await;
        let world = World {
            http: Client::tls(http, &certs.join("ca.pem")),
            grpc,
            issuer,
            next_issuer,
            jwks,
            log,
            admin,
            config: d.join("gateway.toml"),
            children,
            dir,
        };
        world.push().await;
        world
    }

    /// A gRPC channel as tenant `name` (its client certificate).
    async fn channel(&self, tenant: &str) -> Channel {
        let certs = self.dir.path().join("certs");
        let read = |name: String| std::fs::read(certs.join(name)).unwrap();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.pem".into())))
            .identity(Identity::from_pem(
                read(format!("tenant-{tenant}.pem")),
                read(format!("tenant-{tenant}.key")),
            ))
            .domain_name("localhost");
        Channel::from_shared(format!("https://localhost:{}", self.grpc.port()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// The carrier's push: `RECYCLED` cancelled on 2025-03-01 and re-issued on 2025-04-01, each
    /// at 10:00 in the carrier's time zone.
    async fn push(&self) {
        let mut push = CarrierPushClient::new(self.channel("carrier-test").await);
        let at = |day: &str| Some(timestamp(day, "10:00:00+08:00"));
        push.submit_recycled_numbers(futures::stream::iter([SubmitRecycledNumbersRequest {
            numbers: vec![RecycledNumber {
                phone_number: RECYCLED.into(),
                cancelled_at: at("2025-03-01"),
                reissued_at: at("2025-04-01"),
            }],
            ..Default::default()
        }]))
        .await
        .expect("the push is taken");
    }

    /// A two-legged token for `client` with `scope`, valid for an hour.
    fn token(&self, client: &str, scope: &str) -> String {
        self.issuer.sign(&json!({
            "iss": ISSUER, "aud": AUDIENCE, "client_id": client, "sub": client,
            "scope": scope, "iat": now_secs(), "exp": now_secs() + 3600,
        }))
    }

    fn app_token(&self) -> String {
        self.token("app-test", "openid number-recycling:check")
    }

    /// A three-legged token: its subject is `number`.
    fn token_for_number(&self, number: &str) -> String {
        self.issuer.sign(&json!({
            "iss": ISSUER, "aud": AUDIENCE, "azp": "app-test", "sub": format!("tel:{number}"),
            "scope": "number-recycling:check", "exp": now_secs() + 3600,
        }))
    }

    /// `POST` the check with `token` (none if empty), the scenario's correlator, and `body`.
    async fn check_with(&self, token: &str, body: &str) -> Reply {
        let bearer = format!("Bearer {token}");
        let mut headers = vec![("x-correlator", CORRELATOR)];
        if !token.is_empty() {
            headers.push(("authorization", bearer.as_str()));
        }
        self.http.post_json(PATH, &headers, body).await
    }

    /// The check as the app tenant, two-legged.
    async fn check(&self, body: Value) -> Reply {
        self.check_with(&self.app_token(), &body.to_string()).await
    }

    fn stop(self) {
        drop(self.children);
    }
}

/// `day` at `time` (with its offset), as a protobuf timestamp.
fn timestamp(day: &str, time: &str) -> prost_types::Timestamp {
    let t = chrono::DateTime::parse_from_rfc3339(&format!("{day}T{time}")).unwrap();
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

/// The feature file's checks of every answer: the status, the CAMARA body with the same status
/// and the code, a message, and the correlator echoed.
#[track_caller]
fn assert_error(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    let body = reply.json();
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    let message = body["message"].as_str().expect("a message");
    assert!(!message.is_empty() && message.len() <= 512, "{message}");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("x-correlator"), Some(CORRELATOR), "{reply:?}");
}

#[track_caller]
fn assert_recycled(reply: &Reply, expected: bool) {
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("x-correlator"), Some(CORRELATOR));
    assert_eq!(reply.json(), json!({ "phoneNumberRecycled": expected }));
}

fn scenarios() -> Vec<(&'static str, Scenario)> {
    vec![
        (
            "checkNumberRecycling_01_success_request_response_when_phoneNumberRecycled_is_false",
            |w| {
                Box::pin(async move {
                    // The same user since before the date: a date on which they held the
                    // contract, by a two-legged and by a three-legged token.
                    let body = json!({"phoneNumber": KEPT, "specifiedDate": "2024-06-01"});
                    assert_recycled(&w.check(body).await, false);
                    let reply = w
                        .check_with(
                            &w.token_for_number(KEPT),
                            r#"{"specifiedDate":"2024-06-01"}"#,
                        )
                        .await;
                    assert_recycled(&reply, false);
                    // User B, asked about a day of their own contract.
                    let body = json!({"phoneNumber": RECYCLED, "specifiedDate": "2025-05-01"});
                    assert_recycled(&w.check(body).await, false);
                })
            },
        ),
        (
            "checkNumberRecycling_02_success_request_response_when_phoneNumberRecycled_is_true",
            |w| {
                Box::pin(async move {
                    // A date of user A's contract.
                    let body = json!({"phoneNumber": RECYCLED, "specifiedDate": "2024-12-22"});
                    assert_recycled(&w.check(body).await, true);
                    // A date in the gap between cancellation and re-issue.
                    let body = json!({"phoneNumber": RECYCLED, "specifiedDate": "2025-03-15"});
                    assert_recycled(&w.check(body).await, true);
                    // The day of the re-issue itself: it changed hands that day.
                    let body = json!({"phoneNumber": RECYCLED, "specifiedDate": "2025-04-01"});
                    assert_recycled(&w.check(body).await, true);
                    let reply = w
                        .check_with(
                            &w.token_for_number(RECYCLED),
                            r#"{"specifiedDate":"2024-12-22"}"#,
                        )
                        .await;
                    assert_recycled(&reply, true);
                })
            },
        ),
        ("checkNumberRecycling_400.01_invalid_specifiedDate", |w| {
            Box::pin(async move {
                for date in [
                    "2024-13-01",
                    "2023-02-29",
                    "20240601",
                    "2024-6-1",
                    "2024-06-01T00:00:00Z",
                    "01/06/2024",
                    "",
                ] {
                    let body = json!({"phoneNumber": KEPT, "specifiedDate": date});
                    assert_error(&w.check(body).await, 400, "INVALID_ARGUMENT");
                }
            })
        }),
        ("checkNumberRecycling_400.2_no_request_body", |w| {
            Box::pin(async move {
                let bearer = format!("Bearer {}", w.app_token());
                let reply = w
                    .http
                    .request(
                        "POST",
                        PATH,
                        &[
                            ("content-type", "application/json"),
                            ("authorization", &bearer),
                            ("x-correlator", CORRELATOR),
                        ],
                        None,
                    )
                    .await;
                assert_error(&reply, 400, "INVALID_ARGUMENT");
            })
        }),
        ("checkNumberRecycling_400.3_empty_request_body", |w| {
            Box::pin(async move {
                assert_error(&w.check(json!({})).await, 400, "INVALID_ARGUMENT");
            })
        }),
        ("checkNumberRecycling_400.4_out_of_range", |w| {
            Box::pin(async move {
                let tomorrow = (chrono::Utc::now() + chrono::Duration::days(2))
                    .format("%Y-%m-%d")
                    .to_string();
                let body = json!({"phoneNumber": KEPT, "specifiedDate": tomorrow});
                assert_error(&w.check(body).await, 400, "OUT_OF_RANGE");
                // Before the carrier's pushes are complete: the gateway cannot know.
                let body = json!({"phoneNumber": KEPT, "specifiedDate": "2023-12-31"});
                let reply = w.check(body).await;
                assert_error(&reply, 400, "OUT_OF_RANGE");
                assert!(
                    reply.json()["message"]
                        .as_str()
                        .unwrap()
                        .contains("2024-01-01")
                );
            })
        }),
        ("checkNumberRecycling_400.5_invalid_argument", |w| {
            Box::pin(async move {
                let token = w.app_token();
                for body in [
                    r#"{"phoneNumber":"+8613700000002","specifiedDate":"2024-06-01","x":1}"#,
                    r#"{"phoneNumber":"+8613700000002","specifiedDate":20240601}"#,
                    r#"{"phoneNumber":8613700000002,"specifiedDate":"2024-06-01"}"#,
                    r#"["+8613700000002","2024-06-01"]"#,
                    r#"{"phoneNumber":"+8613700000002","specifiedDate":"2024-06-01""#,
                    "specifiedDate=2024-06-01",
                ] {
                    let reply = w.check_with(&token, body).await;
                    assert_error(&reply, 400, "INVALID_ARGUMENT");
                    assert!(!reply.body.contains("8613700000002"), "{}", reply.body);
                }
                // Larger than any request of this API.
                let padded = format!(
                    r#"{{"phoneNumber":"+8613700000002","specifiedDate":"2024-06-01"{}}}"#,
                    " ".repeat(20_000)
                );
                assert_error(
                    &w.check_with(&token, &padded).await,
                    400,
                    "INVALID_ARGUMENT",
                );
            })
        }),
        (
            "checkNumberRecycling_400.6_missing_required_property (added in r3.3)",
            |w| {
                Box::pin(async move {
                    let body = json!({"phoneNumber": KEPT});
                    let reply = w.check(body).await;
                    assert_error(&reply, 400, "INVALID_ARGUMENT");
                    assert!(
                        reply.json()["message"]
                            .as_str()
                            .unwrap()
                            .contains("specifiedDate")
                    );
                })
            },
        ),
        (
            "checkNumberRecycling_400.7_invalid_x-correlator (added in r3.3)",
            |w| {
                Box::pin(async move {
                    let bearer = format!("Bearer {}", w.app_token());
                    let long = "a".repeat(257);
                    for bad in ["has spaces", "quote\"d", "percent%20", long.as_str()] {
                        let reply = w
                            .http
                            .post_json(
                                PATH,
                                &[("authorization", &bearer), ("x-correlator", bad)],
                                r#"{"phoneNumber":"+8613700000002","specifiedDate":"2024-06-01"}"#,
                            )
                            .await;
                        assert_eq!(reply.status, 400, "{bad}: {reply:?}");
                        assert_eq!(reply.json()["code"], "INVALID_ARGUMENT");
                        // Never echoed: it is not a correlator.
                        assert!(reply.header("x-correlator").is_none());
                    }
                })
            },
        ),
        ("checkNumberRecycling_401.1_expired_access_token", |w| {
            Box::pin(async move {
                let token = w.issuer.sign(&json!({
                    "iss": ISSUER, "aud": AUDIENCE, "client_id": "app-test",
                    "scope": "number-recycling:check", "exp": now_secs() - 600,
                }));
                let reply = w
                    .check_with(
                        &token,
                        r#"{"phoneNumber":"+8613700000002","specifiedDate":"2024-06-01"}"#,
                    )
                    .await;
                assert_error(&reply, 401, "UNAUTHENTICATED");
                assert!(
                    reply.json()["message"]
                        .as_str()
                        .unwrap()
                        .contains("expired")
                );
                assert!(
                    reply
                        .header("www-authenticate")
                        .unwrap()
                        .starts_with("Bearer")
                );
            })
        }),
        ("checkNumberRecycling_401.2_invalid_access_token", |w| {
            Box::pin(async move {
                let body = r#"{"phoneNumber":"+8613700000002","specifiedDate":"2024-06-01"}"#;
                let claims = |iss: &str, aud: &str| {
                    json!({
                        "iss": iss, "aud": aud, "client_id": "app-test",
                        "scope": "number-recycling:check", "exp": now_secs() + 600,
                    })
                };
                let good = w.app_token();
                // One character of the signature changed (not the last: its low bits are
                // padding).
                let mut tampered = good.clone().into_bytes();
                let at = tampered.len() - 10;
                tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
                let tampered = String::from_utf8(tampered).unwrap();
                let invalid = [
                    // Signed by a key the gateway does not know.
                    w.next_issuer.sign(&claims(ISSUER, AUDIENCE)),
                    w.issuer
                        .sign(&claims("https://someone-else.test", AUDIENCE)),
                    w.issuer.sign(&claims(ISSUER, "another-api")),
                    w.issuer.sign(&json!({
                        "iss": ISSUER, "aud": AUDIENCE, "client_id": "app-test",
                        "scope": "number-recycling:check",
                    })),
                    // Not yet valid.
                    w.issuer.sign(&json!({
                        "iss": ISSUER, "aud": AUDIENCE, "client_id": "app-test",
                        "scope": "number-recycling:check", "nbf": now_secs() + 600,
                        "exp": now_secs() + 1200,
                    })),
                    tampered,
                    // `alg: none`.
                    format!(
                        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
                        good.split('.').nth(1).unwrap()
                    ),
                    "not-a-jwt".to_owned(),
                ];
                for token in &invalid {
                    let reply = w.check_with(token, body).await;
                    assert_error(&reply, 401, "UNAUTHENTICATED");
                }
                // Not a bearer token at all.
                let reply = w
                    .http
                    .post_json(
                        PATH,
                        &[
                            ("authorization", "Basic YXBwOnNlY3JldA=="),
                            ("x-correlator", CORRELATOR),
                        ],
                        body,
                    )
                    .await;
                assert_error(&reply, 401, "UNAUTHENTICATED");
            })
        }),
        ("checkNumberRecycling_401.3_no_header_authorization", |w| {
            Box::pin(async move {
                let reply = w
                    .check_with(
                        "",
                        r#"{"phoneNumber":"+8613700000002","specifiedDate":"2024-06-01"}"#,
                    )
                    .await;
                assert_error(&reply, 401, "UNAUTHENTICATED");
                assert_eq!(
                    reply.header("www-authenticate"),
                    Some("Bearer realm=\"unbind-gateway\"")
                );
            })
        }),
        (
            "checkNumberRecycling_403.1_invalid_token_permissions",
            |w| {
                Box::pin(async move {
                    let body = r#"{"phoneNumber":"+8613700000002","specifiedDate":"2024-06-01"}"#;
                    let reply = w
                        .check_with(&w.token("app-test", "openid profile"), body)
                        .await;
                    assert_error(&reply, 403, "PERMISSION_DENIED");
                    assert!(
                        reply
                            .header("www-authenticate")
                            .unwrap()
                            .contains("insufficient_scope")
                    );
                    // The scope, but for a client whose role may not check numbers (a portal), or
                    // one that is no tenant of this gateway.
                    for client in ["portal-test", "stranger"] {
                        let token = w.token(client, "number-recycling:check");
                        assert_error(&w.check_with(&token, body).await, 403, "PERMISSION_DENIED");
                    }
                })
            },
        ),
        (
            "checkNumberRecycling_C02.01_phone_number_not_schema_compliant",
            |w| {
                Box::pin(async move {
                    for number in ["8613700000002", "+86 137 0000 0002", "+0123456789", "+1234"] {
                        let body = json!({"phoneNumber": number, "specifiedDate": "2024-06-01"});
                        assert_error(&w.check(body).await, 400, "INVALID_ARGUMENT");
                    }
                })
            },
        ),
        ("checkNumberRecycling_C02.02_phone_number_not_found", |w| {
            Box::pin(async move {
                // Another operator's (another country's) number, and one that fits the pattern
                // but is no phone number.
                for number in [FOREIGN, "+8612345"] {
                    let body = json!({"phoneNumber": number, "specifiedDate": "2024-06-01"});
                    assert_error(&w.check(body).await, 404, "IDENTIFIER_NOT_FOUND");
                }
            })
        }),
        (
            "checkNumberRecycling_C02.03_unnecessary_phone_number",
            |w| {
                Box::pin(async move {
                    // Even when the two are the same number.
                    let reply = w
                        .check_with(
                            &w.token_for_number(KEPT),
                            &json!({"phoneNumber": KEPT, "specifiedDate": "2024-06-01"})
                                .to_string(),
                        )
                        .await;
                    assert_error(&reply, 422, "UNNECESSARY_IDENTIFIER");
                })
            },
        ),
        ("checkNumberRecycling_C02.04_missing_phone_number", |w| {
            Box::pin(async move {
                let body = json!({"specifiedDate": "2024-06-01"});
                assert_error(&w.check(body).await, 422, "MISSING_IDENTIFIER");
            })
        }),
        (
            "checkNumberRecycling_C02.05_phone_number_not_supported",
            |w| {
                Box::pin(async move {
                    let body = json!({"phoneNumber": LANDLINE, "specifiedDate": "2024-06-01"});
                    assert_error(&w.check(body).await, 422, "SERVICE_NOT_APPLICABLE");
                    let reply = w
                        .check_with(
                            &w.token_for_number(LANDLINE),
                            r#"{"specifiedDate":"2024-06-01"}"#,
                        )
                        .await;
                    assert_error(&reply, 422, "SERVICE_NOT_APPLICABLE");
                })
            },
        ),
        ("other_paths_and_methods_answer_in_camaras_shape", |w| {
            Box::pin(async move {
                let reply = w.http.request("GET", PATH, &[], None).await;
                assert_eq!(reply.status, 405);
                assert_eq!(reply.header("allow"), Some("POST"));
                let reply = w
                    .http
                    .post_json("/number-recycling/v0.2/check", &[], "{}")
                    .await;
                assert_eq!(reply.status, 404);
                assert_eq!(reply.json()["code"], "NOT_FOUND");
            })
        }),
        ("a_tenants_rate_limit_holds_over_http", |w| {
            Box::pin(async move {
                let token = w.token("app-slow", "number-recycling:check");
                let body = r#"{"phoneNumber":"+8613700000002","specifiedDate":"2024-06-01"}"#;
                let mut answers = Vec::new();
                for _ in 0..3 {
                    answers.push(w.check_with(&token, body).await);
                }
                assert_recycled(&answers[0], false);
                assert_recycled(&answers[1], false);
                assert_error(&answers[2], 429, "TOO_MANY_REQUESTS");
                let after: u64 = answers[2].header("retry-after").unwrap().parse().unwrap();
                assert!(after >= 1, "{after}");
            })
        }),
        ("a_rotated_key_set_is_picked_up_without_a_restart", |w| {
            Box::pin(async move {
                let body = r#"{"phoneNumber":"+8613700000002","specifiedDate":"2024-06-01"}"#;
                let claims = json!({
                    "iss": ISSUER, "aud": AUDIENCE, "client_id": "app-test",
                    "scope": "number-recycling:check", "exp": now_secs() + 600,
                });
                let new_token = w.next_issuer.sign(&claims);
                // A file that is no key set is refused, and the keys in use are kept.
                std::fs::write(
                    &w.jwks,
                    "{\"keys\": [{\"kty\": \"oct\", \"k\": \"c2VjcmV0\"}]}",
                )
                .unwrap();
                wait_for_log(w, "http.auth.jwks_file rejected").await;
                assert_recycled(&w.check_with(&w.app_token(), body).await, false);
                // The authorization server rotates: the new key is added, then the old removed.
                std::fs::write(&w.jwks, Issuer::jwks(&[&w.issuer, &w.next_issuer])).unwrap();
                let mut accepted = false;
                for _ in 0..200 {
                    if w.check_with(&new_token, body).await.status == 200 {
                        accepted = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                assert!(accepted, "a token of the added key is accepted");
                std::fs::write(&w.jwks, Issuer::jwks(&[&w.next_issuer])).unwrap();
                let mut refused = false;
                for _ in 0..200 {
                    if w.check_with(&w.app_token(), body).await.status == 401 {
                        refused = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                assert!(refused, "a token of the removed key is refused");
                assert_recycled(&w.check_with(&new_token, body).await, false);
                std::fs::write(&w.jwks, Issuer::jwks(&[&w.issuer, &w.next_issuer])).unwrap();
                for _ in 0..200 {
                    if w.check_with(&w.app_token(), body).await.status == 200 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                panic!("the first key is not accepted again");
            })
        }),
        (
            "the_audit_trail_records_http_checks_under_the_tokens_tenant",
            |w| {
                Box::pin(async move {
                    let body = json!({"phoneNumber": RECYCLED, "specifiedDate": "2024-12-22"});
                    assert_recycled(&w.check(body).await, true);
                    // The audit writer stores in batches: look until the record is there.
                    for _ in 0..100 {
                        let out = Command::new(BIN)
                            .args(["audit", "--config"])
                            .arg(&w.config)
                            .args(["--number", RECYCLED, "--tenant", "app-test"])
                            .env_remove("DATABASE_URL")
                            .output()
                            .unwrap();
                        let text = String::from_utf8_lossy(&out.stdout);
                        if text.lines().any(|l| {
                            l.contains("check_recycled")
                                && l.contains("recycled=true")
                                && l.contains(CORRELATOR)
                        }) {
                            assert!(!text.contains(RECYCLED), "{text}");
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    panic!("no audit record of the HTTP check");
                })
            },
        ),
        ("the_answers_are_counted_by_code_in_the_metrics", |w| {
            Box::pin(async move {
                let reply = https::Client::plain(w.admin)
                    .request("GET", "/metrics", &[], None)
                    .await;
                assert_eq!(reply.status, 200);
                let count = |code: &str| {
                    let series = format!("unbind_http_requests_total{{code=\"{code}\"}} ");
                    reply
                        .body
                        .lines()
                        .find_map(|l| l.strip_prefix(series.as_str()))
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .unwrap_or(0.0)
                };
                for code in [
                    "OK",
                    "UNAUTHENTICATED",
                    "INVALID_ARGUMENT",
                    "MISSING_IDENTIFIER",
                ] {
                    assert!(count(code) >= 1.0, "{code}: {}", reply.body);
                }
            })
        }),
        (
            "grpc_and_http_answer_alike_on_the_same_pushes_and_dates",
            |w| {
                Box::pin(async move {
                    let mut grpc = NumberStatusClient::new(w.channel("app-test").await);
                    let future = (chrono::Utc::now() + chrono::Duration::days(3))
                        .format("%Y-%m-%d")
                        .to_string();
                    let dates = [
                        "2023-06-01",
                        "2024-01-01",
                        "2024-12-22",
                        "2025-02-28",
                        "2025-03-15",
                        "2025-03-31",
                        "2025-04-01",
                        "2025-04-02",
                        "2025-06-01",
                        future.as_str(),
                    ];
                    let mut compared = 0;
                    for number in [RECYCLED, KEPT, LANDLINE, FOREIGN] {
                        for date in dates {
                            let http = w
                                .check(json!({"phoneNumber": number, "specifiedDate": date}))
                                .await;
                            // The same question over gRPC: the day's first instant in the carrier's
                            // time zone.
                            let answer = grpc
                                .check_number_recycled(CheckNumberRecycledRequest {
                                    phone_number: number.into(),
                                    specified_date: Some(timestamp(date, "00:00:00+08:00")),
                                })
                                .await;
                            let grpc_says = match answer {
                                Ok(r) => format!("{}", r.into_inner().recycled),
                                Err(s) => format!("{:?}", s.code()),
                            };
                            let http_says = if http.status == 200 {
                                format!("{}", http.json()["phoneNumberRecycled"])
                            } else {
                                http.json()["code"].as_str().unwrap().to_owned()
                            };
                            let alike = match (grpc_says.as_str(), http_says.as_str()) {
                                (g, h) if g == h => true,
                                ("InvalidArgument", "OUT_OF_RANGE") => true,
                                ("NotFound", "IDENTIFIER_NOT_FOUND") => true,
                                ("FailedPrecondition", "SERVICE_NOT_APPLICABLE") => true,
                                _ => false,
                            };
                            assert!(alike, "{number} {date}: gRPC {grpc_says}, HTTP {http_says}");
                            compared += 1;
                        }
                    }
                    assert_eq!(compared, 40);
                })
            },
        ),
    ]
}

async fn wait_for_log(w: &World, text: &str) {
    for _ in 0..200 {
        if std::fs::read_to_string(&w.log)
            .unwrap_or_default()
            .contains(text)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gateway never logged {text:?}");
}

/// What no log line may hold: the numbers asked about, and any token.
fn assert_log_is_private(w: &World) {
    let log = std::fs::read_to_string(&w.log).unwrap();
    for secret in [RECYCLED, KEPT, LANDLINE, "13700000001", "13700000002"] {
        assert!(!log.contains(secret), "the log holds {secret}");
    }
    assert!(!log.contains("eyJ"), "the log holds a token");
    assert!(log.contains("HTTP API (CAMARA Number Recycling v0.3) serving"));
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test -- --list` and the like: the names, nothing run.
    if args.iter().any(|a| a == "--list") {
        for (name, _) in scenarios() {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    // libtest's conventions: names containing any filter given (all when none), but those
    // containing a `--skip` value.
    let (mut filters, mut skips) = (Vec::new(), Vec::new());
    let mut words = args.iter();
    while let Some(word) = words.next() {
        if word == "--skip" {
            skips.extend(words.next().cloned());
        } else if !word.starts_with('-') {
            filters.push(word.clone());
        }
    }
    let selected: Vec<_> = scenarios()
        .into_iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .filter(|(name, _)| !skips.iter().any(|s| name.contains(s.as_str())))
        .collect();
    println!("\nrunning {} tests", selected.len());
    if selected.is_empty() {
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let failed = runtime.block_on(async {
        let world = World::start().await;
        let mut failed = Vec::new();
        for (name, scenario) in &selected {
            let outcome = std::panic::AssertUnwindSafe(scenario(&world))
                .catch_unwind()
                .await;
            println!(
                "test {name} ... {}",
                if outcome.is_ok() { "ok" } else { "FAILED" }
            );
            if outcome.is_err() {
                failed.push(*name);
            }
        }
        let private = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            assert_log_is_private(&world)
        }));
        println!(
            "test the_log_holds_no_number_and_no_token ... {}",
            if private.is_ok() { "ok" } else { "FAILED" }
        );
        if private.is_err() {
            failed.push("the_log_holds_no_number_and_no_token");
        }
        if !failed.is_empty() {
            eprintln!(
                "\n--- the gateway's log ---\n{}",
                std::fs::read_to_string(&world.log).unwrap_or_default()
            );
        }
        world.stop();
        failed
    });
    if failed.is_empty() {
        println!(
            "\ntest result: ok. {} passed; 0 failed\n",
            selected.len() + 1
        );
        ExitCode::SUCCESS
    } else {
        println!(
            "\ntest result: FAILED. {} failed: {}\n",
            failed.len(),
            failed.join(", ")
        );
        ExitCode::FAILURE
    }
}
