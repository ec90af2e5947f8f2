//! Rate limits that hold across replicas (issue 14, item 6). A tenant's request rate and its
//! wrong-code budget are token buckets in the store (`rate_buckets`), shared by every replica:
//! however a tenant's calls spread over the replicas, together they get its configured rate, not
//! the rate times the number of replicas.
//!
//! Asking the store for every request would put a write on every call's path, so each replica
//! draws a **block** of tokens at once (5% of a second's rate, at least one, at most a quarter of
//! the burst) and spends them locally for at most [`HOLD`]; an empty bucket is remembered
//! locally until a token could be back (at most [`HOLD`]), so a tenant over its rate is refused
//! without a store call per request. What this costs in accuracy: a replica may sit on part of a
//! block another replica could have used (at most one block per replica, for at most a second),
//! so the total can fall short of the rate by that much, never exceed it.
//!
//! A store that cannot answer does not stop the gateway: the replica falls back to a bucket of
//! its own at the full rate (the limits are then per replica, as before this module) and says so
//! in the log.

use std::{sync::Mutex, time::Duration};

use tokio::time::Instant;

use crate::{
    clock::Clock,
    store::{BucketSpec, Store},
};

/// How long tokens drawn from the store stay spendable locally, and the longest a replica
/// remembers an empty bucket without asking again.
pub const HOLD: Duration = Duration::from_secs(1);

/// Where shared buckets live.
#[derive(Clone)]
pub struct SharedStore {
    pub store: Store,
    pub clock: Clock,
}

/// A token bucket every replica draws from.
#[derive(Debug)]
pub(crate) struct SharedBucket {
    name: String,
    spec: BucketSpec,
    block: f64,
    local: Mutex<Local>,
    /// This replica's own bucket: the whole limit, alone (when there is no store, or it fails).
    fallback: TokenBucket,
    shared: Option<SharedStoreRef>,
}

/// The store and clock, without their `Debug`.
struct SharedStoreRef(SharedStore);

impl std::fmt::Debug for SharedStoreRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedStore")
    }
}

/// What this replica holds of a shared bucket.
#[derive(Debug)]
struct Local {
    tokens: f64,
    drawn_at: Instant,
    empty_until: Option<Instant>,
}

impl SharedBucket {
    /// `rate` tokens a second, at most `burst` saved up, named `name` in the store; local only
    /// without `shared`.
    pub(crate) fn new(name: String, rate: f64, burst: u32, shared: Option<SharedStore>) -> Self {
        let spec = BucketSpec {
            rate,
            burst: f64::from(burst),
        };
        Self {
            name,
            block: (rate * 0.05).clamp(1.0, (spec.burst / 4.0).max(1.0)),
            spec,
            local: Mutex::new(Local {
                tokens: 0.0,
                drawn_at: Instant::now(),
                empty_until: None,
            }),
            fallback: TokenBucket::new(rate, burst),
            shared: shared.map(SharedStoreRef),
        }
    }

    /// Takes a token, or says how long until one may be available.
    pub(crate) async fn take(&self) -> Result<(), Duration> {
        let Some(SharedStoreRef(shared)) = &self.shared else {
            return self.fallback.take();
        };
        {
            let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if local.tokens >= 1.0 && now.duration_since(local.drawn_at) < HOLD {
                local.tokens -= 1.0;
                return Ok(());
            }
            if let Some(until) = local.empty_until.filter(|u| *u > now) {
                return Err(self.one_token_wait().max(until - now));
            }
        }
        let drawn = shared
            .store
            .take_tokens(&self.name, self.block, self.spec, shared.clock.now_ms())
            .await;
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match drawn {
            Ok(granted) if granted >= 1.0 => {
                if now.duration_since(local.drawn_at) >= HOLD {
                    local.tokens = 0.0;
                }
                local.tokens += granted - 1.0;
                local.drawn_at = now;
                local.empty_until = None;
                Ok(())
            }
            Ok(_) => {
                let wait = self.one_token_wait();
                local.empty_until = Some(now + wait.min(HOLD));
                Err(wait)
            }
            Err(e) => {
                drop(local);
                tracing::warn!(error = %e, "rate limit store unreachable: limiting this replica alone");
                self.fallback.take()
            }
        }
    }

    /// Whether a token is available now (without taking one), or how long until one may be.
    pub(crate) async fn available(&self) -> Result<(), Duration> {
        let Some(SharedStoreRef(shared)) = &self.shared else {
            return self.fallback.available();
        };
        match shared
            .store
            .has_token(&self.name, self.spec, shared.clock.now_ms())
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.one_token_wait()),
            Err(e) => {
                tracing::warn!(error = %e, "rate limit store unreachable: limiting this replica alone");
                self.fallback.available()
            }
        }
    }

    /// How long an empty bucket takes to hold one token.
    fn one_token_wait(&self) -> Duration {
        Duration::try_from_secs_f64(1.0 / self.spec.rate).unwrap_or(Duration::MAX)
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up. Written out (a dozen lines)
/// rather than taken from a crate so it runs on `tokio::time`, which tests can pause.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    state: std::sync::Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub(crate) fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst: f64::from(burst),
            state: std::sync::Mutex::new((f64::from(burst), Instant::now())),
        }
    }

    /// Whether a token is available (without taking it), or how long until one is.
    pub(crate) fn available(&self) -> Result<(), Duration> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = *state;
        let tokens = (tokens + last.elapsed().as_secs_f64() * self.rate).min(self.burst);
        if tokens >= 1.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - tokens) / self.rate))
        }
    }

    /// Takes a token, or says how long until one is available.
    pub(crate) fn take(&self) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (tokens, last) = *state;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            Ok(())
        } else {
            *state = (tokens, now);
            Err(Duration::from_secs_f64((1.0 - tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_a_burst_then_the_rate() {
        let b = TokenBucket::new(10.0, 3);
        assert!(b.take().is_ok() && b.take().is_ok() && b.take().is_ok());
        let wait = b.take().unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(b.take().is_ok());
        assert!(b.take().is_err());
        assert!(b.available().is_err());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(b.available().is_ok() && b.available().is_ok());
    }
}
