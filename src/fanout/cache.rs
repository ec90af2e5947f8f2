//! The look-up cache: each app's answer for a number, with a TTL per answer and a capacity in
//! answers; plus the coalescing of identical calls in flight.
//!
//! Layout: one cache entry per number (its short keyed hash), holding that number's answers by
//! app. A look-up reads all its apps' answers with one cache access and one read lock, and a
//! million cached (number, app) answers cost a few tens of bytes each rather than a cache entry
//! apiece. Each answer keeps the time it was fetched and is fresh for `ttl` from then; an entry
//! nobody has touched for `ttl` holds only stale answers and is dropped. The capacity counts
//! answers by size: an answer weighs one per account it holds (one when it holds none), so an
//! app answering a thousand accounts takes the room of a thousand small answers; whole numbers
//! are evicted. (Every field of an account is bounded by `super::answer`, so an account's size
//! is bounded too.)
//!
//! Coalescing: the first look-up of a (number, app) spawns the adapter call as its own task and
//! publishes a shared handle to it; identical look-ups arriving meanwhile await the same handle.
//! Because the call is a task of its own, a caller that gives up (deadline, disconnect) cancels
//! nothing for the others. Only answers are cached: a failed call leaves nothing behind, so the
//! next look-up asks the app again.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use tokio::time::Instant;
use tonic::Code;

use super::CallError;
use crate::{clock::Clock, domain::AppId, proto::AdapterAccount};

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

/// What one answer weighs in the cache: one per account, one for an empty answer.
fn answer_weight(accounts: &Accounts) -> usize {
    accounts.len().max(1)
}

/// One app's answer and when it was fetched.
struct Answer {
    /// For the TTL: tokio's clock (the real one in production, a paused one in tests; never the
    /// gateway's wall clock, which tests move by hours).
    fetched: Instant,
    /// On the gateway's clock, to compare with when an unbind completed (on any replica).
    fetched_ms: i64,
    accounts: Accounts,
}

/// A cached answer as a look-up gets it.
#[derive(Clone)]
pub struct Cached {
    pub accounts: Accounts,
    /// When the app gave it (gateway clock, ms since the epoch).
    pub fetched_ms: i64,
}

/// A number's answers by app.
#[derive(Default)]
struct NumberAnswers {
    by_app: RwLock<HashMap<AppId, Answer>>,
}

impl NumberAnswers {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<AppId, Answer>> {
        self.by_app.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<AppId, Answer>> {
        self.by_app.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores an answer; true if the entry's weight changed (it must be weighed again).
    fn put(&self, app: AppId, accounts: Accounts, fetched_ms: i64) -> bool {
        let weight = answer_weight(&accounts);
        let answer = Answer {
            fetched: Instant::now(),
            fetched_ms,
            accounts,
        };
        self.write()
            .insert(app, answer)
            .is_none_or(|old| answer_weight(&old.accounts) != weight)
    }

    fn weight(&self) -> u32 {
        let total: usize = self
            .read()
            .values()
            .map(|a| answer_weight(&a.accounts))
            .sum();
        u32::try_from(total).unwrap_or(u32::MAX).max(1)
    }
}

/// Answers and calls in flight.
pub struct LookupCache {
    numbers: moka::sync::Cache<u128, Arc<NumberAnswers>>,
    ttl: Duration,
    clock: Clock,
    in_flight: Arc<Mutex<HashMap<CacheKey, SharedCall>>>,
}

impl LookupCache {
    /// A cache keeping at most about `capacity` answers, each for `ttl`; `clock` dates them.
    pub fn new(ttl: Duration, capacity: u64, clock: Clock) -> Self {
        Self {
            numbers: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .weigher(|_, answers: &Arc<NumberAnswers>| answers.weight())
                .time_to_idle(ttl)
                .build(),
            ttl,
            clock,
            in_flight: Arc::default(),
        }
    }

    /// The fresh cached answers for `number` from each of `apps`, in the same order (`None`:
    /// not cached, or stale).
    pub fn cached<'a>(
        &self,
        number: u128,
        apps: impl ExactSizeIterator<Item = &'a AppId>,
    ) -> Vec<Option<Cached>> {
        let Some(entry) = self.numbers.get(&number) else {
            return apps.map(|_| None).collect();
        };
        let now = Instant::now();
        let by_app = entry.read();
        apps.map(|app| {
            by_app
                .get(app)
                .filter(|answer| now.saturating_duration_since(answer.fetched) < self.ttl)
                .map(|answer| Cached {
                    accounts: Arc::clone(&answer.accounts),
                    fetched_ms: answer.fetched_ms,
                })
        })
        .collect()
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
        let numbers = self.numbers.clone();
        let clock = self.clock.clone();
        let registry = Arc::clone(&self.in_flight);
        let task_key = key.clone();
        let future = call();
        let task = tokio::spawn(async move {
            let result = future.await.map(accounts);
            if let Ok(accounts) = &result {
                // Cache before leaving the in-flight table, so a look-up never misses both.
                store(
                    &numbers,
                    task_key.clone(),
                    Arc::clone(accounts),
                    clock.now_ms(),
                );
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
        store(&self.numbers, key, accounts, self.clock.now_ms());
    }

    /// Forgets every app's answer for a number (an erasure); whether any was held.
    pub fn forget_number(&self, number: u128) -> bool {
        self.numbers.remove(&number).is_some()
    }

    /// Forgets the answer for a key (after an unbind, say).
    pub fn invalidate(&self, (number, app): &CacheKey) {
        if let Some(entry) = self.numbers.get(number) {
            entry.write().remove(app);
        }
    }

    /// The weight held: answers, each counting one per account it holds (approximate: as weighed
    /// when each number's answers last changed weight; for metrics and benchmarks).
    pub fn len(&self) -> u64 {
        self.numbers.run_pending_tasks();
        self.numbers.weighted_size()
    }

    /// Whether no answer is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Stores an answer in its number's entry; an entry that gained an app is put back so the cache
/// weighs it again.
fn store(
    numbers: &moka::sync::Cache<u128, Arc<NumberAnswers>>,
    key: CacheKey,
    accounts: Accounts,
    fetched_ms: i64,
) {
    let (number, app) = key;
    let entry = numbers.get_with(number, Arc::default);
    if entry.put(app, accounts, fetched_ms) {
        numbers.insert(number, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(id: &str) -> AppId {
        AppId::parse(id).unwrap()
    }

    fn account(id: &str) -> AdapterAccount {
        AdapterAccount {
            account_id: id.into(),
            ..Default::default()
        }
    }

    fn ids(found: &[Option<Cached>]) -> Vec<Option<Vec<String>>> {
        found
            .iter()
            .map(|a| {
                a.as_ref()
                    .map(|c| c.accounts.iter().map(|a| a.account_id.clone()).collect())
            })
            .collect()
    }

    fn cache(ttl: Duration, capacity: u64) -> LookupCache {
        LookupCache::new(ttl, capacity, Clock::system())
    }

    #[test]
    fn answers_are_kept_per_number_and_app() {
        let cache = cache(Duration::from_secs(60), 1_000);
        let (a, b, c) = (app("a"), app("b"), app("c"));
        cache.insert((1, a.clone()), accounts(vec![account("x")]));
        cache.insert((1, b.clone()), accounts(vec![]));
        cache.insert((2, a.clone()), accounts(vec![account("y")]));
        let found = cache.cached(1, [&a, &b, &c].into_iter());
        assert_eq!(
            ids(&found),
            vec![Some(vec!["x".into()]), Some(vec![]), None]
        );
        assert_eq!(
            ids(&cache.cached(2, [&b, &a].into_iter())),
            vec![None, Some(vec!["y".into()])]
        );
        assert_eq!(ids(&cache.cached(3, [&a].into_iter())), vec![None]);
        assert_eq!(cache.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_is_fresh_for_its_own_ttl() {
        let cache = cache(Duration::from_secs(1), 1_000);
        let (a, b) = (app("a"), app("b"));
        cache.insert((1, a.clone()), accounts(vec![account("x")]));
        tokio::time::advance(Duration::from_millis(600)).await;
        cache.insert((1, b.clone()), accounts(vec![account("y")]));
        tokio::time::advance(Duration::from_millis(399)).await;
        // a was fetched 999 ms ago: still fresh.
        assert_eq!(
            ids(&cache.cached(1, [&a, &b].into_iter())),
            vec![Some(vec!["x".into()]), Some(vec!["y".into()])]
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        // a is exactly a TTL old, b 400 ms: the entry lives on, a's answer is stale.
        assert_eq!(
            ids(&cache.cached(1, [&a, &b].into_iter())),
            vec![None, Some(vec!["y".into()])]
        );
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(
            ids(&cache.cached(1, [&a, &b].into_iter())),
            vec![None, None]
        );
    }

    #[test]
    fn invalidating_forgets_one_app_only() {
        let cache = cache(Duration::from_secs(60), 1_000);
        let (a, b) = (app("a"), app("b"));
        cache.insert((1, a.clone()), accounts(vec![account("x")]));
        cache.insert((1, b.clone()), accounts(vec![account("y")]));
        cache.invalidate(&(1, a.clone()));
        cache.invalidate(&(9, a.clone()));
        assert_eq!(
            ids(&cache.cached(1, [&a, &b].into_iter())),
            vec![None, Some(vec!["y".into()])]
        );
    }

    #[test]
    fn capacity_counts_answers_and_evicts_whole_numbers() {
        let cache = cache(Duration::from_secs(60), 1_000);
        let apps: Vec<AppId> = (0..100).map(|i| app(&format!("app-{i}"))).collect();
        for number in 0..50u128 {
            for a in &apps {
                cache.insert((number, a.clone()), accounts(vec![]));
            }
        }
        // 5,000 answers offered: bounded by answers held, not by numbers (50 would fit).
        let held = cache.len();
        assert!(held <= 1_000, "{held} answers held for a capacity of 1,000");
        assert!(held > 0);
        let hits: usize = (0..50u128)
            .map(|number| cache.cached(number, apps.iter()).iter().flatten().count())
            .sum();
        assert!(
            hits <= 1_000,
            "{hits} answers found for a capacity of 1,000"
        );
    }

    #[test]
    fn an_answer_weighs_as_many_accounts_as_it_holds() {
        let cache = cache(Duration::from_secs(60), 1_000);
        let (a, b) = (app("a"), app("b"));
        cache.insert((1, a.clone()), accounts(vec![]));
        assert_eq!(cache.len(), 1);
        let big: Vec<AdapterAccount> = (0..300).map(|i| account(&format!("x{i}"))).collect();
        cache.insert((1, b.clone()), accounts(big.clone()));
        assert_eq!(cache.len(), 301);
        // The same app answering again with fewer accounts: weighed again.
        cache.insert((1, b.clone()), accounts(vec![account("y")]));
        assert_eq!(cache.len(), 2);
        // Four numbers of 300 accounts do not fit in 1,000: a big answer takes the room of many
        // small ones.
        for number in 2..6u128 {
            cache.insert((number, a.clone()), accounts(big.clone()));
        }
        assert!(cache.len() <= 1_000, "{}", cache.len());
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_is_dated_on_the_gateways_clock_and_expires_on_tokios() {
        let clock = Clock::system();
        let cache = LookupCache::new(Duration::from_secs(60), 1_000, clock.clone());
        let a = app("a");
        let before = clock.now_ms();
        cache.insert((1, a.clone()), accounts(vec![]));
        let after = clock.now_ms();
        // The gateway's clock moved on an hour neither re-dates nor expires it.
        clock.advance(Duration::from_secs(3600));
        let found = cache.cached(1, [&a].into_iter());
        let fetched_ms = found[0].as_ref().expect("still fresh").fetched_ms;
        assert!((before..=after).contains(&fetched_ms));
        // Tokio's clock past the TTL does.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(cache.cached(1, [&a].into_iter())[0].is_none());
    }

    #[tokio::test]
    async fn concurrent_calls_for_a_key_share_one_adapter_call_and_its_answer_is_cached() {
        let cache = cache(Duration::from_secs(60), 1_000);
        let a = app("a");
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let start = |cache: &LookupCache| {
            let calls = Arc::clone(&calls);
            cache.call((7, a.clone()), move || async move {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(vec![account("x")])
            })
        };
        let (first, second) = (start(&cache), start(&cache));
        let (first, second) = tokio::join!(first, second);
        assert_eq!(first.unwrap()[0].account_id, "x");
        assert_eq!(second.unwrap()[0].account_id, "x");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(
            ids(&cache.cached(7, [&a].into_iter())),
            vec![Some(vec!["x".into()])]
        );
    }

    #[tokio::test]
    async fn a_failed_call_leaves_nothing_cached() {
        let cache = cache(Duration::from_secs(60), 1_000);
        let a = app("a");
        let result = cache
            .call((7, a.clone()), || async { Err(CallError::Unavailable) })
            .await;
        assert!(matches!(result, Err(CallError::Unavailable)));
        assert_eq!(ids(&cache.cached(7, [&a].into_iter())), vec![None]);
    }
}
