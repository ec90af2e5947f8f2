//! The look-up cache: each app's answer for a number, keyed by (keyed hash of the number, app id),
//! with a TTL and a capacity; plus the coalescing of identical calls in flight.
//!
//! Coalescing: the first look-up of a key spawns the adapter call as its own task and publishes a
//! shared handle to it; identical look-ups arriving meanwhile await the same handle. Because the
//! call is a task of its own, a caller that gives up (deadline, disconnect) cancels nothing for the
//! others. Only answers are cached: a failed call leaves nothing behind, so the next look-up asks
//! the app again.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use tonic::Code;

use super::CallError;
use crate::{domain::AppId, proto::AdapterAccount};

/// An app's accounts for a number.
pub type Accounts = Arc<Vec<AdapterAccount>>;

/// (short keyed hash of the number, app).
pub type CacheKey = (u128, AppId);

type SharedCall = Shared<BoxFuture<'static, Result<Accounts, CallError>>>;

/// One shared empty answer: most apps hold no account for a given number, and a million cached
/// "nothing here" answers should not be a million allocations.
static EMPTY: std::sync::LazyLock<Accounts> = std::sync::LazyLock::new(|| Arc::new(Vec::new()));

/// An app's answer as the cache holds it.
pub fn accounts(list: Vec<AdapterAccount>) -> Accounts {
    if list.is_empty() {
        Arc::clone(&EMPTY)
    } else {
        Arc::new(list)
    }
}

/// Answers and calls in flight.
pub struct LookupCache {
    answers: moka::sync::Cache<CacheKey, Accounts>,
    in_flight: Arc<Mutex<HashMap<CacheKey, SharedCall>>>,
}

impl LookupCache {
    /// A cache keeping at most `capacity` answers for `ttl` each.
    pub fn new(ttl: Duration, capacity: u64) -> Self {
        Self {
            answers: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            in_flight: Arc::default(),
        }
    }

    /// A cached answer, if fresh.
    pub fn cached(&self, key: &CacheKey) -> Option<Accounts> {
        self.answers.get(key)
    }

    /// Joins the call in flight for `key`, or starts one with `call` as a task of its own.
    pub fn call<F>(&self, key: CacheKey, call: impl FnOnce() -> F) -> SharedCall
    where
        F: Future<Output = Result<Vec<AdapterAccount>, CallError>> + Send + 'static,
    {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(shared) = in_flight.get(&key) {
            return shared.clone();
        }
        let answers = self.answers.clone();
        let registry = Arc::clone(&self.in_flight);
        let task_key = key.clone();
        let future = call();
        let task = tokio::spawn(async move {
            let result = future.await.map(accounts);
            if let Ok(accounts) = &result {
                // Cache before leaving the in-flight table, so a look-up never misses both.
                answers.insert(task_key.clone(), Arc::clone(accounts));
            }
            registry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&task_key);
            result
        });
        let shared = async move { task.await.unwrap_or(Err(CallError::Failed(Code::Internal))) }
            .boxed()
            .shared();
        in_flight.insert(key, shared.clone());
        shared
    }

    /// Stores an answer directly (benchmarks and tools; look-ups go through [`Self::call`]).
    pub fn insert(&self, key: CacheKey, accounts: Accounts) {
        self.answers.insert(key, accounts);
    }

    /// Forgets the answer for a key (after an unbind, say).
    pub fn invalidate(&self, key: &CacheKey) {
        self.answers.invalidate(key);
    }

    /// Answers currently held (approximate; for metrics and benchmarks).
    pub fn len(&self) -> u64 {
        self.answers.run_pending_tasks();
        self.answers.entry_count()
    }

    /// Whether no answer is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
