//! Lease fencing with a live replica, not a dead one: a gateway process is frozen (SIGSTOP) while
//! its worker holds a ticket's lease with the app's answer outstanding; a second process takes
//! the ticket once the lease runs out and completes it; then the first resumes (SIGCONT) with
//! its stale lease and writes nothing: no transition, no second outcome SMS, no other key sent
//! to the app.

#![cfg(unix)]

#[path = "common/process.rs"]
mod process;

use std::time::Duration;

use process::{POLL, World, WorldOptions, get_tickets, look_up};
use tokio::time::Instant;
use unbind_gateway::{
    config::{Config, UnbindConfig},
    proto::{UnbindRequest, unbind_ticket::State},
    store::Store,
    testkit::simulated_apps::{Behaviour, Latency},
    testkit::stack::demo_subscribers,
};

fn short_lease(config: &mut Config) {
    config.unbind = UnbindConfig {
        lease: Duration::from_secs(4),
        poll_interval: Duration::from_millis(50),
        status_poll_interval: Duration::from_millis(200),
        retry_base: Duration::from_millis(100),
        retry_max: Duration::from_millis(300),
        retry_jitter: false,
        ..UnbindConfig::default()
    };
    // The app's answer (1.5 s) is inside its timeout, which is at most half the lease.
    config.app_defaults.timeout = Duration::from_secs(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_resuming_with_a_stale_lease_writes_nothing() {
    let mut world = World::start(WorldOptions {
        apps: 20,
        behaviour: Behaviour::default(),
        subscribers: demo_subscribers(),
        store_url: None,
        secret: "lease-fencing-test-secret-0123456789abcdef",
        tweak: short_lease,
    })
    .await;
    let mut a = world.start_gateway().await;
    let holder = world.subscribers[0].clone();
    let token = world.verified_session(&a, &holder).await;
    let mut client = a.client();
    let accounts = look_up(&mut client, &token, &[]).await.unwrap().accounts;
    let target = accounts
        .iter()
        .find(|x| x.unbind_supported)
        .expect("the demo holder has an account some app can unbind");
    let app = target.app_id.clone();
    // From now on the app takes 1.5 s to answer.
    world.simulator.set_behaviour(
        &app,
        Behaviour {
            latency: Latency::Fixed(Duration::from_millis(1500)),
            ..Behaviour::default()
        },
    );
    let ticket = client
        .unbind(UnbindRequest {
            session_token: token.clone(),
            account_refs: vec![target.account_ref.clone()],
            idempotency_key: "fencing".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tickets
        .remove(0);
    // A's worker has sent it and waits for the answer: freeze A there.
    let deadline = Instant::now() + Duration::from_secs(10);
    while world.simulator.stats(&app).unbind_calls < 1 {
        assert!(Instant::now() < deadline, "A never sent the ticket");
        tokio::time::sleep(POLL).await;
    }
    a.sigstop();

    // B takes the ticket once A's lease has run out, and completes it.
    let b = world.start_gateway().await;
    let mut b_client = b.client();
    let ids = vec![ticket.ticket_id.clone()];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = get_tickets(&mut b_client, &ids).await;
        if now[0].state == State::Completed as i32 {
            break;
        }
        assert!(Instant::now() < deadline, "B never completed it: {now:?}");
        tokio::time::sleep(POLL).await;
    }
    let store = Store::connect(&world.store_url, 1).await.unwrap();
    let events = store.ticket_events(&ticket.ticket_id).await.unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.to.as_str() == "completed")
            .count(),
        1,
        "{events:?}"
    );

    // A resumes with its stale lease: its outcome is refused by the store.
    a.sigcont();
    a.wait_for_log("leases lost", Duration::from_secs(20)).await;
    let after = store.ticket_events(&ticket.ticket_id).await.unwrap();
    assert_eq!(
        after.len(),
        events.len(),
        "A wrote after losing its lease: {after:?}"
    );
    assert_eq!(
        get_tickets(&mut b_client, &ids).await[0].state,
        State::Completed as i32
    );
    // The app saw the ticket's own key only (sent twice, at least once), and the holder heard
    // of the outcome once.
    assert_eq!(world.simulator.stats(&app).unbind_keys, ids);
    // (B sends it once its SMS window has passed; A, fenced, sends none.)
    let told = || {
        unbind_gateway::testkit::simulated_registry::read_sms_file(&world.sms_file)
            .unwrap()
            .iter()
            .filter(|m| m.text.contains("was unbound"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while told() == 0 {
        assert!(Instant::now() < deadline, "the holder was never told");
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(told(), 1);
    store.close().await;
    drop(a);
    drop(b);
    world.stop().await;
}
