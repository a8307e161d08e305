//! The domain: which module the caller is, and what it may have done for it:
//! HMACs with its keys (keyd), encryption under a key bound to its module and
//! generation (keyd), certificates for fresh keys (certd's local CA), and the
//! trust bundles.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use edgeid_certd::api::{CreateCertificateRequest, IssuerKind, Profile, SubjectAltNames};
use edgeid_certd::CertdClient;
use edgeid_common::server::Health;
use edgeid_common::sync::lock;
use edgeid_common::Caller;
use edgeid_identityd::api::{DeviceIdentity, ModuleIdentity};
use edgeid_identityd::names;
use edgeid_identityd::IdentitydClient;
use edgeid_keyd::api::{KeyHandle, SignAlgorithm, SymmetricKeyType};
use edgeid_keyd::config::MAX_FORWARDED_PAYLOAD;
use edgeid_keyd::KeydClient;
use http::StatusCode;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::api::*;
use crate::config::WorkloadConfig;
use crate::error::Error;
use crate::server_names::{self, ServerName};

/// Who is asking: the peer process, and the module its socket is bound to
/// (a per-module socket) if it came in on one.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    /// The peer, from the socket.
    pub caller: &'a Caller,
    /// The module of the per-module socket the request came in on.
    pub bound: Option<&'a str>,
}

/// workloadd.
pub struct Workload {
    pub(crate) config: WorkloadConfig,
    pub(crate) keyd: KeydClient,
    certd: CertdClient,
    identityd: IdentitydClient,
    pub(crate) by_uid: HashMap<u32, String>,
    identities: Mutex<HashMap<String, (ModuleIdentity, Instant)>>,
    encryption_base: Mutex<Option<KeyHandle>>,
}

/// The most a module has signed or encrypted in one request (keyd's
/// [`MAX_FORWARDED_PAYLOAD`]); a ciphertext is that and its nonce and tag.
const MAX_PAYLOAD: usize = MAX_FORWARDED_PAYLOAD;
const MAX_CIPHERTEXT: usize = MAX_FORWARDED_PAYLOAD + 64;
/// An initialization vector is bound as associated data: a few bytes.
const MAX_IV: usize = 1024;

/// `value` decoded from base64, if it decodes to at most `max` bytes
/// (keyd takes no more in one request: 413 past it).
fn decode(field: &str, value: &str, max: usize) -> Result<Vec<u8>, Error> {
    let value = value.trim();
    if value.len() / 4 * 3 > max + 3 {
        return Err(too_large(field, max));
    }
    let bytes = STANDARD
        .decode(value)
        .map_err(|_| Error::BadRequest(format!("{field} is not base64")))?;
    if bytes.len() > max {
        return Err(too_large(field, max));
    }
    Ok(bytes)
}

fn too_large(field: &str, max: usize) -> Error {
    Error::TooLarge(format!("{field} is more than {max} bytes"))
}

impl Workload {
    /// A workloadd for this config.
    pub fn new(config: WorkloadConfig) -> Result<Self, Error> {
        config.validate().map_err(Error::Setup)?;
        Ok(Self {
            keyd: KeydClient::new(&config.keyd_socket),
            certd: CertdClient::new(&config.certd_socket),
            identityd: IdentitydClient::new(&config.identityd_socket),
            by_uid: config
                .modules
                .iter()
                .map(|m| (m.uid, m.name.clone()))
                .collect(),
            identities: Mutex::new(HashMap::new()),
            encryption_base: Mutex::new(None),
            config,
        })
    }

    /// The caller's module, which must be `name`, at generation `genid` if given.
    pub async fn module_for(
        &self,
        who: &Who<'_>,
        name: &str,
        genid: Option<&str>,
    ) -> Result<ModuleIdentity, Error> {
        names::check_module_id(name)
            .map_err(|e| Error::BadRequest(format!("module name '{}': {e}", names::shown(name))))?;
        let caller = who.caller;
        let mine = self.module_name(who)?;
        if mine != name {
            tracing::warn!(uid = caller.uid, pid = caller.pid, module = %names::shown(name), own = %mine, "refused: another module's name");
            let who_is = match who.bound {
                Some(_) => "this socket is".to_owned(),
                None => format!("uid {} is", caller.uid),
            };
            return Err(Error::Forbidden(format!(
                "{who_is} module '{mine}'; it may not act for module '{}'",
                names::shown(name)
            )));
        }
        let cached = lock(&self.identities)
            .get(name)
            .filter(|(_, at)| at.elapsed() < Duration::from_secs(self.config.identity_cache_secs))
            .map(|(m, _)| m.clone());
        let identity = match cached {
            Some(m) if genid.is_none() || genid == Some(m.generation_id.as_str()) => m,
            // Stale, absent, or another generation: ask identityd.
            _ => self.fetch_identity(name).await?,
        };
        if let Some(g) = genid {
            if g != identity.generation_id {
                return Err(Error::NotFound(format!(
                    "module '{name}' has no generation '{}'",
                    names::shown(g)
                )));
            }
        }
        Ok(identity)
    }

    /// The module's identity as identityd has it now (and kept for `module_for`).
    pub(crate) async fn fetch_identity(&self, name: &str) -> Result<ModuleIdentity, Error> {
        let identity = self
            .identityd
            .module(name)
            .await
            .map_err(|e| Error::from_daemon("identityd", &format!("module '{name}'"), e))?;
        lock(&self.identities).insert(name.to_owned(), (identity.clone(), Instant::now()));
        Ok(identity)
    }

    /// `POST .../sign`: HMAC-SHA256 with the module's primary key (or its
    /// secondary one if `keyId` asks), in keyd.
    pub async fn sign(
        &self,
        who: &Who<'_>,
        name: &str,
        genid: &str,
        req: SignRequest,
    ) -> Result<SignResponse, Error> {
        let algo = req.algo.as_deref().unwrap_or("HMACSHA256");
        if algo != "HMACSHA256" {
            return Err(Error::BadRequest(format!(
                "algo '{}' is not supported; HMACSHA256 is",
                names::shown(algo)
            )));
        }
        let key_id = req.key_id.as_deref().unwrap_or("primary");
        let data = decode("data", &req.data, MAX_PAYLOAD)?;
        let module = self.module_for(who, name, Some(genid)).await?;
        let handle = match key_id {
            "primary" => module.auth.key_handle.clone(),
            "secondary" => module.auth.secondary_key_handle.clone(),
            other => {
                return Err(Error::BadRequest(format!(
                    "keyId '{}' is unknown; primary or secondary",
                    names::shown(other)
                )))
            }
        }
        .filter(|_| module.auth.cert_id.is_none())
        .ok_or_else(|| {
            Error::BadRequest(format!(
                "module '{name}' authenticates with a certificate; it has no {key_id} key"
            ))
        })?;
        let digest = self
            .keyd
            .sign(&handle, SignAlgorithm::HmacSha256, &data, false)
            .await
            .map_err(|e| Error::from_daemon("keyd", "signing", e))?;
        Ok(SignResponse {
            digest: STANDARD.encode(digest),
        })
    }

    /// The module's encryption key: derived in keyd from the base AES key
    /// with its id and generation.
    async fn encryption_key(&self, module: &ModuleIdentity) -> Result<KeyHandle, Error> {
        let cached = lock(&self.encryption_base).clone();
        let base = match cached {
            Some(h) => h,
            None => {
                let id = &self.config.encryption_key_id;
                let h = self
                    .keyd
                    .create_key(id, SymmetricKeyType::Aes256Gcm, None)
                    .await
                    .map_err(|e| Error::from_daemon("keyd", &format!("key '{id}'"), e))?;
                *lock(&self.encryption_base) = Some(h.clone());
                h
            }
        };
        let info = format!(
            "edgeid workload encryption\n{}\n{}",
            module.module_id, module.generation_id
        );
        self.keyd.derive(&base, info.as_bytes()).await.map_err(|e| {
            // The base key was replaced in keyd: make or load it again next time.
            *lock(&self.encryption_base) = None;
            Error::from_daemon("keyd", "deriving the module's key", e)
        })
    }

    /// `POST .../encrypt`: AES-256-GCM in keyd; the IV is bound as associated data.
    pub async fn encrypt(
        &self,
        who: &Who<'_>,
        name: &str,
        genid: &str,
        req: EncryptRequest,
    ) -> Result<EncryptResponse, Error> {
        let plaintext = Zeroizing::new(decode("plaintext", &req.plaintext, MAX_PAYLOAD)?);
        let iv = decode("initializationVector", &req.initialization_vector, MAX_IV)?;
        let module = self.module_for(who, name, Some(genid)).await?;
        let key = self.encryption_key(&module).await?;
        let ciphertext = self
            .keyd
            .encrypt(&key, &plaintext, Some(&iv))
            .await
            .map_err(|e| Error::from_daemon("keyd", "encrypting", e))?;
        Ok(EncryptResponse {
            ciphertext: STANDARD.encode(ciphertext),
        })
    }

    /// `POST .../decrypt`
    pub async fn decrypt(
        &self,
        who: &Who<'_>,
        name: &str,
        genid: &str,
        req: DecryptRequest,
    ) -> Result<DecryptResponse, Error> {
        let ciphertext = decode("ciphertext", &req.ciphertext, MAX_CIPHERTEXT)?;
        let iv = decode("initializationVector", &req.initialization_vector, MAX_IV)?;
        let module = self.module_for(who, name, Some(genid)).await?;
        let key = self.encryption_key(&module).await?;
        let plaintext = Zeroizing::new(
            self.keyd
                .decrypt(&key, &ciphertext, Some(&iv))
                .await
                .map_err(|e| match e.status() {
                    Some(StatusCode::BAD_REQUEST) => Error::BadRequest(
                        "the ciphertext does not decrypt under this module's key and initializationVector".into(),
                    ),
                    _ => Error::from_daemon("keyd", "decrypting", e),
                })?,
        );
        Ok(DecryptResponse {
            plaintext: STANDARD.encode(plaintext.as_slice()),
        })
    }

    /// The device identity, asked each time (a reprovisioning may change it;
    /// certificates are issued rarely).
    pub(crate) async fn device(&self) -> Result<DeviceIdentity, Error> {
        self.identityd
            .device()
            .await
            .map_err(|e| Error::from_daemon("identityd", "the device identity", e))
    }

    /// `POST /modules/{name}/certificate/identity`: a client certificate for a
    /// fresh key; CN the module id, URI SAN its SPIFFE-style id.
    pub async fn identity_certificate(
        &self,
        who: &Who<'_>,
        name: &str,
        req: IdentityCertificateRequest,
    ) -> Result<CertificateResponse, Error> {
        let lifetime = lifetime(
            req.expiration.as_deref(),
            self.config.certificates.identity_max_days,
        )?;
        let module = self.module_for(who, name, None).await?;
        let device = self.device().await?;
        let uri = format!(
            "spiffe://{}/devices/{}/modules/{}",
            device.hub,
            edgeid_identityd::sas::encode(&device.device_id),
            edgeid_identityd::sas::encode(&module.module_id)
        );
        let san = SubjectAltNames {
            uri: vec![uri],
            ..Default::default()
        };
        self.issue(
            &module,
            "identity",
            Profile::Client,
            &module.module_id,
            san,
            lifetime,
        )
        .await
    }

    /// `POST /modules/{name}/genid/{genid}/certificate/server`: a server
    /// certificate for a fresh key, with the runtime's names: the common
    /// name (a DNS name, or an IP address) and the module id as a DNS name
    /// (less a leading `$`, where it is one). The common name must be one
    /// of the module's names (`server_names.rs`); the runtime takes any.
    pub async fn server_certificate(
        &self,
        who: &Who<'_>,
        name: &str,
        genid: &str,
        req: ServerCertificateRequest,
    ) -> Result<CertificateResponse, Error> {
        let cn = req.common_name.trim();
        let Some(requested) = ServerName::parse(cn) else {
            return Err(Error::BadRequest(format!(
                "commonName '{}' is neither a host name nor an IP address",
                names::shown(cn)
            )));
        };
        let lifetime = lifetime(
            req.expiration.as_deref(),
            self.config.certificates.server_max_days,
        )?;
        let module = self.module_for(who, name, Some(genid)).await?;
        server_names::check(&self.config.certificates, &module.module_id, &requested)
            .map_err(Error::Forbidden)?;
        let mut san = SubjectAltNames::default();
        match requested {
            ServerName::Ip(ip) => san.ip.push(ip),
            ServerName::Dns(dns) => san.dns.push(dns),
        }
        if let Some(own) = server_names::own_name(&module.module_id) {
            if !san.dns.iter().any(|d| d.eq_ignore_ascii_case(own)) {
                san.dns.push(own.to_owned());
            }
        }
        self.issue(&module, "server", Profile::Server, cn, san, lifetime)
            .await
    }

    /// `GET /modules`: the modules identityd knows, to a caller that is a
    /// module or the orchestrator (the runtime answers anyone; a uid that is
    /// neither has no business knowing them).
    pub async fn list_modules(&self, who: &Who<'_>) -> Result<ListModulesResponse, Error> {
        // A module socket is its module; on the main socket, a mapped uid or
        // the orchestrator.
        if who.bound.is_none() {
            self.admits(who.caller)?;
        }
        let modules = self
            .identityd
            .modules()
            .await
            .map_err(|e| Error::from_daemon("identityd", "the module list", e))?;
        Ok(ListModulesResponse {
            modules: modules
                .into_iter()
                .map(|m| ModuleDetails {
                    id: "id".into(),
                    name: m.module_id,
                    module_type: "docker".into(),
                    config: ModuleConfig {
                        settings: serde_json::json!({"image": "", "createOptions": {}}),
                        env: Vec::new(),
                    },
                    status: ModuleStatus {
                        runtime_status: RuntimeStatus {
                            status: "unknown".into(),
                        },
                    },
                })
                .collect(),
        })
    }

    async fn issue(
        &self,
        module: &ModuleIdentity,
        kind: &str,
        profile: Profile,
        cn: &str,
        san: SubjectAltNames,
        lifetime: Duration,
    ) -> Result<CertificateResponse, Error> {
        let (key, chain) = self
            .issue_for_fresh_key(&module.module_id, kind, profile, cn, san, lifetime)
            .await?;
        Ok(CertificateResponse {
            private_key: PrivateKey {
                key_type: "key".into(),
                bytes: key.serialize_pem().into(),
            },
            expiration: not_after(&chain)?,
            certificate: chain,
        })
    }

    /// A fresh P-256 key and a certificate for it from certd's local CA (PEM
    /// chain, leaf first). The key is the module's to hold (IoT Edge and
    /// SPIFFE both hand it over): made here, sent once, never stored; so
    /// certd is asked not to store or renew the certificate either.
    pub(crate) async fn issue_for_fresh_key(
        &self,
        module_id: &str,
        kind: &str,
        profile: Profile,
        cn: &str,
        san: SubjectAltNames,
        lifetime: Duration,
    ) -> Result<(rcgen::KeyPair, String), Error> {
        let (key, csr) = edgeid_certd::issuer::fresh_key_and_csr(cn)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let id = format!("workload/{}/{kind}", names::module_resource_id(module_id));
        let chain = self
            .certd
            .create(&CreateCertificateRequest {
                id,
                issuer: Some(IssuerKind::LocalCa),
                profile,
                csr: Some(csr),
                key_id: None,
                key_spec: None,
                subject_cn: Some(cn.to_owned()),
                san: Some(san),
                subject: Default::default(),
                lifetime_secs: Some(lifetime.as_secs().max(1)),
                renewal: None,
                transient: true,
            })
            .await
            .map_err(|e| Error::from_daemon("certd", "issuing the certificate", e))?;
        Ok((key, chain))
    }

    /// `GET /trust-bundle`
    pub async fn trust_bundle(&self) -> Result<TrustBundleResponse, Error> {
        let pem = self
            .certd
            .trust_bundle()
            .await
            .map_err(|e| Error::from_daemon("certd", "the trust bundle", e))?;
        Ok(TrustBundleResponse { certificate: pem })
    }

    /// `GET /manifest-trust-bundle`: the configured file, or empty.
    pub async fn manifest_trust_bundle(&self) -> Result<TrustBundleResponse, Error> {
        let certificate = match &self.config.manifest_trust_bundle {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| Error::Internal(format!("cannot read {}: {e}", path.display())))?,
            None => String::new(),
        };
        Ok(TrustBundleResponse { certificate })
    }

    /// `GET /health`
    pub async fn health(&self) -> Health {
        let up = |ok: bool| {
            if ok {
                "ok".to_owned()
            } else {
                "unavailable".to_owned()
            }
        };
        let mut backends = std::collections::BTreeMap::new();
        backends.insert(
            "identityd".into(),
            up(self.identityd.health().await.is_ok()),
        );
        backends.insert("certd".into(), up(self.certd.health().await.is_ok()));
        backends.insert("keyd".into(), up(self.keyd.health().await.is_ok()));
        Health::of(backends)
    }
}

/// The lifetime for a requested expiration: the policy's maximum when none
/// is asked for or more is; 400 for a time not in the future.
fn lifetime(expiration: Option<&str>, max_days: u64) -> Result<Duration, Error> {
    let max = Duration::from_secs(max_days.saturating_mul(86_400));
    let Some(text) = expiration else {
        return Ok(max);
    };
    let at = OffsetDateTime::parse(text.trim(), &Rfc3339).map_err(|_| {
        Error::BadRequest(format!(
            "expiration '{}' is not an RFC 3339 time",
            names::shown(text)
        ))
    })?;
    let left = at - OffsetDateTime::now_utc();
    if left <= time::Duration::seconds(60) {
        return Err(Error::BadRequest(format!(
            "expiration '{}' is not in the future",
            names::shown(text)
        )));
    }
    Ok(Duration::try_from(left).unwrap_or(max).min(max))
}

fn not_after(chain_pem: &str) -> Result<String, Error> {
    edgeid_certd::chain::leaf_not_after(chain_pem).map_err(|e| Error::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expirations_are_clamped_and_past_ones_refused() {
        let max = Duration::from_secs(30 * 86_400);
        assert_eq!(lifetime(None, 30).unwrap(), max);
        let far = (OffsetDateTime::now_utc() + time::Duration::days(3650))
            .format(&Rfc3339)
            .unwrap();
        assert_eq!(lifetime(Some(&far), 30).unwrap(), max);
        let soon = (OffsetDateTime::now_utc() + time::Duration::hours(2))
            .format(&Rfc3339)
            .unwrap();
        let got = lifetime(Some(&soon), 30).unwrap();
        assert!(got <= Duration::from_secs(7200) && got > Duration::from_secs(7000));
        assert!(lifetime(Some("2001-01-01T00:00:00Z"), 30).is_err());
        assert!(lifetime(Some("tomorrow"), 30).is_err());
    }
}
