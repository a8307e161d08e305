//! edgeid-attest: checking what a TPM says about a device, anywhere — no
//! TPM, no daemon. `edgeidctl attest verify` is this library; a backend can
//! link it to check the same evidence.
//!
//! - [`evidence`]: a quote's files, in tpm2-tools' names and formats;
//! - [`pcr_file`]: the PCR file tpm2-tools writes and reads;
//! - [`firmware_log`], [`ima_log`]: the event logs, parsed and replayed;
//! - [`policy`]: expected PCR values, events and files, as TOML;
//! - [`verify`]: every check, each reported.

use std::collections::BTreeMap;

mod bank;
pub mod evidence;
pub mod firmware_log;
pub mod ima_log;
pub mod pcr_file;
pub mod policy;
pub mod verify;

pub use bank::Bank;
pub use evidence::Evidence;
pub use verify::{verify, AkTrust, Check, Report};

/// Quoted PCR values: bank → PCR index → value.
pub type PcrValues = BTreeMap<Bank, BTreeMap<u32, Vec<u8>>>;

/// Quoted PCR values in the quote's order: per bank, (PCR index, value).
pub type PcrList = Vec<(Bank, Vec<(u32, Vec<u8>)>)>;

/// What a module's quote carries as qualifying data (edgeid's workload API,
/// `POST /modules/{name}/genid/{genid}/attest`): SHA-256 over
/// `"edgeid module attestation v1\n" ‖ device ‖ "\n" ‖ module ‖ "\n" ‖
/// spiffe_id ‖ "\n" ‖ nonce`, so a quote asked for by one module cannot be
/// passed off as another's. Ids never hold a newline.
pub fn module_qualifying_data(
    device: &str,
    module: &str,
    spiffe_id: Option<&str>,
    nonce: &[u8],
) -> Vec<u8> {
    let mut input = format!(
        "edgeid module attestation v1\n{device}\n{module}\n{}\n",
        spiffe_id.unwrap_or_default()
    )
    .into_bytes();
    input.extend_from_slice(nonce);
    Bank::Sha256.hash(&input)
}
