//! What operators use, through the real surfaces: the admin HTTP endpoint (Prometheus metrics,
//! liveness, readiness), gRPC health per service and reflection, and live catalog reload from the
//! config file (by call, by file watch and by SIGHUP).

mod common;

use std::{path::Path, sync::Arc, time::Duration};

use common::*;
use tokio::time::Instant;
use tonic::transport::Channel;
use unbind_gateway::{
    config::{AppConfig, Config},
    gateway::Gateway,
    proto::{
        CompleteVerificationRequest, ListAppsRequest, ListLinkedAccountsRequest, UnbindRequest,
        app_result::State,
    },
    reload::{Reloaded, Reloader},
    testkit::simulated_apps::{Behaviour, Latency, SimulatedApp},
};

async fn channel(h: &Harness) -> Channel {
    Channel::from_shared(h.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn gateway(h: &Harness) -> Arc<Gateway> {
    Arc::clone(&h.stack.gateway.as_ref().unwrap().gateway)
}

#[tokio::test]
async fn metrics_cover_calls_cache_verifications_and_tickets_without_a_number() {
    let h = Harness::start(Options {
        apps: 8,
        tweak: with_admin,
        ..Options::default()
    })
    .await;
    let addr = admin_addr(&h);
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    assert_eq!(http_get(addr, "/readyz").await.0, 200);

    // A wrong code, then the full flow: verify, look up twice (the second from the cache), unbind.
    let verification = h.start_verification(PHONE, ID_LAST_SIX).await;
    let code = h.wait_for_code(PHONE, 1).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let mut client = h.client().await;
    client
        .complete_verification(CompleteVerificationRequest {
            verification_id: verification.clone(),
            code: wrong.into(),
        })
        .await
        .unwrap_err();
    let token = client
        .complete_verification(CompleteVerificationRequest {
            verification_id: verification,
            code: code.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .session_token;
    let request = || ListLinkedAccountsRequest {
        session_token: token.clone(),
        ..Default::default()
    };
    let first = client
        .list_linked_accounts(request())
        .await
        .unwrap()
        .into_inner();
    client.list_linked_accounts(request()).await.unwrap();
    let account = first
        .accounts
        .iter()
        .find(|a| a.unbind_supported)
        .expect("an unbindable account");
    client
        .unbind(UnbindRequest {
            session_token: token.clone(),
            account_refs: vec![account.account_ref.clone()],
            idempotency_key: "metrics-test".into(),
        })
        .await
        .unwrap();

    let (status, text) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let at_least = |series: &str, n: f64| {
        let v = metric(&text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"));
        assert!(v >= n, "{series} = {v}, expected at least {n}");
    };
    let app = &first.app_results[0].app_id;
    at_least(
        &format!("unbind_app_calls_total{{app=\"{app}\",outcome=\"answered\"}}"),
        1.0,
    );
    at_least(
        &format!("unbind_app_call_duration_seconds_count{{app=\"{app}\"}}"),
        1.0,
    );
    at_least(&format!("unbind_app_breaker_state{{app=\"{app}\"}}"), 0.0);
    at_least("unbind_cache_hits_total", 8.0);
    at_least("unbind_cache_misses_total", 8.0);
    at_least("unbind_cache_entries", 8.0);
    at_least("unbind_verifications_total{outcome=\"started\"}", 1.0);
    at_least("unbind_verifications_total{outcome=\"wrong_code\"}", 1.0);
    at_least("unbind_verifications_total{outcome=\"verified\"}", 1.0);
    at_least(
        "unbind_requests_total{method=\"unbind.v1.AccountGateway/ListLinkedAccounts\",code=\"OK\"}",
        2.0,
    );
    at_least(
        "unbind_requests_total{method=\"unbind.v1.AccountGateway/CompleteVerification\",code=\"INVALID_ARGUMENT\"}",
        1.0,
    );
    at_least("unbind_catalog_apps", 8.0);
    assert!(
        text.lines().any(|l| l.starts_with("unbind_tickets{state=")),
        "no ticket gauge:\n{text}"
    );
    assert_eq!(metric(&text, "unbind_requests_in_flight"), Some(0.0));
    // Nothing personal in any label or value.
    for secret in [
        PHONE,
        PHONE_BARE,
        "138 0013 8000",
        ID_LAST_SIX,
        &code,
        &token,
    ] {
        assert!(!text.contains(secret), "metrics leak {secret:?}");
    }
    h.stop().await;
}

#[tokio::test]
async fn health_reports_every_service_and_both_reflection_versions_list_exactly_them() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let h = Harness::start(Options::default()).await;
    let mut health = HealthClient::new(channel(&h).await);
    for service in [
        "",
        "unbind.v1.AccountGateway",
        "unbind.v1.CarrierPush",
        "unbind.v1.NumberStatus",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "unbind.v1.Nothing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // Both reflection versions list exactly the services served here: not AppAdapter nor
    // SubscriberRegistry, whose protos the gateway holds as their client.
    let served = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "unbind.v1.AccountGateway",
        "unbind.v1.CarrierPush",
        "unbind.v1.NumberStatus",
    ];
    {
        use tonic_reflection::pb::v1::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut reflection = ServerReflectionClient::new(channel(&h).await);
        let mut answers = reflection
            .server_reflection_info(futures::stream::iter([
                ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(MessageRequest::ListServices(String::new())),
                },
                ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(MessageRequest::FileContainingSymbol(
                        "unbind.v1.AccountGateway".into(),
                    )),
                },
            ]))
            .await
            .unwrap()
            .into_inner();
        let answer = answers.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("{answer:?}");
        };
        let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        names.sort();
        assert_eq!(names, served, "v1");
        let answer = answers.message().await.unwrap().unwrap();
        assert!(
            matches!(
                answer.message_response,
                Some(MessageResponse::FileDescriptorResponse(_))
            ),
            "{answer:?}"
        );
    }
    {
        use tonic_reflection::pb::v1alpha::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut reflection = ServerReflectionClient::new(channel(&h).await);
        let mut answers = reflection
            .server_reflection_info(futures::stream::iter([
                ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(MessageRequest::ListServices(String::new())),
                },
                ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(MessageRequest::FileContainingSymbol(
                        "unbind.v1.AccountGateway".into(),
                    )),
                },
            ]))
            .await
            .expect("v1alpha reflection is served")
            .into_inner();
        let answer = answers.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("{answer:?}");
        };
        let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        names.sort();
        assert_eq!(names, served, "v1alpha");
        let answer = answers.message().await.unwrap().unwrap();
        assert!(
            matches!(
                answer.message_response,
                Some(MessageResponse::FileDescriptorResponse(_))
            ),
            "{answer:?}"
        );
    }
    h.stop().await;
}

fn first_four_apps(config: &mut Config) {
    with_admin(config);
    config.apps.truncate(4);
}

/// A catalog entry for a simulated app, as the harness writes them.
fn app_config(app: &SimulatedApp) -> AppConfig {
    app.catalog_entry(Some(Duration::from_secs(2)))
}

fn write_config(path: &Path, config: &Config) {
    std::fs::write(path, toml::to_string(config).unwrap()).unwrap();
}

async fn app_ids(h: &Harness) -> Vec<(String, bool)> {
    h.client()
        .await
        .list_apps(ListAppsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .apps
        .into_iter()
        .map(|a| (a.app_id, a.enabled))
        .collect()
}

async fn asked(h: &Harness, token: &str) -> Vec<String> {
    h.client()
        .await
        .list_linked_accounts(ListLinkedAccountsRequest {
            session_token: token.into(),
            bypass_cache: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .app_results
        .into_iter()
        .map(|r| r.app_id)
        .collect()
}

#[tokio::test]
async fn the_catalog_reloads_live_and_keeps_the_old_one_on_a_bad_file() {
    let h = Harness::start(Options {
        apps: 6,
        tweak: first_four_apps,
        ..Options::default()
    })
    .await;
    let token = h.session().await;
    let all = h.simulator.apps();
    let ids: Vec<String> = all.iter().map(|a| a.id.clone()).collect();
    let gw = gateway(&h);
    let path = h.dir.path().join("gateway.toml");
    let mut config = h.stack.config.clone();
    let reloader = Reloader::new(Arc::clone(&gw), path.clone(), |_| {});

    // The same file: nothing changes, and entries (channel, breaker) are kept.
    write_config(&path, &config);
    let kept = gw.catalog.get(&ids[1]).unwrap();
    match reloader.reload() {
        Reloaded::Applied(change) => assert!(change.is_empty(), "{change:?}"),
        other => panic!("{other:?}"),
    }
    assert!(Arc::ptr_eq(&kept, &gw.catalog.get(&ids[1]).unwrap()));

    // Two apps added, one disabled, one with a new timeout.
    let mut full = config.clone();
    full.apps.extend(all[4..].iter().map(app_config));
    full.apps[2].enabled = false;
    full.apps[3].timeout = Some(Duration::from_millis(900));
    config = full;
    write_config(&path, &config);
    match reloader.reload() {
        Reloaded::Applied(change) => {
            assert_eq!(change.added, vec![ids[4].clone(), ids[5].clone()]);
            assert_eq!(change.changed, vec![ids[2].clone(), ids[3].clone()]);
            assert!(change.removed.is_empty());
            assert_eq!(change.unchanged, 2);
        }
        other => panic!("{other:?}"),
    }
    assert!(Arc::ptr_eq(&kept, &gw.catalog.get(&ids[1]).unwrap()));
    assert_eq!(
        gw.catalog.get(&ids[3]).unwrap().timeout,
        Duration::from_millis(900)
    );
    let listed = app_ids(&h).await;
    assert_eq!(listed.len(), 6);
    assert!(listed.contains(&(ids[2].clone(), false)));
    let expected: Vec<String> = [0, 1, 3, 4, 5].iter().map(|&i| ids[i].clone()).collect();
    assert_eq!(asked(&h, &token).await, expected);

    // Bad files are rejected with the reason, and the running catalog stays.
    std::fs::write(&path, "listen = [[[ not toml").unwrap();
    let Reloaded::Rejected(reason) = reloader.reload() else {
        panic!("a broken file was applied")
    };
    assert!(reason.contains("line 1"), "{reason}");
    let mut duplicate = config.clone();
    duplicate.apps[1].id = duplicate.apps[0].id.clone();
    write_config(&path, &duplicate);
    let Reloaded::Rejected(reason) = reloader.reload() else {
        panic!("a duplicate app id was applied")
    };
    assert!(reason.contains("apps[1].id"), "{reason}");
    assert_eq!(app_ids(&h).await.len(), 6);
    let (_, text) = http_get(admin_addr(&h), "/metrics").await;
    assert_eq!(
        metric(&text, "unbind_catalog_reloads_total{result=\"rejected\"}"),
        Some(2.0)
    );
    assert_eq!(
        metric(&text, "unbind_catalog_reloads_total{result=\"applied\"}"),
        Some(1.0)
    );

    // A look-up in flight keeps the catalog it started with.
    h.simulator.set_behaviour(
        &ids[0],
        Behaviour {
            latency: Latency::Fixed(Duration::from_millis(400)),
            ..Behaviour::default()
        },
    );
    let asked_before = h.simulator.stats(&ids[0]).find_calls;
    let slow = {
        let mut client = h.client().await;
        let token = token.clone();
        tokio::spawn(async move {
            client
                .list_linked_accounts(ListLinkedAccountsRequest {
                    session_token: token,
                    bypass_cache: true,
                    ..Default::default()
                })
                .await
        })
    };
    // Reload only once the look-up is under way at that app.
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.simulator.stats(&ids[0]).find_calls == asked_before {
        assert!(
            Instant::now() < deadline,
            "the look-up never reached {}",
            ids[0]
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut without_first = config.clone();
    without_first.apps.remove(0);
    write_config(&path, &without_first);
    match reloader.reload() {
        Reloaded::Applied(change) => assert_eq!(change.removed, vec![ids[0].clone()]),
        other => panic!("{other:?}"),
    }
    let answer = slow.await.unwrap().unwrap().into_inner();
    let first = answer
        .app_results
        .iter()
        .find(|r| r.app_id == ids[0])
        .unwrap();
    assert_eq!(first.state, State::Answered as i32);
    assert!(!asked(&h, &token).await.contains(&ids[0]));
    h.stop().await;
}

async fn wait_until_listed(h: &Harness, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !app_ids(h).await.iter().any(|(a, _)| a == id) {
        assert!(Instant::now() < deadline, "{id} never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn file_changes_and_sighup_reload_the_catalog() {
    let h = Harness::start(Options {
        apps: 6,
        tweak: first_four_apps,
        ..Options::default()
    })
    .await;
    let all = h.simulator.apps();
    let path = h.dir.path().join("gateway.toml");
    let mut config = h.stack.config.clone();
    write_config(&path, &config);

    // Watched every 50 ms: an edited file is picked up by itself.
    let watcher = Reloader::new(gateway(&h), path.clone(), |_| {}).spawn(Duration::from_millis(50));
    config.apps.push(app_config(&all[4]));
    write_config(&path, &config);
    wait_until_listed(&h, &all[4].id).await;
    watcher.abort();

    // Not watched: SIGHUP reloads.
    let on_signal = Reloader::new(gateway(&h), path.clone(), |_| {}).spawn(Duration::ZERO);
    config.apps.push(app_config(&all[5]));
    write_config(&path, &config);
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_until_listed(&h, &all[5].id).await;
    on_signal.abort();
    h.stop().await;
}

/// `[[apps]]` entries as `simulate-apps --catalog-out` writes them.
fn write_apps_file(path: &Path, apps: &[AppConfig]) {
    #[derive(serde::Serialize)]
    struct AppsFile<'a> {
        apps: &'a [AppConfig],
    }
    std::fs::write(path, toml::to_string(&AppsFile { apps }).unwrap()).unwrap();
}

#[tokio::test]
async fn an_edited_apps_file_is_reloaded_like_the_config() {
    let h = Harness::start(Options {
        apps: 6,
        tweak: first_four_apps,
        ..Options::default()
    })
    .await;
    let all = h.simulator.apps();
    let path = h.dir.path().join("gateway.toml");
    let apps_path = h.dir.path().join("apps.toml");
    // The config names the catalog file and holds no entry itself.
    let mut config = h.stack.config.clone();
    let mut apps = std::mem::take(&mut config.apps);
    config.apps_file = Some(apps_path.clone());
    write_apps_file(&apps_path, &apps);
    write_config(&path, &config);

    // Only the apps file changes: the watcher sees it.
    let watcher = Reloader::new(gateway(&h), path.clone(), |_| {}).spawn(Duration::from_millis(50));
    apps.push(app_config(&all[4]));
    write_apps_file(&apps_path, &apps);
    wait_until_listed(&h, &all[4].id).await;
    watcher.abort();
    h.stop().await;
}

fn short_drain(config: &mut Config) {
    with_admin(config);
    config.limits.drain_timeout = Duration::from_secs(2);
}

/// A gateway with the admin endpoint and a 2 s drain, serving and ready, and a health `Watch` of
/// its `AccountGateway` that has heard `SERVING`; the admin address.
async fn watching_health() -> (
    Harness,
    tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
    std::net::SocketAddr,
) {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let h = Harness::start(Options {
        tweak: short_drain,
        ..Options::default()
    })
    .await;
    let mut watch = HealthClient::new(channel(&h).await)
        .watch(HealthCheckRequest {
            service: "unbind.v1.AccountGateway".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let admin = admin_addr(&h);
    assert_eq!(http_get(admin, "/readyz").await.0, 200);
    (h, watch, admin)
}

#[tokio::test]
async fn shutdown_turns_health_to_not_serving_and_a_watch_cannot_hold_it_open() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let (h, mut watch, admin) = watching_health().await;
    let stopping = tokio::spawn(h.stop());
    // The watcher hears NOT_SERVING before the connection goes.
    let next = watch.message().await.unwrap().unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    // While draining, readiness says so too (the watch holds the drain open for 2 s).
    assert_eq!(http_get(admin, "/readyz").await.0, 503);
    // And the endless watch stream does not keep the gateway from stopping.
    tokio::time::timeout(Duration::from_secs(20), stopping)
        .await
        .expect("the gateway stopped despite an open watch")
        .unwrap();
}

/// One of the gateway's long-lived tasks (the ticket recorder, the audit writer, the accept loop,
/// ...) ending while it serves stops the gateway: health turns NOT_SERVING, readiness fails, it
/// drains, and `serve` ends with an error naming the task, so whatever runs it restarts it whole.
/// Before, the process went on without that part (a dead recorder meant tickets sent and never
/// recorded). The failure is injected through the same spawner the gateway's tasks use.
#[tokio::test]
async fn a_critical_task_that_dies_stops_the_gateway_and_is_named() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let (h, mut watch, admin) = watching_health().await;

    // Not awaited: the gateway notices by itself.
    drop(
        gateway(&h)
            .critical
            .spawn("injected task", async { panic!("an injected defect") }),
    );
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("health changed")
        .unwrap()
        .unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    assert_eq!(http_get(admin, "/readyz").await.0, 503);
    let stopped = tokio::time::timeout(Duration::from_secs(20), h.stack.stop())
        .await
        .expect("the gateway stopped");
    let error = format!("{:#}", stopped.unwrap_err());
    assert!(
        error.contains("the gateway's injected task panicked"),
        "{error}"
    );
}
