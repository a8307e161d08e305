//! The SPIFFE Workload API's inputs: request messages (protobuf), SPIFFE IDs,
//! and JWT-SVIDs given to ValidateJWTSVID.
#![no_main]

use std::sync::OnceLock;

use edgeid_workloadapi::spiffe::jwt::JwtAuthority;
use edgeid_workloadapi::spiffe::{id, proto};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn authority() -> &'static JwtAuthority {
    static A: OnceLock<JwtAuthority> = OnceLock::new();
    A.get_or_init(|| {
        JwtAuthority::new(
            edgeid_keyd::KeydClient::new("/nonexistent/keyd.sock"),
            "example.org",
            300,
            86_400,
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = proto::X509svidRequest::decode(data);
    let _ = proto::X509BundlesRequest::decode(data);
    let _ = proto::JwtBundlesRequest::decode(data);
    if let Ok(r) = proto::JwtsvidRequest::decode(data) {
        let _ = id::parse(&r.spiffe_id);
    }
    if let Ok(r) = proto::ValidateJwtsvidRequest::decode(data) {
        let _ = authority().validate(&r.svid, &r.audience);
    }
    let text = String::from_utf8_lossy(data);
    let _ = id::parse(&text);
    let _ = authority().validate(&text, "aud");
});
