//! Generates containerd's snapshots API (server and client) from the
//! vendored protos in `proto/containerd/` with a vendored protoc, so the
//! build needs no protoc installed by hand.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs (every clone shares one target dir).
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto/containerd");
    let api = root.join("github.com/containerd/containerd/api");
    let files = [api.join("services/snapshots/v1/snapshots.proto"), api.join("types/mount.proto")];
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let includes = [root, protoc_bin_vendored::include_path()?];
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(config, &files, &includes)?;
    Ok(())
}
