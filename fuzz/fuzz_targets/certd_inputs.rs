//! What certd parses from outside: CSRs (PEM), certificate chains (PEM,
//! imported or from an issuer), EST responses (PKCS#7 certs-only).
#![no_main]

use edgeid_certd::api::Profile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = edgeid_certd::est::certs_from_pkcs7(data);
    let text = String::from_utf8_lossy(data);
    let _ = edgeid_certd::certs::parse_csr(&text, Profile::Client);
    let _ = edgeid_certd::certs::parse_csr(&text, Profile::Ca);
    if let Ok(chain) = edgeid_certd::chain::Chain::from_pem(&text) {
        let _ = chain.check();
        for c in chain.parsed() {
            let _ = (c.validity(), c.subject(), c.is_ca(), c.is_self_signed());
        }
    }
    if let Ok(chain) = edgeid_certd::chain::Chain::from_der(vec![data.to_vec()]) {
        let _ = chain.check();
    }
});
