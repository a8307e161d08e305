//! The PKCS#11 store: keys generated on an HSM token (sensitive, never
//! extractable), labelled with their key id, found again by label after a restart.
//!
//! Every token call blocks, so each runs on the blocking pool, holding one
//! session from a pool of logged-in sessions; object handles are cached per key.
//! When the library or token fails in a way that means "gone" (removed, reset,
//! not logged in), the token state is dropped and rebuilt once; if that fails
//! too the caller gets 503, and the next request tries again, so keyd recovers
//! without a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use aws_lc_rs::digest;
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use p256::pkcs8::der::{Decode, Encode};
use p256::pkcs8::AssociatedOid;
use serde::Deserialize;
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use super::encoding::{ec_spki, ecdsa_der, rsa_spki, sec1_len};
use super::pkcs11_labels::Labels;
use super::{
    decryption_failed, no_such_key, not_a_ciphertext, wrong_kind, Failure, KeyBackend, KeyKind,
    KeyRecord, PublicKey,
};
use crate::api::{KeyPairSpec, SignAlgorithm, SymmetricKeyType};
use crate::error::Error;
use crate::handle::KeyRef;
use crate::key_id::KeyId;

/// `[pkcs11]` in keyd's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The PKCS#11 module, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub library: PathBuf,
    /// The token's label; or give `slot`.
    #[serde(default)]
    pub token_label: Option<String>,
    /// The slot id, when the token has no unique label.
    #[serde(default)]
    pub slot: Option<u64>,
    /// A file holding the user PIN (0600; trailing newline ignored).
    pub pin_file: PathBuf,
    /// Sessions kept open for concurrent requests.
    #[serde(default = "default_sessions")]
    pub sessions: usize,
    /// Key ids whose key on the token has another label than the id (a
    /// factory's): id → label. Other keys are labelled with their id.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

fn default_sessions() -> usize {
    8
}

/// DigestInfo prefix for SHA-256 (RFC 8017 section 9.2, note 1): RSASSA-PKCS1-v1_5
/// over a digest the caller computed.
const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];
/// First byte of ciphertexts, as in the software store.
const CIPHERTEXT_VERSION: u8 = 1;
const GCM_NONCE_LEN: usize = 12;
const GCM_TAG_LEN: usize = 16;

/// The PKCS#11 store.
pub struct Pkcs11Backend {
    shared: Arc<Shared>,
    /// Bounds the blocking calls in flight to the session pool size.
    permits: Arc<Semaphore>,
    /// How fast this token answers: where its calls run.
    pace: super::pace::Pace,
}

struct Shared {
    config: Pkcs11Config,
    labels: Arc<Labels>,
    pin: Mutex<Zeroizing<String>>,
    token: Mutex<Option<Arc<Token>>>,
    /// Set when the token refused the PIN (or has it locked): no login is
    /// tried again until the PIN file changes or keyd restarts, so that a
    /// token with a retry counter does not lock its user PIN on keyd's
    /// account.
    refused: Mutex<Option<PinRefused>>,
}

/// Why the token will not be logged in to, and the PIN file as it was then.
struct PinRefused {
    why: String,
    file: Option<PinFileStamp>,
}

/// What tells that the PIN file changed: inode, size, modification time.
#[derive(PartialEq, Eq)]
struct PinFileStamp {
    ino: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl PinFileStamp {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            ino: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

/// An initialized library with the token found and logged in.
struct Token {
    ctx: Pkcs11,
    slot: Slot,
    labels: Arc<Labels>,
    sessions: Mutex<Vec<Session>>,
    objects: RwLock<HashMap<KeyId, Arc<KeyObject>>>,
}

/// A key found on the token.
struct KeyObject {
    record: KeyRecord,
    /// The private or secret key.
    key: ObjectHandle,
    /// The public key, for key pairs.
    public: Option<ObjectHandle>,
}

impl Pkcs11Backend {
    /// Reads the PIN and tries the token once. A token that cannot be reached now
    /// does not stop keyd: its keys answer 503 until it can.
    pub fn open(config: &Pkcs11Config) -> Result<Self, Error> {
        if config.token_label.is_none() && config.slot.is_none() {
            return Err(Error::Setup("[pkcs11] needs token_label or slot".into()));
        }
        let labels = Labels::new(&config.labels).map_err(Error::Setup)?;
        let pin = read_pin(&config.pin_file)?;
        let backend = Self {
            shared: Arc::new(Shared {
                config: config.clone(),
                labels: Arc::new(labels),
                pin: Mutex::new(pin),
                token: Mutex::new(None),
                refused: Mutex::new(None),
            }),
            permits: Arc::new(Semaphore::new(config.sessions.max(1))),
            pace: super::pace::Pace::default(),
        };
        if let Err(e) = backend.shared.token() {
            tracing::warn!(error = %e, "PKCS#11 token not available yet; its keys answer 503 until it is");
        }
        Ok(backend)
    }

    /// Runs `op` with a logged-in session. A token whose calls have been
    /// fast runs it on this worker ([`super::pace`]); otherwise it runs off
    /// the reactor: on the multi-threaded runtime on this thread
    /// (`block_in_place` hands the worker's other tasks to another thread),
    /// which saves the two thread hand-offs of `spawn_blocking`.
    async fn run<T, F>(&self, op: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: Fn(&Token, &Session) -> Result<T, Failure> + Send + Sync + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Error::Internal("session pool closed".into()))?;
        let shared = self.shared.clone();
        let started = std::time::Instant::now();
        let result = if self.pace.on_worker() {
            shared.call(&op)
        } else if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread
        {
            tokio::task::block_in_place(|| shared.call(&op))
        } else {
            tokio::task::spawn_blocking(move || shared.call(&op))
                .await
                .map_err(|e| Error::Internal(format!("PKCS#11 task failed: {e}")))?
        };
        self.pace.record(started.elapsed());
        result
    }

    /// The key with this id, from the cache or found on the token.
    fn find_object(
        token: &Token,
        session: &Session,
        id: &KeyId,
    ) -> Result<Option<Arc<KeyObject>>, Failure> {
        if let Some(o) = token
            .objects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            return Ok(Some(o.clone()));
        }
        let label = Attribute::Label(token.labels.of(id).map_err(Failure::Request)?);
        let find = |class| {
            session
                .find_objects(&[Attribute::Class(class), label.clone()])
                .map_err(Failure::from)
        };
        let private = find(ObjectClass::PRIVATE_KEY)?;
        let secret = find(ObjectClass::SECRET_KEY)?;
        let (key, public) = match (private.first(), secret.first()) {
            (Some(k), _) => (*k, find(ObjectClass::PUBLIC_KEY)?.first().copied()),
            (None, Some(k)) => (*k, None),
            (None, None) => return Ok(None),
        };
        let kind = object_kind(session, key, id)?;
        let generation = match session
            .get_attributes(key, &[AttributeType::Id])
            .map_err(Failure::from)?
            .first()
        {
            Some(Attribute::Id(bytes)) => hex(bytes),
            _ => String::new(),
        };
        let object = Arc::new(KeyObject {
            record: KeyRecord {
                id: id.clone(),
                kind,
                generation,
            },
            key,
            public,
        });
        token
            .objects
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), object.clone());
        Ok(Some(object))
    }

    fn resolve(token: &Token, session: &Session, key: &KeyRef) -> Result<Arc<KeyObject>, Failure> {
        let object = Self::find_object(token, session, &key.id)?.ok_or_else(|| {
            Failure::Request(Error::NotFound(format!("key '{}' does not exist", key.id)))
        })?;
        object.record.check(key).map_err(Failure::Request)?;
        Ok(object)
    }
}

#[async_trait]
impl KeyBackend for Pkcs11Backend {
    async fn create_key_pair(&self, id: &KeyId, spec: KeyPairSpec) -> Result<KeyRecord, Error> {
        let id = id.clone();
        self.run(move |token, session| {
            if let Some(existing) = Self::find_object(token, session, &id)? {
                return Ok(existing.record.reuse_as_pair(spec)?);
            }
            let generation = random_id()?;
            let label = Attribute::Label(token.labels.of(&id).map_err(Failure::Request)?);
            let common_private = vec![
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                label.clone(),
                Attribute::Id(generation.clone()),
            ];
            let common_public =
                vec![Attribute::Token(true), Attribute::Verify(true), label, Attribute::Id(generation.clone())];
            let (mechanism, public_extra) = match spec {
                KeyPairSpec::EcP256 | KeyPairSpec::EcP384 => {
                    token.require(MechanismType::ECC_KEY_PAIR_GEN, "CKM_EC_KEY_PAIR_GEN", spec)?;
                    token.require(MechanismType::ECDSA, "CKM_ECDSA", spec)?;
                    (Mechanism::EccKeyPairGen, vec![Attribute::EcParams(curve_params(spec)?)])
                }
                KeyPairSpec::Rsa2048 | KeyPairSpec::Rsa3072 | KeyPairSpec::Rsa4096 => {
                    token.require(MechanismType::RSA_PKCS_KEY_PAIR_GEN, "CKM_RSA_PKCS_KEY_PAIR_GEN", spec)?;
                    let bits: u64 = match spec {
                        KeyPairSpec::Rsa2048 => 2048,
                        KeyPairSpec::Rsa3072 => 3072,
                        _ => 4096,
                    };
                    (
                        Mechanism::RsaPkcsKeyPairGen,
                        vec![Attribute::ModulusBits(bits.into()), Attribute::PublicExponent(vec![1, 0, 1])],
                    )
                }
                KeyPairSpec::Ed25519 => {
                    return Err(Failure::Request(Error::BadRequest(
                        "ed25519 keys live in the software store only; add a [[backend.override]] for this key".into(),
                    )))
                }
            };
            let public_template: Vec<_> = common_public.into_iter().chain(public_extra).collect();
            let (public, private) =
                session.generate_key_pair(&mechanism, &public_template, &common_private).map_err(Failure::from)?;
            let record = KeyRecord { id: id.clone(), kind: KeyKind::Pair(spec), generation: hex(&generation) };
            let object = KeyObject { record: record.clone(), key: private, public: Some(public) };
            token.objects.write().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), Arc::new(object));
            tracing::info!(key = %id, %spec, "created key pair on the PKCS#11 token");
            Ok(record)
        })
        .await
    }

    async fn create_key(
        &self,
        id: &KeyId,
        key_type: SymmetricKeyType,
        import: Option<&[u8]>,
    ) -> Result<KeyRecord, Error> {
        if key_type == SymmetricKeyType::Aes256Gcm && import.is_some_and(|b| b.len() != 32) {
            return Err(Error::BadRequest("an aes-256-gcm key is 32 bytes".into()));
        }
        let id = id.clone();
        let import = import.map(|b| Zeroizing::new(b.to_vec()));
        self.run(move |token, session| {
            if let Some(existing) = Self::find_object(token, session, &id)? {
                // The token will not show its key bytes, so an import can only
                // match an existing key by type; different bytes would be silently
                // ignored, so any import onto an existing key is a conflict.
                return if existing.record.kind == KeyKind::Symmetric(key_type) && import.is_none() {
                    Ok(existing.record.clone())
                } else {
                    Err(Failure::Request(Error::Conflict(format!(
                        "key '{id}' already exists as {}; delete it first to replace it",
                        existing.record.kind
                    ))))
                };
            }
            let (pkcs11_type, usage) = match key_type {
                SymmetricKeyType::HmacSha256 => {
                    let (min, max) = token.require(MechanismType::SHA256_HMAC, "CKM_SHA256_HMAC", key_type)?;
                    let len = import.as_ref().map_or(32, |b| b.len() as u64);
                    if len < min || (max > 0 && len > max) {
                        return Err(Failure::Request(Error::BadRequest(format!(
                            "the PKCS#11 token takes hmac-sha256 keys of {min} to {max} bytes; {len} were given"
                        ))));
                    }
                    (KeyType::GENERIC_SECRET, vec![Attribute::Sign(true), Attribute::Verify(true)])
                }
                SymmetricKeyType::Aes256Gcm => {
                    token.require(MechanismType::AES_GCM, "CKM_AES_GCM", key_type)?;
                    (KeyType::AES, vec![Attribute::Encrypt(true), Attribute::Decrypt(true)])
                }
            };
            let generation = random_id()?;
            let mut template = vec![
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(pkcs11_type),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Label(token.labels.of(&id).map_err(Failure::Request)?),
                Attribute::Id(generation.clone()),
            ];
            template.extend(usage);
            let key = match &import {
                Some(bytes) => {
                    template.push(Attribute::Value(bytes.to_vec()));
                    session.create_object(&template)
                }
                None => {
                    template.push(Attribute::ValueLen(32u64.into()));
                    let mechanism = match key_type {
                        SymmetricKeyType::HmacSha256 => Mechanism::GenericSecretKeyGen,
                        SymmetricKeyType::Aes256Gcm => Mechanism::AesKeyGen,
                    };
                    // CKA_CLASS and CKA_KEY_TYPE follow from the mechanism.
                    session.generate_key(&mechanism, &template[2..])
                }
            }
            .map_err(Failure::from)?;
            let record = KeyRecord { id: id.clone(), kind: KeyKind::Symmetric(key_type), generation: hex(&generation) };
            let object = KeyObject { record: record.clone(), key, public: None };
            token.objects.write().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), Arc::new(object));
            tracing::info!(key = %id, %key_type, imported = import.is_some(), "created key on the PKCS#11 token");
            Ok(record)
        })
        .await
    }

    async fn find(&self, id: &KeyId) -> Result<Option<KeyRecord>, Error> {
        let id = id.clone();
        self.run(move |token, session| {
            Ok(Self::find_object(token, session, &id)?.map(|o| o.record.clone()))
        })
        .await
    }

    async fn public_key(&self, key: &KeyRef) -> Result<PublicKey, Error> {
        let key = key.clone();
        self.run(move |token, session| {
            let object = Self::resolve(token, session, &key)?;
            let (KeyKind::Pair(spec), Some(public)) = (object.record.kind, object.public) else {
                return Err(Failure::Request(wrong_kind(
                    &key.id,
                    object.record.kind,
                    "a key pair",
                )));
            };
            let spki_der = match spec {
                KeyPairSpec::EcP256 | KeyPairSpec::EcP384 => {
                    let point = match session
                        .get_attributes(public, &[AttributeType::EcPoint])
                        .map_err(Failure::from)?
                        .first()
                    {
                        Some(Attribute::EcPoint(p)) => p.clone(),
                        _ => {
                            return Err(Failure::internal("the token did not return CKA_EC_POINT"))
                        }
                    };
                    ec_spki(spec, &token_point_to_sec1(spec, &point)?)?
                }
                _ => {
                    let attrs = session
                        .get_attributes(
                            public,
                            &[AttributeType::Modulus, AttributeType::PublicExponent],
                        )
                        .map_err(Failure::from)?;
                    let (mut n, mut e) = (None, None);
                    for a in attrs {
                        match a {
                            Attribute::Modulus(v) => n = Some(v),
                            Attribute::PublicExponent(v) => e = Some(v),
                            _ => {}
                        }
                    }
                    let (Some(n), Some(e)) = (n, e) else {
                        return Err(Failure::internal(
                            "the token did not return the RSA modulus and exponent",
                        ));
                    };
                    rsa_spki(&n, &e)?
                }
            };
            Ok(PublicKey { spec, spki_der })
        })
        .await
    }

    async fn sign(
        &self,
        key: &KeyRef,
        algorithm: SignAlgorithm,
        data: &[u8],
        prehashed: bool,
    ) -> Result<Vec<u8>, Error> {
        let key = key.clone();
        let data = data.to_vec();
        self.run(move |token, session| {
            let object = Self::resolve(token, session, &key)?;
            super::check_algorithm(&object.record, algorithm, prehashed)
                .map_err(Failure::Request)?;
            let digest_of = |alg: &'static digest::Algorithm| -> Result<Vec<u8>, Failure> {
                if prehashed {
                    if data.len() != alg.output_len() {
                        return Err(Failure::Request(super::bad_digest_len(alg)));
                    }
                    Ok(data.clone())
                } else {
                    Ok(digest::digest(alg, &data).as_ref().to_vec())
                }
            };
            match algorithm {
                SignAlgorithm::EcdsaSha256 | SignAlgorithm::EcdsaSha384 => {
                    let alg = if algorithm == SignAlgorithm::EcdsaSha256 {
                        &digest::SHA256
                    } else {
                        &digest::SHA384
                    };
                    let raw = session
                        .sign(&Mechanism::Ecdsa, object.key, &digest_of(alg)?)
                        .map_err(Failure::from)?;
                    Ok(ecdsa_der(object.record.kind, &raw)?)
                }
                SignAlgorithm::RsaPkcs1Sha256 => {
                    let mut info = SHA256_DIGEST_INFO.to_vec();
                    info.extend(digest_of(&digest::SHA256)?);
                    session
                        .sign(&Mechanism::RsaPkcs, object.key, &info)
                        .map_err(Failure::from)
                }
                SignAlgorithm::RsaPssSha256 => {
                    let params = PkcsPssParams {
                        hash_alg: MechanismType::SHA256,
                        mgf: PkcsMgfType::MGF1_SHA256,
                        s_len: 32u64.into(),
                    };
                    let digest = digest_of(&digest::SHA256)?;
                    session
                        .sign(&Mechanism::RsaPkcsPss(params), object.key, &digest)
                        .map_err(Failure::from)
                }
                SignAlgorithm::HmacSha256 => {
                    let Some((first, rest)) = key.derivation.split_first() else {
                        return session
                            .sign(&Mechanism::Sha256Hmac, object.key, &data)
                            .map_err(Failure::from);
                    };
                    // The first step runs on the token; the derived key exists only
                    // in this process's memory, zeroized after use.
                    let derived = Zeroizing::new(
                        session
                            .sign(&Mechanism::Sha256Hmac, object.key, first)
                            .map_err(Failure::from)?,
                    );
                    let derived = super::derive(&derived, rest);
                    Ok(
                        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &derived), &data)
                            .as_ref()
                            .to_vec(),
                    )
                }
                SignAlgorithm::Ed25519 => Err(Failure::internal("ed25519 on a PKCS#11 token")),
            }
        })
        .await
    }

    async fn encrypt(&self, key: &KeyRef, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, Error> {
        let (key, plaintext, aad) = (key.clone(), plaintext.to_vec(), aad.to_vec());
        self.run(move |token, session| {
            let object = Self::aes_object(token, session, &key)?;
            let mut nonce = [0u8; GCM_NONCE_LEN];
            SystemRandom::new()
                .fill(&mut nonce)
                .map_err(|_| Failure::internal("the random generator failed"))?;
            let mut iv = nonce;
            let params = GcmParams::new(&mut iv, &aad, ((GCM_TAG_LEN * 8) as u64).into())
                .map_err(Failure::from)?;
            let sealed = session
                .encrypt(&Mechanism::AesGcm(params), object.key, &plaintext)
                .map_err(Failure::from)?;
            let mut out = Vec::with_capacity(1 + GCM_NONCE_LEN + sealed.len());
            out.push(CIPHERTEXT_VERSION);
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&sealed);
            Ok(out)
        })
        .await
    }

    async fn decrypt(&self, key: &KeyRef, ciphertext: &[u8], aad: &[u8]) -> Result<Vec<u8>, Error> {
        let (key, ciphertext, aad) = (key.clone(), ciphertext.to_vec(), aad.to_vec());
        self.run(move |token, session| {
            let object = Self::aes_object(token, session, &key)?;
            if ciphertext.len() < 1 + GCM_NONCE_LEN + GCM_TAG_LEN
                || ciphertext[0] != CIPHERTEXT_VERSION
            {
                return Err(not_a_ciphertext().into());
            }
            let mut iv = [0u8; GCM_NONCE_LEN];
            iv.copy_from_slice(&ciphertext[1..1 + GCM_NONCE_LEN]);
            let params = GcmParams::new(&mut iv, &aad, ((GCM_TAG_LEN * 8) as u64).into())
                .map_err(Failure::from)?;
            session
                .decrypt(
                    &Mechanism::AesGcm(params),
                    object.key,
                    &ciphertext[1 + GCM_NONCE_LEN..],
                )
                .map_err(|e| match Failure::from(e) {
                    Failure::Request(_) => decryption_failed().into(),
                    device => device,
                })
        })
        .await
    }

    async fn delete(&self, id: &KeyId, pair: bool) -> Result<(), Error> {
        let id = id.clone();
        self.run(move |token, session| {
            let object =
                Self::find_object(token, session, &id)?.ok_or_else(|| no_such_key(&id, pair))?;
            object.record.check_class(pair)?;
            session.destroy_object(object.key).map_err(Failure::from)?;
            if let Some(public) = object.public {
                session.destroy_object(public).map_err(Failure::from)?;
            }
            token
                .objects
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            tracing::info!(key = %id, "deleted key from the PKCS#11 token");
            Ok(())
        })
        .await
    }

    async fn list(&self) -> Result<Vec<KeyRecord>, Error> {
        self.run(|token, session| {
            let mut records = Vec::new();
            for class in [ObjectClass::PRIVATE_KEY, ObjectClass::SECRET_KEY] {
                for object in session
                    .find_objects(&[Attribute::Class(class)])
                    .map_err(Failure::from)?
                {
                    let label = match session
                        .get_attributes(object, &[AttributeType::Label])
                        .map_err(Failure::from)?
                        .first()
                    {
                        Some(Attribute::Label(l)) => String::from_utf8(l.clone()).ok(),
                        _ => None,
                    };
                    // Objects keyd did not make (no valid key id label) are not listed.
                    let Some(id) = label.and_then(|l| token.labels.id_of(&l)) else {
                        continue;
                    };
                    if let Some(o) = Self::find_object(token, session, &id)? {
                        records.push(o.record.clone());
                    }
                }
            }
            records.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
            records.dedup_by(|a, b| a.id == b.id);
            Ok(records)
        })
        .await
    }

    async fn health(&self) -> Result<(), String> {
        self.run(|_, session| session.get_session_info().map(drop).map_err(Failure::from))
            .await
            .map_err(|e| e.to_string())
    }
}

impl Pkcs11Backend {
    fn aes_object(
        token: &Token,
        session: &Session,
        key: &KeyRef,
    ) -> Result<Arc<KeyObject>, Failure> {
        let object = Self::resolve(token, session, key)?;
        if object.record.kind != KeyKind::Symmetric(SymmetricKeyType::Aes256Gcm) {
            return Err(Failure::Request(wrong_kind(
                &key.id,
                object.record.kind,
                "an aes-256-gcm key",
            )));
        }
        if !key.derivation.is_empty() {
            return Err(Failure::Request(Error::BadRequest(
                "derived aes-256-gcm keys are not supported on a PKCS#11 token (the token would have to release the key); \
                 keep this key in the software store"
                    .into(),
            )));
        }
        Ok(object)
    }
}

impl Shared {
    /// Runs `op` with a session; a "device gone" failure resets the token and
    /// retries once, so a reset token costs one request nothing but time.
    fn call<T, F>(&self, op: &F) -> Result<T, Error>
    where
        F: Fn(&Token, &Session) -> Result<T, Failure>,
    {
        let mut last = None;
        for _attempt in 0..2 {
            let token = self.token()?;
            let session = match token.take_session() {
                Ok(s) => s,
                Err(Failure::Device(e)) => {
                    self.reset(&token);
                    last = Some(e);
                    continue;
                }
                Err(Failure::Request(e)) => return Err(e),
            };
            match op(&token, &session) {
                Ok(v) => {
                    token.give_back(session);
                    return Ok(v);
                }
                Err(Failure::Device(e)) => {
                    drop(session);
                    self.reset(&token);
                    last = Some(e);
                }
                Err(Failure::Request(e)) => {
                    token.give_back(session);
                    return Err(e);
                }
            }
        }
        Err(Error::Unavailable {
            backend: "pkcs11",
            reason: last.unwrap_or_else(|| "token unavailable".into()),
        })
    }

    /// The open token, opening it (library, slot, login) if needed.
    fn token(&self) -> Result<Arc<Token>, Error> {
        let mut guard = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = guard.as_ref() {
            return Ok(t.clone());
        }
        if let Some(why) = self.pin_still_refused() {
            return Err(self.unavailable(why));
        }
        let token = Arc::new(self.open_token()?);
        *guard = Some(token.clone());
        Ok(token)
    }

    /// Why no login is to be tried, if the token refused the PIN and the PIN
    /// file has not changed since; if it has, the new PIN is read and the
    /// next login may try it.
    fn pin_still_refused(&self) -> Option<String> {
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        let r = refused.as_ref()?;
        let path = &self.config.pin_file;
        if PinFileStamp::of(path) == r.file {
            return Some(format!(
                "{}; keyd does not log in again until {} changes or keyd restarts (a token may lock its PIN after a few wrong tries)",
                r.why,
                path.display()
            ));
        }
        match read_pin(path) {
            Ok(pin) => {
                tracing::info!(pin_file = %path.display(), "the PKCS#11 PIN file changed: trying it");
                *self.pin.lock().unwrap_or_else(|p| p.into_inner()) = pin;
                *refused = None;
                None
            }
            Err(e) => Some(e.to_string()),
        }
    }

    /// Records that the token will not take the PIN: no login until the
    /// PIN file changes.
    fn refuse_pin(&self, why: String) -> Error {
        tracing::error!(pin_file = %self.config.pin_file.display(), "{why}; not logging in again until the PIN file changes or keyd restarts");
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(PinRefused {
            why: why.clone(),
            file: PinFileStamp::of(&self.config.pin_file),
        });
        self.unavailable(why)
    }

    fn unavailable(&self, what: String) -> Error {
        Error::Unavailable {
            backend: "pkcs11",
            reason: what,
        }
    }

    fn open_token(&self) -> Result<Token, Error> {
        let lib = &self.config.library;
        let ctx = Pkcs11::new(lib).map_err(|e| {
            self.unavailable(format!(
                "cannot load PKCS#11 library {}: {e}",
                lib.display()
            ))
        })?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => {
                return Err(self.unavailable(format!("{} failed to initialize: {e}", lib.display())))
            }
        }
        let slots = ctx
            .get_slots_with_initialized_token()
            .map_err(|e| self.unavailable(format!("{}: cannot list slots: {e}", lib.display())))?;
        let slot = slots
            .into_iter()
            .find(|s| match (&self.config.token_label, self.config.slot) {
                (Some(label), _) => ctx
                    .get_token_info(*s)
                    .is_ok_and(|i| i.label().trim_end() == label),
                (None, Some(id)) => s.id() == id,
                (None, None) => false,
            });
        let Some(slot) = slot else {
            let _ = ctx.finalize();
            let wanted = match (&self.config.token_label, self.config.slot) {
                (Some(label), _) => format!(
                    "token '{label}' not found in {}: check pkcs11.token_label",
                    lib.display()
                ),
                (None, Some(id)) => format!(
                    "no initialized token in slot {id} of {}: check pkcs11.slot",
                    lib.display()
                ),
                (None, None) => "no token configured".into(),
            };
            return Err(self.unavailable(wanted));
        };
        // The token's own word on its user PIN, before spending a try.
        if let Ok(info) = ctx.get_token_info(slot) {
            if info.user_pin_locked() {
                let _ = ctx.finalize();
                return Err(self.refuse_pin(
                    "the token's user PIN is locked (CKF_USER_PIN_LOCKED): unlock it with the SO PIN, then write the PIN to pkcs11.pin_file".into(),
                ));
            }
            if info.user_pin_final_try() {
                tracing::warn!(
                    "the token says one wrong PIN will lock it (CKF_USER_PIN_FINAL_TRY)"
                );
            } else if info.user_pin_count_low() {
                tracing::warn!("the token has counted wrong PINs (CKF_USER_PIN_COUNT_LOW)");
            }
        }
        let session = ctx
            .open_rw_session(slot)
            .map_err(|e| self.unavailable(format!("cannot open a session on the token: {e}")))?;
        let pin = AuthPin::from(
            self.pin
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_str()
                .to_owned(),
        );
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                drop(session);
                let _ = ctx.finalize();
                return Err(self.refuse_pin(format!(
                    "the token refused the PIN in {}: check pkcs11.pin_file",
                    self.config.pin_file.display()
                )));
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
                drop(session);
                let _ = ctx.finalize();
                return Err(self.refuse_pin(
                    "the token's user PIN is locked: unlock it with the SO PIN, then write the PIN to pkcs11.pin_file".into(),
                ));
            }
            Err(e) => return Err(self.unavailable(format!("login to the token failed: {e}"))),
        }
        tracing::info!(library = %lib.display(), slot = slot.id(), "PKCS#11 token open");
        Ok(Token {
            ctx,
            slot,
            labels: self.labels.clone(),
            sessions: Mutex::new(vec![session]),
            objects: RwLock::new(HashMap::new()),
        })
    }

    /// Forgets `token` (if it is still the current one) so the next call opens it
    /// afresh: new library initialization, new login, empty handle cache.
    fn reset(&self, token: &Arc<Token>) {
        let mut guard = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_some_and(|t| Arc::ptr_eq(t, token)) {
            if let Some(old) = guard.take() {
                tracing::warn!("PKCS#11 token failed; reinitializing on the next request");
                let sessions =
                    std::mem::take(&mut *old.sessions.lock().unwrap_or_else(|p| p.into_inner()));
                drop(sessions);
                let _ = old.ctx.clone().finalize();
            }
        }
    }
}

impl Token {
    fn take_session(&self) -> Result<Session, Failure> {
        if let Some(s) = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
        {
            return Ok(s);
        }
        // Login is per token: a new session of a logged-in application is logged in.
        self.ctx
            .open_rw_session(self.slot)
            .map_err(|e| Failure::Device(e.to_string()))
    }

    fn give_back(&self, session: Session) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(session);
    }

    /// Fails with a clear error if the token lacks `mechanism`; else returns the
    /// key sizes it accepts for it (bytes or bits, as the mechanism defines).
    fn require(
        &self,
        mechanism: MechanismType,
        name: &str,
        what: impl std::fmt::Display,
    ) -> Result<(u64, u64), Failure> {
        match self.ctx.get_mechanism_info(self.slot, mechanism) {
            Ok(info) => Ok((info.min_key_size() as u64, info.max_key_size() as u64)),
            Err(CkError::Pkcs11(RvError::MechanismInvalid, _)) => {
                Err(Failure::Request(Error::BadRequest(format!(
                    "the PKCS#11 token does not support {name}, which {what} keys need; \
                 keep them in another backend ([[backend.override]])"
                ))))
            }
            Err(e) => Err(Failure::from(e)),
        }
    }
}

impl From<CkError> for Failure {
    /// A stale object handle counts as the device failing: the token was
    /// removed and reinserted, or reloaded its objects, and every cached handle
    /// is gone with it; reopening the token finds the keys again by label.
    fn from(e: CkError) -> Self {
        match &e {
            CkError::Pkcs11(
                RvError::DeviceRemoved
                | RvError::ObjectHandleInvalid
                | RvError::KeyHandleInvalid
                | RvError::DeviceError
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::CryptokiNotInitialized,
                _,
            ) => Failure::Device(e.to_string()),
            CkError::Pkcs11(RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange, _) => {
                Failure::Request(Error::BadRequest(e.to_string()))
            }
            _ => Failure::Request(Error::Internal(format!("PKCS#11: {e}"))),
        }
    }
}

/// CKA_EC_POINT as a SEC1 point. PKCS#11 says it is a DER OCTET STRING around
/// the point; some tokens return the bare point. The two are told apart by
/// length, never by trying to parse: a bare point starts with 0x04, the OCTET
/// STRING tag, and can look like DER by chance.
fn token_point_to_sec1(spec: KeyPairSpec, ec_point: &[u8]) -> Result<Vec<u8>, Failure> {
    let raw = sec1_len(spec);
    if ec_point.len() == raw {
        return Ok(ec_point.to_vec());
    }
    match p256::pkcs8::der::asn1::OctetString::from_der(ec_point) {
        Ok(inner) if inner.as_bytes().len() == raw => Ok(inner.as_bytes().to_vec()),
        _ => Err(Failure::internal(
            "the token returned a CKA_EC_POINT keyd cannot parse",
        )),
    }
}

fn read_pin(path: &Path) -> Result<Zeroizing<String>, Error> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        Error::Setup(format!(
            "cannot read PKCS#11 PIN file {}: {e}",
            path.display()
        ))
    })?);
    edgeid_common::fs::check_private(path).map_err(|e| Error::Setup(e.to_string()))?;
    let pin = Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_owned());
    if pin.is_empty() {
        return Err(Error::Setup(format!(
            "PKCS#11 PIN file {} is empty",
            path.display()
        )));
    }
    Ok(pin)
}

fn random_id() -> Result<Vec<u8>, Failure> {
    let mut id = vec![0u8; 16];
    SystemRandom::new()
        .fill(&mut id)
        .map_err(|_| Failure::internal("the random generator failed"))?;
    Ok(id)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// CKA_EC_PARAMS: the DER-encoded named-curve OID.
fn curve_params(spec: KeyPairSpec) -> Result<Vec<u8>, Failure> {
    let oid = if spec == KeyPairSpec::EcP256 {
        p256::NistP256::OID
    } else {
        p384::NistP384::OID
    };
    oid.to_der()
        .map_err(|_| Failure::internal("cannot encode the curve OID"))
}

/// What kind of key an object on the token is.
fn object_kind(session: &Session, key: ObjectHandle, id: &KeyId) -> Result<KeyKind, Failure> {
    let attrs = session
        .get_attributes(
            key,
            &[
                AttributeType::KeyType,
                AttributeType::EcParams,
                AttributeType::Modulus,
            ],
        )
        .map_err(Failure::from)?;
    let mut key_type = None;
    let mut ec_params = None;
    let mut modulus_len = None;
    for a in attrs {
        match a {
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::EcParams(p) => ec_params = Some(p),
            Attribute::Modulus(m) => modulus_len = Some(m.len()),
            _ => {}
        }
    }
    let unknown = || {
        Failure::internal(&format!(
            "object '{id}' on the token is of a kind keyd does not use"
        ))
    };
    Ok(match key_type {
        Some(t) if t == KeyType::EC => {
            let params = ec_params.ok_or_else(unknown)?;
            if params == curve_params(KeyPairSpec::EcP256)? {
                KeyKind::Pair(KeyPairSpec::EcP256)
            } else if params == curve_params(KeyPairSpec::EcP384)? {
                KeyKind::Pair(KeyPairSpec::EcP384)
            } else {
                return Err(unknown());
            }
        }
        Some(t) if t == KeyType::RSA => match modulus_len.ok_or_else(unknown)? {
            256 => KeyKind::Pair(KeyPairSpec::Rsa2048),
            384 => KeyKind::Pair(KeyPairSpec::Rsa3072),
            512 => KeyKind::Pair(KeyPairSpec::Rsa4096),
            _ => return Err(unknown()),
        },
        Some(t) if t == KeyType::GENERIC_SECRET => KeyKind::Symmetric(SymmetricKeyType::HmacSha256),
        Some(t) if t == KeyType::AES => KeyKind::Symmetric(SymmetricKeyType::Aes256Gcm),
        _ => return Err(unknown()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_points_from_tokens_bare_or_wrapped() {
        let point = crate::backend::encoding::tests::point_starting_with(0x3f);
        let wrapped = p256::pkcs8::der::asn1::OctetString::new(point.clone())
            .unwrap()
            .to_der()
            .unwrap();
        assert_eq!(
            token_point_to_sec1(KeyPairSpec::EcP256, &point).ok(),
            Some(point.clone())
        );
        assert_eq!(
            token_point_to_sec1(KeyPairSpec::EcP256, &wrapped).ok(),
            Some(point.clone())
        );
        assert!(token_point_to_sec1(KeyPairSpec::EcP256, &point[..40]).is_err());
    }
}
