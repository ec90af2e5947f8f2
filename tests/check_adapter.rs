//! `unbind-gateway check-adapter`, the real binary against real gRPC servers on loopback: a
//! simulated app passes every check, the destructive ones included (an unbind that is first
//! ACCEPTED, then DONE); a deliberately broken adapter fails exactly the checks it breaks, with a
//! non-zero exit; an unreachable endpoint fails `reachable` and skips the rest; over mutual TLS
//! with the development PKI the suite passes with the gateway's client certificate and fails
//! without it. No output ever carries the raw test number or the account id.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::Mutex,
    time::Duration,
};

use tonic::{
    Request, Response, Status,
    transport::{Certificate, Identity, Server, ServerTlsConfig},
};
use unbind_gateway::{
    pki::generate,
    proto::{
        AdapterAccount, FindAccountsRequest, FindAccountsResponse, GetUnbindStatusRequest,
        NotifyNumbersRecycledRequest, NotifyNumbersRecycledResponse, UnbindAccountRequest,
        UnbindAccountResponse,
        app_adapter_server::{AppAdapter, AppAdapterServer},
        unbind_account_response::State,
    },
    testkit::simulated_apps::{Behaviour, Simulator, SimulatorConfig, accounts_for},
};

/// The demo subscriber, used as the vendor's test number.
const PHONE: &str = "+8613800138000";
/// The raw number in any form must never be printed.
const RAW: &str = "13800138000";
/// The longest one run of the binary may take before the test kills it.
const RUN_LIMIT: Duration = Duration::from_secs(120);

const ALL_CHECKS: [&str; 13] = [
    "reachable",
    "unknown-number",
    "malformed-number",
    "accounts-well-formed",
    "accounts-stable",
    "status-unknown-key",
    "recycled-empty-batch",
    "recycled-batch-replay",
    "concurrency",
    "unbind-answer",
    "unbind-idempotent",
    "unbind-status",
    "unbind-removes-account",
];

/// What one run of `check-adapter` printed and how it exited.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The RESULT column of the table, by check.
    fn table(&self) -> BTreeMap<String, String> {
        self.stdout
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let (check, result) = (words.next()?, words.next()?);
                matches!(result, "PASS" | "FAIL" | "SKIP")
                    .then(|| (check.to_owned(), result.to_owned()))
            })
            .collect()
    }

    /// The line of one check.
    fn line(&self, check: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(check))
            .unwrap_or_else(|| panic!("no line for {check}:\n{}", self.stdout))
    }

    fn assert_private(&self, secrets: &[&str]) {
        for secret in secrets {
            assert!(
                !self.stdout.contains(secret) && !self.stderr.contains(secret),
                "{secret:?} printed:\n{}\n{}",
                self.stdout,
                self.stderr
            );
        }
    }
}

/// Runs `unbind-gateway check-adapter ARGS`, killing it if it takes longer than [`RUN_LIMIT`].
async fn check_adapter(args: &[&str]) -> Run {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_unbind-gateway"))
        .arg("check-adapter")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let output = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .expect("check-adapter finished in time")
        .expect("check-adapter ran");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The first app (in id order, from `skip` on) with an account for [`PHONE`] it can unbind, and
/// that account's id.
fn app_with_account(simulator: &Simulator, skip: usize) -> (String, String, String) {
    simulator
        .apps()
        .into_iter()
        .skip(skip)
        .find_map(|app| {
            let account = accounts_for(simulator.seed(), &app.id, PHONE)
                .into_iter()
                .find(|a| a.unbind_supported)?;
            Some((app.id, app.endpoint, account.account_id))
        })
        .expect("some simulated app holds an account for the demo number")
}

#[tokio::test]
async fn a_simulated_app_passes_every_check_including_the_destructive_ones() {
    let simulator = Simulator::start(SimulatorConfig {
        apps: 20,
        behaviour: Behaviour {
            // ACCEPTED first, DONE shortly after: the suite has to poll.
            unbind_completion: Duration::from_millis(300),
            ..Behaviour::default()
        },
        ..SimulatorConfig::default()
    })
    .await
    .unwrap();
    let (app_id, endpoint, account_id) = app_with_account(&simulator, 0);

    let run = check_adapter(&[
        "--endpoint",
        &endpoint,
        "--phone",
        PHONE,
        "--unbind-account",
        &account_id,
        "--timeout",
        "5s",
    ])
    .await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let table = run.table();
    for check in ALL_CHECKS {
        assert_eq!(
            table.get(check).map(String::as_str),
            Some("PASS"),
            "{check}:\n{}",
            run.stdout
        );
    }
    assert!(
        run.line("unbind-answer").contains("ACCEPTED"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("13 checks: 13 passed, 0 failed, 0 skipped")
    );
    assert!(run.stdout.contains("138****8000"), "{}", run.stdout);
    run.assert_private(&[RAW, &account_id]);
    // The unbind and its replay used one idempotency key, and the account really is unbound.
    let stats = simulator.stats(&app_id);
    assert_eq!(stats.unbind_calls, 2);
    assert_eq!(stats.unbind_keys.len(), 1);
    assert!(
        !accounts_after(&simulator, &app_id)
            .await
            .iter()
            .any(|a| a.account_id == account_id)
    );

    // Read-only, as JSON lines, against another app: nothing is unbound, the destructive checks
    // say why they were skipped.
    let (other_id, other_endpoint, _) =
        app_with_account(&simulator, position(&simulator, &app_id) + 1);
    let run = check_adapter(&["--endpoint", &other_endpoint, "--phone", PHONE, "--json"]).await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let lines: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), ALL_CHECKS.len(), "{}", run.stdout);
    for (line, check) in lines.iter().zip(ALL_CHECKS) {
        assert_eq!(line["check"], check);
        let expected = if check.starts_with("unbind-") {
            "SKIP"
        } else {
            "PASS"
        };
        assert_eq!(line["result"], expected, "{line}");
        assert!(line["reason"].as_str().is_some_and(|r| !r.is_empty()));
    }
    assert!(
        lines[9]["reason"]
            .as_str()
            .unwrap()
            .contains("--unbind-account")
    );
    assert!(run.stderr.contains("0 failed"), "{}", run.stderr);
    assert_eq!(simulator.stats(&other_id).unbind_calls, 0);
    run.assert_private(&[RAW]);
    simulator.shutdown().await;
}

fn position(simulator: &Simulator, app_id: &str) -> usize {
    simulator
        .apps()
        .iter()
        .position(|a| a.id == app_id)
        .unwrap()
}

/// What the app lists for [`PHONE`] now.
async fn accounts_after(simulator: &Simulator, app_id: &str) -> Vec<AdapterAccount> {
    let addr = simulator.addr(app_id).unwrap();
    let mut client = unbind_gateway::proto::app_adapter_client::AppAdapterClient::connect(format!(
        "http://{addr}"
    ))
    .await
    .unwrap();
    client
        .find_accounts(FindAccountsRequest {
            request_id: "test".to_owned(),
            phone_number: PHONE.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .accounts
}

/// The account the broken adapter is asked to unbind.
const BROKEN_ACCOUNT: &str = "acct-broken-1";

/// An adapter that gets several things wrong: NOT_FOUND for a number without accounts, OK for
/// malformed numbers, an unmasked hint and a missing `bound_at`, a new `vendor_ref` for every
/// repeat of an unbind (which never takes effect), no status for any unbind (its message echoing
/// the number and account), and a different answer for a repeated batch.
#[derive(Default)]
struct BrokenAdapter {
    unbinds: Mutex<u32>,
    batches: Mutex<HashMap<String, u32>>,
}

#[tonic::async_trait]
impl AppAdapter for BrokenAdapter {
    async fn find_accounts(
        &self,
        request: Request<FindAccountsRequest>,
    ) -> Result<Response<FindAccountsResponse>, Status> {
        let phone = request.into_inner().phone_number;
        let e164_like = phone
            .strip_prefix('+')
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
        let accounts = if phone == PHONE {
            vec![
                AdapterAccount {
                    account_id: BROKEN_ACCOUNT.to_owned(),
                    display_hint: "zhangwei".to_owned(),
                    bound_at: Some(prost_types::Timestamp {
                        seconds: 1_600_000_000,
                        nanos: 0,
                    }),
                    unbind_supported: true,
                },
                AdapterAccount {
                    account_id: "acct-broken-2".to_owned(),
                    display_hint: "l***i".to_owned(),
                    bound_at: None,
                    unbind_supported: true,
                },
            ]
        } else if e164_like {
            return Err(Status::not_found(format!("no accounts for {phone}")));
        } else {
            Vec::new()
        };
        Ok(Response::new(FindAccountsResponse { accounts }))
    }

    async fn unbind_account(
        &self,
        _request: Request<UnbindAccountRequest>,
    ) -> Result<Response<UnbindAccountResponse>, Status> {
        let mut n = self.unbinds.lock().unwrap();
        *n += 1;
        Ok(Response::new(UnbindAccountResponse {
            state: State::Done as i32,
            vendor_ref: format!("broken-{n}"),
            detail: format!("unbound {BROKEN_ACCOUNT} of {PHONE}"),
        }))
    }

    async fn get_unbind_status(
        &self,
        _request: Request<GetUnbindStatusRequest>,
    ) -> Result<Response<UnbindAccountResponse>, Status> {
        Err(Status::not_found(format!(
            "no unbind of {BROKEN_ACCOUNT} for {PHONE} (tel 8613800138000)"
        )))
    }

    async fn notify_numbers_recycled(
        &self,
        request: Request<NotifyNumbersRecycledRequest>,
    ) -> Result<Response<NotifyNumbersRecycledResponse>, Status> {
        let mut batches = self.batches.lock().unwrap();
        let seen = batches.entry(request.into_inner().batch_id).or_default();
        let accepted = *seen;
        *seen += 1;
        Ok(Response::new(NotifyNumbersRecycledResponse { accepted }))
    }
}

/// Serves `adapter` on a free loopback port; returns its endpoint.
async fn serve(adapter: BrokenAdapter) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        Server::builder()
            .add_service(AppAdapterServer::new(adapter))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    endpoint
}

#[tokio::test]
async fn a_broken_adapter_fails_the_checks_it_breaks() {
    let endpoint = serve(BrokenAdapter::default()).await;
    let run = check_adapter(&[
        "--endpoint",
        &endpoint,
        "--phone",
        PHONE,
        "--unbind-account",
        BROKEN_ACCOUNT,
        "--timeout",
        "2s",
    ])
    .await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let expected: BTreeMap<String, String> = [
        ("reachable", "PASS"),
        ("unknown-number", "FAIL"),
        ("malformed-number", "FAIL"),
        ("accounts-well-formed", "FAIL"),
        ("accounts-stable", "PASS"),
        ("status-unknown-key", "PASS"),
        ("recycled-empty-batch", "PASS"),
        ("recycled-batch-replay", "FAIL"),
        ("concurrency", "PASS"),
        ("unbind-answer", "PASS"),
        ("unbind-idempotent", "FAIL"),
        ("unbind-status", "FAIL"),
        ("unbind-removes-account", "FAIL"),
    ]
    .into_iter()
    .map(|(c, r)| (c.to_owned(), r.to_owned()))
    .collect();
    assert_eq!(run.table(), expected, "{}", run.stdout);

    assert!(run.line("unknown-number").contains("NOT_FOUND"));
    assert!(run.line("malformed-number").contains("got OK"));
    let accounts = run.line("accounts-well-formed");
    assert!(accounts.contains("unmasked display_hint"), "{accounts}");
    assert!(accounts.contains("without bound_at"), "{accounts}");
    assert!(run.line("unbind-idempotent").contains("another vendor_ref"));
    assert!(run.line("unbind-removes-account").contains("still lists"));
    // The adapter's message is printed, without the number or the account id it echoed.
    let status = run.line("unbind-status");
    assert!(
        status.contains("NOT_FOUND") && status.contains("138****8000"),
        "{status}"
    );
    assert!(
        run.stdout.contains(
            "(failed: unknown-number, malformed-number, accounts-well-formed, \
             recycled-batch-replay, unbind-idempotent, unbind-status, unbind-removes-account)"
        ),
        "{}",
        run.stdout
    );
    run.assert_private(&[RAW, BROKEN_ACCOUNT]);
}

#[tokio::test]
async fn an_unreachable_adapter_fails_reachable_and_skips_the_rest() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let run = check_adapter(&["--endpoint", &endpoint, "--phone", PHONE, "--timeout", "2s"]).await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let table = run.table();
    assert_eq!(table["reachable"], "FAIL");
    assert!(
        ALL_CHECKS[1..].iter().all(|c| table[*c] == "SKIP"),
        "{}",
        run.stdout
    );
    run.assert_private(&[RAW]);

    // Options the suite cannot work with are refused before anything is called, with exit
    // status 2 (not 1: no check ran, none failed).
    let run = check_adapter(&["--endpoint", "https://127.0.0.1:1"]).await;
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("--ca"), "{}", run.stderr);
    let run = check_adapter(&["--endpoint", &endpoint, "--unbind-account", "x"]).await;
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("--phone"), "{}", run.stderr);
}

#[tokio::test]
async fn over_mutual_tls_with_the_gateways_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = generate(&dir.path().join("pki"), &[], &[], 1, false).unwrap();
    let read = |path: &Path| std::fs::read(path).unwrap();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            read(&pki.adapter.cert),
            read(&pki.adapter.key),
        ))
        .client_ca_root(Certificate::from_pem(read(&pki.ca.cert)));
    let simulator = Simulator::start_with_tls(
        SimulatorConfig {
            apps: 10,
            ..SimulatorConfig::default()
        },
        Some(tls),
    )
    .await
    .unwrap();
    let (_, endpoint, _) = app_with_account(&simulator, 0);
    assert!(endpoint.starts_with("https://localhost:"), "{endpoint}");
    let ca = pki.ca.cert.display().to_string();
    let cert = pki.gateway_client.cert.display().to_string();
    let key = pki.gateway_client.key.display().to_string();

    let run = check_adapter(&[
        "--endpoint",
        &endpoint,
        "--ca",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "--phone",
        PHONE,
    ])
    .await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("mutual TLS"), "{}", run.stdout);
    let table = run.table();
    assert!(
        ALL_CHECKS[..9].iter().all(|c| table[*c] == "PASS"),
        "{}",
        run.stdout
    );

    // Without a client certificate the adapter refuses the connection.
    let run = check_adapter(&["--endpoint", &endpoint, "--ca", &ca, "--timeout", "3s"]).await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.table()["reachable"], "FAIL", "{}", run.stdout);
    simulator.shutdown().await;
}
