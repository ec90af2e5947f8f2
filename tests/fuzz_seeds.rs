//! The fuzz targets' seed corpora, run as ordinary tests on stable Rust so CI exercises them:
//! every file in `fuzz/seeds/<target>/` goes through the same checks the libFuzzer target
//! `fuzz/fuzz_targets/<target>.rs` makes. Both include `fuzz/checks/<target>.rs`, so there is one
//! copy of what is checked. A missing or empty seed directory fails (a renamed directory cannot
//! pass vacuously), a failure names the seed file, and a fuzz target without a test here fails
//! too. Fuzzing longer is in fuzz/README.md.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
};

mod phone {
    include!("../fuzz/checks/phone.rs");
}
mod id_last_six {
    include!("../fuzz/checks/id_last_six.rs");
}
mod session_token {
    include!("../fuzz/checks/session_token.rs");
}
mod account_ref {
    include!("../fuzz/checks/account_ref.rs");
}
mod grpc_timeout {
    include!("../fuzz/checks/grpc_timeout.rs");
}
mod config {
    include!("../fuzz/checks/config.rs");
}
mod keyring {
    include!("../fuzz/checks/keyring.rs");
}

/// One target's checks: `true` when its parser accepted the input.
type Check = fn(&[u8]) -> bool;

/// Every target with its checks; a target in `fuzz/fuzz_targets/` missing here fails
/// [`every_fuzz_target_has_its_seeds_run`].
const TARGETS: [(&str, Check); 7] = [
    ("phone", phone::check),
    ("id_last_six", id_last_six::check),
    ("session_token", session_token::check),
    ("account_ref", account_ref::check),
    ("grpc_timeout", grpc_timeout::check),
    ("config", config::check),
    ("keyring", keyring::check),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every file in `fuzz/seeds/<target>/`, sorted; fails if the directory is missing or empty.
fn seeds(target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join("seeds").join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed directory {} cannot be read: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seed files in {}", dir.display());
    files
}

/// Puts every seed of `target` through its checks; a failure names each failing seed file and
/// what its check said. At least one seed must be accepted by the parser, so stale seeds (say,
/// after a format change) cannot leave the checks behind the parser unexercised.
fn run_seeds(target: &str) {
    let (_, check) = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no checks for fuzz target {target}"));
    let mut failures = Vec::new();
    let mut accepted = Vec::new();
    for path in seeds(target) {
        let data = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("seed {} cannot be read: {e}", path.display()));
        // Unwinding out of the checks leaves nothing shared half-updated: they only read.
        match catch_unwind(AssertUnwindSafe(|| check(&data))) {
            Ok(true) => accepted.push(path),
            Ok(false) => {}
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(a panic without a message)");
                failures.push(format!("{}: {message}", path.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "fuzz target {target} fails on its seeds:\n{}",
        failures.join("\n")
    );
    assert!(
        !accepted.is_empty(),
        "no seed of fuzz target {target} is accepted by its parser: the seeds in \
         fuzz/seeds/{target} are stale"
    );
}

#[test]
fn phone_seeds_pass_the_phone_fuzz_checks() {
    run_seeds("phone");
}

#[test]
fn id_last_six_seeds_pass_the_id_last_six_fuzz_checks() {
    run_seeds("id_last_six");
}

#[test]
fn session_token_seeds_pass_the_session_token_fuzz_checks() {
    run_seeds("session_token");
}

#[test]
fn account_ref_seeds_pass_the_account_ref_fuzz_checks() {
    run_seeds("account_ref");
}

#[test]
fn grpc_timeout_seeds_pass_the_grpc_timeout_fuzz_checks() {
    run_seeds("grpc_timeout");
}

#[test]
fn config_seeds_pass_the_config_fuzz_checks() {
    run_seeds("config");
}

#[test]
fn keyring_seeds_pass_the_keyring_fuzz_checks() {
    run_seeds("keyring");
}

/// The targets in `fuzz/fuzz_targets/` are exactly those in [`TARGETS`], and each includes the
/// checks file this test runs, so the fuzzer and this test cannot drift apart.
#[test]
fn every_fuzz_target_has_its_seeds_run() {
    let dir = fuzz_dir().join("fuzz_targets");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{} cannot be read: {e}", dir.display()))
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .map(|path| {
            let name = path.file_stem().expect("a file name");
            name.to_string_lossy().into_owned()
        })
        .collect();
    on_disk.sort();
    let mut tested: Vec<String> = TARGETS.iter().map(|(name, _)| name.to_string()).collect();
    tested.sort();
    assert_eq!(
        on_disk, tested,
        "fuzz targets vs the targets this test runs"
    );

    for name in &tested {
        let path = dir.join(format!("{name}.rs"));
        let source = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{} cannot be read: {e}", path.display()));
        let include = format!("include!(\"../checks/{name}.rs\")");
        assert!(
            source.contains(&include),
            "{} does not {include}: it no longer checks what tests/fuzz_seeds.rs checks",
            path.display()
        );
    }
}
