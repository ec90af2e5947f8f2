//! The README's promise, end to end with the real binary: `demo` starts everything, and `query`
//! against it verifies the demo subscriber and lists accounts from all 200 apps, both holders'
//! accounts told apart.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn query_against_the_demo_lists_all_200_apps() {
    let bin = env!("CARGO_BIN_EXE_unbind-gateway");
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut demo = KillOnDrop(
        Command::new(bin)
            .args(["demo", "--listen", &listen, "--data-dir"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Wait for the banner, which is printed once everything is up.
    let stdout = demo.0.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut banner = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("Press Ctrl-C") {
            break;
        }
        assert!(Instant::now() < deadline, "demo did not start");
    }
    assert!(banner.contains("DEVELOPMENT MODE"), "{banner}");
    // Keep draining the demo's stdout (the SMS echo) so it never blocks.
    std::thread::spawn(move || for _ in lines {});

    let sms = dir.path().join("sms.jsonl");
    let output = Command::new(bin)
        .args([
            "query",
            "--endpoint",
            &format!("http://{listen}"),
            "--phone",
            "13800138000",
            "--id-last-six",
            "12345X",
            "--code-from-sms-file",
        ])
        .arg(&sms)
        .arg("--json")
        .stdin(Stdio::null())
        .output()
        .unwrap();
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
    let output = Command::new(bin)
        .args([
            "query",
            "--endpoint",
            &format!("http://{listen}"),
            "--phone",
            "13800138000",
            "--id-last-six",
            "12345X",
            "--code-from-sms-file",
        ])
        .arg(&sms)
        .args(["--json", "--unbind", "previous", "--watch"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
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
