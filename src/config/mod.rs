//! The gateway's configuration: one TOML file, read at start-up.
//!
//! Every table refuses unknown keys, durations are written the way people write them (`"800ms"`,
//! `"5m"`, `"5d"`), and a bad file stops start-up with a message naming the key. Per-app settings
//! fall back to `[app_defaults]`. See `README.md` for an annotated example.

use std::{
    collections::HashSet,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::domain::AppId;

pub mod files;
mod http;

pub use http::{DEFAULT_MAX_CONNECTIONS, HttpAuthConfig, HttpConfig};

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the gRPC API listens on.
    pub listen: SocketAddr,
    /// Allow plain-text gRPC (no TLS). For development and the demo only.
    #[serde(default)]
    pub development: bool,
    /// The keyring: keys with ids and purposes (see `security::keys` and the README, "Keys").
    #[serde(default, skip_serializing_if = "KeysConfig::is_empty")]
    pub keys: KeysConfig,
    /// The legacy secret a key per purpose is derived from (at least 32 characters), under the
    /// id `signing-secret`; it also opens what it sealed before the keyring. Replicas sharing a
    /// database must share it. Prefer a keyring.
    #[serde(default)]
    pub signing_secret: Option<String>,
    /// File holding the signing secret.
    #[serde(default)]
    pub signing_secret_file: Option<std::path::PathBuf>,
    /// The gateway's own TLS listener; required unless `development`.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// How the gateway connects to adapters and the registry over `https://`.
    #[serde(default)]
    pub outbound_tls: Option<OutboundTlsConfig>,
    /// The institutions allowed to call, identified by their client certificates.
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    pub store: StoreConfig,
    pub registry: RegistryConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub lookup: LookupConfig,
    #[serde(default)]
    pub verification: VerificationConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub unbind: UnbindConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    /// How long tickets, pushes and the recycled-number history are kept.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// What `CheckNumberRecycled` can honestly answer: from when, and for which numbers.
    #[serde(default)]
    pub number_status: NumberStatusConfig,
    #[serde(default)]
    pub app_defaults: AppDefaults,
    /// When an app is taken out of look-ups for failing, and for how long.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Retries of failed `FindAccounts` calls.
    #[serde(default)]
    pub retry: RetryConfig,
    /// The admin HTTP endpoint: Prometheus metrics, liveness and readiness. Off when absent.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// The CAMARA Number Recycling API over HTTP/JSON, with OAuth 2.0 access tokens. Off when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpConfig>,
    /// Live reload of the app catalog from the config file.
    #[serde(default)]
    pub reload: ReloadConfig,
    /// A file of `[[apps]]` entries (as `simulate-apps --catalog-out` writes), added to the
    /// catalog after the ones in this file; reloaded with it. Relative paths, here as everywhere
    /// in the config, are taken from the directory the gateway runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apps_file: Option<PathBuf>,
    /// The app catalog.
    #[serde(default)]
    pub apps: Vec<AppConfig>,
}

/// Where the keyring is read from (besides the `UNBIND_GATEWAY_KEYS` environment variable).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// A keys file (`[[key]]` entries).
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// A directory of keys files: every `*.toml` in it (one per key suits mounted secrets).
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

impl KeysConfig {
    fn is_empty(&self) -> bool {
        self.file.is_none() && self.dir.is_none()
    }
}

/// The listener's certificate, and the CA that signs tenants' client certificates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Verifies tenants' client certificates (mTLS). Required unless `development`.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// The gateway as a TLS client of adapters and the registry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundTlsConfig {
    /// CA that signs adapters' and the registry's server certificates (each app may override).
    pub ca: PathBuf,
    /// The client certificate the gateway presents.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// One calling institution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The name in its client certificate (URI SAN `urn:unbind-gateway:tenant:NAME`, or CN).
    pub name: String,
    pub role: Role,
    /// Sustained requests per second allowed (token bucket).
    #[serde(default = "default_tenant_rate")]
    pub requests_per_second: f64,
    /// Requests allowed in a burst.
    #[serde(default = "default_tenant_burst")]
    pub burst: u32,
    /// A hard cap on wrong verification codes per hour (per replica) from this tenant's callers,
    /// after which its verifications are refused with `RATE_LIMITED`. Off unless set: with it,
    /// the tenant's end users can switch verification off for all its other users, so set it only
    /// for a tenant you would rather stop than let guess.
    #[serde(default)]
    pub max_code_failures_per_hour: Option<u32>,
    /// Wrong codes per hour (per replica) above which the tenant's guessing is reported: a
    /// warning in the log, an audit record (`tenant.wrong_codes_alert`), and the
    /// `unbind_wrong_codes_alerts_total` metric. Nothing is refused.
    #[serde(default = "default_wrong_codes_alert")]
    pub wrong_codes_alert_per_hour: u32,
    /// For a tenant that serves many people (a portal): a rate per visitor, the visitor named by
    /// the opaque `x-visitor` metadata the tenant sends with each call, so that one visitor
    /// cannot spend the tenant's whole rate. Checked before the tenant's own bucket (a refused
    /// visitor spends none of it); per replica. Calls without `x-visitor` count against the
    /// tenant's rate only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_visitor: Option<VisitorLimit>,
}

/// A rate per visitor of a tenant.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisitorLimit {
    /// Sustained requests per second a visitor may make.
    pub requests_per_second: f64,
    /// Requests a visitor may make in a burst.
    pub burst: u32,
}

/// What a tenant may do; it comes from the gateway config, never from the certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including the carrier push.
    Carrier,
    /// Verification, look-up and unbind.
    Portal,
    /// `CheckNumberRecycled` only.
    App,
}

impl Role {
    /// The role's name as written in the config and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Carrier => "carrier",
            Role::Portal => "portal",
            Role::App => "app",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not `carrier`, `portal` or `app`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?} (expected carrier, portal or app)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "carrier" => Ok(Role::Carrier),
            "portal" => Ok(Role::Portal),
            "app" => Ok(Role::App),
            other => Err(UnknownRole(other.to_owned())),
        }
    }
}

fn default_tenant_rate() -> f64 {
    100.0
}
fn default_tenant_burst() -> u32 {
    200
}
fn default_wrong_codes_alert() -> u32 {
    1000
}

/// Where state lives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH` (created if missing) or `postgres://...`.
    pub url: String,
    /// Connections in the pool.
    #[serde(default = "default_pool_size")]
    pub max_connections: u32,
}

/// The carrier's subscriber registry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    pub endpoint: String,
    #[serde(default = "default_registry_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The name in the registry's certificate, if not the endpoint's host.
    #[serde(default)]
    pub tls_server_name: Option<String>,
}

/// The look-up cache.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// How long an app's answer for a number is reused.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Most (number, app) answers kept; whole numbers are evicted.
    pub capacity: u64,
}

/// Fan-out look-ups.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LookupConfig {
    /// Deadline when the caller sends no `grpc-timeout`.
    #[serde(with = "humantime_serde")]
    pub default_deadline: Duration,
    /// Longest deadline honoured, whatever the caller asks.
    #[serde(with = "humantime_serde")]
    pub max_deadline: Duration,
}

/// Identity verification.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerificationConfig {
    #[serde(with = "humantime_serde")]
    pub code_ttl: Duration,
    pub max_attempts: u32,
    /// Verifications started per hour for one number with the same ID characters (from any
    /// tenant, on any replica). Starts with other ID characters do not count against the holder's.
    pub max_codes_per_hour: u32,
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// `StartVerification` answers no sooner than this after it arrived, whatever the registry
    /// answered and however fast, so its latency cannot tell a match from a mismatch. Unset: the
    /// registry's timeout, which hides every answer the registry can give in time.
    #[serde(default, with = "humantime_serde")]
    pub min_start_latency: Option<Duration>,
    /// Look-up summaries sent by SMS per number per hour (`deliver_by_sms`); beyond it the
    /// look-up still answers, with `summary_sms = SUMMARY_SMS_LIMITED`.
    pub max_summary_sms_per_hour: u32,
    /// Different ID characters tried for one number in an hour (from any tenant) above which
    /// the number is reported as being guessed at: a warning, an audit record
    /// (`number.id_guessing_alert`) and `unbind_id_guessing_alerts_total`. Nothing is refused.
    /// Someone holding the phone learns a match when a code arrives, so this is how an operator
    /// sees the ID characters being enumerated.
    pub id_guess_alert_per_hour: u32,
    /// An opt-in hard cap on different ID characters tried for one number in an hour: beyond
    /// it, starts with ID characters not already tried this hour get `MAX_CODES_EXCEEDED`
    /// (whether or not they match, so it reveals nothing). It stops someone holding the phone
    /// from enumerating the ID characters, at a price: a stranger who fills it first locks out
    /// a holder who has not started this hour. Off unless set.
    #[serde(default)]
    pub max_ids_per_number_per_hour: Option<u32>,
    /// How far a binding date may sit from `holder_since` (either way), or in the future, and
    /// still be trusted to tell whose account it is; within it the account is
    /// `OWNERSHIP_UNKNOWN`. Covers clock skew between the carrier and the apps.
    #[serde(with = "humantime_serde")]
    pub ownership_margin: Duration,
}

impl VerificationConfig {
    /// The floor on `StartVerification`'s latency, given the registry's timeout.
    pub fn start_floor(&self, registry_timeout: Duration) -> Duration {
        self.min_start_latency.unwrap_or(registry_timeout)
    }
}

/// Request size limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request message accepted, in bytes.
    pub max_request_bytes: usize,
    /// Largest look-up answer sent, in bytes (each message, for the stream): within the 4 MiB
    /// gRPC clients accept by default. An app whose accounts would not fit is `FAILED` in that
    /// answer, with a reason naming the way to ask for it alone.
    pub max_response_bytes: usize,
    /// Most entries in a request's `app_ids`.
    pub max_app_ids: usize,
    /// Requests handled at once by this replica; beyond it new requests are refused at once
    /// with `UNAVAILABLE` (load shedding) rather than queued.
    pub max_in_flight: usize,
    /// Requests handled at once for one tenant (by its client certificate; callers without one
    /// share one allowance); beyond it its requests are refused at once with
    /// `RESOURCE_EXHAUSTED`, and other tenants are unaffected. At most `max_in_flight` applies.
    pub max_in_flight_per_tenant: usize,
    /// Longest wait for a request body (a unary call's whole body, or the next message of a
    /// client stream); a caller that stalls longer has its request ended.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Longest a new connection may take to complete its TLS handshake (a client certificate
    /// included); a connection that opens and stalls is closed.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Concurrent requests (HTTP/2 streams) per client connection.
    pub max_streams_per_connection: u32,
    /// gRPC connections open at once; at the cap a new connection is not accepted (it waits in
    /// the kernel's backlog) until one closes.
    pub max_connections: usize,
    /// Connections open at once from one client address (an IPv6 /64), on the gRPC listener and
    /// the HTTP API: one more is closed as soon as it is accepted, so one source cannot hold
    /// every place. Partners behind one NAT share it.
    pub max_connections_per_ip: usize,
    /// On shutdown, how long in-flight requests get to finish before their connections are cut.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

/// The audit trail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// How long audit records are kept.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(180 * 86400),
        }
    }
}

/// How long what has served its purpose is kept (the README's "Data we keep" says why).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Tickets and their events, after their final state: long enough for the holder to come
    /// back to an outcome and for a complaint about it, well past the 5-day unbind deadline.
    #[serde(with = "humantime_serde")]
    pub tickets: Duration,
    /// A carrier push's numbers and deliveries, from the push, once every app has its batches
    /// and the dates are in the history: the carrier's window to read `GetSubmission`.
    #[serde(with = "humantime_serde")]
    pub pushes: Duration,
    /// How far back `CheckNumberRecycled` answers: older re-issue dates are deleted, and a date
    /// before the window is `OUT_OF_RANGE`, never a guess.
    #[serde(with = "humantime_serde")]
    pub recycled_history: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            tickets: Duration::from_secs(30 * 86400),
            pushes: Duration::from_secs(7 * 86400),
            recycled_history: Duration::from_secs(3 * 365 * 86400),
        }
    }
}

/// What the recycled-number check knows: the carrier's pushes are complete from `history_starts`
/// on, for the numbers in `number_ranges`. Outside them the gateway does not know, and says so
/// (`OUT_OF_RANGE`, `NOT_FOUND`) instead of answering "not recycled".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NumberStatusConfig {
    /// The day (`YYYY-MM-DD`, from midnight in `time_zone`) from which the carrier's pushes list
    /// every re-issued number: an earlier date is `OUT_OF_RANGE`. Unset: only the retention window
    /// (`retention.recycled_history`) bounds the dates, and the gateway takes the pushes as
    /// complete within it (start-up says so in the log).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_starts: Option<String>,
    /// The carrier's numbers, as E.164 prefixes (`"+86138"`, `"+86139"`): another number is
    /// `NOT_FOUND` (another carrier's, whose re-issues this gateway never hears of). Empty: every
    /// mobile number.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub number_ranges: Vec<String>,
    /// The carrier's time zone, an IANA name (`"Asia/Shanghai"`): the HTTP API's `specifiedDate`
    /// and `history_starts` are days there, each from its midnight. Default: UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

impl NumberStatusConfig {
    /// The carrier's time zone (UTC when unset).
    pub fn zone(&self) -> anyhow::Result<chrono_tz::Tz> {
        match &self.time_zone {
            None => Ok(chrono_tz::UTC),
            Some(name) => name.trim().parse().map_err(|_| {
                anyhow::anyhow!(
                    "`number_status.time_zone`: {name:?} is not an IANA time zone name such as \
                     \"Asia/Shanghai\" or \"UTC\""
                )
            }),
        }
    }

    /// The first instant of `day` in the carrier's time zone, in milliseconds since the epoch.
    /// A midnight that does not exist there (a clock change at 00:00) is the first instant after.
    pub fn day_start_ms(&self, day: chrono::NaiveDate) -> i64 {
        use chrono::TimeZone;
        let zone = self.zone().unwrap_or(chrono_tz::UTC);
        let midnight = day.and_time(chrono::NaiveTime::MIN);
        match zone.from_local_datetime(&midnight) {
            chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => {
                t.timestamp_millis()
            }
            // Skipped by a clock change: the day starts when the clock jumps (within the hour).
            chrono::LocalResult::None => (1..=120)
                .find_map(|minutes| {
                    zone.from_local_datetime(&(midnight + chrono::Duration::minutes(minutes)))
                        .earliest()
                })
                .map_or_else(
                    || midnight.and_utc().timestamp_millis(),
                    |t| t.timestamp_millis(),
                ),
        }
    }

    /// `history_starts` as milliseconds since the epoch (midnight of that day in `time_zone`).
    pub fn history_starts_ms(&self) -> anyhow::Result<Option<i64>> {
        let Some(day) = &self.history_starts else {
            return Ok(None);
        };
        let date = chrono::NaiveDate::parse_from_str(day.trim(), "%Y-%m-%d").map_err(|_| {
            anyhow::anyhow!("`number_status.history_starts` must be a date like \"2024-01-01\"")
        })?;
        Ok(Some(self.day_start_ms(date)))
    }

    /// Whether `e164` is one of the carrier's numbers.
    pub fn serves(&self, e164: &str) -> bool {
        self.number_ranges.is_empty() || self.number_ranges.iter().any(|p| e164.starts_with(p))
    }

    fn check(&self) -> anyhow::Result<()> {
        self.zone()?;
        self.history_starts_ms()?;
        for (i, prefix) in self.number_ranges.iter().enumerate() {
            let digits = prefix.strip_prefix('+').unwrap_or_default();
            if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                bail!(
                    "`number_status.number_ranges[{i}]` must be an E.164 prefix: '+' and 1 to 15 \
                     digits, e.g. \"+86138\""
                );
            }
        }
        Ok(())
    }
}

/// Unbind tickets and the worker that carries them to the apps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnbindConfig {
    /// Most account refs in one `Unbind` request.
    pub max_refs_per_request: usize,
    /// How long a worker holds a claimed ticket before another replica may take it over.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often an idle worker looks for due tickets (new local tickets wake it at once).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How often an `ACCEPTED` ticket is polled with `GetUnbindStatus`.
    #[serde(with = "humantime_serde")]
    pub status_poll_interval: Duration,
    /// First retry delay after a transient failure; doubles each attempt up to `retry_max`.
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Randomise retry delays (between half and all of the delay) so retries spread out.
    pub retry_jitter: bool,
    /// Tickets a replica works on at once.
    pub worker_concurrency: usize,
    /// Outcomes for one number within this window share one SMS.
    #[serde(with = "humantime_serde")]
    pub sms_window: Duration,
    /// Run the worker in this process.
    pub worker: bool,
    /// On shutdown, how long the worker lets the calls it has in flight finish; then it releases
    /// what is left for another replica (which sends it again under the same key). Keep it within
    /// the orchestrator's grace period (Kubernetes' `terminationGracePeriodSeconds`, 30 s).
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for UnbindConfig {
    fn default() -> Self {
        Self {
            max_refs_per_request: 100,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(250),
            status_poll_interval: Duration::from_secs(2),
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(300),
            retry_jitter: true,
            worker_concurrency: 256,
            sms_window: Duration::from_secs(2),
            worker: true,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// The circuit breaker every app's calls go through.
///
/// Closed, it lets calls through and counts how they end; it opens after
/// `consecutive_failures` failures in a row, or when at least `min_calls` calls ended within
/// `window` and the share of failures among them reached `failure_ratio`. Open, the app is not
/// asked (`SKIPPED_CIRCUIT_OPEN`) for `open_base`, doubled each time a probe fails, up to
/// `open_max`, each wait stretched by a random share of up to `jitter`. Then one probe call goes
/// through (half-open): success closes the breaker, failure opens it again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    pub failure_ratio: f64,
    pub min_calls: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    #[serde(with = "humantime_serde")]
    pub open_base: Duration,
    #[serde(with = "humantime_serde")]
    pub open_max: Duration,
    pub jitter: f64,
    /// A timed-out call counts as a failure only if the caller's deadline gave the app at least
    /// this long (or its whole timeout): a caller sending tiny deadlines cannot open breakers.
    #[serde(with = "humantime_serde")]
    pub timeout_floor: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            min_calls: 20,
            window: Duration::from_secs(10),
            open_base: Duration::from_secs(1),
            open_max: Duration::from_secs(60),
            jitter: 0.2,
            timeout_floor: Duration::from_millis(250),
        }
    }
}

/// Retries of `FindAccounts` (read-only, so safe to repeat) after an app was unreachable or
/// answered `UNAVAILABLE` / `RESOURCE_EXHAUSTED`, within the caller's deadline and a budget: at
/// most `budget_ratio` extra calls per first call (over ten seconds), plus `min_per_second`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Retries per call; 0 turns retries off.
    pub max_retries: u32,
    pub budget_ratio: f64,
    pub min_per_second: u32,
    /// Pause before a retry.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_retries: 1,
            budget_ratio: 0.1,
            min_per_second: 10,
            backoff: Duration::from_millis(10),
        }
    }
}

/// The admin HTTP listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// e.g. `127.0.0.1:9090`: `/metrics`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
}

/// Live catalog reload: on SIGHUP, and when the config file changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// How often the config file is checked for changes; 0 turns the watch off (SIGHUP still
    /// reloads).
    #[serde(with = "humantime_serde")]
    pub watch_interval: Duration,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            watch_interval: Duration::from_secs(2),
        }
    }
}

/// Settings every app gets unless its catalog entry says otherwise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppDefaults {
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Calls in flight to one app at once.
    pub concurrency: usize,
    /// Time an app has to finish an unbind.
    #[serde(with = "humantime_serde")]
    pub unbind_deadline: Duration,
    /// Most accounts one `FindAccounts` answer may hold; an answer with more makes the app
    /// `FAILED` for that look-up (`fanout::answer` has every limit on an answer and why).
    pub max_accounts: usize,
}

/// One app in the catalog.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub category: String,
    #[serde(default)]
    pub customer_service: String,
    /// The app's adapter, e.g. `http://10.0.0.5:7000`.
    pub endpoint: String,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Most accounts one answer of this app may hold, if not `app_defaults.max_accounts`.
    #[serde(default)]
    pub max_accounts: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub unbind_deadline: Option<Duration>,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// CA for this adapter's certificate, if not `outbound_tls.ca`.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// The name in the adapter's certificate, if not the endpoint's host.
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// This app's circuit breaker, key by key over `[breaker]`: e.g.
    /// `breaker = { consecutive_failures = 10, open_max = "5m" }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<toml::Table>,
    /// This app's `FindAccounts` retries, key by key over `[retry]`: e.g.
    /// `retry = { max_retries = 0 }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<toml::Table>,
}

impl AppConfig {
    /// An enabled app with no category or customer-service number and every per-app setting left
    /// to `[app_defaults]`; set the rest with struct update syntax.
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        endpoint: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            category: String::new(),
            customer_service: String::new(),
            endpoint: endpoint.into(),
            timeout: None,
            concurrency: None,
            max_accounts: None,
            unbind_deadline: None,
            enabled: true,
            tls_ca: None,
            tls_server_name: None,
            breaker: None,
            retry: None,
        }
    }
}

/// `base` with the keys of `over` set over it, read as a whole again (so unknown keys, wrong
/// types and bad durations are refused as in the section itself).
fn overlay<T: Serialize + serde::de::DeserializeOwned>(
    base: &T,
    over: Option<&toml::Table>,
) -> anyhow::Result<T> {
    let Some(over) = over else {
        return toml::Value::try_from(base)?.try_into().map_err(Into::into);
    };
    let toml::Value::Table(mut table) = toml::Value::try_from(base)? else {
        bail!("not a table");
    };
    for (key, value) in over {
        table.insert(key.clone(), value.clone());
    }
    Ok(toml::Value::Table(table).try_into()?)
}

fn default_pool_size() -> u32 {
    16
}
fn default_registry_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_true() -> bool {
    true
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(600),
            capacity: 1_000_000,
        }
    }
}

impl Default for LookupConfig {
    fn default() -> Self {
        Self {
            default_deadline: Duration::from_secs(3),
            max_deadline: Duration::from_secs(30),
        }
    }
}

impl Default for VerificationConfig {
    fn default() -> Self {
        Self {
            code_ttl: Duration::from_secs(300),
            max_attempts: 5,
            max_codes_per_hour: 5,
            session_ttl: Duration::from_secs(600),
            min_start_latency: None,
            max_summary_sms_per_hour: 3,
            id_guess_alert_per_hour: 20,
            max_ids_per_number_per_hour: None,
            ownership_margin: Duration::from_secs(3600),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: 256 * 1024,
            max_response_bytes: 4_000_000,
            max_app_ids: 2_000,
            max_in_flight: 512,
            max_in_flight_per_tenant: 128,
            body_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_streams_per_connection: 256,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: 256,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

impl Default for AppDefaults {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            concurrency: 64,
            unbind_deadline: Duration::from_secs(5 * 24 * 3600),
            max_accounts: 1_000,
        }
    }
}

/// Parses TOML into `T`, with an error that names the line and key (or, for a missing section,
/// the section) and never quotes a value: the parser's own display quotes the offending line,
/// which may hold the signing secret.
fn from_toml<T: serde::de::DeserializeOwned>(text: &str) -> anyhow::Result<T> {
    toml::from_str(text).map_err(|e| {
        let message = e.message().trim_end();
        // A missing top-level section or key is reported by the parser at line 1, where the
        // document starts: name it instead.
        if let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
            && e.span().is_none_or(|span| span.start == 0)
        {
            return anyhow::anyhow!(
                "missing `{field}` (a top-level key or a `[{field}]` section); \
                     examples/development.toml is a complete config"
            );
        }
        match e.span() {
            Some(span) => {
                let end = span.start.min(text.len());
                let line = text.as_bytes()[..end]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
                    + 1;
                let text_of_line = text.lines().nth(line - 1).unwrap_or_default().trim();
                // A section's missing key is reported at its header: name both.
                let section = text_of_line
                    .strip_prefix('[')
                    .and_then(|l| l.split(']').next())
                    .map(|l| l.trim_matches(['[', ' ']))
                    .filter(|l| !l.is_empty() && l.len() <= 64);
                if let (Some(section), Some(field)) = (
                    section,
                    message
                        .strip_prefix("missing field `")
                        .and_then(|rest| rest.strip_suffix('`')),
                ) {
                    return anyhow::anyhow!("line {line}: `[{section}]` has no `{field}`");
                }
                // The key on that line (left of `=`), never the value.
                let key = text_of_line
                    .split_once('=')
                    .map(|(k, _)| k.trim())
                    .filter(|k| !k.is_empty() && k.len() <= 64)
                    .map(|k| format!(" (`{k}`)"))
                    .unwrap_or_default();
                anyhow::anyhow!("line {line}{key}: {message}")
            }
            None => anyhow::anyhow!("{message}"),
        }
    })
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        // The message and the line only: the parser's own display quotes the offending line,
        // which may hold the signing secret.
        let mut config: Config = from_toml(text)?;
        if let Some(path) = &config.apps_file {
            config.apps.extend(files::read_apps_file(path)?);
        }
        config.validate()?;
        Ok(config)
    }

    /// The legacy signing secret, from the file or the inline value, when one is configured.
    pub fn signing_secret(&self) -> anyhow::Result<Option<Vec<u8>>> {
        let secret = match (&self.signing_secret, &self.signing_secret_file) {
            (Some(_), Some(_)) => {
                bail!("set only one of `signing_secret` and `signing_secret_file`")
            }
            (Some(s), None) => s.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("`signing_secret_file`: cannot read {}", path.display()))?
                .trim()
                .to_owned(),
            (None, None) => return Ok(None),
        };
        if secret.len() < 32 {
            bail!("`signing_secret` must be at least 32 characters");
        }
        Ok(Some(secret.into_bytes()))
    }

    /// The keyring: `[keys] file` and `dir`, the `UNBIND_GATEWAY_KEYS` variable, and the
    /// signing secret. Refused with a reason when a purpose has no active key.
    pub fn keyring(&self) -> anyhow::Result<crate::security::Keys> {
        let sources = crate::security::KeySources::gather(
            self.keys.file.as_ref(),
            self.keys.dir.as_ref(),
            std::env::var(crate::security::KEYS_ENV).ok(),
            self.signing_secret()?,
        )?;
        crate::security::Keys::load(&sources)
    }

    /// Checks what serde cannot: ids, endpoints, uniqueness, non-zero limits, and that plain
    /// text is used only where it is harmless (see [`Config::check_plain_text`]).
    pub fn validate(&self) -> anyhow::Result<()> {
        self.keyring()?;
        self.check_plain_text()?;
        if !self.development {
            let Some(tls) = &self.tls else {
                bail!(
                    "`tls` is required unless `development = true` (plain text is for development only)"
                );
            };
            if tls.client_ca.is_none() {
                bail!(
                    "`tls.client_ca` is required unless `development = true`: client certificates identify tenants"
                );
            }
            if self.tenants.is_empty() {
                bail!("`tenants` must list at least one tenant unless `development = true`");
            }
        }
        let mut names = HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            AppId::parse(&t.name).map_err(|_| {
                anyhow::anyhow!(
                    "`tenants[{i}].name`: 1 to 64 characters of a-z, 0-9, '.', '_', '-'"
                )
            })?;
            if !names.insert(t.name.as_str()) {
                bail!("`tenants[{i}].name`: duplicate tenant {:?}", t.name);
            }
            if let Some(v) = &t.per_visitor
                && (!(v.requests_per_second > 0.0 && v.requests_per_second.is_finite())
                    || v.burst == 0)
            {
                bail!("`tenants[{i}].per_visitor`: requests_per_second and burst must be positive");
            }
            if !(t.requests_per_second > 0.0 && t.requests_per_second.is_finite())
                || t.burst == 0
                || t.max_code_failures_per_hour == Some(0)
                || t.wrong_codes_alert_per_hour == 0
            {
                bail!("`tenants[{i}]`: requests_per_second and burst must be positive");
            }
        }
        if let Some(out) = &self.outbound_tls
            && out.cert.is_some() != out.key.is_some()
        {
            bail!("`outbound_tls.cert` and `outbound_tls.key` go together");
        }
        if !(self.store.url.starts_with("sqlite:") || self.store.url.starts_with("postgres:")) {
            bail!("`store.url` must start with sqlite: or postgres:");
        }
        check_endpoint(
            &self.registry.endpoint,
            "registry.endpoint",
            self.development,
        )?;
        check_nonzero(self.registry.timeout, "registry.timeout")?;
        check_nonzero(self.cache.ttl, "cache.ttl")?;
        check_nonzero(self.lookup.default_deadline, "lookup.default_deadline")?;
        if self.lookup.max_deadline < self.lookup.default_deadline {
            bail!("`lookup.max_deadline` must not be shorter than `lookup.default_deadline`");
        }
        check_nonzero(self.verification.code_ttl, "verification.code_ttl")?;
        check_nonzero(self.retention.tickets, "retention.tickets")?;
        check_nonzero(self.retention.pushes, "retention.pushes")?;
        if self.retention.recycled_history < Duration::from_secs(86400) {
            bail!("`retention.recycled_history` must be at least a day");
        }
        self.number_status.check()?;
        if let Some(http) = &self.http {
            http.check(self.development, self.tls.is_some())?;
        }
        check_nonzero(self.verification.session_ttl, "verification.session_ttl")?;
        if self.verification.max_attempts == 0 {
            bail!("`verification.max_attempts` must be at least 1");
        }
        if self.verification.max_codes_per_hour == 0 {
            bail!("`verification.max_codes_per_hour` must be at least 1");
        }
        if self.verification.id_guess_alert_per_hour == 0
            || self.verification.max_ids_per_number_per_hour == Some(0)
        {
            bail!(
                "`verification.id_guess_alert_per_hour` and `verification.max_ids_per_number_per_hour` must be at least 1"
            );
        }
        if self.verification.start_floor(self.registry.timeout) > Duration::from_secs(30) {
            bail!("`verification.min_start_latency` must be at most 30s");
        }
        if self.limits.max_request_bytes < 1024 {
            bail!("`limits.max_request_bytes` must be at least 1024");
        }
        if self.limits.max_response_bytes < MIN_RESPONSE_BYTES {
            bail!("`limits.max_response_bytes` must be at least {MIN_RESPONSE_BYTES}");
        }
        check_nonzero(self.unbind.lease, "unbind.lease")?;
        check_nonzero(self.unbind.poll_interval, "unbind.poll_interval")?;
        check_nonzero(
            self.unbind.status_poll_interval,
            "unbind.status_poll_interval",
        )?;
        check_nonzero(self.unbind.retry_base, "unbind.retry_base")?;
        if self.unbind.retry_max < self.unbind.retry_base {
            bail!("`unbind.retry_max` must not be shorter than `unbind.retry_base`");
        }
        if self.unbind.max_refs_per_request == 0 || self.unbind.worker_concurrency == 0 {
            bail!(
                "`unbind.max_refs_per_request` and `unbind.worker_concurrency` must be at least 1"
            );
        }
        if self.limits.max_in_flight == 0 || self.limits.max_streams_per_connection == 0 {
            bail!(
                "`limits.max_in_flight` and `limits.max_streams_per_connection` must be at least 1"
            );
        }
        if self.limits.max_in_flight_per_tenant == 0 {
            bail!("`limits.max_in_flight_per_tenant` must be at least 1");
        }
        if self.limits.max_connections == 0 || self.limits.max_connections_per_ip == 0 {
            bail!(
                "`limits.max_connections` and `limits.max_connections_per_ip` must be at least 1"
            );
        }
        check_nonzero(self.limits.body_timeout, "limits.body_timeout")?;
        check_nonzero(self.limits.handshake_timeout, "limits.handshake_timeout")?;
        check_breaker(&self.breaker, "breaker")?;
        check_retry(&self.retry, "retry")?;
        check_nonzero(self.app_defaults.timeout, "app_defaults.timeout")?;
        check_nonzero(
            self.app_defaults.unbind_deadline,
            "app_defaults.unbind_deadline",
        )?;
        if self.app_defaults.concurrency == 0 {
            bail!("`app_defaults.concurrency` must be at least 1");
        }
        check_max_accounts(
            Some(self.app_defaults.max_accounts),
            "app_defaults.max_accounts",
        )?;
        let mut seen = HashSet::new();
        for (i, app) in self.apps.iter().enumerate() {
            let at = |key: &str| format!("apps[{i}].{key}");
            AppId::parse(&app.id).map_err(|e| anyhow::anyhow!("`{}`: {e}", at("id")))?;
            if !seen.insert(app.id.as_str()) {
                bail!("`{}`: duplicate app id {:?}", at("id"), app.id);
            }
            if app.name.trim().is_empty() {
                bail!("`{}` must not be empty", at("name"));
            }
            check_endpoint(&app.endpoint, &at("endpoint"), self.development)?;
            if let Some(t) = app.timeout {
                check_nonzero(t, &at("timeout"))?;
            }
            if app.concurrency == Some(0) {
                bail!("`{}` must be at least 1", at("concurrency"));
            }
            check_max_accounts(app.max_accounts, &at("max_accounts"))?;
            if let Some(d) = app.unbind_deadline {
                check_nonzero(d, &at("unbind_deadline"))?;
            }
            let breaker = self
                .breaker_for(app)
                .with_context(|| format!("`{}`", at("breaker")))?;
            check_breaker(&breaker, &at("breaker"))?;
            let retry = self
                .retry_for(app)
                .with_context(|| format!("`{}`", at("retry")))?;
            check_retry(&retry, &at("retry"))?;
        }
        self.check_lease_outlasts_calls()?;
        Ok(())
    }
}

impl Config {
    /// The breaker settings of `app`: `[breaker]` with the app's own keys over it.
    pub fn breaker_for(&self, app: &AppConfig) -> anyhow::Result<BreakerConfig> {
        overlay(&self.breaker, app.breaker.as_ref())
    }

    /// The retry settings of `app`: `[retry]` with the app's own keys over it.
    pub fn retry_for(&self, app: &AppConfig) -> anyhow::Result<RetryConfig> {
        overlay(&self.retry, app.retry.as_ref())
    }
}

fn check_breaker(b: &BreakerConfig, key: &str) -> anyhow::Result<()> {
    if b.consecutive_failures == 0 || b.min_calls == 0 {
        bail!("`{key}.consecutive_failures` and `{key}.min_calls` must be at least 1");
    }
    if !(b.failure_ratio > 0.0 && b.failure_ratio <= 1.0) {
        bail!("`{key}.failure_ratio` must be in (0, 1]");
    }
    if !(0.0..=1.0).contains(&b.jitter) {
        bail!("`{key}.jitter` must be in [0, 1]");
    }
    check_nonzero(b.window, &format!("{key}.window"))?;
    check_nonzero(b.open_base, &format!("{key}.open_base"))?;
    if b.open_max < b.open_base {
        bail!("`{key}.open_max` must not be shorter than `{key}.open_base`");
    }
    Ok(())
}

fn check_retry(r: &RetryConfig, key: &str) -> anyhow::Result<()> {
    if !(0.0..=1000.0).contains(&r.budget_ratio) {
        bail!("`{key}.budget_ratio` must be in [0, 1000]");
    }
    Ok(())
}

/// The smallest `limits.max_response_bytes`: room for every app's result line of a large catalog.
const MIN_RESPONSE_BYTES: usize = 64 * 1024;
/// The most `max_accounts` may be: beyond it one answer could outgrow any response.
const MAX_ACCOUNTS_LIMIT: usize = 100_000;

fn check_max_accounts(value: Option<usize>, key: &str) -> anyhow::Result<()> {
    match value {
        Some(n) if n == 0 || n > MAX_ACCOUNTS_LIMIT => {
            bail!("`{key}` must be between 1 and {MAX_ACCOUNTS_LIMIT}")
        }
        _ => Ok(()),
    }
}

impl Config {
    /// A worker (tickets and pushes alike) holds a job's lease while it waits for the app, for up
    /// to the app's timeout (the wait for a concurrency slot included), then records the outcome,
    /// and does not renew it. The timeout must be well under the lease: at most half of it. A lease shorter than that ends while the call is still running:
    /// the worker's next claim (or another replica's) takes the ticket and sends it again, and
    /// the first answer can no longer be recorded, for ever if the app is always that slow.
    fn check_lease_outlasts_calls(&self) -> anyhow::Result<()> {
        let (key, longest) = self
            .apps
            .iter()
            .enumerate()
            .filter_map(|(i, app)| app.timeout.map(|t| (format!("apps[{i}].timeout"), t)))
            .chain([("app_defaults.timeout".to_owned(), self.app_defaults.timeout)])
            .max_by_key(|(_, t)| *t)
            .unwrap_or_default();
        if self.unbind.lease < longest.saturating_mul(2) {
            bail!(
                "`unbind.lease` ({}) must be at least twice the longest app timeout (`{key}`, {}): \
                 a call still running when its lease ends is sent again and its answer is never \
                 recorded; the rest of the lease is for recording the outcome",
                humantime::format_duration(self.unbind.lease),
                humantime::format_duration(longest)
            );
        }
        Ok(())
    }

    /// Plain text only where it is harmless. `development = true` is refused unless `listen` is
    /// a loopback address: it turns off TLS and client certificates, so every caller that can
    /// reach the port is the carrier. (The admin endpoint does not matter here: it is plain HTTP
    /// in every mode, carries no caller data, and is bound wherever the operator puts it.)
    /// Outside development every outbound endpoint must be `https://` (checked with the
    /// endpoints, see [`check_endpoint`]): numbers, ID characters and codes cross those links.
    fn check_plain_text(&self) -> anyhow::Result<()> {
        if self.development && !self.listen.ip().to_canonical().is_loopback() {
            bail!(
                "listen: development = true is only allowed on a loopback address \
                 (127.0.0.0/8 or [::1]), not {}: development mode serves plain text and treats \
                 every caller as the carrier",
                self.listen
            );
        }
        Ok(())
    }
}

/// An `http://` or `https://` URL with a host; `http://` only in development.
fn check_endpoint(endpoint: &str, key: &str, development: bool) -> anyhow::Result<()> {
    let uri: tonic::transport::Uri = endpoint
        .parse()
        .map_err(|e| anyhow::anyhow!("`{key}`: {endpoint:?} is not a URL: {e}"))?;
    // `https://:443` parses, with an empty host.
    let has_host = uri.host().is_some_and(|host| !host.is_empty());
    match uri.scheme_str() {
        Some("https") if has_host => Ok(()),
        Some("http") if has_host && development => Ok(()),
        Some("http") if has_host => bail!(
            "{key}: plain http:// is only allowed in development ({endpoint:?}): \
             use https:// (and `outbound_tls`)"
        ),
        _ => bail!("`{key}`: {endpoint:?} must be an http:// or https:// URL with a host"),
    }
}

fn check_nonzero(d: Duration, key: &str) -> anyhow::Result<()> {
    if d.is_zero() {
        bail!("`{key}` must be longer than zero");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        listen = "127.0.0.1:50051"
        development = true
        signing_secret = "0123456789abcdef0123456789abcdef"
        [store]
        url = "sqlite://unbind.db"
        [registry]
        endpoint = "http://127.0.0.1:50052"
        [[apps]]
        id = "app-001"
        name = "Sim Pay"
        endpoint = "http://127.0.0.1:60000"
        timeout = "800ms"
    "#;

    #[test]
    fn parses_with_defaults_and_humane_durations() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.apps[0].timeout, Some(Duration::from_millis(800)));
        assert_eq!(c.cache.ttl, Duration::from_secs(600));
        assert_eq!(
            c.app_defaults.unbind_deadline,
            Duration::from_secs(5 * 86400)
        );
        assert!(c.apps[0].enabled);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                MINIMAL.replace("timeout = \"800ms\"", "timeuot = \"800ms\""),
                "timeuot",
            ),
            (MINIMAL.replace("\"800ms\"", "\"soon\""), "timeout"),
            (MINIMAL.replace("app-001", "App 1"), "apps[0].id"),
            (
                MINIMAL.replace("http://127.0.0.1:60000", "nowhere"),
                "apps[0].endpoint",
            ),
            (
                MINIMAL.replace("0123456789abcdef0123456789abcdef", "short"),
                "signing_secret",
            ),
            (
                format!(
                    "{MINIMAL}\n[[apps]]\nid = \"app-001\"\nname = \"x\"\nendpoint = \"http://a:1\""
                ),
                "duplicate",
            ),
        ];
        for (text, key) in cases {
            let err = format!("{:#}", Config::parse(&text).unwrap_err());
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    /// [`MINIMAL`] outside development: TLS with client certificates, one tenant, every
    /// endpoint `https://`.
    fn production() -> String {
        MINIMAL
            .replace("development = true", "development = false")
            .replace("http://", "https://")
            .replace(
                "[store]",
                "[tls]\ncert = \"gw.pem\"\nkey = \"gw.key\"\nclient_ca = \"ca.pem\"\n\
                 [[tenants]]\nname = \"carrier-a\"\nrole = \"carrier\"\n[store]",
            )
    }

    /// A fourth app (`apps[3]`) at `endpoint`.
    fn with_apps(text: &str, endpoint: &str) -> String {
        let mut text = text.to_owned();
        for (i, e) in [(2, "https://b:1"), (3, "https://c:1"), (4, endpoint)] {
            text.push_str(&format!(
                "\n[[apps]]\nid = \"app-00{i}\"\nname = \"x\"\nendpoint = \"{e}\"\n"
            ));
        }
        text
    }

    #[test]
    fn plain_http_is_refused_outside_development_naming_the_key() {
        Config::parse(&production()).unwrap();
        let registry = production().replace("https://127.0.0.1:50052", "http://127.0.0.1:50052");
        let err = format!("{:#}", Config::parse(&registry).unwrap_err());
        assert!(
            err.contains("registry.endpoint: plain http:// is only allowed in development"),
            "{err}"
        );
        let app = with_apps(&production(), "http://10.0.0.7:443");
        let err = format!("{:#}", Config::parse(&app).unwrap_err());
        assert!(
            err.contains("apps[3].endpoint: plain http:// is only allowed in development"),
            "{err}"
        );
        // Every app is checked, not only the first; and https:// everywhere passes.
        Config::parse(&with_apps(&production(), "https://10.0.0.7:443")).unwrap();
    }

    #[test]
    fn plain_http_is_accepted_in_development_on_loopback() {
        let c = Config::parse(&with_apps(MINIMAL, "http://127.0.0.1:60004")).unwrap();
        assert!(c.development);
        assert_eq!(c.apps[3].endpoint, "http://127.0.0.1:60004");
        for listen in ["127.0.0.1:50051", "127.8.9.10:0", "[::1]:50051"] {
            let text = MINIMAL.replace("127.0.0.1:50051", listen);
            Config::parse(&text).unwrap_or_else(|e| panic!("{listen}: {e:#}"));
        }
        // Https is fine in development too.
        Config::parse(&MINIMAL.replace("http://", "https://")).unwrap();
    }

    #[test]
    fn the_http_api_needs_tls_and_tokens_outside_development() {
        let auth = "\n[http.auth]\njwks_file = \"jwks.json\"\nissuer = \"https://as\"\n\
                    audience = \"unbind-gateway\"\n";
        let http = |text: &str, listen: &str, auth: &str| {
            Config::parse(&format!("{text}\n[http]\nlisten = \"{listen}\"\n{auth}"))
                .map_err(|e| format!("{e:#}"))
        };
        // Development, plain text on loopback, with or without tokens.
        http(MINIMAL, "127.0.0.1:8081", "").unwrap();
        http(MINIMAL, "127.0.0.1:8081", auth).unwrap();
        let err = http(MINIMAL, "0.0.0.0:8081", "").unwrap_err();
        assert!(
            err.contains("`http.listen`") && err.contains("loopback"),
            "{err}"
        );
        // Production: TLS (from [tls]) and [http.auth].
        http(&production(), "0.0.0.0:8443", auth).unwrap();
        let err = http(&production(), "0.0.0.0:8443", "").unwrap_err();
        assert!(err.contains("`http.auth` is required"), "{err}");
        let err = http(
            &production(),
            "0.0.0.0:8443",
            &auth.replace("https://as", " "),
        )
        .unwrap_err();
        assert!(err.contains("`http.auth.issuer`"), "{err}");
        // A connection cap, 4096 unless set, at least 1.
        let c =
            Config::parse(&format!("{MINIMAL}\n[http]\nlisten = \"127.0.0.1:8081\"\n")).unwrap();
        assert_eq!(c.http.unwrap().max_connections, DEFAULT_MAX_CONNECTIONS);
        let err = Config::parse(&format!(
            "{MINIMAL}\n[http]\nlisten = \"127.0.0.1:8081\"\nmax_connections = 0\n"
        ))
        .map(|_| ())
        .map_err(|e| format!("{e:#}"))
        .unwrap_err();
        assert!(err.contains("`http.max_connections`"), "{err}");
    }

    #[test]
    fn the_carriers_time_zone_sets_where_days_begin() {
        let c = Config::parse(&format!(
            "{MINIMAL}\n[number_status]\nhistory_starts = \"2024-01-01\"\n\
             time_zone = \"Asia/Shanghai\"\n"
        ))
        .unwrap();
        // Midnight in Shanghai is 16:00 UTC the day before.
        let expected = chrono::DateTime::parse_from_rfc3339("2023-12-31T16:00:00Z").unwrap();
        assert_eq!(
            c.number_status.history_starts_ms().unwrap(),
            Some(expected.timestamp_millis())
        );
        assert_eq!(
            NumberStatusConfig::default().history_starts_ms().unwrap(),
            None
        );
        let err = Config::parse(&format!(
            "{MINIMAL}\n[number_status]\ntime_zone = \"Mars/Olympus\"\n"
        ))
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("`number_status.time_zone`"),
            "{err:#}"
        );
        // A day whose midnight a clock change skips begins when the clock jumps.
        let zone = NumberStatusConfig {
            time_zone: Some("America/Sao_Paulo".into()),
            ..NumberStatusConfig::default()
        };
        let day = chrono::NaiveDate::from_ymd_opt(2018, 11, 4).unwrap();
        let jumped = chrono::DateTime::parse_from_rfc3339("2018-11-04T01:00:00-02:00").unwrap();
        assert_eq!(zone.day_start_ms(day), jumped.timestamp_millis());
    }

    #[test]
    fn development_is_refused_off_loopback_naming_the_key() {
        for listen in [
            "0.0.0.0:50051",
            "10.1.2.3:50051",
            "[::]:50051",
            "[2001:db8::1]:50051",
        ] {
            let text = MINIMAL.replace("127.0.0.1:50051", listen);
            let err = format!("{:#}", Config::parse(&text).unwrap_err());
            assert!(
                err.contains("listen: development = true is only allowed on a loopback address"),
                "{listen}: {err}"
            );
        }
        // Outside development any address will do (TLS and client certificates guard it).
        Config::parse(&production().replace("127.0.0.1:50051", "0.0.0.0:50051")).unwrap();
    }

    #[test]
    fn the_lease_must_outlast_every_app_call() {
        let short = format!("{MINIMAL}\n[unbind]\nlease = \"800ms\"\n");
        let err = format!("{:#}", Config::parse(&short).unwrap_err());
        assert!(err.contains("`unbind.lease` (800ms)"), "{err}");
        assert!(err.contains("`app_defaults.timeout`, 2s"), "{err}");
        let app_longer = MINIMAL.replace("timeout = \"800ms\"", "timeout = \"40s\"");
        let err = format!("{:#}", Config::parse(&app_longer).unwrap_err());
        assert!(err.contains("`apps[0].timeout`, 40s"), "{err}");
        // The defaults (30 s against 2 s) pass.
        Config::parse(MINIMAL).unwrap();
    }

    #[test]
    fn parse_errors_never_quote_the_secret() {
        let broken = MINIMAL.replace(
            "0123456789abcdef0123456789abcdef\"",
            "0123456789abcdef0123456789abcdef",
        );
        let err = format!("{:#}", Config::parse(&broken).unwrap_err());
        assert!(!err.contains("0123456789abcdef"), "{err}");
        assert!(err.contains("line"), "{err}");
    }

    /// One change to a valid config, and whether the result must still be valid.
    type Case = (&'static str, fn(&mut Config), bool);

    /// Every limit `validate` checks, on both sides of its boundary, each condition of a
    /// compound check on its own.
    #[test]
    fn every_limit_is_checked_at_its_boundary() {
        fn tenant(c: &mut Config) -> &mut TenantConfig {
            if c.tenants.is_empty() {
                c.tenants.push(TenantConfig {
                    name: "portal".into(),
                    role: Role::Portal,
                    requests_per_second: 10.0,
                    burst: 10,
                    max_code_failures_per_hour: None,
                    wrong_codes_alert_per_hour: 1000,
                    per_visitor: None,
                });
            }
            &mut c.tenants[0]
        }
        let cases: &[Case] = &[
            ("a tenant as configured", |c| tenant(c).burst = 1, true),
            ("rate 0", |c| tenant(c).requests_per_second = 0.0, false),
            (
                "rate NaN",
                |c| tenant(c).requests_per_second = f64::NAN,
                false,
            ),
            (
                "rate infinite",
                |c| tenant(c).requests_per_second = f64::INFINITY,
                false,
            ),
            ("burst 0", |c| tenant(c).burst = 0, false),
            (
                "code cap 0",
                |c| tenant(c).max_code_failures_per_hour = Some(0),
                false,
            ),
            (
                "code cap 1",
                |c| tenant(c).max_code_failures_per_hour = Some(1),
                true,
            ),
            (
                "code alert 0",
                |c| tenant(c).wrong_codes_alert_per_hour = 0,
                false,
            ),
            (
                "outbound cert alone",
                |c| {
                    c.outbound_tls = Some(OutboundTlsConfig {
                        ca: "ca.pem".into(),
                        cert: Some("c.pem".into()),
                        key: None,
                    })
                },
                false,
            ),
            (
                "outbound key alone",
                |c| {
                    c.outbound_tls = Some(OutboundTlsConfig {
                        ca: "ca.pem".into(),
                        cert: None,
                        key: Some("k.pem".into()),
                    })
                },
                false,
            ),
            (
                "outbound cert and key",
                |c| {
                    c.outbound_tls = Some(OutboundTlsConfig {
                        ca: "ca.pem".into(),
                        cert: Some("c.pem".into()),
                        key: Some("k.pem".into()),
                    })
                },
                true,
            ),
            (
                "outbound CA only",
                |c| {
                    c.outbound_tls = Some(OutboundTlsConfig {
                        ca: "ca.pem".into(),
                        cert: None,
                        key: None,
                    })
                },
                true,
            ),
            (
                "max deadline = default",
                |c| c.lookup.max_deadline = c.lookup.default_deadline,
                true,
            ),
            (
                "max deadline < default",
                |c| c.lookup.max_deadline = c.lookup.default_deadline - Duration::from_millis(1),
                false,
            ),
            (
                "code ttl 0",
                |c| c.verification.code_ttl = Duration::ZERO,
                false,
            ),
            ("attempts 0", |c| c.verification.max_attempts = 0, false),
            ("attempts 1", |c| c.verification.max_attempts = 1, true),
            (
                "codes per hour 0",
                |c| c.verification.max_codes_per_hour = 0,
                false,
            ),
            (
                "id alert 0",
                |c| c.verification.id_guess_alert_per_hour = 0,
                false,
            ),
            (
                "id cap 0",
                |c| c.verification.max_ids_per_number_per_hour = Some(0),
                false,
            ),
            (
                "id cap 1",
                |c| c.verification.max_ids_per_number_per_hour = Some(1),
                true,
            ),
            (
                "start floor 30s",
                |c| c.verification.min_start_latency = Some(Duration::from_secs(30)),
                true,
            ),
            (
                "start floor 30.001s",
                |c| c.verification.min_start_latency = Some(Duration::from_millis(30_001)),
                false,
            ),
            (
                "start floor from a 31s registry timeout",
                |c| {
                    c.verification.min_start_latency = None;
                    c.registry.timeout = Duration::from_secs(31);
                },
                false,
            ),
            (
                "request bytes 1024",
                |c| c.limits.max_request_bytes = 1024,
                true,
            ),
            (
                "request bytes 1023",
                |c| c.limits.max_request_bytes = 1023,
                false,
            ),
            (
                "response bytes 64 KiB",
                |c| c.limits.max_response_bytes = 64 * 1024,
                true,
            ),
            (
                "response bytes under 64 KiB",
                |c| c.limits.max_response_bytes = 64 * 1024 - 1,
                false,
            ),
            (
                "per-tenant in flight 0",
                |c| c.limits.max_in_flight_per_tenant = 0,
                false,
            ),
            (
                "per-tenant in flight = max in flight",
                |c| c.limits.max_in_flight_per_tenant = c.limits.max_in_flight,
                true,
            ),
            (
                "per-tenant in flight > max in flight (the lower applies)",
                |c| c.limits.max_in_flight_per_tenant = c.limits.max_in_flight + 1,
                true,
            ),
            (
                "body timeout 0",
                |c| c.limits.body_timeout = Duration::ZERO,
                false,
            ),
            (
                "handshake timeout 0",
                |c| c.limits.handshake_timeout = Duration::ZERO,
                false,
            ),
            ("max accounts 0", |c| c.app_defaults.max_accounts = 0, false),
            ("max accounts 1", |c| c.app_defaults.max_accounts = 1, true),
            (
                "max accounts 100000",
                |c| c.app_defaults.max_accounts = 100_000,
                true,
            ),
            (
                "max accounts 100001",
                |c| c.app_defaults.max_accounts = 100_001,
                false,
            ),
            (
                "app max accounts 0",
                |c| c.apps[0].max_accounts = Some(0),
                false,
            ),
            (
                "app max accounts 100001",
                |c| c.apps[0].max_accounts = Some(100_001),
                false,
            ),
            (
                "app max accounts 100000",
                |c| c.apps[0].max_accounts = Some(100_000),
                true,
            ),
            ("lease 0", |c| c.unbind.lease = Duration::ZERO, false),
            (
                "retry max = base",
                |c| c.unbind.retry_max = c.unbind.retry_base,
                true,
            ),
            (
                "retry max < base",
                |c| c.unbind.retry_max = c.unbind.retry_base - Duration::from_millis(1),
                false,
            ),
            ("refs 0", |c| c.unbind.max_refs_per_request = 0, false),
            (
                "worker concurrency 0",
                |c| c.unbind.worker_concurrency = 0,
                false,
            ),
            ("in flight 0", |c| c.limits.max_in_flight = 0, false),
            ("connections 0", |c| c.limits.max_connections = 0, false),
            ("connections 1", |c| c.limits.max_connections = 1, true),
            (
                "connections per ip 0",
                |c| c.limits.max_connections_per_ip = 0,
                false,
            ),
            (
                "streams 0",
                |c| c.limits.max_streams_per_connection = 0,
                false,
            ),
            (
                "consecutive failures 0",
                |c| c.breaker.consecutive_failures = 0,
                false,
            ),
            ("min calls 0", |c| c.breaker.min_calls = 0, false),
            ("failure ratio 0", |c| c.breaker.failure_ratio = 0.0, false),
            ("failure ratio 1", |c| c.breaker.failure_ratio = 1.0, true),
            (
                "failure ratio 1.01",
                |c| c.breaker.failure_ratio = 1.01,
                false,
            ),
            (
                "failure ratio NaN",
                |c| c.breaker.failure_ratio = f64::NAN,
                false,
            ),
            ("jitter 0", |c| c.breaker.jitter = 0.0, true),
            ("jitter 1", |c| c.breaker.jitter = 1.0, true),
            ("jitter 1.01", |c| c.breaker.jitter = 1.01, false),
            ("jitter < 0", |c| c.breaker.jitter = -0.01, false),
            (
                "open max = base",
                |c| c.breaker.open_max = c.breaker.open_base,
                true,
            ),
            (
                "open max < base",
                |c| c.breaker.open_max = c.breaker.open_base - Duration::from_millis(1),
                false,
            ),
            ("budget 1000", |c| c.retry.budget_ratio = 1000.0, true),
            ("budget 1000.1", |c| c.retry.budget_ratio = 1000.1, false),
            ("budget < 0", |c| c.retry.budget_ratio = -0.1, false),
            (
                "default concurrency 0",
                |c| c.app_defaults.concurrency = 0,
                false,
            ),
            ("app name blank", |c| c.apps[0].name = "  ".into(), false),
            (
                "app timeout 0",
                |c| c.apps[0].timeout = Some(Duration::ZERO),
                false,
            ),
            (
                "app concurrency 0",
                |c| c.apps[0].concurrency = Some(0),
                false,
            ),
            (
                "app concurrency 1",
                |c| c.apps[0].concurrency = Some(1),
                true,
            ),
            (
                "lease under twice the longest app timeout",
                |c| {
                    c.app_defaults.timeout = Duration::from_millis(500);
                    c.unbind.lease = Duration::from_millis(1599);
                },
                false,
            ),
            (
                "lease twice it",
                |c| {
                    c.app_defaults.timeout = Duration::from_millis(500);
                    c.unbind.lease = Duration::from_millis(1600);
                },
                true,
            ),
            (
                "lease = the default timeout",
                |c| {
                    c.apps[0].timeout = None;
                    c.unbind.lease = c.app_defaults.timeout;
                },
                false,
            ),
        ];
        let base = Config::parse(MINIMAL).unwrap();
        for (name, change, valid) in cases {
            let mut c = base.clone();
            change(&mut c);
            assert_eq!(
                c.validate().is_ok(),
                *valid,
                "{name}: {:?}",
                c.validate().err()
            );
        }
    }

    #[test]
    fn an_app_overrides_breaker_and_retry_settings_key_by_key() {
        let text = format!(
            "{MINIMAL}breaker = {{ consecutive_failures = 10, open_max = \"5m\" }}\n\
             retry = {{ max_retries = 0 }}\n"
        );
        let c = Config::parse(&text).unwrap();
        let app = &c.apps[0];
        let breaker = c.breaker_for(app).unwrap();
        assert_eq!(breaker.consecutive_failures, 10);
        assert_eq!(breaker.open_max, Duration::from_secs(300));
        // The keys it does not set are `[breaker]`'s.
        assert_eq!(breaker.min_calls, c.breaker.min_calls);
        assert_eq!(breaker.window, c.breaker.window);
        let retry = c.retry_for(app).unwrap();
        assert_eq!(retry.max_retries, 0);
        assert_eq!(retry.backoff, c.retry.backoff);
        // An app without overrides gets the sections as they are.
        let mut plain = app.clone();
        plain.breaker = None;
        plain.retry = None;
        assert_eq!(c.breaker_for(&plain).unwrap(), c.breaker);
        assert_eq!(c.retry_for(&plain).unwrap(), c.retry);
        // An unknown key, a wrong type or a bad value is refused at start-up and at reload,
        // naming the app's key.
        for (over, named) in [
            ("breaker = { consecutive_failure = 10 }", "apps[0].breaker"),
            ("breaker = { window = \"soon\" }", "apps[0].breaker"),
            (
                "breaker = { failure_ratio = 2.0 }",
                "apps[0].breaker.failure_ratio",
            ),
            (
                "breaker = { open_base = \"2m\" }",
                "apps[0].breaker.open_max",
            ),
            (
                "retry = { budget_ratio = -1.0 }",
                "apps[0].retry.budget_ratio",
            ),
            ("retry = { max_retries = \"one\" }", "apps[0].retry"),
        ] {
            let err = format!(
                "{:#}",
                Config::parse(&format!("{MINIMAL}{over}\n")).unwrap_err()
            );
            assert!(err.contains(named), "{over}: {err}");
        }
    }

    #[test]
    fn an_endpoint_needs_a_scheme_and_a_host() {
        for bad in [
            "https://:443",
            "http://:80",
            "127.0.0.1:50052",
            "/x",
            "ftp://a:1",
        ] {
            for development in [true, false] {
                assert!(
                    check_endpoint(bad, "k", development).is_err(),
                    "{bad:?} development={development}"
                );
            }
        }
        // Without a host, the answer says so (not that plain text is for development).
        let err = check_endpoint("http://:80", "k", false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("with a host"), "{err}");
        assert!(check_endpoint("https://a:1", "k", false).is_ok());
        assert!(check_endpoint("http://a:1", "k", true).is_ok());
        assert!(check_endpoint("http://a:1", "k", false).is_err());
    }

    #[test]
    fn an_error_line_names_a_short_key_only() {
        let long = "k".repeat(65);
        let short = "k".repeat(64);
        for (key, shown) in [(long, false), (short, true)] {
            let text = format!("{MINIMAL}\n{key} = \n");
            let err = format!("{:#}", Config::parse(&text).unwrap_err());
            assert_eq!(err.contains(&format!("(`{key}`)")), shown, "{err}");
        }
    }
}
