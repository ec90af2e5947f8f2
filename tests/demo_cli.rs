//! The README's promise, end to end with the real binary: `demo` starts everything, and `query`
//! against it verifies the demo subscriber and lists accounts from all 200 apps, both holders'
//! accounts told apart.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a command to its end, as `Command::output` does, but fails the test if it takes longer
/// than `limit` (the child is killed) rather than hanging CI.
fn output_within(command: &mut Command, limit: Duration) -> Output {
    let mut child = KillOnDrop(
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdout = child.0.stdout.take().unwrap();
    let mut stderr = child.0.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "{command:?} ran longer than {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

#[test]
fn query_against_the_demo_lists_all_200_apps() {
    let bin = env!("CARGO_BIN_EXE_unbind-gateway");
    let dir = tempfile::tempdir().unwrap();
    // Port 0: the demo binds a free port itself and prints it. (A port found free beforehand
    // could be taken meanwhile by one of the demo's own 200 simulated apps.)
    // Its log, for the message should it not start.
    let log = dir.path().join("demo.log");
    let mut demo = KillOnDrop(
        Command::new(bin)
            .args(["demo", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    // Wait for the banner, which is printed once everything is up. The demo's stdout is read
    // on a thread of its own (which also keeps draining the SMS echo so the demo never blocks),
    // so a demo that prints nothing fails this test at the deadline instead of hanging it.
    let stdout = demo.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // Once nobody listens any more, this just keeps draining.
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut banner = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|e| {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                panic!(
                    "demo did not start within 60 s ({e}): {banner}\n--- its log, last lines first ---\n{}",
                    tail.join("\n")
                )
            });
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("Press Ctrl-C") {
            break;
        }
    }
    assert!(banner.contains("DEVELOPMENT MODE"), "{banner}");
    let endpoint = banner
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("gateway "))
        .map(|rest| rest.trim().to_owned())
        .filter(|e| e.starts_with("http://127.0.0.1:") && !e.ends_with(":0"))
        .unwrap_or_else(|| panic!("the banner names the gateway's address: {banner}"));

    let sms = dir.path().join("sms.jsonl");
    let mut output = Command::new(bin);
    output
        .args([
            "query",
            "--endpoint",
            &endpoint,
            "--phone",
            "13800138000",
            "--id-last-six",
            "12345X",
            "--code-from-sms-file",
        ])
        .arg(&sms)
        .arg("--json")
        .stdin(Stdio::null());
    let output = output_within(&mut output, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "query failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let text = stdout.to_string();
    assert!(
        text.contains("PREVIOUS_HOLDER") && text.contains("CURRENT_HOLDER"),
        "{text}"
    );
    let app_ids: std::collections::HashSet<String> = lines
        .iter()
        .filter_map(|v| v.get("app_id").and_then(|a| a.as_str()).map(str::to_owned))
        .collect();
    assert_eq!(app_ids.len(), 200, "{text}");

    // Then unbind every previous holder's account and watch the tickets complete.
    let mut output = Command::new(bin);
    output
        .args([
            "query",
            "--endpoint",
            &endpoint,
            "--phone",
            "13800138000",
            "--id-last-six",
            "12345X",
            "--code-from-sms-file",
        ])
        .arg(&sms)
        .args(["--json", "--unbind", "previous", "--watch"])
        .stdin(Stdio::null());
    let output = output_within(&mut output, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "unbind failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut last_state = std::collections::HashMap::new();
    for v in stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        if v["type"] == "ticket" {
            last_state.insert(
                v["ticket_id"].as_str().unwrap().to_owned(),
                v["state"].as_str().unwrap().to_owned(),
            );
        }
    }
    assert!(last_state.len() > 100, "{stdout}");
    assert!(
        last_state.values().all(|s| s == "COMPLETED"),
        "{last_state:?}"
    );
}
