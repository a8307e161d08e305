//! `[[preloaded_key]]`: the reference's `preloaded_keys` with a `file:`
//! location, imported into the store that serves its id at every start.

use std::io::Read;

use super::KeyBackend;
use crate::api::SymmetricKeyType;
use crate::config::PreloadedKey;
use crate::error::Error;
use crate::key_id::KeyId;

/// Largest preloaded key file read (the reference's SAS keys are 32 or 64 bytes).
const MAX_PRELOADED_LEN: u64 = 1024;

/// Imports a `[[preloaded_key]]` file as its hmac-sha256 key; a key of that
/// id with other bytes is replaced (the file is the key). Errors name the
/// file and the key id, never the bytes.
pub async fn import(
    store: &dyn KeyBackend,
    id: &KeyId,
    preloaded: &PreloadedKey,
) -> Result<(), Error> {
    let file = preloaded.file.display();
    let setup =
        |why: String| Error::Setup(format!("preloaded key '{}' ({file}): {why}", preloaded.id));
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    std::fs::File::open(&preloaded.file)
        .and_then(|f| f.take(MAX_PRELOADED_LEN + 1).read_to_end(&mut bytes))
        .map_err(|e| setup(format!("cannot read it: {e}")))?;
    if bytes.len() as u64 > MAX_PRELOADED_LEN {
        return Err(setup(format!(
            "larger than {MAX_PRELOADED_LEN} bytes: not a symmetric key"
        )));
    }
    // The reference also preloads key pairs (an X.509 identity's PEM key);
    // edgeid does not yet, and must not take one for a symmetric key.
    if bytes.starts_with(b"-----BEGIN") {
        return Err(setup(
            "a PEM file (a key pair): edgeid preloads symmetric keys only (raw bytes); let keyd make the key pair and certd the certificate".into(),
        ));
    }
    let key_type = SymmetricKeyType::HmacSha256;
    // The id holds other bytes (Conflict), or a key pair (the one edgeid's
    // default local provisioning made before this device was configured
    // as the reference's): the file is the key, so it replaces them.
    match store.create_key(id, key_type, Some(&bytes)).await {
        Ok(_) => return Ok(()),
        Err(Error::Conflict(_)) => {}
        Err(e) => return Err(setup(e.to_string())),
    }
    let pair = match store.delete(id, false).await {
        Ok(()) => false,
        // Not a symmetric key: a key pair.
        Err(Error::NotFound(_)) => {
            store
                .delete(id, true)
                .await
                .map_err(|e| setup(e.to_string()))?;
            true
        }
        Err(e) => return Err(setup(e.to_string())),
    };
    store
        .create_key(id, key_type, Some(&bytes))
        .await
        .map_err(|e| setup(e.to_string()))?;
    tracing::warn!(key = %id, file = %file, replaced = if pair { "a key pair" } else { "other key bytes" }, "preloaded key replaced what the id held");
    Ok(())
}
