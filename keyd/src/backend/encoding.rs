//! Encodings shared by the hardware stores: public keys as SubjectPublicKeyInfo
//! and ECDSA signatures as DER, built with RustCrypto's ASN.1 types.

use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::der::{Decode, Encode};
use p256::pkcs8::EncodePublicKey;

use super::KeyKind;
use crate::api::KeyPairSpec;
use crate::error::Error;

/// SubjectPublicKeyInfo for an EC point: a SEC1 point, or (as PKCS#11 tokens
/// return CKA_EC_POINT) a DER OCTET STRING around one.
pub(crate) fn ec_spki(spec: KeyPairSpec, point: &[u8]) -> Result<Vec<u8>, Error> {
    let sec1 = match p256::pkcs8::der::asn1::OctetString::from_der(point) {
        Ok(inner) => inner.as_bytes().to_vec(),
        Err(_) => point.to_vec(),
    };
    let bad = |_| Error::Internal("the key store returned an EC point keyd cannot parse".into());
    let doc = if spec == KeyPairSpec::EcP256 {
        let key = p256::PublicKey::from_sec1_bytes(&sec1).map_err(bad)?;
        // Uncompressed, as the software store exports it.
        let key = p256::PublicKey::from_sec1_bytes(key.to_encoded_point(false).as_bytes())
            .map_err(bad)?;
        key.to_public_key_der()
    } else {
        p384::PublicKey::from_sec1_bytes(&sec1)
            .map_err(bad)?
            .to_public_key_der()
    };
    doc.map(|d| d.as_bytes().to_vec())
        .map_err(|_| Error::Internal("cannot encode the EC public key".into()))
}

/// SubjectPublicKeyInfo (rsaEncryption) for a modulus and exponent.
pub(crate) fn rsa_spki(n: &[u8], e: &[u8]) -> Result<Vec<u8>, Error> {
    let bad = || Error::Internal("cannot encode the RSA public key".into());
    let key = pkcs1::RsaPublicKey {
        modulus: pkcs1::UintRef::new(n).map_err(|_| bad())?,
        public_exponent: pkcs1::UintRef::new(e).map_err(|_| bad())?,
    };
    let pkcs1_der = key.to_der().map_err(|_| bad())?;
    let spki = spki::SubjectPublicKeyInfoRef {
        algorithm: pkcs1::ALGORITHM_ID,
        subject_public_key: spki::der::asn1::BitStringRef::from_bytes(&pkcs1_der)
            .map_err(|_| bad())?,
    };
    spki.to_der().map_err(|_| bad())
}

/// ECDSA signature as DER, from raw `r || s` (each padded to the field size).
pub(crate) fn ecdsa_der(kind: KeyKind, raw: &[u8]) -> Result<Vec<u8>, Error> {
    let bad =
        |_| Error::Internal("the key store returned an ECDSA signature of the wrong size".into());
    Ok(match kind {
        KeyKind::Pair(KeyPairSpec::EcP256) => p256::ecdsa::Signature::from_slice(raw)
            .map_err(bad)?
            .to_der()
            .as_bytes()
            .to_vec(),
        _ => p384::ecdsa::Signature::from_slice(raw)
            .map_err(bad)?
            .to_der()
            .as_bytes()
            .to_vec(),
    })
}
