//! unbind-gateway: find every app account bound to a mobile number and unbind the ones its holder
//! no longer wants, including those a previous holder of a recycled number left behind.
//!
//! The folders are the architecture:
//! - `domain`: validated value types (phone number, ID characters, app id) that never print secrets;
//! - `security`: keys, sealed tokens (sessions, account refs), one-time codes;
//! - `store`: the SQLite / PostgreSQL store and its migrations;
//! - `verification`: proving who the person is (registry check + SMS code → session);
//! - `fanout`: the app catalog, adapter calls, the cache and the merge into one answer;
//! - `unbind`: durable unbind tickets and the worker that carries them to the apps;
//! - `api`: the gRPC services, and the one module that maps errors to statuses;
//! - `registry`: the carrier's subscriber registry (client, and an embedded file-backed one);
//! - `simulator`: simulated app adapters for the demo, tests and benchmarks;
//! - `cli`: the `demo`, `query`, `certs`, `audit` and `check-adapter` commands (`simulate-apps` is in
//!   `simulator`).

#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod fanout;
pub mod metrics;
pub mod proto;
pub mod push;
pub mod registry;
pub mod reload;
pub mod security;
pub mod server;
pub mod simulator;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod unbind;
pub mod verification;
