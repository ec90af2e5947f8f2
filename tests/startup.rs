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

#[test]
fn the_start_up_log_names_the_store_its_migrations_the_address_and_the_apps() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let store = format!("sqlite://{}", db.display());
    let (err, status) = serve(&config(dir.path(), "127.0.0.1:0", &store), 4);
    assert_eq!(status, None, "it stopped: {err}");
    let ready = err
        .lines()
        .find(|l| l.contains("store ready"))
        .unwrap_or_else(|| panic!("no line names the store: {err}"));
    assert!(
        ready.contains(&format!("SQLite {}", db.display())) && ready.contains("applied_now=[1,"),
        "{ready}"
    );
    let serving = err
        .lines()
        .find(|l| l.contains("gateway serving"))
        .unwrap_or_else(|| panic!("no line names the address: {err}"));
    assert!(
        serving.contains("addr=127.0.0.1:") && serving.contains("apps=0"),
        "{serving}"
    );
}

#[test]
fn a_refused_postgresql_is_named_with_its_address_and_the_cause_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = format!("postgres://someone:hunter2-secret@127.0.0.1:{port}/nothing");
    let (err, status) = serve(&config(dir.path(), "127.0.0.1:0", &store), 8);
    assert_eq!(status, Some(false), "{err}");
    assert!(
        err.contains(&format!("PostgreSQL 127.0.0.1:{port}")) && err.contains("connection refused"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "the password was printed: {err}");
    assert!(!err.contains("pool timed out"), "{err}");
}

/// `serve --check-config` on a file: whether it passed, and what it printed.
fn check_config(path: &std::path::Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_unbind-gateway"))
        .args(["serve", "--check-config", "--config"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn a_missing_section_is_named_not_blamed_on_line_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:0\"\ndevelopment = true\nsigning_secret = \"0123456789abcdef0123456789abcdef\"\n\
         [registry]\nendpoint = \"http://127.0.0.1:1\"\n",
    )
    .unwrap();
    let (ok, printed) = check_config(&path);
    assert!(!ok, "{printed}");
    assert!(printed.contains("missing `store`"), "{printed}");
    assert!(!printed.contains("line 1"), "{printed}");
    assert_eq!(
        printed.matches("error").count(),
        1,
        "printed once: {printed}"
    );

    std::fs::write(
        &path,
        "listen = \"127.0.0.1:0\"\ndevelopment = true\nsigning_secret = \"0123456789abcdef0123456789abcdef\"\n\
         [store]\nurl = \"sqlite::memory:\"\n[registry]\ntimeout = \"2s\"\n",
    )
    .unwrap();
    let (ok, printed) = check_config(&path);
    assert!(!ok, "{printed}");
    assert!(
        printed.contains("`[registry]` has no `endpoint`"),
        "{printed}"
    );
}

#[test]
fn check_config_reads_the_certificates_and_keys_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let pki =
        unbind_gateway::pki::generate(&dir.path().join("certs"), &[], &[], 30, false).unwrap();
    let write = |cert: &std::path::Path, key: &std::path::Path| {
        let path = dir.path().join("gateway.toml");
        std::fs::write(
            &path,
            format!(
                "listen = \"127.0.0.1:0\"\ndevelopment = true\nsigning_secret = \"0123456789abcdef0123456789abcdef\"\n\
                 [tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n\
                 [store]\nurl = \"sqlite://{}\"\n[registry]\nendpoint = \"http://127.0.0.1:1\"\n",
                cert.display(),
                key.display(),
                pki.ca.cert.display(),
                dir.path().join("db").join("unbind.db").display()
            ),
        )
        .unwrap();
        path
    };
    let (ok, printed) = check_config(&write(&pki.gateway.cert, &pki.gateway.key));
    assert!(ok, "{printed}");
    assert!(printed.contains("checked tls.cert"), "{printed}");
    assert!(printed.contains("its directory will be made"), "{printed}");

    let missing = dir.path().join("nowhere.pem");
    let (ok, printed) = check_config(&write(&missing, &pki.gateway.key));
    assert!(!ok, "{printed}");
    assert!(
        printed.contains("`tls.cert`") && printed.contains(&missing.display().to_string()),
        "{printed}"
    );

    // Another certificate's key.
    let (ok, printed) = check_config(&write(&pki.gateway.cert, &pki.adapter.key));
    assert!(!ok, "{printed}");
    assert!(
        printed.contains("`tls.key`") && printed.contains("is not the key of the certificate"),
        "{printed}"
    );
    assert!(!printed.contains("PRIVATE KEY"), "{printed}");

    // A key where the certificate should be.
    let (ok, printed) = check_config(&write(&pki.gateway.key, &pki.gateway.key));
    assert!(!ok, "{printed}");
    assert!(printed.contains("holds no PEM certificate"), "{printed}");
}

#[test]
fn errors_print_once_and_never_with_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_unbind-gateway"))
        .args(["serve", "--config"])
        .arg(dir.path().join("missing.toml"))
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: cannot read config file"), "{err}");
    assert!(
        !err.contains("Stack backtrace") && !err.contains("Caused by"),
        "{err}"
    );
}

#[test]
fn the_http_apis_taken_address_and_unusable_key_set_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("db.sqlite").display());
    let path = config(dir.path(), "127.0.0.1:0", &store);
    let base = std::fs::read_to_string(&path).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    std::fs::write(&path, format!("{base}[http]\nlisten = \"{addr}\"\n")).unwrap();
    let (err, status) = serve(&path, 20);
    assert_eq!(status, Some(false), "{err}");
    assert!(
        err.contains(&format!("http.listen: cannot listen on {addr}")),
        "{err}"
    );
    // A key set that is missing, and one holding a shared secret.
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &path,
        format!(
            "{base}[http]\nlisten = \"127.0.0.1:0\"\n[http.auth]\njwks_file = \"{}\"\n\
             issuer = \"https://as.test\"\naudience = \"unbind-gateway\"\n",
            jwks.display()
        ),
    )
    .unwrap();
    let (err, status) = serve(&path, 20);
    assert_eq!(status, Some(false), "{err}");
    assert!(
        err.contains("`http.auth.jwks_file`: cannot read") && err.contains("jwks.json"),
        "{err}"
    );
    std::fs::write(&jwks, r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).unwrap();
    let (ok, printed) = check_config(&path);
    assert!(!ok, "{printed}");
    assert!(printed.contains("symmetric"), "{printed}");
    let (err, status) = serve(&path, 20);
    assert_eq!(status, Some(false), "{err}");
    assert!(
        err.contains("symmetric") && err.contains("jwks.json"),
        "{err}"
    );
}
