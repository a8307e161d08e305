//! The device's and modules' credentials as keyd and certd hold them: the
//! keyd handle of a symmetric key (derivation applied), of the key a
//! certificate certifies, and a TLS client identity from both. identityd
//! never holds the keys themselves.

use std::sync::Arc;

use edgeid_certd::signer::KeydKey;
use edgeid_certd::CertdClient;
use edgeid_keyd::api::KeyHandle;
use edgeid_keyd::KeydClient;

use crate::api::{Auth, AuthType};
use crate::cloud::Identity;
use crate::error::Error;
use crate::hub::DeviceProof;
use crate::sas;
use crate::store::{Credential, DeviceRecord, KeyRef};

/// keyd and certd, for the credentials they hold.
pub(crate) struct Credentials<'a> {
    pub(crate) keyd: &'a KeydClient,
    pub(crate) certd: &'a CertdClient,
    /// Which handles to answer.
    pub(crate) handles: Handles,
}

/// Which keyd handles an identity carries: keyd's own, checked against
/// the grants of whoever uses them (`/v1`), or bearer handles, usable by
/// whoever holds them (the aziot API's, as aziot-edged and the SDKs use a
/// module's `keyHandle` to sign through keyd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handles {
    /// Checked against the grants of whoever uses them.
    Granted,
    /// A capability of their own.
    Bearer,
}

impl Credentials<'_> {
    /// The keyd handle of a symmetric key, derivation applied.
    pub async fn symmetric_handle(&self, key: &KeyRef) -> Result<KeyHandle, Error> {
        let handle = match self.handles {
            Handles::Granted => self.keyd.key(&key.id).await,
            Handles::Bearer => self.keyd.bearer_key(&key.id).await,
        }
        .map_err(|e| Error::from_daemon("keyd", &format!("key '{}'", key.id), e))?;
        match &key.derive {
            None => Ok(handle),
            Some(info) => self
                .keyd
                .derive(&handle, info.as_bytes())
                .await
                .map_err(|e| {
                    Error::from_daemon("keyd", &format!("deriving from key '{}'", key.id), e)
                }),
        }
    }

    /// The keyd handle of the key a certd certificate certifies now.
    pub async fn cert_key_handle(
        &self,
        cert_id: &str,
        key_id: Option<&str>,
    ) -> Result<KeyHandle, Error> {
        let key_id = self.cert_and_key(cert_id, key_id).await?.1;
        match self.handles {
            Handles::Granted => self.keyd.key_pair(&key_id).await,
            Handles::Bearer => self.keyd.bearer_key_pair(&key_id).await,
        }
        .map_err(|e| Error::from_daemon("keyd", &format!("key '{key_id}'"), e))
    }

    pub async fn cert_key_id(&self, cert_id: &str) -> Result<String, Error> {
        Ok(self.cert_and_key(cert_id, None).await?.1)
    }

    /// A certd certificate (PEM chain) and the keyd id of the key it
    /// certifies now: the one certd records, else `key_id` (a preloaded
    /// certificate's, which provisioning checked against it).
    pub async fn cert_and_key(
        &self,
        cert_id: &str,
        key_id: Option<&str>,
    ) -> Result<(String, String), Error> {
        let info = self
            .certd
            .get(cert_id)
            .await
            .map_err(|e| Error::from_daemon("certd", &format!("certificate '{cert_id}'"), e))?;
        let key_id = info.key_id.or(key_id.map(str::to_owned)).ok_or_else(|| {
            Error::Internal(format!(
                "certd does not know the key of certificate '{cert_id}'"
            ))
        })?;
        Ok((info.pem, key_id))
    }

    /// A TLS client identity: the certificate chain from certd, its key in keyd.
    pub async fn x509_identity(
        &self,
        cert_id: &str,
        key_id: Option<&str>,
    ) -> Result<Identity, Error> {
        let (pem_text, key_id) = self.cert_and_key(cert_id, key_id).await?;
        let chain: Vec<Vec<u8>> = pem::parse_many(&pem_text)
            .map_err(|e| Error::Internal(format!("certd sent an unreadable chain: {e}")))?
            .into_iter()
            .filter(|p| p.tag() == "CERTIFICATE")
            .map(|p| p.into_contents())
            .collect();
        if chain.is_empty() {
            return Err(Error::Internal(format!("certificate '{cert_id}' is empty")));
        }
        let key = KeydKey::load(self.keyd, &key_id)
            .await
            .map_err(Error::from_certd)?;
        Ok((chain, Arc::new(key)))
    }
}

impl Credentials<'_> {
    /// The device's credential as its identity carries it.
    pub(crate) async fn device_auth(&self, device: &DeviceRecord) -> Result<Auth, Error> {
        Ok(match &device.credential {
            Credential::Sas { key } => Auth {
                auth_type: AuthType::Sas,
                key_handle: Some(self.symmetric_handle(key).await?),
                cert_id: None,
                secondary_key_handle: None,
            },
            Credential::X509 { cert_id, key_id } => Auth {
                auth_type: AuthType::X509,
                key_handle: Some(self.cert_key_handle(cert_id, key_id.as_deref()).await?),
                cert_id: Some(cert_id.clone()),
                secondary_key_handle: None,
            },
        })
    }

    /// How identityd authenticates to the hub as the device: a SAS token of
    /// an hour, or its certificate and key.
    pub(crate) async fn device_proof(&self, device: &DeviceRecord) -> Result<DeviceProof, Error> {
        match &device.credential {
            Credential::Sas { key } => {
                let handle = self.symmetric_handle(key).await?;
                let resource = sas::device_resource(&device.hub, &device.device_id);
                let token =
                    sas::sign(self.keyd, &handle, &resource, sas::now() + 3600, None).await?;
                Ok(DeviceProof::Token(token.token))
            }
            Credential::X509 { cert_id, key_id } => Ok(DeviceProof::X509(
                self.x509_identity(cert_id, key_id.as_deref()).await?,
            )),
        }
    }
}
