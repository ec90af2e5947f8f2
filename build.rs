//! Compiles the `unbind.v1` protos with a vendored `protoc`, so a fresh machine needs no system
//! install, and writes a file descriptor set for gRPC server reflection.
//!
//! It also sets `cfg(no_database)` when `DATABASE_URL` is unset outside CI: the PostgreSQL tests
//! carry `#[cfg_attr(no_database, ignore = "needs DATABASE_URL")]`, so a plain `cargo test`
//! without a database reports them as ignored in its summary line instead of passing them
//! silently. Under `CI=true` the cfg is never set, so a missing database fails those tests.
//! Changing either variable reruns this script and rebuilds the crate once.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: a build script is single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/unbind/v1/adapter.proto",
        "proto/unbind/v1/registry.proto",
        "proto/unbind/v1/gateway.proto",
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("unbind_v1_descriptor.bin"))
        .compile_protos(&protos, &["proto"])?;
    for proto in protos {
        println!("cargo::rerun-if-changed={proto}");
    }

    println!("cargo::rustc-check-cfg=cfg(no_database)");
    println!("cargo::rerun-if-env-changed=DATABASE_URL");
    println!("cargo::rerun-if-env-changed=CI");
    // The same tests as `fresh_postgres_database` in tests/common/mod.rs makes at run time.
    let has_database = std::env::var("DATABASE_URL").is_ok();
    let in_ci = std::env::var("CI").as_deref() == Ok("true");
    if !has_database && !in_ci {
        println!("cargo::rustc-cfg=no_database");
    }
    Ok(())
}
