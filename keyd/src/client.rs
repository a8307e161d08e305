//! The typed client for keyd, used by the other daemons, edgeidctl and tests.

use std::path::Path;

use edgeid_common::client::{ClientError, UdsClient};
use edgeid_common::encoding::{Base64Bytes, SecretBytes};
use edgeid_common::server::Health;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use zeroize::Zeroizing;

use crate::api::*;

/// A client for keyd's socket. Cheap to clone; clones share connections.
#[derive(Debug, Clone)]
pub struct KeydClient {
    http: UdsClient,
}

impl KeydClient {
    /// A client for the keyd listening on `socket`.
    pub fn new(socket: impl AsRef<Path>) -> Self {
        Self {
            http: UdsClient::new(socket),
        }
    }

    /// The underlying transport, for raw requests.
    pub fn transport(&self) -> &UdsClient {
        &self.http
    }

    /// Creates a key pair, or loads the existing one with the same spec.
    pub async fn create_key_pair(
        &self,
        id: &str,
        spec: KeyPairSpec,
    ) -> Result<KeyHandle, ClientError> {
        let req = CreateKeyPairRequest {
            id: id.to_owned(),
            spec,
        };
        Ok(self
            .http
            .post::<_, HandleResponse>("/v1/keypair", &req)
            .await?
            .handle)
    }

    /// The handle of an existing key pair.
    pub async fn key_pair(&self, id: &str) -> Result<KeyHandle, ClientError> {
        Ok(self
            .http
            .get::<HandleResponse>(&format!("/v1/keypair/{}", encode(id)))
            .await?
            .handle)
    }

    /// The handle of an existing symmetric key.
    pub async fn key(&self, id: &str) -> Result<KeyHandle, ClientError> {
        Ok(self
            .http
            .get::<HandleResponse>(&format!("/v1/key/{}", encode(id)))
            .await?
            .handle)
    }

    /// A bearer handle of the existing key pair `id` (the kind the aziot
    /// keys API issues: whoever holds it may use it), for a caller granted
    /// `id`; for handing on to aziot clients.
    pub async fn bearer_key_pair(&self, id: &str) -> Result<KeyHandle, ClientError> {
        self.bearer(&format!("/keypair/{}", encode(id))).await
    }

    /// A bearer handle of the existing symmetric key `id` (see
    /// [`Self::bearer_key_pair`]); what is derived from it is bearer too.
    pub async fn bearer_key(&self, id: &str) -> Result<KeyHandle, ClientError> {
        self.bearer(&format!("/key/{}", encode(id))).await
    }

    async fn bearer(&self, path: &str) -> Result<KeyHandle, ClientError> {
        let version = crate::api::aziot::API_VERSIONS[0];
        Ok(self
            .http
            .get::<crate::api::aziot::HandleResponse>(&format!("{path}?api-version={version}"))
            .await?
            .handle)
    }

    /// The public key, SubjectPublicKeyInfo PEM.
    pub async fn public_key(&self, handle: &KeyHandle) -> Result<PublicKeyResponse, ClientError> {
        self.http
            .post(
                "/v1/public-key",
                &PublicKeyRequest {
                    handle: handle.clone(),
                },
            )
            .await
    }

    /// Signs a message (or a digest, if `prehashed`), or computes its MAC.
    pub async fn sign(
        &self,
        handle: &KeyHandle,
        algorithm: SignAlgorithm,
        data: &[u8],
        prehashed: bool,
    ) -> Result<Vec<u8>, ClientError> {
        let req = SignRequest {
            handle: handle.clone(),
            algorithm,
            data: Base64Bytes(data.to_vec()),
            prehashed,
        };
        Ok(self
            .http
            .post::<_, SignResponse>("/v1/sign", &req)
            .await?
            .signature
            .0)
    }

    /// Creates a symmetric key, or imports `import`.
    pub async fn create_key(
        &self,
        id: &str,
        key_type: SymmetricKeyType,
        import: Option<&[u8]>,
    ) -> Result<KeyHandle, ClientError> {
        let req = CreateKeyRequest {
            id: id.to_owned(),
            key_type,
            import: import.map(|b| SecretBytes(Zeroizing::new(b.to_vec()))),
        };
        Ok(self
            .http
            .post::<_, HandleResponse>("/v1/key", &req)
            .await?
            .handle)
    }

    /// A handle for the key derived from `handle` with `info`.
    pub async fn derive(&self, handle: &KeyHandle, info: &[u8]) -> Result<KeyHandle, ClientError> {
        let req = DeriveRequest {
            handle: handle.clone(),
            info: Base64Bytes(info.to_vec()),
        };
        Ok(self
            .http
            .post::<_, HandleResponse>("/v1/derive", &req)
            .await?
            .handle)
    }

    /// The bytes of a key `derive` made (for a caller granted `export`).
    pub async fn export(&self, handle: &KeyHandle) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        let req = ExportRequest {
            handle: handle.clone(),
        };
        Ok(self
            .http
            .post::<_, ExportResponse>("/v1/export", &req)
            .await?
            .key
            .0)
    }

    /// AES-256-GCM encryption; the result carries its nonce.
    pub async fn encrypt(
        &self,
        handle: &KeyHandle,
        plaintext: &[u8],
        aad: Option<&[u8]>,
    ) -> Result<Vec<u8>, ClientError> {
        self.crypt("/v1/encrypt", handle, plaintext, aad).await
    }

    /// Decrypts what `encrypt` returned.
    pub async fn decrypt(
        &self,
        handle: &KeyHandle,
        ciphertext: &[u8],
        aad: Option<&[u8]>,
    ) -> Result<Vec<u8>, ClientError> {
        self.crypt("/v1/decrypt", handle, ciphertext, aad).await
    }

    async fn crypt(
        &self,
        path: &str,
        handle: &KeyHandle,
        data: &[u8],
        aad: Option<&[u8]>,
    ) -> Result<Vec<u8>, ClientError> {
        let req = CryptRequest {
            handle: handle.clone(),
            data: Base64Bytes(data.to_vec()),
            aad: aad.map(|a| Base64Bytes(a.to_vec())),
        };
        Ok(self.http.post::<_, CryptResponse>(path, &req).await?.data.0)
    }

    /// The keys this caller may use, in every store.
    pub async fn list_keys(&self) -> Result<Vec<KeyInfo>, ClientError> {
        Ok(self.http.get::<KeyList>("/v1/keys").await?.keys)
    }

    /// Deletes a key pair.
    pub async fn delete_key_pair(&self, id: &str) -> Result<(), ClientError> {
        self.http
            .delete(&format!("/v1/keypair/{}", encode(id)))
            .await
    }

    /// Deletes a symmetric key.
    pub async fn delete_key(&self, id: &str) -> Result<(), ClientError> {
        self.http.delete(&format!("/v1/key/{}", encode(id))).await
    }

    /// The TPM's endorsement key (and certificate) and keyd's storage key.
    pub async fn tpm_attestation_keys(&self) -> Result<TpmAttestationKeys, ClientError> {
        self.http.get("/v1/tpm/attestation-keys").await
    }

    /// Activates a provisioning service's credential and imports the HMAC key
    /// it wraps into the TPM as `id`.
    pub async fn tpm_activate(&self, id: &str, blob: &[u8]) -> Result<KeyHandle, ClientError> {
        let req = TpmActivateRequest {
            id: id.to_owned(),
            blob: Base64Bytes(blob.to_vec()),
        };
        Ok(self
            .http
            .post::<_, HandleResponse>("/v1/tpm/activate", &req)
            .await?
            .handle)
    }

    /// The attestation key's public parts (keyd makes it on first use).
    pub async fn tpm_ak(&self) -> Result<TpmAttestationKey, ClientError> {
        self.http.get("/v1/tpm/ak").await
    }

    /// The secret of a credential made for the EK and the AK's name.
    pub async fn tpm_ak_activate(
        &self,
        credential: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        let req = TpmAkActivateRequest {
            credential: Base64Bytes(credential.to_vec()),
        };
        let answer: TpmAkActivateResponse = self.http.post("/v1/tpm/ak/activate", &req).await?;
        Ok(answer.secret.0)
    }

    /// A quote of `pcrs` (bank name, indexes) over `nonce`, with the IMA
    /// log from `ima_offset`.
    pub async fn tpm_quote(
        &self,
        nonce: &[u8],
        pcrs: &[(String, Vec<u32>)],
        ima_offset: u64,
    ) -> Result<TpmQuoteResponse, ClientError> {
        let req = TpmQuoteRequest {
            nonce: Base64Bytes(nonce.to_vec()),
            pcrs: pcrs.iter().cloned().collect(),
            ima_offset,
        };
        self.http.post("/v1/tpm/quote", &req).await
    }

    /// The AK's certification of a TPM key, over `nonce` if given.
    pub async fn tpm_certify(
        &self,
        handle: &KeyHandle,
        nonce: Option<&[u8]>,
    ) -> Result<TpmCertifyResponse, ClientError> {
        let req = TpmCertifyRequest {
            handle: handle.clone(),
            nonce: nonce.map(|n| Base64Bytes(n.to_vec())),
        };
        self.http.post("/v1/tpm/certify", &req).await
    }

    /// keyd's version and backend states.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.http.get("/v1/health").await
    }
}

fn encode(id: &str) -> String {
    utf8_percent_encode(id, NON_ALPHANUMERIC).to_string()
}
