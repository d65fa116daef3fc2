//! Compiles the ext_proc v3 protocol in `proto/` with protox (pure Rust, so no
//! `protoc` is needed) and generates the tonic server and client.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = "proto/envoy/service/ext_proc/v3/external_processor.proto";
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile([root], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Bodies and header values stay `Bytes`, so they move through the gateway without copies.
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
