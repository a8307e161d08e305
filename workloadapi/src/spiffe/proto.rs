//! The SPIFFE Workload API's messages, server and client, generated at build
//! time from `proto/workload.proto`; and edgeid's module attestation service
//! ([`attestation`], from `proto/attestation.proto`).
#![allow(missing_docs, clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/_.rs"));

/// `edgeid.attestation.v1`: module quotes on the SPIFFE socket.
pub mod attestation {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    include!(concat!(env!("OUT_DIR"), "/edgeid.attestation.v1.rs"));
}
