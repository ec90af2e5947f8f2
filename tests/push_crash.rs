//! The carrier push is never lost and never sent twice under two ids, when the gateway, a real
//! child process (`unbind-gateway serve`), is killed with SIGKILL:
//! - mid-push, while the carrier is still streaming its numbers: the carrier gets an error, not a
//!   submission id, and the store holds nothing of the push (no half submission that some apps
//!   would get and others not); the carrier sends it again;
//! - mid-delivery, with batches delivered, others sent with the app's answer outstanding and the
//!   rest queued: the next process delivers every batch to every app; an app that got a batch
//!   again got it under the same batch id with the same numbers, and no numbers under an id that
//!   is not their batch's.
//!
//! On a SQLite file, and on PostgreSQL when `DATABASE_URL` is set.

#![cfg(unix)]

mod common;
#[path = "common/process.rs"]
mod process;

use std::{collections::BTreeMap, time::Duration};

use process::{POLL, World, WorldOptions};
use prost_types::Timestamp;
use sqlx::{AnyPool, Row};
use tokio::time::Instant;
use tonic::transport::Channel;
use unbind_gateway::{
    config::{Config, UnbindConfig},
    proto::{
        GetSubmissionRequest, GetSubmissionResponse, RecycledNumber, SubmitRecycledNumbersRequest,
        carrier_push_client::CarrierPushClient,
    },
    push::BATCH_SIZE,
    testkit::simulated_apps::{Behaviour, Latency, Notice, notice_digest},
};

const APPS: usize = 20;
/// Five batches per app: a hundred deliveries, more than one round of the worker's 32.
const NUMBERS: usize = 5 * BATCH_SIZE;
const SECRET: &str = "push-crash-test-signing-secret-0123456789ab";
/// Longest the deliveries may take to reach the state the test waits for.
const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_is_neither_lost_nor_doubled_when_the_gateway_is_killed_on_sqlite() {
    kill_mid_push_and_mid_delivery(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_database, ignore = "needs DATABASE_URL")]
async fn a_push_is_neither_lost_nor_doubled_when_the_gateway_is_killed_on_postgres() {
    let url = common::fresh_postgres_database().await;
    kill_mid_push_and_mid_delivery(Some(url)).await;
}

/// Slow enough that deliveries are outstanding when the gateway dies.
fn slow_apps() -> Behaviour {
    Behaviour {
        latency: Latency::Uniform {
            min: Duration::from_millis(100),
            max: Duration::from_millis(600),
        },
        ..Behaviour::default()
    }
}

fn push_config(config: &mut Config) {
    config.unbind = UnbindConfig {
        // Short, so the killed process's claimed batches are taken over quickly.
        lease: Duration::from_secs(2),
        poll_interval: Duration::from_millis(50),
        retry_base: Duration::from_millis(100),
        retry_max: Duration::from_millis(500),
        retry_jitter: false,
        ..UnbindConfig::default()
    };
    // At most half the lease, as the config requires; the apps answer within 600 ms.
    config.app_defaults.timeout = Duration::from_secs(1);
}

fn numbers(seed: usize) -> Vec<RecycledNumber> {
    let ts = |seconds| Some(Timestamp { seconds, nanos: 0 });
    (0..NUMBERS)
        .map(|i| RecycledNumber {
            phone_number: format!("+86137{:08}", seed * NUMBERS + i),
            cancelled_at: ts(1_740_787_200),
            reissued_at: ts(1_748_736_000),
        })
        .collect()
}

async fn kill_mid_push_and_mid_delivery(store_url: Option<String>) {
    let mut world = World::start(WorldOptions {
        apps: APPS,
        behaviour: slow_apps(),
        subscribers: Vec::new(),
        store_url,
        secret: SECRET,
        tweak: push_config,
    })
    .await;

    // Killed mid-push: the carrier's stream is open, most of it sent and read, not ended.
    let gateway = world.start_gateway().await;
    // The store exists (the gateway made it); read directly.
    let store = store_of(&world.store_url).await;
    let mut push = CarrierPushClient::new(gateway.channel().await);
    let first = numbers(0);
    let (tx, rx) = tokio::sync::mpsc::channel::<SubmitRecycledNumbersRequest>(1);
    let call = tokio::spawn(async move {
        push.submit_recycled_numbers(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    for chunk in first.chunks(100) {
        tx.send(SubmitRecycledNumbersRequest {
            numbers: chunk.to_vec(),
            ..Default::default()
        })
        .await
        .expect("the gateway reads the stream");
    }
    // The channel holds one message: all but the last two have been taken by the transport,
    // far more than a connection's flow-control window, so the gateway has read most of them.
    gateway.kill();
    let answer = call.await.expect("the call's task");
    assert!(
        answer.is_err(),
        "a killed gateway answered the push: {answer:?}"
    );
    drop(tx);
    assert_eq!(
        counts(&store).await,
        [0, 0, 0],
        "submissions, numbers and deliveries of a push the gateway never answered"
    );

    // The carrier sends it again, to the next process; that one is killed mid-delivery.
    let gateway = world.start_gateway().await;
    let mut push = CarrierPushClient::new(gateway.channel().await);
    let id = push
        .submit_recycled_numbers(futures::stream::iter(
            first
                .chunks(1_000)
                .map(|c| SubmitRecycledNumbersRequest {
                    numbers: c.to_vec(),
                    ..Default::default()
                })
                .collect::<Vec<_>>(),
        ))
        .await
        .expect("the push is stored")
        .into_inner()
        .submission_id;
    let batches_total = (APPS * NUMBERS / BATCH_SIZE) as u32;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let delivered = batches_delivered(&progress(&mut push, &id).await);
        let received: usize = notices(&world).values().map(Vec::len).sum();
        // Some delivered, and several sent with the answer outstanding.
        if delivered > 0 && received >= delivered as usize + 5 {
            break;
        }
        assert!(delivered < batches_total, "delivered before the kill");
        assert!(Instant::now() < deadline, "no delivery under way");
        tokio::time::sleep(POLL).await;
    }
    gateway.kill();
    let at_kill = delivered_in_store(&store, &id).await;
    let received_at_kill: usize = notices(&world).values().map(Vec::len).sum();
    assert!(
        at_kill > 0 && at_kill < i64::from(batches_total),
        "{at_kill} of {batches_total} batches recorded delivered at the kill"
    );

    // The next process delivers the rest.
    let gateway = world.start_gateway().await;
    let mut push = CarrierPushClient::new(gateway.channel().await);
    let deadline = Instant::now() + DEADLINE;
    let done = loop {
        let p = progress(&mut push, &id).await;
        if p.deliveries.len() == APPS
            && p.deliveries
                .iter()
                .all(|d| d.numbers_delivered as usize == NUMBERS)
        {
            break p;
        }
        assert!(Instant::now() < deadline, "not delivered: {p:?}");
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(batches_delivered(&done), batches_total);
    assert_eq!(
        counts(&store).await,
        [1, NUMBERS as i64, i64::from(batches_total)]
    );

    // What each app received: every batch of the submission, under its own id, the same numbers
    // each time it was sent, and nothing else.
    let expected: BTreeMap<String, (usize, u64)> = first
        .chunks(BATCH_SIZE)
        .enumerate()
        .map(|(b, chunk)| (format!("{id}-{b}"), (chunk.len(), notice_digest(chunk))))
        .collect();
    let mut resent = 0;
    for (app, received) in notices(&world) {
        let mut ids: Vec<&str> = received.iter().map(|n| n.batch_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(
            ids,
            expected.keys().map(String::as_str).collect::<Vec<_>>(),
            "{app} got these batch ids"
        );
        for notice in &received {
            assert_eq!(
                (notice.numbers, notice.digest),
                expected[&notice.batch_id],
                "{app} got other numbers under {}",
                notice.batch_id
            );
        }
        resent += received.len() - expected.len();
    }
    // The kill cut calls off before their outcome was recorded: those were sent again, under
    // their own ids (checked above).
    assert!(
        received_at_kill > at_kill as usize && resent > 0,
        "nothing was outstanding at the kill: {received_at_kill} received, {at_kill} recorded"
    );

    store.close().await;
    drop(gateway);
    world.stop().await;
}

/// The app ids and the notices each received.
fn notices(world: &World) -> BTreeMap<String, Vec<Notice>> {
    world
        .simulator
        .apps()
        .iter()
        .map(|app| (app.id.clone(), world.simulator.stats(&app.id).notices))
        .collect()
}

async fn progress(push: &mut CarrierPushClient<Channel>, id: &str) -> GetSubmissionResponse {
    push.get_submission(GetSubmissionRequest {
        submission_id: id.into(),
    })
    .await
    .expect("the submission's progress")
    .into_inner()
}

fn batches_delivered(p: &GetSubmissionResponse) -> u32 {
    p.deliveries.iter().map(|d| d.batches_delivered).sum()
}

/// The store as the gateway left it, read directly.
async fn store_of(url: &str) -> AnyPool {
    sqlx::any::install_default_drivers();
    AnyPool::connect(url).await.expect("the store")
}

/// Rows in `submissions`, `submission_numbers` and `deliveries`.
async fn counts(store: &AnyPool) -> [i64; 3] {
    let mut counts = [0; 3];
    for (count, table) in counts
        .iter_mut()
        .zip(["submissions", "submission_numbers", "deliveries"])
    {
        *count = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
            .fetch_one(store)
            .await
            .expect("a count")
            .try_get("n")
            .expect("the count");
    }
    counts
}

async fn delivered_in_store(store: &AnyPool, id: &str) -> i64 {
    sqlx::query("SELECT COUNT(*) AS n FROM deliveries WHERE submission_id = $1 AND delivered = 1")
        .bind(id)
        .fetch_one(store)
        .await
        .expect("a count")
        .try_get("n")
        .expect("the count")
}
