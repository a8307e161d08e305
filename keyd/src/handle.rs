//! Key handles: what keyd gives callers instead of keys.
//!
//! `ek1.<payload>.<tag>`: the payload (base64url JSON) names the key id, the key's
//! generation (so a handle dies with its key, even if a new key takes the id)
//! and any derivation inputs; the tag is HMAC-SHA256 under a per-install secret,
//! so a handle cannot be forged or altered. A handle never contains key material.
//!
//! Two kinds of holder: a handle edgeid's `/v1` API issues names a key, and
//! every use of it is checked against its caller's grants; a handle the aziot
//! API issues is a *bearer* handle, as the reference's are: whoever holds it
//! may use its key (the payload says which, so neither kind passes for the other).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::api::KeyHandle;
use crate::error::Error;
use crate::key_id::KeyId;

const PREFIX: &str = "ek1.";
/// A derivation input is at most this long.
pub const MAX_INFO_LEN: usize = 1024;

/// Who may use a handle being issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// A caller whose grants name the key (edgeid's `/v1` API).
    Grants,
    /// Whoever holds the handle (the aziot API, as the reference).
    Bearer,
}

/// What a handle refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRef {
    /// The key id.
    pub id: KeyId,
    /// The key's generation when the handle was issued.
    pub generation: String,
    /// Derivation inputs applied in order to the key (empty for the key itself).
    pub derivation: Vec<Vec<u8>>,
    /// Issued by the aziot API: the handle is the capability, and its use
    /// needs no grant (the reference's model). Derived handles inherit it.
    pub bearer: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    id: String,
    gen: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    derive: Vec<String>,
    /// Absent in `/v1` handles, so those keep the form they always had.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    bearer: bool,
}

/// Handles remembered once verified, at most (then the memory is emptied
/// and fills again with the handles in use).
const REMEMBERED: usize = 4096;
/// Longer handles (long derivation inputs) are verified every time.
const REMEMBERED_LEN: usize = 512;

/// Issues and checks handles with this install's secret.
pub struct HandleAuthority {
    key: hmac::Key,
    /// Handles already verified, by their text, and what they refer to. A
    /// handle's meaning cannot change while this process runs (its secret is
    /// fixed), so checking one again would only repeat the tag, the base64
    /// and the JSON of each request; whether its key still exists, and is of
    /// that generation, is the store's check on every use, as before. Only a
    /// handle whose tag verified is remembered: a forged text is never in
    /// here, and is verified (and refused) every time.
    verified: RwLock<HashMap<Box<str>, Arc<KeyRef>>>,
}

impl HandleAuthority {
    /// Loads the handle secret from `path`, creating it (0600) on first start.
    pub fn load_or_create(path: &Path) -> Result<Self, Error> {
        let secret = edgeid_common::fs::load_or_create_secret(path, 32, |bytes| {
            SystemRandom::new()
                .fill(bytes)
                .map_err(|_| std::io::Error::other("the system random generator failed"))
        })
        .map_err(|e| {
            Error::Setup(format!(
                "handle secret {}: {e} (if it is damaged, delete it: every issued handle becomes invalid)",
                path.display()
            ))
        })?;
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            verified: RwLock::new(HashMap::new()),
        })
    }

    /// A handle for `key`.
    pub fn issue(&self, key: &KeyRef) -> KeyHandle {
        let payload = Payload {
            id: key.id.as_str().to_owned(),
            gen: key.generation.clone(),
            derive: key
                .derivation
                .iter()
                .map(|d| URL_SAFE_NO_PAD.encode(d))
                .collect(),
            bearer: key.bearer,
        };
        // Serializing a struct of strings cannot fail.
        let json = serde_json::to_vec(&payload).unwrap_or_default();
        let body = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json));
        let tag = hmac::sign(&self.key, body.as_bytes());
        KeyHandle(format!("{body}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref())))
    }

    /// What a handle refers to, if this keyd issued it unaltered.
    pub fn open(&self, handle: &KeyHandle) -> Result<Arc<KeyRef>, Error> {
        let text = handle.0.as_str();
        // A poisoned lock only means a panic elsewhere: the map is still whole.
        let remembered = self
            .verified
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(text)
            .cloned();
        if let Some(key) = remembered {
            return Ok(key);
        }
        let key = Arc::new(self.verify(text)?);
        if text.len() <= REMEMBERED_LEN {
            let mut verified = self.verified.write().unwrap_or_else(|p| p.into_inner());
            if verified.len() >= REMEMBERED {
                verified.clear();
            }
            verified.insert(text.into(), key.clone());
        }
        Ok(key)
    }

    /// Checks a handle's tag and reads its payload.
    fn verify(&self, text: &str) -> Result<KeyRef, Error> {
        if !text.starts_with(PREFIX) {
            return Err(Error::MalformedHandle("it does not start with 'ek1.'"));
        }
        let (body, tag) = text
            .rsplit_once('.')
            .ok_or(Error::MalformedHandle("it has no tag"))?;
        if body.len() <= PREFIX.len() || body[PREFIX.len()..].contains('.') {
            return Err(Error::MalformedHandle(
                "it is not of the form ek1.<payload>.<tag>",
            ));
        }
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| Error::MalformedHandle("its tag is not base64url"))?;
        if tag.len() != hmac::HMAC_SHA256.digest_algorithm().output_len() {
            return Err(Error::MalformedHandle("its tag has the wrong length"));
        }
        hmac::verify(&self.key, body.as_bytes(), &tag).map_err(|_| Error::ForeignHandle)?;
        // Only a verified payload is parsed.
        let json = URL_SAFE_NO_PAD
            .decode(&body[PREFIX.len()..])
            .map_err(|_| Error::MalformedHandle("its payload is not base64url"))?;
        let payload: Payload = serde_json::from_slice(&json)
            .map_err(|_| Error::MalformedHandle("its payload is not valid"))?;
        let derivation = payload
            .derive
            .iter()
            .map(|d| URL_SAFE_NO_PAD.decode(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| Error::MalformedHandle("its derivation is not base64url"))?;
        Ok(KeyRef {
            id: KeyId::new(&payload.id)?,
            generation: payload.gen,
            derivation,
            bearer: payload.bearer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority() -> (tempfile::TempDir, HandleAuthority) {
        let dir = tempfile::tempdir().unwrap();
        let a = HandleAuthority::load_or_create(&dir.path().join("handle.key")).unwrap();
        (dir, a)
    }

    fn key() -> KeyRef {
        KeyRef {
            id: KeyId::new("module/a").unwrap(),
            generation: "00ff".into(),
            derivation: vec![b"x".to_vec()],
            bearer: false,
        }
    }

    #[test]
    fn round_trip() {
        let (_d, a) = authority();
        assert_eq!(*a.open(&a.issue(&key())).unwrap(), key());
    }

    #[test]
    fn remembered_handles_mean_what_they_said_and_forgeries_are_still_refused() {
        let (_d, a) = authority();
        let h = a.issue(&key());
        assert_eq!(*a.open(&h).unwrap(), key());
        assert_eq!(*a.open(&h).unwrap(), key(), "from memory");
        // The same text with its tag's last character changed: not remembered.
        let mut forged = h.0.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        assert!(matches!(
            a.open(&KeyHandle(forged)),
            Err(Error::ForeignHandle) | Err(Error::MalformedHandle(_))
        ));
        // Bounded: many handles in use do not grow the memory past its size.
        for i in 0..(REMEMBERED + 10) {
            let k = KeyRef {
                generation: format!("{i:08x}"),
                ..key()
            };
            assert_eq!(*a.open(&a.issue(&k)).unwrap(), k);
        }
        assert!(a.verified.read().unwrap().len() <= REMEMBERED);
        assert_eq!(*a.open(&h).unwrap(), key(), "verified again after emptying");
    }

    #[test]
    fn altered_or_foreign_handles_refused() {
        let (_d, a) = authority();
        let (_d2, b) = authority();
        let h = a.issue(&key());
        assert!(matches!(b.open(&h), Err(Error::ForeignHandle)));
        // Flip one character of the payload.
        let mut chars: Vec<char> = h.0.chars().collect();
        chars[6] = if chars[6] == 'A' { 'B' } else { 'A' };
        let altered = KeyHandle(chars.into_iter().collect());
        assert!(matches!(a.open(&altered), Err(Error::ForeignHandle)));
        for junk in ["", "ek1.", "ek1.x", "nope", "ek1.a.b.c", "ek1.!!.??"] {
            assert!(a.open(&KeyHandle(junk.into())).is_err(), "{junk}");
        }
    }

    #[test]
    fn a_principal_handle_does_not_pass_for_a_bearer_one() {
        let (_d, a) = authority();
        let bearer = KeyRef {
            bearer: true,
            ..key()
        };
        assert!(a.open(&a.issue(&bearer)).unwrap().bearer);
        assert!(!a.open(&a.issue(&key())).unwrap().bearer);
        // The flag is inside the tagged payload: setting it in a principal
        // handle breaks the tag.
        let principal = a.issue(&key()).0;
        let (body, tag) = principal.rsplit_once('.').unwrap();
        let json = URL_SAFE_NO_PAD.decode(&body[PREFIX.len()..]).unwrap();
        let mut value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        value["bearer"] = serde_json::Value::Bool(true);
        let forged = format!(
            "{PREFIX}{}.{tag}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&value).unwrap())
        );
        assert!(matches!(
            a.open(&KeyHandle(forged)),
            Err(Error::ForeignHandle)
        ));
    }

    #[test]
    fn secret_survives_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handle.key");
        let h = HandleAuthority::load_or_create(&path)
            .unwrap()
            .issue(&key());
        assert_eq!(
            *HandleAuthority::load_or_create(&path)
                .unwrap()
                .open(&h)
                .unwrap(),
            key()
        );
    }
}
