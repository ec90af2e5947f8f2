//! What the store holds at rest: after a full flow (verification with a wrong code first,
//! look-up, unbind carried to completion, a carrier push of the same number), no file of the
//! gateway's store (the SQLite database, its WAL and shared memory) contains the raw number in
//! any usual form, the ID characters, or any code that was sent. The registry's own files (the
//! simulated handset's `sms.jsonl`, `subscribers.toml`) are the carrier's, not the gateway's,
//! and are not read.

mod common;

use std::time::Duration;

use common::*;
use tokio::time::Instant;
use unbind_gateway::proto::{
    CompleteVerificationRequest, GetUnbindTicketsRequest, ListLinkedAccountsRequest,
    RecycledNumber, StartVerificationRequest, SubmitRecycledNumbersRequest, UnbindRequest,
    carrier_push_client::CarrierPushClient, linked_account::Ownership, unbind_ticket::State,
};

#[tokio::test]
async fn the_store_holds_no_raw_number_id_characters_or_code() {
    let h = Harness::start(Options {
        apps: 10,
        tweak: |c| c.unbind.poll_interval = Duration::from_millis(20),
        ..Options::default()
    })
    .await;
    let mut client = h.client().await;
    // A verification with a wrong code first, then the right one.
    let v = client
        .start_verification(StartVerificationRequest {
            phone_number: PHONE_BARE.into(),
            id_last_six: ID_LAST_SIX.to_lowercase(),
        })
        .await
        .unwrap()
        .into_inner()
        .verification_id;
    let code = h.wait_for_code(PHONE, 1).await;
    let wrong = if code == "000000" { "000001" } else { "000000" };
    assert!(
        client
            .complete_verification(CompleteVerificationRequest {
                verification_id: v.clone(),
                code: wrong.into(),
            })
            .await
            .is_err()
    );
    let token = client
        .complete_verification(CompleteVerificationRequest {
            verification_id: v,
            code: code.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .session_token;
    let accounts = client
        .list_linked_accounts(ListLinkedAccountsRequest {
            session_token: token.clone(),
            deliver_by_sms: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .accounts;
    let refs: Vec<String> = accounts
        .iter()
        .filter(|a| a.unbind_supported && a.ownership() == Ownership::PreviousHolder)
        .map(|a| a.account_ref.clone())
        .collect();
    assert!(
        !refs.is_empty(),
        "the demo number has previous holders' accounts"
    );
    let tickets = client
        .unbind(UnbindRequest {
            session_token: token.clone(),
            account_refs: refs,
            idempotency_key: "at-rest".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tickets;
    let ids: Vec<String> = tickets.iter().map(|t| t.ticket_id.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
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
        if now.iter().all(|t| t.state() == State::Completed) {
            break;
        }
        assert!(Instant::now() < deadline, "{now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut push = CarrierPushClient::connect(h.endpoint()).await.unwrap();
    push.submit_recycled_numbers(futures::stream::iter([SubmitRecycledNumbersRequest {
        numbers: vec![RecycledNumber {
            phone_number: PHONE.into(),
            cancelled_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            reissued_at: Some(prost_types::Timestamp {
                seconds: 1_709_251_200,
                nanos: 0,
            }),
        }],
        ..Default::default()
    }]))
    .await
    .unwrap();
    let gateway = &h.stack.gateway.as_ref().unwrap().gateway;
    gateway.audit.flush().await;

    // Every file of the store, byte by byte.
    let db = h.dir.path().join("unbind.db");
    let mut files = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let path = std::path::PathBuf::from(format!("{}{suffix}", db.display()));
        if path.exists() {
            files.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    assert!(
        !files.is_empty() && !files[0].1.is_empty(),
        "the store is {}",
        db.display()
    );
    let secrets = [
        "13800138000",
        "8613800138000",
        "138 0013 8000",
        "138-0013-8000",
        ID_LAST_SIX,
        &ID_LAST_SIX.to_lowercase(),
        &code,
    ];
    for (path, bytes) in &files {
        for secret in secrets {
            assert!(
                !contains(bytes, secret),
                "{secret:?} is in {}",
                path.display()
            );
        }
    }
    // The scan itself works: the session token's tenant name is stored in the clear.
    assert!(
        files
            .iter()
            .any(|(_, b)| b.windows(11).any(|w| w == b"development")),
        "the scan reads the store's contents"
    );
    h.stop().await;
}

/// Whether `secret` is in `bytes` on its own: not inside a longer run of digits or hex (a
/// six-digit code turns up by chance inside millisecond timestamps and hex digests, which are
/// not a stored code).
fn contains(bytes: &[u8], secret: &str) -> bool {
    let n = secret.len();
    let part = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_hexdigit());
    bytes.windows(n).enumerate().any(|(i, w)| {
        w == secret.as_bytes()
            && !part(i.checked_sub(1).and_then(|j| bytes.get(j)))
            && !part(bytes.get(i + n))
    })
}

/// A verification whose ID characters did not match is stored like one that did: the same
/// columns set, the same lengths, no NULL that only a mismatch leaves. (Before, a mismatch was
/// the row with a NULL `holder_since`.)
#[tokio::test]
async fn a_mismatched_verification_row_looks_like_a_matched_one() {
    let h = Harness::start(Options {
        apps: 1,
        ..Options::default()
    })
    .await;
    let mut client = h.client().await;
    let matched = start_with(&mut client, PHONE, ID_LAST_SIX).await.unwrap();
    let mismatched = start_with(&mut client, PHONE, "010019").await.unwrap();
    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(&h.stack.config.store.url)
        .await
        .unwrap();
    type Row = (
        String,
        Option<String>,
        Option<i64>,
        String,
        String,
        String,
        i64,
        String,
    );
    let row = |id: String| {
        let db = db.clone();
        async move {
            let r: Row = sqlx::query_as(
                "SELECT number_hash, pair_hash, holder_since, sealed_number, code_digest, tenant, \
                 attempts, state FROM verifications WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&db)
            .await
            .unwrap();
            r
        }
    };
    let matched_id = matched.clone();
    let (a, b) = (row(matched).await, row(mismatched).await);
    let shape = |r: &Row| {
        (
            r.0.clone(),
            r.1.as_ref().map(String::len),
            r.2,
            r.3.len(),
            r.4.len(),
            r.4.split_once('$').map(|(id, _)| id.to_owned()),
            r.5.clone(),
            r.6,
            r.7.clone(),
        )
    };
    assert_eq!(shape(&a), shape(&b));
    assert_eq!(a.2, None, "holder_since is never in the clear");
    // And the holder who matched still gets their date, from the sealed value, into the session.
    let code = h.wait_for_code(PHONE, 1).await;
    assert_eq!(h.codes_sent_to(PHONE).len(), 1, "the mismatch sent no code");
    let done = client
        .complete_verification(CompleteVerificationRequest {
            verification_id: matched_id,
            code,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(done.holder_since.is_some(), "{done:?}");
    db.close().await;
    h.stop().await;
}
