//! `unbind-gateway check-adapter`, the real binary against real gRPC servers on loopback: a
//! simulated app passes every check, the destructive ones included (an unbind that is first
//! ACCEPTED, then DONE); a deliberately broken adapter fails exactly the checks it breaks, with a
//! non-zero exit; an unreachable endpoint fails `reachable` and skips the rest; over mutual TLS
//! with the development PKI the suite passes with the gateway's client certificate and fails
//! without it. No output ever carries the raw test number or the account id.
//!
//! As a person meets it: a closed stdout (`| head -1`) ends it quietly with the exit status the
//! checks give; an endpoint that serves gRPC but not `unbind.v1.AppAdapter` (the gateway's own
//! port) gets one line saying so and exit status 2; `simulate-apps --print-test-account` prints
//! an account id that makes every check pass; and nothing it prints uses the gateway's own words
//! that an adapter vendor, who has read only adapter.proto, would not know.

mod common;

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

/// Runs `unbind-gateway check-adapter ARGS` with its stdout a pipe the test closes after reading
/// `keep` lines (0: before reading any), as `check-adapter ... | head -1` does; the exit status
/// and what it wrote to stderr.
async fn check_adapter_into_closed_pipe(args: &[&str], keep: usize) -> (Option<i32>, String) {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_unbind-gateway"))
        .arg("check-adapter")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().expect("a piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    for _ in 0..keep {
        let line = tokio::time::timeout(RUN_LIMIT, lines.next_line())
            .await
            .expect("check-adapter printed in time")
            .expect("stdout is readable");
        assert!(line.is_some(), "stdout ended before {keep} lines");
    }
    // Closes the read end: every later write of the child's fails with EPIPE.
    drop(lines);
    let output = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .expect("check-adapter finished in time")
        .expect("check-adapter ran");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_closed_stdout_ends_it_quietly_with_the_status_the_checks_give() {
    let simulator = Simulator::start(SimulatorConfig {
        apps: 20,
        ..SimulatorConfig::default()
    })
    .await
    .unwrap();
    let (app_id, endpoint, account_id) = app_with_account(&simulator, 0);

    // `| head -1`: one line read, then the pipe is closed. The checks go on (the account really
    // is unbound, its replay sent) and the exit status is theirs.
    let (code, stderr) = check_adapter_into_closed_pipe(
        &[
            "--endpoint",
            &endpoint,
            "--phone",
            PHONE,
            "--unbind-account",
            &account_id,
        ],
        1,
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.trim().is_empty(), "{stderr}");
    assert_eq!(simulator.stats(&app_id).unbind_calls, 2);

    // Closed before anything was read, and with --json (whose summary goes to stderr).
    let (other_id, other_endpoint, _) =
        app_with_account(&simulator, position(&simulator, &app_id) + 1);
    for extra in [&[][..], &["--json"][..]] {
        let mut args = vec!["--endpoint", other_endpoint.as_str(), "--phone", PHONE];
        args.extend_from_slice(extra);
        let (code, stderr) = check_adapter_into_closed_pipe(&args, 0).await;
        assert_eq!(code, Some(0), "{extra:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.to_lowercase().contains("pipe"),
            "{extra:?}: {stderr}"
        );
        assert!(simulator.stats(&other_id).find_calls > 0);
    }
    simulator.shutdown().await;

    // A check that fails still gives exit status 1.
    let endpoint = serve(BrokenAdapter::default()).await;
    for keep in [0, 1] {
        let (code, stderr) = check_adapter_into_closed_pipe(
            &["--endpoint", &endpoint, "--phone", PHONE, "--timeout", "2s"],
            keep,
        )
        .await;
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.trim().is_empty(), "{stderr}");
    }
}

/// The lines of `text` that are not blank.
fn lines_of(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.trim().is_empty()).collect()
}

#[tokio::test]
async fn an_endpoint_that_is_not_an_adapter_gets_one_line_and_exit_status_2() {
    // The gateway's own port: it serves gRPC (AccountGateway, health, reflection), not AppAdapter.
    let harness = common::Harness::start(common::Options {
        apps: 1,
        ..common::Options::default()
    })
    .await;
    let endpoint = harness.endpoint();
    for extra in [&[][..], &["--json"][..]] {
        let mut args = vec!["--endpoint", endpoint.as_str(), "--phone", PHONE];
        args.extend_from_slice(extra);
        let run = check_adapter(&args).await;
        assert_eq!(
            run.code,
            Some(2),
            "{extra:?}:\n{}\n{}",
            run.stdout,
            run.stderr
        );
        // No table, no header: one line on stderr.
        assert!(run.stdout.trim().is_empty(), "{extra:?}: {}", run.stdout);
        let lines = lines_of(&run.stderr);
        assert_eq!(lines.len(), 1, "{extra:?}: {}", run.stderr);
        let line = lines[0];
        for expected in [
            "error:",
            endpoint.as_str(),
            "does not serve unbind.v1.AppAdapter",
            "UNIMPLEMENTED",
            "adapter's address",
            // What reflection says it serves instead.
            "unbind.v1.AccountGateway",
        ] {
            assert!(line.contains(expected), "{expected:?} missing: {line}");
        }
        assert!(!line.contains("FAIL") && !line.contains("CHECK"), "{line}");
        run.assert_private(&[RAW]);
    }
    harness.stop().await;

    // A gRPC server without reflection (health only): the same line, without the list.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(
        Server::builder()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let run = check_adapter(&["--endpoint", &endpoint, "--timeout", "2s"]).await;
    assert_eq!(run.code, Some(2), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.trim().is_empty(), "{}", run.stdout);
    let lines = lines_of(&run.stderr);
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    assert!(
        lines[0].contains("does not serve unbind.v1.AppAdapter")
            && lines[0].contains(&endpoint)
            && lines[0].contains("UNIMPLEMENTED"),
        "{}",
        lines[0]
    );

    // An adapter that lists unbind.v1.AppAdapter by reflection but has not implemented
    // FindAccounts yet is an adapter failing its checks: the table, exit status 1.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let reflection = tonic_reflection::server::Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(unbind_gateway::proto::FILE_DESCRIPTOR_SET)
        .with_service_name("unbind.v1.AppAdapter")
        .build_v1()
        .unwrap();
    tokio::spawn(
        Server::builder()
            .add_service(AppAdapterServer::new(UnfinishedAdapter::default()))
            .add_service(reflection)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let run = check_adapter(&["--endpoint", &endpoint, "--timeout", "2s"]).await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert!(!run.stderr.contains("does not serve"), "{}", run.stderr);
    assert!(
        run.line("reachable").contains("UNIMPLEMENTED"),
        "{}",
        run.stdout
    );
    assert_eq!(
        run.table()["recycled-empty-batch"],
        "PASS",
        "{}",
        run.stdout
    );
}

/// An adapter whose FindAccounts is not written yet; the rest is [`BrokenAdapter`]'s.
#[derive(Default)]
struct UnfinishedAdapter(BrokenAdapter);

#[tonic::async_trait]
impl AppAdapter for UnfinishedAdapter {
    async fn find_accounts(
        &self,
        _request: Request<FindAccountsRequest>,
    ) -> Result<Response<FindAccountsResponse>, Status> {
        Err(Status::unimplemented("FindAccounts is not implemented yet"))
    }

    async fn unbind_account(
        &self,
        request: Request<UnbindAccountRequest>,
    ) -> Result<Response<UnbindAccountResponse>, Status> {
        self.0.unbind_account(request).await
    }

    async fn get_unbind_status(
        &self,
        request: Request<GetUnbindStatusRequest>,
    ) -> Result<Response<UnbindAccountResponse>, Status> {
        self.0.get_unbind_status(request).await
    }

    async fn notify_numbers_recycled(
        &self,
        request: Request<NotifyNumbersRecycledRequest>,
    ) -> Result<Response<NotifyNumbersRecycledResponse>, Status> {
        self.0.notify_numbers_recycled(request).await
    }
}

/// The rows `simulate-apps --print-test-account` printed: (app id, endpoint, account id).
fn test_account_rows(lines: &[String]) -> Vec<(String, String, String)> {
    lines
        .iter()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                [app, endpoint, account]
                    if app.starts_with("app-")
                        && endpoint.starts_with("http")
                        && account.starts_with("acct-") =>
                {
                    Some((app.to_string(), endpoint.to_string(), account.to_string()))
                }
                _ => None,
            }
        })
        .collect()
}

#[tokio::test]
async fn the_account_simulate_apps_prints_passes_every_check() {
    use tokio::io::AsyncBufReadExt as _;
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("apps.toml");
    let mut simulator = tokio::process::Command::new(env!("CARGO_BIN_EXE_unbind-gateway"))
        .args(["simulate-apps", "--apps", "20", "--base-port", "0"])
        .args(["--latency", "0s", "--unbind-completion", "300ms"])
        .arg("--catalog-out")
        .arg(&catalog)
        .args(["--print-test-account", PHONE])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    // Its start-up lines, up to the one that says it serves.
    let mut lines = tokio::io::BufReader::new(simulator.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    loop {
        let line = tokio::time::timeout(RUN_LIMIT, lines.next_line())
            .await
            .expect("simulate-apps printed in time")
            .unwrap()
            .unwrap_or_else(|| panic!("simulate-apps ended:\n{}", printed.join("\n")));
        let serving = line.starts_with("Serving");
        printed.push(line);
        if serving {
            break;
        }
    }
    let text = printed.join("\n");
    assert!(text.contains("138****8000"), "{text}");
    assert!(!text.contains(RAW), "{text}");
    let rows = test_account_rows(&printed);
    assert!(!rows.is_empty(), "{text}");
    let (_, endpoint, account_id) = &rows[0];

    let run = check_adapter(&[
        "--endpoint",
        endpoint,
        "--phone",
        PHONE,
        "--unbind-account",
        account_id,
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
    run.assert_private(&[RAW, account_id]);
    simulator.kill().await.unwrap();
}

/// Words of the gateway's own design an adapter vendor who has read only adapter.proto does not
/// know. Each matches at the start of a word, so "tickets" and "sealed" count, "please" does not.
const JARGON: [&str; 14] = [
    "seal",
    "account ref",
    "fan-out",
    "fan out",
    "ticket",
    "tenant",
    "holder protection",
    "holder_since",
    "holder since",
    "lease",
    "session",
    "catalog",
    "cache",
    "correlat",
];

/// The jargon words in `text`.
fn jargon_in(text: &str) -> Vec<&'static str> {
    let words: String = text
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                ' '
            }
        })
        .collect();
    let words = format!(
        " {} ",
        words.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    JARGON
        .into_iter()
        .filter(|term| words.contains(&format!(" {term}")))
        .collect()
}

/// The account [`WrongAdapter`] is asked to unbind.
const WRONG_ACCOUNT: &str = "acct-wrong-1";

/// An adapter that gets nearly everything wrong, so the suite prints most of its failure
/// messages: INTERNAL for any other number, malformed ones included; ill-formed accounts for the
/// test number, fewer of them the second time and RESOURCE_EXHAUSTED after that; an answer for
/// unbinds it never saw; an unbind it cannot repeat and whose state it does not know; and a
/// count for an empty batch, which it then refuses to repeat.
#[derive(Default)]
struct WrongAdapter {
    finds: Mutex<u32>,
    unbinds: Mutex<u32>,
    batches: Mutex<u32>,
}

#[tonic::async_trait]
impl AppAdapter for WrongAdapter {
    async fn find_accounts(
        &self,
        request: Request<FindAccountsRequest>,
    ) -> Result<Response<FindAccountsResponse>, Status> {
        if request.into_inner().phone_number != PHONE {
            return Err(Status::internal("the database is down"));
        }
        let call = {
            let mut finds = self.finds.lock().unwrap();
            *finds += 1;
            *finds
        };
        let at = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
        let account = |id: &str, hint: &str, bound_at| AdapterAccount {
            account_id: id.to_owned(),
            display_hint: hint.to_owned(),
            bound_at,
            unbind_supported: true,
        };
        let mut accounts = vec![
            account(WRONG_ACCOUNT, "l***i", at(1_600_000_000)),
            account(WRONG_ACCOUNT, "l***i", at(1_600_000_000)),
            account(&"x".repeat(3000), "zhangwei", None),
            account("", "w***i", at(4_000_000_000)),
            account("acct-wrong-2", "w***i", at(0)),
        ];
        match call {
            1 => {}
            2 => {
                accounts.pop();
            }
            _ => return Err(Status::resource_exhausted("one call at a time")),
        }
        Ok(Response::new(FindAccountsResponse { accounts }))
    }

    async fn unbind_account(
        &self,
        _request: Request<UnbindAccountRequest>,
    ) -> Result<Response<UnbindAccountResponse>, Status> {
        let mut unbinds = self.unbinds.lock().unwrap();
        *unbinds += 1;
        if *unbinds > 1 {
            return Err(Status::internal("already asked"));
        }
        Ok(Response::new(UnbindAccountResponse {
            state: State::Accepted as i32,
            vendor_ref: "wrong-1".to_owned(),
            detail: String::new(),
        }))
    }

    async fn get_unbind_status(
        &self,
        _request: Request<GetUnbindStatusRequest>,
    ) -> Result<Response<UnbindAccountResponse>, Status> {
        Ok(Response::new(UnbindAccountResponse {
            state: State::Unspecified as i32,
            vendor_ref: "wrong-2".to_owned(),
            detail: String::new(),
        }))
    }

    async fn notify_numbers_recycled(
        &self,
        _request: Request<NotifyNumbersRecycledRequest>,
    ) -> Result<Response<NotifyNumbersRecycledResponse>, Status> {
        let mut batches = self.batches.lock().unwrap();
        *batches += 1;
        if *batches > 1 {
            return Err(Status::failed_precondition("batch already received"));
        }
        Ok(Response::new(NotifyNumbersRecycledResponse { accepted: 1 }))
    }
}

#[tokio::test]
async fn nothing_printed_uses_the_gateways_own_words() {
    let mut printed = Vec::new();

    // Every check passing, the destructive ones included, as a table and as JSON.
    let simulator = Simulator::start(SimulatorConfig {
        apps: 20,
        behaviour: Behaviour {
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
    ])
    .await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    printed.push(run);
    let (_, other_endpoint, _) = app_with_account(&simulator, position(&simulator, &app_id) + 1);
    // Read-only and without --phone: the skipped checks say why.
    for args in [
        vec!["--endpoint", other_endpoint.as_str(), "--json"],
        vec!["--endpoint", other_endpoint.as_str()],
    ] {
        let run = check_adapter(&args).await;
        assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
        printed.push(run);
    }
    simulator.shutdown().await;

    // Failing checks: the broken adapter and the one that gets nearly everything wrong.
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
    printed.push(run);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        Server::builder()
            .add_service(AppAdapterServer::new(WrongAdapter::default()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let run = check_adapter(&[
        "--endpoint",
        &endpoint,
        "--phone",
        PHONE,
        "--unbind-account",
        WRONG_ACCOUNT,
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
        ("accounts-stable", "FAIL"),
        ("status-unknown-key", "FAIL"),
        ("recycled-empty-batch", "FAIL"),
        ("recycled-batch-replay", "FAIL"),
        ("concurrency", "FAIL"),
        ("unbind-answer", "PASS"),
        ("unbind-idempotent", "FAIL"),
        ("unbind-status", "FAIL"),
        ("unbind-removes-account", "FAIL"),
    ]
    .into_iter()
    .map(|(c, r)| (c.to_owned(), r.to_owned()))
    .collect();
    assert_eq!(run.table(), expected, "{}", run.stdout);
    let accounts = run.line("accounts-well-formed");
    for problem in [
        "empty account_id",
        "repeat an account_id",
        "over 2813 bytes",
        "unmasked display_hint",
        "without bound_at",
        "bound_at in the future",
        "implausible bound_at",
    ] {
        assert!(accounts.contains(problem), "{problem:?}: {accounts}");
    }
    assert!(run.line("status-unknown-key").contains("NOT_FOUND"));
    run.assert_private(&[RAW, WRONG_ACCOUNT]);
    printed.push(run);

    // Nothing listens: `reachable` fails, the rest is skipped.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let run = check_adapter(&[
        "--endpoint",
        &format!("http://127.0.0.1:{port}"),
        "--phone",
        PHONE,
        "--timeout",
        "2s",
    ])
    .await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    printed.push(run);

    // And the help.
    let run = check_adapter(&["--help"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    printed.push(run);

    for run in &printed {
        let text = format!("{}\n{}", run.stdout, run.stderr);
        let found = jargon_in(&text);
        assert!(found.is_empty(), "{found:?} in:\n{text}");
    }
    // The help says where a test account to unbind can be had.
    let help = &printed[printed.len() - 1].stdout;
    assert!(
        help.contains("simulate-apps --print-test-account"),
        "{help}"
    );
    assert_eq!(
        jargon_in("a sealed account ref; Tickets, please"),
        ["seal", "account ref", "ticket"]
    );
}
