//! What `edgeidctl attest verify` parses from a device it does not trust:
//! the firmware event log, IMA's measurement list, the PCR file, a
//! quote's TPMS_ATTEST and TPMT_SIGNATURE, and the policy file.
#![no_main]

use edgeid_attest::{firmware_log, ima_log, pcr_file, policy::Policy, Bank, Evidence};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(log) = firmware_log::parse(data) {
        let _ = firmware_log::replay(&log);
    }
    if let Ok(entries) = ima_log::parse(data) {
        for e in &entries {
            let _ = (e.measurement(Bank::Sha256), e.path(), e.file_digest());
        }
    }
    let _ = pcr_file::read(data);
    let _ = Policy::parse(&String::from_utf8_lossy(data));
    // The same bytes as each file of a quote's evidence, split in four.
    let quarter = data.len() / 4;
    let (a, rest) = data.split_at(quarter);
    let (b, rest) = rest.split_at(quarter);
    let (c, d) = rest.split_at(quarter);
    let pcrs = pcr_file::read(c).unwrap_or_default();
    let evidence = Evidence {
        ak_pem: String::from_utf8_lossy(a).into_owned(),
        attest: b.to_vec(),
        signature: d.to_vec(),
        pcrs,
        firmware_log: Some(d.to_vec()),
        ima_log: Some(c.to_vec()),
    };
    let _ = edgeid_attest::verify(&evidence, a, edgeid_attest::AkTrust::FromEvidence, None);
});
