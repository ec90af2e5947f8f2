//! The command-line subcommands other than `serve`.

pub mod audit;
pub mod certs;
pub mod check_adapter;
pub mod demo;
pub mod query;
pub mod tls_args;
