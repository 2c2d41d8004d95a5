// The build script generates code at build time; the sans-IO rules (clippy.toml) are for the crate.
#![allow(clippy::disallowed_methods)]

//! Compiles `../proto` with protox and prost-build (no system protoc) and writes the descriptor
//! set used by gRPC server reflection.

use std::path::PathBuf;

const FILES: &[&str] = &[
    "palyra/v1/common.proto",
    "palyra/v1/gateway.proto",
    "palyra/v1/node.proto",
    "palyra/v1/browser.proto",
    "grpc/health/v1/health.proto",
    "grpc/reflection/v1/reflection.proto",
    "grpc/reflection/v1alpha/reflection.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let files: Vec<PathBuf> = FILES.iter().map(|f| root.join(f)).collect();
    let descriptors = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptors.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
