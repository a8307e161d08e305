//! certd's config file (`--config`), e.g. `/etc/edgeid/certd.d/config.toml`.
//!
//! ```toml
//! state_dir = "/var/lib/edgeid/certd"
//! keyd_socket = "/run/edgeid/keyd.sock"
//!
//! [server]
//! socket = "/run/edgeid/certd.sock"
//!
//! [ca]                      # the device's local CA
//! key_id = "device-ca"      # its key in keyd
//! key_spec = "ec-p256"
//! subject_cn = "edgeid device CA"
//! lifetime_days = 3650
//! # or an administrator's CA, never made or renewed by certd (the
//! # reference's [cert_issuance.local_ca]): cert_id names a [preloaded]
//! # certificate or a stored one, key_id its key in keyd.
//! # provided = true
//!
//! [renewal]
//! threshold_percent = 80
//! rekey = true
//!
//! # [est]
//! # url = "https://est.example.com/.well-known/est"
//! # trust_anchors = "/etc/edgeid/est-ca.pem"
//! # username = "device-1"
//! # password_file = "/etc/edgeid/certd.d/est.password"
//! # bootstrap_cert = "est-bootstrap"   # a certd certificate with its key in keyd
//! # identity_cert = "est-identity"     # enrolled once with the bootstrap, then
//! # identity_key = "est-identity"      # authenticating every first enrollment
//!
//! # How the aziot API's `POST /certificates` without an `issuer` issues an id
//! # (the reference's [cert_issuance.<id>]); ids not named here need an issuer.
//! [issuance."aziot-edged-ca"]
//! method = "local-ca"       # or "self-signed" (by the keyd key `key_id`), "est"
//! expiry_days = 90
//! ca = true                 # its CSR may ask for CA rights
//!
//! [[principal]]
//! name = "workloadd"
//! uid = 993
//! certs = ["module/*"]
//! names = ["*.module.local", "spiffe://edge/*"]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use edgeid_common::authz::Grants;
use edgeid_common::config::{ConfigError, ServerConfig};
use edgeid_keyd::api::KeyPairSpec;
use serde::Deserialize;

use crate::api::{IssuerKind, RenewalPolicy};

/// Where certd listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/edgeid/certd.sock";
/// Where keyd listens unless configured otherwise.
pub const DEFAULT_KEYD_SOCKET: &str = "/run/edgeid/keyd.sock";

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertdConfig {
    /// Certificates (0700).
    pub state_dir: PathBuf,
    /// keyd's socket.
    #[serde(default = "default_keyd_socket")]
    pub keyd_socket: PathBuf,
    /// Socket and limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// The local CA.
    #[serde(default)]
    pub ca: CaConfig,
    /// Default renewal policy, and retry pacing.
    #[serde(default)]
    pub renewal: RenewalConfig,
    /// Default lifetime of issued certificates.
    #[serde(default = "default_leaf_days")]
    pub leaf_lifetime_days: u64,
    /// The EST server, if certificates are enrolled there.
    #[serde(default)]
    pub est: Option<EstConfig>,
    /// Per certificate id, how a CSR without an issuer is issued (aziot API).
    #[serde(default)]
    pub issuance: BTreeMap<String, IssuanceConfig>,
    /// Callers other than administrators.
    #[serde(default, rename = "principal")]
    pub principals: Vec<PrincipalConfig>,
    /// Certificates certd neither issues nor stores but serves as an
    /// administrator keeps them (the reference's `preloaded_certs`).
    #[serde(default)]
    pub preloaded: BTreeMap<String, PreloadedCert>,
    /// Certificates another certificate service left in files, taken over
    /// once (an aziot-identity-service's `/var/lib/aziot/certd/certs`,
    /// which `config apply` finds): stored as imported if certd holds
    /// nothing at that id and the file is there, then certd's own.
    #[serde(default, rename = "imported_cert")]
    pub imported_certs: Vec<ImportedCert>,
}

/// `[[imported_cert]]`: a PEM chain file and the id it is taken over as.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportedCert {
    /// The certificate id.
    pub id: String,
    /// The PEM file (leaf first).
    pub file: PathBuf,
}

/// `[preloaded."<id>"]`: a PEM file, read at each request (so a file an
/// administrator replaces is served at once), or a list of certificate ids
/// whose PEMs are served one after another (IoT Edge's
/// `aziot-edged-trust-bundle = ["aziot-edged-ca", ...]`). Certificates are
/// public: any caller certd admits may read these, as in the reference.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreloadedCert {
    /// The PEM file.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Or the certificate ids it is made of.
    #[serde(default)]
    pub ids: Option<Vec<String>>,
}

/// `[issuance."<id>"]`: how certd issues certificate `id` for a CSR that
/// names no issuer (the aziot certificates API's `POST /certificates`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuanceConfig {
    /// Who issues it.
    pub method: IssuerKind,
    /// Its lifetime (default `leaf_lifetime_days`).
    #[serde(default)]
    pub expiry_days: Option<u64>,
    /// Whether its CSR may ask for CA rights (basicConstraints CA:TRUE):
    /// an administrator's decision, made here.
    #[serde(default)]
    pub ca: bool,
    /// For `self-signed`: the keyd key that signs it, which must be the
    /// CSR's key (default: the certificate's id, as the reference has it).
    #[serde(default)]
    pub key_id: Option<String>,
    /// The subject its certificates get, whatever their CSR asks (the
    /// reference's `subject` and `common_name`): attributes by openssl's
    /// names (CN, C, ST, L, O, OU, or the long ones), in name order. A CN
    /// longer than 64 characters is cut, as the reference cuts it.
    #[serde(default)]
    pub subject: Option<BTreeMap<String, String>>,
    /// How certd renews its certificates, in place of the policy they were
    /// issued with (the reference's `identity_auto_renew`).
    #[serde(default)]
    pub renewal: Option<RenewalPolicy>,
    /// For `est`: this certificate's own URL at the EST server (another
    /// label, as `https://host/.well-known/est/<label>`), enrolled with
    /// `[est]`'s credentials and trust anchors.
    #[serde(default)]
    pub est_url: Option<String>,
}

impl IssuanceConfig {
    /// The configured subject, read ([`crate::issuer::configured_name`]).
    pub fn configured_name(&self) -> Result<Option<(crate::issuer::Name, Option<String>)>, String> {
        self.subject
            .as_ref()
            .map(|s| {
                crate::issuer::configured_name(s.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            })
            .transpose()
    }
}

fn default_keyd_socket() -> PathBuf {
    PathBuf::from(DEFAULT_KEYD_SOCKET)
}

fn default_leaf_days() -> u64 {
    90
}

/// `[ca]`: the device CA.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// Its certificate's id in certd (import a chain here for an intermediate).
    #[serde(default = "default_ca_id")]
    pub cert_id: String,
    /// Its key's id in keyd.
    #[serde(default = "default_ca_id")]
    pub key_id: String,
    /// Its key's spec, when certd creates it.
    #[serde(default = "default_ca_spec")]
    pub key_spec: KeyPairSpec,
    /// The self-signed root's common name.
    #[serde(default = "default_ca_cn")]
    pub subject_cn: String,
    /// The self-signed root's lifetime.
    #[serde(default = "default_ca_days")]
    pub lifetime_days: u64,
    /// The CA is an administrator's (the reference's
    /// `[cert_issuance.local_ca] cert, pk`): its chain is certificate
    /// `cert_id` as certd serves it (a `[preloaded]` file, read at each use,
    /// or a stored certificate) and its key is keyd's `key_id`. certd never
    /// makes, replaces or renews it; while either is missing or they do not
    /// match, nothing is issued by it (503, saying why).
    #[serde(default)]
    pub provided: bool,
}

fn default_ca_id() -> String {
    "device-ca".into()
}
fn default_ca_spec() -> KeyPairSpec {
    KeyPairSpec::EcP256
}
fn default_ca_cn() -> String {
    "edgeid device CA".into()
}
fn default_ca_days() -> u64 {
    3650
}

impl Default for CaConfig {
    fn default() -> Self {
        Self {
            cert_id: default_ca_id(),
            key_id: default_ca_id(),
            key_spec: default_ca_spec(),
            subject_cn: default_ca_cn(),
            lifetime_days: default_ca_days(),
            provided: false,
        }
    }
}

/// `[renewal]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewalConfig {
    /// Renew at this percentage of the lifetime (1-99).
    #[serde(default = "default_threshold")]
    pub threshold_percent: u8,
    /// Make a new key on renewal.
    #[serde(default = "default_true")]
    pub rekey: bool,
    /// First retry after a failed renewal; doubles up to `retry_max_secs`.
    #[serde(default = "default_retry_min")]
    pub retry_min_secs: u64,
    /// Longest wait between retries.
    #[serde(default = "default_retry_max")]
    pub retry_max_secs: u64,
}

fn default_threshold() -> u8 {
    80
}
fn default_true() -> bool {
    true
}
fn default_retry_min() -> u64 {
    5
}
fn default_retry_max() -> u64 {
    3600
}

impl Default for RenewalConfig {
    fn default() -> Self {
        Self {
            threshold_percent: default_threshold(),
            rekey: true,
            retry_min_secs: default_retry_min(),
            retry_max_secs: default_retry_max(),
        }
    }
}

impl RenewalConfig {
    /// The policy a certificate gets when its request names none.
    pub fn default_policy(&self) -> RenewalPolicy {
        RenewalPolicy {
            threshold_percent: self.threshold_percent,
            rekey: self.rekey,
            ..RenewalPolicy::default()
        }
    }
}

/// `[est]`: an RFC 7030 server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EstConfig {
    /// Base URL, up to and including `/.well-known/est` (and a label, if any).
    pub url: String,
    /// PEM file(s) of the CAs that may sign the server's TLS certificate
    /// (RFC 7030 wants an explicit trust anchor; a system bundle such as
    /// `/etc/ssl/certs/ca-certificates.crt` is one, named on purpose). One
    /// path or a list.
    #[serde(deserialize_with = "one_or_more_paths")]
    pub trust_anchors: Vec<PathBuf>,
    /// HTTP basic auth user, with `password_file`.
    #[serde(default)]
    pub username: Option<String>,
    /// A 0600 file holding the basic auth password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// A certd certificate id (imported with its keyd key, or preloaded with
    /// `bootstrap_key`) to authenticate the first enrollment with TLS client
    /// auth.
    #[serde(default)]
    pub bootstrap_cert: Option<String>,
    /// The keyd key of `bootstrap_cert` when certd has none recorded for it
    /// (a preloaded certificate).
    #[serde(default)]
    pub bootstrap_key: Option<String>,
    /// The EST identity (the reference's `identity_cert`, `identity_pk`): a
    /// certificate, stored or preloaded, and its keyd key, that
    /// authenticates every first enrollment. Where there is none yet (or it
    /// has expired), certd enrolls it first with `bootstrap_cert`, for the
    /// key `identity_key`, and renews it like every certificate it enrolled.
    #[serde(default)]
    pub identity_cert: Option<String>,
    /// The key of `identity_cert`.
    #[serde(default)]
    pub identity_key: Option<String>,
    /// How certd renews the EST identity (default: `[renewal]`'s policy;
    /// the reference's `identity_auto_renew`).
    #[serde(default)]
    pub identity_renewal: Option<RenewalPolicy>,
}

/// A path, or a list of them.
fn one_or_more_paths<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Paths {
        One(PathBuf),
        More(Vec<PathBuf>),
    }
    Ok(match Paths::deserialize(d)? {
        Paths::One(p) => vec![p],
        Paths::More(p) => p,
    })
}

/// `[[principal]]`: a uid, the certificate ids it may touch and the names it may ask for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    /// A name for logs and errors.
    pub name: String,
    /// The caller's uid.
    pub uid: u32,
    /// Glob patterns over certificate ids.
    pub certs: Grants,
    /// Glob patterns over the names (CN, DNS, IP, URI) its certificates may carry.
    #[serde(default)]
    pub names: Grants,
}

impl CertdConfig {
    /// Reads the config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        edgeid_common::config::load(path)
    }

    /// A config for a state directory and sockets (dev mode, tests).
    pub fn with_dirs(state_dir: &Path, socket: &Path, keyd_socket: &Path) -> Self {
        Self {
            state_dir: state_dir.to_owned(),
            keyd_socket: keyd_socket.to_owned(),
            server: ServerConfig::private_at(socket),
            ca: CaConfig::default(),
            renewal: RenewalConfig::default(),
            leaf_lifetime_days: default_leaf_days(),
            est: None,
            issuance: BTreeMap::new(),
            principals: Vec::new(),
            preloaded: BTreeMap::new(),
            imported_certs: Vec::new(),
        }
    }

    /// The socket path to bind when not socket-activated.
    pub fn socket(&self) -> PathBuf {
        self.server.socket_or(DEFAULT_SOCKET)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=99).contains(&self.renewal.threshold_percent) {
            return Err("renewal.threshold_percent must be between 1 and 99".into());
        }
        if self.renewal.retry_min_secs == 0
            || self.renewal.retry_max_secs < self.renewal.retry_min_secs
        {
            return Err(
                "renewal.retry_min_secs must be at least 1 and at most renewal.retry_max_secs"
                    .into(),
            );
        }
        for id in [&self.ca.cert_id, &self.ca.key_id] {
            edgeid_common::id::check(id).map_err(|why| format!("ca id '{id}': {why}"))?;
        }
        for (id, issuance) in &self.issuance {
            edgeid_common::id::check(id).map_err(|why| format!("issuance id '{id}': {why}"))?;
            if issuance.expiry_days == Some(0) {
                return Err(format!("issuance.\"{id}\".expiry_days must be at least 1"));
            }
            if issuance.method == IssuerKind::Est && self.est.is_none() {
                return Err(format!(
                    "issuance.\"{id}\" has method \"est\" but there is no [est] table"
                ));
            }
            issuance
                .configured_name()
                .map_err(|why| format!("issuance.\"{id}\".subject: {why}"))?;
            if let Some(url) = &issuance.est_url {
                if issuance.method != IssuerKind::Est {
                    return Err(format!(
                        "issuance.\"{id}\".est_url is for method \"est\" only"
                    ));
                }
                if !url.starts_with("https://") {
                    return Err(format!(
                        "issuance.\"{id}\".est_url '{url}' must be an https:// URL"
                    ));
                }
            }
            if let Some(policy) = &issuance.renewal {
                policy
                    .check()
                    .map_err(|why| format!("issuance.\"{id}\".{why}"))?;
            }
            if issuance.key_id.is_some() && issuance.method != IssuerKind::SelfSigned {
                return Err(format!(
                    "issuance.\"{id}\".key_id is for method \"self-signed\" only"
                ));
            }
        }
        for imported in &self.imported_certs {
            edgeid_common::id::check(&imported.id)
                .map_err(|why| format!("imported_cert id '{}': {why}", imported.id))?;
        }
        for (id, preloaded) in &self.preloaded {
            edgeid_common::id::check(id).map_err(|why| format!("preloaded id '{id}': {why}"))?;
            match (&preloaded.file, &preloaded.ids) {
                (Some(file), None) if file.is_absolute() => {}
                (None, Some(ids)) if !ids.is_empty() => {
                    for part in ids {
                        edgeid_common::id::check(part)
                            .map_err(|why| format!("preloaded.\"{id}\".ids: '{part}': {why}"))?;
                    }
                }
                _ => {
                    return Err(format!(
                    "preloaded.\"{id}\": give file (an absolute path) or ids (not empty), not both"
                ))
                }
            }
        }
        if let Some(est) = &self.est {
            if est.username.is_some() != est.password_file.is_some() {
                return Err("est.username and est.password_file go together".into());
            }
            if !est.url.starts_with("https://") {
                return Err(format!("est.url '{}' must be an https:// URL", est.url));
            }
            if est.trust_anchors.is_empty() {
                return Err("est.trust_anchors names no file".into());
            }
            if est.identity_cert.is_some() != est.identity_key.is_some() {
                return Err("est.identity_cert and est.identity_key go together".into());
            }
            if let Some(policy) = &est.identity_renewal {
                policy
                    .check()
                    .map_err(|why| format!("est.identity_{why}"))?;
            }
            let ids = [
                &est.bootstrap_cert,
                &est.bootstrap_key,
                &est.identity_cert,
                &est.identity_key,
            ];
            for id in ids.into_iter().flatten() {
                edgeid_common::id::check(id).map_err(|why| format!("est id '{id}': {why}"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_example_parses() {
        let text = r#"
            state_dir = "/var/lib/edgeid/certd"
            keyd_socket = "/run/edgeid/keyd.sock"
            [server]
            socket = "/run/edgeid/certd.sock"
            [ca]
            key_id = "device-ca"
            key_spec = "ec-p384"
            [renewal]
            threshold_percent = 70
            rekey = false
            [est]
            url = "https://est.example.com/.well-known/est"
            trust_anchors = "/etc/edgeid/est-ca.pem"
            username = "dev"
            password_file = "/p"
            [[principal]]
            name = "workloadd"
            uid = 993
            certs = ["module/*"]
            names = ["*.module.local"]
        "#;
        let c: CertdConfig = edgeid_common::config::parse(Path::new("c.toml"), text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.ca.key_spec, KeyPairSpec::EcP384);
        assert!(c.principals[0].names.allows("a.module.local"));
        assert!(!c.renewal.rekey);
    }

    #[test]
    fn bad_values_are_named() {
        let text = "state_dir = \"/x\"\n[renewal]\nthreshold_percent = 100\n";
        let c: CertdConfig = edgeid_common::config::parse(Path::new("c.toml"), text).unwrap();
        assert!(c.validate().unwrap_err().contains("threshold_percent"));
        let text = "state_dir = \"/x\"\n[est]\nurl = \"http://x\"\ntrust_anchors = \"/t\"\n";
        let c: CertdConfig = edgeid_common::config::parse(Path::new("c.toml"), text).unwrap();
        assert!(c.validate().unwrap_err().contains("https"));
    }
}
