//! Which label each key id's key has on the PKCS#11 token: its id, as keyd
//! labels the keys it makes, or, for a key a factory put there under a
//! label of its own, the one `[pkcs11] labels` gives (the reference's
//! `preloaded_keys.<id> = "pkcs11:...;object=<label>"`).
//!
//! A label given to one id cannot be reached under another: an id that is
//! some other id's label is refused, so one token object never answers to
//! two key ids.

use std::collections::BTreeMap;

use crate::error::Error;
use crate::key_id::KeyId;

/// `[pkcs11] labels`, checked.
#[derive(Debug, Default)]
pub struct Labels {
    by_id: BTreeMap<String, String>,
    by_label: BTreeMap<String, String>,
}

impl Labels {
    /// `labels` (key id → label), checked: valid ids, labels that are not
    /// empty, and no label given twice.
    pub fn new(labels: &BTreeMap<String, String>) -> Result<Self, String> {
        let mut by_label = BTreeMap::new();
        for (id, label) in labels {
            KeyId::new(id).map_err(|e| format!("pkcs11.labels: key id '{id}': {e}"))?;
            if label.is_empty() {
                return Err(format!("pkcs11.labels.{id} is empty"));
            }
            if let Some(other) = by_label.insert(label.clone(), id.clone()) {
                return Err(format!(
                    "pkcs11.labels gives label '{label}' to both '{other}' and '{id}'"
                ));
            }
        }
        Ok(Self {
            by_id: labels.clone(),
            by_label,
        })
    }

    /// The label of `id`'s key on the token.
    pub fn of(&self, id: &KeyId) -> Result<Vec<u8>, Error> {
        if let Some(label) = self.by_id.get(id.as_str()) {
            return Ok(label.as_bytes().to_vec());
        }
        if let Some(owner) = self.by_label.get(id.as_str()) {
            return Err(Error::BadRequest(format!(
                "key id '{id}' is the token label of key '{owner}' ([pkcs11] labels): use '{owner}'"
            )));
        }
        Ok(id.as_str().as_bytes().to_vec())
    }

    /// The key id of the token object labelled `label`, if it is one.
    pub fn id_of(&self, label: &str) -> Option<KeyId> {
        match self.by_label.get(label) {
            Some(id) => KeyId::new(id).ok(),
            None if self.by_id.contains_key(label) => None,
            None => KeyId::new(label).ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Result<Labels, String> {
        Labels::new(
            &pairs
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn an_id_finds_its_label_and_a_label_its_id_and_no_object_has_two_ids() {
        let l = labels(&[("device-id", "Factory Key 1")]).unwrap();
        let id = |s: &str| KeyId::new(s).unwrap();
        assert_eq!(l.of(&id("device-id")).unwrap(), b"Factory Key 1");
        assert_eq!(l.of(&id("edge-ca")).unwrap(), b"edge-ca");
        assert_eq!(l.id_of("Factory Key 1"), Some(id("device-id")));
        assert_eq!(l.id_of("edge-ca"), Some(id("edge-ca")));
        // An object labelled with a mapped id is not that id's key.
        assert_eq!(l.id_of("device-id"), None);
        let l = labels(&[("device-id", "edge-ca")]).unwrap();
        let e = l.of(&id("edge-ca")).unwrap_err().to_string();
        assert!(e.contains("use 'device-id'"), "{e}");
        let e = labels(&[("a", "x"), ("b", "x")]).err().unwrap();
        assert!(e.contains("both 'a' and 'b'"), "{e}");
        assert!(labels(&[("a", "")]).is_err());
        assert!(labels(&[("../a", "x")]).is_err());
    }
}
