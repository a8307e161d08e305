//! identityd's config file (`--config`), e.g. `/etc/edgeid/identityd.d/config.toml`.
//!
//! ```toml
//! state_dir = "/var/lib/edgeid/identityd"
//! keyd_socket = "/run/edgeid/keyd.sock"
//! certd_socket = "/run/edgeid/certd.sock"
//!
//! [server]
//! socket = "/run/edgeid/identityd.sock"
//!
//! [provisioning]                  # one of three sources
//! source = "dps"
//! global_endpoint = "https://global.azure-devices-provisioning.net"
//! id_scope = "0ne00000000"
//! # payload_file = "/etc/edgeid/identityd.d/dps-payload.json"  # JSON sent as `payload`
//! [provisioning.attestation]
//! method = "symmetric_key"        # or "x509" (cert_id, key_id) or "tpm"
//! registration_id = "device-1"
//! key_file = "/etc/edgeid/identityd.d/enrollment.key"   # base64; imported into keyd
//! group = false                   # true: key_file holds the group enrollment key
//!
//! # [provisioning]
//! # source = "manual"
//! # connection_string = "HostName=hub.azure-devices.net;DeviceId=d1;SharedAccessKey=..."
//! # or: hub = "...", device_id = "...", auth = { method = "x509", cert_id = "device-id", key_id = "device-id" }
//!
//! # [provisioning]
//! # source = "local"              # no cloud at all
//! # device_id = "device-1"
//!
//! [modules]
//! auth = "sas"                    # or "x509": certificates from certd's local CA
//!
//! [[principal]]
//! name = "edgeagent"
//! uid = 990
//! role = "orchestrator"
//!
//! [[principal]]
//! name = "tempsensor"
//! uid = 1001
//! role = "module"                 # may read its own identity; module_id defaults to name
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use edgeid_common::config::{ConfigError, ServerConfig};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::api::AuthType;

/// Where identityd listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/edgeid/identityd.sock";

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitydConfig {
    /// The provisioning result and module identities (0700).
    pub state_dir: PathBuf,
    /// keyd's socket.
    #[serde(default = "default_keyd_socket")]
    pub keyd_socket: PathBuf,
    /// certd's socket.
    #[serde(default = "default_certd_socket")]
    pub certd_socket: PathBuf,
    /// Socket and limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// Where the device's identity comes from.
    pub provisioning: ProvisioningConfig,
    /// The keyd ids identityd keeps its keys under.
    #[serde(default)]
    pub keys: KeyIds,
    /// How module identities authenticate.
    #[serde(default)]
    pub modules: ModulesConfig,
    /// Talking to the provisioning service and the hub.
    #[serde(default)]
    pub cloud: CloudConfig,
    /// Callers other than administrators.
    #[serde(default, rename = "principal")]
    pub principals: Vec<PrincipalConfig>,
}

fn default_keyd_socket() -> PathBuf {
    PathBuf::from("/run/edgeid/keyd.sock")
}
fn default_certd_socket() -> PathBuf {
    PathBuf::from("/run/edgeid/certd.sock")
}

/// A secret in the config file (a connection string): never shown by `Debug`.
#[derive(Clone)]
pub struct SecretString(pub Zeroizing<String>);

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Self(Zeroizing::new(s)))
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `[provisioning]`
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum ProvisioningConfig {
    /// A hub, device id and credential given by hand.
    Manual(ManualConfig),
    /// The Device Provisioning Service.
    Dps(DpsConfig),
    /// No cloud: identities anchored in the local CA.
    Local(LocalConfig),
}

impl ProvisioningConfig {
    /// `manual`, `dps` or `local`.
    pub fn source(&self) -> &'static str {
        match self {
            Self::Manual(_) => "manual",
            Self::Dps(_) => "dps",
            Self::Local(_) => "local",
        }
    }
}

/// `source = "manual"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManualConfig {
    /// `HostName=...;DeviceId=...;SharedAccessKey=...`; excludes the other keys.
    #[serde(default)]
    pub connection_string: Option<SecretString>,
    /// The hub's host name.
    #[serde(default)]
    pub hub: Option<String>,
    /// The device id.
    #[serde(default)]
    pub device_id: Option<String>,
    /// The device's credential.
    #[serde(default)]
    pub auth: Option<DeviceAuthConfig>,
    /// The parent IoT Edge device (nested edge, `host[:port]`) the hub is
    /// reached through: hub calls go to it, with the hub's own tokens.
    #[serde(default)]
    pub gateway: Option<String>,
}

/// A device credential for the hub.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum DeviceAuthConfig {
    /// A shared access key: from a file (imported into keyd), or already in keyd.
    Sas(KeySource),
    /// A certificate in certd and its key in keyd.
    X509 {
        /// The certificate's id in certd.
        cert_id: String,
        /// Its key's id in keyd.
        key_id: String,
        /// More subject attributes (O, OU, C, ...) of the certificate when
        /// identityd asks certd for it (the reference's `csr_subject`); its
        /// CN is the device id.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        subject: BTreeMap<String, String>,
    },
}

/// Where a symmetric key comes from.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeySource {
    /// A 0600 file holding the key in base64; imported into keyd, never kept by identityd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// A key already in keyd (put there at the factory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// `source = "dps"`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DpsConfig {
    /// The service's endpoint.
    #[serde(default = "default_dps_endpoint")]
    pub global_endpoint: String,
    /// The ID scope of the DPS instance.
    pub id_scope: String,
    /// How the device proves itself.
    pub attestation: AttestationConfig,
    /// A JSON file sent with each registration as its `payload` (data for
    /// DPS custom allocation; the reference's `[provisioning.payload] uri`),
    /// read at each registration. One that is not JSON stops the
    /// registration, saying why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_file: Option<PathBuf>,
}

fn default_dps_endpoint() -> String {
    "https://global.azure-devices-provisioning.net".into()
}

/// `[provisioning.attestation]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum AttestationConfig {
    /// Symmetric key, individual or group enrollment.
    SymmetricKey {
        /// The registration id.
        registration_id: String,
        /// The enrollment key.
        #[serde(flatten)]
        key: KeySource,
        /// The key is a group enrollment's: the device key is derived from it
        /// and the registration id, inside keyd.
        #[serde(default)]
        group: bool,
    },
    /// X.509: TLS client authentication with a certd certificate and its keyd key.
    X509 {
        /// The registration id; the certificate's common name if absent.
        #[serde(default)]
        registration_id: Option<String>,
        /// The certificate's id in certd.
        cert_id: String,
        /// Its key's id in keyd.
        key_id: String,
        /// More subject attributes of the certificate when identityd asks
        /// certd for it (the reference's `registration_id` table); its CN is
        /// the registration id.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        subject: BTreeMap<String, String>,
    },
    /// TPM: endorsement and storage keys; the service's key is activated in the TPM.
    Tpm {
        /// The registration id.
        registration_id: String,
    },
}

/// `source = "local"`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// The device's id.
    pub device_id: String,
    /// The name identities carry as their hub (nothing is contacted).
    #[serde(default = "default_local_hub")]
    pub hub: String,
}

fn default_local_hub() -> String {
    "localhost".into()
}

/// `[keys]`: identityd's keys in keyd, by id.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyIds {
    /// The device's SAS key (manual key files, TPM-activated keys).
    pub device: String,
    /// A DPS enrollment key (individual or group).
    pub enrollment: String,
    /// The key module keys are derived from.
    pub modules: String,
    /// The certd id of the device certificate in `local` mode (and its keyd key).
    pub local_device_cert: String,
}

impl Default for KeyIds {
    fn default() -> Self {
        Self {
            device: "device-id".into(),
            enrollment: "dps-enrollment".into(),
            modules: "module-derivation".into(),
            local_device_cert: "device-id".into(),
        }
    }
}

/// `[modules]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModulesConfig {
    /// `sas` (keys derived in keyd) or `x509` (certificates from certd's local CA).
    pub auth: AuthType,
    /// Lifetime of module certificates.
    pub cert_lifetime_days: u64,
    /// Local identities' common name is `<module>.<this>` (the reference's
    /// `<module>.<hostname>.<[localid] domain>`); the module id alone if
    /// absent.
    pub local_cn_suffix: Option<String>,
}

impl Default for ModulesConfig {
    fn default() -> Self {
        Self {
            auth: AuthType::Sas,
            cert_lifetime_days: 30,
            local_cn_suffix: None,
        }
    }
}

/// `[cloud]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudConfig {
    /// PEM file of the CAs the services' TLS certificates must chain to;
    /// the system's store if absent.
    pub trust_anchors: Option<PathBuf>,
    /// Longest wait for one request.
    pub timeout_secs: u64,
    /// Attempts per request when the service is unreachable or answers 5xx / 429.
    pub attempts: u32,
    /// First wait between attempts; doubles (with jitter) up to `retry_max_secs`.
    pub retry_min_ms: u64,
    /// Longest wait between attempts.
    pub retry_max_secs: u64,
    /// Longest time to wait for a DPS registration to be assigned.
    pub dps_timeout_secs: u64,
    /// DPS REST API version.
    pub dps_api_version: String,
    /// Hub REST API version.
    pub hub_api_version: String,
    /// An `http://` proxy to tunnel through, or `"none"`; when absent,
    /// `https_proxy` / `HTTPS_PROXY` (and `no_proxy`) from the environment.
    pub proxy: Option<String>,
}

impl Default for CloudConfig {
    fn default() -> Self {
        Self {
            trust_anchors: None,
            timeout_secs: 30,
            attempts: 5,
            retry_min_ms: 500,
            retry_max_secs: 30,
            dps_timeout_secs: 120,
            dps_api_version: "2021-06-01".into(),
            hub_api_version: "2021-04-12".into(),
            proxy: None,
        }
    }
}

pub use crate::principal::{PrincipalConfig, Role};

impl IdentitydConfig {
    /// Reads the config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        edgeid_common::config::load(path)
    }

    /// The socket path to bind when not socket-activated.
    pub fn socket(&self) -> PathBuf {
        self.server.socket_or(DEFAULT_SOCKET)
    }

    /// A config for local provisioning in a state directory (dev mode, tests).
    pub fn local(
        state_dir: &Path,
        socket: &Path,
        keyd_socket: &Path,
        certd_socket: &Path,
        device_id: &str,
    ) -> Self {
        Self {
            state_dir: state_dir.to_owned(),
            keyd_socket: keyd_socket.to_owned(),
            certd_socket: certd_socket.to_owned(),
            server: ServerConfig::private_at(socket),
            provisioning: ProvisioningConfig::Local(LocalConfig {
                device_id: device_id.to_owned(),
                hub: default_local_hub(),
            }),
            keys: KeyIds::default(),
            modules: ModulesConfig::default(),
            cloud: CloudConfig::default(),
            principals: Vec::new(),
        }
    }

    /// Checks what serde cannot; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        let key_id = |what: &str, id: &str| {
            edgeid_common::id::check(id).map_err(|why| format!("{what} '{id}': {why}"))
        };
        key_id("keys.device", &self.keys.device)?;
        key_id("keys.enrollment", &self.keys.enrollment)?;
        key_id("keys.modules", &self.keys.modules)?;
        key_id("keys.local_device_cert", &self.keys.local_device_cert)?;
        let check_source = |what: &str, source: &KeySource| match (&source.key_file, &source.key_id)
        {
            (Some(_), None) => Ok(()),
            (None, Some(id)) => key_id(&format!("{what}.key_id"), id),
            _ => Err(format!("{what}: give exactly one of key_file and key_id")),
        };
        match &self.provisioning {
            ProvisioningConfig::Manual(m) => {
                if let Some(gateway) = &m.gateway {
                    crate::names::check_hub(gateway)
                        .map_err(|e| format!("provisioning.gateway: {e}"))?;
                }
                let by_parts = m.hub.is_some() || m.device_id.is_some() || m.auth.is_some();
                match (&m.connection_string, by_parts) {
                    (Some(cs), false) => {
                        crate::connection_string::ConnectionString::parse(&cs.0)
                            .map_err(|e| format!("provisioning.connection_string: {e}"))?;
                    }
                    (None, true) => {
                        let (Some(hub), Some(device), Some(auth)) = (&m.hub, &m.device_id, &m.auth)
                        else {
                            return Err(
                                "provisioning: manual needs hub, device_id and auth together"
                                    .into(),
                            );
                        };
                        crate::names::check_hub(hub)
                            .map_err(|e| format!("provisioning.hub: {e}"))?;
                        crate::names::check_device_id(device)
                            .map_err(|e| format!("provisioning.device_id: {e}"))?;
                        match auth {
                            DeviceAuthConfig::Sas(source) => {
                                check_source("provisioning.auth", source)?
                            }
                            DeviceAuthConfig::X509 {
                                cert_id, key_id: k, ..
                            } => {
                                key_id("provisioning.auth.cert_id", cert_id)?;
                                key_id("provisioning.auth.key_id", k)?;
                            }
                        }
                    }
                    (Some(_), true) => {
                        return Err("provisioning: give either connection_string or hub, device_id and auth, not both".into())
                    }
                    (None, false) => {
                        return Err(
                            "provisioning: manual needs connection_string, or hub, device_id and auth"
                                .into(),
                        )
                    }
                }
            }
            ProvisioningConfig::Dps(d) => {
                if !d.global_endpoint.starts_with("https://") {
                    return Err(format!(
                        "provisioning.global_endpoint '{}' must be an https:// URL",
                        d.global_endpoint
                    ));
                }
                crate::names::check_device_id(&d.id_scope)
                    .map_err(|e| format!("provisioning.id_scope: {e}"))?;
                match &d.attestation {
                    AttestationConfig::SymmetricKey {
                        registration_id,
                        key,
                        ..
                    } => {
                        crate::names::check_device_id(registration_id).map_err(|e| {
                            format!("provisioning.attestation.registration_id: {e}")
                        })?;
                        check_source("provisioning.attestation", key)?;
                    }
                    AttestationConfig::X509 {
                        registration_id,
                        cert_id,
                        key_id: k,
                        ..
                    } => {
                        if let Some(r) = registration_id {
                            crate::names::check_device_id(r).map_err(|e| {
                                format!("provisioning.attestation.registration_id: {e}")
                            })?;
                        }
                        key_id("provisioning.attestation.cert_id", cert_id)?;
                        key_id("provisioning.attestation.key_id", k)?;
                    }
                    AttestationConfig::Tpm { registration_id } => {
                        crate::names::check_device_id(registration_id).map_err(|e| {
                            format!("provisioning.attestation.registration_id: {e}")
                        })?;
                    }
                }
            }
            ProvisioningConfig::Local(l) => {
                crate::names::check_device_id(&l.device_id)
                    .map_err(|e| format!("provisioning.device_id: {e}"))?;
                crate::names::check_hub(&l.hub).map_err(|e| format!("provisioning.hub: {e}"))?;
            }
        }
        if self.cloud.attempts == 0 || self.cloud.timeout_secs == 0 {
            return Err("cloud.attempts and cloud.timeout_secs must be at least 1".into());
        }
        for p in &self.principals {
            if p.role == Role::Module {
                crate::names::check_module_id(p.module()).map_err(|e| {
                    format!("principal '{}': module id '{}': {e}", p.name, p.module())
                })?;
            } else if p.module_id.is_some() || p.keep_module {
                let name = &p.name;
                return Err(format!(
                    "principal '{name}': module_id, keep_module: role module only"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<IdentitydConfig, String> {
        let c: IdentitydConfig =
            edgeid_common::config::parse(Path::new("i.toml"), text).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn each_source_parses() {
        let dps = parse(
            r#"
            state_dir = "/x"
            [provisioning]
            source = "dps"
            id_scope = "0ne0001"
            [provisioning.attestation]
            method = "symmetric_key"
            registration_id = "dev-1"
            key_file = "/k"
            group = true
            [[principal]]
            name = "agent"
            uid = 5
            role = "orchestrator"
            [[principal]]
            name = "sensor"
            uid = 6
            role = "module"
            "#,
        )
        .unwrap();
        assert!(matches!(
            dps.provisioning,
            ProvisioningConfig::Dps(DpsConfig {
                attestation: AttestationConfig::SymmetricKey { group: true, .. },
                ..
            })
        ));
        assert_eq!(dps.principals[1].module(), "sensor");
        let manual = parse(
            "state_dir = \"/x\"\n[provisioning]\nsource = \"manual\"\nconnection_string = \"HostName=h.example;DeviceId=d;SharedAccessKey=QUJDREVGR0hJSktMTU5PUA==\"\n",
        )
        .unwrap();
        assert!(
            !format!("{manual:?}").contains("QUJD"),
            "secrets are not shown"
        );
        parse("state_dir = \"/x\"\n[provisioning]\nsource = \"local\"\ndevice_id = \"d\"\n")
            .unwrap();
        parse(
            "state_dir = \"/x\"\n[provisioning]\nsource = \"dps\"\nid_scope = \"s\"\n[provisioning.attestation]\nmethod = \"tpm\"\nregistration_id = \"r\"\n",
        )
        .unwrap();
    }

    #[test]
    fn mistakes_are_named() {
        let err = parse("state_dir = \"/x\"\n[provisioning]\nsource = \"cloud\"\n").unwrap_err();
        assert!(err.contains("cloud"), "{err}");
        let err = parse(
            "state_dir = \"/x\"\n[provisioning]\nsource = \"manual\"\nconnection_string = \"HostName=h\"\n",
        )
        .unwrap_err();
        assert!(err.contains("DeviceId"), "{err}");
        let err = parse(
            "state_dir = \"/x\"\n[provisioning]\nsource = \"dps\"\nid_scope = \"s\"\n[provisioning.attestation]\nmethod = \"symmetric_key\"\nregistration_id = \"r\"\n",
        )
        .unwrap_err();
        assert!(err.contains("key_file"), "{err}");
        let err = parse(
            "state_dir = \"/x\"\n[provisioning]\nsource = \"local\"\ndevice_id = \"d\"\n[[principal]]\nname = \"m\"\nuid = 1\nrole = \"module\"\nmodule_id = \"a/b\"\n",
        )
        .unwrap_err();
        assert!(err.contains("a/b"), "{err}");
    }
}
