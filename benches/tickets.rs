//! Ticket throughput through the real stack, SQLite and PostgreSQL side by side in one run:
//! tickets created per second (`Unbind` RPCs of 100 refs, 8 in flight) and tickets completed per
//! second end to end (from the first `Unbind` until the worker has recorded every ticket
//! `COMPLETED`), against 200 simulated apps that answer `DONE` after a fixed 5 ms.
//!
//! `DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench tickets`
//! (`-- --tickets 5000 --runs 3`). Without `DATABASE_URL` only SQLite runs.

mod common;

use std::time::{Duration, Instant};

use common::{arg, median};

use futures::{StreamExt, stream};
use unbind_gateway::{
    proto::{
        ListLinkedAccountsRequest, UnbindRequest, account_gateway_client::AccountGatewayClient,
    },
    store::{Store, TicketState},
    testkit::simulated_apps::{Behaviour, Latency},
    testkit::stack::{Stack, StackOptions, numbered_subscribers},
};

struct Figures {
    created_per_s: f64,
    completed_per_s: f64,
}

async fn run(store_url: Option<String>, tickets: usize) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let numbers = tickets / 120 + 2;
    let stack = Stack::start(
        StackOptions {
            apps: 200,
            behaviour: Behaviour {
                latency: Latency::Fixed(Duration::from_millis(5)),
                ..Behaviour::default()
            },
            store_url,
            subscribers: numbered_subscribers(numbers),
            ..StackOptions::new(dir.path().to_path_buf())
        },
        |c| {
            c.verification.session_ttl = Duration::from_secs(3600);
            c.lookup.default_deadline = Duration::from_secs(10);
            c.unbind.poll_interval = Duration::from_millis(10);
        },
    )
    .await?;
    let client = AccountGatewayClient::connect(stack.endpoint()).await?;
    // Gather refs first (verification and look-ups are not what is measured).
    let mut requests = Vec::new();
    let mut total = 0;
    for (i, s) in numbered_subscribers(numbers).iter().enumerate() {
        if total >= tickets {
            break;
        }
        let token = stack
            .verified_session(s.phone_number.expose(), s.id_last_six.expose())
            .await?;
        let answer = client
            .clone()
            .list_linked_accounts(ListLinkedAccountsRequest {
                session_token: token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let refs: Vec<String> = answer
            .accounts
            .into_iter()
            .filter(|a| a.unbind_supported)
            .map(|a| a.account_ref)
            .take(tickets - total)
            .collect();
        total += refs.len();
        for (j, chunk) in refs.chunks(100).enumerate() {
            requests.push(UnbindRequest {
                session_token: token.clone(),
                account_refs: chunk.to_vec(),
                idempotency_key: format!("bench-{i}-{j}"),
            });
        }
    }
    let store: Store = stack
        .gateway
        .as_ref()
        .map(|g| g.gateway.store.clone())
        .ok_or_else(|| anyhow::anyhow!("no gateway"))?;
    let started = Instant::now();
    let created: usize = stream::iter(requests)
        .map(|r| {
            let mut c = client.clone();
            async move { c.unbind(r).await.map(|a| a.into_inner().tickets.len()) }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .sum();
    let created_in = started.elapsed();
    anyhow::ensure!(created == total, "created {created} of {total}");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let counts = store.count_tickets_by_state().await?;
        let done: i64 = counts
            .iter()
            .filter(|(s, _)| *s == TicketState::Completed)
            .map(|(_, n)| n)
            .sum();
        let open: i64 = counts
            .iter()
            .filter(|(s, _)| s.is_open())
            .map(|(_, n)| n)
            .sum();
        if open == 0 {
            anyhow::ensure!(done as usize == total, "only {done} of {total} completed");
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "tickets still open");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let completed_in = started.elapsed();
    stack.stop().await?;
    Ok(Figures {
        created_per_s: total as f64 / created_in.as_secs_f64(),
        completed_per_s: total as f64 / completed_in.as_secs_f64(),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let tickets: usize = arg("--tickets", 3000);
    let runs: usize = arg("--runs", 3);
    let postgres = std::env::var("DATABASE_URL").ok();
    println!("{tickets} tickets over 200 apps answering DONE after 5 ms; median of {runs} runs");
    let mut stores: Vec<(&str, Option<String>)> = vec![("sqlite", None)];
    if let Some(base) = &postgres {
        stores.push(("postgres", Some(base.clone())));
    }
    for (name, base) in stores {
        let (mut created, mut completed) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let url = match &base {
                Some(base) => {
                    Some(Store::create_scratch_postgres_database(base, "unbind_bench").await?)
                }
                None => None,
            };
            let f = run(url, tickets).await?;
            created.push(f.created_per_s);
            completed.push(f.completed_per_s);
        }
        println!(
            "{name:<9} created {:>8.0} tickets/s   completed end to end {:>8.0} tickets/s   (runs: {:?} / {:?})",
            median(created.clone()),
            median(completed.clone()),
            created.iter().map(|x| x.round()).collect::<Vec<_>>(),
            completed.iter().map(|x| x.round()).collect::<Vec<_>>(),
        );
    }
    Ok(())
}
