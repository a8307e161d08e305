//! The aziot keys API's routes (`/keypair`, `/key`, `/sign`, ... with
//! `?api-version=`), as aziot-keyd serves them: the api-version first,
//! then the route; a body that is not the expected JSON is a 422.
//!
//! Who may do what is the reference's: creating, loading and moving keys
//! by id needs a grant of the id (uid 0 and keyd's own uid have all);
//! everything done with a handle needs only the handle, which these routes
//! issue as bearer handles. What the reference and edgeid differ on is said
//! where it happens: derivation only from keyd's `derive_only` bases,
//! export only under an `export` grant, RSA only through PKCS#1 v1.5
//! SHA-256 (no raw RSA), AEAD with keyd's own random nonce (`iv` is bound
//! as associated data); the reference's own AEAD ciphertexts are opened
//! too, for a key taken over from it.

use std::sync::LazyLock;

use edgeid_common::encoding::{Base64Bytes, SecretBytes};
use edgeid_common::routes::Routes;
use edgeid_common::{ApiError, ApiRequest, ApiResponse, Caller};
use http::{Method, StatusCode};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::der::{Decode, Encode};
use p256::pkcs8::{AssociatedOid, DecodePublicKey};
use serde::de::DeserializeOwned;

use crate::api::aziot::*;
use crate::api::{self as edgeid, KeyPairSpec, SignAlgorithm, SymmetricKeyType};
use crate::backend::PublicKey;
use crate::error::Error;
use crate::keys::{Holder, Keyd};

#[derive(Debug, Clone, Copy)]
enum Route {
    CreateKeyPair,
    DeleteKeyPair,
    LoadKeyPair,
    MoveKeyPair,
    CreateKey,
    DeleteKey,
    LoadKey,
    Parameter,
    Sign,
    Encrypt,
    Decrypt,
    Derive,
    Export,
}

static ROUTES: LazyLock<Routes<Route>> = LazyLock::new(|| {
    Routes::new(&[
        (Method::POST, "/keypair", Route::CreateKeyPair),
        (Method::DELETE, "/keypair", Route::DeleteKeyPair),
        (Method::GET, "/keypair/{*id}", Route::LoadKeyPair),
        (Method::POST, "/keypair/{*id}", Route::MoveKeyPair),
        (Method::POST, "/key", Route::CreateKey),
        (Method::DELETE, "/key", Route::DeleteKey),
        (Method::GET, "/key/{*id}", Route::LoadKey),
        (Method::POST, "/parameters/{name}", Route::Parameter),
        (Method::POST, "/sign", Route::Sign),
        (Method::POST, "/encrypt", Route::Encrypt),
        (Method::POST, "/decrypt", Route::Decrypt),
        (Method::POST, "/derivedkey", Route::Derive),
        (Method::POST, "/derivedkey/export", Route::Export),
    ])
});

/// The DigestInfo prefix of a SHA-256 digest (RFC 8017 section 9.2, note
/// 1): what OpenSSL hands an RSA key to sign for `RSA-PKCS1`.
const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

/// Binds an AEAD request's `iv` into the associated data: keyd picks its
/// own random nonce, and a ciphertext opens only with the `iv` and `aad` it
/// was made with, as the reference's does.
fn aead_aad(iv: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut bound = Vec::with_capacity(18 + iv.len() + aad.len());
    bound.extend_from_slice(b"aziot-aead-v1\0");
    bound.extend_from_slice(&u32::try_from(iv.len()).unwrap_or(u32::MAX).to_be_bytes());
    bound.extend_from_slice(iv);
    bound.extend_from_slice(aad);
    bound
}

/// Whether a route names a key by id (and so needs a grant of it), which
/// a caller who is nobody here is refused before its body is read.
fn names_key_by_id(method: &Method, path: &str) -> bool {
    *method != Method::DELETE
        && (matches!(path, "/keypair" | "/key")
            || path.starts_with("/keypair/")
            || path.starts_with("/key/"))
}

impl Keyd {
    pub(super) fn admit_aziot(
        &self,
        caller: &Caller,
        method: &Method,
        path: &str,
    ) -> Option<ApiResponse> {
        if !names_key_by_id(method, path) {
            return None;
        }
        self.refuse_stranger(caller)
    }

    pub(super) async fn handle_aziot(&self, req: ApiRequest) -> ApiResponse {
        let (_, route, params) = match ROUTES.find_versioned(&req, API_VERSIONS) {
            Ok(found) => found,
            Err(answer) => return answer,
        };
        let caller = &req.caller;
        let id = params.get("id").unwrap_or_default();
        let ok = StatusCode::OK;
        macro_rules! body {
            () => {
                match body(&req) {
                    Ok(body) => body,
                    Err(answer) => return answer,
                }
            };
        }
        match route {
            Route::CreateKeyPair => {
                let req: CreateKeyPairRequest = body!();
                let preferred = preferred_algorithms(req.preferred_algorithms.as_deref());
                let result = self
                    .load_or_create_key_pair(caller, &req.id, &preferred, Holder::Bearer)
                    .await;
                answer(ok, result.map(handle))
            }
            Route::LoadKeyPair | Route::LoadKey => {
                let pair = matches!(route, Route::LoadKeyPair);
                answer(
                    ok,
                    self.find(caller, id, pair, Holder::Bearer)
                        .await
                        .map(handle),
                )
            }
            Route::MoveKeyPair => {
                let req: MoveRequest = body!();
                if req.from == id {
                    return ApiResponse::error(&ApiError::bad_request(
                        "source and destination for move are identical",
                    ));
                }
                done(
                    self.move_key_pair(caller, &req.from, id, Holder::Bearer)
                        .await,
                )
            }
            Route::DeleteKeyPair | Route::DeleteKey => {
                let req: DeleteRequest = body!();
                let pair = matches!(route, Route::DeleteKeyPair);
                done(self.delete_by_handle(caller, &req.handle, pair).await)
            }
            Route::CreateKey => {
                let req: CreateKeyRequest = body!();
                let result = match symmetric_type(&req.usage) {
                    Ok(key_type) => {
                        let create = edgeid::CreateKeyRequest {
                            id: req.id,
                            key_type,
                            import: req.key_bytes,
                        };
                        self.create_key(caller, create, Holder::Bearer).await
                    }
                    Err(e) => Err(e),
                };
                answer(ok, result.map(handle))
            }
            Route::Parameter => {
                let req: ParameterRequest = body!();
                let name = params.get("name").unwrap_or_default();
                let result = match self.public_key_of(caller, &req.handle).await {
                    Ok(public) => public_parameter(&public, name),
                    Err(e) => Err(e),
                };
                answer(ok, result.map(|value| ParameterResponse { value }))
            }
            Route::Sign => {
                let req: SignRequest = body!();
                let (algorithm, data, prehashed) = match req.parameters {
                    SignParameters::Ecdsa { digest } => match ecdsa_for(&digest.0) {
                        Ok(algorithm) => (algorithm, digest, true),
                        Err(e) => return ApiResponse::error(&e),
                    },
                    SignParameters::HmacSha256 { message } => {
                        (SignAlgorithm::HmacSha256, message, false)
                    }
                };
                let result = self
                    .sign_aziot(caller, req.handle, algorithm, data, prehashed)
                    .await;
                answer(ok, result.map(|signature| SignResponse { signature }))
            }
            Route::Encrypt => {
                let req: EncryptRequest = body!();
                match req.parameters {
                    EncryptParameters::Aead { iv, aad } => {
                        let crypt = edgeid::CryptRequest {
                            handle: req.handle,
                            data: req.plaintext,
                            aad: Some(Base64Bytes(aead_aad(&iv.0, &aad.0))),
                        };
                        let result = self.encrypt(caller, crypt).await;
                        answer(ok, result.map(|r| EncryptResponse { ciphertext: r.data }))
                    }
                    EncryptParameters::RsaPkcs1 => {
                        // The reference's engine signs with RSA this way:
                        // the "plaintext" is a DigestInfo.
                        match req.plaintext.0.strip_prefix(&SHA256_DIGEST_INFO[..]) {
                            Some(digest) if digest.len() == 32 => {
                                let digest = Base64Bytes(digest.to_vec());
                                let result = self
                                    .sign_aziot(
                                        caller,
                                        req.handle,
                                        SignAlgorithm::RsaPkcs1Sha256,
                                        digest,
                                        true,
                                    )
                                    .await;
                                answer(ok, result.map(|ciphertext| EncryptResponse { ciphertext }))
                            }
                            _ => ApiResponse::error(&ApiError::bad_request(
                                "RSA-PKCS1 takes a SHA-256 DigestInfo (the one form keyd's RSA keys sign); other digests and RSA encryption are not supported",
                            )),
                        }
                    }
                    EncryptParameters::RsaNoPadding => ApiResponse::error(&ApiError::bad_request(
                        "RSA-NO-PADDING is not supported: keyd performs no raw RSA private-key operation; sign with RSA-PKCS1 over a SHA-256 DigestInfo",
                    )),
                }
            }
            Route::Decrypt => {
                let req: DecryptRequest = body!();
                match req.parameters {
                    EncryptParameters::Aead { iv, aad } => {
                        let crypt = edgeid::CryptRequest {
                            handle: req.handle,
                            data: req.ciphertext,
                            aad: Some(Base64Bytes(aead_aad(&iv.0, &aad.0))),
                        };
                        let result = self.decrypt_aziot(caller, crypt, &iv.0, &aad.0).await;
                        answer(
                            ok,
                            result.map(|r| DecryptResponse {
                                plaintext: SecretBytes(zeroize::Zeroizing::new(r.data.0)),
                            }),
                        )
                    }
                    _ => ApiResponse::error(&ApiError::bad_request(
                        "decrypt takes AEAD alone (as the reference)",
                    )),
                }
            }
            Route::Derive => {
                let req: DeriveRequest = body!();
                let derive = edgeid::DeriveRequest {
                    handle: req.base_handle,
                    info: req.derivation_data,
                };
                answer(ok, self.derive(caller, derive).await.map(handle))
            }
            Route::Export => {
                let req: ExportRequest = body!();
                let export = edgeid::ExportRequest { handle: req.handle };
                answer(
                    ok,
                    self.export(caller, export)
                        .await
                        .map(|r| ExportResponse { key: r.key }),
                )
            }
        }
    }

    async fn sign_aziot(
        &self,
        caller: &Caller,
        handle: edgeid::KeyHandle,
        algorithm: SignAlgorithm,
        data: Base64Bytes,
        prehashed: bool,
    ) -> Result<Base64Bytes, Error> {
        let sign = edgeid::SignRequest {
            handle,
            algorithm,
            data,
            prehashed,
        };
        Ok(self.sign(caller, sign).await?.signature)
    }
}

/// The body as the reference reads it: absent is a 400, not the JSON the
/// route takes is a 422.
fn body<T: DeserializeOwned>(req: &ApiRequest) -> Result<T, ApiResponse> {
    req.required_json_or_unprocessable()
        .map_err(|e| ApiResponse::error(&e))
}

fn answer<T: serde::Serialize>(ok: StatusCode, result: Result<T, Error>) -> ApiResponse {
    ApiResponse::from_result(ok, result)
}

fn done(result: Result<impl Sized, Error>) -> ApiResponse {
    match result {
        Ok(_) => ApiResponse::no_content(),
        Err(e) => ApiResponse::error(&e),
    }
}

fn handle(r: edgeid::HandleResponse) -> HandleResponse {
    HandleResponse { handle: r.handle }
}

/// `preferredAlgorithms` as the reference reads it: `:`-separated, `*`
/// meaning its defaults, unknown names skipped, repeats dropped; absent is
/// `ec-p256:rsa-2048:*`. keyd also makes ec-p384 and rsa-3072.
fn preferred_algorithms(list: Option<&str>) -> Vec<KeyPairSpec> {
    let mut specs = Vec::new();
    let mut add = |spec| {
        if !specs.contains(&spec) {
            specs.push(spec);
        }
    };
    for name in list.unwrap_or(DEFAULT_PREFERRED_ALGORITHMS).split(':') {
        match name {
            "*" => {
                add(KeyPairSpec::EcP256);
                add(KeyPairSpec::Rsa2048);
            }
            "ec-p256" => add(KeyPairSpec::EcP256),
            "ec-p384" => add(KeyPairSpec::EcP384),
            "rsa-2048" => add(KeyPairSpec::Rsa2048),
            "rsa-3072" => add(KeyPairSpec::Rsa3072),
            "rsa-4096" => add(KeyPairSpec::Rsa4096),
            _ => {}
        }
    }
    specs
}

/// The symmetric key an aziot `usage` asks for: `encrypt` is an AES-256-GCM
/// key; `sign` and `derive` an HMAC-SHA256 key. One key does not do both.
fn symmetric_type(usage: &str) -> Result<SymmetricKeyType, Error> {
    let (mut encrypt, mut mac) = (false, false);
    for u in usage.split(',') {
        match u {
            "encrypt" => encrypt = true,
            "sign" | "derive" => mac = true,
            other => {
                return Err(Error::BadRequest(format!(
                    "invalid key usage \"{}\": expected derive, encrypt or sign, ','-separated",
                    other
                        .chars()
                        .take(32)
                        .flat_map(char::escape_default)
                        .collect::<String>()
                )))
            }
        }
    }
    match (encrypt, mac) {
        (true, false) => Ok(SymmetricKeyType::Aes256Gcm),
        (false, true) => Ok(SymmetricKeyType::HmacSha256),
        _ => Err(Error::BadRequest(
            "a key is for encrypt, or for sign and derive, not both: keyd keeps AES and HMAC keys apart".into(),
        )),
    }
}

/// ECDSA over a digest: its length says which hash made it.
fn ecdsa_for(digest: &[u8]) -> Result<SignAlgorithm, ApiError> {
    match digest.len() {
        32 => Ok(SignAlgorithm::EcdsaSha256),
        48 => Ok(SignAlgorithm::EcdsaSha384),
        n => Err(ApiError::bad_request(format!(
            "an ECDSA digest is 32 bytes (SHA-256, for ec-p256 keys) or 48 (SHA-384, for ec-p384); this one is {n}"
        ))),
    }
}

/// One public parameter of a key pair, as the reference encodes it: the
/// algorithm's name, or base64 of the curve's OID (DER), the compressed
/// point, the modulus or the exponent (big-endian, no leading zeros).
fn public_parameter(public: &PublicKey, name: &str) -> Result<String, Error> {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    let bad_key = |_| Error::Internal("a stored public key does not parse".into());
    let ec = |oid: p256::pkcs8::ObjectIdentifier, point: Vec<u8>| -> Result<String, Error> {
        match name {
            "algorithm" => Ok("ECDSA".to_owned()),
            "ec-curve-oid" => Ok(STANDARD.encode(
                oid.to_der()
                    .map_err(|_| Error::Internal("cannot encode a curve OID".into()))?,
            )),
            "ec-point" => Ok(STANDARD.encode(point)),
            other => Err(not_a_parameter(other, "an EC key")),
        }
    };
    match public.spec {
        KeyPairSpec::EcP256 => {
            let key = p256::PublicKey::from_public_key_der(&public.spki_der).map_err(bad_key)?;
            ec(
                p256::NistP256::OID,
                key.to_encoded_point(true).as_bytes().to_vec(),
            )
        }
        KeyPairSpec::EcP384 => {
            let key = p384::PublicKey::from_public_key_der(&public.spki_der).map_err(bad_key)?;
            ec(
                p384::NistP384::OID,
                key.to_encoded_point(true).as_bytes().to_vec(),
            )
        }
        KeyPairSpec::Rsa2048 | KeyPairSpec::Rsa3072 | KeyPairSpec::Rsa4096 => {
            let spki = spki::SubjectPublicKeyInfoRef::from_der(&public.spki_der)
                .map_err(|_| Error::Internal("a stored public key does not parse".into()))?;
            let rsa = pkcs1::RsaPublicKey::from_der(spki.subject_public_key.raw_bytes())
                .map_err(|_| Error::Internal("a stored RSA key does not parse".into()))?;
            match name {
                "algorithm" => Ok("RSA".to_owned()),
                "rsa-modulus" => Ok(STANDARD.encode(rsa.modulus.as_bytes())),
                "rsa-exponent" => Ok(STANDARD.encode(rsa.public_exponent.as_bytes())),
                other => Err(not_a_parameter(other, "an RSA key")),
            }
        }
        KeyPairSpec::Ed25519 => Err(Error::BadRequest(
            "an ed25519 key has no parameters in the aziot keys API (it knows ECDSA and RSA keys); use edgeid's /v1/public-key".into(),
        )),
    }
}

fn not_a_parameter(name: &str, of: &str) -> Error {
    Error::BadRequest(format!(
        "\"{}\" is not a parameter of {of}: algorithm, ec-curve-oid, ec-point (EC), rsa-modulus, rsa-exponent (RSA)",
        name.chars().take(32).flat_map(char::escape_default).collect::<String>()
    ))
}
