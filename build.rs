//! Compiles the ext_proc v3 protocol in `proto/` with protox (pure Rust, so no
//! `protoc` is needed) and generates the tonic server and client. The descriptor set
//! is also written to `OUT_DIR` so the HTTP service can transcode proto3 JSON.

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = "proto/envoy/service/ext_proc/v3/external_processor.proto";
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile([root], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("ext_proc_descriptors.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Bodies and header values stay `Bytes`, so they move through the gateway without copies.
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
