//! The `demo` binary as a person runs it, for tests: started with the flags given, its banner
//! read (on a thread of its own, which goes on draining the SMS echo so the demo never blocks),
//! killed when dropped. Its log (stderr) goes to `demo.log` in its data directory.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A child process killed (and reaped) when dropped, so a failing test leaves none behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `demo`.
pub struct Demo {
    pub process: KillOnDrop,
    /// Everything it printed up to "Press Ctrl-C to stop."
    pub banner: String,
    pub data_dir: PathBuf,
}

impl Demo {
    /// Starts `demo --data-dir DATA_DIR ARGS...` and waits (at most 60 s) for its banner.
    pub fn start(data_dir: &Path, args: &[&str]) -> Self {
        let bin = env!("CARGO_BIN_EXE_unbind-gateway");
        let log = data_dir.join("demo.log");
        let mut process = KillOnDrop(
            Command::new(bin)
                .arg("demo")
                .arg("--data-dir")
                .arg(data_dir)
                .args(args)
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        let stdout = process.0.stdout.take().unwrap();
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
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
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
        Self {
            process,
            banner,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// The rest of the banner's line that starts (after its indentation) with `label`.
    pub fn line(&self, label: &str) -> String {
        self.banner
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(label))
            .map(|rest| rest.trim().to_owned())
            .unwrap_or_else(|| panic!("the banner has no line `{label}`: {}", self.banner))
    }

    /// The gateway's address, as the banner gives it.
    pub fn gateway(&self) -> String {
        let endpoint = self.line("gateway ");
        assert!(
            endpoint.starts_with("http://127.0.0.1:") && !endpoint.ends_with(":0"),
            "{}",
            self.banner
        );
        endpoint
    }

    /// The portal's address (`http://127.0.0.1:PORT`), as the banner gives it.
    pub fn portal(&self) -> String {
        let url = self
            .line("open ")
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        assert!(
            url.starts_with("http://127.0.0.1:") && !url.ends_with(":0"),
            "{}",
            self.banner
        );
        url
    }

    /// Where the simulated handset's messages are appended.
    pub fn sms_file(&self) -> PathBuf {
        self.data_dir.join("sms.jsonl")
    }

    /// What the demo has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("demo.log")).unwrap_or_default()
    }
}
