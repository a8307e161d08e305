//! Generates the SPIFFE Workload API's messages, server and client from
//! `proto/workload.proto`, and edgeid's module attestation service from
//! `proto/attestation.proto`. The .proto is compiled by protox (pure Rust), so
//! building needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/workload.proto");
    println!("cargo:rerun-if-changed=proto/attestation.proto");
    let descriptors = protox::compile(
        ["proto/workload.proto", "proto/attestation.proto"],
        ["proto"],
    )?;
    tonic_prost_build::configure()
        // Clients connect over a Unix socket with their own connector; the
        // generated `connect` (TCP, tonic's transport) is not wanted.
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
