//! The key service: who may use which key, which store holds it, and the
//! handles that name keys on the wire.

use std::collections::BTreeMap;
use std::sync::Arc;

use edgeid_common::authz::{Access, Admins, Caller, Grants};
use edgeid_common::encoding::{Base64Bytes, SecretBytes};
use edgeid_common::server::Health;

use crate::api::*;
use crate::backend::{no_such_key, BackendKind, KeyBackend, KeyKind};
use crate::config::KeydConfig;
use crate::error::Error;
pub use crate::handle::Holder;
use crate::handle::{HandleAuthority, KeyRef, MAX_INFO_LEN};
use crate::key_id::KeyId;

mod stores;
mod tpm;

pub use stores::reseal_master_key;
use stores::Stores;

pub use tpm::{ATTESTATION_KEYS_ID, QUOTE_ID};

/// keyd's domain: every API operation, authorized.
pub struct Keyd {
    stores: Stores,
    handles: HandleAuthority,
    access: Access,
    /// Bases of derivation alone (config `derive_only`).
    derive_only: Grants,
    /// Whose derived keys each principal may export (config `export`).
    export: Access,
}

impl Keyd {
    /// Whether the caller is somebody here (an administrator or a
    /// principal), before its request's body is read; else why not.
    pub fn admits(&self, caller: &Caller) -> Result<(), String> {
        self.access.admits(caller)
    }

    /// Opens the stores the config names and the handle secret.
    pub async fn open(config: &KeydConfig, admins: Admins) -> Result<Self, Error> {
        edgeid_common::fs::ensure_private_dir(&config.state_dir).map_err(|e| {
            Error::Setup(format!(
                "cannot create state directory {}: {e}",
                config.state_dir.display()
            ))
        })?;
        let handles = HandleAuthority::load_or_create(&config.state_dir.join("handle.key"))?;
        let stores = Stores::open(config).await?;
        let access = Access::new(
            "keyd",
            "key",
            admins.clone(),
            config
                .principals
                .iter()
                .map(|p| (p.name.clone(), p.uid, p.keys.clone())),
        );
        let export = Access::new(
            "keyd",
            "export of keys derived from",
            admins,
            config
                .principals
                .iter()
                .map(|p| (p.name.clone(), p.uid, p.export.clone())),
        );
        for preloaded in &config.preloaded_keys {
            let id = KeyId::new(&preloaded.id)
                .map_err(|e| Error::Setup(format!("preloaded key '{}': {e}", preloaded.id)))?;
            crate::backend::preload::import(stores.for_id(&id)?.as_ref(), &id, preloaded).await?;
        }
        // Taken over once; one that cannot be (a kind keyd does not hold)
        // is said and skipped: the key is made anew where asked for.
        for imported in &config.imported_keys {
            let id = KeyId::new(&imported.id)
                .map_err(|e| Error::Setup(format!("imported key '{}': {e}", imported.id)))?;
            let result = match stores.for_id(&id) {
                Ok(store) => {
                    crate::backend::preload::take_over(store.as_ref(), &id, imported).await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(true) => {
                    tracing::info!(key = %id, file = %imported.file.display(), "imported a key another key service left")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(key = %id, file = %imported.file.display(), error = %e, "not imported; the key is made anew where asked for")
                }
            }
        }
        Ok(Self {
            stores,
            handles,
            access,
            derive_only: config.derive_only.clone(),
            export,
        })
    }

    /// A base of derivation alone is used for nothing but `derive` (and,
    /// where granted, `export` of what it derives).
    fn refuse_if_derive_only(&self, key: &KeyRef, operation: &str) -> Result<(), Error> {
        if key.derivation.is_empty() && self.derive_only.allows(key.id.as_str()) {
            return Err(Error::Forbidden(format!(
                "key '{}' is a base of derivation alone (keyd's derive_only): it derives keys, it does not {operation}",
                key.id
            )));
        }
        Ok(())
    }

    /// Validates an id and checks the caller may use it.
    fn authorize(&self, caller: &Caller, id: &str) -> Result<KeyId, Error> {
        let id = KeyId::new(id)?;
        self.access
            .check(caller, id.as_str())
            .map_err(Error::Forbidden)?;
        Ok(id)
    }

    /// Opens a handle, checks the caller may use its key (unless the handle
    /// is a bearer handle: then holding it is the grant), finds the store.
    fn open_handle(
        &self,
        caller: &Caller,
        handle: &KeyHandle,
    ) -> Result<(Arc<KeyRef>, &Arc<dyn KeyBackend>), Error> {
        let key = self.handles.open(handle)?;
        if !key.bearer {
            self.access
                .check(caller, key.id.as_str())
                .map_err(Error::Forbidden)?;
        }
        let store = self.stores.for_id(&key.id)?;
        Ok((key, store))
    }

    fn handle_for(&self, id: KeyId, generation: String, holder: Holder) -> HandleResponse {
        HandleResponse {
            handle: self.handles.issue(&KeyRef {
                id,
                generation,
                derivation: Vec::new(),
                bearer: holder == Holder::Bearer,
            }),
        }
    }

    /// `POST /v1/keypair`
    pub async fn create_key_pair(
        &self,
        caller: &Caller,
        req: CreateKeyPairRequest,
        holder: Holder,
    ) -> Result<HandleResponse, Error> {
        let id = self.authorize(caller, &req.id)?;
        let record = self
            .stores
            .for_id(&id)?
            .create_key_pair(&id, req.spec)
            .await?;
        Ok(self.handle_for(id, record.generation, holder))
    }

    /// The key pair `id` if it exists (whatever its spec), else a new one
    /// of the first of `preferred` the store makes: the aziot API's
    /// create-if-not-exists.
    pub async fn load_or_create_key_pair(
        &self,
        caller: &Caller,
        id: &str,
        preferred: &[KeyPairSpec],
        holder: Holder,
    ) -> Result<HandleResponse, Error> {
        let key_id = self.authorize(caller, id)?;
        let store = self.stores.for_id(&key_id)?;
        if let Some(record) = store.find(&key_id).await? {
            record.check_class(true)?;
            return Ok(self.handle_for(key_id, record.generation, holder));
        }
        let Some(spec) = preferred.first() else {
            return Err(Error::BadRequest(
                "no algorithm keyd makes is among the preferred algorithms".into(),
            ));
        };
        let record = store.create_key_pair(&key_id, *spec).await?;
        Ok(self.handle_for(key_id, record.generation, holder))
    }

    /// `GET /v1/keypair/{id}` (`pair`) and `GET /v1/key/{id}`.
    pub async fn find(
        &self,
        caller: &Caller,
        id: &str,
        pair: bool,
        holder: Holder,
    ) -> Result<HandleResponse, Error> {
        let id = self.authorize(caller, id)?;
        let record = self
            .stores
            .for_id(&id)?
            .find(&id)
            .await?
            .ok_or_else(|| no_such_key(&id, pair))?;
        record.check_class(pair)?;
        Ok(self.handle_for(id, record.generation, holder))
    }

    /// `POST /v1/public-key`
    pub async fn public_key(
        &self,
        caller: &Caller,
        req: PublicKeyRequest,
    ) -> Result<PublicKeyResponse, Error> {
        let public = self.public_key_of(caller, &req.handle).await?;
        Ok(PublicKeyResponse {
            spec: public.spec,
            pem: pem::encode(&pem::Pem::new("PUBLIC KEY", public.spki_der)),
        })
    }

    /// The public half of a key pair, as DER.
    pub async fn public_key_of(
        &self,
        caller: &Caller,
        handle: &KeyHandle,
    ) -> Result<crate::backend::PublicKey, Error> {
        let (key, store) = self.open_handle(caller, handle)?;
        store.public_key(&key).await
    }

    /// `POST /v1/sign`
    pub async fn sign(&self, caller: &Caller, req: SignRequest) -> Result<SignResponse, Error> {
        let (key, store) = self.open_handle(caller, &req.handle)?;
        self.refuse_if_derive_only(&key, "sign")?;
        // Only symmetric keys are derived (see `derive`), and of those only
        // HMAC keys sign; so a derived handle signs with hmac-sha256 alone.
        if !key.derivation.is_empty() && req.algorithm != SignAlgorithm::HmacSha256 {
            return Err(Error::BadRequest(format!(
                "a derived key is a symmetric key; it cannot sign with {}",
                req.algorithm
            )));
        }
        let signature = store
            .sign(&key, req.algorithm, &req.data.0, req.prehashed)
            .await?;
        Ok(SignResponse {
            signature: Base64Bytes(signature),
        })
    }

    /// `POST /v1/key`
    pub async fn create_key(
        &self,
        caller: &Caller,
        req: CreateKeyRequest,
        holder: Holder,
    ) -> Result<HandleResponse, Error> {
        let id = self.authorize(caller, &req.id)?;
        let import = req.import.as_ref().map(|s| s.0.as_slice());
        let record = self
            .stores
            .for_id(&id)?
            .create_key(&id, req.key_type, import)
            .await?;
        Ok(self.handle_for(id, record.generation, holder))
    }

    /// `POST /v1/derive`: a handle for HMAC-SHA256(base key, info). Nothing is
    /// stored; the derived key is recomputed from the handle when used. Only
    /// a base of derivation alone derives, and only once: a derived key
    /// signs (or encrypts), so a key derived from it would be its signature.
    pub async fn derive(
        &self,
        caller: &Caller,
        req: DeriveRequest,
    ) -> Result<HandleResponse, Error> {
        let (key, store) = self.open_handle(caller, &req.handle)?;
        let mut key = KeyRef::clone(&key);
        if req.info.0.len() > MAX_INFO_LEN {
            return Err(Error::BadRequest(format!(
                "derivation info is longer than {MAX_INFO_LEN} bytes"
            )));
        }
        if !key.derivation.is_empty() {
            return Err(Error::BadRequest(
                "a derived key does not derive further: derive from its base".into(),
            ));
        }
        self.check_base(store, &key, false).await?;
        key.derivation.push(req.info.0);
        Ok(HandleResponse {
            handle: self.handles.issue(&key),
        })
    }

    /// A base of derivation: listed in `derive_only`, present, of this
    /// generation, and symmetric (an HMAC key, if `hmac`).
    async fn check_base(
        &self,
        store: &Arc<dyn KeyBackend>,
        key: &KeyRef,
        hmac: bool,
    ) -> Result<(), Error> {
        if !self.derive_only.allows(key.id.as_str()) {
            return Err(Error::BadRequest(format!(
                "key '{}' is not a base of derivation: only keys keyd's derive_only lists derive (a key that signs must not: its signature of info would be the derived key)",
                key.id
            )));
        }
        let record = store
            .find(&key.id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("key '{}' does not exist", key.id)))?;
        record.check(key)?;
        match record.kind {
            KeyKind::Symmetric(SymmetricKeyType::HmacSha256) => Ok(()),
            KeyKind::Symmetric(_) if !hmac => Ok(()),
            other => Err(crate::backend::wrong_kind(
                &key.id,
                other,
                if hmac {
                    "an hmac-sha256 key"
                } else {
                    "a symmetric key"
                },
            )),
        }
    }

    /// `POST /v1/export`: the bytes of a key derived from an HMAC base, to
    /// a caller its `export` grant names (identityd: the hub must know a
    /// module's key to check its tokens).
    pub async fn export(
        &self,
        caller: &Caller,
        req: ExportRequest,
    ) -> Result<ExportResponse, Error> {
        let (key, store) = self.open_handle(caller, &req.handle)?;
        self.export
            .check(caller, key.id.as_str())
            .map_err(Error::Forbidden)?;
        let [info] = key.derivation.as_slice() else {
            return Err(Error::BadRequest(
                "only a derived key is exported: give the handle derive answered".into(),
            ));
        };
        let base = KeyRef {
            id: key.id.clone(),
            generation: key.generation.clone(),
            derivation: Vec::new(),
            bearer: key.bearer,
        };
        self.check_base(store, &base, true).await?;
        // HMAC(base, info) is the derived key; the store computes it as it
        // does for every use of a derived handle.
        let bytes = store
            .sign(&base, SignAlgorithm::HmacSha256, info, false)
            .await?;
        Ok(ExportResponse {
            key: SecretBytes(zeroize::Zeroizing::new(bytes)),
        })
    }

    /// `POST /v1/encrypt`
    pub async fn encrypt(
        &self,
        caller: &Caller,
        req: CryptRequest,
    ) -> Result<CryptResponse, Error> {
        self.crypt(caller, req, true).await
    }

    /// `POST /v1/decrypt`
    pub async fn decrypt(
        &self,
        caller: &Caller,
        req: CryptRequest,
    ) -> Result<CryptResponse, Error> {
        self.crypt(caller, req, false).await
    }

    async fn crypt(
        &self,
        caller: &Caller,
        req: CryptRequest,
        encrypt: bool,
    ) -> Result<CryptResponse, Error> {
        let (key, store) = self.open_handle(caller, &req.handle)?;
        self.refuse_if_derive_only(&key, if encrypt { "encrypt" } else { "decrypt" })?;
        let aad = req.aad.as_ref().map_or(&[][..], |a| a.0.as_slice());
        let data = if encrypt {
            store.encrypt(&key, &req.data.0, aad).await?
        } else {
            store.decrypt(&key, &req.data.0, aad).await?
        };
        Ok(CryptResponse {
            data: Base64Bytes(data),
        })
    }

    /// The aziot API's AEAD decrypt: keyd's own form (`bound_aad` holds the
    /// `iv`), else, for a ciphertext that may be one, the reference's form
    /// with that `iv` and `aad` (a key taken over from libaziot-keys).
    pub async fn decrypt_aziot(
        &self,
        caller: &Caller,
        req: CryptRequest,
        iv: &[u8],
        aad: &[u8],
    ) -> Result<CryptResponse, Error> {
        let (key, store) = self.open_handle(caller, &req.handle)?;
        self.refuse_if_derive_only(&key, "decrypt")?;
        let bound_aad = req.aad.as_ref().map_or(&[][..], |a| a.0.as_slice());
        let ciphertext = &req.data.0;
        let data = match store.decrypt(&key, ciphertext, bound_aad).await {
            Ok(data) => data,
            Err(first) if matches!(ciphertext.first(), Some(1 | 2)) => store
                .decrypt_reference(&key, iv, aad, ciphertext)
                .await
                .map(|p| p.to_vec())
                .map_err(|_| first)?,
            Err(e) => return Err(e),
        };
        Ok(CryptResponse {
            data: Base64Bytes(data),
        })
    }

    /// `DELETE /v1/keypair/{id}` (`pair`) and `DELETE /v1/key/{id}`.
    pub async fn delete(&self, caller: &Caller, id: &str, pair: bool) -> Result<(), Error> {
        let id = self.authorize(caller, id)?;
        self.stores.for_id(&id)?.delete(&id, pair).await
    }

    /// Renames key pair `from` to `to` (both granted to the caller, both in
    /// one store), replacing what `to` named; a handle of the result.
    pub async fn move_key_pair(
        &self,
        caller: &Caller,
        from: &str,
        to: &str,
        holder: Holder,
    ) -> Result<HandleResponse, Error> {
        let from = self.authorize(caller, from)?;
        let to = self.authorize(caller, to)?;
        let (from_kind, to_kind) = (self.stores.kind_for(&from), self.stores.kind_for(&to));
        if from_kind != to_kind {
            return Err(Error::BadRequest(format!(
                "key '{from}' is kept in the {from_kind} store and '{to}' in the {to_kind} store: a key does not move between stores"
            )));
        }
        if from == to {
            return self.find(caller, from.as_str(), true, holder).await;
        }
        let record = self.stores.for_id(&from)?.move_key_pair(&from, &to).await?;
        Ok(self.handle_for(to, record.generation, holder))
    }

    /// Deletes the key a handle names (a key pair if `pair`, else a
    /// symmetric key), if it is still the key the handle was issued for.
    pub async fn delete_by_handle(
        &self,
        caller: &Caller,
        handle: &KeyHandle,
        pair: bool,
    ) -> Result<(), Error> {
        let (key, store) = self.open_handle(caller, handle)?;
        if !key.derivation.is_empty() {
            return Err(Error::BadRequest(
                "a derived key is not stored, so it is not deleted: delete its base".into(),
            ));
        }
        let record = store
            .find(&key.id)
            .await?
            .ok_or_else(|| no_such_key(&key.id, pair))?;
        record.check(&key)?;
        record.check_class(pair)?;
        store.delete(&key.id, pair).await
    }

    /// `GET /v1/health`: version and each store's state. Open to any caller.
    /// `GET /v1/keys`: the keys the caller may use, in every open store.
    pub async fn list(&self, caller: &Caller) -> Result<KeyList, Error> {
        let mut keys = Vec::new();
        for (kind, store) in &self.stores.open {
            for record in store.list().await? {
                if self.access.allows(caller, record.id.as_str()) {
                    keys.push(KeyInfo {
                        id: record.id.as_str().to_owned(),
                        kind: record.kind.to_string(),
                        backend: kind.to_string(),
                    });
                }
            }
        }
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(KeyList { keys })
    }

    pub async fn health(&self) -> Health {
        let mut backends = BTreeMap::new();
        for (kind, store) in &self.stores.open {
            let state = match store.health().await {
                Ok(()) => "ok".to_owned(),
                Err(why) => why,
            };
            backends.insert(kind.to_string(), state);
        }
        if let Some(why) = &self.stores.locked {
            backends.insert(BackendKind::Software.to_string(), format!("locked: {why}"));
        }
        Health::of(backends)
    }
}
