//! `kill -HUP` on a running `unbind-gateway serve` reloads its catalog: the real binary, its real
//! config file, the signal from outside. The file watch is off, so nothing but the signal can
//! have reloaded it.

#![cfg(unix)]

#[path = "common/process.rs"]
mod process;

use std::time::Duration;

use process::{POLL, World, WorldOptions};
use tokio::time::Instant;
use unbind_gateway::{config::Config, proto::ListAppsRequest, testkit::stack::demo_subscribers};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_catalog_of_a_running_serve() {
    let mut world = World::start(WorldOptions {
        apps: 3,
        behaviour: Default::default(),
        subscribers: demo_subscribers(),
        store_url: None,
        secret: "sighup-test-signing-secret-0123456789abcdef",
        // SIGHUP only: no file watch.
        tweak: |c| c.reload.watch_interval = Duration::ZERO,
    })
    .await;
    let mut gateway = world.start_gateway().await;
    let listed = |gateway: &process::GatewayProcess| {
        let mut client = gateway.client();
        async move {
            let apps = client
                .list_apps(ListAppsRequest {})
                .await
                .unwrap()
                .into_inner()
                .apps;
            apps.into_iter()
                .map(|a| (a.app_id, a.enabled))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed(&gateway).await.len(), 3);

    // The operator edits the file: the third app is disabled.
    let mut config: Config =
        toml::from_str(&std::fs::read_to_string(&gateway.config).unwrap()).unwrap();
    config.apps[2].enabled = false;
    std::fs::write(&gateway.config, toml::to_string(&config).unwrap()).unwrap();
    let disabled = config.apps[2].id.clone();
    // Without a signal nothing reloads it (the watch is off): still enabled.
    assert!(listed(&gateway).await.iter().all(|(_, enabled)| *enabled));

    gateway.sighup();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let apps = listed(&gateway).await;
        if apps.iter().any(|(id, enabled)| *id == disabled && !enabled) {
            assert_eq!(apps.iter().filter(|(_, enabled)| *enabled).count(), 2);
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload: {apps:?}");
        tokio::time::sleep(POLL).await;
    }
    assert!(
        gateway.log_line("SIGHUP").contains("reloading"),
        "{}",
        gateway.log_line("SIGHUP")
    );
    // The signal did not end it: it still shuts down cleanly when told to.
    gateway.sigterm();
    let status = gateway.wait_for_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
    world.stop().await;
}
