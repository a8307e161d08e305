//! workloadd's config file (`--config`), e.g. `/etc/edgeid/workloadd.d/config.toml`.
//!
//! ```toml
//! identityd_socket = "/run/edgeid/identityd.sock"
//! keyd_socket = "/run/edgeid/keyd.sock"
//! certd_socket = "/run/edgeid/certd.sock"
//!
//! [server]
//! socket = "/run/edgeid/workload.sock"
//!
//! [certificates]
//! identity_max_days = 30
//! server_max_days = 90
//! hub_module = "$edgeHub"               # may have gateway_hostname
//! gateway_hostname = "gateway.example.com"
//! [certificates.server_names]           # beyond each module's own id
//! "tempsensor" = ["tempsensor.local", "*.sensors.local", "10.0.0.7"]
//!
//! [[module]]            # a module process runs as this uid
//! name = "tempsensor"
//! uid = 1001
//!
//! # Or: the orchestrator asks for a socket per module (POST /v1/modules/{name}/socket)
//! # for the uid or group it names, and mounts it into the module's container;
//! # whoever of them connects there is that module.
//! orchestrator_uids = [990]
//! sockets_dir = "/run/edgeid/modules"
//!
//! # The SPIFFE Workload API on its own socket (off without this table).
//! [spiffe]
//! trust_domain = "example.org"
//! socket = "/run/edgeid/spiffe.sock"
//! svid_lifetime_secs = 3600
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use edgeid_common::config::{ConfigError, ServerConfig};
use serde::Deserialize;

/// Where workloadd listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/edgeid/workload.sock";

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadConfig {
    /// identityd's socket.
    #[serde(default = "default_identityd")]
    pub identityd_socket: PathBuf,
    /// keyd's socket.
    #[serde(default = "default_keyd")]
    pub keyd_socket: PathBuf,
    /// certd's socket.
    #[serde(default = "default_certd")]
    pub certd_socket: PathBuf,
    /// Socket and limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// Certificate policy.
    #[serde(default)]
    pub certificates: CertificatePolicy,
    /// The keyd AES key module encryption keys are derived from.
    #[serde(default = "default_encryption_key")]
    pub encryption_key_id: String,
    /// How long a module identity read from identityd is reused. A module
    /// deleted and re-created in identityd keeps working under its old
    /// generation for at most this long; 0 asks identityd every time.
    #[serde(default = "default_cache_secs")]
    pub identity_cache_secs: u64,
    /// A PEM file served as `/manifest-trust-bundle` (empty if absent).
    #[serde(default)]
    pub manifest_trust_bundle: Option<PathBuf>,
    /// Which uid is which module.
    #[serde(default, rename = "module")]
    pub modules: Vec<ModuleConfig>,
    /// uids that may ask for per-module sockets (the orchestrator), besides
    /// root and workloadd's own uid.
    #[serde(default)]
    pub orchestrator_uids: Vec<u32>,
    /// Where per-module sockets are made (0700, workloadd's; each socket
    /// 0600 for its uid or 0660 for its group).
    #[serde(default = "default_sockets_dir")]
    pub sockets_dir: PathBuf,
    /// The SPIFFE Workload API; not served without it.
    #[serde(default)]
    pub spiffe: Option<SpiffeConfig>,
    /// `[attestation]`: what a module's quote covers.
    #[serde(default)]
    pub attestation: AttestationConfig,
}

/// `[attestation]`: module quotes (`POST /modules/{name}/genid/{genid}/attest`
/// and the `edgeid.attestation.v1` gRPC service), through keyd's TPM.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationConfig {
    /// PCRs each module quote covers, per bank (keyd checks them).
    #[serde(default = "default_attestation_pcrs")]
    pub pcrs: std::collections::BTreeMap<String, Vec<u32>>,
}

impl Default for AttestationConfig {
    fn default() -> Self {
        Self {
            pcrs: default_attestation_pcrs(),
        }
    }
}

/// The firmware's PCRs (0-7) and IMA's (10).
fn default_attestation_pcrs() -> std::collections::BTreeMap<String, Vec<u32>> {
    std::collections::BTreeMap::from([("sha256".to_owned(), vec![0, 1, 2, 3, 4, 5, 6, 7, 10])])
}

/// Where the SPIFFE Workload API listens unless configured otherwise.
pub const DEFAULT_SPIFFE_SOCKET: &str = "/run/edgeid/spiffe.sock";

/// `[spiffe]`: the SPIFFE Workload API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpiffeConfig {
    /// The trust domain: module SPIFFE IDs are
    /// `spiffe://<trust_domain>/<device id>/<module id>`.
    pub trust_domain: String,
    /// Its socket (mode and limits as `[server]`'s; under systemd, the
    /// descriptor named `spiffe`).
    #[serde(default = "default_spiffe_socket")]
    pub socket: PathBuf,
    /// Lifetime of an X.509-SVID.
    #[serde(default = "default_svid_lifetime")]
    pub svid_lifetime_secs: u64,
    /// An X.509-SVID is replaced (new key, new certificate, pushed to every
    /// open stream) once this share of its lifetime has passed.
    #[serde(default = "default_renewal_percent")]
    pub renewal_threshold_percent: u8,
    /// Lifetime of a JWT-SVID.
    #[serde(default = "default_jwt_lifetime")]
    pub jwt_svid_lifetime_secs: u64,
    /// How long a JWT signing key signs before the next one takes over. The
    /// next is published in the JWKS ahead of use, and the old one stays
    /// there until every token it signed has expired.
    #[serde(default = "default_jwt_rotation")]
    pub jwt_key_rotation_secs: u64,
    /// How often certd's trust bundle is read for changes.
    #[serde(default = "default_bundle_refresh")]
    pub bundle_refresh_secs: u64,
    /// How often gRPC health asks keyd, certd and identityd whether they answer.
    #[serde(default = "default_health_check")]
    pub health_check_secs: u64,
    /// Foreign trust domains whose X.509 bundles (PEM files, reread every
    /// `bundle_refresh_secs`) are sent as federated bundles: trust domain
    /// name → file.
    #[serde(default)]
    pub federation: std::collections::BTreeMap<String, PathBuf>,
    /// Each module's SVID hint (the specification's operator guidance,
    /// e.g. `internal`): module id → hint.
    #[serde(default)]
    pub hints: std::collections::BTreeMap<String, String>,
}

fn default_spiffe_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SPIFFE_SOCKET)
}
fn default_svid_lifetime() -> u64 {
    3600
}
fn default_renewal_percent() -> u8 {
    50
}
fn default_jwt_lifetime() -> u64 {
    300
}
fn default_jwt_rotation() -> u64 {
    86_400
}
fn default_bundle_refresh() -> u64 {
    60
}
fn default_health_check() -> u64 {
    10
}

impl SpiffeConfig {
    /// The defaults for `trust_domain`, its socket at `socket`.
    pub fn new(trust_domain: &str, socket: &Path) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            socket: socket.to_owned(),
            svid_lifetime_secs: default_svid_lifetime(),
            renewal_threshold_percent: default_renewal_percent(),
            jwt_svid_lifetime_secs: default_jwt_lifetime(),
            jwt_key_rotation_secs: default_jwt_rotation(),
            bundle_refresh_secs: default_bundle_refresh(),
            health_check_secs: default_health_check(),
            federation: Default::default(),
            hints: Default::default(),
        }
    }

    fn validate(&self) -> Result<(), String> {
        crate::spiffe::id::check_trust_domain(&self.trust_domain)
            .map_err(|e| format!("spiffe.trust_domain '{}': {e}", self.trust_domain))?;
        if self.svid_lifetime_secs < 2 || self.jwt_svid_lifetime_secs == 0 {
            return Err("spiffe.svid_lifetime_secs must be at least 2 and spiffe.jwt_svid_lifetime_secs at least 1".into());
        }
        if !(1..=99).contains(&self.renewal_threshold_percent) {
            return Err("spiffe.renewal_threshold_percent must be between 1 and 99".into());
        }
        if self.jwt_key_rotation_secs < 2 {
            return Err("spiffe.jwt_key_rotation_secs must be at least 2".into());
        }
        for td in self.federation.keys() {
            crate::spiffe::id::check_trust_domain(td)
                .map_err(|e| format!("spiffe.federation: trust domain '{td}': {e}"))?;
            if *td == self.trust_domain {
                return Err(format!(
                    "spiffe.federation names '{td}', this device's own trust domain"
                ));
            }
        }
        for (module, hint) in &self.hints {
            if hint.is_empty() || hint.len() > 64 || hint.chars().any(char::is_control) {
                return Err(format!(
                    "spiffe.hints: module '{module}': a hint is 1-64 printable characters"
                ));
            }
        }
        if self.bundle_refresh_secs == 0 || self.health_check_secs == 0 {
            return Err(
                "spiffe.bundle_refresh_secs and spiffe.health_check_secs must be at least 1".into(),
            );
        }
        Ok(())
    }
}

fn default_sockets_dir() -> PathBuf {
    PathBuf::from("/run/edgeid/modules")
}

fn default_identityd() -> PathBuf {
    PathBuf::from("/run/edgeid/identityd.sock")
}
fn default_keyd() -> PathBuf {
    PathBuf::from("/run/edgeid/keyd.sock")
}
fn default_certd() -> PathBuf {
    PathBuf::from("/run/edgeid/certd.sock")
}
fn default_cache_secs() -> u64 {
    2
}
fn default_encryption_key() -> String {
    "workload-encryption".into()
}

/// `[certificates]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CertificatePolicy {
    /// Longest identity certificate handed out (and the default).
    pub identity_max_days: u64,
    /// Longest server certificate handed out.
    pub server_max_days: u64,
    /// The module that is the gateway (IoT Edge's edgeHub): the only one
    /// whose server certificates may carry `gateway_hostname`.
    pub hub_module: String,
    /// The name leaf devices reach the gateway by (IoT Edge's `hostname`).
    pub gateway_hostname: Option<String>,
    /// Further names a module's server certificates may carry, by module
    /// id: DNS names, `*.domain` (one more label), IP addresses. A module
    /// always has its own id as a name (see `server_names.rs`).
    pub server_names: BTreeMap<String, Vec<String>>,
}

impl Default for CertificatePolicy {
    fn default() -> Self {
        Self {
            identity_max_days: 30,
            server_max_days: 90,
            hub_module: "$edgeHub".into(),
            gateway_hostname: None,
            server_names: BTreeMap::new(),
        }
    }
}

impl CertificatePolicy {
    fn validate(&self) -> Result<(), String> {
        if self.identity_max_days == 0 || self.server_max_days == 0 {
            return Err("certificates.*_max_days must be at least 1".into());
        }
        if let Some(host) = &self.gateway_hostname {
            if !is_dns_name(host) {
                return Err(format!(
                    "certificates.gateway_hostname '{host}' is not a DNS name"
                ));
            }
        }
        for (module, grants) in &self.server_names {
            for grant in grants {
                check_server_name_grant(grant).map_err(|why| {
                    format!("certificates.server_names.\"{module}\": '{grant}': {why}")
                })?;
            }
        }
        Ok(())
    }
}

/// Checks a `server_names` grant's shape: a DNS name, `*.` and a DNS name
/// of at least two labels, or an IP address.
pub(crate) fn check_server_name_grant(grant: &str) -> Result<(), String> {
    if grant.parse::<std::net::IpAddr>().is_ok() || is_dns_name(grant) {
        return Ok(());
    }
    match grant.strip_prefix("*.") {
        Some(domain) if is_dns_name(domain) && domain.contains('.') => Ok(()),
        Some(_) => Err("a wildcard is '*.' and a domain of at least two labels".into()),
        None => Err("neither a DNS name, nor '*.domain', nor an IP address".into()),
    }
}

/// A host name as certificates carry it: labels of letters, digits and `-`,
/// 1-63 bytes each, 253 in all.
pub(crate) fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|label| !label.is_empty() && label.len() <= 63)
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// `[[module]]`: a module and the uid its processes run as.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleConfig {
    /// The module id (as in identityd).
    pub name: String,
    /// Its uid.
    pub uid: u32,
}

impl WorkloadConfig {
    /// Reads the config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        edgeid_common::config::load(path)
    }

    /// A config with these sockets (dev mode, tests).
    pub fn with_sockets(socket: &Path, identityd: &Path, keyd: &Path, certd: &Path) -> Self {
        Self {
            identityd_socket: identityd.to_owned(),
            keyd_socket: keyd.to_owned(),
            certd_socket: certd.to_owned(),
            server: ServerConfig::private_at(socket),
            certificates: CertificatePolicy::default(),
            encryption_key_id: default_encryption_key(),
            identity_cache_secs: default_cache_secs(),
            manifest_trust_bundle: None,
            modules: Vec::new(),
            orchestrator_uids: Vec::new(),
            sockets_dir: socket.parent().unwrap_or(Path::new("/tmp")).join("modules"),
            spiffe: None,
            attestation: AttestationConfig::default(),
        }
    }

    /// The socket path to bind when not socket-activated.
    pub fn socket(&self) -> PathBuf {
        self.server.socket_or(DEFAULT_SOCKET)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        edgeid_common::id::check(&self.encryption_key_id)
            .map_err(|why| format!("encryption_key_id '{}': {why}", self.encryption_key_id))?;
        self.certificates.validate()?;
        if let Some(spiffe) = &self.spiffe {
            spiffe.validate()?;
            if spiffe.socket == self.socket() {
                return Err("spiffe.socket must differ from server.socket".into());
            }
        }
        let mut uids = std::collections::HashSet::new();
        for m in &self.modules {
            edgeid_identityd::names::check_module_id(&m.name)
                .map_err(|e| format!("module '{}': {e}", m.name))?;
            if !uids.insert(m.uid) {
                return Err(format!(
                    "uid {} is mapped to more than one module; a uid is one module",
                    m.uid
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn federation_and_hints_are_checked() {
        let mut s = SpiffeConfig::new("edge.test", Path::new("/s"));
        s.federation.insert("other.test".into(), "/b.pem".into());
        s.hints.insert("mod-a".into(), "internal".into());
        assert!(s.validate().is_ok());
        let mut own = s.clone();
        own.federation.insert("edge.test".into(), "/b.pem".into());
        assert!(own.validate().unwrap_err().contains("own trust domain"));
        let mut bad = s.clone();
        bad.federation
            .insert("Not A Domain".into(), "/b.pem".into());
        assert!(bad.validate().unwrap_err().contains("spiffe.federation"));
        let mut hint = s;
        hint.hints.insert("mod-b".into(), "x\n".into());
        assert!(hint.validate().unwrap_err().contains("spiffe.hints"));
    }
}
