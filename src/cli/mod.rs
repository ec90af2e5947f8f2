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

/// `println!` for what a running service prints (its banner, "stopped"): a stdout that is closed
/// or gone (a log collector restarted, the output piped into `head`) is ignored, where `println!`
/// would panic and so end the service over a line nobody can read any more.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}
pub(crate) use say;

/// "1 account", "3 accounts".
pub(crate) fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}
