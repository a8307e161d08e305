//! What an installed aziot-identity-service left in `/var/lib/aziot`.
//! The Edge CA's key and certificate, a generated device key and its
//! certificate, and aziot-edged's encryption key are taken over: `config apply` names their files to keyd
//! (`[[imported_key]]`) and certd (`[[imported_cert]]`), which import each
//! once, where they hold nothing at that id. The rest is not imported:
//! `edgeidctl check` names it, key by key where the id is one the
//! reference's tools use, and says what replacing it means. The device's
//! identity itself is kept: its key is a preloaded file
//! (`/var/secrets/aziot/keyd/...`) that keyd imports, or it is provisioned
//! again by DPS.

use std::path::{Path, PathBuf};

/// Where the reference keeps its keys and certificates, on a device.
const KEYS_DIR: &str = "var/lib/aziot/keyd/keys";
const CERTS_DIR: &str = "var/lib/aziot/certd/certs";

/// Ids taken over from the reference's stores, keys and certificates
/// alike: aziot-edged's Edge CA (so its modules' chains and the trust they
/// were given stay), a device key certd issued for (EST), and aziot-edged's
/// encryption key (so what modules encrypted through the workload API
/// still decrypts: keyd opens the reference's ciphertexts with it).
const TAKEN_OVER: &[&str] = &["aziot-edged-ca", "device-id", MASTER_ENCRYPTION_KEY];

/// aziot-edged's encryption key: raw bytes, as the reference keeps every
/// symmetric key, used for AES-256-GCM.
const MASTER_ENCRYPTION_KEY: &str = "iotedge_master_encryption_id";

/// The kind of symmetric key the reference's raw key file `id` is, where
/// it is not an HMAC key (keyd's `[[imported_key]] symmetric`).
pub fn symmetric_kind(id: &str) -> Option<&'static str> {
    (id == MASTER_ENCRYPTION_KEY).then_some("aes-256-gcm")
}

/// Key ids the reference's tools make in aziot-keyd's own store that are
/// not taken over, and what edgeid making new ones means.
const KNOWN: &[(&str, &str)] = &[
    (
        "aziot-edged-ca-temp",
        "a renewal's Edge CA key: unused once the new Edge CA is issued",
    ),
    (
        "aziot_identityd_master_id",
        "the base of module keys: module identities get edgeid's keys when next created or updated",
    ),
];

/// Files of the reference's to take over: (id, the file's path on the device).
pub type Found = Vec<(String, PathBuf)>;

/// The files of the reference's that keyd and certd take over, for each of
/// [`TAKEN_OVER`] that is there: keys, then certificates.
pub fn taken_over(root: &Path) -> (Found, Found) {
    let found = |dir: &str, name: fn(&str) -> String| -> Found {
        TAKEN_OVER
            .iter()
            .filter(|id| root.join(dir).join(name(id)).is_file())
            .map(|id| ((*id).to_owned(), Path::new("/").join(dir).join(name(id))))
            .collect()
    };
    (
        found(KEYS_DIR, key_file_name),
        found(CERTS_DIR, cert_file_name),
    )
}

/// The reference's file name of key `id` in its store (its libaziot-keys:
/// the id's ASCII letters and digits, `-`, the SHA-256 of the id in hex).
fn key_file_name(id: &str) -> String {
    store_file_name(id, "key")
}

/// The same for certificate `id` in aziot-certd's store (`.cer`).
fn cert_file_name(id: &str) -> String {
    store_file_name(id, "cer")
}

fn store_file_name(id: &str, ext: &str) -> String {
    let kept: String = id.chars().filter(char::is_ascii_alphanumeric).collect();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, id.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("{kept}-{hex}.{ext}")
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
    let keys_dir = root.join(KEYS_DIR);
    let certs_dir = root.join(CERTS_DIR);
    let mut keys = files(&keys_dir, ".key");
    let mut certs = files(&certs_dir, ".cer");
    for id in TAKEN_OVER {
        keys.retain(|k| *k != key_file_name(id));
        certs.retain(|c| *c != cert_file_name(id));
    }
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
            key_file_name("aziot_identityd_master_id"),
            "x-00.key".into(),
        ] {
            std::fs::write(keys.join(name), b"k").unwrap();
        }
        std::fs::write(certs.join("aziotedgedca-00.cer"), b"c").unwrap();
        let said = not_imported(root.path());
        assert_eq!(said.len(), 3, "{said:?}");
        assert!(
            said[0].contains("'aziot_identityd_master_id'")
                && said[0].contains("the base of module keys")
        );
        assert!(said[1].starts_with("1 other key(s)"));
        assert!(said[2].starts_with("1 certificate(s)"));

        // The Edge CA's key and certificate are taken over, not listed as left.
        assert_eq!(taken_over(root.path()), (vec![], vec![]));
        std::fs::write(keys.join(key_file_name("aziot-edged-ca")), b"k").unwrap();
        std::fs::write(certs.join(cert_file_name("aziot-edged-ca")), b"c").unwrap();
        let (k, c) = taken_over(root.path());
        assert_eq!(
            k,
            [(
                "aziot-edged-ca".to_owned(),
                Path::new("/var/lib/aziot/keyd/keys").join(key_file_name("aziot-edged-ca"))
            )]
        );
        assert_eq!(c.len(), 1);
        assert!(c[0].1.starts_with("/var/lib/aziot/certd/certs"));
        assert!(c[0].1.to_string_lossy().ends_with(".cer"));
        assert_eq!(not_imported(root.path()).len(), 3, "unchanged by them");
        // aziot-edged's encryption key is taken over too, as an AES key.
        let master = key_file_name("iotedge_master_encryption_id");
        std::fs::write(keys.join(&master), [7u8; 32]).unwrap();
        let (k, _) = taken_over(root.path());
        assert!(k
            .iter()
            .any(|(id, f)| id == "iotedge_master_encryption_id" && f.ends_with(&master)));
        assert_eq!(not_imported(root.path()).len(), 3, "not left either");
        assert_eq!(
            symmetric_kind("iotedge_master_encryption_id"),
            Some("aes-256-gcm")
        );
        assert_eq!(symmetric_kind("device-id"), None);
    }
}
