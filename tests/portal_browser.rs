//! The portal in a real browser (issue 18): `tests/browser/portal.cjs` drives Debian's chromium
//! with playwright-core against the `demo` binary, run as a person runs it (40 apps, the last of
//! which never answers), through the whole flow four times: in English and in Chinese, each with
//! JavaScript and without it, at desktop and phone widths. It checks every page with axe-core and
//! takes a screenshot of each step: into `docs/portal/` (the README's) with
//! `UPDATE_SCREENSHOTS=1`, else into a temporary directory, so a test run leaves the tree as it
//! was.
//!
//! It needs `chromium` and the npm packages under `target/node` (`.ci/run` installs both); without
//! them it skips, saying so, except under `CI=true`, where it fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

#[path = "common/demo.rs"]
mod demo;

/// Chromium, node and the driver, or why not.
fn browser_tools(root: &Path) -> Result<(PathBuf, PathBuf), String> {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !chromium.exists() {
        return Err(format!("no chromium at {}", chromium.display()));
    }
    let modules = root.join("target/node/node_modules");
    for package in ["playwright-core", "axe-core"] {
        if !modules.join(package).exists() {
            return Err(format!("no {package} under {}", modules.display()));
        }
    }
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Err("no node on PATH".to_owned());
    }
    Ok((chromium, modules))
}

#[tokio::test]
async fn the_flow_in_chromium_in_both_languages_with_and_without_javascript() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let (chromium, modules) = match browser_tools(&root) {
        Ok(tools) => tools,
        Err(why) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but {why}: .ci/run installs them"
            );
            eprintln!(
                "skipped: {why} (`bash .ci/run` installs chromium and, under target/node, \
                 playwright-core and axe-core)"
            );
            return;
        }
    };

    let dir = tempfile::tempdir().unwrap();
    let demo = demo::Demo::start(
        dir.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--portal-listen",
            "127.0.0.1:0",
            "--apps",
            "40",
        ],
    );
    // The banner names the app that never answers: `"Sim Video 4" never answers ...`.
    let apps = demo.line("simulated apps ");
    let silent_name = apps
        .split('"')
        .nth(1)
        .unwrap_or_else(|| panic!("the banner names the silent app: {}", demo.banner))
        .to_owned();

    let scratch = tempfile::tempdir().unwrap();
    let shots = if std::env::var("UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        root.join("docs/portal")
    } else {
        scratch.path().to_path_buf()
    };
    let run = tokio::process::Command::new("node")
        .arg(root.join("tests/browser/portal.cjs"))
        .env("NODE_PATH", &modules)
        .env("PORTAL_URL", demo.portal())
        .env("SMS_FILE", demo.sms_file())
        .env("SHOTS", &shots)
        .env("CHROMIUM", &chromium)
        .env("SILENT_APP_NAME", &silent_name)
        // Its steps and any failure go straight to the test's output, even if it hangs.
        .stdout(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the browser test ran longer than 4 minutes (its last step is printed above)")
        .unwrap();
    assert!(status.success(), "the browser test failed: see above");
    // Nobody's number or ID characters reached the demo's log.
    let log = demo.log();
    for secret in [
        "13800138000",
        "13900139000",
        "18612345678",
        "12345X",
        "154321",
        "30012X",
    ] {
        assert!(!log.contains(secret), "the demo's log holds {secret}");
    }
}
