//! The command-line subcommands other than `serve`.

pub mod audit;
pub mod certs;
pub mod check_adapter;
pub mod demo;
pub mod erase;
pub mod keys;
pub mod portal;
pub mod query;
pub mod registry;
pub mod simulate_apps;
pub mod support;
pub mod tls_args;

/// "1 account", "3 accounts".
pub(crate) fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}
