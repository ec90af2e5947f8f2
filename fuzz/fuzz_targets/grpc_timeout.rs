//! Fuzzes `parse_grpc_timeout` on any text: it must never panic, and must accept exactly
//! `\d{1,8}[HMSmun]` with the value the unit says.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use unbind_gateway::api::deadline::parse_grpc_timeout;

fn expected(s: &str) -> Option<Duration> {
    let b = s.as_bytes();
    if !(2..=9).contains(&b.len()) || !b[..b.len() - 1].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = s[..s.len() - 1].parse().ok()?;
    Some(match b[b.len() - 1] {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

fuzz_target!(|data: &[u8]| {
    let input = String::from_utf8_lossy(data);
    assert_eq!(parse_grpc_timeout(&input), expected(&input), "{input:?}");
});
