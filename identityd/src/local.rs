//! Local identities (the aziot identity API's `type=local`): an X.509
//! identity for a host process that has no hub identity, its key made here
//! and handed to the caller once with a certificate from certd's local CA.
//! Nothing is stored, as with the reference: each request issues anew.

use edgeid_certd::api::{CreateCertificateRequest, IssuerKind, Profile};
use edgeid_common::encoding::SecretString;
use edgeid_common::Caller;

use crate::error::Error;
use crate::identities::Identityd;
use crate::names;
use crate::principal::{LocalIdKind, Role};

/// A local identity, as issued.
#[derive(Debug, Clone)]
pub struct LocalIdentity {
    /// The module id it names.
    pub module_id: String,
    /// Its private key, PKCS#8 PEM: the caller's to keep.
    pub private_key: SecretString,
    /// Its certificate chain, PEM, leaf first.
    pub certificate: String,
    /// The leaf's notAfter, RFC 3339 (`+00:00`).
    pub expiration: String,
}

impl Identityd {
    /// Issues a local identity for `module_id`: a TLS client certificate,
    /// or with `server` one for both ends (the reference's `server`
    /// attribute "also has client attributes"). The orchestrator's and
    /// administrators' to ask for.
    pub async fn issue_local_identity(
        &self,
        caller: &Caller,
        module_id: &str,
        server: bool,
    ) -> Result<LocalIdentity, Error> {
        self.authorize_orchestrator(caller)?;
        names::check_module_id(module_id).map_err(|e| {
            Error::BadRequest(format!("module id '{}': {e}", names::shown(module_id)))
        })?;
        if self.local_principal(module_id).is_some() {
            // As the reference: a principal's local identity is its own.
            return Err(Error::BadRequest(format!(
                "local identity for {module_id} already exists (it is a principal's: GET it)"
            )));
        }
        self.issue(module_id, server).await
    }

    /// `GET /identities/modules/{id}?type=local`: the local identity of a
    /// principal with one (the reference's idtype local), issued anew, of
    /// its kind. The orchestrator's, administrators' and that module's to ask.
    pub async fn principals_local_identity(
        &self,
        caller: &Caller,
        module_id: &str,
    ) -> Result<LocalIdentity, Error> {
        self.authorize_module(caller, module_id)?;
        let kind = self.local_principal(module_id).ok_or_else(|| {
            Error::BadRequest(format!(
                "local identity for {} doesn't exist (no principal of that module has a local identity)",
                names::shown(module_id)
            ))
        })?;
        self.issue(module_id, kind == LocalIdKind::Server).await
    }

    /// The kind of `module_id`'s principal's local identity, if it has one.
    fn local_principal(&self, module_id: &str) -> Option<LocalIdKind> {
        self.config
            .principals
            .iter()
            .filter(|p| p.role == Role::Module && p.module() == module_id)
            .find_map(|p| p.local_id)
    }

    async fn issue(&self, module_id: &str, server: bool) -> Result<LocalIdentity, Error> {
        let cn = match &self.config.modules.local_cn_suffix {
            Some(suffix) => format!("{module_id}.{suffix}"),
            None => module_id.to_owned(),
        };
        let (key, csr) = edgeid_certd::issuer::fresh_key_and_csr(&cn).map_err(Error::from_certd)?;
        let chain = self
            .certd
            .create(&CreateCertificateRequest {
                id: names::module_resource_id(module_id),
                issuer: Some(IssuerKind::LocalCa),
                profile: if server {
                    Profile::ClientServer
                } else {
                    Profile::Client
                },
                csr: Some(csr),
                key_id: None,
                key_spec: None,
                subject_cn: Some(cn),
                san: None,
                subject: Default::default(),
                lifetime_secs: Some(self.config.modules.cert_lifetime_days.max(1) * 86400),
                renewal: None,
                transient: true,
            })
            .await
            .map_err(|e| Error::from_daemon("certd", "issuing a local identity", e))?;
        tracing::info!(module = %module_id, server, "issued a local identity");
        Ok(LocalIdentity {
            module_id: module_id.to_owned(),
            private_key: key.serialize_pem().into(),
            expiration: edgeid_certd::chain::leaf_not_after(&chain).map_err(Error::from_certd)?,
            certificate: chain,
        })
    }
}
