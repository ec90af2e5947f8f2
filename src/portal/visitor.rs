//! What the portal remembers of a visit, on the server, keyed by the random visitor id of the
//! signed cookie: the verification under way, the gateway session, the look-up as it arrives,
//! the accounts chosen, the tickets asked for, and the sentence to show on the next page.
//!
//! The gateway's session token lives here and nowhere else (never in a cookie, URL or page):
//! a stolen cookie is worth only what the visit is worth, for as long as it lasts. The number
//! and the ID characters are never stored at all: they go from the posted form to the gateway.
//! The store is a moka cache, bounded in entries and idle time, so visitors that walk away (or
//! a flood of new ones) cost a bounded amount of memory.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::proto::{AppResult, LinkedAccount};

use super::notice::Notice;

/// Most visits remembered at once; the least recently used go first.
const MAX_VISITS: u64 = 100_000;
/// A visit untouched this long is forgotten (longer than a session, so the tickets page can be
/// followed after it).
const IDLE: Duration = Duration::from_secs(30 * 60);

/// The gateway's session token: its `Debug` prints nothing of it.
#[derive(Clone)]
pub struct SessionToken(pub String);

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

/// A verification started, waiting for its code.
#[derive(Clone, Debug)]
pub struct Pending {
    pub verification_id: String,
    pub code_length: u32,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A verified holder.
#[derive(Clone, Debug)]
pub struct Session {
    pub token: SessionToken,
    /// As the gateway masks it, "+86 138****8000".
    pub masked_phone: String,
    pub holder_since: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A look-up as the apps answer it, written by the task reading the gateway's stream.
#[derive(Debug, Default)]
pub struct Lookup {
    /// Each app's answer, in the order they arrived.
    pub results: Vec<AppResult>,
    /// How many apps are asked, once the gateway has said (`ListApps`): "12 of 40".
    pub apps: Option<usize>,
    /// The stream ended (every app answered, or the deadline passed).
    pub done: bool,
    /// The stream failed: what to tell the person.
    pub failed: Option<Notice>,
    /// Once done: the accounts in the order the page numbers them (a previous holder's first).
    pub rows: Vec<LinkedAccount>,
    /// Rows whose unbind was asked for in this visit.
    pub asked: std::collections::BTreeSet<usize>,
    /// How many times the look-up has changed (an answer arrived, or it ended): the live part
    /// waits on it rather than being asked again and again.
    pub version: tokio::sync::watch::Sender<u64>,
}

impl Lookup {
    /// The number of apps asked is known.
    pub fn set_apps(&mut self, apps: usize) {
        self.apps = Some(apps);
        self.version.send_modify(|v| *v += 1);
    }

    /// An app's answer arrived.
    pub fn push(&mut self, result: AppResult) {
        self.results.push(result);
        self.version.send_modify(|v| *v += 1);
    }

    /// The stream ended: the rows are numbered once and for all.
    pub fn finish(&mut self, rows: Vec<LinkedAccount>) {
        self.rows = rows;
        self.done = true;
        self.version.send_modify(|v| *v += 1);
    }
}

/// The accounts chosen, waiting for the person's confirmation.
#[derive(Clone, Debug)]
pub struct Choice {
    /// Indexes into [`Lookup::rows`].
    pub rows: Vec<usize>,
    /// Sent with the `Unbind`: a double-click or a resent form reuses it, so the gateway makes
    /// the tickets once.
    pub idempotency_key: String,
}

/// Everything remembered of one visit.
#[derive(Debug, Default)]
pub struct Visit {
    pub notice: Option<Notice>,
    pub pending: Option<Pending>,
    pub session: Option<Session>,
    pub lookup: Option<Arc<Mutex<Lookup>>>,
    pub choice: Option<Choice>,
    /// The tickets asked for in this visit, in order.
    pub tickets: Vec<String>,
}

impl Visit {
    /// Forgets the verification, the session and everything that came from it (the tickets
    /// too: a new number's visit must not show the last one's).
    pub fn reset(&mut self) {
        *self = Visit {
            notice: self.notice.take(),
            ..Visit::default()
        };
    }
}

/// Every visit, by visitor id.
#[derive(Clone)]
pub struct Visits {
    cache: moka::sync::Cache<String, Arc<Mutex<Visit>>>,
}

impl Default for Visits {
    fn default() -> Self {
        Self::new()
    }
}

impl Visits {
    pub fn new() -> Visits {
        Visits {
            cache: moka::sync::Cache::builder()
                .max_capacity(MAX_VISITS)
                .time_to_idle(IDLE)
                .build(),
        }
    }

    /// The visit of `id`, if one is remembered.
    pub fn get(&self, id: &str) -> Option<Arc<Mutex<Visit>>> {
        self.cache.get(id)
    }

    /// The visit of `id`, made empty if none is remembered.
    pub fn get_or_new(&self, id: &str) -> Arc<Mutex<Visit>> {
        self.cache
            .get_with(id.to_owned(), || Arc::new(Mutex::new(Visit::default())))
    }

    /// How many visits are remembered.
    pub fn count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// Forgets a visit.
    pub fn forget(&self, id: &str) {
        self.cache.invalidate(id);
    }
}

/// Locks a visit or a look-up; a panic elsewhere while it was held leaves its data usable.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
