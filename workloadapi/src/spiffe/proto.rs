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

/// Envoy's Secret Discovery Service and the xDS messages it carries (a
/// wire-compatible subset, `proto/envoy/`), in modules as their packages.
pub mod envoy {
    pub mod service {
        pub mod secret {
            pub mod v3 {
                #![allow(missing_docs, clippy::all, clippy::pedantic)]
                include!(concat!(env!("OUT_DIR"), "/envoy.service.secret.v3.rs"));
            }
        }
        pub mod discovery {
            pub mod v3 {
                #![allow(missing_docs, clippy::all, clippy::pedantic)]
                include!(concat!(env!("OUT_DIR"), "/envoy.service.discovery.v3.rs"));
            }
        }
    }
    pub mod config {
        pub mod core {
            pub mod v3 {
                #![allow(missing_docs, clippy::all, clippy::pedantic)]
                include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.rs"));
            }
        }
    }
    pub mod extensions {
        pub mod transport_sockets {
            pub mod tls {
                pub mod v3 {
                    #![allow(missing_docs, clippy::all, clippy::pedantic)]
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/envoy.extensions.transport_sockets.tls.v3.rs"
                    ));
                }
            }
        }
    }
}

/// `google.rpc.Status`, as Envoy's NACKs carry it.
pub mod google {
    pub mod rpc {
        #![allow(missing_docs, clippy::all, clippy::pedantic)]
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}
