//! certd's wire types, shared by the server and [`crate::client`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use edgeid_keyd::api::KeyPairSpec;
use serde::{Deserialize, Serialize};

/// Who issues a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IssuerKind {
    /// The device's own CA (its key in keyd).
    LocalCa,
    /// The certificate's own key.
    SelfSigned,
    /// An RFC 7030 EST server.
    Est,
}

impl fmt::Display for IssuerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::LocalCa => "local-ca",
            Self::SelfSigned => "self-signed",
            Self::Est => "est",
        })
    }
}

/// What a certificate is for: its key usages, extended key usages and basic constraints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// TLS client / identity (extendedKeyUsage clientAuth).
    Client,
    /// TLS server (extendedKeyUsage serverAuth).
    Server,
    /// Either end of mutual TLS (extendedKeyUsage serverAuth and clientAuth),
    /// as an X.509-SVID is.
    #[serde(rename = "client-server")]
    ClientServer,
    /// A CA (basicConstraints CA:TRUE, pathLen 0, keyCertSign).
    Ca,
}

/// Subject alternative names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectAltNames {
    /// DNS names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// IP addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip: Vec<IpAddr>,
    /// URIs (a SPIFFE ID, for instance).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uri: Vec<String>,
}

impl SubjectAltNames {
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.dns.is_empty() && self.ip.is_empty() && self.uri.is_empty()
    }
}

/// When and how certd renews a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewalPolicy {
    /// Renew once this percentage of the lifetime has passed (1-99).
    pub threshold_percent: u8,
    /// Make a new key on renewal (else reuse the key).
    pub rekey: bool,
    /// Renew this many seconds before the certificate expires instead (the
    /// reference's `threshold = "<n>min"` or `"<n>day"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_expiry_secs: Option<u64>,
    /// After a failed renewal, try again after this percentage of the
    /// lifetime (1-99; the reference's `retry = "<n>%"`) instead of
    /// certd's doubling backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_percent: Option<u8>,
    /// After a failed renewal, try again after this many seconds (the
    /// reference's `retry = "<n>min"` or `"<n>day"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_secs: Option<u64>,
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        Self {
            threshold_percent: 80,
            rekey: true,
            before_expiry_secs: None,
            retry_percent: None,
            retry_secs: None,
        }
    }
}

impl RenewalPolicy {
    /// Why the policy cannot be followed, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=99).contains(&self.threshold_percent) {
            return Err("renewal.threshold_percent must be between 1 and 99".into());
        }
        if self.retry_percent.is_some_and(|p| !(1..=99).contains(&p)) {
            return Err("renewal.retry_percent must be between 1 and 99".into());
        }
        // At least a second, at most 100 years (what a lifetime may be).
        const MAX_SECS: u64 = 100 * 365 * 86_400;
        for (name, secs) in [
            ("before_expiry_secs", self.before_expiry_secs),
            ("retry_secs", self.retry_secs),
        ] {
            if secs.is_some_and(|s| s == 0 || s > MAX_SECS) {
                return Err(format!(
                    "renewal.{name} must be between 1 and {MAX_SECS} (100 years)"
                ));
            }
        }
        if self.retry_percent.is_some() && self.retry_secs.is_some() {
            return Err("renewal: give retry_percent or retry_secs, not both".into());
        }
        Ok(())
    }
}

/// `POST /v1/certificates`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCertificateRequest {
    /// The certificate's id.
    pub id: String,
    /// Who issues it; absent: as certd's `[issuance."<id>"]` says (its
    /// method, lifetime and subject), which must then exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<IssuerKind>,
    /// What it is for.
    pub profile: Profile,
    /// A PKCS#10 request (PEM) for a key certd does not hold; or
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
    /// a key in keyd (created if absent, with `key_spec`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The spec of a key certd creates in keyd (default `ec-p256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_spec: Option<KeyPairSpec>,
    /// Subject common name (default: from the CSR, else the id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_cn: Option<String>,
    /// Subject alternative names (default: from the CSR).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub san: Option<SubjectAltNames>,
    /// More subject attributes after the CN (`C`, `ST`, `L`, `O`, `OU`, or
    /// their long names), in name order; kept through renewals.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subject: BTreeMap<String, String>,
    /// Requested lifetime (default from config; capped by the issuer's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_secs: Option<u64>,
    /// Renewal policy (default: 80%, rekey when certd holds the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal: Option<RenewalPolicy>,
    /// Issue only: certd neither stores nor renews the certificate. For a CSR
    /// whose key the requester holds and replaces itself (workloadd's module
    /// certificates and SVIDs).
    #[serde(default, skip_serializing_if = "is_false")]
    pub transient: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A certificate chain, leaf first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificatePem {
    /// PEM, leaf first, then the chain up to (not including) the root.
    pub pem: String,
}

/// `GET /v1/certificates/{id}`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateInfo {
    /// PEM, leaf first.
    pub pem: String,
    /// The leaf's notAfter, RFC 3339.
    pub not_after: String,
    /// How certd renews it; absent for imported certificates.
    pub renewal: Option<RenewalPolicy>,
    /// The keyd key of the leaf, when certd knows it.
    pub key_id: Option<String>,
}

/// `PUT /v1/certificates/{id}`: import a chain (validated).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportCertificateRequest {
    /// PEM, leaf first.
    pub pem: String,
    /// The keyd key the leaf certifies; certd checks the public keys match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// `GET /v1/certificates`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateList {
    /// Every id the caller may see.
    pub ids: Vec<String>,
}

/// `GET /v1/trust-bundle`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrustBundle {
    /// The CA certificates modules should trust, PEM.
    pub pem: String,
}
