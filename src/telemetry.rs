//! Logging set-up: `tracing` with `RUST_LOG`-style filtering (default `info`), human-readable or
//! JSON lines. Log lines carry masked numbers or keyed hashes only; see `domain`.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber. `json` switches to one JSON object per line.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init()
    } else {
        // Colours only for a person at a terminal: a file, a pipe or a log collector gets plain
        // text (and `NO_COLOR` turns them off anywhere).
        let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        registry
            .with(fmt::layer().with_ansi(ansi).with_writer(std::io::stderr))
            .try_init()
    };
    // A subscriber already installed (tests) is fine.
    let _ = result;
}
