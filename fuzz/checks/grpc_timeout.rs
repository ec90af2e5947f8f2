// What the `grpc_timeout` fuzz target checks on each input; included by
// fuzz/fuzz_targets/grpc_timeout.rs and tests/fuzz_seeds.rs, so the fuzzer and the seed test
// check the same thing.

use std::time::Duration;

use unbind_gateway::api::deadline::parse_grpc_timeout;

/// What `parse_grpc_timeout` must answer: `\d{1,8}[HMSmun]` with the value the unit says, else
/// `None`.
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

/// `parse_grpc_timeout` on the input as text never panics and answers [`expected`].
///
/// Returns whether the parser accepted the input, so the seed test can tell that its seeds
/// still reach the checks behind the parser.
pub fn check(data: &[u8]) -> bool {
    let input = String::from_utf8_lossy(data);
    let parsed = parse_grpc_timeout(&input);
    assert_eq!(parsed, expected(&input), "{input:?}");
    parsed.is_some()
}
