//! The command-line subcommands other than `serve`.

pub mod demo;
pub mod query;
