//! Keys held in keyd, as signers for rcgen (certificates, CSRs) and rustls
//! (TLS client and server authentication). The private key never leaves keyd:
//! each signature is one keyd request, so a key in the TPM or on an HSM works
//! exactly like a software one.

use std::fmt;
use std::sync::{Arc, Mutex};

use edgeid_keyd::api::{KeyHandle, KeyPairSpec, SignAlgorithm};
use edgeid_keyd::KeydClient;
use rustls::{sign::Signer, SignatureScheme};
use spki::der::Decode;

use crate::error::Error;

/// A key pair in keyd, with its public key at hand.
pub struct KeydKey {
    keyd: KeydClient,
    id: String,
    handle: KeyHandle,
    spec: KeyPairSpec,
    spki: Vec<u8>,
    /// The SubjectPublicKeyInfo's key bits (rcgen's `der_bytes`).
    key_bits: Vec<u8>,
    runtime: tokio::runtime::Handle,
    /// Why the last signature failed (rcgen's error type cannot carry it).
    last_error: Mutex<Option<String>>,
}

impl fmt::Debug for KeydKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeydKey({}, {})", self.id, self.spec)
    }
}

impl KeydKey {
    /// The key `id`, created with `spec` if absent.
    pub async fn create_or_load(
        keyd: &KeydClient,
        id: &str,
        spec: KeyPairSpec,
    ) -> Result<Self, Error> {
        let handle = keyd
            .create_key_pair(id, spec)
            .await
            .map_err(|e| Error::from_keyd(&format!("key '{id}'"), e))?;
        Self::from_handle(keyd, id, handle).await
    }

    /// The existing key `id`.
    pub async fn load(keyd: &KeydClient, id: &str) -> Result<Self, Error> {
        let handle = keyd
            .key_pair(id)
            .await
            .map_err(|e| Error::from_keyd(&format!("key '{id}'"), e))?;
        Self::from_handle(keyd, id, handle).await
    }

    /// A key a caller handed certd by its handle (the aziot API's
    /// `issuer.privateKeyHandle`): a handle keyd refuses is the caller's
    /// mistake (400), not certd's; `label` names it in errors.
    pub async fn for_callers_handle(
        keyd: &KeydClient,
        label: &str,
        handle: KeyHandle,
    ) -> Result<Self, Error> {
        Self::from_handle(keyd, label, handle)
            .await
            .map_err(|e| match e {
                Error::Unavailable(_) => e,
                other => Error::BadRequest(format!("{label}: {other}")),
            })
    }

    async fn from_handle(keyd: &KeydClient, id: &str, handle: KeyHandle) -> Result<Self, Error> {
        let public = keyd
            .public_key(&handle)
            .await
            .map_err(|e| Error::from_keyd(&format!("public key of '{id}'"), e))?;
        let spki = pem::parse(&public.pem)
            .map_err(|e| Error::Internal(format!("keyd sent an unreadable public key: {e}")))?
            .into_contents();
        let key_bits = spki::SubjectPublicKeyInfoRef::from_der(&spki)
            .map_err(|e| Error::Internal(format!("keyd sent an unreadable public key: {e}")))?
            .subject_public_key
            .raw_bytes()
            .to_vec();
        Ok(Self {
            keyd: keyd.clone(),
            id: id.to_owned(),
            handle,
            spec: public.spec,
            spki,
            key_bits,
            runtime: tokio::runtime::Handle::current(),
            last_error: Mutex::new(None),
        })
    }

    /// Its id in keyd.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its spec.
    pub fn spec(&self) -> KeyPairSpec {
        self.spec
    }

    /// SubjectPublicKeyInfo, DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// Why the last signature failed, as an error for certd's caller.
    pub fn failure(&self, doing: &str) -> Error {
        let why = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match why {
            Some(why) => Error::Unavailable(format!(
                "{doing}: keyd could not sign with '{}': {why}",
                self.id
            )),
            None => Error::Internal(format!("{doing} failed")),
        }
    }

    /// Signs through keyd from synchronous code (rcgen, rustls): on a blocking
    /// thread directly, on a runtime worker under `block_in_place`.
    fn sign_blocking(&self, algorithm: SignAlgorithm, message: &[u8]) -> Result<Vec<u8>, String> {
        let run = || {
            self.runtime
                .block_on(self.keyd.sign(&self.handle, algorithm, message, false))
                .map_err(|e| e.to_string())
        };
        let result = match tokio::runtime::Handle::try_current() {
            Err(_) => run(),
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(run)
            }
            Ok(_) => Err("signing through keyd needs tokio's multi-threaded runtime".into()),
        };
        if let Err(why) = &result {
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
        }
        result
    }

    /// The algorithm certificates and CSRs are signed with.
    fn x509_algorithm(&self) -> (SignAlgorithm, &'static rcgen::SignatureAlgorithm) {
        match self.spec {
            KeyPairSpec::EcP256 => (SignAlgorithm::EcdsaSha256, &rcgen::PKCS_ECDSA_P256_SHA256),
            KeyPairSpec::EcP384 => (SignAlgorithm::EcdsaSha384, &rcgen::PKCS_ECDSA_P384_SHA384),
            KeyPairSpec::Rsa2048 | KeyPairSpec::Rsa3072 | KeyPairSpec::Rsa4096 => {
                (SignAlgorithm::RsaPkcs1Sha256, &rcgen::PKCS_RSA_SHA256)
            }
            KeyPairSpec::Ed25519 => (SignAlgorithm::Ed25519, &rcgen::PKCS_ED25519),
        }
    }
}

impl rcgen::PublicKeyData for KeydKey {
    fn der_bytes(&self) -> &[u8] {
        &self.key_bits
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.x509_algorithm().1
    }
}

impl rcgen::SigningKey for KeydKey {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.sign_blocking(self.x509_algorithm().0, message)
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

/// A keyd key as a rustls signing key: TLS handshakes sign through keyd.
#[derive(Debug, Clone)]
pub struct TlsKey(pub Arc<KeydKey>);

impl rustls::sign::SigningKey for TlsKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let ours: &[(SignatureScheme, SignAlgorithm)] = match self.0.spec {
            KeyPairSpec::EcP256 => &[(
                SignatureScheme::ECDSA_NISTP256_SHA256,
                SignAlgorithm::EcdsaSha256,
            )],
            KeyPairSpec::EcP384 => &[(
                SignatureScheme::ECDSA_NISTP384_SHA384,
                SignAlgorithm::EcdsaSha384,
            )],
            KeyPairSpec::Rsa2048 | KeyPairSpec::Rsa3072 | KeyPairSpec::Rsa4096 => &[
                (SignatureScheme::RSA_PSS_SHA256, SignAlgorithm::RsaPssSha256),
                (
                    SignatureScheme::RSA_PKCS1_SHA256,
                    SignAlgorithm::RsaPkcs1Sha256,
                ),
            ],
            KeyPairSpec::Ed25519 => &[(SignatureScheme::ED25519, SignAlgorithm::Ed25519)],
        };
        ours.iter()
            .find(|(scheme, _)| offered.contains(scheme))
            .map(|&(scheme, algorithm)| {
                Box::new(TlsSigner {
                    key: self.0.clone(),
                    scheme,
                    algorithm,
                }) as Box<dyn Signer>
            })
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        match self.0.spec {
            KeyPairSpec::EcP256 | KeyPairSpec::EcP384 => rustls::SignatureAlgorithm::ECDSA,
            KeyPairSpec::Rsa2048 | KeyPairSpec::Rsa3072 | KeyPairSpec::Rsa4096 => {
                rustls::SignatureAlgorithm::RSA
            }
            KeyPairSpec::Ed25519 => rustls::SignatureAlgorithm::ED25519,
        }
    }
}

#[derive(Debug)]
struct TlsSigner {
    key: Arc<KeydKey>,
    scheme: SignatureScheme,
    algorithm: SignAlgorithm,
}

impl Signer for TlsSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.key
            .sign_blocking(self.algorithm, message)
            .map_err(|why| {
                rustls::Error::General(format!("keyd could not sign the handshake: {why}"))
            })
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

/// A rustls client config trusting `roots`, presenting `identity` (a chain,
/// leaf first, in DER, and its key in keyd) when the server asks for one.
pub fn tls_client_config(
    roots: Arc<rustls::RootCertStore>,
    identity: Option<(Vec<Vec<u8>>, Arc<KeydKey>)>,
) -> rustls::ClientConfig {
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    match identity {
        Some((chain, key)) => {
            let certs = chain
                .into_iter()
                .map(rustls::pki_types::CertificateDer::from)
                .collect();
            let certified = rustls::sign::CertifiedKey::new(certs, Arc::new(TlsKey(key)));
            builder.with_client_cert_resolver(Arc::new(ClientIdentity(Arc::new(certified))))
        }
        None => builder.with_no_client_auth(),
    }
}

/// Always presents the one client identity.
#[derive(Debug)]
struct ClientIdentity(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
