//! What an installed aziot-identity-service left in `/var/lib/aziot`, which
//! edgeid does not import (yet): `edgeidctl check` names it, key by key
//! where the id is one the reference's tools use, and says what replacing
//! it means. The device's identity itself is kept: its key is a preloaded
//! file (`/var/secrets/aziot/keyd/...`) that keyd imports, or it is
//! provisioned again by DPS.

use std::path::Path;

/// Key ids the reference's tools make in aziot-keyd's own store, and what
/// edgeid making new ones means.
const KNOWN: &[(&str, &str)] = &[
    (
        "aziot-edged-ca",
        "the Edge CA's key: aziot-edged has certd issue a new Edge CA, and modules get new server certificates",
    ),
    (
        "aziot-edged-ca-temp",
        "a renewal's Edge CA key: unused once the new Edge CA is issued",
    ),
    (
        "iotedge_master_encryption_id",
        "aziot-edged's encryption key: what modules encrypted through the workload API cannot be decrypted",
    ),
    (
        "aziot_identityd_master_id",
        "the base of module keys: module identities get edgeid's keys when next created or updated",
    ),
    (
        "device-id",
        "a device key aziot-keyd generated (an issued X.509 identity): the device is enrolled anew",
    ),
];

/// The reference's file name of key `id` in its store (its libaziot-keys:
/// the id's ASCII letters and digits, `-`, the SHA-256 of the id in hex).
fn key_file_name(id: &str) -> String {
    let kept: String = id.chars().filter(char::is_ascii_alphanumeric).collect();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, id.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("{kept}-{hex}.key")
}

fn files(dir: &Path, ext: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(ext))
                .collect()
        })
        .unwrap_or_default()
}

/// What is there and not imported, one line each; empty when nothing is.
pub fn not_imported(root: &Path) -> Vec<String> {
    let keys_dir = root.join("var/lib/aziot/keyd/keys");
    let certs_dir = root.join("var/lib/aziot/certd/certs");
    let mut keys = files(&keys_dir, ".key");
    let certs = files(&certs_dir, ".cer");
    let mut lines = Vec::new();
    for (id, meaning) in KNOWN {
        let name = key_file_name(id);
        if let Some(at) = keys.iter().position(|k| *k == name) {
            keys.remove(at);
            lines.push(format!(
                "key '{id}' ({}): {meaning}",
                keys_dir.join(&name).display()
            ));
        }
    }
    if !keys.is_empty() {
        lines.push(format!(
            "{} other key(s) in {}: new ones are made where asked for",
            keys.len(),
            keys_dir.display()
        ));
    }
    if !certs.is_empty() {
        lines.push(format!(
            "{} certificate(s) in {}: issued again by certd where asked for",
            certs.len(),
            certs_dir.display()
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_references_key_files_are_named_and_explained() {
        // sha256("device-id") as `printf device-id | sha256sum` prints it.
        let device =
            "deviceid-bd732105ef89cf8edd2606a5309c8a26b7b5599a4e124a0fe6199b6b2f60e655.key";
        assert_eq!(key_file_name("device-id"), device);
        let root = tempfile::tempdir().unwrap();
        assert!(
            not_imported(root.path()).is_empty(),
            "nothing there, nothing said"
        );
        let keys = root.path().join("var/lib/aziot/keyd/keys");
        let certs = root.path().join("var/lib/aziot/certd/certs");
        std::fs::create_dir_all(&keys).unwrap();
        std::fs::create_dir_all(&certs).unwrap();
        for name in [
            key_file_name("iotedge_master_encryption_id"),
            "x-00.key".into(),
        ] {
            std::fs::write(keys.join(name), b"k").unwrap();
        }
        std::fs::write(certs.join("aziotedgedca-00.cer"), b"c").unwrap();
        let said = not_imported(root.path());
        assert_eq!(said.len(), 3, "{said:?}");
        assert!(
            said[0].contains("'iotedge_master_encryption_id'")
                && said[0].contains("cannot be decrypted")
        );
        assert!(said[1].starts_with("1 other key(s)"));
        assert!(said[2].starts_with("1 certificate(s)"));
    }
}
