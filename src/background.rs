//! What runs beside the server for as long as it serves: the readiness check (the store
//! answering or not flips health and `/readyz`), the periodic housekeeping (expired
//! verifications, old idempotency keys and audit records), and, after a key rotation, the
//! rewrite of values at rest under the active key.

use std::{sync::Arc, time::Duration};

use crate::{
    api::{GatewayService, push::PushService},
    gateway::Gateway,
    proto::{
        account_gateway_server::AccountGatewayServer, carrier_push_server::CarrierPushServer,
        number_status_server::NumberStatusServer,
    },
    security::SealFor,
    store::SealedColumn,
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
        let ms = |d: Duration| now - d.as_millis() as i64;
        let kept = &gateway.config.retention;
        let store = &gateway.store;
        for (what, purged) in [
            (
                "audit records",
                store.purge_audit(ms(gateway.config.audit.retention)).await,
            ),
            (
                "final tickets",
                store.purge_final_tickets(ms(kept.tickets)).await,
            ),
            (
                "finished pushes",
                store.purge_finished_pushes(ms(kept.pushes)).await,
            ),
            (
                "re-issue dates before the history window",
                store
                    .purge_recycled_history(ms(kept.recycled_history))
                    .await,
            ),
        ] {
            match purged {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, what, "retention: deleted"),
                Err(e) => tracing::warn!(error = %e, what, "retention: could not purge"),
            }
        }
    }
}

/// Values per page of the background rewrite, and the pause between pages: at most 5,000 rows a
/// second, so a rotation after a million pushed numbers takes minutes and never crowds the store.
const RESEAL_PAGE: i64 = 500;
const RESEAL_PAUSE: Duration = Duration::from_millis(100);

/// After a `stored-data` key rotation (or while the legacy secret is configured), rewrites every
/// value at rest that another key sealed under the active key, page by page, each row only if
/// it still holds what was read. Runs once at start-up; returns how many values it rewrote.
/// Every replica may run it at once: the rewrites are compare-and-set, so they only repeat work.
pub async fn reseal(gateway: Arc<Gateway>) -> u64 {
    let keys = &gateway.keys;
    if !keys.stored_data_has_older_keys() {
        return 0;
    }
    let mut rewritten = 0u64;
    for column in SealedColumn::ALL {
        // Every key sorts after the empty string, so the first page starts at the first row.
        let mut after = (String::new(), 0i64);
        loop {
            let page = match gateway
                .store
                .sealed_page(column, (&after.0, after.1), RESEAL_PAGE)
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(column = column.name(), error = %e, "could not read sealed values to rewrite; trying again");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            };
            let Some(last) = page.last() else { break };
            after = (last.key.clone(), last.seq);
            for value in &page {
                let for_ = match column {
                    SealedColumn::TicketAccountId | SealedColumn::TicketHint => {
                        SealFor::AccountId(&value.row)
                    }
                    SealedColumn::TicketNumber | SealedColumn::PushedNumber => {
                        SealFor::Number(&value.row)
                    }
                };
                let Some((plain, false)) = keys.open_naming_key(for_, &value.sealed) else {
                    continue;
                };
                match gateway
                    .store
                    .replace_sealed(column, value, &keys.seal(for_, &plain))
                    .await
                {
                    Ok(true) => rewritten += 1,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(column = column.name(), error = %e, "could not rewrite a sealed value")
                    }
                }
            }
            tokio::time::sleep(RESEAL_PAUSE).await;
        }
    }
    tracing::info!(
        rewritten,
        "values at rest sealed under older keys are now under the active stored-data key"
    );
    rewritten
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
