//! Ciphertexts the reference's libaziot-keys made with a key keyd took
//! over (its `iotedge_master_encryption_id`, with which aziot-edged
//! encrypts modules' secrets: edgeHub's stored state, edgeAgent's backup):
//! AES-256-GCM with the caller's `iv` as the nonce and its `aad`, in its
//! v2 form (IoT Edge 1.2 on) `0x02 || ciphertext || tag` or its v1 form
//! (1.1) `0x01 || tag || ciphertext`. keyd only opens them: it encrypts in
//! its own form, with a nonce of its own, as the reference re-encrypts v1
//! secrets as v2. Nonces of 12, 16 and 32 bytes are taken (IoT Edge's
//! modules send 32: a GUID's 32 hex digits).

use aes_gcm::aead::generic_array::typenum::{U12, U16, U32};
use aes_gcm::aead::generic_array::{ArrayLength, GenericArray};
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::aes::Aes256;
use aes_gcm::{AesGcm, Tag};
use zeroize::Zeroizing;

const TAG_LEN: usize = 16;

/// The plaintext, if `ciphertext` is the reference's for `key`, `iv` and `aad`.
pub fn open(key: &[u8], iv: &[u8], aad: &[u8], ciphertext: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let (&version, rest) = ciphertext.split_first()?;
    if rest.len() < TAG_LEN {
        return None;
    }
    let (body, tag) = match version {
        0x02 => {
            let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
            (body, tag)
        }
        0x01 => {
            let (tag, body) = rest.split_at(TAG_LEN);
            (body, tag)
        }
        _ => return None,
    };
    let mut buffer = Zeroizing::new(body.to_vec());
    let tag = Tag::from_slice(tag);
    let opened = match iv.len() {
        12 => open_with::<U12>(key, iv, aad, &mut buffer, tag),
        16 => open_with::<U16>(key, iv, aad, &mut buffer, tag),
        32 => open_with::<U32>(key, iv, aad, &mut buffer, tag),
        _ => None,
    };
    opened.map(|()| buffer)
}

fn open_with<N: ArrayLength<u8>>(
    key: &[u8],
    iv: &[u8],
    aad: &[u8],
    buffer: &mut [u8],
    tag: &Tag,
) -> Option<()> {
    let cipher = AesGcm::<Aes256, N>::new_from_slice(key).ok()?;
    cipher
        .decrypt_in_place_detached(GenericArray::from_slice(iv), aad, buffer, tag)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GCM specification's test case 16 (McGrew and Viega: AES-256, a
    /// 96-bit IV, associated data), in the reference's v2 and v1 layouts.
    #[test]
    fn opens_both_layouts_and_nothing_altered() {
        let key = hex::decode("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
            .unwrap();
        let iv = hex::decode("cafebabefacedbaddecaf888").unwrap();
        let aad = hex::decode("feedfacedeadbeeffeedfacedeadbeefabaddad2").unwrap();
        let ct = hex::decode("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662").unwrap();
        let tag = hex::decode("76fc6ece0f4e1768cddf8853bb2d551b").unwrap();
        let plain = hex::decode("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39").unwrap();
        let v2 = [&[2u8][..], &ct, &tag].concat();
        let v1 = [&[1u8][..], &tag, &ct].concat();
        assert_eq!(open(&key, &iv, &aad, &v2).unwrap().as_slice(), plain);
        assert_eq!(open(&key, &iv, &aad, &v1).unwrap().as_slice(), plain);
        let mut altered = v2.clone();
        altered[5] ^= 1;
        assert!(open(&key, &iv, &aad, &altered).is_none());
        assert!(open(&key, &iv, b"other", &v2).is_none());
        assert!(open(&key, &iv[..11], &aad, &v2).is_none());
        assert!(open(&key, &iv, &aad, &[2u8; 10]).is_none());
        assert!(open(&key, &iv, &aad, &[]).is_none());
    }
}
