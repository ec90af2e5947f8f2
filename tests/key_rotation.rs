//! Rotating every key but the number hash's, with no downtime, as the README's "Keys" section
//! says: add the new keys (inactive) everywhere, make them active, let the old values be
//! rewritten, retire the old keys. Across it, sessions issued before the switch keep working
//! until the old keys are retired, open tickets complete, a pending push delivers its numbers,
//! `CheckNumberRecycled` answers from history, quotas keep counting and the audit search by
//! number finds old and new records. On PostgreSQL with two replicas switched one at a time (a
//! value made by either opens on the other at every step), and on SQLite with one process.

mod common;

use std::time::Duration;

use common::*;
use prost_types::Timestamp;
use tokio::time::Instant;
use unbind_gateway::{
    domain::E164,
    proto::{
        CheckNumberRecycledRequest, GetUnbindTicketsRequest, ListLinkedAccountsRequest,
        RecycledNumber, StartVerificationRequest, SubmitRecycledNumbersRequest, UnbindRequest,
        account_gateway_client::AccountGatewayClient, carrier_push_client::CarrierPushClient,
        number_status_client::NumberStatusClient, unbind_ticket::State,
    },
    security::{KeyPurpose, Keys, new_key_entry},
    server::{self, RunningGateway},
    store::AuditFilter,
    testkit::simulated_apps::notice_digest,
};

type Client = AccountGatewayClient<tonic::transport::Channel>;

/// Pushed numbers: fewer than a batch, so each app gets them in one notice.
const PUSHED: usize = 300;
const REISSUED: i64 = 1_735_689_600; // 2025-01-01

fn ts(secs: i64) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: secs,
        nanos: 0,
    })
}

/// The keys of one generation: every purpose but the number hash, under `id`.
struct Generation(Vec<(KeyPurpose, String)>);

impl Generation {
    fn new(id: &str) -> Self {
        Self(
            KeyPurpose::ALL
                .into_iter()
                .filter(|p| *p != KeyPurpose::NumberHash)
                .map(|p| (p, new_key_entry(id, p, false)))
                .collect(),
        )
    }

    fn entries(&self, active: bool) -> String {
        self.0
            .iter()
            .map(|(_, e)| {
                if active {
                    e.replace("active = false", "active = true")
                } else {
                    e.clone()
                }
            })
            .collect()
    }
}

struct Rig {
    h: Harness,
    second: Option<RunningGateway>,
    keys_file: std::path::PathBuf,
}

impl Rig {
    fn write_keys(&self, text: &str) {
        std::fs::write(&self.keys_file, text).unwrap();
    }

    async fn restart_first(&mut self) {
        self.h.restart_gateway().await;
    }

    async fn restart_second(&mut self) {
        if let Some(b) = self.second.take() {
            b.stop().await.unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            self.second = Some(
                server::start(self.h.stack.config.clone(), self.h.clock.clone(), listener)
                    .await
                    .unwrap(),
            );
        }
    }

    /// Both replicas' clients (the one replica twice on SQLite).
    async fn clients(&self) -> [Client; 2] {
        let second = match &self.second {
            Some(b) => b.endpoint(),
            None => self.h.endpoint(),
        };
        [
            self.h.client().await,
            Client::connect(second).await.unwrap(),
        ]
    }

    async fn session_on(&self, replica: usize) -> String {
        let mut c = self.clients().await[replica].clone();
        let before = self.h.codes_sent_to(PHONE).len();
        let verification_id = start_with(&mut c, PHONE, ID_LAST_SIX).await;
        assert!(verification_id.is_ok(), "{verification_id:?}");
        let code = self.h.wait_for_code(PHONE, before + 1).await;
        complete_with(&mut c, &verification_id.unwrap(), &code)
            .await
            .unwrap()
    }

    fn keyring(&self) -> Keys {
        self.h.stack.config.keyring().unwrap()
    }

    async fn sealed_values(&self) -> Vec<String> {
        sqlx::any::install_default_drivers();
        let db = sqlx::AnyPool::connect(&self.h.stack.config.store.url)
            .await
            .unwrap();
        let mut values = Vec::new();
        for sql in [
            "SELECT sealed_number FROM tickets",
            "SELECT sealed_account_id FROM tickets",
            "SELECT sealed_hint FROM tickets WHERE sealed_hint <> ''",
            "SELECT sealed_number FROM submission_numbers",
        ] {
            let rows: Vec<(String,)> = sqlx::query_as(sql).fetch_all(&db).await.unwrap();
            values.extend(rows.into_iter().map(|(v,)| v));
        }
        db.close().await;
        values
    }
}

async fn lists(client: &mut Client, token: &str) -> Result<usize, tonic::Status> {
    client
        .list_linked_accounts(ListLinkedAccountsRequest {
            session_token: token.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().accounts.len())
}

async fn audit_count(rig: &Rig) -> usize {
    let gateway = &rig.h.stack.gateway.as_ref().unwrap().gateway;
    gateway.audit.flush().await;
    let number = rig
        .keyring()
        .number_hash(&E164::parse(PHONE).unwrap())
        .hex();
    gateway
        .store
        .audit_records(&AuditFilter {
            since: 0,
            number_hash: Some(number),
            tenant: None,
            limit: 10_000,
        })
        .await
        .unwrap()
        .len()
}

async fn recycled(rig: &Rig, phone: &str) -> bool {
    NumberStatusClient::connect(rig.h.endpoint())
        .await
        .unwrap()
        .check_number_recycled(CheckNumberRecycledRequest {
            phone_number: phone.into(),
            specified_date: ts(REISSUED - 86_400),
        })
        .await
        .unwrap()
        .into_inner()
        .recycled
}

async fn rotate(store_url: Option<String>) {
    let two = store_url.is_some();
    let h = Harness::start(Options {
        apps: 4,
        store_url,
        tweak: |c| {
            // No worker until the old keys are retired: the tickets and the push stay open
            // across the whole rotation.
            c.unbind.worker = false;
            c.unbind.poll_interval = Duration::from_millis(20);
            c.unbind.retry_base = Duration::from_millis(50);
            c.unbind.retry_max = Duration::from_millis(200);
        },
        ..Options::default()
    })
    .await;
    let keys_file = h.dir.path().join("keys.toml");
    let mut rig = Rig {
        h,
        second: None,
        keys_file,
    };
    let (old, new) = (Generation::new("2026-06"), Generation::new("2026-12"));
    let index = new_key_entry("index-1", KeyPurpose::NumberHash, true);

    // A deployment on a keyring: the old generation active.
    rig.write_keys(&format!("{}{index}", old.entries(true)));
    rig.h.stack.config.signing_secret = None;
    rig.h.stack.config.keys.file = Some(rig.keys_file.clone());
    rig.restart_first().await;
    if two {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        rig.second = Some(
            server::start(rig.h.stack.config.clone(), rig.h.clock.clone(), listener)
                .await
                .unwrap(),
        );
    }

    // Before: a session, tickets left open, a push waiting for delivery, history, quota use,
    // audit records.
    let before = rig.session_on(0).await;
    let [mut a, mut b] = rig.clients().await;
    let accounts = a
        .list_linked_accounts(ListLinkedAccountsRequest {
            session_token: before.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .accounts;
    let refs: Vec<String> = accounts
        .iter()
        .filter(|acc| acc.unbind_supported)
        .map(|acc| acc.account_ref.clone())
        .collect();
    assert!(!refs.is_empty());
    let tickets: Vec<String> = b
        .unbind(UnbindRequest {
            session_token: before.clone(),
            account_refs: refs.clone(),
            idempotency_key: "before-rotation".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tickets
        .into_iter()
        .map(|t| t.ticket_id)
        .collect();
    let pushed: Vec<RecycledNumber> = (0..PUSHED)
        .map(|i| RecycledNumber {
            phone_number: format!("+86137{i:08}"),
            cancelled_at: ts(REISSUED - 30 * 86_400),
            reissued_at: ts(REISSUED),
        })
        .collect();
    let submission = CarrierPushClient::connect(rig.h.endpoint())
        .await
        .unwrap()
        .submit_recycled_numbers(tokio_stream::iter([SubmitRecycledNumbersRequest {
            numbers: pushed.clone(),
            submission_key: "rotation".into(),
        }]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(submission.accepted as usize, PUSHED);
    assert!(recycled(&rig, "+8613700000007").await);
    // More starts for the pair, so that with the sessions to come the hour's five are spent:
    // one session before, one after, and on PostgreSQL one more on the replica not yet
    // switched.
    for _ in 0..if two { 2 } else { 3 } {
        start_with(&mut a, PHONE, ID_LAST_SIX).await.unwrap();
    }
    let audited_before = audit_count(&rig).await;
    assert!(audited_before > 0);
    let old_values = rig.sealed_values().await;
    assert!(!old_values.is_empty());
    assert!(
        old_values
            .iter()
            .all(|v| Keys::sealed_key_id(v).as_deref() == Some("2026-06"))
    );

    // Step 1: the new keys, inactive, on every replica, one at a time.
    rig.write_keys(&format!(
        "{}{}{index}",
        old.entries(true),
        new.entries(false)
    ));
    rig.restart_first().await;
    rig.restart_second().await;
    let [mut a, mut b] = rig.clients().await;
    assert!(lists(&mut a, &before).await.is_ok());
    assert!(lists(&mut b, &before).await.is_ok());

    // Step 2: the new keys active, one replica at a time. Between the two restarts each
    // replica opens what the other makes.
    rig.write_keys(&format!(
        "{}{}{index}",
        old.entries(false),
        new.entries(true)
    ));
    rig.restart_first().await;
    let after = rig.session_on(0).await;
    if two {
        let [mut a, mut b] = rig.clients().await;
        let from_old_replica = rig.session_on(1).await;
        assert!(
            lists(&mut b, &after).await.is_ok(),
            "a new session on an old replica"
        );
        assert!(
            lists(&mut a, &from_old_replica).await.is_ok(),
            "an old replica's session on a new one"
        );
    }
    rig.restart_second().await;
    let [mut a, mut b] = rig.clients().await;
    for client in [&mut a, &mut b] {
        assert!(
            lists(client, &before).await.is_ok(),
            "the session from before"
        );
        assert!(lists(client, &after).await.is_ok());
    }
    // The quota counted the starts made under the old keys: this is the sixth.
    let err = a
        .start_verification(StartVerificationRequest {
            phone_number: PHONE.into(),
            id_last_six: ID_LAST_SIX.into(),
        })
        .await
        .unwrap_err();
    assert_error(&err, tonic::Code::ResourceExhausted, "MAX_CODES_EXCEEDED");
    assert!(recycled(&rig, "+8613700000007").await);

    // Step 3: the values at rest move to the new key in the background.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let values = rig.sealed_values().await;
        if values
            .iter()
            .all(|v| Keys::sealed_key_id(v).as_deref() == Some("2026-12"))
        {
            assert_eq!(values.len(), old_values.len());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "values at rest not rewritten: {:?}",
            values
                .iter()
                .enumerate()
                .map(|(i, v)| (i, Keys::sealed_key_id(v)))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Step 4: the old keys retired, and the workers on.
    rig.write_keys(&format!("{}{index}", new.entries(true)));
    rig.h.stack.config.unbind.worker = true;
    rig.restart_first().await;
    rig.restart_second().await;
    let [mut a, mut b] = rig.clients().await;
    // A session the retired key sealed is over (in real life it had expired by now).
    assert_error(
        &lists(&mut b, &before).await.unwrap_err(),
        tonic::Code::Unauthenticated,
        "INVALID_SESSION",
    );
    // The tickets made under the old keys complete.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let states: Vec<State> = a
            .get_unbind_tickets(GetUnbindTicketsRequest {
                session_token: after.clone(),
                ticket_ids: tickets.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .tickets
            .iter()
            .map(|t| t.state())
            .collect();
        assert_eq!(states.len(), tickets.len());
        if states.iter().all(|s| *s == State::Completed) {
            break;
        }
        assert!(Instant::now() < deadline, "{states:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The push sealed under the old key reaches every app whole.
    let deadline = Instant::now() + Duration::from_secs(30);
    for app in rig.h.simulator.apps() {
        loop {
            let notices = rig.h.simulator.stats(&app.id).notices;
            if let Some(n) = notices.first() {
                assert_eq!(n.numbers, PUSHED, "{}", app.id);
                assert_eq!(n.digest, notice_digest(&pushed), "{}", app.id);
                break;
            }
            assert!(Instant::now() < deadline, "{} got no notice", app.id);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // History, and the audit trail by number, old and new.
    assert!(recycled(&rig, "+8613700000007").await);
    assert!(!recycled(&rig, "+8613700009999").await);
    assert!(lists(&mut a, &after).await.is_ok());
    let audited_after = audit_count(&rig).await;
    assert!(
        audited_after > audited_before,
        "{audited_after} <= {audited_before}"
    );

    if let Some(b) = rig.second.take() {
        b.stop().await.unwrap();
    }
    rig.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_database, ignore = "needs DATABASE_URL")]
async fn two_replicas_on_postgres_rotate_every_key_with_nothing_lost() {
    rotate(Some(fresh_postgres_database().await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_on_sqlite_rotates_every_key_with_nothing_lost() {
    rotate(None).await;
}

/// `keys new` makes a keyring `keys list` reads back, from the environment (as a container would
/// be given it), naming ids and purposes and never a secret; a config whose keyring lacks a
/// purpose is refused with the reason.
#[test]
fn the_keys_command_makes_and_lists_a_keyring_from_the_environment() {
    let bin = env!("CARGO_BIN_EXE_unbind-gateway");
    let run = |args: &[&str], env: Option<&str>| {
        let mut c = std::process::Command::new(bin);
        c.args(args).env_remove("UNBIND_GATEWAY_KEYS");
        if let Some(text) = env {
            c.env("UNBIND_GATEWAY_KEYS", text);
        }
        c.output().unwrap()
    };
    let made = run(&["keys", "new", "--id", "2026-12", "--active"], None);
    assert!(made.status.success(), "{made:?}");
    let index = run(
        &[
            "keys",
            "new",
            "--id",
            "index-1",
            "--purpose",
            "number-hash",
            "--active",
        ],
        None,
    );
    let ring = format!(
        "{}\n{}",
        String::from_utf8(made.stdout).unwrap(),
        String::from_utf8(index.stdout).unwrap()
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndevelopment = true\n[store]\nurl = \"sqlite://{}\"\n[registry]\nendpoint = \"http://127.0.0.1:1\"\n",
            dir.path().join("db.sqlite").display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let listed = run(&["keys", "list", "--config", config], Some(&ring));
    assert!(listed.status.success(), "{listed:?}");
    let out = String::from_utf8(listed.stdout).unwrap();
    for purpose in [
        "session",
        "account-ref",
        "stored-data",
        "number-hash",
        "code",
    ] {
        assert!(out.contains(purpose), "{out}");
    }
    assert_eq!(out.matches("active").count(), 5, "{out}");
    for line in ring.lines().filter(|l| l.starts_with("secret")) {
        assert!(!out.contains(&line[10..50]), "a secret was printed");
    }
    // Without the environment there is no keyring and no secret: refused, with the reason.
    let refused = run(&["keys", "list", "--config", config], None);
    assert!(!refused.status.success());
    let err = String::from_utf8(refused.stderr).unwrap();
    assert!(err.contains("no `session` key"), "{err}");
}
