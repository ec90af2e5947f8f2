//! README "Run it without the demo", run as written: the section's commands, read from the
//! README itself, each run as a child process in a scratch directory holding a copy of
//! `examples/`. Commands ending in `&` keep running (they are waited for until they say they
//! serve); the others must succeed. Only the ports change (to free ones, in the commands and in
//! the copied config) and `$DATABASE_URL` is a fresh PostgreSQL database, so the section cannot
//! drift from the program.

mod common;
#[path = "common/https.rs"]
mod https;

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_unbind-gateway");
/// Longest a foreground command may take (the query watches its tickets for up to 60 s).
const COMMAND_DEADLINE: Duration = Duration::from_secs(120);
/// Longest a background command may take to say it serves.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// The shell lines of the README section's first `sh` block, continuation lines joined.
fn readme_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split("\n## Run it without the demo\n")
        .nth(1)
        .expect("README has a section \"Run it without the demo\"");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the section has a ```sh block");
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part.trim_end());
                current.push(' ');
            }
            None => {
                current.push_str(line);
                commands.push(std::mem::take(&mut current));
            }
        }
    }
    commands
}

/// One command line split as the shell would for these commands: words, double quotes,
/// `$VARIABLE`s from `vars`, a `> FILE` redirect and a trailing `&`.
struct Parsed {
    args: Vec<String>,
    stdout_to: Option<String>,
    background: bool,
}

fn parse(line: &str, vars: &HashMap<&str, String>) -> Parsed {
    let mut words: Vec<String> = line
        .split_whitespace()
        .map(|w| {
            let w = w.trim_matches('"');
            match w.strip_prefix('$') {
                Some(name) => vars
                    .get(name)
                    .unwrap_or_else(|| panic!("${name} is not set"))
                    .clone(),
                None => w.to_owned(),
            }
        })
        .collect();
    let background = words.last().is_some_and(|w| w == "&");
    if background {
        words.pop();
    }
    let stdout_to = match words.iter().position(|w| w == ">") {
        Some(i) => {
            let file = words.get(i + 1).expect("a file after >").clone();
            words.truncate(i);
            Some(file)
        }
        None => None,
    };
    assert_eq!(
        words.first().map(String::as_str),
        Some("unbind-gateway"),
        "every command of the section runs unbind-gateway: {line}"
    );
    words.remove(0);
    Parsed {
        args: words,
        stdout_to,
        background,
    }
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Copies `examples/` into `dir`, with the ports replaced.
fn copy_examples(dir: &Path, ports: &[(String, String)]) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let to = dir.join("examples");
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        if !entry.file_type().unwrap().is_file() {
            continue;
        }
        let mut text = std::fs::read_to_string(entry.path()).unwrap();
        for (old, new) in ports {
            text = text.replace(old.as_str(), new);
        }
        std::fs::write(to.join(entry.file_name()), text).unwrap();
    }
}

/// Starts a background command and waits until a line of its output says it serves.
async fn start_background(dir: &Path, args: &[String]) -> (Child, Vec<String>) {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = lines_tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
    }
    let mut seen = Vec::new();
    let started = tokio::time::timeout(START_DEADLINE, async {
        while let Some(line) = lines_rx.recv().await {
            let serving = line.to_ascii_lowercase().contains("serving");
            seen.push(line);
            if serving {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(started, Ok(true)),
        "`unbind-gateway {}` did not say it serves:\n{}",
        args.join(" "),
        seen.join("\n")
    );
    (child, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_database, ignore = "needs DATABASE_URL")]
async fn the_readmes_run_it_without_the_demo_section_works_as_written() {
    let database = common::fresh_postgres_database().await;
    let dir = tempfile::tempdir().unwrap();
    let (gateway, registry, admin, portal) = (free_port(), free_port(), free_port(), free_port());
    // The ports the README and the example config use, and the ones this run uses instead.
    // `--base-port 0` lets each simulated app take a free port (apps.toml records them).
    let ports: Vec<(String, String)> = vec![
        ("0.0.0.0:50051".into(), format!("127.0.0.1:{gateway}")),
        (":50051".into(), format!(":{gateway}")),
        (":50052".into(), format!(":{registry}")),
        (":9090".into(), format!(":{admin}")),
        (":8444".into(), format!(":{portal}")),
        ("--base-port 60000".into(), "--base-port 0".into()),
    ];
    copy_examples(dir.path(), &ports);
    let vars = HashMap::from([("DATABASE_URL", database)]);

    let commands = readme_commands();
    assert!(commands.len() >= 6, "{commands:?}");
    let mut running = Vec::new();
    let mut last_output = String::new();
    for line in &commands {
        let mut line = line.clone();
        for (old, new) in &ports {
            line = line.replace(old.as_str(), new);
        }
        let parsed = parse(&line, &vars);
        if parsed.background {
            running.push(start_background(dir.path(), &parsed.args).await);
            continue;
        }
        let output = tokio::time::timeout(
            COMMAND_DEADLINE,
            Command::new(BIN)
                .args(&parsed.args)
                .current_dir(dir.path())
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("`{line}` did not finish"))
        .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        );
        assert!(
            output.status.success(),
            "`{line}` failed ({}):\n{stdout}\n{stderr}",
            output.status
        );
        if let Some(file) = parsed.stdout_to {
            std::fs::write(dir.path().join(file), &output.stdout).unwrap();
        }
        last_output = format!("{stdout}{stderr}");
    }

    // The last command is the person's query: verified, listed, the previous holder's accounts
    // unbound and watched to the end.
    assert!(last_output.contains("Verified"), "{last_output}");
    assert!(
        last_output.contains("Done: ") && last_output.contains(" unbound of "),
        "{last_output}"
    );
    // The portal serves HTTPS with the certificate `certs` wrote for it, tells browsers to keep
    // to HTTPS, and reaches the gateway as its portal tenant: a person's first step sends a code.
    let client = https::Client::tls(
        ([127, 0, 0, 1], portal).into(),
        &dir.path().join("certs/ca.pem"),
    );
    let start = client.request("GET", "/", &[], None).await;
    assert_eq!(start.status, 200, "{}", start.body);
    assert_eq!(
        start.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    let cookie = start
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("a visitor cookie")
        .to_owned();
    let marker = "name=\"csrf\" value=\"";
    let csrf = start
        .body
        .split(marker)
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap();
    let codes_before = std::fs::read_to_string(dir.path().join("sms.jsonl"))
        .unwrap()
        .lines()
        .count();
    let form = format!("csrf={csrf}&phone=13800138000&id_last_six=12345X");
    let sent = client
        .request(
            "POST",
            "/start",
            &[
                ("cookie", &cookie),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            Some(&form),
        )
        .await;
    assert_eq!(sent.status, 303, "{}", sent.body);
    assert_eq!(sent.header("location"), Some("/code"));
    // The code goes out on its own after the answer: wait for it (10 s at most).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let sms = std::fs::read_to_string(dir.path().join("sms.jsonl")).unwrap();
        let new_code = sms
            .lines()
            .skip(codes_before)
            .any(|l| l.contains("\"template\":\"verification_code\""));
        if new_code {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no code reached the number through the portal: {sms}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The gateway's start-up said what it runs on.
    let (_, gateway_log) = running
        .iter()
        .find(|(_, log)| log.iter().any(|l| l.contains("store ready")))
        .expect("the gateway's log");
    assert!(
        gateway_log
            .iter()
            .any(|l| l.contains("store ready") && l.contains("PostgreSQL")),
        "{gateway_log:?}"
    );
    for (mut child, _) in running {
        let _ = child.kill().await;
    }
}
