//! Key stores. Every store implements [`KeyBackend`]; the rest of keyd never
//! knows which one serves a key. Hardware stores do their blocking calls off
//! the async reactor (a worker thread or `spawn_blocking`), inside the trait.

pub mod software;

use std::fmt;

use async_trait::async_trait;
use serde::Deserialize;

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
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Software => "software",
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
    /// Which store this is.
    fn kind(&self) -> BackendKind;

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

    /// Deletes the key; `kind_wanted` guards against deleting a pair via the
    /// symmetric-key path and vice versa.
    async fn delete(&self, id: &KeyId, pair: bool) -> Result<(), Error>;

    /// `Ok` when the store is usable, else why not.
    async fn health(&self) -> Result<(), String>;
}

/// The error for a key of the wrong kind for an operation.
pub(crate) fn wrong_kind(id: &KeyId, kind: KeyKind, wanted: &str) -> Error {
    Error::BadRequest(format!(
        "key '{id}' is a {kind} key; this operation needs {wanted}"
    ))
}
