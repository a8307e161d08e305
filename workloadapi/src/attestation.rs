//! Quotes for modules (an edgeid addition to the workload API, and the
//! `edgeid.attestation.v1` gRPC service beside the SPIFFE Workload API): a
//! module's backend sends a nonce; the module asks; keyd's TPM quotes the
//! PCRs `[attestation]` names over a hash binding the nonce to the device,
//! the module and its SPIFFE ID ([`edgeid_attest::module_qualifying_data`]).
//! The backend checks the quote against that hash, the AK against the EK
//! (once, by credential activation), and the PCRs against its policy.

use edgeid_keyd::api::{TpmAttestationKey, TpmAttestationKeys, TpmQuoteResponse};

use crate::error::Error;
use crate::spiffe::id;
use crate::workload::{Who, Workload};

/// A quote for a module and what its backend checks it with.
#[derive(Debug, Clone)]
pub struct ModuleQuote {
    /// The device, as identityd has it.
    pub device_id: String,
    /// The calling module.
    pub module_id: String,
    /// Its SPIFFE ID, where the SPIFFE Workload API is on.
    pub spiffe_id: Option<String>,
    /// The quote's qualifying data.
    pub qualifying_data: Vec<u8>,
    /// keyd's quote, with the PCR values and event logs.
    pub quote: TpmQuoteResponse,
    /// The attestation key.
    pub attestation_key: TpmAttestationKey,
    /// The endorsement key (and certificate) the AK is proved against.
    pub endorsement: TpmAttestationKeys,
}

/// Shortest and longest nonce a module may send.
const NONCE_LEN: std::ops::RangeInclusive<usize> = 8..=64;

impl Workload {
    /// A quote for the caller's module `name` (at generation `genid`, if given).
    pub async fn attest(
        &self,
        who: &Who<'_>,
        name: &str,
        genid: Option<&str>,
        nonce: &[u8],
        ima_offset: u64,
    ) -> Result<ModuleQuote, Error> {
        if !NONCE_LEN.contains(&nonce.len()) {
            return Err(Error::BadRequest(format!(
                "nonce is {} bytes; a nonce is 8-64",
                nonce.len()
            )));
        }
        let module = self.module_for(who, name, genid).await?;
        let device = self.device().await?;
        let spiffe_id = match &self.config.spiffe {
            Some(spiffe) => Some(
                id::of_module(&spiffe.trust_domain, &device.device_id, &module.module_id)
                    .map_err(Error::Forbidden)?,
            ),
            None => None,
        };
        let qualifying = edgeid_attest::module_qualifying_data(
            &device.device_id,
            &module.module_id,
            spiffe_id.as_deref(),
            nonce,
        );
        let pcrs: Vec<(String, Vec<u32>)> = self
            .config
            .attestation
            .pcrs
            .iter()
            .map(|(bank, pcrs)| (bank.clone(), pcrs.clone()))
            .collect();
        let keyd_error = |what: &str| {
            let what = what.to_owned();
            move |e| Error::from_daemon("keyd", &what, e)
        };
        let quote = self
            .keyd
            .tpm_quote(&qualifying, &pcrs, ima_offset)
            .await
            .map_err(keyd_error("quoting"))?;
        let ak = self
            .keyd
            .tpm_ak()
            .await
            .map_err(keyd_error("the attestation key"))?;
        let ek = self
            .keyd
            .tpm_attestation_keys()
            .await
            .map_err(keyd_error("the endorsement key"))?;
        tracing::info!(module = %module.module_id, "quoted for a module");
        Ok(ModuleQuote {
            device_id: device.device_id,
            module_id: module.module_id,
            spiffe_id,
            qualifying_data: qualifying,
            quote,
            attestation_key: ak,
            endorsement: ek,
        })
    }
}
