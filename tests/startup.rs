//! Start-up failures name what failed (issue 16, item 4), and the log is plain text when it is
//! not written to a terminal: the binary as a child process, its stderr read.

use std::process::{Command, Stdio};

fn config(dir: &std::path::Path, listen: &str, store: &str) -> std::path::PathBuf {
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"{listen}\"\ndevelopment = true\nsigning_secret = \"0123456789abcdef0123456789abcdef\"\n\
             [store]\nurl = \"{store}\"\n[registry]\nendpoint = \"http://127.0.0.1:1\"\n"
        ),
    )
    .unwrap();
    path
}

/// Runs `serve` until it exits or `secs` pass; its stderr, and whether it exited with success.
fn serve(config: &std::path::Path, secs: u64) -> (String, Option<bool>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_unbind-gateway"))
        .args(["serve", "--config"])
        .arg(config)
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status.success());
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (err, status)
}

#[test]
fn a_taken_address_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let store = format!("sqlite://{}", dir.path().join("db.sqlite").display());
    let (err, status) = serve(&config(dir.path(), &addr, &store), 20);
    assert_eq!(status, Some(false), "{err}");
    assert!(err.contains(&addr) && err.contains("listen"), "{err}");
}

#[test]
fn a_sqlite_store_in_a_missing_directory_is_created_and_the_log_is_plain() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("not").join("yet").join("db.sqlite");
    let store = format!("sqlite://{}", db.display());
    let (err, status) = serve(&config(dir.path(), "127.0.0.1:0", &store), 4);
    assert_eq!(status, None, "it stopped: {err}");
    assert!(db.exists(), "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "ANSI codes in a log that is not a terminal: {err:?}"
    );
}
