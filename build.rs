//! Compiles the `unbind.v1` protos with a vendored `protoc`, so a fresh machine needs no system
//! install, and writes a file descriptor set for gRPC server reflection.

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
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
