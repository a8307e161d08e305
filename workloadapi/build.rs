//! Generates the SPIFFE Workload API's messages, server and client from
//! `proto/workload.proto`, and edgeid's module attestation service from
//! `proto/attestation.proto`, Envoy's Secret Discovery Service from
//! `proto/envoy/` (a subset, wire-compatible), and their descriptors for server reflection. The .proto is compiled by protox (pure Rust), so
//! building needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/workload.proto");
    println!("cargo:rerun-if-changed=proto/attestation.proto");
    println!("cargo:rerun-if-changed=proto/envoy");
    let descriptors = protox::compile(
        [
            "proto/workload.proto",
            "proto/attestation.proto",
            "proto/envoy/sds.proto",
            "proto/envoy/tls.proto",
        ],
        ["proto"],
    )?;
    // The descriptors again, for gRPC server reflection.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptors.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        // Clients connect over a Unix socket with their own connector; the
        // generated `connect` (TCP, tonic's transport) is not wanted.
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
