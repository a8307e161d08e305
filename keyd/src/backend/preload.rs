//! `[[preloaded_key]]`: the reference's `preloaded_keys` with a `file:`
//! location, imported into the store that serves its id at every start;
//! and `[[imported_key]]`, a key another key service left, taken over once.

use aws_lc_rs::signature::{self, EcdsaKeyPair};
use zeroize::Zeroizing;

use super::KeyBackend;
use crate::api::SymmetricKeyType;
use crate::config::PreloadedKey;
use crate::error::Error;
use crate::key_id::KeyId;

/// Largest symmetric key file read (the reference's SAS keys are 32 or 64 bytes).
const MAX_SYMMETRIC_LEN: usize = 1024;
/// Largest file read (a PEM RSA-4096 key is about 3.3 KB).
const MAX_FILE_LEN: u64 = 16 * 1024;

/// Imports a `[[preloaded_key]]` file: raw bytes as the hmac-sha256 key, or
/// a PEM private key (PKCS#8, or SEC1 for EC) as the key pair, in the store
/// `store`. The file is the key: what the id held before (other bytes,
/// another key) is replaced. Errors name the file and the key id, never the
/// bytes.
pub async fn import(
    store: &dyn KeyBackend,
    id: &KeyId,
    preloaded: &PreloadedKey,
) -> Result<(), Error> {
    let file = preloaded.file.display();
    let setup =
        |why: String| Error::Setup(format!("preloaded key '{}' ({file}): {why}", preloaded.id));
    let kind = preloaded.symmetric.unwrap_or(SymmetricKeyType::HmacSha256);
    let mut bytes = Zeroizing::new(Vec::new());
    edgeid_common::fs::read_capped(&preloaded.file, MAX_FILE_LEN, &mut bytes)
        .map_err(|e| setup(e.to_string()))?;
    let pair = if bytes.starts_with(b"-----BEGIN") {
        Some(pkcs8_of_pem(&bytes).map_err(setup)?)
    } else if bytes.len() > MAX_SYMMETRIC_LEN {
        return Err(setup(format!(
            "larger than {MAX_SYMMETRIC_LEN} bytes and not PEM: not a key"
        )));
    } else {
        None
    };
    match import_once(store, id, pair.as_ref().map(|p| p.as_slice()), &bytes, kind).await {
        Ok(_) => return Ok(()),
        Err(Error::Conflict(_)) => {}
        Err(e) => return Err(setup(e.to_string())),
    }
    // The id holds another key (the one edgeid's default local provisioning
    // made before this device was configured as the reference's, say).
    let was_pair = match store.delete(id, false).await {
        Ok(()) => false,
        Err(Error::NotFound(_)) => {
            store
                .delete(id, true)
                .await
                .map_err(|e| setup(e.to_string()))?;
            true
        }
        Err(e) => return Err(setup(e.to_string())),
    };
    import_once(store, id, pair.as_ref().map(|p| p.as_slice()), &bytes, kind)
        .await
        .map_err(|e| setup(e.to_string()))?;
    tracing::warn!(key = %id, file = %file, replaced = if was_pair { "a key pair" } else { "a symmetric key" }, "preloaded key replaced what the id held");
    Ok(())
}

/// `[[imported_key]]`: the file's key becomes `id` if `id` holds no key
/// yet — once: what keyd holds is never replaced, so a key the file's
/// owner changes later, or a file that is gone (the other service purged),
/// changes nothing. The same formats as a preloaded key. True if imported.
pub async fn take_over(
    store: &dyn KeyBackend,
    id: &KeyId,
    imported: &PreloadedKey,
) -> Result<bool, Error> {
    if store.find(id).await?.is_some() || !imported.file.exists() {
        return Ok(false);
    }
    import(store, id, imported).await?;
    Ok(true)
}

/// One attempt: the key pair (PKCS#8) if there is one, else the bytes as
/// a symmetric key of `kind`.
async fn import_once(
    store: &dyn KeyBackend,
    id: &KeyId,
    pair: Option<&[u8]>,
    bytes: &[u8],
    kind: SymmetricKeyType,
) -> Result<crate::backend::KeyRecord, Error> {
    match pair {
        Some(pkcs8) => store.import_key_pair(id, pkcs8).await,
        None => store.create_key(id, kind, Some(bytes)).await,
    }
}

/// The PKCS#8 of a PEM private key: PKCS#8 as it is, SEC1 (`EC PRIVATE KEY`)
/// converted; others refused with what to do.
fn pkcs8_of_pem(text: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    let block = pem::parse(text).map_err(|e| format!("not a PEM key: {e}"))?;
    let tag = block.tag().to_owned();
    // The key's bytes move into memory that is wiped on drop.
    let der = Zeroizing::new(block.into_contents());
    match tag.as_str() {
        "PRIVATE KEY" => Ok(der),
        "EC PRIVATE KEY" => [
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        ]
        .into_iter()
        .find_map(|alg| EcdsaKeyPair::from_private_key_der(alg, &der).ok())
        .and_then(|k| k.to_pkcs8v1().ok())
        .map(|d| Zeroizing::new(d.as_ref().to_vec()))
        .ok_or_else(|| "an EC key keyd does not hold (P-256 and P-384 only)".to_owned()),
        "RSA PRIVATE KEY" => Err(
            "a PKCS#1 RSA key: convert it to PKCS#8 (openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.p8)"
                .into(),
        ),
        "ENCRYPTED PRIVATE KEY" => Err("an encrypted key: keyd takes it unencrypted (0600, keyd's)".into()),
        other => Err(format!("a PEM '{other}', not a private key")),
    }
}
