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

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    fs::File,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use unbind_gateway::{
    cli::demo::{demo_subscribers, numbered_subscribers},
    proto::{
        CompleteVerificationRequest, GetUnbindTicketsRequest, LinkedAccount, ListAppsRequest,
        ListLinkedAccountsRequest, StartVerificationRequest, UnbindRequest, UnbindTicket,
        account_gateway_client::AccountGatewayClient, unbind_ticket::State,
    },
    registry::embedded::{EmbeddedRegistry, EmbeddedRegistryOptions, Subscriber, read_sms_file},
    simulator::{Behaviour, Latency, Simulator, SimulatorConfig, catalog_toml},
    store::{Store, TicketState},
};

/// Enough apps that the tickets of a few numbers number well over a hundred.
const APPS: usize = 50;
/// The same secret for every process: tickets seal the number and account id with it, and the
/// holders' sessions are signed with it.
const SECRET: &str = "crash-test-signing-secret-0123456789abcdef";
/// How often the test looks at the tickets while it waits for a condition.
const POLL: Duration = Duration::from_millis(20);
/// Longest a gateway may take to answer after it was spawned.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// Longest the tickets may take to reach the state the test waits for.
const TICKET_DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ticket_is_lost_when_the_gateway_is_killed_on_sqlite() {
    crash_and_recover("sqlite", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ticket_is_lost_when_the_gateway_is_killed_on_postgres() {
    let Some(url) = common::fresh_postgres_database().await else {
        return;
    };
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

/// The whole scenario on one store: `store_url` `None` is a SQLite file in the test's directory.
async fn crash_and_recover(label: &str, store_url: Option<String>) {
    let began = Instant::now();
    let mut world = World::start(store_url).await;

    // Before the crash: every holder verifies and asks to unbind every account that can be.
    let gateway = world.start_gateway().await;
    let mut client = gateway.client();
    let mut holders = Vec::new();
    for subscriber in world.subscribers.clone() {
        let token = verified_session(&mut client, &world.sms_file, &subscriber).await;
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

/// What outlives every gateway process: the simulated apps, the registry with its SMS file, the
/// store, and the directory holding the config file and each process's log.
struct World {
    simulator: Simulator,
    registry: EmbeddedRegistry,
    subscribers: Vec<Subscriber>,
    sms_file: PathBuf,
    store_url: String,
    starts: usize,
    // Last, so it is removed after everything that writes into it.
    dir: tempfile::TempDir,
}

impl World {
    async fn start(store_url: Option<String>) -> World {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let simulator = Simulator::start(SimulatorConfig {
            apps: APPS,
            behaviour: in_flight_behaviour(),
            ..SimulatorConfig::default()
        })
        .await
        .expect("the simulated apps start");
        let mut subscribers = demo_subscribers();
        subscribers.extend(numbered_subscribers(2));
        let sms_file = dir.path().join("sms.jsonl");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for the registry");
        let registry = EmbeddedRegistry::start(
            EmbeddedRegistryOptions {
                subscribers: subscribers.clone(),
                sms_file: sms_file.clone(),
                echo_sms: false,
            },
            listener,
        )
        .await
        .expect("the registry starts");
        let store_url = store_url
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("unbind.db").display()));
        World {
            simulator,
            registry,
            subscribers,
            sms_file,
            store_url,
            starts: 0,
            dir,
        }
    }

    /// Starts a gateway process on the world's store and waits until it answers.
    async fn start_gateway(&mut self) -> GatewayProcess {
        self.starts += 1;
        // A port nobody holds right now; each process gets its own, so a dead process's sockets
        // never stand in the way of the next.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let config = self
            .dir
            .path()
            .join(format!("gateway-{}.toml", self.starts));
        std::fs::write(&config, self.config_text(port)).expect("the config file");
        let log = self.dir.path().join(format!("gateway-{}.log", self.starts));
        let child = Command::new(env!("CARGO_BIN_EXE_unbind-gateway"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            // Keep the test run's DATABASE_URL out of the child: its store is in the config.
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "info,unbind_gateway::unbind=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("the log file"))
            .spawn()
            .expect("the gateway process starts");
        let mut process = GatewayProcess {
            child,
            log,
            client: None,
        };
        process.wait_until_ready(port).await;
        process
    }

    /// The config every process starts from: only the port differs.
    fn config_text(&self, port: u16) -> String {
        let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
        format!(
            "listen = \"127.0.0.1:{port}\"\n\
             development = true\n\
             signing_secret = {secret}\n\
             \n\
             [store]\n\
             url = {store}\n\
             max_connections = 8\n\
             \n\
             [registry]\n\
             endpoint = {registry}\n\
             \n\
             [unbind]\n\
             # Short, so a killed process's claimed tickets are taken over quickly.\n\
             lease = \"1s\"\n\
             poll_interval = \"50ms\"\n\
             status_poll_interval = \"300ms\"\n\
             retry_base = \"100ms\"\n\
             retry_max = \"500ms\"\n\
             retry_jitter = false\n\
             # Fewer than the tickets, so some wait queued while others are sent.\n\
             worker_concurrency = 64\n\
             \n\
             {apps}",
            secret = quote(SECRET),
            store = quote(&self.store_url),
            registry = quote(&self.registry.endpoint()),
            apps = catalog_toml(&self.simulator.apps()).expect("the catalog"),
        )
    }

    async fn stop(self) {
        self.registry.shutdown().await;
        self.simulator.shutdown().await;
    }
}

/// A gateway child process. Dropping it kills it (so no test, passing or failing, leaves one
/// behind); if the test is failing, its log is printed.
struct GatewayProcess {
    child: Child,
    log: PathBuf,
    client: Option<AccountGatewayClient<Channel>>,
}

impl GatewayProcess {
    async fn wait_until_ready(&mut self, port: u16) {
        let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("an endpoint")
            // No call of the test may hang it.
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(1));
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("the process's status") {
                panic!("the gateway exited while starting: {status}");
            }
            if let Ok(channel) = endpoint.connect().await {
                let mut client = AccountGatewayClient::new(channel);
                if let Ok(apps) = client.list_apps(ListAppsRequest {}).await {
                    assert_eq!(apps.into_inner().apps.len(), APPS);
                    self.client = Some(client);
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not answer within {START_DEADLINE:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// A client of this process (it answered `ListApps` before [`World::start_gateway`] returned).
    fn client(&self) -> AccountGatewayClient<Channel> {
        self.client.clone().expect("the gateway is ready")
    }

    /// SIGKILL: no shutdown handler runs, no lease is released, in-flight calls are cut off.
    fn kill(mut self) {
        // If the process had died on its own, it would not report SIGKILL below.
        self.child.kill().expect("SIGKILL");
        let status = self.child.wait().expect("the killed process's status");
        assert_eq!(status.signal(), Some(9), "{status}");
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(80)..].join("\n");
            eprintln!(
                "--- last lines of {} ---\n{tail}\n--- end ---",
                self.log.display()
            );
        }
    }
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
        let tickets = client
            .get_unbind_tickets(GetUnbindTicketsRequest {
                ticket_ids: ids.to_vec(),
                ..Default::default()
            })
            .await
            .expect("GetUnbindTickets")
            .into_inner()
            .tickets;
        let returned: Vec<&str> = tickets.iter().map(|t| t.ticket_id.as_str()).collect();
        assert_eq!(returned, ids, "tickets went missing");
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

/// Verifies a subscriber through the gateway, reading the code from the registry's SMS file.
async fn verified_session(
    client: &mut AccountGatewayClient<Channel>,
    sms_file: &Path,
    subscriber: &Subscriber,
) -> String {
    let phone = subscriber.phone_number.as_str();
    let codes_before = codes_sent_to(sms_file, phone).len();
    let verification_id = client
        .start_verification(StartVerificationRequest {
            phone_number: phone.to_owned(),
            id_last_six: subscriber.id_last_six.clone(),
        })
        .await
        .expect("StartVerification")
        .into_inner()
        .verification_id;
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(code) = codes_sent_to(sms_file, phone).into_iter().nth(codes_before) {
            break code;
        }
        assert!(Instant::now() < deadline, "no SMS code arrived");
        tokio::time::sleep(POLL).await;
    };
    client
        .complete_verification(CompleteVerificationRequest {
            verification_id,
            code,
        })
        .await
        .expect("CompleteVerification")
        .into_inner()
        .session_token
}

/// The verification codes `phone` received, oldest first.
fn codes_sent_to(sms_file: &Path, phone: &str) -> Vec<String> {
    read_sms_file(sms_file)
        .expect("the SMS file")
        .into_iter()
        .filter(|m| m.phone_number == phone)
        .filter_map(|m| {
            let (_, rest) = m.text.split_once("code is ")?;
            Some(rest.chars().take_while(char::is_ascii_digit).collect())
        })
        .collect()
}

/// A fresh look-up at every app; every app must answer, or the comparison before and after the
/// unbinds would mean nothing.
async fn linked_accounts(
    client: &mut AccountGatewayClient<Channel>,
    token: &str,
) -> Vec<LinkedAccount> {
    let answer = client
        .list_linked_accounts(ListLinkedAccountsRequest {
            session_token: token.to_owned(),
            bypass_cache: true,
            ..Default::default()
        })
        .await
        .expect("ListLinkedAccounts")
        .into_inner();
    assert!(
        answer.complete,
        "not every app answered: {:?}",
        answer.app_results
    );
    answer.accounts
}
