//! The `unbind.v1.AppAdapter` implementation of one simulated app: its accounts (from
//! [`accounts_for`]), the unbinds it was asked for, the recycled-number batches it was told about,
//! and the behaviour (latency, errors, stalls) the test or benchmark asked it to show.
//!
//! The state outlives the app's gRPC server, so stopping and starting an app keeps what it knows,
//! as a real vendor's database would across a restart.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::Rng as _;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::accounts::accounts_for;
use super::{AppStats, Behaviour, Latency};
use crate::domain::is_e164_shaped;
use crate::proto::app_adapter_server::AppAdapter;
use crate::proto::unbind_account_response::State;
use crate::proto::{
    AdapterAccount, FindAccountsRequest, FindAccountsResponse, GetUnbindStatusRequest,
    NotifyNumbersRecycledRequest, NotifyNumbersRecycledResponse, UnbindAccountRequest,
    UnbindAccountResponse,
};

/// One unbind the app agreed to (or refused), as first answered.
#[derive(Clone, Debug)]
struct UnbindRecord {
    /// The state of the first answer.
    first_state: State,
    vendor_ref: String,
    detail: String,
    /// When the unbind is (or becomes) done; `None` for a refused one.
    done_at: Option<Instant>,
}

impl UnbindRecord {
    /// The answer given the first time this unbind was asked for; replays get exactly this.
    fn first_answer(&self) -> UnbindAccountResponse {
        UnbindAccountResponse {
            state: self.first_state as i32,
            vendor_ref: self.vendor_ref.clone(),
            detail: self.detail.clone(),
        }
    }

    /// The state now: an accepted unbind is done once its completion time has passed.
    fn current_answer(&self, now: Instant) -> UnbindAccountResponse {
        let state = match self.done_at {
            Some(done_at) if done_at <= now => State::Done,
            Some(_) => State::Accepted,
            None => self.first_state,
        };
        let detail = if state == State::Done && self.first_state == State::Accepted {
            "unbound".to_owned()
        } else {
            self.detail.clone()
        };
        UnbindAccountResponse {
            state: state as i32,
            vendor_ref: self.vendor_ref.clone(),
            detail,
        }
    }
}

/// What a simulated app remembers; guarded by one mutex, never held across an `.await`.
#[derive(Debug, Default)]
struct Memory {
    stats: AppStats,
    /// Every unbind by idempotency key (several keys may share one unbind of an account).
    by_key: HashMap<String, UnbindRecord>,
    /// Idempotency key of the first request, by vendor reference.
    key_by_ref: HashMap<String, String>,
    /// The first idempotency key that unbound (phone number, account id).
    key_by_account: HashMap<(String, String), String>,
    seen_keys: HashSet<String>,
    seen_batches: HashSet<String>,
    next_ref: u64,
}

/// The state of one simulated app, shared by its server (across restarts) and the simulator handle.
#[derive(Debug)]
pub(crate) struct AppState {
    app_id: String,
    seed: u64,
    behaviour: Mutex<Behaviour>,
    memory: Mutex<Memory>,
    /// Bumped when the app stops, so calls that stall or wait out their latency end and the
    /// server's graceful shutdown does not wait for them forever.
    stopping: watch::Sender<u64>,
}

impl AppState {
    pub(crate) fn new(app_id: String, seed: u64, behaviour: Behaviour) -> Self {
        Self {
            app_id,
            seed,
            behaviour: Mutex::new(behaviour),
            memory: Mutex::new(Memory::default()),
            stopping: watch::Sender::new(0),
        }
    }

    pub(crate) fn set_behaviour(&self, behaviour: Behaviour) {
        *lock(&self.behaviour) = behaviour;
    }

    /// Makes every accepted unbind done now, whatever its completion time said.
    pub(crate) fn finish_unbinds(&self) {
        let now = Instant::now();
        for record in lock(&self.memory).by_key.values_mut() {
            if let Some(done_at) = &mut record.done_at {
                *done_at = (*done_at).min(now);
            }
        }
    }

    pub(crate) fn stats(&self) -> AppStats {
        lock(&self.memory).stats.clone()
    }

    pub(crate) fn find_calls(&self) -> u64 {
        lock(&self.memory).stats.find_calls
    }

    /// Forgets the counters and the seen keys and batches, but not the unbinds themselves: an
    /// unbound account stays unbound.
    pub(crate) fn reset_stats(&self) {
        let mut memory = lock(&self.memory);
        memory.stats = AppStats::default();
        memory.seen_keys.clear();
        memory.seen_batches.clear();
    }

    /// Ends the calls that are stalled or waiting out their latency (see `stopping`).
    pub(crate) fn interrupt_calls(&self) {
        self.stopping.send_modify(|generation| *generation += 1);
    }

    /// Waits out the configured latency, then fails or stalls the call if the dice say so.
    async fn behave(&self) -> Result<(), Status> {
        let behaviour = lock(&self.behaviour).clone();
        // Draw everything before the first `.await`: the thread-local generator is not `Send`.
        let (delay, stall, fail) = {
            let mut rng = rand::rng();
            let delay = match behaviour.latency {
                Latency::Fixed(d) => d,
                Latency::Uniform { min, max } => {
                    let (low, high) = if min <= max { (min, max) } else { (max, min) };
                    let low_ns = u64::try_from(low.as_nanos()).unwrap_or(u64::MAX);
                    let high_ns = u64::try_from(high.as_nanos()).unwrap_or(u64::MAX);
                    Duration::from_nanos(rng.random_range(low_ns..=high_ns))
                }
            };
            let stall = behaviour.stall_rate > 0.0 && rng.random::<f64>() < behaviour.stall_rate;
            let fail = behaviour.error_rate > 0.0 && rng.random::<f64>() < behaviour.error_rate;
            (delay, stall, fail)
        };

        let mut stopping = self.stopping.subscribe();
        if !delay.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = stopping.changed() => return Err(stopping_status()),
            }
        }
        if stall {
            // Never answer: the caller's deadline (or the app stopping) ends the call.
            let _ = stopping.changed().await;
            return Err(stopping_status());
        }
        if fail {
            return Err(Status::internal("simulated failure"));
        }
        Ok(())
    }

    /// The accounts of `phone_number` a test may unbind at this app: `FindAccounts` lists them,
    /// they have `unbind_supported`, and nobody has asked to unbind them yet (an unbind, once
    /// asked for, is remembered for as long as the simulator runs).
    pub(crate) fn unbindable_accounts(&self, phone_number: &str) -> Vec<AdapterAccount> {
        let memory = lock(&self.memory);
        accounts_for(self.seed, &self.app_id, phone_number)
            .into_iter()
            .filter(|a| {
                a.unbind_supported
                    && !memory
                        .key_by_account
                        .contains_key(&(phone_number.to_owned(), a.account_id.clone()))
            })
            .collect()
    }

    /// Whether an account of this number, at this app, has been unbound by now.
    fn is_unbound(memory: &Memory, phone_number: &str, account_id: &str, now: Instant) -> bool {
        memory
            .key_by_account
            .get(&(phone_number.to_owned(), account_id.to_owned()))
            .and_then(|key| memory.by_key.get(key))
            .and_then(|record| record.done_at)
            .is_some_and(|done_at| done_at <= now)
    }

    fn unbind(
        &self,
        request: &UnbindAccountRequest,
        completion: Duration,
    ) -> UnbindAccountResponse {
        let now = Instant::now();
        let mut memory = lock(&self.memory);
        let key = request.idempotency_key.clone();
        if memory.seen_keys.insert(key.clone()) {
            memory.stats.unbind_keys.push(key.clone());
        }
        if let Some(record) = memory.by_key.get(&key) {
            // The same request again: the same answer, and no second unbind.
            return record.first_answer();
        }

        let account = (request.phone_number.clone(), request.account_id.clone());
        if let Some(record) = memory
            .key_by_account
            .get(&account)
            .and_then(|first_key| memory.by_key.get(first_key))
            .cloned()
        {
            // Another key for an account already being unbound: report that unbind, do not start
            // a second one.
            let answer = record.current_answer(now);
            let record = UnbindRecord {
                first_state: State::try_from(answer.state).unwrap_or(State::Accepted),
                ..record
            };
            memory.by_key.insert(key, record);
            return answer;
        }

        let known = accounts_for(self.seed, &self.app_id, &request.phone_number)
            .into_iter()
            .find(|a| a.account_id == request.account_id);
        let record = match known {
            None => UnbindRecord {
                first_state: State::Rejected,
                vendor_ref: String::new(),
                detail: "no such account is bound to this number".to_owned(),
                done_at: None,
            },
            Some(account) if !account.unbind_supported => UnbindRecord {
                first_state: State::Rejected,
                vendor_ref: String::new(),
                detail: "this account cannot be unbound online; contact customer service"
                    .to_owned(),
                done_at: None,
            },
            Some(_) => {
                memory.next_ref += 1;
                let vendor_ref = format!("sim-{}-{:06}", self.app_id, memory.next_ref);
                let (first_state, detail) = if completion.is_zero() {
                    (State::Done, "unbound")
                } else {
                    (State::Accepted, "unbind accepted; it completes shortly")
                };
                memory.key_by_ref.insert(vendor_ref.clone(), key.clone());
                memory.key_by_account.insert(account, key.clone());
                UnbindRecord {
                    first_state,
                    vendor_ref,
                    detail: detail.to_owned(),
                    // A completion so far off that the clock cannot hold it never comes.
                    done_at: Some(
                        now.checked_add(completion)
                            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600)),
                    ),
                }
            }
        };
        let answer = record.first_answer();
        memory.by_key.insert(key, record);
        answer
    }
}

#[tonic::async_trait]
impl AppAdapter for SimulatedAdapter {
    async fn find_accounts(
        &self,
        request: Request<FindAccountsRequest>,
    ) -> Result<Response<FindAccountsResponse>, Status> {
        let state = &self.state;
        lock(&state.memory).stats.find_calls += 1;
        let request = request.into_inner();
        check_phone_number(&request.phone_number)?;
        state.behave().await?;

        let now = Instant::now();
        let mut accounts = accounts_for(state.seed, &state.app_id, &request.phone_number);
        {
            let memory = lock(&state.memory);
            accounts.retain(|a| {
                !AppState::is_unbound(&memory, &request.phone_number, &a.account_id, now)
            });
        }
        tracing::trace!(app_id = %state.app_id, accounts = accounts.len(), "simulated FindAccounts");
        Ok(Response::new(FindAccountsResponse { accounts }))
    }

    async fn unbind_account(
        &self,
        request: Request<UnbindAccountRequest>,
    ) -> Result<Response<UnbindAccountResponse>, Status> {
        let state = &self.state;
        lock(&state.memory).stats.unbind_calls += 1;
        let request = request.into_inner();
        check_phone_number(&request.phone_number)?;
        if request.idempotency_key.is_empty() {
            return Err(Status::invalid_argument("idempotency_key is required"));
        }
        if request.account_id.is_empty() {
            return Err(Status::invalid_argument("account_id is required"));
        }
        state.behave().await?;

        // Read the completion delay after the latency, so a behaviour change made meanwhile counts.
        let completion = lock(&state.behaviour).unbind_completion;
        let answer = state.unbind(&request, completion);
        tracing::trace!(app_id = %state.app_id, state = answer.state, "simulated UnbindAccount");
        Ok(Response::new(answer))
    }

    async fn get_unbind_status(
        &self,
        request: Request<GetUnbindStatusRequest>,
    ) -> Result<Response<UnbindAccountResponse>, Status> {
        let state = &self.state;
        lock(&state.memory).stats.status_calls += 1;
        let request = request.into_inner();
        if request.vendor_ref.is_empty() && request.idempotency_key.is_empty() {
            return Err(Status::invalid_argument(
                "vendor_ref or idempotency_key is required",
            ));
        }
        state.behave().await?;

        let now = Instant::now();
        let memory = lock(&state.memory);
        let key = if request.vendor_ref.is_empty() {
            Some(&request.idempotency_key)
        } else {
            memory.key_by_ref.get(&request.vendor_ref)
        };
        match key.and_then(|key| memory.by_key.get(key)) {
            Some(record) => Ok(Response::new(record.current_answer(now))),
            None => Err(Status::not_found("no unbind with this reference")),
        }
    }

    async fn notify_numbers_recycled(
        &self,
        request: Request<NotifyNumbersRecycledRequest>,
    ) -> Result<Response<NotifyNumbersRecycledResponse>, Status> {
        let state = &self.state;
        lock(&state.memory).stats.notify_calls += 1;
        let request = request.into_inner();
        if request.batch_id.is_empty() {
            return Err(Status::invalid_argument("batch_id is required"));
        }
        for number in &request.numbers {
            check_phone_number(&number.phone_number)?;
        }
        lock(&state.memory).stats.notices.push(super::Notice {
            batch_id: request.batch_id.clone(),
            numbers: request.numbers.len(),
            digest: super::notice_digest(&request.numbers),
        });
        state.behave().await?;

        {
            let mut memory = lock(&state.memory);
            // A repeated batch is the same batch: remembered once, answered the same.
            if memory.seen_batches.insert(request.batch_id.clone()) {
                memory.stats.notified_batches.push(request.batch_id.clone());
            }
        }
        let accepted = u32::try_from(request.numbers.len()).unwrap_or(u32::MAX);
        Ok(Response::new(NotifyNumbersRecycledResponse { accepted }))
    }
}

/// The gRPC service of one simulated app (cheap to create on each start: the state is shared).
#[derive(Debug, Clone)]
pub(crate) struct SimulatedAdapter {
    state: std::sync::Arc<AppState>,
}

impl SimulatedAdapter {
    pub(crate) fn new(state: std::sync::Arc<AppState>) -> Self {
        Self { state }
    }
}

/// A number in E.164 form, as the gateway sends it (the domain's shape rule: a cheap check, as a
/// vendor's would be, so the simulated apps cost the benchmarks little). The message never
/// echoes the number.
fn check_phone_number(phone_number: &str) -> Result<(), Status> {
    if is_e164_shaped(phone_number) {
        Ok(())
    } else {
        Err(Status::invalid_argument(
            "phone_number must be in E.164 form, e.g. +8613800138000",
        ))
    }
}

fn stopping_status() -> Status {
    Status::unavailable("simulated app is stopping")
}

/// Locks a mutex, carrying on after a panic elsewhere: the simulator's state stays usable (every
/// update is a single assignment or insert, so a poisoned guard holds consistent data).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_must_be_e164() {
        assert!(check_phone_number("+8613800138000").is_ok());
        for bad in [
            "",
            "+",
            "8613800138000",
            "+86 138",
            "+0123",
            "+1234567890123456",
        ] {
            assert!(check_phone_number(bad).is_err(), "{bad}");
        }
    }
}
