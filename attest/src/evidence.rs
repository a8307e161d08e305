//! A quote's evidence as files in one directory — the names and formats
//! tpm2-tools uses, so that `tpm2_checkquote -u ak.pem -m quote.msg -s
//! quote.sig -f quote.pcrs -g sha256 -q NONCE` checks it with nothing of
//! edgeid's:
//! - `ak.pem`: the attestation key (SubjectPublicKeyInfo);
//! - `quote.msg`: TPMS_ATTEST; `quote.sig`: TPMT_SIGNATURE;
//! - `quote.pcrs`: the quoted PCR values ([`crate::pcr_file`]);
//! - `eventlog`: the firmware's TCG event log, where the device has one;
//! - `eventlog.ima`: IMA's binary measurement list, where it has one.

use std::path::Path;

use crate::{pcr_file, PcrList, PcrValues};

/// The attestation key's file.
pub const AK_PEM: &str = "ak.pem";
/// TPMS_ATTEST.
pub const QUOTE_MSG: &str = "quote.msg";
/// TPMT_SIGNATURE.
pub const QUOTE_SIG: &str = "quote.sig";
/// The PCR values.
pub const QUOTE_PCRS: &str = "quote.pcrs";
/// The firmware event log.
pub const FIRMWARE_LOG: &str = "eventlog";
/// IMA's measurement list.
pub const IMA_LOG: &str = "eventlog.ima";

/// What a verifier is given.
#[derive(Debug, Clone)]
pub struct Evidence {
    /// The AK, PEM (SubjectPublicKeyInfo).
    pub ak_pem: String,
    /// TPMS_ATTEST, marshalled.
    pub attest: Vec<u8>,
    /// TPMT_SIGNATURE, marshalled.
    pub signature: Vec<u8>,
    /// The quoted PCR values, banks in the quote's order.
    pub pcrs: PcrList,
    /// The firmware's event log.
    pub firmware_log: Option<Vec<u8>>,
    /// IMA's measurement list.
    pub ima_log: Option<Vec<u8>>,
}

impl Evidence {
    /// Writes the files into `dir` (created 0700 if missing); files 0644:
    /// nothing here is secret.
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let values: PcrValues = self
            .pcrs
            .iter()
            .map(|(bank, values)| (*bank, values.iter().cloned().collect()))
            .collect();
        let mut files: Vec<(&str, Vec<u8>)> = vec![
            (AK_PEM, self.ak_pem.as_bytes().to_vec()),
            (QUOTE_MSG, self.attest.clone()),
            (QUOTE_SIG, self.signature.clone()),
            (QUOTE_PCRS, pcr_file::write(&values)?),
        ];
        for (name, log) in [(FIRMWARE_LOG, &self.firmware_log), (IMA_LOG, &self.ima_log)] {
            match log {
                Some(bytes) => files.push((name, bytes.clone())),
                // A log from an earlier quote in this directory would be read as this one's.
                None => match std::fs::remove_file(dir.join(name)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(format!("cannot remove {}: {e}", dir.join(name).display()))
                    }
                },
            }
        }
        for (name, bytes) in files {
            let path = dir.join(name);
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, &bytes)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// Reads the files from `dir`; the logs are optional.
    pub fn read(dir: &Path) -> Result<Self, String> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let optional = |name: &str| match std::fs::read(dir.join(name)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", dir.join(name).display())),
        };
        let ak_pem = String::from_utf8(read(AK_PEM)?)
            .map_err(|_| format!("{} is not PEM text", dir.join(AK_PEM).display()))?;
        Ok(Self {
            ak_pem,
            attest: read(QUOTE_MSG)?,
            signature: read(QUOTE_SIG)?,
            pcrs: pcr_file::read(&read(QUOTE_PCRS)?)
                .map_err(|e| format!("{}: {e}", dir.join(QUOTE_PCRS).display()))?,
            firmware_log: optional(FIRMWARE_LOG)?,
            ima_log: optional(IMA_LOG)?,
        })
    }
}
