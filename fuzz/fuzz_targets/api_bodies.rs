//! Every daemon's request bodies as JSON: decoding never panics, whatever
//! the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn decode<T: serde::de::DeserializeOwned>(data: &[u8]) {
    let _ = serde_json::from_slice::<T>(data);
}

fuzz_target!(|data: &[u8]| {
    use edgeid_certd::api as certd;
    use edgeid_identityd::api as identityd;
    use edgeid_keyd::api as keyd;
    use edgeid_workloadapi::api as workload;
    decode::<keyd::CreateKeyPairRequest>(data);
    decode::<keyd::SignRequest>(data);
    decode::<keyd::PublicKeyRequest>(data);
    decode::<certd::CreateCertificateRequest>(data);
    decode::<certd::ImportCertificateRequest>(data);
    decode::<identityd::CreateModuleRequest>(data);
    decode::<workload::SignRequest>(data);
    decode::<workload::EncryptRequest>(data);
    decode::<workload::DecryptRequest>(data);
    decode::<workload::IdentityCertificateRequest>(data);
    decode::<workload::ServerCertificateRequest>(data);
});
