//! Every daemon's config file (TOML), parsed and validated, including
//! identityd's connection strings and workloadd's [spiffe] table.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let p = Path::new("fuzz.toml");
    use edgeid_common::config::parse;
    let _ = parse::<edgeid_keyd::KeydConfig>(p, text);
    if let Ok(c) = parse::<edgeid_certd::CertdConfig>(p, text) {
        let _ = c.validate();
    }
    if let Ok(c) = parse::<edgeid_identityd::IdentitydConfig>(p, text) {
        let _ = c.validate();
    }
    if let Ok(c) = parse::<edgeid_workloadapi::WorkloadConfig>(p, text) {
        let _ = c.validate();
    }
});
