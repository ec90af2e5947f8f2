//! The test harness: simulated apps, the simulated registry and a gateway, all real gRPC servers on
//! loopback, with a real SQLite file (or PostgreSQL) and a clock tests can move forward.

#![allow(dead_code)]

use std::{path::PathBuf, time::Duration};

use tonic::transport::Channel;
use unbind_gateway::{
    api::error::reason_of,
    clock::Clock,
    config::Config,
    proto::{StartVerificationRequest, account_gateway_client::AccountGatewayClient},
    testkit::simulated_apps::{Behaviour, Simulator},
    testkit::stack::{BackendTls, Stack, StackOptions, demo_subscribers, numbered_subscribers},
};

/// The demo subscriber: number, ID characters, holder since 2024-03-01.
pub const PHONE: &str = "+8613800138000";
pub const PHONE_BARE: &str = "13800138000";
pub const ID_LAST_SIX: &str = "12345X";
/// Another subscriber in the demo registry.
pub const OTHER_PHONE: &str = "+8613900139000";
pub const OTHER_ID: &str = "154321";

pub struct Options {
    pub apps: usize,
    pub behaviour: Behaviour,
    pub app_timeout: Duration,
    /// `None`: a SQLite file in the test's directory.
    pub store_url: Option<String>,
    /// Subscribers beyond the demo's: `numbered_subscribers(n)`.
    pub extra_subscribers: usize,
    pub tweak: fn(&mut Config),
    /// `Some`: the apps and the registry serve mutual TLS, and the gateway's config reaches
    /// them over `https://` (a production-mode gateway refuses `http://` backends).
    pub backend_tls: Option<BackendTls>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            apps: 5,
            behaviour: Behaviour::default(),
            app_timeout: Duration::from_secs(2),
            store_url: None,
            extra_subscribers: 0,
            tweak: |_| {},
            backend_tls: None,
        }
    }
}

/// A [`Stack`] in a temporary directory, with test helpers.
pub struct Harness {
    pub stack: Stack,
    pub simulator: Simulator,
    pub sms_file: PathBuf,
    pub clock: Clock,
    pub dir: tempfile::TempDir,
}

impl Harness {
    pub async fn start(options: Options) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let tweak = options.tweak;
        let stack = Stack::start(
            StackOptions {
                apps: options.apps,
                behaviour: options.behaviour,
                app_timeout: Some(options.app_timeout),
                store_url: options.store_url,
                subscribers: demo_subscribers()
                    .into_iter()
                    .chain(numbered_subscribers(options.extra_subscribers))
                    .collect(),
                backend_tls: options.backend_tls,
                ..StackOptions::new(dir.path().to_path_buf())
            },
            tweak,
        )
        .await
        .unwrap();
        Harness {
            simulator: stack.simulator.clone(),
            sms_file: stack.sms_file.clone(),
            clock: stack.clock.clone(),
            stack,
            dir,
        }
    }

    /// Stops and starts the gateway on the same store and secret.
    pub async fn restart_gateway(&mut self) {
        self.stack.restart_gateway().await.unwrap();
    }

    pub fn endpoint(&self) -> String {
        self.stack.endpoint()
    }

    pub async fn client(&self) -> AccountGatewayClient<Channel> {
        AccountGatewayClient::connect(self.endpoint())
            .await
            .unwrap()
    }

    /// The codes sent to `phone` so far, oldest first.
    pub fn codes_sent_to(&self, phone: &str) -> Vec<String> {
        self.stack.codes_sent_to(phone)
    }

    /// Waits (with a deadline) until `phone` has received `n` codes; returns the newest.
    pub async fn wait_for_code(&self, phone: &str, n: usize) -> String {
        self.stack.wait_for_code(phone, n).await.unwrap()
    }

    /// Starts a verification; returns its id.
    pub async fn start_verification(&self, phone: &str, id: &str) -> String {
        self.client()
            .await
            .start_verification(StartVerificationRequest {
                phone_number: phone.into(),
                id_last_six: id.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .verification_id
    }

    /// A full verification of the demo subscriber (or another); returns the session token.
    pub async fn session_for(&self, phone: &str, id: &str) -> String {
        self.stack.verified_session(phone, id).await.unwrap()
    }

    pub async fn session(&self) -> String {
        self.session_for(PHONE, ID_LAST_SIX).await
    }

    pub async fn stop(self) {
        self.stack.stop().await.unwrap();
    }
}

/// `StartVerification` through `client`; the verification id.
pub async fn start_with(
    client: &mut AccountGatewayClient<Channel>,
    phone: &str,
    id: &str,
) -> Result<String, tonic::Status> {
    client
        .start_verification(StartVerificationRequest {
            phone_number: phone.into(),
            id_last_six: id.into(),
        })
        .await
        .map(|r| r.into_inner().verification_id)
}

/// `CompleteVerification` through `client`; the session token.
pub async fn complete_with(
    client: &mut AccountGatewayClient<Channel>,
    verification_id: &str,
    code: &str,
) -> Result<String, tonic::Status> {
    client
        .complete_verification(unbind_gateway::proto::CompleteVerificationRequest {
            verification_id: verification_id.into(),
            code: code.into(),
        })
        .await
        .map(|r| r.into_inner().session_token)
}

/// Asserts a status's code and `ErrorInfo` reason.
#[track_caller]
pub fn assert_error(status: &tonic::Status, code: tonic::Code, reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason_of(status).as_deref(), Some(reason), "{status:?}");
}

/// The `BadRequest` field violations of a status.
pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// A fresh, empty PostgreSQL database for one test, from `DATABASE_URL`.
///
/// Every test that calls this carries `#[cfg_attr(no_database, ignore = "needs DATABASE_URL")]`:
/// `build.rs` sets `no_database` when `DATABASE_URL` is unset outside CI, so `cargo test` reports
/// such a test as ignored instead of running it. Reaching this without `DATABASE_URL` (under
/// `CI=true`, with `--include-ignored`, or a test binary run by hand) fails the test, never passes
/// it.
pub async fn fresh_postgres_database() -> String {
    let Ok(base) = std::env::var("DATABASE_URL") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but DATABASE_URL is not set: PostgreSQL tests must run in CI"
        );
        panic!(
            "this test needs PostgreSQL: set DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/test); \
             without it `cargo test` reports it as ignored"
        );
    };
    unbind_gateway::store::Store::create_scratch_postgres_database(&base, "unbind_test")
        .await
        .expect("DATABASE_URL is set but a database cannot be created")
}

/// `GET http://addr/path` over a plain TCP connection (HTTP/1.1, `Connection: close`); the
/// status code and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    // The admin endpoint answers small bodies; decode chunked transfer if used.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    (status, body)
}

/// The admin endpoint's address of the harness's gateway (configure `admin` in `tweak`).
pub fn admin_addr(h: &Harness) -> std::net::SocketAddr {
    h.stack
        .gateway
        .as_ref()
        .and_then(|g| g.admin_addr)
        .expect("the admin endpoint is configured")
}

/// Sets `admin.listen` to an ephemeral loopback port.
pub fn with_admin(config: &mut Config) {
    config.admin = Some(unbind_gateway::config::AdminConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
    });
}

/// The value of a metric line `name{labels} value` in a Prometheus exposition, if present.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The Python of the virtual environment `target/python` (tests/python/requirements.txt), which
/// `.ci/run` creates. Without it the caller skips, saying so, except under `CI=true`, where a
/// missing environment fails the test.
pub fn python_env() -> Option<std::path::PathBuf> {
    let python =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/python/bin/python");
    if python.exists() {
        return Some(python);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but {} is missing: .ci/run creates it",
        python.display()
    );
    eprintln!(
        "skipped: no Python environment at {} (run `bash .ci/run` once, or create it: python3 -m \
         venv target/python && target/python/bin/pip install -r tests/python/requirements.txt)",
        python.display()
    );
    None
}

/// Python stubs of `protos` (paths under proto/), generated with grpcio-tools into a new
/// directory, as the examples' READMEs do it.
pub async fn python_stubs(python: &std::path::Path, protos: &[&str]) -> tempfile::TempDir {
    let root = env!("CARGO_MANIFEST_DIR");
    let stubs = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(python);
    command
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(format!("{root}/proto"))
        .arg(format!("--python_out={}", stubs.path().display()))
        .arg(format!("--grpc_python_out={}", stubs.path().display()));
    for proto in protos {
        command.arg(format!("{root}/proto/{proto}"));
    }
    let generated = command.output().await.unwrap();
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    stubs
}
