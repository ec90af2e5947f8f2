//! Look-up latency through the real stack: 200 simulated apps each answering after a fixed 20 ms,
//! a gateway on loopback, one client. Measures, in one run, uncached look-ups (`bypass_cache`,
//! every app asked) and cached ones, and prints median, p90, p99 and max.
//!
//! `cargo bench --bench lookup` (add `-- --apps 200 --uncached 300 --cached 3000` to change the
//! counts). The apps run in this process too, on the same 2 cores, so uncached figures include
//! the simulated apps' own cost.

use std::time::{Duration, Instant};

use unbind_gateway::{
    cli::demo::{Stack, StackOptions},
    proto::{
        FindAccountsRequest, ListLinkedAccountsRequest,
        account_gateway_client::AccountGatewayClient, app_adapter_client::AppAdapterClient,
    },
    simulator::{Behaviour, Latency, SimulatedApp},
};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pct =
        |p: f64| samples[((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label:<28} n={:<6} median={:>7.2} ms  p90={:>7.2} ms  p99={:>7.2} ms  max={:>7.2} ms",
        samples.len(),
        ms(pct(0.5)),
        ms(pct(0.9)),
        ms(pct(0.99)),
        ms(*samples.last().unwrap_or(&Duration::ZERO)),
    );
}

async fn run_lookups(
    client: &mut AccountGatewayClient<tonic::transport::Channel>,
    token: &str,
    n: usize,
    bypass_cache: bool,
    apps: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let answer = client
            .list_linked_accounts(ListLinkedAccountsRequest {
                session_token: token.to_owned(),
                bypass_cache,
                ..Default::default()
            })
            .await?
            .into_inner();
        samples.push(started.elapsed());
        // An incomplete answer is not a success.
        anyhow::ensure!(
            answer.complete && answer.app_results.len() == apps,
            "incomplete look-up"
        );
    }
    Ok(samples)
}

/// The baseline: the same client calling every app's `FindAccounts` directly and concurrently,
/// over one channel per app, with no gateway in between.
async fn run_raw_fanout(apps: &[SimulatedApp], n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut clients = Vec::with_capacity(apps.len());
    for app in apps {
        clients.push(AppAdapterClient::connect(app.endpoint.clone()).await?);
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let calls = clients.iter().map(|c| {
            let mut c = c.clone();
            async move {
                c.find_accounts(FindAccountsRequest {
                    request_id: "bench".into(),
                    phone_number: "+8613800138000".into(),
                })
                .await
            }
        });
        for answer in futures::future::join_all(calls).await {
            answer?;
        }
        samples.push(started.elapsed());
    }
    Ok(samples)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let apps = arg("--apps", 200);
    let uncached = arg("--uncached", 300);
    let cached = arg("--cached", 3000);
    let dir = tempfile::tempdir()?;
    let stack = Stack::start(
        StackOptions {
            apps,
            behaviour: Behaviour {
                latency: Latency::Fixed(Duration::from_millis(20)),
                ..Behaviour::default()
            },
            ..StackOptions::new(dir.path().to_path_buf())
        },
        |c| {
            // Sessions must outlive the run.
            c.verification.session_ttl = Duration::from_secs(3600);
        },
    )
    .await?;
    let token = stack.verified_session("+8613800138000", "12345X").await?;
    let mut client = AccountGatewayClient::connect(stack.endpoint()).await?;
    // Warm-up: connections to every app, caches, allocator.
    run_lookups(&mut client, &token, 20, true, apps).await?;
    println!(
        "{apps} apps answering after a fixed 20 ms; {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    report(
        "raw fan-out (no gateway)",
        run_raw_fanout(&stack.simulator.apps(), uncached).await?,
    );
    report(
        "uncached look-up",
        run_lookups(&mut client, &token, uncached, true, apps).await?,
    );
    report(
        "cached look-up",
        run_lookups(&mut client, &token, cached, false, apps).await?,
    );
    stack.stop().await
}
