//! The Python adapter example (examples/adapter-python) passes the conformance suite, as its
//! README says (issue 17, item 5): stubs generated from proto/ with grpcio-tools, the adapter
//! started, and `check-adapter --phone ... --unbind-account ...` run against it exactly as the
//! README writes it, every check passing.

mod common;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn the_python_adapter_example_passes_every_check() {
    let Some(python) = common::python_env() else {
        return;
    };
    let root = env!("CARGO_MANIFEST_DIR");
    let stubs = common::python_stubs(&python, &["unbind/v1/adapter.proto"]).await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut adapter = tokio::process::Command::new(&python)
        .arg(format!("{root}/examples/adapter-python/adapter.py"))
        .args(["--port", &port.to_string(), "--stubs"])
        .arg(stubs.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(adapter.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the adapter starts")
        .unwrap()
        .unwrap_or_default();
    assert!(first.contains("adapter listening on"), "{first}");

    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_unbind-gateway"))
            .args(["check-adapter", "--endpoint"])
            .arg(format!("http://127.0.0.1:{port}"))
            .args(["--phone", "+8613800138000", "--unbind-account", "acct-1001"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("check-adapter finishes")
    .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!report.contains("FAIL"), "{report}");
    for check in [
        "accounts-well-formed",
        "unbind-idempotent",
        "unbind-removes-account",
    ] {
        assert!(
            report
                .lines()
                .any(|l| l.contains(check) && l.contains("PASS")),
            "{check}: {report}"
        );
    }
    let _ = adapter.kill().await;
}
