//! `--deadline` (query) and `--timeout` (check-adapter): a human duration ("800ms", "5s"),
//! more than zero and at most ten minutes.

use std::time::Duration;

/// The longest `--deadline` (and `check-adapter --timeout`) accepted (a session lives 10 minutes
/// anyway).
const MAX_DEADLINE: Duration = Duration::from_secs(600);
/// Parses a deadline flag; the error is what clap prints after the flag's name.
pub fn parse_deadline(input: &str) -> Result<Duration, String> {
    let deadline = humantime::parse_duration(input.trim()).map_err(|e| e.to_string())?;
    if deadline.is_zero() || deadline > MAX_DEADLINE {
        return Err("must be more than 0 and at most 10m".to_owned());
    }
    Ok(deadline)
}
