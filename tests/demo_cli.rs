//! The README's promise, end to end with the real binary: `demo` starts everything, and `query`
//! against it verifies the demo subscriber and lists accounts from all 200 apps, both holders'
//! accounts told apart and the one app that never answers listed as such.

use std::{
    io::Read,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

#[path = "common/demo.rs"]
mod demo;

use demo::KillOnDrop;

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
    // The portal too, on a free port rather than 8080, which another program may hold.
    let demo = demo::Demo::start(
        dir.path(),
        &["--listen", "127.0.0.1:0", "--portal-listen", "127.0.0.1:0"],
    );
    let banner = &demo.banner;
    assert!(banner.contains("DEVELOPMENT MODE"), "{banner}");
    let endpoint = demo.gateway();

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
    // The demo's one silent app (`--silent-apps` 1) is listed as not answering, not as empty.
    let silent: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v["type"] == "app_result" && v["state"] != "ANSWERED")
        .collect();
    assert_eq!(silent.len(), 1, "{text}");
    assert_eq!(silent[0]["app_id"], "app-200", "{text}");
    assert_eq!(silent[0]["state"], "TIMED_OUT", "{text}");
    assert!(silent[0]["account_count"].is_null(), "{text}");

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
