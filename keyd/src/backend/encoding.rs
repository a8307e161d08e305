//! Encodings shared by the hardware stores: public keys as SubjectPublicKeyInfo
//! and ECDSA signatures as DER, built with RustCrypto's ASN.1 types.

use p256::pkcs8::der::Encode;
use p256::pkcs8::EncodePublicKey;

use super::KeyKind;
use crate::api::KeyPairSpec;
use crate::error::Error;

/// SubjectPublicKeyInfo for an EC public key given as a SEC1 point.
pub(crate) fn ec_spki(spec: KeyPairSpec, sec1: &[u8]) -> Result<Vec<u8>, Error> {
    let bad = |_| Error::Internal("the key store returned an EC point keyd cannot parse".into());
    let doc = if spec == KeyPairSpec::EcP256 {
        p256::PublicKey::from_sec1_bytes(sec1)
            .map_err(bad)?
            .to_public_key_der()
    } else {
        p384::PublicKey::from_sec1_bytes(sec1)
            .map_err(bad)?
            .to_public_key_der()
    };
    doc.map(|d| d.as_bytes().to_vec())
        .map_err(|_| Error::Internal("cannot encode the EC public key".into()))
}

/// The uncompressed SEC1 point's length for a curve: 0x04, X, Y.
pub(crate) fn sec1_len(spec: KeyPairSpec) -> usize {
    if spec == KeyPairSpec::EcP256 {
        65
    } else {
        97
    }
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

#[cfg(test)]
pub(crate) mod tests {
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

    use super::*;

    /// A P-256 public point (0x04 || X || Y) whose X starts with `first`.
    pub(crate) fn point_starting_with(first: u8) -> Vec<u8> {
        loop {
            let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
            let point = key.public_key().as_ref().to_vec();
            if point[1] == first {
                return point;
            }
        }
    }

    #[test]
    fn raw_points_that_look_like_der_still_encode() {
        // 0x04 0x3f ... reads as an OCTET STRING of 63 bytes: 2 + 63 = 65, the
        // point's whole length. It must be taken as the point it is.
        let point = point_starting_with(0x3f);
        let spki = ec_spki(KeyPairSpec::EcP256, &point).unwrap();
        assert!(spki.ends_with(&point), "the SPKI carries the point itself");
    }
}
