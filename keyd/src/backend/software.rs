//! The software key store: each key a file in the state directory, its material
//! sealed with AES-256-GCM under a master key kept in a separate file. A copied
//! state directory without the master key reveals nothing, and a key file moved
//! to another id (or edited) fails authentication.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use aws_lc_rs::aead::LessSafeKey;
use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest;
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::seal::{aes_key, load_or_create_master, open, seal, OpenError};
use super::{
    bad_digest_len, check_algorithm, decryption_failed, derive, new_generation, no_such_key,
    not_a_ciphertext, wrong_kind, KeyBackend, KeyKind, KeyRecord, PublicKey,
};
use crate::api::{KeyPairSpec, SignAlgorithm, SymmetricKeyType};
use crate::error::Error;
use crate::handle::KeyRef;
use crate::key_id::KeyId;

mod material;

use material::{generate_pkcs8, material_from, pkcs8_pair, public_of, Material};

/// Format of key files; bump when the layout changes.
const FILE_FORMAT: u32 = 1;
/// The largest symmetric key accepted for import.
const MAX_IMPORT_LEN: usize = 512;

/// The software store.
pub struct SoftwareBackend {
    keys_dir: PathBuf,
    master: LessSafeKey,
    rng: SystemRandom,
    /// Keys already unsealed. Readers clone an `Arc` and let go at once, so the
    /// sign path holds no lock while it signs.
    cache: RwLock<HashMap<KeyId, Arc<LoadedKey>>>,
    /// Serializes creation and deletion (never signing).
    writes: tokio::sync::Mutex<()>,
}

/// An unsealed key, ready to use. The aws-lc key objects clear their memory
/// when freed; raw symmetric bytes are in `Zeroizing`.
struct LoadedKey {
    record: KeyRecord,
    material: Material,
}

/// A key file on disk. Everything but `sealed` is public; all of it is bound
/// to the sealed material through the AEAD's associated data.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    format: u32,
    id: String,
    kind: String,
    generation: String,
    /// Version byte, nonce, then the sealed key material and tag (base64).
    sealed: String,
}

impl KeyFile {
    fn aad(&self) -> Vec<u8> {
        format!(
            "edgeid-keyd/{}\0{}\0{}\0{}",
            self.format, self.id, self.kind, self.generation
        )
        .into_bytes()
    }
}

impl SoftwareBackend {
    /// Opens the store in `state_dir/keys`, loading the master key from
    /// `master_key_file` or creating it (0600, in a 0700 directory) on first start.
    pub fn open(state_dir: &Path, master_key_file: &Path) -> Result<Self, Error> {
        let master = load_or_create_master(master_key_file, &SystemRandom::new())?;
        Self::with_master(state_dir, &master, &master_key_file.display().to_string())
    }

    /// Opens the store in `state_dir/keys` under `master` (from `source`,
    /// for messages): the TPM's sealed key, or a file's.
    pub fn with_master(state_dir: &Path, master: &[u8], source: &str) -> Result<Self, Error> {
        let keys_dir = state_dir.join("keys");
        edgeid_common::fs::ensure_private_dir(&keys_dir).map_err(|e| {
            Error::Setup(format!(
                "cannot create key directory {}: {e}",
                keys_dir.display()
            ))
        })?;
        let master = aes_key(master)
            .map_err(|_| Error::Setup(format!("master key {source} is unusable")))?;
        Ok(Self {
            keys_dir,
            master,
            rng: SystemRandom::new(),
            cache: RwLock::new(HashMap::new()),
            writes: tokio::sync::Mutex::new(()),
        })
    }

    fn path_of(&self, id: &KeyId) -> PathBuf {
        super::key_file(&self.keys_dir, id, "key")
    }

    fn cached(&self, id: &KeyId) -> Option<Arc<LoadedKey>> {
        self.cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    fn remember(&self, key: LoadedKey) -> Arc<LoadedKey> {
        let key = Arc::new(key);
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.record.id.clone(), key.clone());
        key
    }

    /// The unsealed key, from the cache or from its file.
    async fn load(&self, id: &KeyId) -> Result<Option<Arc<LoadedKey>>, Error> {
        if let Some(k) = self.cached(id) {
            return Ok(Some(k));
        }
        let path = self.path_of(id);
        let Some(bytes) = read_key_file(&path).await? else {
            return Ok(None);
        };
        let key = self.unseal_file(id, &path, &bytes)?;
        Ok(Some(self.remember(key)))
    }

    /// Removes key `id`'s file (durably) and forgets it.
    fn remove(&self, id: &KeyId) -> Result<(), Error> {
        let path = self.path_of(id);
        std::fs::remove_file(&path)
            .and_then(|()| std::fs::File::open(&self.keys_dir)?.sync_all())
            .map_err(|e| {
                Error::Internal(format!("cannot delete key file {}: {e}", path.display()))
            })?;
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        Ok(())
    }

    /// The key a handle names, with its generation checked.
    async fn resolve(&self, key: &KeyRef) -> Result<Arc<LoadedKey>, Error> {
        let loaded = self
            .load(&key.id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("key '{}' does not exist", key.id)))?;
        loaded.record.check(key)?;
        Ok(loaded)
    }

    fn unseal_file(&self, id: &KeyId, path: &Path, bytes: &[u8]) -> Result<LoadedKey, Error> {
        let (record, secret) = self.unseal_secret(id, path, bytes)?;
        let material = material_from(record.kind, &secret).map_err(|_| {
            Error::Internal(format!(
                "key file {} for '{id}' holds key material keyd cannot parse",
                path.display()
            ))
        })?;
        Ok(LoadedKey { record, material })
    }

    /// A key file's record and its unsealed secret.
    fn unseal_secret(
        &self,
        id: &KeyId,
        path: &Path,
        bytes: &[u8],
    ) -> Result<(KeyRecord, Zeroizing<Vec<u8>>), Error> {
        let damaged =
            |why: &str| Error::Internal(format!("key file {} for '{id}' {why}", path.display()));
        let file: KeyFile =
            serde_json::from_slice(bytes).map_err(|e| damaged(&format!("is not valid: {e}")))?;
        if file.format != FILE_FORMAT {
            return Err(damaged(&format!(
                "has format {}, this keyd reads {FILE_FORMAT}",
                file.format
            )));
        }
        if file.id != id.as_str() {
            return Err(damaged(&format!("belongs to key '{}'", file.id)));
        }
        let kind = KeyKind::parse(&file.kind)
            .ok_or_else(|| damaged(&format!("has unknown kind '{}'", file.kind)))?;
        let sealed = STANDARD
            .decode(&file.sealed)
            .map_err(|_| damaged("has a damaged sealed part"))?;
        let secret = open(&self.master, &sealed, &file.aad()).map_err(|_| {
            damaged("cannot be unsealed: the master key is not the one it was sealed with, or the file was altered")
        })?;
        Ok((
            KeyRecord {
                id: id.clone(),
                kind,
                generation: file.generation,
            },
            secret,
        ))
    }

    /// Seals `secret`, writes the key file atomically, caches the key.
    fn store(&self, id: &KeyId, kind: KeyKind, secret: &[u8]) -> Result<Arc<LoadedKey>, Error> {
        let mut file = KeyFile {
            format: FILE_FORMAT,
            id: id.as_str().to_owned(),
            kind: kind.to_string(),
            generation: new_generation()?,
            sealed: String::new(),
        };
        let sealed = seal(&self.master, &self.rng, secret, &file.aad())?;
        file.sealed = STANDARD.encode(sealed);
        let json = serde_json::to_vec_pretty(&file).map_err(|e| Error::Internal(e.to_string()))?;
        let path = self.path_of(id);
        edgeid_common::fs::write_atomic(&path, &json, 0o600)
            .map_err(|e| Error::writing(id.as_str(), &path, &e))?;
        let material = material_from(kind, secret)
            .map_err(|_| Error::Internal("new key does not load".into()))?;
        Ok(self.remember(LoadedKey {
            record: KeyRecord {
                id: id.clone(),
                kind,
                generation: file.generation,
            },
            material,
        }))
    }
}

#[async_trait]
impl KeyBackend for SoftwareBackend {
    async fn create_key_pair(&self, id: &KeyId, spec: KeyPairSpec) -> Result<KeyRecord, Error> {
        let _writing = self.writes.lock().await;
        if let Some(existing) = self.load(id).await? {
            return existing.record.reuse_as_pair(spec);
        }
        // RSA generation takes up to seconds: keep it off the reactor.
        let pkcs8 = tokio::task::spawn_blocking(move || generate_pkcs8(spec))
            .await
            .map_err(|e| Error::Internal(format!("key generation task failed: {e}")))??;
        let loaded = self.store(id, KeyKind::Pair(spec), &pkcs8)?;
        tracing::info!(key = %id, %spec, "created key pair");
        Ok(loaded.record.clone())
    }

    async fn create_key(
        &self,
        id: &KeyId,
        key_type: SymmetricKeyType,
        import: Option<&[u8]>,
    ) -> Result<KeyRecord, Error> {
        if let Some(bytes) = import {
            check_import(key_type, bytes)?;
        }
        let _writing = self.writes.lock().await;
        if let Some(existing) = self.load(id).await? {
            let same_type = existing.record.kind == KeyKind::Symmetric(key_type);
            let same_bytes = match (&existing.material, import) {
                (_, None) => true,
                (Material::Symmetric(held, _), Some(given)) => {
                    verify_slices_are_equal(held, given).is_ok()
                }
                _ => false,
            };
            return if same_type && same_bytes {
                Ok(existing.record.clone())
            } else {
                Err(Error::Conflict(format!(
                    "key '{id}' already exists as {} with other key material; delete it first to replace it",
                    existing.record.kind
                )))
            };
        }
        let secret = match import {
            Some(bytes) => Zeroizing::new(bytes.to_vec()),
            None => {
                let mut fresh = Zeroizing::new(vec![0u8; 32]);
                self.rng
                    .fill(&mut fresh)
                    .map_err(|_| Error::Internal("the random generator failed".into()))?;
                fresh
            }
        };
        let loaded = self.store(id, KeyKind::Symmetric(key_type), &secret)?;
        tracing::info!(key = %id, %key_type, imported = import.is_some(), "created key");
        Ok(loaded.record.clone())
    }

    async fn find(&self, id: &KeyId) -> Result<Option<KeyRecord>, Error> {
        Ok(self.load(id).await?.map(|k| k.record.clone()))
    }

    async fn import_key_pair(&self, id: &KeyId, pkcs8: &[u8]) -> Result<KeyRecord, Error> {
        let (spec, public) = pkcs8_pair(pkcs8).ok_or_else(|| {
            Error::BadRequest(
                "not a key pair keyd holds (PKCS#8 P-256, P-384, RSA 2048/3072/4096 or Ed25519)"
                    .into(),
            )
        })?;
        let _writing = self.writes.lock().await;
        if let Some(existing) = self.load(id).await? {
            return if public_of(&existing.material).as_deref() == Some(public.as_slice()) {
                Ok(existing.record.clone())
            } else {
                Err(Error::Conflict(format!(
                    "key '{id}' already exists as {} with other key material",
                    existing.record.kind
                )))
            };
        }
        let loaded = self.store(id, KeyKind::Pair(spec), pkcs8)?;
        tracing::info!(key = %id, %spec, "imported key pair");
        Ok(loaded.record.clone())
    }

    async fn public_key(&self, key: &KeyRef) -> Result<PublicKey, Error> {
        let loaded = self.resolve(key).await?;
        let KeyKind::Pair(spec) = loaded.record.kind else {
            return Err(wrong_kind(&key.id, loaded.record.kind, "a key pair"));
        };
        let spki_der = public_of(&loaded.material).ok_or_else(|| {
            Error::Internal(format!("cannot encode the public key of '{}'", key.id))
        })?;
        Ok(PublicKey { spec, spki_der })
    }

    async fn sign(
        &self,
        key: &KeyRef,
        algorithm: SignAlgorithm,
        data: &[u8],
        prehashed: bool,
    ) -> Result<Vec<u8>, Error> {
        let loaded = self.resolve(key).await?;
        check_algorithm(&loaded.record, algorithm, prehashed)?;
        let failed = || Error::Internal(format!("signing with '{}' failed", key.id));
        match &loaded.material {
            Material::Ecdsa(k) => {
                let sig = if prehashed {
                    let alg = if algorithm == SignAlgorithm::EcdsaSha256 {
                        &digest::SHA256
                    } else {
                        &digest::SHA384
                    };
                    let d = digest::Digest::import_less_safe(data, alg)
                        .map_err(|_| bad_digest_len(alg))?;
                    k.sign_digest(&d)
                } else {
                    k.sign(&self.rng, data)
                };
                sig.map(|s| s.as_ref().to_vec()).map_err(|_| failed())
            }
            Material::Rsa(_) => {
                // An RSA-4096 signature takes milliseconds: off the reactor.
                let data = data.to_vec();
                let loaded = loaded.clone();
                tokio::task::spawn_blocking(move || rsa_sign(&loaded, algorithm, &data, prehashed))
                    .await
                    .map_err(|e| Error::Internal(format!("signing task failed: {e}")))?
            }
            Material::Ed25519(k) => Ok(k.sign(data).as_ref().to_vec()),
            Material::Symmetric(base, mac) => {
                let tag = match mac {
                    Some(mac) if key.derivation.is_empty() => hmac::sign(mac, data),
                    _ => {
                        let derived = derive(base, &key.derivation);
                        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &derived), data)
                    }
                };
                Ok(tag.as_ref().to_vec())
            }
        }
    }

    async fn encrypt(&self, key: &KeyRef, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, Error> {
        let derived = self.aes_material(key).await?;
        let aes =
            aes_key(&derived).map_err(|_| Error::Internal("cannot use the AES key".into()))?;
        seal(&aes, &self.rng, plaintext, aad)
    }

    async fn decrypt(&self, key: &KeyRef, ciphertext: &[u8], aad: &[u8]) -> Result<Vec<u8>, Error> {
        let derived = self.aes_material(key).await?;
        let aes =
            aes_key(&derived).map_err(|_| Error::Internal("cannot use the AES key".into()))?;
        open(&aes, ciphertext, aad)
            .map(|p| p.to_vec())
            .map_err(|e| match e {
                OpenError::Format => not_a_ciphertext(),
                OpenError::Auth => decryption_failed(),
            })
    }

    async fn decrypt_reference(
        &self,
        key: &KeyRef,
        iv: &[u8],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let derived = self.aes_material(key).await?;
        super::aziot_aead::open(&derived, iv, aad, ciphertext).ok_or_else(decryption_failed)
    }

    async fn delete(&self, id: &KeyId, pair: bool) -> Result<(), Error> {
        let _writing = self.writes.lock().await;
        let existing = self.load(id).await?.ok_or_else(|| no_such_key(id, pair))?;
        existing.record.check_class(pair)?;
        self.remove(id)?;
        tracing::info!(key = %id, "deleted key");
        Ok(())
    }

    /// Sealed again under `to` (with a new generation, so no handle of
    /// either key names the result), then `from` removed. A crash between
    /// the two leaves both: the move can be asked for again.
    async fn move_key_pair(&self, from: &KeyId, to: &KeyId) -> Result<KeyRecord, Error> {
        let _writing = self.writes.lock().await;
        let path = self.path_of(from);
        let bytes = read_key_file(&path)
            .await?
            .ok_or_else(|| no_such_key(from, true))?;
        let (record, secret) = self.unseal_secret(from, &path, &bytes)?;
        record.check_class(true)?;
        let moved = self.store(to, record.kind, &secret)?;
        self.remove(from)?;
        tracing::info!(from = %from, to = %to, "moved key pair");
        Ok(moved.record.clone())
    }

    async fn list(&self) -> Result<Vec<KeyRecord>, Error> {
        super::list_key_files(self, &self.keys_dir, "key").await
    }

    async fn health(&self) -> Result<(), String> {
        match std::fs::metadata(&self.keys_dir) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(format!("{} is not a directory", self.keys_dir.display())),
            Err(e) => Err(format!("{}: {e}", self.keys_dir.display())),
        }
    }
}

impl SoftwareBackend {
    /// The AES key a handle names, derivation applied.
    async fn aes_material(&self, key: &KeyRef) -> Result<Zeroizing<Vec<u8>>, Error> {
        let loaded = self.resolve(key).await?;
        match (&loaded.material, loaded.record.kind) {
            (Material::Symmetric(base, _), KeyKind::Symmetric(SymmetricKeyType::Aes256Gcm)) => {
                Ok(derive(base, &key.derivation))
            }
            (_, kind) => Err(wrong_kind(&key.id, kind, "an aes-256-gcm key")),
        }
    }
}

/// A key file's bytes, or `None` if there is none.
async fn read_key_file(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, Error> {
    match tokio::fs::read(path).await {
        Ok(b) => Ok(Some(Zeroizing::new(b))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Internal(format!(
            "cannot read key file {}: {e}",
            path.display()
        ))),
    }
}

fn rsa_sign(
    key: &LoadedKey,
    algorithm: SignAlgorithm,
    data: &[u8],
    prehashed: bool,
) -> Result<Vec<u8>, Error> {
    let Material::Rsa(k) = &key.material else {
        return Err(Error::Internal("not an RSA key".into()));
    };
    let padding: &'static dyn signature::RsaEncoding = match algorithm {
        SignAlgorithm::RsaPssSha256 => &signature::RSA_PSS_SHA256,
        _ => &signature::RSA_PKCS1_SHA256,
    };
    let mut sig = vec![0u8; k.public_modulus_len()];
    let rng = SystemRandom::new();
    let result = if prehashed {
        let d = digest::Digest::import_less_safe(data, &digest::SHA256)
            .map_err(|_| bad_digest_len(&digest::SHA256))?;
        k.sign_digest(padding, &d, &mut sig)
    } else {
        k.sign(padding, &rng, data, &mut sig)
    };
    result.map_err(|_| Error::Internal(format!("RSA signing with '{}' failed", key.record.id)))?;
    Ok(sig)
}

fn check_import(key_type: SymmetricKeyType, bytes: &[u8]) -> Result<(), Error> {
    match key_type {
        SymmetricKeyType::Aes256Gcm if bytes.len() != 32 => Err(Error::BadRequest(format!(
            "an aes-256-gcm key is 32 bytes; {} were given",
            bytes.len()
        ))),
        SymmetricKeyType::HmacSha256 if bytes.is_empty() || bytes.len() > MAX_IMPORT_LEN => {
            Err(Error::BadRequest(format!(
                "an imported hmac-sha256 key must be 1 to {MAX_IMPORT_LEN} bytes; {} were given",
                bytes.len()
            )))
        }
        _ => Ok(()),
    }
}
