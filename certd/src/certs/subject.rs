//! What an administrator's `[issuance."<id>"]` says of a certificate
//! beside who issues it: the distinguished name it is issued under (its
//! `subject` when there is one, else the requester's CN and the further
//! attributes it asked for, kept in the record so that every renewal names
//! the subject the same way), and how certd renews it.

use std::collections::BTreeMap;

use super::Certd;
use crate::api::RenewalPolicy;
use crate::issuer::{self, Subject};
use crate::store::{CertRecord, Origin};

impl Certd {
    /// How certd renews `record` now: as its `[issuance."<id>"] renewal`
    /// says, else by the policy it was issued with; `None`: not at all
    /// (imported, or issued for a requester that renews it itself).
    pub fn policy_of(&self, record: &CertRecord) -> Option<RenewalPolicy> {
        if !matches!(record.origin, Origin::Issued(_)) {
            return None;
        }
        let est_identity = self
            .config
            .est
            .as_ref()
            .filter(|est| est.identity_cert.as_deref() == Some(record.id.as_str()))
            .and_then(|est| est.identity_renewal);
        let configured = self.config.issuance.get(&record.id).and_then(|c| c.renewal);
        record
            .renewal
            .map(|issued| est_identity.or(configured).unwrap_or(issued))
    }

    /// Sets `subject`'s whole name for certificate `id` from its configured
    /// subject or `more` (attributes after the CN). Whether the CN is the
    /// administrator's (then the caller's `names` need not grant it).
    pub(super) fn name_subject(
        &self,
        id: &str,
        subject: &mut Subject,
        more: &BTreeMap<String, String>,
    ) -> Result<bool, String> {
        if let Some(configured) = self.config.issuance.get(id) {
            if let Some((name, cn)) = configured.configured_name()? {
                subject.cn = cn.unwrap_or_default();
                subject.name = Some(name);
                return Ok(true);
            }
        }
        if more.is_empty() {
            return Ok(false);
        }
        if let Some(cn) = more.keys().find(|k| *k == "CN" || *k == "commonName") {
            return Err(format!("'{cn}' is the common name: give it as subject_cn"));
        }
        let attributes = std::iter::once(("CN", subject.cn.as_str()))
            .chain(more.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let (name, _) = issuer::configured_name(attributes)?;
        subject.name = Some(name);
        Ok(false)
    }
}
