//! The Python client example (examples/client-python) against a gateway with simulated apps and
//! registry (issue 17, item 5): it verifies (decoding the wrong code's google.rpc details first),
//! looks up, unbinds the previous holder's accounts and follows the tickets to the end.

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
async fn the_python_client_example_verifies_looks_up_unbinds_and_decodes_errors() {
    let Some(python) = common::python_env() else {
        return;
    };
    let h = Harness::start(Options {
        apps: 20,
        tweak: fast_worker,
        ..Options::default()
    })
    .await;
    let root = env!("CARGO_MANIFEST_DIR");
    let stubs = common::python_stubs(
        &python,
        &["unbind/v1/adapter.proto", "unbind/v1/gateway.proto"],
    )
    .await;
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&python)
            .arg(format!("{root}/examples/client-python/client.py"))
            .args(["--endpoint", h.endpoint().trim_start_matches("http://")])
            .args([
                "--phone",
                "13800138000",
                "--id-last-six",
                "12345X",
                "--sms-file",
            ])
            .arg(&h.sms_file)
            .arg("--stubs")
            .arg(stubs.path())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the client finishes")
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["wrong_code"]["code"], "INVALID_ARGUMENT", "{report}");
    assert_eq!(report["wrong_code"]["reason"], "INVALID_CODE", "{report}");
    assert_eq!(report["wrong_code"]["fields"], serde_json::json!(["code"]));
    assert_eq!(report["holder_since"], "2024-03-01");
    assert_eq!(report["complete"], true);
    let previous = report["previous_holder"].as_u64().unwrap();
    assert!(previous > 0, "{report}");
    assert_eq!(
        report["tickets"]["COMPLETED"].as_u64(),
        Some(previous),
        "{report}"
    );
    h.stop().await;
}
