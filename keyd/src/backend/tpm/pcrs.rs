//! PCR selections: which banks and PCRs a quote covers, checked, in the
//! order the TPM and a verifier's PCR file list them.

use tss_esapi::abstraction::pcr::read_all;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::structures::{
    PcrSelectSize, PcrSelection as TpmPcrSelection, PcrSelectionList, PcrSlot,
};
use tss_esapi::tss2_esys::TPML_PCR_SELECTION;

use edgeid_attest::Bank;

use super::Tpm;
use crate::backend::Failure;
use crate::error::Error;

/// PCRs a PC Client TPM has (0-23).
const PCR_COUNT: u32 = 24;

/// The bank of a name as the API spells it (`sha256`).
fn parse_bank(name: &str) -> Result<Bank, Error> {
    Bank::parse(name).ok_or_else(|| {
        Error::BadRequest(format!(
            "unknown PCR bank '{}' (sha1, sha256 or sha384)",
            edgeid_common::id::shown(name)
        ))
    })
}

/// A bank's hash algorithm, as tss-esapi names it.
pub(super) fn algorithm(bank: Bank) -> HashingAlgorithm {
    match bank {
        Bank::Sha1 => HashingAlgorithm::Sha1,
        Bank::Sha256 => HashingAlgorithm::Sha256,
        Bank::Sha384 => HashingAlgorithm::Sha384,
    }
}

/// One bank's PCRs read (or quoted): index and value.
pub type BankValues = Vec<(u32, Vec<u8>)>;

/// What a quote covers: PCR indexes per bank, each list sorted and non-empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSelection(Vec<(Bank, Vec<u32>)>);

impl PcrSelection {
    /// Checks a request's selection: known banks, PCRs 0-23, no repeats, at
    /// least one PCR.
    pub fn new(banks: &[(String, Vec<u32>)]) -> Result<Self, Error> {
        let mut out: Vec<(Bank, Vec<u32>)> = Vec::new();
        for (name, pcrs) in banks {
            let bank = parse_bank(name)?;
            if out.iter().any(|(b, _)| *b == bank) {
                return Err(Error::BadRequest(format!("PCR bank {name} is named twice")));
            }
            let mut sorted = pcrs.clone();
            sorted.sort_unstable();
            if let Some(bad) = sorted.iter().find(|p| **p >= PCR_COUNT) {
                return Err(Error::BadRequest(format!(
                    "PCR {bad} does not exist (a TPM has PCRs 0-{})",
                    PCR_COUNT - 1
                )));
            }
            if sorted.windows(2).any(|w| w[0] == w[1]) {
                return Err(Error::BadRequest(format!(
                    "PCR bank {name} names a PCR twice"
                )));
            }
            if sorted.is_empty() {
                return Err(Error::BadRequest(format!("PCR bank {name} names no PCR")));
            }
            out.push((bank, sorted));
        }
        if out.is_empty() {
            return Err(Error::BadRequest("a quote needs at least one PCR".into()));
        }
        out.sort();
        Ok(Self(out))
    }

    /// The banks and their PCRs, in the order the TPM reports them.
    pub fn banks(&self) -> &[(Bank, Vec<u32>)] {
        &self.0
    }

    /// The TPM's selection, banks in this selection's order: the quote's
    /// digest covers the values in that order, and a verifier's PCR file
    /// lists them so. (tss-esapi's builder orders banks by a hash map.)
    pub(super) fn to_tpm(&self) -> Result<PcrSelectionList, Failure> {
        let bad = |e: tss_esapi::Error| Failure::internal(&format!("PCR selection: {e}"));
        let mut list = TPML_PCR_SELECTION::default();
        for (i, (bank, pcrs)) in self.0.iter().enumerate() {
            let slots = pcrs
                .iter()
                .map(|p| PcrSlot::try_from(1u32 << p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(bad)?;
            let selection =
                TpmPcrSelection::create(algorithm(*bank), PcrSelectSize::ThreeOctets, &slots)
                    .map_err(bad)?;
            let slot = list
                .pcrSelections
                .get_mut(i)
                .ok_or_else(|| Failure::internal("too many PCR banks"))?;
            *slot = selection.into();
            list.count += 1;
        }
        PcrSelectionList::try_from(list).map_err(bad)
    }
}

impl Tpm {
    /// The values of the PCRs `pcrs` selects, bank by bank in its order.
    pub(super) fn read_pcrs(
        &mut self,
        pcrs: &PcrSelection,
    ) -> Result<Vec<(Bank, BankValues)>, Failure> {
        let selection = pcrs.to_tpm()?;
        let read = self
            .ctx
            .execute_without_session(|c| read_all(c, selection.clone()))
            .map_err(|e| self.classify(e, "the TPM refused to read its PCRs"))?;
        let mut values = Vec::new();
        for (bank, indexes) in pcrs.banks() {
            let tpm_bank = read.pcr_bank(algorithm(*bank)).ok_or_else(|| {
                Failure::Request(Error::BadRequest(format!(
                    "this TPM has no {} PCR bank",
                    bank.name()
                )))
            })?;
            let mut bank_values = Vec::new();
            for index in indexes {
                let slot =
                    PcrSlot::try_from(1u32 << index).map_err(|_| Failure::internal("PCR slot"))?;
                let value = tpm_bank.get_digest(slot).ok_or_else(|| {
                    Failure::Request(Error::BadRequest(format!(
                        "this TPM did not read PCR {index} of its {} bank",
                        bank.name()
                    )))
                })?;
                bank_values.push((*index, value.value().to_vec()));
            }
            values.push((*bank, bank_values));
        }
        Ok(values)
    }
}
