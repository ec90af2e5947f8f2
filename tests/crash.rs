//! Unbinding that is never lost: the gateway runs as a real child process (`unbind-gateway serve`)
//! on a real store — a SQLite file, and PostgreSQL when `DATABASE_URL` is set — and is killed with
//! SIGKILL while 100+ tickets across 50 simulated apps are in flight (some queued, some sent with
//! the app's answer outstanding, some accepted and awaiting a status poll), then killed again in the
//! middle of the recovery. After the last restart:
//! - every ticket created before the first kill is still there (at every poll, not only at the
//!   end) and reaches COMPLETED: none is lost, none is stuck;
//! - each app saw exactly its tickets' ids as idempotency keys: each ticket under its own key, no
//!   account under two keys (a ticket re-sent under its own key is allowed: at least once);
//! - the holders' sessions survive the restarts and list the same tickets, fresh look-ups no longer
//!   show the unbound accounts;
//! - the store recorded every transition of every ticket, creation to one completion, unbroken.

#![cfg(unix)]

mod common;
#[path = "common/process.rs"]
mod process;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    time::Duration,
};

use process::{POLL, World, WorldOptions, get_tickets, look_up};
use tokio::time::Instant;
use tonic::transport::Channel;
use unbind_gateway::{
    config::{Config, UnbindConfig},
    proto::{
        GetUnbindTicketsRequest, LinkedAccount, UnbindRequest, UnbindTicket,
        account_gateway_client::AccountGatewayClient, unbind_ticket::State,
    },
    store::{Store, TicketState},
    testkit::simulated_apps::{Behaviour, Latency},
    testkit::stack::{demo_subscribers, numbered_subscribers},
};

/// Enough apps that the tickets of a few numbers number well over a hundred.
const APPS: usize = 50;
/// The same secret for every process: tickets seal the number and account id with it, and the
/// holders' sessions are signed with it.
const SECRET: &str = "crash-test-signing-secret-0123456789abcdef";
/// Longest the tickets may take to reach the state the test waits for.
const TICKET_DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ticket_is_lost_when_the_gateway_is_killed_on_sqlite() {
    crash_and_recover("sqlite", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_database, ignore = "needs DATABASE_URL")]
async fn no_ticket_is_lost_when_the_gateway_is_killed_on_postgres() {
    let url = common::fresh_postgres_database().await;
    crash_and_recover("postgres", Some(url)).await;
}

/// How the simulated apps answer: slowly enough that sends are genuinely outstanding when the
/// gateway dies, and accepting each unbind first so it has to be polled to completion.
fn in_flight_behaviour() -> Behaviour {
    Behaviour {
        latency: Latency::Uniform {
            min: Duration::from_millis(50),
            max: Duration::from_millis(300),
        },
        unbind_completion: Duration::from_millis(1500),
        ..Behaviour::default()
    }
}

/// The worker's timings on every process.
fn crash_config(config: &mut Config) {
    config.unbind = UnbindConfig {
        // Short, so a killed process's claimed tickets are taken over quickly.
        lease: Duration::from_secs(1),
        poll_interval: Duration::from_millis(50),
        status_poll_interval: Duration::from_millis(300),
        retry_base: Duration::from_millis(100),
        retry_max: Duration::from_millis(500),
        retry_jitter: false,
        // Fewer than the tickets, so some wait queued while others are sent.
        worker_concurrency: 64,
        ..UnbindConfig::default()
    };
    // At most half the lease, as the config requires (the apps answer within 300 ms).
    config.app_defaults.timeout = Duration::from_millis(500);
}

/// The whole scenario on one store: `store_url` `None` is a SQLite file in the test's directory.
async fn crash_and_recover(label: &str, store_url: Option<String>) {
    let began = Instant::now();
    let mut world = World::start(WorldOptions {
        apps: APPS,
        behaviour: in_flight_behaviour(),
        subscribers: demo_subscribers()
            .into_iter()
            .chain(numbered_subscribers(2))
            .collect(),
        store_url,
        secret: SECRET,
        tweak: crash_config,
    })
    .await;

    // Before the crash: every holder verifies and asks to unbind every account that can be.
    let gateway = world.start_gateway().await;
    let mut client = gateway.client();
    let mut holders = Vec::new();
    for subscriber in &world.subscribers {
        let token = world.verified_session(&gateway, subscriber).await;
        let before = linked_accounts(&mut client, &token).await;
        let refs: Vec<String> = before
            .iter()
            .filter(|a| a.unbind_supported)
            .map(|a| a.account_ref.clone())
            .collect();
        holders.push(Holder {
            token,
            accounts_before: before.len(),
            refs,
            tickets: Vec::new(),
        });
    }
    // All requests back to back, so the worker is still busy with the first ones when the last
    // ones arrive.
    for (i, holder) in holders.iter_mut().enumerate() {
        if holder.refs.is_empty() {
            continue;
        }
        holder.tickets = client
            .unbind(UnbindRequest {
                session_token: holder.token.clone(),
                account_refs: holder.refs.clone(),
                idempotency_key: format!("crash-holder-{i}"),
            })
            .await
            .expect("Unbind")
            .into_inner()
            .tickets;
        assert_eq!(holder.tickets.len(), holder.refs.len());
    }
    let created: Vec<UnbindTicket> = holders.iter().flat_map(|h| h.tickets.clone()).collect();
    let ids: Vec<String> = created.iter().map(|t| t.ticket_id.clone()).collect();
    assert!(
        ids.len() >= 100,
        "only {} tickets: too few to have many in flight",
        ids.len()
    );
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        ids.len(),
        "ticket ids are unique"
    );

    // First kill: with tickets in every open state: queued (never claimed), sent (claimed, the
    // app's answer outstanding: the app may or may not have the key), and accepted (the app has
    // it; only a status poll can finish it).
    let (_, at_first_kill) = wait_for_tickets(&mut client, &ids, "tickets in flight", |c| {
        c.accepted >= 10 && c.queued > 0 && c.sent > 0
    })
    .await;
    gateway.kill();

    // Second kill: after the restarted gateway has carried some tickets further, before it is done.
    let gateway = world.start_gateway().await;
    let mut client = gateway.client();
    let (_, at_second_kill) =
        wait_for_tickets(&mut client, &ids, "progress after the first restart", |c| {
            c.completed > at_first_kill.completed && c.open() > 0
        })
        .await;
    gateway.kill();

    // The last restart carries every ticket to the end.
    let gateway = world.start_gateway().await;
    let mut client = gateway.client();
    let (done, at_end) =
        wait_for_tickets(&mut client, &ids, "every ticket final", |c| c.open() == 0).await;
    assert_eq!(
        at_end.completed,
        ids.len(),
        "the apps are healthy, so every unbind completes: {at_end}; {done:?}"
    );
    for (before, after) in created.iter().zip(&done) {
        assert_eq!(after.ticket_id, before.ticket_id);
        assert_eq!(after.app_id, before.app_id);
        assert_eq!(after.account_ref, before.account_ref);
    }

    // What the apps saw: exactly their tickets' ids as keys, so each ticket under its own key and
    // no account under a second one.
    let mut expected: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for t in &created {
        expected
            .entry(t.app_id.as_str())
            .or_default()
            .insert(t.ticket_id.as_str());
    }
    let apps_with_tickets = expected.len();
    let mut calls = 0;
    for app in world.simulator.apps() {
        let stats = world.simulator.stats(&app.id);
        let seen: BTreeSet<&str> = stats.unbind_keys.iter().map(String::as_str).collect();
        let want = expected.remove(app.id.as_str()).unwrap_or_default();
        assert_eq!(
            seen, want,
            "{}: the idempotency keys it saw are not its tickets' ids",
            app.id
        );
        assert_eq!(stats.unbind_keys.len(), want.len(), "{}", app.id);
        calls += stats.unbind_calls;
    }
    assert!(
        expected.is_empty(),
        "tickets of apps outside the catalog: {expected:?}"
    );

    // The holders: sessions signed before the crash still work and list the same tickets, and a
    // fresh look-up no longer shows any account that could be unbound.
    for holder in &holders {
        let listed: BTreeSet<String> = client
            .get_unbind_tickets(GetUnbindTicketsRequest {
                session_token: holder.token.clone(),
                ..Default::default()
            })
            .await
            .expect("GetUnbindTickets by session")
            .into_inner()
            .tickets
            .into_iter()
            .map(|t| t.ticket_id)
            .collect();
        let mine: BTreeSet<String> = holder.tickets.iter().map(|t| t.ticket_id.clone()).collect();
        assert_eq!(listed, mine);
        let after = linked_accounts(&mut client, &holder.token).await;
        assert!(after.iter().all(|a| !a.unbind_supported), "{after:?}");
        assert_eq!(after.len(), holder.accounts_before - holder.refs.len());
    }

    // The store: each ticket's history is an unbroken chain of recorded transitions from its
    // creation to exactly one completion, whoever recorded them and however often the gateway
    // died on the way. (Checked last: the checks above are the ones about the unbinds themselves.)
    let store = Store::connect(&world.store_url, 2)
        .await
        .expect("the store opens");
    // Events of the same millisecond come back in any order; within one, the lifecycle's order.
    let rank = |s: TicketState| match s {
        TicketState::Queued => 0,
        TicketState::Sent => 1,
        TicketState::Accepted => 2,
        TicketState::Completed | TicketState::Rejected | TicketState::Failed => 3,
    };
    for id in &ids {
        let mut events = store.ticket_events(id).await.expect("ticket events");
        events.sort_by_key(|e| (e.at, rank(e.from), rank(e.to)));
        let created = events
            .iter()
            .filter(|e| (e.from, e.to) == (TicketState::Queued, TicketState::Queued))
            .count();
        let completions = events
            .iter()
            .filter(|e| e.to == TicketState::Completed)
            .count();
        assert_eq!((created, completions), (1, 1), "{id}: {events:?}");
        let mut state = TicketState::Queued;
        for e in &events {
            assert_eq!(
                e.from, state,
                "{label}: {id}: the transition {state:?} -> {:?} was never recorded: {events:?}",
                e.from
            );
            state = e.to;
        }
        assert_eq!(state, TicketState::Completed, "{id}: {events:?}");
    }
    store.close().await;

    eprintln!(
        "{label}: {} tickets at {} of {APPS} apps; first kill at {at_first_kill}; second kill at \
         {at_second_kill}; {} unbind calls ({} repeated under the ticket's own \
         key); {:.1?}",
        ids.len(),
        apps_with_tickets,
        calls,
        calls.saturating_sub(ids.len() as u64),
        began.elapsed()
    );
    drop(gateway);
    world.stop().await;
}

/// What the test remembers of one holder.
struct Holder {
    token: String,
    accounts_before: usize,
    refs: Vec<String>,
    tickets: Vec<UnbindTicket>,
}

/// How many tickets are in each state.
#[derive(Clone, Copy, Debug, Default)]
struct Census {
    queued: usize,
    sent: usize,
    accepted: usize,
    completed: usize,
    rejected: usize,
    failed: usize,
}

impl Census {
    fn of(tickets: &[UnbindTicket]) -> Census {
        let mut c = Census::default();
        for t in tickets {
            match State::try_from(t.state) {
                Ok(State::Queued) => c.queued += 1,
                Ok(State::Sent) => c.sent += 1,
                Ok(State::Accepted) => c.accepted += 1,
                Ok(State::Completed) => c.completed += 1,
                Ok(State::Rejected) => c.rejected += 1,
                Ok(State::Failed) => c.failed += 1,
                _ => panic!("a ticket in no known state: {t:?}"),
            }
        }
        c
    }

    fn open(&self) -> usize {
        self.queued + self.sent + self.accepted
    }
}

impl fmt::Display for Census {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "queued {}, sent {}, accepted {}, completed {}, rejected {}, failed {}",
            self.queued, self.sent, self.accepted, self.completed, self.rejected, self.failed
        )
    }
}

/// Polls the tickets until `done` holds for their census; returns them and the census. Every
/// ticket must be there at every poll: one missing, even for a moment, is a lost ticket.
async fn wait_for_tickets(
    client: &mut AccountGatewayClient<Channel>,
    ids: &[String],
    what: &str,
    done: impl Fn(&Census) -> bool,
) -> (Vec<UnbindTicket>, Census) {
    let deadline = Instant::now() + TICKET_DEADLINE;
    loop {
        let tickets = get_tickets(client, ids).await;
        let census = Census::of(&tickets);
        if done(&census) {
            return (tickets, census);
        }
        assert!(
            Instant::now() < deadline,
            "no {what} within {TICKET_DEADLINE:?}: {census}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A fresh look-up at every app; every app must answer, or the comparison before and after the
/// unbinds would mean nothing.
async fn linked_accounts(
    client: &mut AccountGatewayClient<Channel>,
    token: &str,
) -> Vec<LinkedAccount> {
    let answer = look_up(client, token, &[])
        .await
        .expect("ListLinkedAccounts");
    assert!(
        answer.complete,
        "not every app answered: {:?}",
        answer.app_results
    );
    answer.accounts
}
