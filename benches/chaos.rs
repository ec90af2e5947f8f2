//! Look-ups under chaos next to the all-healthy figure, measured in one run.
//!
//! 200 simulated apps answering after a fixed 20 ms; an open-loop client offering a fixed rate of
//! uncached look-ups (`bypass_cache`, every app asked) with a 300 ms deadline; latency counted from
//! each request's scheduled start (no coordinated omission). Phases alternate, each on the same
//! gateway and the same apps:
//! - **healthy**: every app answers;
//! - **chaos**: 10% of apps fail 30% of their calls at random, 5% stall (never answer), 2 are down.
//!
//! Breakers start each chaos phase closed (the healthy phase closes them again), so every chaos
//! phase pays for opening them. A look-up that fails (e.g. the client's deadline passed before
//! the answer arrived) is counted by code and kept in the percentiles at the time it failed.
//!
//! `cargo bench --bench chaos` (options: `-- --rounds 5 --rate 25 --seconds 8 --deadline-ms 300`).

mod common;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use common::{arg, median};
use tonic::Request;
use unbind_gateway::{
    proto::{ListLinkedAccountsRequest, account_gateway_client::AccountGatewayClient},
    testkit::simulated_apps::{Behaviour, Latency, Simulator},
    testkit::stack::{Stack, StackOptions},
};

fn healthy() -> Behaviour {
    Behaviour {
        latency: Latency::Fixed(Duration::from_millis(20)),
        ..Behaviour::default()
    }
}

/// What one phase measured. Failed calls count in the latencies too (at the time the client
/// saw the failure), so a late answer cannot hide from the percentiles.
struct Phase {
    latencies: Vec<Duration>,
    answered: usize,
    errors: std::collections::BTreeMap<String, usize>,
    incomplete: usize,
    throughput: f64,
}

impl Phase {
    fn pct(&self, p: f64) -> f64 {
        let mut s = self.latencies.clone();
        s.sort();
        if s.is_empty() {
            return f64::NAN;
        }
        let i = ((s.len() as f64 * p).ceil() as usize).clamp(1, s.len()) - 1;
        s[i].as_secs_f64() * 1000.0
    }
}

/// Offers `rate` look-ups per second for `seconds`; every request is checked (a gRPC error is
/// counted apart, never as a success).
async fn open_loop(
    client: &AccountGatewayClient<tonic::transport::Channel>,
    token: &Arc<String>,
    rate: u64,
    seconds: u64,
    deadline: Duration,
) -> Phase {
    let n = rate * seconds;
    let gap = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let due = start + gap * i as u32;
        tokio::time::sleep_until(due).await;
        let mut client = client.clone();
        let token = Arc::clone(token);
        tasks.push(tokio::spawn(async move {
            let mut request = Request::new(ListLinkedAccountsRequest {
                session_token: token.as_str().to_owned(),
                bypass_cache: true,
                ..Default::default()
            });
            request.set_timeout(deadline);
            let answer = client.list_linked_accounts(request).await;
            (due.elapsed(), answer.map(|a| a.into_inner().complete))
                as (Duration, Result<bool, tonic::Status>)
        }));
    }
    let mut phase = Phase {
        latencies: Vec::with_capacity(n as usize),
        answered: 0,
        errors: Default::default(),
        incomplete: 0,
        throughput: 0.0,
    };
    for task in tasks {
        let (latency, answer) = task.await.expect("a look-up task");
        phase.latencies.push(latency);
        match answer {
            Ok(complete) => {
                phase.answered += 1;
                phase.incomplete += usize::from(!complete);
            }
            Err(status) => {
                *phase
                    .errors
                    .entry(format!("{:?}", status.code()))
                    .or_default() += 1
            }
        }
    }
    phase.throughput = phase.answered as f64 / start.elapsed().as_secs_f64();
    phase
}

async fn set_chaos(simulator: &Simulator, on: bool) -> anyhow::Result<()> {
    let ids: Vec<String> = simulator.apps().into_iter().map(|a| a.id).collect();
    let n = ids.len();
    let (flaky, rest) = ids.split_at(n / 10);
    let (stalled, rest) = rest.split_at(n / 20);
    let down = &rest[..2.min(rest.len())];
    for id in flaky {
        let mut b = healthy();
        if on {
            b.error_rate = 0.3;
        }
        simulator.set_behaviour(id, b);
    }
    for id in stalled {
        let mut b = healthy();
        if on {
            b.stall_rate = 1.0;
        }
        simulator.set_behaviour(id, b);
    }
    for id in down {
        if on {
            simulator.stop_app(id).await;
        } else if !simulator.is_running(id).await {
            simulator.start_app(id).await?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rounds: u64 = arg("--rounds", 5);
    let rate: u64 = arg("--rate", 15);
    let seconds: u64 = arg("--seconds", 8);
    let deadline = Duration::from_millis(arg("--deadline-ms", 300));
    let dir = tempfile::tempdir()?;
    let stack = Stack::start(
        StackOptions {
            apps: 200,
            behaviour: healthy(),
            ..StackOptions::new(dir.path().to_path_buf())
        },
        |c| {
            c.verification.session_ttl = Duration::from_secs(3600);
            // One breaker period per second of the phase at most: probes show in the p99.
            c.breaker.open_base = Duration::from_secs(1);
            c.breaker.open_max = Duration::from_secs(4);
        },
    )
    .await?;
    let token = Arc::new(stack.verified_session("+8613800138000", "12345X").await?);
    let client = AccountGatewayClient::connect(stack.endpoint()).await?;
    println!(
        "200 apps answering after 20 ms; {rate} look-ups/s offered for {seconds} s per phase; \
         deadline {} ms; {} cores",
        deadline.as_millis(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    // Warm-up: connections to every app.
    open_loop(&client, &token, rate, 2, deadline).await;
    let started = Instant::now();
    let mut rows: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); 2];
    let mut throughput: Vec<Vec<f64>> = vec![Vec::new(); 2];
    for round in 1..=rounds {
        for (i, chaos) in [false, true].into_iter().enumerate() {
            set_chaos(&stack.simulator, chaos).await?;
            if !chaos {
                // Let every breaker the last chaos phase opened reach its probe and close, so
                // the healthy phase is all healthy.
                tokio::time::sleep(Duration::from_secs(4)).await;
                open_loop(&client, &token, rate, 1, deadline).await;
            }
            let phase = open_loop(&client, &token, rate, seconds, deadline).await;
            println!(
                "round {round} {:<8} n={:<5} p50={:>7.2} ms  p99={:>7.2} ms  max={:>7.2} ms  \
                 {:.1} look-ups/s  incomplete={} errors={:?}",
                if chaos { "chaos" } else { "healthy" },
                phase.answered,
                phase.pct(0.5),
                phase.pct(0.99),
                phase.pct(1.0),
                phase.throughput,
                phase.incomplete,
                phase.errors,
            );
            rows[i].0.push(phase.pct(0.5));
            rows[i].1.push(phase.pct(0.99));
            throughput[i].push(phase.throughput);
        }
    }
    println!(
        "medians over {rounds} rounds ({:.0} s):",
        started.elapsed().as_secs_f64()
    );
    for (i, name) in ["healthy", "chaos"].iter().enumerate() {
        println!(
            "  {name:<8} p50={:>7.2} ms  p99={:>7.2} ms  {:.1} look-ups/s",
            median(rows[i].0.clone()),
            median(rows[i].1.clone()),
            median(throughput[i].clone()),
        );
    }
    set_chaos(&stack.simulator, false).await?;
    stack.stop().await
}
