//! unbind-gateway: find every app account bound to a mobile number and unbind the ones its holder
//! no longer wants, including those a previous holder of a recycled number left behind.
//!
//! The layout, one line per module (docs/ARCHITECTURE.md tells how a request travels through it):
//!
//! Values and secrets
//! - `domain`: validated value types (phone number, ID characters, app id) that never print secrets;
//! - `security`: keys, sealed tokens (sessions, account refs), one-time codes, the ownership rule;
//! - `clock`: the wall clock behind a handle tests can move; `backoff`: the one exponential
//!   backoff of every retry and open period.
//!
//! What the gateway does
//! - `verification`: proving who the person is (registry check + SMS code -> session);
//! - `fanout`: the app catalog, adapter calls, breakers, the cache, the merge, and their metrics;
//! - `unbind`: durable unbind tickets, and the worker that carries them to the apps;
//! - `push`: the carrier's recycled-number push, and the worker that delivers it to the apps;
//! - `jobs`: the one job loop both workers run (claim with a lease, attempt, record fenced on
//!   the lease, release) and their one backoff;
//! - `audit`: the audit trail, written in batches off the request path;
//! - `registry`: the client of the carrier's subscriber registry;
//! - `store`: the SQLite / PostgreSQL store and its migrations.
//!
//! Running it
//! - `config`: the TOML config and everything `validate` checks;
//! - `gateway`: the shared state, built once from the config (depends on no surface);
//! - `api`: the gRPC services, the door (tenants, refusals audited), the layers (shedding,
//!   correlator, deadlines), and the one module that maps errors to statuses;
//! - `admin`: `/metrics`, `/healthz`, `/readyz` over plain HTTP on a private port;
//! - `http`: the CAMARA Number Recycling API (HTTP/JSON) for app vendors, with OAuth 2.0 access
//!   tokens checked against a JWKS file; it shares the check with gRPC (`api::number_status`);
//! - `server`: composes the tonic server around the state (services, layers, health, reflection)
//!   and drains it on shutdown;
//! - `background`: readiness and housekeeping, beside the server; `critical`: the long-lived
//!   tasks (workers, recorders, audit writer, accept loop), one ending unexpectedly stops it;
//! - `connections`: the connection cap every listener (gRPC, HTTP API, portal) shares;
//! - `shutdown`: the signals that stop it; `reload`: the catalog re-read on SIGHUP or change;
//! - `metrics`: the one Prometheus registry, shared label types, encoding;
//! - `tls`: rustls settings in and out (the listeners' identities re-read on change); `pki`: the
//!   development PKI (`certs`, the test kit); `telemetry`: logging set-up; `proto`: generated
//!   code.
//!
//! Around it
//! - `portal`: the reference web portal a person meets, a client of the gateway's API;
//! - `cli`: the `demo`, `portal`, `query`, `certs`, `audit`, `check-adapter` and `simulate-apps` commands
//!   (`cli/query/`, `cli/check_adapter/`, and `cli/support/` what both share);
//! - `testkit`: fakes that never run in production — simulated apps, a simulated registry, and
//!   the in-process stack the demo, the tests and the benchmarks run.

#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod audit;
pub mod background;
pub mod backoff;
pub mod cli;
pub mod clock;
pub mod config;
pub mod connections;
pub mod critical;
pub mod domain;
pub mod fanout;
pub mod gateway;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod pki;
pub mod portal;
pub mod proto;
pub mod push;
pub mod registry;
pub mod reload;
pub mod security;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod testkit;
pub mod tls;
pub mod unbind;
pub mod verification;
