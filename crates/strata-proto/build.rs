//! Generates Rust types from `proto/` with a vendored protoc, so the build
//! needs no protoc installed by hand.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not baked in when it compiles: every clone
    // shares one target dir, and a script compiled in another (maybe since
    // deleted) clone must still find this clone's protos.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files =
        ["strata/v1/layer.proto", "strata/v1/store.proto", "strata/v1/wire.proto"].map(|f| root.join(f));
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    prost_build::Config::new()
        .protoc_executable(protoc_bin_vendored::protoc_bin_path()?)
        .compile_protos(&files, &[root])?;
    Ok(())
}
