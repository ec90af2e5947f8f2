//! Graceful shutdown on SIGTERM: the gateway runs as a real child process (`unbind-gateway serve`)
//! on a real store (a SQLite file, and PostgreSQL when `DATABASE_URL` is set) with a ticket lease
//! of a full minute, and receives SIGTERM while a look-up and unbind tickets are in flight:
//! - the look-up in flight finishes and answers completely; new connections are refused from the
//!   moment the signal is handled (while that look-up is still running) and after the exit;
//! - the process exits by itself, successfully, within a bound;
//! - every ticket it had claimed was either finished (its outcome recorded) or released: none is
//!   left leased in the store, and a new process on the same store carries every ticket to
//!   COMPLETED in far less than the lease (a leaked lease would hold its tickets for a minute);
//! - no ticket is lost, and each app saw exactly its tickets' ids as idempotency keys.
//!
//! The apps holding the tickets are split in three groups, by how their calls are timed against
//! the shutdown: `lookup` apps answer in 1.5 s (the look-up asks them; their unbinds are ACCEPTED
//! before the server stops and await a status poll), `finish` apps answer unbinds in 3 s (after
//! the server stopped taking requests, within the worker's 5 s grace: the first process records
//! them COMPLETED), `straggle` apps in 12 s (beyond the grace: the first process must release
//! them, and the second sends them again under the same key).

#![cfg(unix)]

mod common;
#[path = "common/process.rs"]
mod process;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use process::{POLL, World, WorldOptions, get_tickets, look_up};
use tokio::time::Instant;
use unbind_gateway::{
    config::{Config, UnbindConfig},
    proto::{UnbindRequest, app_result, unbind_ticket::State},
    store::{Store, TicketState},
    testkit::simulated_apps::{Behaviour, Latency},
    testkit::stack::demo_subscribers,
};

/// About half of them hold an account of the demo subscriber: enough for three groups.
const APPS: usize = 20;
/// The same secret for both processes: tickets seal the number and account id with it.
const SECRET: &str = "shutdown-test-signing-secret-0123456789abcdef";
/// A lease far longer than the test may take to recover: a lease left behind by the first process
/// would keep its tickets from the second for this long.
const LEASE: Duration = Duration::from_secs(60);
/// How long the `lookup` apps take to answer anything: the look-up in flight at SIGTERM.
const LOOKUP_LATENCY: Duration = Duration::from_millis(1500);
/// How long after accepting an unbind a `lookup` app reports it done.
const LOOKUP_COMPLETION: Duration = Duration::from_secs(1);
/// How long the `finish` apps take to answer an unbind: after the look-up, within the grace.
const FINISH_LATENCY: Duration = Duration::from_secs(3);
/// How long the `straggle` apps take to answer an unbind: beyond the look-up plus the worker's
/// 5 s grace.
const STRAGGLE_LATENCY: Duration = Duration::from_secs(12);
/// Every app's timeout: longer than any latency above, so no call times out.
const APP_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest the first process may take to exit after SIGTERM (it needs about the look-up plus the
/// worker's 5 s grace).
const EXIT_DEADLINE: Duration = Duration::from_secs(20);
/// Longest the second process may take to carry every ticket to a final state: well under
/// [`LEASE`], so a ticket left leased fails the test.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(20);
/// The worker's grace for in-flight tickets (`unbind.shutdown_grace`): the `finish` apps answer
/// within it, the `straggle` apps after it.
const WORKER_GRACE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_and_releases_tickets_on_sqlite() {
    shutdown_and_recover("sqlite", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_database, ignore = "needs DATABASE_URL")]
async fn sigterm_finishes_requests_and_releases_tickets_on_postgres() {
    let url = common::fresh_postgres_database().await;
    shutdown_and_recover("postgres", Some(url)).await;
}

/// A gateway whose stdout and stderr are closed (its log collector gone) keeps serving, and
/// still stops cleanly on SIGTERM: every log line is lost, nothing else. This held before too
/// (the logger drops a line it cannot write); it guards what the portal and the development
/// services got wrong, a `println!` that panics on a closed stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_whose_output_is_closed_keeps_serving_and_stops_cleanly() {
    let mut world = World::start(WorldOptions {
        apps: 4,
        behaviour: Behaviour::default(),
        subscribers: demo_subscribers(),
        store_url: None,
        secret: SECRET,
        tweak: |_| {},
    })
    .await;
    let mut gateway = world.start_gateway_unheard().await;
    let subscriber = &world.subscribers[0];
    let token = world.verified_session(&gateway, subscriber).await;
    let listed = look_up(&mut gateway.client(), &token, &[])
        .await
        .expect("ListLinkedAccounts");
    assert!(listed.complete, "{:?}", listed.app_results);
    gateway.sigterm();
    let status = gateway.wait_for_exit(EXIT_DEADLINE).await;
    assert!(status.success(), "{status}");
    world.stop().await;
}

/// The groups of apps holding tickets, by how their calls are timed against the shutdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Group {
    Lookup,
    Finish,
    Straggle,
}

impl Group {
    fn behaviour(self) -> Behaviour {
        let (latency, unbind_completion) = match self {
            Group::Lookup => (LOOKUP_LATENCY, LOOKUP_COMPLETION),
            Group::Finish => (FINISH_LATENCY, Duration::ZERO),
            Group::Straggle => (STRAGGLE_LATENCY, Duration::ZERO),
        };
        Behaviour {
            latency: Latency::Fixed(latency),
            unbind_completion,
            ..Behaviour::default()
        }
    }
}

/// Every process's app timeout and worker timings.
fn shutdown_config(config: &mut Config) {
    config.app_defaults.timeout = APP_TIMEOUT;
    config.unbind = UnbindConfig {
        // Long: only a released lease lets the next process carry on at once.
        lease: LEASE,
        poll_interval: Duration::from_millis(50),
        // Long enough that the first process stops before polling an accepted ticket.
        status_poll_interval: Duration::from_secs(2),
        retry_base: Duration::from_millis(100),
        retry_max: Duration::from_millis(500),
        retry_jitter: false,
        shutdown_grace: WORKER_GRACE,
        ..UnbindConfig::default()
    };
}

/// The last process's: a grace longer than [`EXIT_DEADLINE`], so an idle process that waited
/// it out would not exit in time.
fn long_grace_config(config: &mut Config) {
    shutdown_config(config);
    config.unbind.shutdown_grace = LEASE;
}

async fn shutdown_and_recover(label: &str, store_url: Option<String>) {
    let began = Instant::now();
    let mut world = World::start(WorldOptions {
        apps: APPS,
        // Fast until the unbinds: each group's timing is set just before them.
        behaviour: Behaviour::default(),
        subscribers: demo_subscribers(),
        store_url,
        secret: SECRET,
        tweak: shutdown_config,
    })
    .await;

    // Fast apps while the holder verifies and lists.
    let mut gateway = world.start_gateway().await;
    let mut client = gateway.client();
    let subscriber = world
        .subscribers
        .iter()
        .find(|s| s.phone_number.expose() == common::PHONE)
        .expect("the demo subscriber");
    assert_eq!(subscriber.id_last_six.expose(), common::ID_LAST_SIX);
    let token = world.verified_session(&gateway, subscriber).await;
    let listed = look_up(&mut client, &token, &[])
        .await
        .expect("ListLinkedAccounts");
    assert!(listed.complete, "{:?}", listed.app_results);
    let mut refs_by_app: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for account in listed.accounts.iter().filter(|a| a.unbind_supported) {
        refs_by_app
            .entry(account.app_id.clone())
            .or_default()
            .push(account.account_ref.clone());
    }
    let group_of: BTreeMap<String, Group> = refs_by_app
        .keys()
        .enumerate()
        .map(|(i, app)| {
            let group = [Group::Lookup, Group::Finish, Group::Straggle][i % 3];
            (app.clone(), group)
        })
        .collect();
    let apps_in = |group: Group| -> Vec<String> {
        group_of
            .iter()
            .filter(|(_, g)| **g == group)
            .map(|(app, _)| app.clone())
            .collect()
    };
    let lookup_apps = apps_in(Group::Lookup);
    assert!(
        !apps_in(Group::Straggle).is_empty(),
        "too few apps hold an account of the demo subscriber: {refs_by_app:?}"
    );

    // Now slow, and the holder asks to unbind every account that can be: the worker claims the
    // tickets at once, under the minute-long lease, and sends them.
    for (app, group) in &group_of {
        world.simulator.set_behaviour(app, group.behaviour());
    }
    let created = client
        .unbind(UnbindRequest {
            session_token: token.clone(),
            account_refs: refs_by_app.values().flatten().cloned().collect(),
            idempotency_key: "shutdown-test".into(),
        })
        .await
        .expect("Unbind")
        .into_inner()
        .tickets;
    let ids: Vec<String> = created.iter().map(|t| t.ticket_id.clone()).collect();
    assert_eq!(ids.len(), refs_by_app.values().map(Vec::len).sum::<usize>());
    let mut tickets_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for t in &created {
        tickets_of
            .entry(t.app_id.clone())
            .or_default()
            .insert(t.ticket_id.clone());
    }
    let group_of_ticket: BTreeMap<String, Group> = created
        .iter()
        .map(|t| (t.ticket_id.clone(), group_of[&t.app_id]))
        .collect();
    let count_in = |group: Group| group_of_ticket.values().filter(|g| **g == group).count();

    // Every ticket claimed, and every app holding one called: the unbinds are in flight.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tickets = get_tickets(&mut client, &ids).await;
        let all_claimed = tickets
            .iter()
            .all(|t| t.state != State::Queued as i32 && t.state != State::Unspecified as i32);
        let all_called = tickets_of
            .iter()
            .all(|(app, ids)| world.simulator.stats(app).unbind_calls >= ids.len() as u64);
        if all_claimed && all_called {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the tickets were not all sent: {tickets:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    let finish_apps: Vec<String> = group_of
        .iter()
        .filter(|(_, g)| **g == Group::Finish)
        .map(|(app, _)| app.clone())
        .collect();

    // A slow look-up, on its own connection, at the `lookup` apps; SIGTERM once every one of them
    // has been asked, so the look-up is inside the gateway when the signal arrives.
    let finds_before: Vec<u64> = lookup_apps
        .iter()
        .map(|app| world.simulator.stats(app).find_calls)
        .collect();
    let lookup = tokio::spawn({
        let mut client = gateway.connect().await;
        let token = token.clone();
        let apps = lookup_apps.clone();
        let simulator = world.simulator.clone();
        let finish_apps = finish_apps.clone();
        async move {
            let answer = look_up(&mut client, &token, &apps).await;
            let done = Instant::now();
            // The `finish` apps that had answered their unbinds when the look-up ended.
            let answered: Vec<String> = finish_apps
                .into_iter()
                .filter(|app| !simulator.stats(app).unbind_keys.is_empty())
                .collect();
            (answer, done, answered)
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while lookup_apps
        .iter()
        .zip(&finds_before)
        .any(|(app, before)| world.simulator.stats(app).find_calls <= *before)
    {
        assert!(
            !lookup.is_finished(),
            "the look-up ended before every app was asked"
        );
        assert!(
            Instant::now() < deadline,
            "the look-up never reached the apps"
        );
        tokio::time::sleep(POLL).await;
    }
    let sigterm_at = gateway.sigterm();

    // The listener closes at once: new connections are refused while the look-up still runs.
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused_at = loop {
        match tokio::net::TcpStream::connect(gateway.addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break Instant::now(),
            // The listener closing under a connection in its backlog: look again.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("connecting during the shutdown: {e}"),
            Ok(stream) => drop(stream),
        }
        assert!(
            Instant::now() < deadline,
            "still accepting connections 10 s after SIGTERM"
        );
        tokio::time::sleep(POLL).await;
    };
    if lookup.is_finished() {
        let (answer, _, _) = lookup.await.expect("the look-up task");
        panic!(
            "the look-up was over before new connections were refused ({:?} after SIGTERM), \
             answering {:?}: this run proves nothing about requests in flight",
            refused_at - sigterm_at,
            answer.map(|a| a.complete)
        );
    }

    // The look-up in flight finishes, and answers for every app it asked.
    let (answer, lookup_done, finish_answered) = lookup.await.expect("the look-up task");
    let answer = answer.unwrap_or_else(|status| {
        panic!(
            "the look-up in flight at SIGTERM was cut off ({:?} after SIGTERM): {status:?}",
            Instant::now() - sigterm_at
        )
    });
    assert!(lookup_done > sigterm_at, "the look-up ended before SIGTERM");
    assert!(answer.complete, "{:?}", answer.app_results);
    let answered: BTreeSet<&str> = answer
        .app_results
        .iter()
        .filter(|r| r.state == app_result::State::Answered as i32)
        .map(|r| r.app_id.as_str())
        .collect();
    assert_eq!(
        answered,
        lookup_apps.iter().map(String::as_str).collect(),
        "{:?}",
        answer.app_results
    );
    // The `finish` apps had not answered when the look-up ended: their tickets were still in
    // flight when the server stopped taking requests and the worker was told to stop.
    assert!(!finish_apps.is_empty());
    assert_eq!(
        finish_answered,
        Vec::<String>::new(),
        "these `finish` apps had answered before the look-up ended: their tickets were no longer \
         in flight"
    );

    // The process exits by itself, successfully.
    let status = gateway.wait_for_exit(EXIT_DEADLINE).await;
    let exited_at = Instant::now();
    assert!(status.success(), "the gateway exited with {status}");
    match tokio::net::TcpStream::connect(gateway.addr).await {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => panic!("after the exit, a connection was not refused: {other:?}"),
    }
    let stopped_line = gateway.log_line("worker stopped kind=\"tickets\"");
    drop(gateway);

    // The store, with no process running: nothing is leased; every ticket is where its group's
    // timing puts it.
    let at_exit = store_tickets(&world.store_url).await;
    assert_eq!(
        at_exit.keys().collect::<BTreeSet<_>>(),
        ids.iter().collect::<BTreeSet<_>>(),
        "tickets went missing"
    );
    for (id, (state, lease_owner)) in &at_exit {
        let group = group_of_ticket[id];
        assert_eq!(
            lease_owner.as_deref(),
            None,
            "{label}: the {group:?} ticket {id} ({state:?}) is still leased after a graceful \
             shutdown; all: {at_exit:?}"
        );
        let expected: &[TicketState] = match group {
            // ACCEPTED before the server stopped; its status poll (2 s later) is normally left
            // to the next process, but a slow machine may let this one make it.
            Group::Lookup => &[TicketState::Accepted, TicketState::Completed],
            // The app answered within the grace: this process recorded it.
            Group::Finish => &[TicketState::Completed],
            // Still waiting for the app when the grace ran out: released as it was.
            Group::Straggle => &[TicketState::Sent],
        };
        assert!(
            expected.contains(state),
            "{label}: the {group:?} ticket {id} is {state:?} after the shutdown, expected one of \
             {expected:?}; all: {at_exit:?}"
        );
    }
    let census_at_exit = census(at_exit.values().map(|(s, _)| *s));

    // A second process on the same store, everything fast now: it carries every ticket to the end
    // at once, which it could not do for a minute had the first left them leased.
    world.simulator.set_behaviour_all(&Behaviour {
        latency: Latency::Fixed(Duration::from_millis(50)),
        ..Behaviour::default()
    });
    let spawned = Instant::now();
    let gateway = world.start_gateway().await;
    let mut client = gateway.client();
    let done = loop {
        let tickets = get_tickets(&mut client, &ids).await;
        if tickets
            .iter()
            .all(|t| State::try_from(t.state).is_ok_and(|s| !is_open(s)))
        {
            break tickets;
        }
        assert!(
            spawned.elapsed() < RECOVERY_DEADLINE,
            "{label}: tickets still open {RECOVERY_DEADLINE:?} after the restart (lease \
             {LEASE:?}): {tickets:?}; at the first exit: {census_at_exit}"
        );
        tokio::time::sleep(POLL).await;
    };
    let recovered_in = spawned.elapsed();
    for (before, after) in created.iter().zip(&done) {
        assert_eq!(after.ticket_id, before.ticket_id);
        assert_eq!(after.app_id, before.app_id);
        assert_eq!(
            after.state,
            State::Completed as i32,
            "the apps are healthy, so every unbind completes: {after:?}"
        );
    }

    // What the apps saw: exactly their tickets' ids as keys. `finish` tickets were sent once (the
    // first process finished them); `straggle` ones again by the second process, same key.
    for app in world.simulator.apps() {
        let stats = world.simulator.stats(&app.id);
        let want = tickets_of.get(&app.id).cloned().unwrap_or_default();
        let seen: BTreeSet<String> = stats.unbind_keys.iter().cloned().collect();
        assert_eq!(
            seen, want,
            "{}: the idempotency keys it saw are not its tickets' ids",
            app.id
        );
        assert_eq!(stats.unbind_keys.len(), want.len(), "{}", app.id);
        let n = want.len() as u64;
        match group_of.get(&app.id) {
            Some(Group::Finish | Group::Lookup) => assert_eq!(stats.unbind_calls, n, "{}", app.id),
            Some(Group::Straggle) => assert!(stats.unbind_calls >= 2 * n, "{}", app.id),
            None => assert_eq!(stats.unbind_calls, 0, "{}", app.id),
        }
    }

    drop(gateway);

    // An idle process shuts down without waiting out the worker's grace: with a grace longer
    // than the exit deadline, it exits within the deadline.
    world.tweak = long_grace_config;
    let mut gateway = world.start_gateway().await;
    let idle_sigterm = gateway.sigterm();
    let status = gateway.wait_for_exit(EXIT_DEADLINE).await;
    let idle_exit = idle_sigterm.elapsed();
    assert!(status.success(), "the idle gateway exited with {status}");
    drop(gateway);

    eprintln!(
        "{label}: {} tickets ({} lookup, {} finish, {} straggle); new connections refused {:?} \
         after SIGTERM; look-up in flight answered {:?} after SIGTERM; exit {:?} after SIGTERM \
         ({stopped_line}); at the exit: {census_at_exit}; second process: all completed {:?} \
         after its spawn (lease {LEASE:?}); idle exit {idle_exit:?}; {:.1?} in all",
        ids.len(),
        count_in(Group::Lookup),
        count_in(Group::Finish),
        count_in(Group::Straggle),
        refused_at - sigterm_at,
        lookup_done - sigterm_at,
        exited_at - sigterm_at,
        recovered_in,
        began.elapsed()
    );
    world.stop().await;
}

fn is_open(state: State) -> bool {
    matches!(state, State::Queued | State::Sent | State::Accepted)
}

/// "accepted 3, completed 4, sent 3".
fn census(states: impl Iterator<Item = TicketState>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in states {
        *counts.entry(s.as_str()).or_default() += 1;
    }
    counts
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every ticket's state and lease owner, read from the store itself.
async fn store_tickets(url: &str) -> BTreeMap<String, (TicketState, Option<String>)> {
    // Runs the migrations (none left to run) and installs the drivers `AnyPool` needs.
    Store::connect(url, 1)
        .await
        .expect("the store opens")
        .close()
        .await;
    let pool = sqlx::AnyPool::connect(url).await.expect("the store opens");
    let rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT id, state, lease_owner FROM tickets")
            .fetch_all(&pool)
            .await
            .expect("the tickets");
    pool.close().await;
    rows.into_iter()
        .map(|(id, state, owner)| {
            (
                id,
                (
                    TicketState::parse(&state).expect("a state the gateway writes"),
                    owner,
                ),
            )
        })
        .collect()
}
