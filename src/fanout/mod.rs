//! Fan-out: ask every selected app concurrently, each within the smaller of its own timeout and
//! the caller's deadline, through the cache; yield each app's outcome as it arrives.
//!
//! Per-app failures are data, never an error of the whole look-up: an app that missed the deadline
//! is `TIMED_OUT`, one that could not be reached `UNAVAILABLE`, one that answered with an error
//! `FAILED`.

mod adapter;
pub mod answer;
pub mod breaker;
mod cache;
mod catalog;
pub mod client;
pub mod merge;
pub mod metrics;

use std::{sync::Arc, time::Duration};

use futures::{FutureExt, future::BoxFuture, stream::FuturesUnordered};
use tokio::time::Instant;

pub use adapter::{AppCall, AppService, CallError, app_call_span, find_accounts};
pub use cache::{Accounts, CacheKey, Cached, LookupCache, accounts};
pub use catalog::{App, Catalog, CatalogChange, CatalogSnapshot};
pub use client::{AppClient, Gate, RpcError};
pub use metrics::FanoutMetrics;
use tracing::Instrument;

use crate::{clock::Clock, domain::E164, security::NumberHash};

/// How one app's part of a look-up ended.
pub struct AppOutcome {
    pub app: Arc<App>,
    pub result: Result<Accounts, CallError>,
    pub from_cache: bool,
    /// When the app gave the answer (gateway clock, ms since the epoch): for a cached answer,
    /// when it was fetched.
    pub answered_ms: i64,
    pub latency: Duration,
}

/// The fan-out engine.
pub struct FanOut {
    cache: Arc<LookupCache>,
    metrics: FanoutMetrics,
    clock: Clock,
}

impl FanOut {
    pub fn new(cache: LookupCache, metrics: FanoutMetrics, clock: Clock) -> Self {
        Self {
            cache: Arc::new(cache),
            metrics,
            clock,
        }
    }

    /// The cache, for invalidation and metrics.
    pub fn cache(&self) -> &Arc<LookupCache> {
        &self.cache
    }

    /// Starts the look-up of `phone` at every app in `apps`; the outcomes arrive in the order the
    /// apps answer, every one by `deadline`.
    pub fn lookup(
        &self,
        phone: &E164,
        number: &NumberHash,
        apps: Vec<Arc<App>>,
        deadline: Instant,
        bypass_cache: bool,
    ) -> FuturesUnordered<BoxFuture<'static, AppOutcome>> {
        let started = Instant::now();
        let short = number.short();
        let asked = apps.len() as u64;
        let cached = if bypass_cache {
            vec![None; apps.len()]
        } else {
            self.cache.cached(short, apps.iter().map(|app| &app.id))
        };
        let hits = cached.iter().filter(|answer| answer.is_some()).count() as u64;
        let outcomes = apps
            .into_iter()
            .zip(cached)
            .map(|(app, cached)| {
                if let Some(cached) = cached {
                    return futures::future::ready(AppOutcome {
                        app,
                        result: Ok(cached.accounts),
                        from_cache: true,
                        answered_ms: cached.fetched_ms,
                        latency: started.elapsed(),
                    })
                    .boxed();
                }
                let key = (short, app.id.clone());
                let call_deadline = deadline.min(started + app.timeout);
                let call = self.cache.call(key, || {
                    find_accounts(Arc::clone(&app), phone.clone(), call_deadline)
                        .instrument(app_call_span(&app))
                });
                let clock = self.clock.clone();
                async move {
                    let result = tokio::time::timeout_at(call_deadline, call)
                        .await
                        .unwrap_or(Err(CallError::TimedOut));
                    AppOutcome {
                        app,
                        result,
                        from_cache: false,
                        answered_ms: clock.now_ms(),
                        latency: started.elapsed(),
                    }
                }
                .boxed()
            })
            .collect();
        self.metrics.cache_hits(hits);
        self.metrics.cache_misses(asked - hits);
        outcomes
    }
}
