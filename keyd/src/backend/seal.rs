//! The software store's sealing: AES-256-GCM under the master key, each
//! ciphertext `version || nonce || ciphertext || tag`, and the master key file
//! itself.

use std::path::Path;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::error::Error;

/// First byte of every ciphertext keyd returns, so the format can change later.
const CIPHERTEXT_VERSION: u8 = 1;

pub(super) fn aes_key(bytes: &[u8]) -> Result<LessSafeKey, aws_lc_rs::error::Unspecified> {
    UnboundKey::new(&AES_256_GCM, bytes).map(LessSafeKey::new)
}

/// `version || nonce || ciphertext || tag`, with a fresh random nonce.
pub(super) fn seal(
    key: &LessSafeKey,
    rng: &SystemRandom,
    plaintext: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, Error> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce)
        .map_err(|_| Error::Internal("the random generator failed".into()))?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + AES_256_GCM.tag_len());
    out.push(CIPHERTEXT_VERSION);
    out.extend_from_slice(&nonce);
    let mut body = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut body,
    )
    .map_err(|_| Error::Internal("encryption failed".into()))?;
    out.extend_from_slice(&body);
    Ok(out)
}

pub(super) enum OpenError {
    Format,
    Auth,
}

pub(super) fn open(
    key: &LessSafeKey,
    sealed: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    if sealed.len() < 1 + NONCE_LEN + AES_256_GCM.tag_len() || sealed[0] != CIPHERTEXT_VERSION {
        return Err(OpenError::Format);
    }
    let nonce = Nonce::try_assume_unique_for_key(&sealed[1..1 + NONCE_LEN])
        .map_err(|_| OpenError::Format)?;
    let mut body = Zeroizing::new(sealed[1 + NONCE_LEN..].to_vec());
    let len = key
        .open_in_place(nonce, Aad::from(aad), &mut body)
        .map_err(|_| OpenError::Auth)?
        .len();
    body.truncate(len);
    Ok(body)
}

pub(super) fn load_or_create_master(
    path: &Path,
    rng: &SystemRandom,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let existed = path.exists();
    let key = edgeid_common::fs::load_or_create_secret(path, 32, |bytes| {
        rng.fill(bytes)
            .map_err(|_| std::io::Error::other("the system random generator failed"))
    })
    .map_err(|e| {
        Error::Setup(format!(
            "master key {}: {e} (restore it from backup)",
            path.display()
        ))
    })?;
    if !existed {
        tracing::info!(path = %path.display(), "created master key");
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let rng = SystemRandom::new();
        let key = aes_key(&[7u8; 32]).unwrap();
        let mut c = seal(&key, &rng, b"hello", b"aad").unwrap();
        assert_eq!(open(&key, &c, b"aad").ok().unwrap().as_slice(), b"hello");
        assert!(matches!(open(&key, &c, b"other"), Err(OpenError::Auth)));
        let last = c.len() - 1;
        c[last] ^= 1;
        assert!(matches!(open(&key, &c, b"aad"), Err(OpenError::Auth)));
        assert!(matches!(
            open(&key, &c[..10], b"aad"),
            Err(OpenError::Format)
        ));
    }
}
