//! The audit trail: a verification (with a wrong code), a look-up and an unbind each leave a
//! record with the tenant, the number's keyed hash (never the number), the action, the apps, the
//! outcome and the caller's correlator; `unbind-gateway audit --number` finds them by number.

mod common;

use std::{process::Command, time::Duration};

use common::*;
use tonic::Request;
use unbind_gateway::{
    proto::{CompleteVerificationRequest, ListLinkedAccountsRequest, UnbindRequest},
    store::AuditFilter,
};

#[tokio::test]
async fn every_verification_lookup_and_unbind_is_audited() {
    let h = Harness::start(Options {
        apps: 10,
        ..Options::default()
    })
    .await;
    let mut client = h.client().await;
    // A wrong code first, then the right one.
    let verification_id = h.start_verification(PHONE, ID_LAST_SIX).await;
    let code = h.wait_for_code(PHONE, 1).await;
    let wrong = if code == "000000" { "000001" } else { "000000" };
    let mut req = Request::new(CompleteVerificationRequest {
        verification_id: verification_id.clone(),
        code: wrong.into(),
    });
    req.metadata_mut()
        .insert("x-correlator", "corr-wrong".parse().unwrap());
    assert!(client.complete_verification(req).await.is_err());
    let token = client
        .complete_verification(CompleteVerificationRequest {
            verification_id,
            code,
        })
        .await
        .unwrap()
        .into_inner()
        .session_token;
    let mut req = Request::new(ListLinkedAccountsRequest {
        session_token: token.clone(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("x-correlator", "corr-lookup".parse().unwrap());
    let listing = client.list_linked_accounts(req).await.unwrap().into_inner();
    assert!(
        listing.complete,
        "every app answered: {:?}",
        listing.app_results
    );
    let accounts = listing.accounts;
    let target = accounts.iter().find(|a| a.unbind_supported).unwrap();
    client
        .unbind(UnbindRequest {
            session_token: token,
            account_refs: vec![target.account_ref.clone()],
            idempotency_key: "k".into(),
        })
        .await
        .unwrap();

    let gateway = &h.stack.gateway.as_ref().unwrap().gateway;
    gateway.audit.flush().await;
    let keys = h.stack.config.keyring().unwrap();
    let number = keys
        .number_hash(&unbind_gateway::domain::E164::parse(PHONE).unwrap())
        .hex();
    let records = gateway
        .store
        .audit_records(&AuditFilter {
            since: 0,
            number_hash: Some(number.clone()),
            tenant: None,
            limit: 100,
        })
        .await
        .unwrap();
    let summary: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r.action.as_str(), r.outcome.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("verification.start", "started"),
            ("verification.complete", "invalid_code"),
            ("verification.complete", "verified"),
            (
                "lookup",
                format!("{} accounts, complete", accounts.len()).as_str()
            ),
            ("unbind", "1 tickets"),
        ]
    );
    assert!(
        records
            .iter()
            .all(|r| r.tenant == "development" && r.number_hash == number && r.at > 0)
    );
    assert_eq!(records[1].correlator, "corr-wrong");
    assert_eq!(records[3].correlator, "corr-lookup");
    assert_eq!(records[3].apps, "10 asked, 10 answered");
    assert_eq!(records[4].apps, target.app_id);

    // The command finds them by number, printing hashes only.
    let config = h.dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndevelopment = true\nsigning_secret = \"{}\"\n[store]\nurl = \"{}\"\n[registry]\nendpoint = \"http://127.0.0.1:1\"\n",
            h.stack.config.signing_secret.clone().unwrap(),
            h.stack.config.store.url
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_unbind-gateway"))
        .args(["audit", "--config"])
        .arg(&config)
        .args(["--since", "1h", "--number", PHONE_BARE])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 5, "{stdout}");
    assert!(stdout.contains("verification.complete") && stdout.contains("corr-lookup"));
    assert!(!stdout.contains(PHONE_BARE) && !stdout.contains("138****"));
    h.stop().await;
}

/// A store that refuses audit records for a while (here: their table is gone) loses none: the
/// batch is written again until the store takes it, once, and the refusals are counted.
#[tokio::test]
async fn audit_records_outlast_a_store_that_refuses_them_for_a_while() {
    use sqlx::Connection;
    let h = Harness::start(Options {
        apps: 3,
        tweak: with_admin,
        ..Options::default()
    })
    .await;
    let token = h.session().await;
    let gateway = &h.stack.gateway.as_ref().unwrap().gateway;
    gateway.audit.flush().await;
    let mut db = sqlx::SqliteConnection::connect(&h.stack.config.store.url)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE audit_log RENAME TO audit_log_away")
        .execute(&mut db)
        .await
        .unwrap();

    let mut req = Request::new(ListLinkedAccountsRequest {
        session_token: token,
        ..Default::default()
    });
    req.metadata_mut()
        .insert("x-correlator", "corr-held".parse().unwrap());
    h.client().await.list_linked_accounts(req).await.unwrap();
    // The writer tries, is refused, and keeps the record.
    let admin = admin_addr(&h);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = http_get(admin, "/metrics").await;
        if metric(&text, "unbind_audit_write_failures_total").unwrap_or(0.0) >= 2.0 {
            assert_eq!(metric(&text, "unbind_audit_records_lost_total"), Some(0.0));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    sqlx::query("ALTER TABLE audit_log_away RENAME TO audit_log")
        .execute(&mut db)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), gateway.audit.flush())
        .await
        .expect("the record is stored once the store takes it");
    let held: Vec<_> = gateway
        .store
        .audit_records(&AuditFilter {
            since: 0,
            number_hash: None,
            tenant: None,
            limit: 1000,
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.correlator == "corr-held")
        .collect();
    assert_eq!(held.len(), 1, "stored exactly once");
    assert_eq!(held[0].action, "lookup");
    h.stop().await;
}
