//! The conventions a user's own tools rely on, checked with those tools: Python's standard gRPC
//! reflection client (grpcio-reflection, which speaks `grpc.reflection.v1alpha`, as older grpcurl,
//! Postman and Evans do) lists the gateway's services and resolves their methods, and the
//! standard health client (grpcio-health-checking) finds each one serving.
//!
//! The Python environment is `target/python` (a virtual environment with
//! tests/python/requirements.txt), which `.ci/run` creates when missing. Without it the test
//! says so and passes, except under `CI=true`, where a missing environment is a failure.

mod common;

use std::time::Duration;

use common::{Harness, Options};

#[tokio::test]
async fn pythons_standard_reflection_and_health_clients_see_exactly_the_served_services() {
    let Some(python) = common::python_env() else {
        return;
    };
    let h = Harness::start(Options::default()).await;
    let target = h.endpoint().trim_start_matches("http://").to_owned();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/reflection_health.py"
    );
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(&python)
            .arg(script)
            .arg(&target)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the Python client finishes")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        answer["services"],
        serde_json::json!([
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "unbind.v1.AccountGateway",
            "unbind.v1.CarrierPush",
            "unbind.v1.NumberStatus",
        ]),
        "{answer}"
    );
    for service in [
        "",
        "unbind.v1.AccountGateway",
        "unbind.v1.CarrierPush",
        "unbind.v1.NumberStatus",
    ] {
        assert_eq!(answer["health"][service], "SERVING", "{service}: {answer}");
    }
    let methods = answer["methods"]["unbind.v1.AccountGateway"].to_string();
    for method in ["StartVerification", "StreamLinkedAccounts", "Unbind"] {
        assert!(methods.contains(method), "{method}: {answer}");
    }
    h.stop().await;
}
