//! The software store's key material in memory: aws-lc key objects (which
//! clear their memory when freed) and symmetric bytes in `Zeroizing`, made
//! from PKCS#8 or raw bytes, or generated.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use zeroize::Zeroizing;

use crate::api::{KeyPairSpec, SymmetricKeyType};
use crate::backend::KeyKind;
use crate::error::Error;

pub(super) enum Material {
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
    /// The key's bytes, and (HMAC keys) its HMAC key schedule, made once
    /// rather than on every signature; a derived key's is made per use.
    Symmetric(Zeroizing<Vec<u8>>, Option<Box<hmac::Key>>),
}

pub(super) fn generate_pkcs8(spec: KeyPairSpec) -> Result<Zeroizing<Vec<u8>>, Error> {
    let rng = SystemRandom::new();
    let failed = || Error::Internal(format!("{spec} key generation failed"));
    let bytes = match spec {
        KeyPairSpec::EcP256 => {
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
                .map(|d| d.as_ref().to_vec())
        }
        KeyPairSpec::EcP384 => {
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P384_SHA384_ASN1_SIGNING, &rng)
                .map(|d| d.as_ref().to_vec())
        }
        KeyPairSpec::Ed25519 => Ed25519KeyPair::generate_pkcs8(&rng).map(|d| d.as_ref().to_vec()),
        KeyPairSpec::Rsa2048 | KeyPairSpec::Rsa3072 | KeyPairSpec::Rsa4096 => {
            let size = match spec {
                KeyPairSpec::Rsa2048 => KeySize::Rsa2048,
                KeyPairSpec::Rsa3072 => KeySize::Rsa3072,
                _ => KeySize::Rsa4096,
            };
            RsaKeyPair::generate(size)
                .and_then(|k| k.as_der())
                .map(|d| d.as_ref().to_vec())
        }
    };
    bytes.map(Zeroizing::new).map_err(|_| failed())
}

/// The spec and public key of a PKCS#8 key pair keyd can hold.
pub(super) fn pkcs8_pair(pkcs8: &[u8]) -> Option<(KeyPairSpec, Vec<u8>)> {
    let spec = if EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8)
        .is_ok()
    {
        KeyPairSpec::EcP256
    } else if EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_ASN1_SIGNING, pkcs8).is_ok() {
        KeyPairSpec::EcP384
    } else if Ed25519KeyPair::from_pkcs8(pkcs8).is_ok() {
        KeyPairSpec::Ed25519
    } else {
        match RsaKeyPair::from_pkcs8(pkcs8).ok()?.public_modulus_len() {
            256 => KeyPairSpec::Rsa2048,
            384 => KeyPairSpec::Rsa3072,
            512 => KeyPairSpec::Rsa4096,
            _ => return None,
        }
    };
    let public = public_of(&material_from(KeyKind::Pair(spec), pkcs8).ok()?)?;
    Some((spec, public))
}

/// A key pair's public key (SubjectPublicKeyInfo); none for a symmetric key.
pub(super) fn public_of(material: &Material) -> Option<Vec<u8>> {
    let der = match material {
        Material::Ecdsa(k) => k.public_key().as_der(),
        Material::Rsa(k) => k.public_key().as_der(),
        Material::Ed25519(k) => k.public_key().as_der(),
        Material::Symmetric(..) => return None,
    };
    der.ok().map(|d| d.as_ref().to_vec())
}

pub(super) fn material_from(kind: KeyKind, secret: &[u8]) -> Result<Material, ()> {
    Ok(match kind {
        KeyKind::Pair(KeyPairSpec::EcP256) => Material::Ecdsa(
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, secret)
                .map_err(drop)?,
        ),
        KeyKind::Pair(KeyPairSpec::EcP384) => Material::Ecdsa(
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_ASN1_SIGNING, secret)
                .map_err(drop)?,
        ),
        KeyKind::Pair(KeyPairSpec::Ed25519) => {
            Material::Ed25519(Ed25519KeyPair::from_pkcs8(secret).map_err(drop)?)
        }
        KeyKind::Pair(_) => Material::Rsa(RsaKeyPair::from_pkcs8(secret).map_err(drop)?),
        KeyKind::Symmetric(kind) => Material::Symmetric(
            Zeroizing::new(secret.to_vec()),
            (kind == SymmetricKeyType::HmacSha256)
                .then(|| Box::new(hmac::Key::new(hmac::HMAC_SHA256, secret))),
        ),
    })
}
