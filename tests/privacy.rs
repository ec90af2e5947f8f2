//! No leaks: a full flow (verification with right and wrong ID characters, wrong codes, look-ups,
//! the stream, the SMS summary, bad input) with every log line of every crate captured at TRACE;
//! no raw phone number, ID characters, code or session token may appear in any of them, nor in
//! any error message the caller receives.

mod common;

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use common::*;
use futures::StreamExt;
use unbind_gateway::proto::{
    CompleteVerificationRequest, GetUnbindTicketsRequest, ListLinkedAccountsRequest,
    StartVerificationRequest, UnbindRequest,
};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether `needle` occurs in `hay` as a whole number (no digit right before or after).
fn contains_number(hay: &str, needle: &str) -> bool {
    hay.match_indices(needle).any(|(i, _)| {
        let before = hay[..i].chars().next_back();
        let after = hay[i + needle.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit()) && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_line_or_an_error_message() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .without_time()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let h = Harness::start(Options {
        apps: 20,
        tweak: |c| {
            c.unbind.poll_interval = std::time::Duration::from_millis(20);
            c.unbind.sms_window = std::time::Duration::from_millis(50);
        },
        ..Options::default()
    })
    .await;
    let mut errors = Vec::new();
    let mut client = h.client().await;

    // Wrong ID characters, a malformed number that contains the real one, a malformed ID.
    client
        .start_verification(StartVerificationRequest {
            phone_number: PHONE.into(),
            id_last_six: "29999X".into(),
        })
        .await
        .unwrap();
    for (phone, id) in [
        (format!("{PHONE_BARE}9"), ID_LAST_SIX.to_owned()),
        (PHONE.to_owned(), format!("{ID_LAST_SIX}7")),
    ] {
        errors.push(
            client
                .start_verification(StartVerificationRequest {
                    phone_number: phone,
                    id_last_six: id,
                })
                .await
                .unwrap_err(),
        );
    }
    // The real flow, with a wrong code first.
    let verification_id = client
        .start_verification(StartVerificationRequest {
            phone_number: PHONE_BARE.into(),
            id_last_six: ID_LAST_SIX.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .verification_id;
    let code = h.wait_for_code(PHONE, 1).await;
    let wrong = if code == "000000" { "000001" } else { "000000" };
    errors.push(
        client
            .complete_verification(CompleteVerificationRequest {
                verification_id: verification_id.clone(),
                code: wrong.into(),
            })
            .await
            .unwrap_err(),
    );
    let token = client
        .complete_verification(CompleteVerificationRequest {
            verification_id,
            code: code.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .session_token;
    let answer = client
        .list_linked_accounts(ListLinkedAccountsRequest {
            session_token: token.clone(),
            deliver_by_sms: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(answer.total_accounts > 0);
    let mut stream = client
        .stream_linked_accounts(ListLinkedAccountsRequest {
            session_token: token.clone(),
            bypass_cache: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(r) = stream.next().await {
        r.unwrap();
    }
    errors.push(
        client
            .list_linked_accounts(ListLinkedAccountsRequest {
                session_token: format!("{token}x"),
                ..Default::default()
            })
            .await
            .unwrap_err(),
    );
    // Unbinding: the worker carries the tickets to the apps and sends the outcome SMS.
    let refs: Vec<String> = answer
        .accounts
        .iter()
        .filter(|a| a.unbind_supported)
        .map(|a| a.account_ref.clone())
        .take(3)
        .collect();
    let tickets = client
        .unbind(UnbindRequest {
            session_token: token.clone(),
            account_refs: refs,
            idempotency_key: "privacy".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tickets;
    let ids: Vec<String> = tickets.iter().map(|t| t.ticket_id.clone()).collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let now = client
            .get_unbind_tickets(GetUnbindTicketsRequest {
                ticket_ids: ids.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .tickets;
        let completed = unbind_gateway::proto::unbind_ticket::State::Completed as i32;
        if now.iter().all(|t| t.state == completed) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tickets did not complete"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Let the outcome SMS (gathered over a window) go out while logs are captured.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !unbind_gateway::testkit::simulated_registry::read_sms_file(&h.sms_file)
        .unwrap_or_default()
        .iter()
        .any(|m| m.text.contains("was unbound"))
    {
        assert!(std::time::Instant::now() < deadline, "no outcome SMS");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    h.stop().await;

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("verification completed"), "the capture works");
    assert!(logs.contains("138****8000"), "numbers are logged masked");
    // Each adapter call has its span, a child of the request's, with app, outcome and latency.
    assert!(
        logs.lines().any(
            |l| l.contains("rpc{method=/unbind.v1.AccountGateway/ListLinkedAccounts")
                && l.contains("app_call{app=app-")
                && l.contains("outcome=")
                && l.contains("answered")
                && l.contains("latency_ms=")
        ),
        "no app_call span in the logs: {:?}",
        logs.lines()
            .filter(|l| l.contains("adapter call"))
            .take(3)
            .collect::<Vec<_>>()
    );
    let messages: String = errors.iter().map(|e| format!("{e:?}\n")).collect();
    for (what, text) in [("logs", &logs), ("errors", &messages)] {
        for secret in [PHONE_BARE, ID_LAST_SIX, "12345x", "29999X"] {
            assert!(!text.contains(secret), "{what} contain {secret}");
        }
        assert!(!contains_number(text, &code), "{what} contain the code");
        assert!(
            !text.contains(&token[..40]),
            "{what} contain the session token"
        );
    }
}
