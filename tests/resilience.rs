//! Chaos through the real gRPC surface: 200 simulated apps of which some fail at random, some
//! stall and some are down; circuit breakers opening and closing again; and load shedding when
//! the gateway itself is saturated.

mod common;

use std::{collections::HashMap, time::Duration};

use common::*;
use tokio::time::Instant;
use tonic::{Code, Request};
use unbind_gateway::{
    config::Config,
    proto::{
        ListAppsRequest, ListLinkedAccountsRequest, ListLinkedAccountsResponse, app_info::Health,
        app_result::State,
    },
    testkit::simulated_apps::{Behaviour, Latency},
};

const DEADLINE: Duration = Duration::from_millis(800);

/// The two tests here each load 200 apps hard; run one at a time so neither starves the other's
/// apps into timeouts on a 2-core machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn chaos_config(config: &mut Config) {
    with_admin(config);
    config.lookup.default_deadline = DEADLINE;
    config.breaker.consecutive_failures = 3;
    config.breaker.open_base = Duration::from_secs(3);
    config.breaker.open_max = Duration::from_secs(3);
    config.breaker.jitter = 0.0;
}

/// A look-up asking every app (no cache) under the gateway's default deadline (`DEADLINE`). The
/// client waits a little longer than that (this is a debug build on a shared machine), but far
/// less than the apps' own 2 s timeout: an answer that waited for the stalled apps fails here.
async fn lookup(h: &Harness, token: &str) -> Result<ListLinkedAccountsResponse, tonic::Status> {
    let request = Request::new(ListLinkedAccountsRequest {
        session_token: token.into(),
        bypass_cache: true,
        ..Default::default()
    });
    let mut client = h.client().await;
    tokio::time::timeout(
        DEADLINE + Duration::from_millis(600),
        client.list_linked_accounts(request),
    )
    .await
    .map_err(|_| tonic::Status::deadline_exceeded("no answer by the deadline"))?
    .map(|r| r.into_inner())
}

fn states(answer: &ListLinkedAccountsResponse) -> HashMap<String, State> {
    answer
        .app_results
        .iter()
        .map(|r| (r.app_id.clone(), State::try_from(r.state).unwrap()))
        .collect()
}

#[tokio::test]
async fn chaos_every_look_up_answers_in_time_and_breakers_open_and_close() {
    let _one = ONE_AT_A_TIME.lock().await;
    let h = Harness::start(Options {
        apps: 200,
        behaviour: Behaviour {
            latency: Latency::Fixed(Duration::from_millis(20)),
            ..Behaviour::default()
        },
        tweak: chaos_config,
        ..Options::default()
    })
    .await;
    let ids: Vec<String> = h.simulator.apps().iter().map(|a| a.id.clone()).collect();
    // 10% fail at random, 5% stall, 2 are down; the rest answer after 20 ms.
    let flaky = &ids[0..20];
    let stalled = &ids[20..30];
    let down = &ids[30..32];
    let healthy = &ids[32..];
    for id in flaky {
        h.simulator.set_behaviour(
            id,
            Behaviour {
                latency: Latency::Fixed(Duration::from_millis(20)),
                error_rate: 0.3,
                ..Behaviour::default()
            },
        );
    }
    for id in stalled {
        h.simulator.set_behaviour(
            id,
            Behaviour {
                stall_rate: 1.0,
                ..Behaviour::default()
            },
        );
    }
    for id in down {
        h.simulator.stop_app(id).await;
    }
    let token = h.session().await;

    // Every look-up answers by its deadline, not the stalled apps' timeout, with each app's state
    // telling what happened to it.
    for round in 0..5 {
        let answer = lookup(&h, &token)
            .await
            .unwrap_or_else(|s| panic!("round {round}: {s:?}"));
        assert_eq!(answer.app_results.len(), 200);
        assert!(!answer.complete);
        let states = states(&answer);
        for id in healthy {
            assert_eq!(states[id], State::Answered, "round {round}: {id}");
        }
        for id in flaky {
            assert!(
                matches!(
                    states[id],
                    State::Answered | State::Failed | State::SkippedCircuitOpen
                ),
                "round {round}: {id} {:?}",
                states[id]
            );
        }
        for id in stalled {
            let expected = if round < 3 {
                State::TimedOut
            } else {
                State::SkippedCircuitOpen
            };
            assert_eq!(states[id], expected, "round {round}: {id}");
        }
        for id in down {
            // Refused connections are retried once within the budget: two failures a round.
            let expected = if round < 2 {
                State::Unavailable
            } else {
                State::SkippedCircuitOpen
            };
            assert_eq!(states[id], expected, "round {round}: {id}");
        }
    }

    // The dead and stalled apps show as down, and their breakers as open in the metrics.
    let apps = h
        .client()
        .await
        .list_apps(ListAppsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .apps;
    for app in &apps {
        let expected_down = stalled.contains(&app.app_id) || down.contains(&app.app_id);
        if expected_down {
            assert_eq!(app.health, Health::Down as i32, "{}", app.app_id);
        } else if healthy.contains(&app.app_id) {
            assert_eq!(app.health, Health::Healthy as i32, "{}", app.app_id);
        }
    }
    let (status, text) = http_get(admin_addr(&h), "/metrics").await;
    assert_eq!(status, 200);
    for id in stalled.iter().chain(down) {
        assert_eq!(
            metric(&text, &format!("unbind_app_breaker_state{{app=\"{id}\"}}")),
            Some(2.0),
            "{id}"
        );
        assert!(
            metric(
                &text,
                &format!("unbind_app_calls_total{{app=\"{id}\",outcome=\"circuit_open\"}}")
            )
            .unwrap()
                >= 2.0
        );
    }
    assert_eq!(
        metric(
            &text,
            &format!("unbind_app_breaker_state{{app=\"{}\"}}", healthy[0])
        ),
        Some(0.0)
    );

    // The apps come back; once the open period is over, one probe each closes the breakers.
    for id in down {
        h.simulator.start_app(id).await.unwrap();
    }
    for id in stalled {
        h.simulator.set_behaviour(
            id,
            Behaviour {
                latency: Latency::Fixed(Duration::from_millis(20)),
                ..Behaviour::default()
            },
        );
    }
    // Waited for, not slept: look-ups skip the apps until their open period is over, then
    // probe them once each.
    let deadline = Instant::now() + Duration::from_secs(15);
    let states = loop {
        let states = states(&lookup(&h, &token).await.unwrap());
        let closed = stalled
            .iter()
            .chain(down)
            .chain(healthy)
            .all(|id| states[id] == State::Answered);
        if closed {
            break states;
        }
        assert!(Instant::now() < deadline, "the breakers never closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for id in stalled.iter().chain(down).chain(healthy) {
        assert_eq!(states[id], State::Answered, "{id}");
    }
    let (_, text) = http_get(admin_addr(&h), "/metrics").await;
    for id in stalled.iter().chain(down) {
        assert_eq!(
            metric(&text, &format!("unbind_app_breaker_state{{app=\"{id}\"}}")),
            Some(0.0),
            "{id}"
        );
    }
    h.stop().await;
}

fn saturated_config(config: &mut Config) {
    with_admin(config);
    config.limits.max_in_flight = 4;
}

#[tokio::test]
async fn ten_times_the_sustainable_load_is_shed_not_queued() {
    let _one = ONE_AT_A_TIME.lock().await;
    let h = Harness::start(Options {
        apps: 200,
        behaviour: Behaviour {
            // Long enough that the overload lasts while the test looks at it.
            latency: Latency::Fixed(Duration::from_millis(300)),
            ..Behaviour::default()
        },
        tweak: saturated_config,
        ..Options::default()
    })
    .await;
    let token = h.session().await;
    let client = h.client().await;
    // Forty full look-ups at once against a gateway that handles four at a time.
    let channel = tonic::transport::Channel::from_shared(h.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let calls: Vec<_> = (0..40)
        .map(|_| {
            let mut client = client.clone();
            let token = token.clone();
            tokio::spawn(async move {
                let mut request = Request::new(ListLinkedAccountsRequest {
                    session_token: token,
                    bypass_cache: true,
                    ..Default::default()
                });
                request.set_timeout(Duration::from_secs(5));
                client.list_linked_accounts(request).await
            })
        })
        .collect();
    // While the gateway is saturated (every permit taken, the rest shed), health checks are
    // still answered: the gateway stays visibly alive under overload.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = http_get(admin_addr(&h), "/metrics").await;
        let shed = metric(&text, "unbind_requests_shed_total").unwrap_or(0.0);
        if shed >= 1.0 && metric(&text, "unbind_requests_in_flight") == Some(4.0) {
            break;
        }
        assert!(Instant::now() < deadline, "never saturated: {text}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let (_, text) = http_get(admin_addr(&h), "/metrics").await;
    assert!(
        metric(&text, "unbind_requests_in_flight").unwrap_or(0.0) >= 1.0,
        "the health check was answered during the overload, not after it"
    );
    let results = futures::future::join_all(calls).await;
    let (mut answered, mut shed) = (0, 0);
    for result in results {
        match result.unwrap() {
            Ok(answer) => {
                // An admitted look-up is served in full, not starved by the overload.
                let answer = answer.into_inner();
                assert!(answer.complete, "{:?}", answer.app_results);
                answered += 1;
            }
            Err(status) => {
                assert_error(&status, Code::Unavailable, "SERVICE_UNAVAILABLE");
                use tonic_types::StatusExt;
                assert!(status.get_error_details().retry_info().is_some());
                shed += 1;
            }
        }
    }
    assert!(
        answered >= 1 && shed >= 1,
        "answered {answered}, shed {shed}"
    );
    assert_eq!(answered + shed, 40);
    let (_, text) = http_get(admin_addr(&h), "/metrics").await;
    assert_eq!(
        metric(&text, "unbind_requests_shed_total"),
        Some(shed as f64)
    );
    assert_eq!(metric(&text, "unbind_requests_in_flight"), Some(0.0));
    // And once the burst is over, look-ups are admitted again.
    assert!(lookup_ok(&client, &token).await);
    h.stop().await;
}

async fn lookup_ok(
    client: &unbind_gateway::proto::account_gateway_client::AccountGatewayClient<
        tonic::transport::Channel,
    >,
    token: &str,
) -> bool {
    client
        .clone()
        .list_linked_accounts(ListLinkedAccountsRequest {
            session_token: token.into(),
            ..Default::default()
        })
        .await
        .is_ok_and(|r| r.into_inner().complete)
}

fn one_failure_opens(config: &mut Config) {
    config.breaker.consecutive_failures = 1;
    config.breaker.open_base = Duration::from_secs(60);
    config.breaker.open_max = Duration::from_secs(60);
    config.breaker.jitter = 0.0;
}

/// One app's state in a look-up with the caller's `grpc-timeout`, or (`None`) with none, so that
/// the gateway's `lookup.default_deadline` applies while the client waits as long as it takes.
/// `None` if the client's own `grpc-timeout` expired before the gateway's answer arrived (it
/// answers 5% before the deadline, which a starved machine can miss).
async fn state_with_deadline(
    h: &Harness,
    token: &str,
    app: &str,
    deadline: Option<Duration>,
) -> Option<State> {
    let mut request = Request::new(ListLinkedAccountsRequest {
        session_token: token.into(),
        app_ids: vec![app.into()],
        bypass_cache: true,
        ..Default::default()
    });
    if let Some(deadline) = deadline {
        request.set_timeout(deadline);
    }
    let mut client = h.client().await;
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        client.list_linked_accounts(request),
    )
    .await
    .expect("the gateway answers");
    match answer {
        Ok(answer) => Some(State::try_from(answer.into_inner().app_results[0].state).unwrap()),
        Err(status) if deadline.is_some() && status.code() == Code::Cancelled => None,
        Err(status) => panic!("{status:?}"),
    }
}

#[tokio::test]
async fn a_callers_tiny_deadline_cannot_open_an_apps_breaker() {
    let h = Harness::start(Options {
        apps: 2,
        tweak: |c| {
            one_failure_opens(c);
            // The tiny deadline: the gateway's own default, so the client (sending none) never
            // gives up before the gateway's answer, however slow this machine is.
            c.lookup.default_deadline = Duration::from_millis(100);
        },
        ..Options::default()
    })
    .await;
    let token = h.session().await;
    let app = h.simulator.apps()[0].id.clone();
    h.simulator.set_behaviour(
        &app,
        Behaviour {
            latency: Latency::Fixed(Duration::from_millis(400)),
            ..Behaviour::default()
        },
    );
    // 100 ms is under the 250 ms floor: the app times out, and that is not held against it (one
    // timeout that counted would open the breaker, and the next look-up would skip the app).
    for _ in 0..3 {
        let state = state_with_deadline(&h, &token, &app, None).await;
        assert_eq!(state, Some(State::TimedOut));
    }
    // 300 ms is enough to count: one timeout opens the breaker (consecutive_failures = 1). The
    // client may give up a moment before the gateway answers; the gateway counted it all the same.
    let state = state_with_deadline(&h, &token, &app, Some(Duration::from_millis(300))).await;
    assert!(matches!(state, Some(State::TimedOut) | None), "{state:?}");
    if state.is_none() {
        // The app's call runs on as its own task until its deadline: wait until it has
        // reported (the app shows as down), rather than for a guessed time.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let apps = h
                .client()
                .await
                .list_apps(ListAppsRequest::default())
                .await
                .unwrap()
                .into_inner()
                .apps;
            if apps
                .iter()
                .any(|a| a.app_id == app && a.health == Health::Down as i32)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the timeout never opened the breaker"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let state = state_with_deadline(&h, &token, &app, Some(Duration::from_secs(2))).await;
    assert_eq!(state, Some(State::SkippedCircuitOpen));
    h.stop().await;
}
