//! `[[imported_cert]]`: certificates another certificate service left (an
//! aziot-identity-service's `/var/lib/aziot/certd/certs`), taken over once
//! at start: stored as imported where certd holds nothing at that id and
//! the file is there. What certd holds is never replaced, so a file that
//! changes or goes later changes nothing. One that cannot be taken (not a
//! chain that holds together) is said and skipped: it is issued anew where
//! asked for.

use super::Certd;
use crate::chain::Chain;
use crate::store::{CertRecord, Origin};

/// Largest file read (a chain of a few certificates is a few KB).
const MAX_FILE_BYTES: u64 = 1024 * 1024;

impl Certd {
    pub(super) fn take_over_imported(&self) {
        for imported in &self.config.imported_certs {
            let id = imported.id.as_str();
            let file = imported.file.display();
            match self.take_over(id, &imported.file) {
                Ok(true) => {
                    tracing::info!(cert = id, file = %file, "imported a certificate another service left")
                }
                Ok(false) => {}
                Err(why) => {
                    tracing::warn!(cert = id, file = %file, error = %why, "not imported; it is issued anew where asked for")
                }
            }
        }
    }

    fn take_over(&self, id: &str, file: &std::path::Path) -> Result<bool, String> {
        if self.store.get(id).map_err(|e| e.to_string())?.is_some() || !file.exists() {
            return Ok(false);
        }
        let mut bytes = Vec::new();
        edgeid_common::fs::read_capped(file, MAX_FILE_BYTES, &mut bytes)
            .map_err(|e| e.to_string())?;
        let pem = String::from_utf8(bytes)
            .map_err(|_| "cannot read it: stream did not contain valid UTF-8".to_owned())?;
        let chain = Chain::from_pem(&pem).map_err(|e| e.to_string())?;
        chain.check().map_err(|e| e.to_string())?;
        let mut record = CertRecord::new(id, Origin::Imported, chain.to_pem());
        record.subject_cn = chain.leaf().subject();
        self.store.put(&record).map_err(|e| e.to_string())?;
        Ok(true)
    }
}
