//! keyd's config file (`--config`), e.g. `/etc/edgeid/keyd.d/config.toml`.
//!
//! ```toml
//! state_dir = "/var/lib/edgeid/keyd"
//!
//! [server]
//! socket = "/run/edgeid/keyd.sock"
//!
//! [backend]
//! default = "software"
//!
//! [software]
//! master_key_file = "/var/secrets/edgeid/keyd/master.key"
//! # or sealed to the TPM ([tpm]), optionally to PCRs:
//! # master_key = "tpm"
//! # seal_pcrs = { sha256 = [0, 2, 4, 7] }
//!
//! # [pkcs11]
//! # library = "/usr/lib/softhsm/libsofthsm2.so"
//! # token_label = "edgeid"
//! # pin_file = "/etc/edgeid/keyd.d/pkcs11.pin"
//!
//! # Bases of derivation alone: they derive, never sign or encrypt (an HMAC
//! # key's signature of `info` is the key derived with `info`).
//! derive_only = ["module-derivation", "workload-encryption"]
//!
//! [[principal]]
//! name = "certd"
//! uid = 991
//! keys = ["device-ca", "module/*"]
//!
//! [[principal]]
//! name = "identityd"
//! uid = 992
//! keys = ["device-id", "module-derivation"]
//! export = ["module-derivation"]   # keys derived from it may leave keyd
//! ```

use std::path::{Path, PathBuf};

use edgeid_common::authz::Grants;
use edgeid_common::config::{ConfigError, ServerConfig};
use serde::Deserialize;

pub use crate::backend::pkcs11::Pkcs11Config;
pub use crate::backend::tpm::TpmConfig;
use crate::backend::BackendKind;

/// keyd's body cap unless `[server] max_body_bytes` says otherwise: its
/// largest legitimate request is workloadd's sign or encrypt of the most a
/// module may send ([`MAX_FORWARDED_PAYLOAD`], base64 in JSON: 4/3 of it
/// and a handle), with room to spare; the rest are a digest, a key, a blob.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;

/// The most a caller of keyd's callers may have signed, encrypted or
/// decrypted in one request (workloadd refuses more with 413).
pub const MAX_FORWARDED_PAYLOAD: usize = 128 * 1024;

/// Where keyd listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/edgeid/keyd.sock";
/// Where the software store's master key lives unless configured otherwise:
/// outside the state directory, so that a copy of the state reveals nothing.
pub const DEFAULT_MASTER_KEY: &str = "/var/secrets/edgeid/keyd/master.key";

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeydConfig {
    /// Key files, handle secret (0700).
    pub state_dir: PathBuf,
    /// Socket and limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// Which store holds which keys.
    #[serde(default)]
    pub backend: BackendConfig,
    /// The software store.
    #[serde(default)]
    pub software: SoftwareConfig,
    /// The PKCS#11 store, required when a backend setting names `pkcs11`.
    #[serde(default)]
    pub pkcs11: Option<Pkcs11Config>,
    /// The TPM store, required when a backend setting names `tpm`.
    #[serde(default)]
    pub tpm: Option<TpmConfig>,
    /// Keys that are bases of derivation alone: `derive` works on them, and
    /// `sign`, `encrypt` and `decrypt` are refused to every caller; only
    /// these derive. (HMAC(base, info) is both the key derived with `info`
    /// and the base's signature of `info`: a key that did both would hand
    /// every derived key to whoever may sign with it.)
    #[serde(default = "default_derive_only")]
    pub derive_only: Grants,
    /// Who may use which keys (besides root and keyd's own uid).
    #[serde(default, rename = "principal")]
    pub principals: Vec<PrincipalConfig>,
    /// Symmetric keys an administrator keeps in a file (the reference's
    /// `preloaded_keys` with a `file:` location, such as the device's SAS
    /// key that `iotedge config apply` writes to
    /// `/var/secrets/aziot/keyd/device-id`).
    #[serde(default, rename = "preloaded_key")]
    pub preloaded_keys: Vec<PreloadedKey>,
    /// Keys another key service left in files, taken over once (an
    /// aziot-identity-service's `/var/lib/aziot/keyd/keys`, which `config
    /// apply` finds): see [`take_over`](crate::backend::preload::take_over).
    #[serde(default, rename = "imported_key")]
    pub imported_keys: Vec<PreloadedKey>,
}

/// `[[preloaded_key]]`: at every start keyd imports the file's bytes (raw,
/// as the reference keeps them) as the hmac-sha256 key `id`, replacing a
/// key of that id whose bytes differ: the file is the key, as in the
/// reference, so a new file (a new connection string applied) is a new key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreloadedKey {
    /// The key id.
    pub id: String,
    /// The file holding its bytes.
    pub file: PathBuf,
    /// The kind of key raw bytes are (default hmac-sha256; the reference
    /// keeps both kinds as raw bytes, so its `iotedge_master_encryption_id`
    /// is taken over as `aes-256-gcm`). A PEM file is a key pair whatever this says.
    #[serde(default)]
    pub symmetric: Option<crate::api::SymmetricKeyType>,
}

/// `[backend]`: the default store and per-key overrides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// The store for keys no override names.
    pub default: BackendKind,
    /// `[[backend.override]] keys = ["device-id"], backend = "..."`; first match wins.
    #[serde(default, rename = "override")]
    pub overrides: Vec<BackendOverride>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            default: BackendKind::Software,
            overrides: Vec::new(),
        }
    }
}

/// Keys whose ids match `keys` live in `backend`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendOverride {
    /// Glob patterns over key ids.
    pub keys: Grants,
    /// The store for them.
    pub backend: BackendKind,
}

/// `[software]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoftwareConfig {
    /// Where the master key is: a file (`master_key_file`), or sealed to
    /// the TPM (`[tpm]`).
    #[serde(default)]
    pub master_key: MasterKey,
    /// The 32-byte master key (created 0600 on first start). With
    /// `master_key = "tpm"`, a key found here is sealed and the file removed.
    #[serde(default = "default_master_key_file")]
    pub master_key_file: PathBuf,
    /// With `master_key = "tpm"`: the PCRs (`{ sha256 = [0, 7] }`) the key is
    /// sealed to, at their values when it is sealed. Empty: bound to the TPM
    /// alone.
    #[serde(default)]
    pub seal_pcrs: std::collections::BTreeMap<String, Vec<u32>>,
}

/// `[software] master_key`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MasterKey {
    /// In `master_key_file`.
    #[default]
    File,
    /// Sealed to the TPM.
    Tpm,
}

fn default_master_key_file() -> PathBuf {
    PathBuf::from(DEFAULT_MASTER_KEY)
}

impl Default for SoftwareConfig {
    fn default() -> Self {
        Self {
            master_key: MasterKey::File,
            master_key_file: default_master_key_file(),
            seal_pcrs: Default::default(),
        }
    }
}

/// `[[principal]]`: a uid and the key ids it may use.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    /// A name for logs and errors.
    pub name: String,
    /// The caller's uid.
    pub uid: u32,
    /// Glob patterns over key ids.
    pub keys: Grants,
    /// Bases (of `derive_only`) whose derived keys' bytes this caller may
    /// have (`POST /v1/export`): identityd's, for registering module keys
    /// with the hub. Empty unless granted.
    #[serde(default)]
    pub export: Grants,
}

/// The bases of derivation unless `derive_only` says otherwise: identityd's
/// module key base and workloadd's encryption base, as their configs name
/// them by default (`edgeidctl config apply` starts from these too).
pub const DEFAULT_DERIVE_ONLY: &[&str] = &["module-derivation", "workload-encryption"];

fn default_derive_only() -> Grants {
    Grants::parse(DEFAULT_DERIVE_ONLY).unwrap_or_default()
}

impl KeydConfig {
    /// Reads the config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        edgeid_common::config::load(path)
    }

    /// A config for a state directory with defaults elsewhere (dev mode, tests).
    pub fn with_dirs(state_dir: &Path, socket: &Path, master_key_file: &Path) -> Self {
        Self {
            state_dir: state_dir.to_owned(),
            server: ServerConfig::private_at(socket),
            backend: BackendConfig::default(),
            software: SoftwareConfig {
                master_key_file: master_key_file.to_owned(),
                ..SoftwareConfig::default()
            },
            pkcs11: None,
            tpm: None,
            derive_only: default_derive_only(),
            principals: Vec::new(),
            preloaded_keys: Vec::new(),
            imported_keys: Vec::new(),
        }
    }

    /// The socket path to bind when not socket-activated.
    pub fn socket(&self) -> PathBuf {
        self.server.socket_or(DEFAULT_SOCKET)
    }

    /// The limits keyd serves with: `[server]`'s, its body cap
    /// [`DEFAULT_MAX_BODY_BYTES`] unless configured.
    pub fn limits(&self) -> edgeid_common::server::Limits {
        self.server.limits_with_body(DEFAULT_MAX_BODY_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_example_parses() {
        let text = r#"
            state_dir = "/var/lib/edgeid/keyd"
            [server]
            socket = "/run/edgeid/keyd.sock"
            max_body_bytes = 65536
            [backend]
            default = "software"
            [[backend.override]]
            keys = ["device-*"]
            backend = "software"
            [software]
            master_key_file = "/m"
            [[principal]]
            name = "certd"
            uid = 991
            keys = ["device-ca", "module/*"]
        "#;
        let c: KeydConfig = edgeid_common::config::parse(Path::new("k.toml"), text).unwrap();
        assert_eq!(c.principals[0].uid, 991);
        assert!(c.principals[0].keys.allows("module/x"));
        assert_eq!(c.limits().max_body_bytes, 65536);
    }

    #[test]
    fn unknown_backend_is_named() {
        let text = "state_dir = \"/x\"\n[backend]\ndefault = \"floppy\"\n";
        let err = edgeid_common::config::parse::<KeydConfig>(Path::new("k.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("backend.default") && err.contains("floppy"),
            "{err}"
        );
    }

    #[test]
    fn bad_grant_glob_is_named() {
        let text = "state_dir = \"/x\"\n[[principal]]\nname = \"a\"\nuid = 5\nkeys = [\"[\"]\n";
        let err = edgeid_common::config::parse::<KeydConfig>(Path::new("k.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("principal[0].keys"), "{err}");
    }
}
