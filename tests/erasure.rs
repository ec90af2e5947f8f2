//! `unbind-gateway erase --number`: after a full flow for a number (verifications, look-ups with
//! their summary SMS, an unbind ticket and its events under an idempotency key, a carrier push
//! naming it), every table is searched afterwards: nothing about the number is left but its
//! audit records (keyed hash only); another number's rows are untouched; the replica forgets its
//! cached answers; what the command prints is counts, never the number.

mod common;

use std::time::Duration;

use common::*;
use prost_types::Timestamp;
use unbind_gateway::{
    domain::E164,
    proto::{
        ListLinkedAccountsRequest, RecycledNumber, SubmitRecycledNumbersRequest, UnbindRequest,
        carrier_push_client::CarrierPushClient,
    },
};

async fn rows(url: &str, sql: &str, bind: &str) -> i64 {
    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(url).await.unwrap();
    let (n,): (i64,) = sqlx::query_as(sql)
        .bind(bind.to_owned())
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_number_leaves_only_its_audit_records() {
    let h = Harness::start(Options {
        apps: 3,
        tweak: |c| {
            with_admin(c);
            c.unbind.worker = false;
        },
        ..Options::default()
    })
    .await;
    let url = h.stack.config.store.url.clone();
    let keys = h.stack.config.keyring().unwrap();
    let hash = keys.number_hash(&E164::parse(PHONE).unwrap()).hex();
    let other = keys.number_hash(&E164::parse(OTHER_PHONE).unwrap()).hex();

    let token = h.session().await;
    h.session_for(OTHER_PHONE, OTHER_ID).await;
    let mut client = h.client().await;
    let lister = client.clone();
    let list = |token: String| {
        let mut client = lister.clone();
        async move {
            client
                .list_linked_accounts(ListLinkedAccountsRequest {
                    session_token: token,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let accounts = list(token.clone()).await.accounts;
    let account = accounts.iter().find(|a| a.unbind_supported).unwrap();
    client
        .unbind(UnbindRequest {
            session_token: token.clone(),
            account_refs: vec![account.account_ref.clone()],
            idempotency_key: "erase-me".into(),
        })
        .await
        .unwrap();
    let ts = |s| {
        Some(Timestamp {
            seconds: s,
            nanos: 0,
        })
    };
    CarrierPushClient::connect(h.endpoint())
        .await
        .unwrap()
        .submit_recycled_numbers(tokio_stream::iter([SubmitRecycledNumbersRequest {
            numbers: [PHONE, OTHER_PHONE]
                .map(|p| RecycledNumber {
                    phone_number: p.into(),
                    cancelled_at: ts(1_735_689_600),
                    reissued_at: ts(1_738_368_000),
                })
                .to_vec(),
            submission_key: "erase".into(),
        }]))
        .await
        .unwrap();
    // Cached: a second look-up asks no app.
    let calls = h.simulator.total_find_calls();
    list(token.clone()).await;
    assert_eq!(h.simulator.total_find_calls(), calls);
    h.stack
        .gateway
        .as_ref()
        .unwrap()
        .gateway
        .audit
        .flush()
        .await;

    let by_number = [
        "SELECT COUNT(*) FROM verifications WHERE number_hash = $1",
        "SELECT COUNT(*) FROM tickets WHERE number_hash = $1",
        "SELECT COUNT(*) FROM ticket_events WHERE ticket_id IN (SELECT id FROM tickets WHERE number_hash = $1)",
        "SELECT COUNT(*) FROM submission_numbers WHERE number_hash = $1",
        "SELECT COUNT(*) FROM recycled_numbers WHERE number_hash = $1",
    ];
    for sql in by_number {
        assert!(rows(&url, sql, &hash).await > 0, "nothing to erase: {sql}");
    }
    assert_eq!(
        rows(
            &url,
            "SELECT COUNT(*) FROM unbind_requests WHERE idempotency_key = $1",
            "erase-me"
        )
        .await,
        1
    );
    let audit = "SELECT COUNT(*) FROM audit_log WHERE number_hash = $1";
    let audited = rows(&url, audit, &hash).await;
    let other_before: Vec<i64> = {
        let mut v = Vec::new();
        for sql in by_number {
            v.push(rows(&url, sql, &other).await);
        }
        v
    };

    // The command, as an operator runs it, against this replica's admin endpoint.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, toml::to_string(&h.stack.config).unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_unbind-gateway"))
        .args(["erase", "--config"])
        .arg(&config)
        .args(["--number", PHONE, "--admin"])
        .arg(admin_addr(&h).to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("unbind tickets"), "{stdout}");
    assert!(stdout.contains("audit records kept"), "{stdout}");
    assert!(stdout.contains("forgotten"), "{stdout}");
    assert!(
        !stdout.contains(PHONE_BARE),
        "the number was printed: {stdout}"
    );
    assert!(
        !stdout.contains(&hash),
        "the whole hash was printed: {stdout}"
    );

    for sql in by_number {
        assert_eq!(rows(&url, sql, &hash).await, 0, "left after erasure: {sql}");
    }
    assert_eq!(
        rows(
            &url,
            "SELECT COUNT(*) FROM unbind_requests WHERE idempotency_key = $1",
            "erase-me"
        )
        .await,
        0
    );
    assert_eq!(
        rows(&url, audit, &hash).await,
        audited,
        "the audit records are kept"
    );
    for (sql, before) in by_number.iter().zip(other_before) {
        assert_eq!(
            rows(&url, sql, &other).await,
            before,
            "another number's rows: {sql}"
        );
    }
    // The replica forgot its cached answers: the next look-up asks the apps again.
    let calls = h.simulator.total_find_calls();
    list(token).await;
    assert!(h.simulator.total_find_calls() > calls);

    // A bad number is refused without echoing it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_unbind-gateway"))
        .args(["erase", "--config"])
        .arg(&config)
        .args(["--number", "1380013800x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--number") && !err.contains("1380013800x"),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    h.stop().await;
}
