//! Preloaded certificates (`[preloaded."<id>"]`): served from an
//! administrator's file, or made of other certificates' PEMs one after
//! another, as the reference's `preloaded_certs` are. Nothing is stored.

use edgeid_common::authz::Caller;

use super::Certd;
use crate::api::CertificateInfo;
use crate::chain::{leaf_not_after, Chain};
use crate::error::Error;

/// Lists within lists, at most this deep (a list naming itself is refused).
const MAX_DEPTH: usize = 8;
/// Largest preloaded file read.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

impl Certd {
    /// `id`'s certificate if it is preloaded; `None` if it is not.
    pub(crate) fn preloaded(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Option<Result<CertificateInfo, Error>> {
        self.config.preloaded.get(id)?;
        tracing::debug!(uid = caller.uid, id, "preloaded certificate read");
        Some(self.preloaded_pem(id, 0).and_then(|pem| {
            Ok(CertificateInfo {
                not_after: leaf_not_after(&pem)?,
                pem,
                renewal: None,
                key_id: None,
            })
        }))
    }

    /// `id`'s PEM as certd serves it: preloaded, else stored (the
    /// reference's lookup, for issuers and the local CA too).
    pub(crate) fn served_pem(&self, id: &str) -> Result<String, Error> {
        self.preloaded_pem(id, 0)
    }

    fn preloaded_pem(&self, id: &str, depth: usize) -> Result<String, Error> {
        if depth > MAX_DEPTH {
            return Err(Error::BadRequest(format!(
                "preloaded certificate '{id}': lists nest deeper than {MAX_DEPTH} (a list that names itself?)"
            )));
        }
        let Some(preloaded) = self.config.preloaded.get(id) else {
            return Ok(self.record(id)?.pem);
        };
        match (&preloaded.file, &preloaded.ids) {
            (Some(file), _) => {
                use std::io::Read;
                let mut text = String::new();
                std::fs::File::open(file)
                    .and_then(|f| f.take(MAX_FILE_BYTES).read_to_string(&mut text))
                    .map_err(|e| match e.kind() {
                        // As the reference: a file not there is a certificate not there.
                        std::io::ErrorKind::NotFound => Error::NotFound(format!(
                            "certificate '{id}' does not exist (its preloaded file is missing)"
                        )),
                        _ => Error::Internal(format!(
                            "preloaded certificate '{id}': cannot read {}: {e}",
                            file.display()
                        )),
                    })?;
                // Served only if it is certificates, whole.
                Chain::from_pem(&text).map_err(|e| {
                    Error::Internal(format!(
                        "preloaded certificate '{id}' ({}): {e}",
                        file.display()
                    ))
                })?;
                Ok(text)
            }
            (None, Some(ids)) => {
                // As the reference: members not there (an edge CA not issued
                // yet) are left out; none there is a certificate not there.
                let mut pem = String::new();
                for part in ids {
                    let text = match self.preloaded_pem(part, depth + 1) {
                        Err(Error::NotFound(_)) => continue,
                        other => other?,
                    };
                    pem.push_str(text.trim_end());
                    pem.push('\n');
                }
                if pem.is_empty() {
                    return Err(Error::NotFound(format!(
                        "certificate '{id}' does not exist (none of {} does yet)",
                        ids.join(", ")
                    )));
                }
                Ok(pem)
            }
            (None, None) => Err(Error::Internal(format!(
                "preloaded certificate '{id}' has neither file nor ids"
            ))),
        }
    }
}
