//! End-to-end checks of the simulated app adapters and the embedded subscriber registry, over real
//! gRPC on loopback: what the demo, the other tests and the benchmarks build on.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use unbind_gateway::proto::app_adapter_client::AppAdapterClient;
use unbind_gateway::proto::subscriber_registry_client::SubscriberRegistryClient;
use unbind_gateway::proto::unbind_account_request::Reason;
use unbind_gateway::proto::unbind_account_response::State;
use unbind_gateway::proto::{
    FindAccountsRequest, GetUnbindStatusRequest, NotifyNumbersRecycledRequest, RecycledNumber,
    SendSmsRequest, UnbindAccountRequest, VerifySubscriberRequest,
};
use unbind_gateway::testkit::simulated_apps::{
    Behaviour, Latency, Simulator, SimulatorConfig, accounts_for,
};
use unbind_gateway::testkit::simulated_registry::{
    SimulatedRegistry, SimulatedRegistryOptions, Subscriber, read_sms_file,
};

const PHONE: &str = "+8613800138000";

/// A client that connects on first use, so a refused connection shows up as a call's status.
fn adapter(endpoint: &str) -> AppAdapterClient<Channel> {
    let channel = Endpoint::from_shared(endpoint.to_owned())
        .expect("a valid endpoint")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    AppAdapterClient::new(channel)
}

async fn start(apps: usize, behaviour: Behaviour) -> Simulator {
    Simulator::start(SimulatorConfig {
        apps,
        seed: 42,
        behaviour,
        bind_ip: "127.0.0.1".parse().expect("an IP"),
        base_port: None,
    })
    .await
    .expect("the simulator starts")
}

fn find(phone: &str) -> FindAccountsRequest {
    FindAccountsRequest {
        request_id: "req-1".to_owned(),
        phone_number: phone.to_owned(),
    }
}

fn unbind(key: &str, account_id: &str, phone: &str) -> UnbindAccountRequest {
    UnbindAccountRequest {
        request_id: format!("req-{key}"),
        idempotency_key: key.to_owned(),
        account_id: account_id.to_owned(),
        phone_number: phone.to_owned(),
        reason: Reason::HolderRequest as i32,
    }
}

/// A (app, phone) pair holding at least one account that can be unbound online.
fn unbindable(sim: &Simulator) -> (String, String, String) {
    for i in 0..10_000u64 {
        let phone = format!("+86139{:08}", i);
        for app in sim.apps() {
            if let Some(account) = accounts_for(sim.seed(), &app.id, &phone)
                .into_iter()
                .find(|a| a.unbind_supported)
            {
                return (app.id, phone, account.account_id);
            }
        }
    }
    panic!("no unbindable account among 10,000 numbers");
}

#[tokio::test]
async fn apps_have_catalog_entries_and_distinct_ports() {
    let sim = start(3, Behaviour::default()).await;
    let apps = sim.apps();
    let ids: Vec<&str> = apps.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["app-001", "app-002", "app-003"]);
    assert_eq!(apps[0].name, "Sim Pay 1");
    assert_eq!(apps[0].category, "payments");
    assert_eq!(apps[0].customer_service, "+86 400-800-0001");
    let endpoints: Vec<&str> = apps.iter().map(|a| a.endpoint.as_str()).collect();
    assert!(endpoints.iter().all(|e| e.starts_with("http://127.0.0.1:")));
    let distinct: std::collections::HashSet<&str> = endpoints.iter().copied().collect();
    assert_eq!(distinct.len(), 3, "{endpoints:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn find_accounts_answers_deterministically() {
    let sim = start(3, Behaviour::default()).await;
    let mut total = 0;
    for app in sim.apps() {
        let mut client = adapter(&app.endpoint);
        for i in 0..20 {
            let phone = format!("+86138{:08}", i * 37);
            let answer = client
                .find_accounts(find(&phone))
                .await
                .expect("FindAccounts answers")
                .into_inner();
            assert_eq!(answer.accounts, accounts_for(42, &app.id, &phone));
            total += answer.accounts.len();
        }
        assert_eq!(sim.stats(&app.id).find_calls, 20);
    }
    assert!(total > 0, "60 look-ups found no account at all");
    assert_eq!(sim.total_find_calls(), 60);

    let mut client = adapter(&sim.apps()[0].endpoint);
    let error = client
        .find_accounts(find("13800138000"))
        .await
        .expect_err("a number without '+' is refused");
    assert_eq!(error.code(), Code::InvalidArgument);

    sim.reset_stats();
    assert_eq!(sim.total_find_calls(), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn unbind_is_idempotent_and_removes_the_account() {
    let sim = start(3, Behaviour::default()).await;
    let (app_id, phone, account_id) = unbindable(&sim);
    let endpoint = sim
        .apps()
        .into_iter()
        .find(|a| a.id == app_id)
        .map(|a| a.endpoint)
        .expect("the app exists");
    let mut client = adapter(&endpoint);

    let first = client
        .unbind_account(unbind("key-1", &account_id, &phone))
        .await
        .expect("UnbindAccount answers")
        .into_inner();
    let again = client
        .unbind_account(unbind("key-1", &account_id, &phone))
        .await
        .expect("UnbindAccount answers")
        .into_inner();
    assert_eq!(first.state, State::Done as i32);
    assert_eq!(first, again);
    let stats = sim.stats(&app_id);
    assert_eq!(stats.unbind_calls, 2);
    assert_eq!(stats.unbind_keys, ["key-1"]);

    // The account is gone from the look-up.
    let left = client
        .find_accounts(find(&phone))
        .await
        .expect("FindAccounts answers")
        .into_inner();
    assert!(left.accounts.iter().all(|a| a.account_id != account_id));

    // An account the app does not hold is refused, with a reason.
    let unknown = client
        .unbind_account(unbind("key-2", "acct-0000000000000000", &phone))
        .await
        .expect("UnbindAccount answers")
        .into_inner();
    assert_eq!(unknown.state, State::Rejected as i32);
    assert!(!unknown.detail.is_empty());

    // The status of an unknown unbind is NOT_FOUND.
    let error = client
        .get_unbind_status(GetUnbindStatusRequest {
            vendor_ref: "sim-nope".to_owned(),
            idempotency_key: String::new(),
        })
        .await
        .expect_err("an unknown reference");
    assert_eq!(error.code(), Code::NotFound);
    sim.shutdown().await;
}

#[tokio::test]
async fn accepted_unbind_becomes_done_after_the_completion_delay() {
    let sim = start(
        3,
        Behaviour {
            unbind_completion: Duration::from_millis(200),
            ..Behaviour::default()
        },
    )
    .await;
    let (app_id, phone, account_id) = unbindable(&sim);
    let endpoint = sim
        .apps()
        .into_iter()
        .find(|a| a.id == app_id)
        .map(|a| a.endpoint)
        .expect("the app exists");
    let mut client = adapter(&endpoint);

    let accepted = client
        .unbind_account(unbind("key-a", &account_id, &phone))
        .await
        .expect("UnbindAccount answers")
        .into_inner();
    assert_eq!(accepted.state, State::Accepted as i32);
    assert!(!accepted.vendor_ref.is_empty());

    // Still listed until it is done.
    let listed = client
        .find_accounts(find(&phone))
        .await
        .expect("FindAccounts answers")
        .into_inner();
    assert!(listed.accounts.iter().any(|a| a.account_id == account_id));

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = client
            .get_unbind_status(GetUnbindStatusRequest {
                vendor_ref: accepted.vendor_ref.clone(),
                idempotency_key: String::new(),
            })
            .await
            .expect("GetUnbindStatus answers")
            .into_inner();
        if status.state == State::Done as i32 {
            assert_eq!(status.vendor_ref, accepted.vendor_ref);
            break;
        }
        assert_eq!(status.state, State::Accepted as i32);
        assert!(Instant::now() < deadline, "the unbind never completed");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // By idempotency key too.
    let by_key = client
        .get_unbind_status(GetUnbindStatusRequest {
            vendor_ref: String::new(),
            idempotency_key: "key-a".to_owned(),
        })
        .await
        .expect("GetUnbindStatus answers")
        .into_inner();
    assert_eq!(by_key.state, State::Done as i32);

    let listed = client
        .find_accounts(find(&phone))
        .await
        .expect("FindAccounts answers")
        .into_inner();
    assert!(listed.accounts.iter().all(|a| a.account_id != account_id));
    assert!(sim.stats(&app_id).status_calls >= 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn errors_and_stalls_follow_the_behaviour() {
    let sim = start(3, Behaviour::default()).await;
    let app = sim.apps()[1].clone();
    let mut client = adapter(&app.endpoint);

    sim.set_behaviour(
        &app.id,
        Behaviour {
            error_rate: 1.0,
            ..Behaviour::default()
        },
    );
    let error = client
        .find_accounts(find(PHONE))
        .await
        .expect_err("always failing");
    assert_eq!(error.code(), Code::Internal);

    sim.set_behaviour(
        &app.id,
        Behaviour {
            stall_rate: 1.0,
            ..Behaviour::default()
        },
    );
    let mut request = tonic::Request::new(find(PHONE));
    request.set_timeout(Duration::from_millis(200));
    let error = client
        .find_accounts(request)
        .await
        .expect_err("never answering");
    // tonic's server ends a call whose `grpc-timeout` passed with CANCELLED; the client's own
    // timer would say DEADLINE_EXCEEDED. Either way the deadline ended it.
    assert!(
        matches!(error.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{error:?}"
    );

    // Stopping an app with a stalled call in flight does not hang.
    let calls_before = sim.stats(&app.id).find_calls;
    let stalled = tokio::spawn({
        let mut client = client.clone();
        async move { client.find_accounts(find(PHONE)).await }
    });
    // Once the call has reached the app (not after a guessed pause).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sim.stats(&app.id).find_calls < calls_before + 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the call never reached the app"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::timeout(Duration::from_secs(5), sim.stop_app(&app.id))
        .await
        .expect("stop_app ends stalled calls");
    let outcome = stalled.await.expect("the call task ends");
    assert!(outcome.is_err());

    sim.set_behaviour(&app.id, Behaviour::default());
    sim.start_app(&app.id).await.expect("restarts");
    client
        .find_accounts(find(PHONE))
        .await
        .expect("answers again");
    sim.shutdown().await;
}

#[tokio::test]
async fn stopped_apps_refuse_connections_and_restart_on_the_same_port() {
    let sim = start(3, Behaviour::default()).await;
    let app = sim.apps()[2].clone();
    let mut client = adapter(&app.endpoint);
    client
        .find_accounts(find(PHONE))
        .await
        .expect("answers while running");

    sim.stop_app(&app.id).await;
    assert!(!sim.is_running(&app.id).await);
    let error = adapter(&app.endpoint)
        .find_accounts(find(PHONE))
        .await
        .expect_err("refused while stopped");
    assert_eq!(error.code(), Code::Unavailable);
    // The connection the old client held is gone too.
    let error = client
        .find_accounts(find(PHONE))
        .await
        .expect_err("refused while stopped");
    assert_eq!(error.code(), Code::Unavailable);

    sim.start_app(&app.id).await.expect("restarts");
    let answer = adapter(&app.endpoint)
        .find_accounts(find(PHONE))
        .await
        .expect("answers again on the same port")
        .into_inner();
    assert_eq!(answer.accounts, accounts_for(42, &app.id, PHONE));
    // Other apps were never affected.
    adapter(&sim.apps()[0].endpoint)
        .find_accounts(find(PHONE))
        .await
        .expect("another app answers");
    sim.shutdown().await;
}

#[tokio::test]
async fn recycled_number_batches_are_idempotent() {
    let sim = start(3, Behaviour::default()).await;
    let app = sim.apps()[0].clone();
    let mut client = adapter(&app.endpoint);
    let batch = NotifyNumbersRecycledRequest {
        batch_id: "batch-1".to_owned(),
        numbers: vec![
            RecycledNumber {
                phone_number: PHONE.to_owned(),
                cancelled_at: None,
                reissued_at: None,
            },
            RecycledNumber {
                phone_number: "+8613900139000".to_owned(),
                cancelled_at: None,
                reissued_at: None,
            },
        ],
    };
    for _ in 0..2 {
        let answer = client
            .notify_numbers_recycled(batch.clone())
            .await
            .expect("NotifyNumbersRecycled answers")
            .into_inner();
        assert_eq!(answer.accepted, 2);
    }
    let stats = sim.stats(&app.id);
    assert_eq!(stats.notify_calls, 2);
    assert_eq!(stats.notified_batches, ["batch-1"]);
    sim.shutdown().await;
}

#[tokio::test]
async fn embedded_registry_round_trip() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let sms_file = dir.path().join("sms.jsonl");
    let holder_since = chrono::DateTime::parse_from_rfc3339("2024-03-01T00:00:00Z")
        .expect("a time")
        .with_timezone(&chrono::Utc);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let registry = SimulatedRegistry::start(
        SimulatedRegistryOptions {
            subscribers: vec![Subscriber::new(PHONE, "12345X", holder_since).unwrap()],
            sms_file: sms_file.clone(),
            echo_sms: false,
        },
        listener,
    )
    .await
    .expect("the registry starts");
    assert!(registry.endpoint().starts_with("http://127.0.0.1:"));
    let mut client = SubscriberRegistryClient::connect(registry.endpoint())
        .await
        .expect("connects");

    let verify = |phone: &str, id: &str| VerifySubscriberRequest {
        phone_number: phone.to_owned(),
        id_last_six: id.to_owned(),
    };
    let matched = client
        .verify_subscriber(verify(PHONE, "12345x"))
        .await
        .expect("answers")
        .into_inner();
    assert!(matched.matched);
    assert_eq!(
        matched.holder_since.map(|t| t.seconds),
        Some(holder_since.timestamp())
    );
    for (phone, id) in [
        (PHONE, "12345Y"),
        (PHONE, "123456"),
        ("+8613900139000", "12345X"),
    ] {
        let answer = client
            .verify_subscriber(verify(phone, id))
            .await
            .expect("a mismatch is an answer, not an error")
            .into_inner();
        assert!(!answer.matched);
        assert!(answer.holder_since.is_none());
    }
    assert_eq!(registry.verify_calls(), 4);

    let sent = client
        .send_sms(SendSmsRequest {
            phone_number: PHONE.to_owned(),
            template: "verification_code".to_owned(),
            params: HashMap::from([
                ("code".to_owned(), "482913".to_owned()),
                ("minutes".to_owned(), "5".to_owned()),
            ]),
        })
        .await
        .expect("SendSms answers")
        .into_inner();
    let again = client
        .send_sms(SendSmsRequest {
            phone_number: PHONE.to_owned(),
            template: "lookup_summary".to_owned(),
            params: HashMap::from([("summary".to_owned(), "3 accounts in 2 apps".to_owned())]),
        })
        .await
        .expect("SendSms answers")
        .into_inner();
    assert!(!sent.message_id.is_empty());
    assert_ne!(sent.message_id, again.message_id);

    let error = client
        .send_sms(SendSmsRequest {
            phone_number: PHONE.to_owned(),
            template: "promotion".to_owned(),
            params: HashMap::new(),
        })
        .await
        .expect_err("an unknown template");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(registry.sms_calls(), 3);

    let messages = read_sms_file(&sms_file).expect("the SMS file reads");
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0].phone_number, PHONE);
    assert_eq!(
        messages[0].text,
        "[unbind] Your verification code is 482913. It expires in 5 minutes. Never share it."
    );
    assert_eq!(messages[1].text, "[unbind] 3 accounts in 2 apps");
    assert!(chrono::DateTime::parse_from_rfc3339(&messages[0].sent_at).is_ok());

    registry.shutdown().await;
}

/// The simulator keeps time with `tokio::time`, so tests that pause the clock get long latencies
/// and completion delays without waiting for them.
#[tokio::test(start_paused = true)]
async fn latency_and_completion_follow_a_paused_clock() {
    let sim = start(
        1,
        Behaviour {
            latency: Latency::Fixed(Duration::from_secs(30)),
            unbind_completion: Duration::from_secs(3600),
            ..Behaviour::default()
        },
    )
    .await;
    let (app_id, phone, account_id) = unbindable(&sim);
    // No client-side timeouts: with the clock paused they would fire as soon as the runtime idles.
    let channel = Endpoint::from_shared(sim.apps()[0].endpoint.clone())
        .expect("a valid endpoint")
        .connect_lazy();
    let mut client = AppAdapterClient::new(channel);

    let started = Instant::now();
    client
        .find_accounts(find(&phone))
        .await
        .expect("FindAccounts answers");
    assert!(started.elapsed() >= Duration::from_secs(30));

    let accepted = client
        .unbind_account(unbind("key-p", &account_id, &phone))
        .await
        .expect("UnbindAccount answers")
        .into_inner();
    assert_eq!(accepted.state, State::Accepted as i32);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let status = client
        .get_unbind_status(GetUnbindStatusRequest {
            vendor_ref: accepted.vendor_ref,
            idempotency_key: String::new(),
        })
        .await
        .expect("GetUnbindStatus answers")
        .into_inner();
    assert_eq!(status.state, State::Done as i32);
    assert_eq!(sim.stats(&app_id).unbind_keys, ["key-p"]);
    sim.shutdown().await;
}

/// What `unbind-gateway simulate-apps ARGS` printed up to the line saying it serves, and the
/// process (killed when dropped); or, if it exits first, everything it printed and its status.
async fn simulate_apps(
    args: &[&str],
) -> (
    Vec<String>,
    Result<tokio::process::Child, (Option<i32>, String)>,
) {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_unbind-gateway"))
        .args(["simulate-apps", "--base-port", "0", "--latency", "0s"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    let limit = Duration::from_secs(60);
    loop {
        let line = tokio::time::timeout(limit, lines.next_line())
            .await
            .expect("simulate-apps printed in time")
            .expect("stdout is readable");
        let Some(line) = line else {
            let status = tokio::time::timeout(limit, child.wait())
                .await
                .expect("simulate-apps exited in time")
                .expect("an exit status");
            let mut stderr = String::new();
            let _ = child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .await;
            return (printed, Err((status.code(), stderr)));
        };
        let serving = line.starts_with("Serving");
        printed.push(line);
        if serving {
            return (printed, Ok(child));
        }
    }
}

/// The (app id, endpoint, account id) rows of `--print-test-account`.
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
async fn simulate_apps_prints_a_test_account_each_app_really_holds() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let catalog = dir.path().join("apps.toml");
    let catalog = catalog.to_str().expect("a UTF-8 path");
    // The bare national form is accepted, as everywhere a person types a number.
    let (printed, child) = simulate_apps(&[
        "--apps",
        "20",
        "--catalog-out",
        catalog,
        "--print-test-account",
        "13800138000",
    ])
    .await;
    let text = printed.join("\n");
    let child = child.unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    assert!(text.contains("138****8000"), "{text}");
    assert!(!text.contains("13800138000"), "{text}");
    assert!(text.contains("check-adapter"), "{text}");
    let rows = test_account_rows(&printed);
    // Exactly the apps that hold an account for the number they can unbind, in id order.
    let expected: Vec<String> = (1..=20)
        .map(|n| format!("app-{n:03}"))
        .filter(|id| {
            accounts_for(42, id, PHONE)
                .iter()
                .any(|a| a.unbind_supported)
        })
        .collect();
    assert!(!expected.is_empty());
    let apps: Vec<&str> = rows.iter().map(|(app, _, _)| app.as_str()).collect();
    assert_eq!(apps, expected, "{text}");
    // Each is really listed by that app, and can be unbound.
    for (_, endpoint, account_id) in &rows {
        let listed = adapter(endpoint)
            .find_accounts(find(PHONE))
            .await
            .expect("FindAccounts answers")
            .into_inner()
            .accounts;
        assert!(
            listed
                .iter()
                .any(|a| &a.account_id == account_id && a.unbind_supported),
            "{endpoint}: {text}"
        );
    }
    drop(child);

    // --app: that app only; an app that holds none says so; an unknown app is refused.
    let holder = &expected[0];
    let (printed, child) = simulate_apps(&[
        "--apps",
        "20",
        "--catalog-out",
        catalog,
        "--print-test-account",
        PHONE,
        "--app",
        holder,
    ])
    .await;
    let text = printed.join("\n");
    let _child = child.unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    let rows = test_account_rows(&printed);
    assert_eq!(rows.len(), 1, "{text}");
    assert_eq!(&rows[0].0, holder);

    let empty = (1..=20)
        .map(|n| format!("app-{n:03}"))
        .find(|id| !expected.contains(id))
        .expect("some app holds no account for the number");
    let (printed, child) = simulate_apps(&[
        "--apps",
        "20",
        "--catalog-out",
        catalog,
        "--print-test-account",
        PHONE,
        "--app",
        &empty,
    ])
    .await;
    let text = printed.join("\n");
    let _child = child.unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    assert!(test_account_rows(&printed).is_empty(), "{text}");
    assert!(
        printed
            .iter()
            .any(|l| l.contains(&empty) && l.contains("no account")),
        "{text}"
    );

    let (printed, exited) = simulate_apps(&[
        "--apps",
        "20",
        "--catalog-out",
        catalog,
        "--print-test-account",
        PHONE,
        "--app",
        "app-999",
    ])
    .await;
    let (code, stderr) = exited.expect_err("an unknown app is refused");
    assert_ne!(code, Some(0), "{printed:?}");
    assert!(stderr.contains("app-999"), "{stderr}");
    // --app without --print-test-account is a usage error.
    let (_, exited) = simulate_apps(&["--apps", "2", "--app", "app-001"]).await;
    assert_eq!(exited.expect_err("refused").0, Some(2));
}

#[tokio::test]
async fn the_test_account_is_one_nobody_asked_to_unbind_yet() {
    let sim = start(20, Behaviour::default()).await;
    let app = sim
        .apps()
        .into_iter()
        .find(|app| sim.test_account(&app.id, PHONE).is_some())
        .expect("some app holds an account for the number");
    let first = sim.test_account(&app.id, PHONE).unwrap();
    let listed = accounts_for(sim.seed(), &app.id, PHONE);
    assert!(
        listed
            .iter()
            .any(|a| a.account_id == first && a.unbind_supported)
    );
    assert_eq!(sim.test_account("app-999", PHONE), None);
    assert_eq!(sim.test_account(&app.id, "+8613800138001").is_some(), {
        accounts_for(sim.seed(), &app.id, "+8613800138001")
            .iter()
            .any(|a| a.unbind_supported)
    });

    // Once unbound, it is no longer offered: the next one is, or none.
    adapter(&app.endpoint)
        .unbind_account(unbind("key-test", &first, PHONE))
        .await
        .expect("UnbindAccount answers");
    let next = sim.test_account(&app.id, PHONE);
    assert_ne!(next.as_deref(), Some(first.as_str()));
    let expected = listed
        .iter()
        .find(|a| a.unbind_supported && a.account_id != first)
        .map(|a| a.account_id.clone());
    assert_eq!(next, expected);
    sim.shutdown().await;
}

/// Starts `unbind-gateway ARGS` with its stdout and stderr closed before it writes anything (a log
/// collector gone, the output piped into `head`), waits until `port` takes connections, and
/// panics if the process ends then or in the half second after, when its banner is printed.
async fn serves_with_stdout_closed(args: &[&str], port: u16) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_unbind-gateway"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    drop((child.stdout.take(), child.stderr.take()));
    let deadline = Instant::now() + Duration::from_secs(30);
    let ended = |status| panic!("`{}` ended ({status}) when its output was closed", args[0]);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            ended(status);
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "`{}` did not serve in 30 s",
            args[0]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Some(status) = child.try_wait().unwrap() {
        ended(status);
    }
    let _ = child.kill().await;
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The development services keep serving when nobody reads their stdout or stderr any more: on main the
/// banner's `println!` panicked and ended them.
#[tokio::test]
async fn simulated_apps_and_registry_keep_serving_with_their_output_closed() {
    let port = free_port();
    serves_with_stdout_closed(
        &[
            "simulate-apps",
            "--apps",
            "1",
            "--latency",
            "0s",
            "--base-port",
            &port.to_string(),
        ],
        port,
    )
    .await;

    let dir = tempfile::tempdir().expect("a temporary directory");
    let subscribers = dir.path().join("subscribers.toml");
    std::fs::write(
        &subscribers,
        "[[subscribers]]\nphone_number = \"+8613800138000\"\nid_last_six = \"12345X\"\n\
         holder_since = \"2024-03-01\"\n",
    )
    .unwrap();
    let port = free_port();
    serves_with_stdout_closed(
        &[
            "registry",
            "--subscribers",
            subscribers.to_str().unwrap(),
            "--sms-file",
            dir.path().join("sms.jsonl").to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ],
        port,
    )
    .await;
}
