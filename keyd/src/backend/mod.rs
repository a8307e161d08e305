//! Key stores. Every store implements [`KeyBackend`]; the rest of keyd never
//! knows which one serves a key. Hardware stores do their blocking calls off
//! the async reactor (a worker thread or `spawn_blocking`), inside the trait.

mod aziot_aead;
pub(crate) mod encoding;
mod pace;
pub mod pkcs11;
mod pkcs11_labels;
pub mod preload;
mod seal;
pub mod software;
pub mod tpm;

use std::fmt;

use async_trait::async_trait;
use serde::Deserialize;

use aws_lc_rs::{digest, hmac};
use zeroize::Zeroizing;

use crate::api::{KeyPairSpec, SignAlgorithm, SymmetricKeyType};
use crate::error::Error;
use crate::handle::KeyRef;
use crate::key_id::KeyId;

/// Which store holds a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Encrypted files under a master key.
    Software,
    /// A PKCS#11 token (HSM).
    Pkcs11,
    /// A TPM 2.0.
    Tpm,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Software => "software",
            Self::Pkcs11 => "pkcs11",
            Self::Tpm => "tpm",
        })
    }
}

/// What kind of key an id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// An asymmetric key pair.
    Pair(KeyPairSpec),
    /// A symmetric key.
    Symmetric(SymmetricKeyType),
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pair(s) => s.fmt(f),
            Self::Symmetric(t) => t.fmt(f),
        }
    }
}

impl KeyKind {
    /// Parses the wire name of a spec or symmetric type.
    pub fn parse(name: &str) -> Option<Self> {
        let quoted = serde_json::Value::String(name.to_owned());
        serde_json::from_value::<KeyPairSpec>(quoted.clone())
            .map(Self::Pair)
            .or_else(|_| serde_json::from_value::<SymmetricKeyType>(quoted).map(Self::Symmetric))
            .ok()
    }
}

/// A stored key's description (never its material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The key id.
    pub id: KeyId,
    /// What kind of key.
    pub kind: KeyKind,
    /// Random, fixed at creation: handles name it, so a re-created key does not
    /// answer to handles of the one it replaced.
    pub generation: String,
}

impl KeyRecord {
    /// Fails unless `key` was issued for this very key (same generation).
    pub fn check(&self, key: &KeyRef) -> Result<(), Error> {
        if self.generation == key.generation {
            Ok(())
        } else {
            Err(Error::NotFound(format!(
                "key '{}' was deleted or replaced since this handle was issued",
                self.id
            )))
        }
    }
}

impl KeyRecord {
    /// What creating a key pair answers when the id is taken: the same key pair
    /// is loaded; anything else is a conflict.
    pub fn reuse_as_pair(&self, spec: KeyPairSpec) -> Result<KeyRecord, Error> {
        match self.kind {
            KeyKind::Pair(s) if s == spec => Ok(self.clone()),
            other => Err(Error::Conflict(format!(
                "key '{}' already exists as {other}, not {spec}",
                self.id
            ))),
        }
    }

    /// 404 unless this key is of the class the API path names (`pair`: key
    /// pair, else symmetric key), so no path reaches the other kind of key.
    pub fn check_class(&self, pair: bool) -> Result<(), Error> {
        if matches!(self.kind, KeyKind::Pair(_)) == pair {
            Ok(())
        } else {
            Err(Error::NotFound(format!(
                "no {} named '{}' (it is a {} key)",
                class_name(pair),
                self.id,
                self.kind
            )))
        }
    }
}

/// "key pair" or "symmetric key", for messages.
pub(crate) fn class_name(pair: bool) -> &'static str {
    if pair {
        "key pair"
    } else {
        "symmetric key"
    }
}

/// 404 for an id with no key of the class the API path names.
pub(crate) fn no_such_key(id: &KeyId, pair: bool) -> Error {
    Error::NotFound(format!("no {} named '{id}'", class_name(pair)))
}

/// 400 for bytes that are not a keyd ciphertext at all.
pub(crate) fn not_a_ciphertext() -> Error {
    Error::BadRequest("ciphertext is too short or was not produced by keyd's encrypt".into())
}

/// 400 for a ciphertext that fails authentication.
pub(crate) fn decryption_failed() -> Error {
    Error::BadRequest(
        "decryption failed: the ciphertext or aad was altered, or another key encrypted it".into(),
    )
}

/// A public key as DER SubjectPublicKeyInfo.
#[derive(Debug, Clone)]
pub struct PublicKey {
    /// The kind of key pair.
    pub spec: KeyPairSpec,
    /// SubjectPublicKeyInfo, DER.
    pub spki_der: Vec<u8>,
}

/// A key store. Implementations check a handle's generation against the key
/// they hold ([`KeyRecord::check`]) and apply its derivation inputs.
#[async_trait]
pub trait KeyBackend: Send + Sync + 'static {
    /// Creates a key pair, or loads the existing one with the same spec
    /// (a different spec is a conflict).
    async fn create_key_pair(&self, id: &KeyId, spec: KeyPairSpec) -> Result<KeyRecord, Error>;

    /// Creates a symmetric key, or imports the given bytes; an existing key with
    /// the same type (and, when importing, the same bytes) is returned as it is.
    async fn create_key(
        &self,
        id: &KeyId,
        key_type: SymmetricKeyType,
        import: Option<&[u8]>,
    ) -> Result<KeyRecord, Error>;

    /// The key with this id, if there is one.
    async fn find(&self, id: &KeyId) -> Result<Option<KeyRecord>, Error>;

    /// The public half of a key pair.
    async fn public_key(&self, key: &KeyRef) -> Result<PublicKey, Error>;

    /// Signs `data` (a digest, if `prehashed`) or computes its MAC.
    async fn sign(
        &self,
        key: &KeyRef,
        algorithm: SignAlgorithm,
        data: &[u8],
        prehashed: bool,
    ) -> Result<Vec<u8>, Error>;

    /// AES-256-GCM with a fresh random nonce; the output carries the nonce.
    async fn encrypt(&self, key: &KeyRef, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, Error>;

    /// The inverse of `encrypt`; altered ciphertext or aad is refused.
    async fn decrypt(&self, key: &KeyRef, ciphertext: &[u8], aad: &[u8]) -> Result<Vec<u8>, Error>;

    /// Opens a ciphertext the reference's libaziot-keys made with this key
    /// ([`aziot_aead`]): only the software store holds such keys' bytes
    /// (taken over from the reference's key files).
    async fn decrypt_reference(
        &self,
        key: &KeyRef,
        iv: &[u8],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let _ = (key, iv, aad, ciphertext);
        Err(decryption_failed())
    }

    /// Deletes the key. `pair` says which API path asked (key pair or symmetric
    /// key), so neither path deletes the other kind of key.
    async fn delete(&self, id: &KeyId, pair: bool) -> Result<(), Error>;

    /// Imports a key pair (PKCS#8), or returns the key pair of this id if it
    /// is the same key (a different key, or a symmetric key, is a conflict).
    async fn import_key_pair(&self, id: &KeyId, pkcs8: &[u8]) -> Result<KeyRecord, Error> {
        let _ = (id, pkcs8);
        Err(Error::BadRequest(
            "this key store does not import key pairs (the software store does): let keyd make the key here".into(),
        ))
    }

    /// Renames key pair `from` to `to`, replacing any key pair `to` names
    /// (the aziot API's move, how a renewal with a new key takes the old
    /// key's place).
    async fn move_key_pair(&self, from: &KeyId, to: &KeyId) -> Result<KeyRecord, Error> {
        let _ = (from, to);
        Err(Error::BadRequest(
            "this key store does not move keys yet (the software store does): create the key under its final id".into(),
        ))
    }

    /// `Ok` when the store is usable, else why not.
    async fn health(&self) -> Result<(), String>;

    /// Every key in the store.
    async fn list(&self) -> Result<Vec<KeyRecord>, Error>;
}

/// How a call into a hardware store failed: the device is gone (the store
/// reopens it and retries once), or the request itself was refused.
pub(crate) enum Failure {
    /// The device or library stopped answering; the text says how.
    Device(String),
    /// The device answered and refused, or keyd refused; answered as it is.
    Request(Error),
}

impl Failure {
    pub(crate) fn internal(what: &str) -> Self {
        Failure::Request(Error::Internal(what.to_owned()))
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Request(e)
    }
}

/// The error for a key of the wrong kind for an operation.
pub(crate) fn wrong_kind(id: &KeyId, kind: KeyKind, wanted: &str) -> Error {
    Error::BadRequest(format!(
        "key '{id}' is a {kind} key; this operation needs {wanted}"
    ))
}

/// Which algorithms each kind of key signs with.
pub(crate) fn check_algorithm(
    record: &KeyRecord,
    algorithm: SignAlgorithm,
    prehashed: bool,
) -> Result<(), Error> {
    use SignAlgorithm as A;
    let fits = match record.kind {
        KeyKind::Pair(KeyPairSpec::EcP256) => algorithm == A::EcdsaSha256,
        KeyKind::Pair(KeyPairSpec::EcP384) => algorithm == A::EcdsaSha384,
        KeyKind::Pair(KeyPairSpec::Ed25519) => algorithm == A::Ed25519,
        KeyKind::Pair(_) => matches!(algorithm, A::RsaPkcs1Sha256 | A::RsaPssSha256),
        KeyKind::Symmetric(SymmetricKeyType::HmacSha256) => algorithm == A::HmacSha256,
        KeyKind::Symmetric(SymmetricKeyType::Aes256Gcm) => false,
    };
    if !fits {
        return Err(Error::BadRequest(format!(
            "key '{}' is a {} key and cannot sign with {algorithm}",
            record.id, record.kind
        )));
    }
    if prehashed && matches!(algorithm, A::Ed25519 | A::HmacSha256) {
        return Err(Error::BadRequest(format!(
            "{algorithm} signs whole messages; 'prehashed' is not allowed"
        )));
    }
    Ok(())
}

pub(crate) fn bad_digest_len(alg: &'static digest::Algorithm) -> Error {
    Error::BadRequest(format!(
        "a prehashed digest for this algorithm must be {} bytes",
        alg.output_len()
    ))
}

/// A new key's generation: 16 random bytes, hex. A key made again under an
/// old id gets a new one, so handles to the old key stop working.
pub(crate) fn new_generation() -> Result<String, Error> {
    use aws_lc_rs::rand::{SecureRandom, SystemRandom};
    let mut generation = [0u8; 16];
    SystemRandom::new()
        .fill(&mut generation)
        .map_err(|_| Error::Internal("the random generator failed".into()))?;
    Ok(generation.iter().map(|b| format!("{b:02x}")).collect())
}

/// Applies derivation inputs: each step is HMAC-SHA256(previous key, info).
pub(crate) fn derive(base: &[u8], derivation: &[Vec<u8>]) -> Zeroizing<Vec<u8>> {
    derivation
        .iter()
        .fold(Zeroizing::new(base.to_vec()), |key, info| {
            let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), info);
            Zeroizing::new(tag.as_ref().to_vec())
        })
}

/// The file of key `id` in a store that keeps one file per key:
/// `<dir>/<base64url(id)>.<extension>` (base64url keeps the '/' in ids from
/// making subdirectories). [`ids_in`] reads the names back.
pub(crate) fn key_file(dir: &std::path::Path, id: &KeyId, extension: &str) -> std::path::PathBuf {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    dir.join(format!(
        "{}.{extension}",
        URL_SAFE_NO_PAD.encode(id.as_str())
    ))
}

/// Every key of a store that keeps one [`key_file`] per key, as its own
/// `find` reads them.
pub(crate) async fn list_key_files<B: KeyBackend + ?Sized>(
    store: &B,
    dir: &std::path::Path,
    extension: &str,
) -> Result<Vec<KeyRecord>, Error> {
    let mut records = Vec::new();
    for id in ids_in(dir, extension)? {
        if let Some(r) = store.find(&id).await? {
            records.push(r);
        }
    }
    Ok(records)
}

/// The ids of the [`key_file`]s in `dir`; files that are not keyd's are skipped.
fn ids_in(dir: &std::path::Path, extension: &str) -> Result<Vec<KeyId>, Error> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::Internal(format!(
                "cannot list {}: {e}",
                dir.display()
            )))
        }
    };
    let mut ids = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(stem) = name
            .to_str()
            .and_then(|n| n.strip_suffix(&format!(".{extension}")))
        else {
            continue;
        };
        let id = URL_SAFE_NO_PAD
            .decode(stem)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| KeyId::new(&s).ok());
        if let Some(id) = id {
            ids.push(id);
        }
    }
    ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_is_hmac_chain() {
        let d = derive(b"base", &[b"a".to_vec(), b"b".to_vec()]);
        let step1 = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, b"base"), b"a");
        let step2 = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, step1.as_ref()), b"b");
        assert_eq!(d.as_slice(), step2.as_ref());
        assert_eq!(derive(b"base", &[]).as_slice(), b"base");
    }
}
