//! The fan-out's metrics, declared beside what they measure: each app's calls, latency and
//! breaker, the look-up cache, and the catalog (its size and reloads). Registered in the gateway's
//! one registry (`crate::metrics`), which serves them with the rest.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `unbind_app_calls_total` | counter | `app`, `outcome` (answered, timed_out, unavailable, failed, circuit_open; a refused answer counts as failed) |
//! | `unbind_app_answers_refused_total` | counter | `app`, `reason` (too_many_accounts, empty_account_id, account_id_too_long, hint_too_long, answer_too_large, malformed) |
//! | `unbind_app_call_duration_seconds` | histogram | `app` |
//! | `unbind_app_rpc_calls_total` | counter | `app`, `rpc` (unbind_account, get_unbind_status, notify_numbers_recycled: the workers' calls), `outcome` (answered, timed_out, unavailable, failed, circuit_open) |
//! | `unbind_app_breaker_state` | gauge (0 closed, 1 half-open, 2 open) | `app` |
//! | `unbind_app_breaker_opened` | gauge (times opened since the entry was built) | `app` |
//! | `unbind_cache_hits_total`, `unbind_cache_misses_total` | counter | |
//! | `unbind_cache_entries` | gauge | |
//! | `unbind_catalog_apps` | gauge | |
//! | `unbind_catalog_reloads_total` | counter | `result` (applied, unchanged, rejected) |

use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
};

use super::{CallError, CatalogSnapshot, client::Rpc};
use crate::{
    domain::AppId,
    metrics::{HistogramFamily, Metrics, ResultLabels, latency_histogram},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabels {
    app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppReasonLabels {
    app: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppRpcLabels {
    app: String,
    rpc: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppOutcomeLabels {
    app: String,
    outcome: &'static str,
}

struct Families {
    app_calls: Family<AppOutcomeLabels, Counter>,
    answers_refused: Family<AppReasonLabels, Counter>,
    app_latency: HistogramFamily<AppLabels>,
    app_rpc_calls: Family<AppRpcLabels, Counter>,
    breaker_state: Family<AppLabels, Gauge>,
    breaker_opened: Family<AppLabels, Gauge>,
    cache_hits: Counter,
    cache_misses: Counter,
    cache_entries: Gauge,
    catalog_apps: Gauge,
    catalog_reloads: Family<ResultLabels, Counter>,
}

/// The fan-out's metric families; cheap to clone.
#[derive(Clone)]
pub struct FanoutMetrics {
    families: Arc<Families>,
}

impl FanoutMetrics {
    /// Declares the families in `metrics`' registry (once per registry).
    pub fn register(metrics: &Metrics) -> Self {
        let families = Families {
            app_calls: Family::default(),
            answers_refused: Family::default(),
            app_latency: Family::new_with_constructor(latency_histogram),
            app_rpc_calls: Family::default(),
            breaker_state: Family::default(),
            breaker_opened: Family::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_entries: Gauge::default(),
            catalog_apps: Gauge::default(),
            catalog_reloads: Family::default(),
        };
        let f = &families;
        metrics.register(
            "app_calls",
            "FindAccounts calls to each app, by outcome",
            f.app_calls.clone(),
        );
        metrics.register(
            "app_answers_refused",
            "FindAccounts answers refused for breaking a limit on what an adapter may answer, by app and reason",
            f.answers_refused.clone(),
        );
        metrics.register(
            "app_call_duration_seconds",
            "Latency of FindAccounts calls to each app",
            f.app_latency.clone(),
        );
        metrics.register(
            "app_rpc_calls",
            "The workers' calls to each app (UnbindAccount, GetUnbindStatus, NotifyNumbersRecycled), by outcome",
            f.app_rpc_calls.clone(),
        );
        metrics.register(
            "app_breaker_state",
            "Circuit breaker of each app: 0 closed, 1 half-open, 2 open",
            f.breaker_state.clone(),
        );
        metrics.register(
            "app_breaker_opened",
            "Times each app's breaker opened since its catalog entry was built",
            f.breaker_opened.clone(),
        );
        metrics.register(
            "cache_hits",
            "App answers served from the cache",
            f.cache_hits.clone(),
        );
        metrics.register(
            "cache_misses",
            "App answers not in the cache (the app was asked)",
            f.cache_misses.clone(),
        );
        metrics.register(
            "cache_entries",
            "Weight of the answers held in the cache: one per account, at least one per (number, app) answer",
            f.cache_entries.clone(),
        );
        metrics.register(
            "catalog_apps",
            "Apps in the catalog",
            f.catalog_apps.clone(),
        );
        metrics.register(
            "catalog_reloads",
            "Catalog reloads by result",
            f.catalog_reloads.clone(),
        );
        Self {
            families: Arc::new(families),
        }
    }

    /// The counters of one app.
    pub fn app(&self, id: &AppId) -> AppMetrics {
        let f = &self.families;
        let calls = |outcome| {
            f.app_calls.get_or_create_owned(&AppOutcomeLabels {
                app: id.to_string(),
                outcome,
            })
        };
        AppMetrics {
            answered: calls("answered"),
            timed_out: calls(CallError::TimedOut.as_str()),
            unavailable: calls(CallError::Unavailable.as_str()),
            failed: calls(CallError::Failed(tonic::Code::Internal).as_str()),
            circuit_open: calls(CallError::CircuitOpen.as_str()),
            app: id.to_string(),
            refused: f.answers_refused.clone(),
            rpc_calls: f.app_rpc_calls.clone(),
            latency: f.app_latency.get_or_create_owned(&AppLabels {
                app: id.to_string(),
            }),
        }
    }

    pub fn cache_hits(&self, n: u64) {
        self.families.cache_hits.inc_by(n);
    }

    pub fn cache_misses(&self, n: u64) {
        self.families.cache_misses.inc_by(n);
    }

    /// Counts a catalog reload (`applied`, `unchanged` or `rejected`).
    pub fn catalog_reload(&self, result: &'static str) {
        self.families
            .catalog_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Reads the gauges that are states rather than events: breakers, catalog size and cache
    /// entries.
    pub fn observe(&self, catalog: &CatalogSnapshot, cache_entries: u64) {
        let f = &self.families;
        f.breaker_state.clear();
        f.breaker_opened.clear();
        for app in catalog.all() {
            let labels = AppLabels {
                app: app.id.to_string(),
            };
            f.breaker_state
                .get_or_create(&labels)
                .set(app.breaker_state().as_gauge());
            f.breaker_opened
                .get_or_create(&labels)
                .set(app.client.breaker.times_opened() as i64);
        }
        f.catalog_apps.set(catalog.all().len() as i64);
        f.cache_entries.set(cache_entries as i64);
    }
}

/// One app's counters, resolved once when its catalog entry is built (no label look-up per call).
#[derive(Clone)]
pub struct AppMetrics {
    answered: Counter,
    timed_out: Counter,
    unavailable: Counter,
    failed: Counter,
    circuit_open: Counter,
    latency: Histogram,
    /// The app's label, for the series that appear on first use: refused answers by reason, the
    /// workers' calls by RPC and outcome.
    app: String,
    refused: Family<AppReasonLabels, Counter>,
    rpc_calls: Family<AppRpcLabels, Counter>,
}

impl AppMetrics {
    /// Counts one call and, if the app was asked, its latency.
    pub fn record(&self, result: Result<(), CallError>, seconds: f64) {
        let counter = match result {
            Ok(()) => &self.answered,
            Err(CallError::TimedOut | CallError::CallerDeadline) => &self.timed_out,
            Err(CallError::Unavailable) => &self.unavailable,
            Err(CallError::Failed(_)) => &self.failed,
            Err(CallError::Refused(refusal)) => {
                self.refused
                    .get_or_create(&AppReasonLabels {
                        app: self.app.clone(),
                        reason: refusal.as_label(),
                    })
                    .inc();
                &self.failed
            }
            Err(CallError::CircuitOpen) => {
                self.circuit_open.inc();
                return;
            }
        };
        counter.inc();
        self.latency.observe(seconds);
    }

    /// Counts one of the workers' calls (not on a person's path: the series is looked up per
    /// call).
    pub fn record_rpc(&self, rpc: Rpc, outcome: &'static str) {
        self.rpc_calls
            .get_or_create(&AppRpcLabels {
                app: self.app.clone(),
                rpc: rpc.as_label(),
                outcome,
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_calls_are_counted_by_outcome_in_the_shared_registry() {
        let metrics = Metrics::new();
        let fanout = FanoutMetrics::register(&metrics);
        let app = fanout.app(&AppId::parse("app-001").unwrap());
        app.record(Ok(()), 0.02);
        app.record(Err(CallError::CallerDeadline), 0.5);
        app.record(Err(CallError::CircuitOpen), 0.0);
        app.record(
            Err(CallError::Refused(
                crate::fanout::answer::Refusal::TooManyAccounts { limit: 1000 },
            )),
            0.1,
        );
        fanout.cache_hits(3);
        let text = metrics.encode();
        for line in [
            "unbind_app_calls_total{app=\"app-001\",outcome=\"answered\"} 1",
            "unbind_app_calls_total{app=\"app-001\",outcome=\"timed_out\"} 1",
            "unbind_app_calls_total{app=\"app-001\",outcome=\"circuit_open\"} 1",
            "unbind_app_calls_total{app=\"app-001\",outcome=\"failed\"} 1",
            "unbind_app_answers_refused_total{app=\"app-001\",reason=\"too_many_accounts\"} 1",
            "unbind_app_call_duration_seconds_count{app=\"app-001\"} 3",
            "unbind_cache_hits_total 3",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
