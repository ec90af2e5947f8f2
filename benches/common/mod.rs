//! What the benchmark harnesses share: reading their command-line options, and medians.

#![allow(dead_code)]

use std::str::FromStr;

/// The word after `name` on the command line, if `name` is there.
pub fn arg_value(name: &str) -> Option<String> {
    let mut args = std::env::args().skip_while(|a| a != name);
    args.next().and(args.next())
}

/// `name VALUE` from the command line, or `default` if absent or not a `T`.
pub fn arg<T: FromStr>(name: &str, default: T) -> T {
    arg_value(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether the flag `name` is on the command line.
pub fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// The median of `values` (the upper one of an even count); NaN if there are none.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}
