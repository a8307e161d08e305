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
pub use verify::{verify, Check, Report};

/// Quoted PCR values: bank → PCR index → value.
pub type PcrValues = BTreeMap<Bank, BTreeMap<u32, Vec<u8>>>;

/// Quoted PCR values in the quote's order: per bank, (PCR index, value).
pub type PcrList = Vec<(Bank, Vec<(u32, Vec<u8>)>)>;
