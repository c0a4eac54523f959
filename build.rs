//! Compiles `proto/sidb/v1/*.proto` with protox (pure Rust: no system `protoc`), writes the
//! descriptor set for gRPC reflection, and generates the tonic/prost code from it.
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from("proto");
    let mut files: Vec<PathBuf> = fs::read_dir(proto_dir.join("sidb/v1"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    // tonic-prost-build emits no rerun-if-changed lines of its own.
    println!("cargo:rerun-if-changed=proto");
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&proto_dir])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("sidb_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // tonic-prost's codec, with undecodable messages answered INVALID_ARGUMENT, not INTERNAL
        .codec_path("crate::service::codec::ApiCodec")
        .compile_fds(fds)?;
    Ok(())
}
