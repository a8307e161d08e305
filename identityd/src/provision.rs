//! Provisioning: turning `[provisioning]` into a [`DeviceRecord`]. Keys given
//! in files are imported into keyd and never kept by identityd; the record
//! names keys and certificates by id only.

use std::collections::BTreeMap;
use std::path::Path;

use aws_lc_rs::digest;
use edgeid_certd::api::{CreateCertificateRequest, IssuerKind, Profile};
use edgeid_certd::CertdClient;
use edgeid_keyd::api::{KeyHandle, SymmetricKeyType};
use edgeid_keyd::KeydClient;
use http::StatusCode;
use serde_json::json;
use zeroize::Zeroizing;

use crate::cloud::Cloud;
use crate::config::{
    AttestationConfig, DeviceAuthConfig, DpsConfig, IdentitydConfig, KeySource, LocalConfig,
    ManualConfig, ProvisioningConfig,
};
use crate::connection_string::{decode_key, ConnectionString};
use crate::credentials::Credentials;
use crate::dps::{Proof, Registration};
use crate::error::Error;
use crate::store::{Credential, DeviceRecord, KeyRef};

/// Reads a key file: 0600 (or stricter), base64.
fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, Error> {
    edgeid_common::fs::check_private(path)
        .map_err(|e| Error::Setup(format!("key file {}: {e}", path.display())))?;
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| Error::Setup(format!("cannot read key file {}: {e}", path.display())))?,
    );
    decode_key(&text).map_err(|e| Error::Setup(format!("key file {}: {e}", path.display())))
}

/// A digest of what provisioning depends on: a changed config provisions again.
pub fn fingerprint(config: &IdentitydConfig) -> String {
    let source = match &config.provisioning {
        ProvisioningConfig::Manual(m) => json!({
            "connection_string": m.connection_string.as_ref().map(|cs| {
                hex(digest::digest(&digest::SHA256, cs.0.as_bytes()).as_ref())
            }),
            "hub": m.hub,
            "device_id": m.device_id,
            "auth": m.auth,
        }),
        ProvisioningConfig::Dps(d) => json!(d),
        ProvisioningConfig::Local(l) => json!(l),
    };
    let mut source = source;
    if let ProvisioningConfig::Manual(ManualConfig {
        gateway: Some(gateway),
        ..
    }) = &config.provisioning
    {
        // Only when set: devices with none keep the fingerprint they had.
        source["gateway"] = json!(gateway);
    }
    let whole = json!({
        "source": config.provisioning.source(),
        "provisioning": source,
        "keys": config.keys,
    });
    hex(digest::digest(&digest::SHA256, whole.to_string().as_bytes()).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What provisioning works with: the config, keyd and certd (through which
/// every key and certificate is made or imported), and the cloud.
pub(crate) struct Provisioner<'a> {
    pub(crate) config: &'a IdentitydConfig,
    pub(crate) keyd: &'a KeydClient,
    pub(crate) certd: &'a CertdClient,
    pub(crate) cloud: &'a Cloud,
}

impl Provisioner<'_> {
    fn config(&self) -> &IdentitydConfig {
        self.config
    }

    fn keyd(&self) -> &KeydClient {
        self.keyd
    }

    fn certd(&self) -> &CertdClient {
        self.certd
    }

    fn cloud(&self) -> &Cloud {
        self.cloud
    }

    fn credentials(&self) -> Credentials<'_> {
        Credentials {
            keyd: self.keyd,
            certd: self.certd,
            handles: crate::credentials::Handles::Granted,
        }
    }

    /// One provisioning attempt from the config; the result, not yet stored.
    pub(crate) async fn provision_once(&self) -> Result<DeviceRecord, Error> {
        let config = self.config();
        let fp = fingerprint(config);
        let source = config.provisioning.source();
        let (hub, device_id, credential) = match &config.provisioning {
            ProvisioningConfig::Manual(m) => self.provision_manual(m).await?,
            ProvisioningConfig::Dps(d) => self.provision_dps(d).await?,
            ProvisioningConfig::Local(l) => self.provision_local(l).await?,
        };
        let mut record = DeviceRecord::new(source, fp, hub, device_id, credential);
        if let ProvisioningConfig::Manual(m) = &config.provisioning {
            record.gateway = m.gateway.clone();
        }
        Ok(record)
    }

    async fn provision_manual(
        &self,
        m: &ManualConfig,
    ) -> Result<(String, String, Credential), Error> {
        let device_key = &self.config().keys.device;
        if let Some(cs) = &m.connection_string {
            let cs = ConnectionString::parse(&cs.0)
                .map_err(|e| Error::Setup(format!("provisioning.connection_string: {e}")))?;
            self.import_key(device_key, &cs.key).await?;
            let key = KeyRef {
                id: device_key.clone(),
                derive: None,
            };
            return Ok((cs.hub, cs.device_id, Credential::Sas { key }));
        }
        let (Some(hub), Some(device_id), Some(auth)) = (&m.hub, &m.device_id, &m.auth) else {
            return Err(Error::Setup(
                "provisioning: manual needs connection_string, or hub, device_id and auth".into(),
            ));
        };
        let credential = match auth {
            DeviceAuthConfig::Sas(source) => Credential::Sas {
                key: KeyRef {
                    id: self.key_from(source, device_key).await?,
                    derive: None,
                },
            },
            DeviceAuthConfig::X509 {
                cert_id,
                key_id,
                subject,
            } => Credential::X509 {
                cert_id: cert_id.clone(),
                key_id: self
                    .check_x509(cert_id, key_id, Some((device_id, subject)))
                    .await?,
            },
        };
        Ok((hub.clone(), device_id.clone(), credential))
    }

    async fn provision_local(
        &self,
        l: &LocalConfig,
    ) -> Result<(String, String, Credential), Error> {
        let cert_id = self.config().keys.local_device_cert.clone();
        match self.certd().get(&cert_id).await {
            Ok(_) => {}
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => {
                let req = CreateCertificateRequest {
                    id: cert_id.clone(),
                    issuer: Some(IssuerKind::LocalCa),
                    profile: Profile::Client,
                    csr: None,
                    key_id: Some(cert_id.clone()),
                    key_spec: None,
                    subject_cn: Some(l.device_id.clone()),
                    san: None,
                    subject: Default::default(),
                    lifetime_secs: None,
                    renewal: None,
                    transient: false,
                };
                self.certd().create(&req).await.map_err(|e| {
                    Error::from_daemon("certd", "issuing the device certificate", e)
                })?;
            }
            Err(e) => {
                return Err(Error::from_daemon(
                    "certd",
                    &format!("device certificate '{cert_id}'"),
                    e,
                ))
            }
        }
        Ok((
            l.hub.clone(),
            l.device_id.clone(),
            Credential::X509 {
                cert_id,
                key_id: None,
            },
        ))
    }

    async fn provision_dps(&self, d: &DpsConfig) -> Result<(String, String, Credential), Error> {
        let config = self.config();
        let endpoint = crate::cloud::authority_of(&d.global_endpoint)?;
        let (registration_id, proof, credential) = match &d.attestation {
            AttestationConfig::SymmetricKey {
                registration_id,
                key,
                group,
            } => {
                let id = self.key_from(key, &config.keys.enrollment).await?;
                let key = KeyRef {
                    id,
                    derive: group.then(|| registration_id.clone()),
                };
                let handle = self.credentials().symmetric_handle(&key).await?;
                (
                    registration_id.clone(),
                    Proof::Sas(handle),
                    Some(Credential::Sas { key }),
                )
            }
            AttestationConfig::X509 {
                registration_id,
                cert_id,
                key_id,
                subject,
            } => {
                let name = registration_id.as_deref().map(|r| (r, subject));
                let preloaded_key = self.check_x509(cert_id, key_id, name).await?;
                let identity = self
                    .credentials()
                    .x509_identity(cert_id, preloaded_key.as_deref())
                    .await?;
                let registration_id = match registration_id {
                    Some(r) => r.clone(),
                    None => common_name(&identity.0[0]).ok_or_else(|| {
                        Error::Setup(format!(
                            "certificate '{cert_id}' has no common name to register as; set provisioning.attestation.registration_id"
                        ))
                    })?,
                };
                (
                    registration_id,
                    Proof::X509(identity),
                    Some(Credential::X509 {
                        cert_id: cert_id.clone(),
                        key_id: preloaded_key,
                    }),
                )
            }
            AttestationConfig::Tpm { registration_id } => {
                let keys = self.keyd().tpm_attestation_keys().await.map_err(|e| {
                    Error::from_daemon("keyd", "reading the TPM's endorsement key", e)
                })?;
                (
                    registration_id.clone(),
                    Proof::Tpm {
                        endorsement_key: keys.endorsement_key.public.0,
                        storage_key: keys.storage_key.public.0,
                        key_id: config.keys.device.clone(),
                    },
                    None,
                )
            }
        };
        let registration = Registration {
            cloud: self.cloud(),
            keyd: self.keyd(),
            endpoint: &endpoint,
            id_scope: &d.id_scope,
            registration_id: &registration_id,
            api_version: &config.cloud.dps_api_version,
            timeout: std::time::Duration::from_secs(config.cloud.dps_timeout_secs.max(1)),
            payload: d.payload()?,
        };
        let assignment = registration.run(proof).await?;
        let credential = credential.unwrap_or_else(|| Credential::Sas {
            key: KeyRef {
                id: config.keys.device.clone(),
                derive: None,
            },
        });
        tracing::info!(hub = %assignment.hub, device = %assignment.device_id, "DPS assigned the device");
        Ok((assignment.hub, assignment.device_id, credential))
    }

    /// The keyd id of a configured key: a key file is imported under `default_id`.
    async fn key_from(&self, source: &KeySource, default_id: &str) -> Result<String, Error> {
        match (&source.key_file, &source.key_id) {
            (Some(file), _) => {
                let key = read_key_file(file)?;
                self.import_key(default_id, &key).await?;
                Ok(default_id.to_owned())
            }
            (None, Some(id)) => {
                self.keyd()
                    .key(id)
                    .await
                    .map_err(|e| Error::from_daemon("keyd", &format!("key '{id}'"), e))?;
                Ok(id.clone())
            }
            (None, None) => Err(Error::Setup("a key needs key_file or key_id".into())),
        }
    }

    /// Imports an HMAC key into keyd, replacing one of other bytes under the same id.
    async fn import_key(&self, id: &str, key: &[u8]) -> Result<KeyHandle, Error> {
        let keyd = self.keyd();
        match keyd
            .create_key(id, SymmetricKeyType::HmacSha256, Some(key))
            .await
        {
            Ok(h) => Ok(h),
            Err(e) if e.status() == Some(StatusCode::CONFLICT) => {
                tracing::info!(
                    key = id,
                    "replacing the device key in keyd with the configured one"
                );
                keyd.delete_key(id)
                    .await
                    .map_err(|e| Error::from_daemon("keyd", &format!("replacing key '{id}'"), e))?;
                keyd.create_key(id, SymmetricKeyType::HmacSha256, Some(key))
                    .await
                    .map_err(|e| Error::from_daemon("keyd", &format!("importing key '{id}'"), e))
            }
            Err(e) => Err(Error::from_daemon(
                "keyd",
                &format!("importing key '{id}'"),
                e,
            )),
        }
    }

    /// A certificate in certd whose key is `key_id` in keyd: one certd
    /// records the key of (then `None`: the key is certd's to follow through
    /// renewals), or a preloaded one (the reference's `identity_cert` file)
    /// whose leaf certifies `key_id`'s public key (then `Some(key_id)`).
    ///
    /// A certificate that does not exist is asked for first, as the
    /// reference asks for it: for the key `key_id` (made if missing), with
    /// the common name of `name` (the device or registration id) and its
    /// other subject attributes, issued as certd's `[issuance."<cert_id>"]`
    /// says (EST, its local CA).
    async fn check_x509(
        &self,
        cert_id: &str,
        key_id: &str,
        name: Option<(&str, &BTreeMap<String, String>)>,
    ) -> Result<Option<String>, Error> {
        let info = match self.certd().get(cert_id).await {
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => {
                let Some((cn, more)) = name else {
                    return Err(Error::Setup(format!(
                        "certificate '{cert_id}' does not exist, and without a registration_id there is no name to ask certd for one under"
                    )));
                };
                self.issue_identity_cert(cert_id, key_id, cn, more).await?;
                self.certd().get(cert_id).await
            }
            other => other,
        }
        .map_err(|e| Error::from_daemon("certd", &format!("certificate '{cert_id}'"), e))?;
        match info.key_id.as_deref() {
            Some(k) if k == key_id || k.starts_with(&format!("{key_id}.r")) => Ok(None),
            Some(k) => Err(Error::Setup(format!(
                "certificate '{cert_id}' certifies keyd key '{k}', not '{key_id}'"
            ))),
            None => {
                let keyd = self.keyd();
                let from = |e| Error::from_daemon("keyd", &format!("key '{key_id}'"), e);
                let handle = keyd.key_pair(key_id).await.map_err(from)?;
                let public = keyd.public_key(&handle).await.map_err(from)?;
                let key_spki = pem::parse(&public.pem)
                    .map_err(|e| Error::Internal(format!("keyd sent an unreadable key: {e}")))?
                    .into_contents();
                let leaf = pem::parse(&info.pem)
                    .map_err(|e| Error::Setup(format!("certificate '{cert_id}': {e}")))?
                    .into_contents();
                let (_, cert) = x509_parser::parse_x509_certificate(&leaf)
                    .map_err(|e| Error::Setup(format!("certificate '{cert_id}': {e}")))?;
                if cert.public_key().raw != key_spki.as_slice() {
                    return Err(Error::Setup(format!(
                        "certificate '{cert_id}' does not certify keyd key '{key_id}'"
                    )));
                }
                Ok(Some(key_id.to_owned()))
            }
        }
    }
}

impl Provisioner<'_> {
    /// Asks certd for the device's identity certificate `cert_id` for keyd
    /// key `key_id` (made if missing), naming `cn` and `more`, issued as
    /// certd's `[issuance."<cert_id>"]` says. certd keeps the certificate,
    /// its key and its subject, and renews it (with a new key, by its
    /// renewal policy) before it expires: identityd reads both from certd
    /// whenever it authenticates, so a renewal needs nothing of it.
    async fn issue_identity_cert(
        &self,
        cert_id: &str,
        key_id: &str,
        cn: &str,
        more: &BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let req = CreateCertificateRequest {
            id: cert_id.to_owned(),
            issuer: None,
            profile: Profile::Client,
            csr: None,
            key_id: Some(key_id.to_owned()),
            key_spec: None,
            subject_cn: Some(cn.to_owned()),
            san: None,
            subject: more.clone(),
            lifetime_secs: None,
            renewal: None,
            transient: false,
        };
        self.certd().create(&req).await.map_err(|e| {
            Error::from_daemon(
                "certd",
                &format!("issuing the identity certificate '{cert_id}'"),
                e,
            )
        })?;
        tracing::info!(
            cert = cert_id,
            key = key_id,
            cn,
            "the device's identity certificate was issued"
        );
        Ok(())
    }
}

/// The subject common name of a DER certificate.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(cn)
}
