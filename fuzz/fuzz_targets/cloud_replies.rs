//! What identityd reads from the cloud: the provisioning service's register
//! and operation-status answers (any status, any body), its TPM challenge,
//! and the refusal text of any answer from it or the hub. An error is the
//! expected outcome for nonsense; a panic or a hang is a finding.
#![no_main]

use edgeid_identityd::cloud::Reply;
use edgeid_identityd::dps;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first two bytes are the status (big-endian); the rest is the body.
    let (status, body) = match data {
        [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]), rest),
        _ => return,
    };
    let Ok(status) = http::StatusCode::from_u16(status) else {
        return;
    };
    let reply = Reply {
        status,
        retry_after: None,
        body: bytes::Bytes::copy_from_slice(body),
        endpoint: "PUT https://dps.example/scope/registrations/dev/register".into(),
    };
    if let Ok(progress) = dps::read_operation(&reply, "dev") {
        if let Some((hub, device_id)) = progress.assigned {
            // What was accepted passed the name rules.
            assert!(edgeid_identityd::names::check_hub(&hub).is_ok());
            assert!(edgeid_identityd::names::check_device_id(&device_id).is_ok());
        }
    }
    let _ = dps::read_tpm_challenge(&reply);
    let _ = reply.refusal().to_string();
});
