//! `query` as a person meets it at a terminal (issue 16, item 5): driven through a real
//! pseudo-terminal by tests/python/drive_query.py (Python's standard library only) against a
//! gateway with simulated apps and registry. A mistyped number is asked again before the ID
//! characters; a wrong code is told once and asked again; the holder-since date is said; the
//! previous holder's accounts are shown apart and unbound; the watch ends with a tally.

mod common;

use std::time::Duration;

use common::{Harness, Options};

fn fast_worker(c: &mut unbind_gateway::config::Config) {
    c.unbind.poll_interval = Duration::from_millis(20);
    c.unbind.status_poll_interval = Duration::from_millis(50);
    c.unbind.retry_base = Duration::from_millis(50);
    c.unbind.retry_jitter = false;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_at_a_terminal_is_asked_again_told_plainly_and_given_a_tally() {
    let h = Harness::start(Options {
        apps: 20,
        tweak: fast_worker,
        ..Options::default()
    })
    .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/drive_query.py");
    let output = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new("python3")
            .arg(script)
            .arg(env!("CARGO_BIN_EXE_unbind-gateway"))
            .arg(h.endpoint())
            .arg(&h.sms_file)
            .env("RUST_BACKTRACE", "1")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the terminal session ends")
    .unwrap();
    let transcript = String::from_utf8_lossy(&output.stdout).replace('\r', "");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}\n{transcript}");
    assert!(transcript.contains("EXIT 0"), "{transcript}");

    // The bad number is refused before the ID characters are asked for, and asked again.
    let bad = transcript
        .find("try again")
        .expect("the bad number is told");
    let id = transcript.find("Last six characters").unwrap();
    assert!(bad < id, "{transcript}");
    // The wrong code: one plain error, no backtrace, then the question again.
    assert!(transcript.contains("INVALID_CODE"), "{transcript}");
    assert!(!transcript.contains("stack backtrace") && !transcript.contains("panicked"));
    // Whose accounts are whose, in words, and shown apart.
    assert!(
        transcript
            .replace("\n  ", " ")
            .contains("This number has been yours since 2024-03-01."),
        "{transcript}"
    );
    assert!(transcript.contains("A previous holder's, bound before 2024-03-01:"));
    assert!(transcript.contains("Yours, bound since 2024-03-01:"));
    // The tickets name the app and the account; the dates say their zone.
    assert!(transcript.contains("Due by: the day the app must have acted by (dates in UTC"));
    let unwrapped = transcript.replace("\n  ", " ");
    assert!(
        unwrapped.contains("(valid until ") && unwrapped.contains(" UTC+"),
        "{transcript}"
    );
    // The watch ends with a tally.
    let tally = transcript
        .lines()
        .find(|l| l.starts_with("Done: "))
        .unwrap_or_else(|| panic!("no tally: {transcript}"));
    assert!(tally.contains(" unbound of "), "{tally}");
    // Every line the person reads fits 80 columns (answers echoed by the terminal aside).
    for line in transcript.lines().filter(|l| !l.starts_with("<<")) {
        assert!(unicode_width(line) <= 80, "wider than 80 columns: {line:?}");
    }
    // No raw number or ID characters printed by the query (the terminal echoes what was typed).
    let printed: String = transcript
        .lines()
        .filter(|l| !l.starts_with("<<") && !l.contains("13800138000") || l.contains("Verified"))
        .collect();
    assert!(!printed.contains("+8613800138000"), "{transcript}");
    h.stop().await;
}

/// Terminal columns: the characters this test prints are narrow, but for CJK app names.
fn unicode_width(line: &str) -> usize {
    line.chars()
        .map(|c| if (c as u32) >= 0x1100 { 2 } else { 1 })
        .sum()
}
