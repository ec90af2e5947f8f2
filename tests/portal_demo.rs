//! `demo` starts the web portal too and names its address first (issue 18): run as a person
//! would, the binary with `--portal-listen 127.0.0.1:0`, and the page it names answers, in the
//! browser's language; a person verified through it leaves neither the number nor the ID
//! characters in the demo's log.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_prints_the_portals_address_first_and_serves_it() {
    let bin = env!("CARGO_BIN_EXE_unbind-gateway");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("demo.log");
    let mut demo = KillOnDrop(
        Command::new(bin)
            .args([
                "demo",
                "--listen",
                "127.0.0.1:0",
                "--portal-listen",
                "127.0.0.1:0",
                "--apps",
                "5",
                "--data-dir",
            ])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    // The banner, read on a thread of its own so a silent demo fails at the deadline.
    let stdout = demo.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut banner = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|e| {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("demo did not start within 60 s ({e}): {banner}\n--- its log ---\n{log}")
        });
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("Press Ctrl-C") {
            break;
        }
    }
    // The portal's address comes before the gateway's and everything else.
    let lines: Vec<&str> = banner.lines().collect();
    let open = lines
        .iter()
        .position(|l| l.trim_start().starts_with("open http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("the banner names the portal: {banner}"));
    let gateway = lines
        .iter()
        .position(|l| l.trim_start().starts_with("gateway "))
        .unwrap_or_else(|| panic!("the banner names the gateway: {banner}"));
    assert!(open < gateway, "{banner}");
    let addr = lines[open]
        .trim_start()
        .trim_start_matches("open http://")
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert!(!addr.ends_with(":0"), "{banner}");

    // The page answers, in Chinese for a Chinese browser.
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nAccept-Language: zh-CN\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("哪些应用账号绑定了您的号码？"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-security-policy:"),
        "{answer}"
    );
}
