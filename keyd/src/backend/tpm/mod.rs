//! The TPM 2.0 store: keys created under a storage primary key persisted in the
//! owner hierarchy, non-duplicable (fixedTPM, fixedParent); their TPM-wrapped
//! blobs kept in keyd's state dir; loaded on demand into a small bounded cache.
//!
//! The TPM is a single, slow, shared device: one connection behind one lock
//! runs every command, off the async reactor.
//! When a command fails, a one-byte `GetRandom` tells "the TPM refused" from "the
//! TPM is gone"; when gone, the connection is dropped and reopened once, else the
//! caller gets 503 and the next request tries again.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use aws_lc_rs::digest;
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK, TPM2_TRANSIENT_FIRST};
use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Auth, CapabilityData, Digest, EccScheme, HashScheme, HashcheckTicket, KeyedHashScheme,
    MaxBuffer, Private, Public, PublicBuilder, PublicKeyRsa, PublicKeyedHashParameters,
    PublicRsaParametersBuilder, RsaExponent, RsaScheme, SensitiveData, Signature, SignatureScheme,
    SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::Context;
use zeroize::Zeroizing;

use super::encoding::{ec_spki, ecdsa_der, rsa_spki};
use super::{
    bad_digest_len, check_algorithm, derive, new_generation, no_such_key, wrong_kind, Failure,
    KeyBackend, KeyKind, KeyRecord, PublicKey,
};
use crate::api::{KeyPairSpec, SignAlgorithm, SymmetricKeyType};
use crate::error::Error;
use crate::handle::KeyRef;
use crate::key_id::KeyId;

mod attest;
mod event_logs;
mod pcrs;
mod provisioning;
mod seal_policy;
mod sealed;

pub use attest::{
    ak_template, parse_credential, AkSignature, AttestationKey, Certification, ClockInfo, Quote,
    NONCE_LEN,
};
pub use event_logs::{EventLog, EventLogs};
pub use pcrs::{BankValues, PcrSelection};
pub use provisioning::AttestationKeys;
pub use sealed::Resealed;

/// `[tpm]` in keyd's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmConfig {
    /// How to reach the TPM: `device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`, `tabrmd`.
    pub tcti: String,
    /// Persistent handle of the storage primary key (created there on first use).
    #[serde(default = "default_primary_handle")]
    pub primary_handle: u32,
    /// A file holding the owner hierarchy's auth value, if it has one.
    #[serde(default)]
    pub owner_auth_file: Option<PathBuf>,
    /// Keys kept loaded at once (a TPM without a resource manager holds ~3 objects).
    #[serde(default = "default_loaded")]
    pub loaded_keys: usize,
    /// The secret each key's TPM authValue is derived from (32 bytes, made
    /// 0600 on first start). Outside the state directory, like the software
    /// store's master key: with a copy of the key blobs and access to the
    /// TPM, a key still neither loads into use nor signs without it.
    #[serde(default = "default_auth_key_file")]
    pub auth_key_file: PathBuf,
    /// Where the kernel shows the event logs a quote carries.
    #[serde(default)]
    pub event_logs: EventLogs,
}

/// Where the TPM keys' auth secret lives unless configured otherwise.
pub const DEFAULT_AUTH_KEY_FILE: &str = "/var/secrets/edgeid/keyd/tpm-auth.key";

fn default_auth_key_file() -> PathBuf {
    PathBuf::from(DEFAULT_AUTH_KEY_FILE)
}

/// The authValue of a key made by this keyd: its blob file says which.
const AUTH_NONE: u32 = 0;
/// HMAC-SHA256(auth secret, label, id, generation).
const AUTH_DERIVED: u32 = 1;

fn default_primary_handle() -> u32 {
    0x8100_0001
}

fn default_loaded() -> usize {
    2
}

/// Format of key blob files; bump when the layout changes.
const FILE_FORMAT: u32 = 1;
/// The largest HMAC key the TPM can import (TPM2B_SENSITIVE_DATA).
const MAX_TPM_HMAC_IMPORT: usize = 128;
/// TPM2_HMAC takes at most this much data in one command.
const MAX_HMAC_DATA: usize = 1024;

/// A key's TPM-wrapped blobs, as stored in the state dir. The private part is
/// encrypted by the TPM under the storage key: useless anywhere else.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BlobFile {
    format: u32,
    id: String,
    kind: String,
    generation: String,
    /// TPM2B_PUBLIC, marshalled, base64.
    public: String,
    /// TPM2B_PRIVATE contents, base64.
    private: String,
    /// How its authValue is made: [`AUTH_DERIVED`]; absent in files written
    /// before keys had one ([`AUTH_NONE`], changed on first use).
    #[serde(default)]
    auth: u32,
}

/// What the TPM made for a key, before its blob file is written.
struct Made {
    generation: String,
    public: Public,
    private: Private,
    auth: Auth,
}

/// A key known from its blob file.
struct StoredKey {
    record: KeyRecord,
    public: Public,
    private: Private,
    /// Its authValue (set on the loaded object for every use).
    auth: Auth,
}

/// The TPM store.
pub struct TpmBackend {
    dir: PathBuf,
    /// The one TPM connection. Every command holds this lock: the TPM is a
    /// single, serial device.
    worker: Arc<Mutex<Worker>>,
    /// Requests queue here, as tasks, for their turn at the TPM; only the one
    /// whose turn it is holds a thread (blocked on the device).
    turn: tokio::sync::Semaphore,
    /// Blob files already read; metadata and public keys need no TPM command.
    keys: RwLock<HashMap<KeyId, Arc<StoredKey>>>,
    /// Serializes creation and deletion.
    writes: tokio::sync::Mutex<()>,
    /// What every key's authValue is derived from.
    auth_secret: hmac::Key,
    /// The attestation key, once read or made.
    ak: RwLock<Option<Arc<StoredKey>>>,
    /// The event logs' paths.
    event_logs: EventLogs,
}

impl TpmBackend {
    /// Starts the worker thread and tries the TPM once. A TPM that cannot be
    /// reached now does not stop keyd: its keys answer 503 until it can.
    pub fn open(state_dir: &Path, config: &TpmConfig) -> Result<Self, Error> {
        let dir = state_dir.join("tpm");
        edgeid_common::fs::ensure_dir(&dir, 0o700)
            .map_err(|e| Error::Setup(format!("cannot create {}: {e}", dir.display())))?;
        let owner_auth = match &config.owner_auth_file {
            Some(path) => {
                edgeid_common::fs::check_private(path).map_err(|e| Error::Setup(e.to_string()))?;
                let bytes = std::fs::read(path).map_err(|e| {
                    Error::Setup(format!(
                        "cannot read TPM owner auth {}: {e}",
                        path.display()
                    ))
                })?;
                Some(Zeroizing::new(bytes))
            }
            None => None,
        };
        let secret = edgeid_common::fs::load_or_create_secret(&config.auth_key_file, 32, |bytes| {
            SystemRandom::new()
                .fill(bytes)
                .map_err(|_| std::io::Error::other("the system random generator failed"))
        })
        .map_err(|e| {
            Error::Setup(format!(
                "TPM key auth secret {}: {e} (without it no key in the TPM can be used; keep it where tpm.auth_key_file says)",
                config.auth_key_file.display()
            ))
        })?;
        let auth_secret = hmac::Key::new(hmac::HMAC_SHA256, &secret);
        TctiNameConf::from_str(&config.tcti).map_err(|e| {
            Error::Setup(format!(
                "tpm.tcti '{}' is not a TCTI string: {e}",
                config.tcti
            ))
        })?;
        let worker = Worker {
            config: config.clone(),
            owner_auth,
            tpm: None,
        };
        Ok(Self {
            dir,
            worker: Arc::new(Mutex::new(worker)),
            turn: tokio::sync::Semaphore::new(1),
            keys: RwLock::new(HashMap::new()),
            writes: tokio::sync::Mutex::new(()),
            auth_secret,
            ak: RwLock::new(None),
            event_logs: config.event_logs.clone(),
        })
    }

    /// The authValue of key `id` of `generation`.
    fn auth_of(&self, id: &KeyId, generation: &str) -> Result<Auth, Error> {
        let mut ctx = hmac::Context::with_key(&self.auth_secret);
        ctx.update(b"edgeid tpm key auth v1\0");
        ctx.update(id.as_str().as_bytes());
        ctx.update(b"\0");
        ctx.update(generation.as_bytes());
        Auth::try_from(ctx.sign().as_ref().to_vec())
            .map_err(|e| Error::Internal(format!("cannot make a TPM auth value: {e}")))
    }

    /// Runs `op` with the connected TPM, off the reactor: on the multi-threaded
    /// runtime in place (`block_in_place` moves this worker's other tasks
    /// elsewhere), which spares the two thread hand-offs of a separate TPM
    /// thread; measured, those cost as much as a TPM2_HMAC.
    async fn run<T, F>(&self, op: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: Fn(&mut Tpm) -> Result<T, Failure> + Send + 'static,
    {
        let _turn = self
            .turn
            .acquire()
            .await
            .map_err(|_| Error::Internal("TPM queue closed".into()))?;
        let worker = self.worker.clone();
        let call = move || worker.lock().unwrap_or_else(|p| p.into_inner()).call(&op);
        if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread
        {
            tokio::task::block_in_place(call)
        } else {
            tokio::task::spawn_blocking(call)
                .await
                .map_err(|e| Error::Internal(format!("TPM task failed: {e}")))?
        }
    }

    fn path_of(&self, id: &KeyId) -> PathBuf {
        super::key_file(&self.dir, id, "blob")
    }

    /// The stored key, from the cache or its blob file.
    async fn stored(&self, id: &KeyId) -> Result<Option<Arc<StoredKey>>, Error> {
        if let Some(k) = self.keys.read().unwrap_or_else(|p| p.into_inner()).get(id) {
            return Ok(Some(k.clone()));
        }
        let Some(key) = self.read_blob(id, &self.path_of(id)).await? else {
            return Ok(None);
        };
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), key.clone());
        Ok(Some(key))
    }

    /// Key `id` from the blob file at `path`, if there is one.
    async fn read_blob(&self, id: &KeyId, path: &Path) -> Result<Option<Arc<StoredKey>>, Error> {
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::Internal(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        let damaged = |why: String| {
            Error::Internal(format!("TPM key file {} for '{id}' {why}", path.display()))
        };
        let file: BlobFile =
            serde_json::from_slice(&bytes).map_err(|e| damaged(format!("is not valid: {e}")))?;
        if file.format != FILE_FORMAT || file.id != id.as_str() {
            return Err(damaged(
                "has another format or belongs to another key".into(),
            ));
        }
        let kind = KeyKind::parse(&file.kind)
            .ok_or_else(|| damaged(format!("has unknown kind '{}'", file.kind)))?;
        let public =
            public_of(&file.public).ok_or_else(|| damaged("has a damaged public part".into()))?;
        let private = private_of(&file.private)
            .ok_or_else(|| damaged("has a damaged private part".into()))?;
        let record = KeyRecord {
            id: id.clone(),
            kind,
            generation: file.generation,
        };
        let auth = self.auth_of(id, &record.generation)?;
        let key = match file.auth {
            AUTH_DERIVED => Arc::new(StoredKey {
                record,
                public,
                private,
                auth,
            }),
            AUTH_NONE => self.migrate(record, public, private, auth, path).await?,
            other => return Err(damaged(format!("has an unknown auth scheme {other}"))),
        };
        Ok(Some(key))
    }

    async fn resolve(&self, key: &KeyRef) -> Result<Arc<StoredKey>, Error> {
        let stored = self
            .stored(&key.id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("key '{}' does not exist", key.id)))?;
        stored.record.check(key)?;
        Ok(stored)
    }

    /// A key written before keys had an authValue (empty): the TPM changes
    /// it to the derived one (TPM2_ObjectChangeAuth gives a new private
    /// part) and the file is rewritten with it, generation kept, so its
    /// handles stay good. A copy of the old blob keeps the empty authValue:
    /// the TPM cannot revoke it (SECURITY.md).
    async fn migrate(
        &self,
        record: KeyRecord,
        public: Public,
        private: Private,
        auth: Auth,
        path: &Path,
    ) -> Result<Arc<StoredKey>, Error> {
        let id = record.id.clone();
        let (p, a) = (public.clone(), auth.clone());
        let private = self
            .run(move |tpm| tpm.change_auth(&p, &private, &a, &id))
            .await?;
        self.write_blob(&record, &public, &private, path)?;
        tracing::info!(key = %record.id, "gave a TPM key made without an authValue its own");
        Ok(Arc::new(StoredKey {
            record,
            public,
            private,
            auth,
        }))
    }

    /// Creates a key under the storage key and writes its blobs atomically.
    async fn create(
        &self,
        id: &KeyId,
        kind: KeyKind,
        template: Public,
        import: Option<&[u8]>,
    ) -> Result<KeyRecord, Error> {
        let made = self.make(id, kind, template, import).await?;
        let record = self.save(id, kind, made)?;
        tracing::info!(key = %id, kind = %kind, "created key in the TPM");
        Ok(record)
    }

    /// Has the TPM make key `id` of a new generation (with its derived
    /// authValue) under the storage key; nothing is written yet.
    async fn make(
        &self,
        id: &KeyId,
        kind: KeyKind,
        template: Public,
        import: Option<&[u8]>,
    ) -> Result<Made, Error> {
        let sensitive = match import {
            Some(bytes) => Some(SensitiveData::try_from(bytes.to_vec()).map_err(|_| {
                Error::BadRequest("the TPM cannot import a key of that size".into())
            })?),
            None => None,
        };
        let what = kind.to_string();
        let generation = new_generation()?;
        let auth = self.auth_of(id, &generation)?;
        let key_auth = auth.clone();
        let (public, private) = self
            .run(move |tpm| {
                let primary = tpm.primary;
                let created = tpm
                    .with_room(|ctx| {
                        ctx.create(
                            primary,
                            template.clone(),
                            Some(key_auth.clone()),
                            sensitive.clone(),
                            None,
                            None,
                        )
                    })
                    .map_err(|e| {
                        tpm.classify(e, &format!("the TPM refused to create a {what} key"))
                    })?;
                Ok((created.out_public, created.out_private))
            })
            .await?;
        Ok(Made {
            generation,
            public,
            private,
            auth,
        })
    }

    /// Writes a key's blobs atomically under `generation` and caches them.
    fn save(&self, id: &KeyId, kind: KeyKind, made: Made) -> Result<KeyRecord, Error> {
        let stored = Arc::new(self.write_made(id, kind, made, &self.path_of(id))?);
        let record = stored.record.clone();
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), stored);
        Ok(record)
    }

    /// Writes what the TPM made as key `id`'s blob file at `path`.
    fn write_made(
        &self,
        id: &KeyId,
        kind: KeyKind,
        made: Made,
        path: &Path,
    ) -> Result<StoredKey, Error> {
        let record = KeyRecord {
            id: id.clone(),
            kind,
            generation: made.generation,
        };
        self.write_blob(&record, &made.public, &made.private, path)?;
        Ok(StoredKey {
            record,
            public: made.public,
            private: made.private,
            auth: made.auth,
        })
    }

    /// The blob file of a key whose authValue is derived, written atomically.
    fn write_blob(
        &self,
        record: &KeyRecord,
        public: &Public,
        private: &Private,
        path: &Path,
    ) -> Result<(), Error> {
        let id = &record.id;
        let file = BlobFile {
            format: FILE_FORMAT,
            id: id.as_str().to_owned(),
            kind: record.kind.to_string(),
            generation: record.generation.clone(),
            public: public_text(public)?,
            private: private_text(private),
            auth: AUTH_DERIVED,
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| Error::Internal(e.to_string()))?;
        edgeid_common::fs::write_atomic(path, &json, 0o600)
            .map_err(|e| Error::writing(id.as_str(), path, &e))
    }
}

#[async_trait]
impl KeyBackend for TpmBackend {
    async fn create_key_pair(&self, id: &KeyId, spec: KeyPairSpec) -> Result<KeyRecord, Error> {
        let _writing = self.writes.lock().await;
        if let Some(existing) = self.stored(id).await? {
            return existing.record.reuse_as_pair(spec);
        }
        let template = signing_template(spec)?;
        self.create(id, KeyKind::Pair(spec), template, None).await
    }

    async fn create_key(
        &self,
        id: &KeyId,
        key_type: SymmetricKeyType,
        import: Option<&[u8]>,
    ) -> Result<KeyRecord, Error> {
        if key_type == SymmetricKeyType::Aes256Gcm {
            return Err(Error::BadRequest(
                "a TPM has no AES-GCM; keep aes-256-gcm keys in the software store ([[backend.override]])".into(),
            ));
        }
        if let Some(bytes) = import {
            if bytes.is_empty() || bytes.len() > MAX_TPM_HMAC_IMPORT {
                return Err(Error::BadRequest(format!(
                    "the TPM imports hmac-sha256 keys of 1 to {MAX_TPM_HMAC_IMPORT} bytes; {} were given",
                    bytes.len()
                )));
            }
        }
        let _writing = self.writes.lock().await;
        if let Some(existing) = self.stored(id).await? {
            // The TPM will not show the key bytes, so an import cannot be compared.
            return if existing.record.kind == KeyKind::Symmetric(key_type) && import.is_none() {
                Ok(existing.record.clone())
            } else {
                Err(Error::Conflict(format!(
                    "key '{id}' already exists as {}; delete it first to replace it",
                    existing.record.kind
                )))
            };
        }
        let template = hmac_template(import.is_none())?;
        self.create(id, KeyKind::Symmetric(key_type), template, import)
            .await
    }

    async fn find(&self, id: &KeyId) -> Result<Option<KeyRecord>, Error> {
        Ok(self.stored(id).await?.map(|k| k.record.clone()))
    }

    async fn public_key(&self, key: &KeyRef) -> Result<PublicKey, Error> {
        let stored = self.resolve(key).await?;
        let KeyKind::Pair(spec) = stored.record.kind else {
            return Err(wrong_kind(&key.id, stored.record.kind, "a key pair"));
        };
        let spki_der = spki_of(&stored.public)?;
        Ok(PublicKey { spec, spki_der })
    }

    async fn sign(
        &self,
        key: &KeyRef,
        algorithm: SignAlgorithm,
        data: &[u8],
        prehashed: bool,
    ) -> Result<Vec<u8>, Error> {
        let stored = self.resolve(key).await?;
        check_algorithm(&stored.record, algorithm, prehashed)?;
        if algorithm == SignAlgorithm::HmacSha256 {
            return self.hmac(stored, &key.derivation, data).await;
        }
        let hash = match algorithm {
            SignAlgorithm::EcdsaSha384 => &digest::SHA384,
            _ => &digest::SHA256,
        };
        let digest = if prehashed {
            if data.len() != hash.output_len() {
                return Err(bad_digest_len(hash));
            }
            data.to_vec()
        } else {
            digest::digest(hash, data).as_ref().to_vec()
        };
        let scheme = match algorithm {
            SignAlgorithm::EcdsaSha256 => SignatureScheme::EcDsa {
                hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
            },
            SignAlgorithm::EcdsaSha384 => SignatureScheme::EcDsa {
                hash_scheme: HashScheme::new(HashingAlgorithm::Sha384),
            },
            SignAlgorithm::RsaPssSha256 => SignatureScheme::RsaPss {
                hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
            },
            _ => SignatureScheme::RsaSsa {
                hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
            },
        };
        let kind = stored.record.kind;
        let signature = self
            .run(move |tpm| {
                let handle = tpm.load(&stored)?;
                let digest = Digest::try_from(digest.clone())
                    .map_err(|_| Failure::internal("digest too long"))?;
                tpm.ctx
                    .sign(handle, digest, scheme, null_ticket()?)
                    .map_err(|e| tpm.classify(e, "the TPM refused to sign"))
            })
            .await?;
        match signature {
            Signature::EcDsa(sig) => {
                let size = if kind == KeyKind::Pair(KeyPairSpec::EcP256) {
                    32
                } else {
                    48
                };
                let mut raw = left_pad(sig.signature_r().value(), size)?;
                raw.extend(left_pad(sig.signature_s().value(), size)?);
                ecdsa_der(kind, &raw)
            }
            Signature::RsaSsa(sig) | Signature::RsaPss(sig) => Ok(sig.signature().value().to_vec()),
            _ => Err(Error::Internal(
                "the TPM returned an unexpected signature type".into(),
            )),
        }
    }

    async fn encrypt(&self, key: &KeyRef, _: &[u8], _: &[u8]) -> Result<Vec<u8>, Error> {
        let stored = self.resolve(key).await?;
        Err(wrong_kind(
            &key.id,
            stored.record.kind,
            "an aes-256-gcm key (never in the TPM)",
        ))
    }

    async fn decrypt(&self, key: &KeyRef, _: &[u8], _: &[u8]) -> Result<Vec<u8>, Error> {
        let stored = self.resolve(key).await?;
        Err(wrong_kind(
            &key.id,
            stored.record.kind,
            "an aes-256-gcm key (never in the TPM)",
        ))
    }

    async fn delete(&self, id: &KeyId, pair: bool) -> Result<(), Error> {
        let _writing = self.writes.lock().await;
        let stored = self
            .stored(id)
            .await?
            .ok_or_else(|| no_such_key(id, pair))?;
        stored.record.check_class(pair)?;
        // Unload it if loaded; a TPM that is down now loses nothing by this.
        let gone = id.clone();
        let _ = self
            .run(move |tpm| {
                tpm.unload(&gone);
                Ok(())
            })
            .await;
        let path = self.path_of(id);
        std::fs::remove_file(&path)
            .and_then(|()| std::fs::File::open(&self.dir)?.sync_all())
            .map_err(|e| Error::Internal(format!("cannot delete {}: {e}", path.display())))?;
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        tracing::info!(key = %id, "deleted TPM key");
        Ok(())
    }

    async fn list(&self) -> Result<Vec<KeyRecord>, Error> {
        super::list_key_files(self, &self.dir, "blob").await
    }

    async fn health(&self) -> Result<(), String> {
        self.run(|tpm| {
            if tpm.alive() {
                Ok(())
            } else {
                Err(Failure::Device("the TPM does not answer".into()))
            }
        })
        .await
        .map_err(|e| e.to_string())
    }
}

impl TpmBackend {
    /// HMAC-SHA256 in the TPM. With derivation inputs, the first step runs in
    /// the TPM and the rest in keyd's memory (zeroized after use).
    async fn hmac(
        &self,
        stored: Arc<StoredKey>,
        derivation: &[Vec<u8>],
        data: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let input = match derivation.first() {
            Some(info) => info.clone(),
            None => data.to_vec(),
        };
        if input.len() > MAX_HMAC_DATA {
            return Err(Error::BadRequest(format!(
                "the TPM MACs at most {MAX_HMAC_DATA} bytes at a time"
            )));
        }
        let mac = self
            .run(move |tpm| {
                let handle = tpm.load(&stored)?;
                let buffer = MaxBuffer::try_from(input.clone())
                    .map_err(|_| Failure::internal("data too long"))?;
                let mac = tpm
                    .ctx
                    .hmac(handle.into(), buffer, HashingAlgorithm::Sha256)
                    .map_err(|e| tpm.classify(e, "the TPM refused to compute an HMAC"))?;
                Ok(Zeroizing::new(mac.value().to_vec()))
            })
            .await?;
        let Some((_, rest)) = derivation.split_first() else {
            return Ok(mac.to_vec());
        };
        let derived = derive(&mac, rest);
        Ok(
            hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &derived), data)
                .as_ref()
                .to_vec(),
        )
    }
}

/// The TPM connection, when there is one.
struct Worker {
    config: TpmConfig,
    owner_auth: Option<Zeroizing<Vec<u8>>>,
    tpm: Option<Tpm>,
}

impl Worker {
    /// Runs `op`; if the TPM turns out to be gone, reconnects and retries once.
    fn call<T>(&mut self, op: &dyn Fn(&mut Tpm) -> Result<T, Failure>) -> Result<T, Error> {
        let mut last = String::new();
        for _attempt in 0..2 {
            if self.tpm.is_none() {
                match Tpm::connect(
                    &self.config,
                    self.owner_auth.as_deref().map(|v| v.as_slice()),
                ) {
                    Ok(tpm) => self.tpm = Some(tpm),
                    Err(why) => {
                        last = why;
                        continue;
                    }
                }
            }
            let Some(tpm) = self.tpm.as_mut() else {
                continue;
            };
            match op(tpm) {
                Ok(v) => return Ok(v),
                Err(Failure::Request(e)) => return Err(e),
                Err(Failure::Device(why)) => {
                    tracing::warn!(error = %why, "TPM connection lost; reconnecting");
                    self.tpm = None;
                    last = why;
                }
            }
        }
        Err(Error::Unavailable {
            backend: "tpm",
            reason: last,
        })
    }
}

/// A connected TPM with the storage key ready.
struct Tpm {
    ctx: Context,
    primary: KeyHandle,
    /// Loaded keys, least recently used first.
    loaded: VecDeque<(KeyId, String, KeyHandle)>,
    max_loaded: usize,
}

impl Tpm {
    fn connect(config: &TpmConfig, owner_auth: Option<&[u8]>) -> Result<Self, String> {
        let tcti = TctiNameConf::from_str(&config.tcti)
            .map_err(|e| format!("tpm.tcti '{}': {e}", config.tcti))?;
        let mut ctx = Context::new(tcti)
            .map_err(|e| format!("cannot reach the TPM at '{}': {e}", config.tcti))?;
        if let Some(auth) = owner_auth {
            let auth = Auth::try_from(auth.to_vec())
                .map_err(|e| format!("TPM owner auth is unusable: {e}"))?;
            ctx.tr_set_auth(Hierarchy::Owner.into(), auth)
                .map_err(|e| format!("cannot set TPM owner auth: {e}"))?;
        }
        let persistent = PersistentTpmHandle::new(config.primary_handle).map_err(|e| {
            format!(
                "tpm.primary_handle {:#x} is not a persistent handle: {e}",
                config.primary_handle
            )
        })?;
        // TR_FromTPMPublic takes no authorization: with a password session set,
        // libtss2-esys 3.2 crashes on its error path (no key at the handle yet).
        let existing = ctx.execute_without_session(|ctx| {
            ctx.tr_from_tpm_public(TpmHandle::Persistent(persistent))
        });
        ctx.set_sessions((Some(AuthSession::Password), None, None));
        flush_leftover_objects(&mut ctx);
        let primary = match existing {
            Ok(handle) => KeyHandle::from(handle),
            Err(_) => create_storage_key(&mut ctx, persistent)?,
        };
        tracing::info!(tcti = %config.tcti, primary = format!("{:#x}", config.primary_handle), "TPM connected");
        Ok(Self {
            ctx,
            primary,
            loaded: VecDeque::new(),
            max_loaded: config.loaded_keys.max(1),
        })
    }

    /// A failed command: the TPM refused it (request error) or is gone (device).
    fn classify(&mut self, e: tss_esapi::Error, refused: &str) -> Failure {
        if matches!(e, tss_esapi::Error::Tss2Error(rc) if rc.kind() == Some(Tss2ResponseCodeKind::ObjectMemory))
        {
            // keyd has already unloaded all of its own keys (with_room).
            return Failure::Request(Error::Unavailable {
                backend: "tpm",
                reason:
                    "the TPM has no free object slots: another program keeps objects loaded in it"
                        .into(),
            });
        }
        if self.alive() {
            Failure::Request(Error::BadRequest(format!("{refused}: {e}")))
        } else {
            Failure::Device(e.to_string())
        }
    }

    /// Whether the TPM answers: a one-byte GetRandom, which takes no
    /// authorization session (with one set, the TPM refuses it).
    fn alive(&mut self) -> bool {
        self.ctx
            .execute_without_session(|ctx| ctx.get_random(1))
            .is_ok()
    }

    /// The key's TPM handle, loading it (and unloading the least recently used
    /// key when the cache is full).
    fn load(&mut self, key: &StoredKey) -> Result<KeyHandle, Failure> {
        let id = &key.record.id;
        if let Some(pos) = self
            .loaded
            .iter()
            .position(|(i, g, _)| i == id && *g == key.record.generation)
        {
            let entry = self
                .loaded
                .remove(pos)
                .ok_or_else(|| Failure::internal("cache index"))?;
            let handle = entry.2;
            self.loaded.push_back(entry);
            return Ok(handle);
        }
        self.unload(id);
        while self.loaded.len() >= self.max_loaded {
            if let Some((_, _, old)) = self.loaded.pop_front() {
                let _ = self.ctx.flush_context(old.into());
            }
        }
        let primary = self.primary;
        let handle = self
            .with_room(|ctx| ctx.load(primary, key.private.clone(), key.public.clone()))
            .map_err(|e| {
                self.classify(
                    e,
                    &format!("the TPM cannot load key '{id}' (was it made by another TPM?)"),
                )
            })?;
        // The password session authorizes each use with the key's authValue.
        if let Err(e) = self.ctx.tr_set_auth(handle.into(), key.auth.clone()) {
            let _ = self.ctx.flush_context(handle.into());
            return Err(Failure::internal(&format!(
                "cannot set key '{id}''s auth: {e}"
            )));
        }
        self.loaded
            .push_back((id.clone(), key.record.generation.clone(), handle));
        Ok(handle)
    }

    /// Runs a command that needs a free object slot; if the TPM is out of
    /// object memory (a TPM without a resource manager holds ~3 objects),
    /// unloads every cached key and tries once more.
    fn with_room<T>(
        &mut self,
        command: impl Fn(&mut Context) -> Result<T, tss_esapi::Error>,
    ) -> Result<T, tss_esapi::Error> {
        match command(&mut self.ctx) {
            Err(tss_esapi::Error::Tss2Error(rc))
                if rc.kind() == Some(Tss2ResponseCodeKind::ObjectMemory) =>
            {
                while let Some((_, _, handle)) = self.loaded.pop_front() {
                    let _ = self.ctx.flush_context(handle.into());
                }
                command(&mut self.ctx)
            }
            other => other,
        }
    }

    /// TPM2_ObjectChangeAuth: `private` (made with an empty authValue, or
    /// the one a provisioning service chose) re-wrapped with `auth`.
    fn change_auth(
        &mut self,
        public: &Public,
        private: &Private,
        auth: &Auth,
        id: &KeyId,
    ) -> Result<Private, Failure> {
        self.unload(id);
        let primary = self.primary;
        let handle = self
            .with_room(|ctx| ctx.load(primary, private.clone(), public.clone()))
            .map_err(|e| self.classify(e, &format!("the TPM cannot load key '{id}'")))?;
        let changed = self
            .ctx
            .object_change_auth(handle.into(), primary.into(), auth.clone());
        let _ = self.ctx.flush_context(handle.into());
        changed.map_err(|e| self.classify(e, &format!("the TPM cannot change key '{id}''s auth")))
    }

    fn unload(&mut self, id: &KeyId) {
        if let Some(pos) = self.loaded.iter().position(|(i, _, _)| i == id) {
            if let Some((_, _, handle)) = self.loaded.remove(pos) {
                let _ = self.ctx.flush_context(handle.into());
            }
        }
    }
}

impl Drop for Tpm {
    /// Unloads this connection's keys: without a resource manager (swtpm,
    /// /dev/tpm0) they would outlive the connection and fill the TPM.
    fn drop(&mut self) {
        while let Some((_, _, handle)) = self.loaded.pop_front() {
            let _ = self.ctx.flush_context(handle.into());
        }
    }
}

/// Unloads transient objects a previous keyd left loaded (it was killed, or
/// the TPM has no resource manager to clean up after it). With a resource
/// manager this connection sees none of anyone else's, so this touches nothing
/// but keyd's own leftovers.
fn flush_leftover_objects(ctx: &mut Context) {
    let listed = ctx.execute_without_session(|c| {
        c.get_capability(CapabilityType::Handles, TPM2_TRANSIENT_FIRST, 64)
    });
    let Ok((CapabilityData::Handles(handles), _)) = listed else {
        return;
    };
    let mut flushed = 0;
    for handle in handles.into_inner() {
        if let Ok(object) = ctx.execute_without_session(|c| c.tr_from_tpm_public(handle)) {
            if ctx.flush_context(object).is_ok() {
                flushed += 1;
            }
        }
    }
    if flushed > 0 {
        tracing::info!(
            flushed,
            "unloaded transient objects left in the TPM by an earlier connection"
        );
    }
}

/// Creates the storage primary key and persists it at `persistent`. The
/// template is the TCG's RSA-2048 SRK (AES-128-CFB, restricted decrypt), the one
/// Azure's device SDK and tpm2-tools make: a provisioning service that wraps a
/// key to "the SRK" (DPS TPM attestation) expects exactly this key, and a
/// device that ran that SDK before already has it at 0x81000001.
fn create_storage_key(
    ctx: &mut Context,
    persistent: PersistentTpmHandle,
) -> Result<KeyHandle, String> {
    let template = storage_key_template().map_err(|e| e.to_string())?;
    let created = ctx
        .create_primary(Hierarchy::Owner, template, None, None, None, None)
        .map_err(|e| format!("cannot create the TPM storage key (is owner auth needed? tpm.owner_auth_file): {e}"))?;
    let stored = ctx.evict_control(
        Provision::Owner,
        created.key_handle.into(),
        Persistent::Persistent(persistent),
    );
    let _ = ctx.flush_context(created.key_handle.into());
    let handle: ObjectHandle =
        stored.map_err(|e| format!("cannot persist the TPM storage key: {e}"))?;
    tracing::info!(
        handle = format!("{:#x}", u32::from(persistent)),
        "created and persisted the TPM storage key"
    );
    Ok(KeyHandle::from(handle))
}

/// The TCG RSA-2048 storage key template (what `tpm2_createprimary -C o` makes).
pub fn storage_key_template() -> Result<Public, tss_esapi::Error> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Rsa)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_rsa_parameters(
            PublicRsaParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                RsaKeyBits::Rsa2048,
                RsaExponent::default(),
            )
            .build()?,
        )
        .with_rsa_unique_identifier(PublicKeyRsa::default())
        .build()
}

/// Signing key templates: ECDSA keys fixed to their curve's hash; RSA keys with
/// no scheme, so one key signs PKCS#1 v1.5 and PSS.
pub fn signing_template(spec: KeyPairSpec) -> Result<Public, Error> {
    let bad = |e: tss_esapi::Error| Error::Internal(format!("cannot build a TPM template: {e}"));
    match spec {
        KeyPairSpec::EcP256 => tss_esapi::utils::create_unrestricted_signing_ecc_public(
            EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
            EccCurve::NistP256,
        )
        .map_err(bad),
        KeyPairSpec::EcP384 => tss_esapi::utils::create_unrestricted_signing_ecc_public(
            EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha384)),
            EccCurve::NistP384,
        )
        .map_err(bad),
        KeyPairSpec::Rsa2048 | KeyPairSpec::Rsa3072 => {
            tss_esapi::utils::create_unrestricted_signing_rsa_public(
                RsaScheme::Null,
                if spec == KeyPairSpec::Rsa2048 {
                    RsaKeyBits::Rsa2048
                } else {
                    RsaKeyBits::Rsa3072
                },
                RsaExponent::default(),
            )
            .map_err(bad)
        }
        KeyPairSpec::Rsa4096 | KeyPairSpec::Ed25519 => Err(Error::BadRequest(format!(
            "TPMs do not make {spec} keys; keep them in another backend ([[backend.override]])"
        ))),
    }
}

/// An HMAC-SHA256 key; `generated` when the TPM makes the key bytes itself.
pub fn hmac_template(generated: bool) -> Result<Public, Error> {
    let bad = |e: tss_esapi::Error| Error::Internal(format!("cannot build a TPM template: {e}"));
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(generated)
        .with_user_with_auth(true)
        .with_sign_encrypt(true)
        .build()
        .map_err(bad)?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(
            KeyedHashScheme::HMAC_SHA_256,
        ))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
        .map_err(bad)
}

/// A TPM object's public part as blob files keep it: TPMT_PUBLIC, base64.
fn public_text(public: &Public) -> Result<String, Error> {
    let bytes = public
        .marshall()
        .map_err(|e| Error::Internal(format!("cannot marshal a TPM public: {e}")))?;
    Ok(STANDARD.encode(bytes))
}

/// A TPM object's private part as blob files keep it: TPM2B_PRIVATE's
/// contents, base64.
fn private_text(private: &Private) -> String {
    STANDARD.encode(private.value())
}

/// [`public_text`] read back; `None` if it is not one.
fn public_of(text: &str) -> Option<Public> {
    STANDARD
        .decode(text)
        .ok()
        .and_then(|b| Public::unmarshall(&b).ok())
}

/// [`private_text`] read back; `None` if it is not one.
fn private_of(text: &str) -> Option<Private> {
    STANDARD
        .decode(text)
        .ok()
        .and_then(|b| Private::try_from(b).ok())
}

/// TPM2B_PUBLIC: the TPMT_PUBLIC that tss-esapi marshals, after its size.
fn tpm2b_public(public: &Public) -> Result<Vec<u8>, Error> {
    let body = public
        .marshall()
        .map_err(|e| Error::Internal(format!("cannot marshal a TPM public: {e}")))?;
    let size =
        u16::try_from(body.len()).map_err(|_| Error::Internal("TPM public too large".into()))?;
    Ok([size.to_be_bytes().as_slice(), &body].concat())
}

/// SubjectPublicKeyInfo (DER) for a TPM public area.
fn spki_of(public: &Public) -> Result<Vec<u8>, Error> {
    match public {
        Public::Ecc {
            parameters, unique, ..
        } => {
            let spec = match parameters.ecc_curve() {
                EccCurve::NistP256 => KeyPairSpec::EcP256,
                EccCurve::NistP384 => KeyPairSpec::EcP384,
                other => {
                    return Err(Error::Internal(format!(
                        "a TPM key on curve {other:?}, which keyd does not use"
                    )))
                }
            };
            let size = if spec == KeyPairSpec::EcP256 { 32 } else { 48 };
            let mut point = vec![0x04];
            point.extend(left_pad(unique.x().value(), size)?);
            point.extend(left_pad(unique.y().value(), size)?);
            ec_spki(spec, &point)
        }
        Public::Rsa {
            unique, parameters, ..
        } => {
            let e = match parameters.exponent().value() {
                0 => 65537u32,
                e => e,
            };
            rsa_spki(unique.value(), &e.to_be_bytes())
        }
        _ => Err(Error::Internal(
            "a TPM public area of a kind keyd does not use".into(),
        )),
    }
}

/// "No ticket": an unrestricted key signs any digest.
fn null_ticket() -> Result<HashcheckTicket, Failure> {
    HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Default::default(),
    })
    .map_err(|_| Failure::internal("cannot build the null hashcheck ticket"))
}

/// Big-endian integer bytes left-padded with zeros to `size` (TPMs drop leading zeros).
fn left_pad(bytes: &[u8], size: usize) -> Result<Vec<u8>, Error> {
    if bytes.len() > size {
        return Err(Error::Internal(
            "the TPM returned a value longer than its curve".into(),
        ));
    }
    let mut out = vec![0u8; size - bytes.len()];
    out.extend_from_slice(bytes);
    Ok(out)
}
