//! What runs beside the server for as long as it serves: the readiness check (the store
//! answering or not flips health and `/readyz`) and the periodic housekeeping (expired
//! verifications, old idempotency keys and audit records).

use std::{sync::Arc, time::Duration};

use crate::{
    api::{GatewayService, push::PushService},
    gateway::Gateway,
    proto::{
        account_gateway_server::AccountGatewayServer, carrier_push_server::CarrierPushServer,
        number_status_server::NumberStatusServer,
    },
};

/// Checks the store every few seconds; while it does not answer, every service reports
/// `NOT_SERVING` (and `/readyz` 503), so load balancers send callers to another replica.
pub async fn readiness(gateway: Arc<Gateway>, health: tonic_health::server::HealthReporter) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ok = tokio::time::timeout(Duration::from_secs(2), gateway.store.ping())
            .await
            .unwrap_or(false);
        if gateway.set_ready(ok) {
            if ok {
                tracing::info!("store reachable again: serving");
            } else {
                tracing::warn!("store unreachable: reporting NOT_SERVING");
            }
            set_health(&health, ok).await;
        }
    }
}

/// Periodic clean-up: expired verifications, idempotency and submission keys older than 48 hours
/// (kept at least 24, as promised), and pushes a stopped replica left half done.
pub async fn housekeeping(gateway: Arc<Gateway>) {
    const KEY_RETENTION_MS: i64 = 48 * 3_600_000;
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        match gateway.verifier.purge().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "expired verifications deleted"),
            Err(e) => tracing::warn!(error = %e, "could not purge verifications"),
        }
        let now = gateway.clock.now_ms();
        if let Err(e) = gateway
            .store
            .purge_unbind_requests(now - KEY_RETENTION_MS)
            .await
        {
            tracing::warn!(error = %e, "could not purge idempotency keys");
        }
        if let Err(e) = gateway
            .store
            .purge_push_requests(now - KEY_RETENTION_MS)
            .await
        {
            tracing::warn!(error = %e, "could not purge submission keys");
        }
        // A push still arriving after an hour was abandoned (its stream broke with its replica).
        match gateway.pusher.finish_interrupted(now - 3_600_000).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(submissions = n, "interrupted pushes finished or discarded"),
            Err(e) => tracing::warn!(error = %e, "could not finish interrupted pushes"),
        }
        let retention = gateway.config.audit.retention.as_millis() as i64;
        if let Err(e) = gateway.store.purge_audit(now - retention).await {
            tracing::warn!(error = %e, "could not purge old audit records");
        }
    }
}

/// Sets every service's health status (and the server's, the empty name).
pub async fn set_health(health: &tonic_health::server::HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    use tonic::server::NamedService;
    for name in [
        "",
        <AccountGatewayServer<GatewayService> as NamedService>::NAME,
        <CarrierPushServer<PushService> as NamedService>::NAME,
        <NumberStatusServer<PushService> as NamedService>::NAME,
    ] {
        health.set_service_status(name, status).await;
    }
}
