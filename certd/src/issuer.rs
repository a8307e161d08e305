//! Building certificates: the extensions each profile gets, and signing
//! through keyd, by the local CA or by the certificate's own key.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use edgeid_keyd::api::KeyPairSpec;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyUsagePurpose, SanType, SerialNumber,
    SubjectPublicKeyInfo,
};
use time::OffsetDateTime;

use crate::api::{Profile, SubjectAltNames};
use crate::chain::Chain;
use crate::error::Error;
use crate::signer::KeydKey;

/// Who a certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// Common name.
    pub cn: String,
    /// Alternative names.
    pub san: SubjectAltNames,
    /// The whole distinguished name, in place of `cn` alone, when an
    /// administrator set it for the certificate's id.
    pub name: Option<Name>,
}

/// A distinguished name's attributes, in order.
pub type Name = Vec<(DnType, DnValue)>;

/// The longest common name issued, in characters (X.509's upper bound;
/// longer ones are cut, as the reference cuts them).
const MAX_CN_CHARS: usize = 64;

/// A distinguished name an administrator wrote as attribute names
/// (openssl's short or long ones) and values: its attributes in that
/// order, and its common name.
pub fn configured_name<'a>(
    attributes: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(Name, Option<String>), String> {
    let mut name = Vec::new();
    let mut cn = None;
    for (attribute, value) in attributes {
        if value.is_empty() {
            return Err(format!("subject attribute '{attribute}' is empty"));
        }
        let kind = match attribute {
            "CN" | "commonName" => DnType::CommonName,
            "C" | "countryName" => DnType::CountryName,
            "ST" | "stateOrProvinceName" => DnType::StateOrProvinceName,
            "L" | "localityName" => DnType::LocalityName,
            "O" | "organizationName" => DnType::OrganizationName,
            "OU" | "organizationalUnitName" => DnType::OrganizationalUnitName,
            other => {
                return Err(format!(
                    "subject attribute '{other}' is not one certd sets: CN, C, ST, L, O, OU \
                     (or commonName, countryName, stateOrProvinceName, localityName, \
                     organizationName, organizationalUnitName)"
                ))
            }
        };
        let value = match kind {
            DnType::CountryName => {
                if value.len() != 2 || !value.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(format!(
                        "subject attribute '{attribute}' must be a two-letter country code (ISO 3166, upper case), not '{value}'"
                    ));
                }
                DnValue::PrintableString(
                    value
                        .try_into()
                        .map_err(|_| format!("subject attribute '{attribute}': '{value}'"))?,
                )
            }
            DnType::CommonName => {
                let kept: String = value.chars().take(MAX_CN_CHARS).collect();
                cn = Some(kept.clone());
                DnValue::Utf8String(kept)
            }
            _ => DnValue::Utf8String(value.to_owned()),
        };
        name.push((kind, value));
    }
    Ok((name, cn))
}

/// The parameters of a certificate for `profile`: random serial, validity
/// from shortly before now for `lifetime` (not past `not_after_cap`), key
/// usages, extended key usages and basic constraints, subject and authority
/// key identifiers.
pub fn params(
    profile: Profile,
    subject: &Subject,
    lifetime: Duration,
    not_after_cap: Option<OffsetDateTime>,
    key_spec: Option<KeyPairSpec>,
) -> Result<CertificateParams, Error> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    match &subject.name {
        Some(name) => {
            for (kind, value) in name {
                dn.push(kind.clone(), value.clone());
            }
        }
        None => dn.push(DnType::CommonName, subject.cn.as_str()),
    }
    p.distinguished_name = dn;
    for name in &subject.san.dns {
        let ia5 = name.as_str().try_into().map_err(|_| {
            Error::BadRequest(format!("'{name}' is not a valid DNS name (ASCII only)"))
        })?;
        p.subject_alt_names.push(SanType::DnsName(ia5));
    }
    for ip in &subject.san.ip {
        p.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    for uri in &subject.san.uri {
        let ia5 = uri
            .as_str()
            .try_into()
            .map_err(|_| Error::BadRequest(format!("'{uri}' is not a valid URI (ASCII only)")))?;
        p.subject_alt_names.push(SanType::URI(ia5));
    }
    p.serial_number = Some(random_serial()?);
    let now = OffsetDateTime::now_utc();
    // Backdated a little for clocks that lag, but never by much of a short lifetime.
    let backdate = (lifetime / 10).min(Duration::from_secs(60));
    p.not_before = now - backdate;
    let mut not_after = now + lifetime;
    if let Some(cap) = not_after_cap {
        not_after = not_after.min(cap);
    }
    if not_after <= now {
        return Err(Error::BadRequest(
            "the issuing CA expires before this certificate would start".into(),
        ));
    }
    p.not_after = not_after;
    p.use_authority_key_identifier_extension = true;
    let rsa = matches!(
        key_spec,
        Some(KeyPairSpec::Rsa2048 | KeyPairSpec::Rsa3072 | KeyPairSpec::Rsa4096)
    );
    match profile {
        Profile::Client | Profile::Server | Profile::ClientServer => {
            p.is_ca = IsCa::ExplicitNoCa;
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            if rsa {
                p.key_usages.push(KeyUsagePurpose::KeyEncipherment);
            }
            p.extended_key_usages = match profile {
                Profile::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
                Profile::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
                _ => vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ],
            };
        }
        Profile::Ca => {
            p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            p.key_usages = ca_usages();
        }
    }
    Ok(p)
}

/// The device CA's own certificate: a root that may have one level of
/// intermediates below it.
pub fn root_params(cn: &str, lifetime: Duration) -> Result<CertificateParams, Error> {
    let subject = Subject {
        cn: cn.to_owned(),
        san: SubjectAltNames::default(),
        name: None,
    };
    let mut p = params(Profile::Ca, &subject, lifetime, None, None)?;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    p.use_authority_key_identifier_extension = false;
    Ok(p)
}

fn ca_usages() -> Vec<KeyUsagePurpose> {
    vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ]
}

/// A positive 16-byte serial from the system RNG (RFC 5280: at most 20 octets).
fn random_serial() -> Result<SerialNumber, Error> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Internal("the random generator failed".into()))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// The public key a certificate certifies, from its SubjectPublicKeyInfo.
pub fn subject_key(spki_der: &[u8]) -> Result<SubjectPublicKeyInfo, Error> {
    SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|e| Error::BadRequest(format!("unsupported public key: {e}")))
}

/// Signs `params` for `subject` with the CA whose certificate is `ca_der`
/// and whose key is `ca_key`. Runs on a blocking thread (each signature is a
/// keyd request).
pub async fn sign_by_ca(
    params: CertificateParams,
    subject: SubjectPublicKeyInfo,
    ca_der: Vec<u8>,
    ca_key: Arc<KeydKey>,
) -> Result<Vec<u8>, Error> {
    blocking(move || {
        let issuer = Issuer::from_ca_cert_der(&ca_der.as_slice().into(), &*ca_key)
            .map_err(|e| Error::Internal(format!("the CA certificate is unusable: {e}")))?;
        params
            .signed_by(&subject, &issuer)
            .map(|c| c.der().to_vec())
            .map_err(|e| sign_error(&ca_key, e, "issuing a certificate"))
    })
    .await
}

/// A certificate signed by its own key.
pub async fn self_sign(params: CertificateParams, key: Arc<KeydKey>) -> Result<Vec<u8>, Error> {
    blocking(move || {
        params
            .self_signed(&*key)
            .map(|c| c.der().to_vec())
            .map_err(|e| sign_error(&key, e, "self-signing a certificate"))
    })
    .await
}

/// A fresh P-256 key made in this process and a PEM CSR for it naming
/// `cn`: for a key its requester hands to a caller (IoT Edge's and SPIFFE's
/// module certificates, aziot local identities), which certd never holds.
pub fn fresh_key_and_csr(cn: &str) -> Result<(rcgen::KeyPair, String), Error> {
    let key = rcgen::KeyPair::generate()
        .map_err(|e| Error::Internal(format!("key generation failed: {e}")))?;
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| Error::Internal(e.to_string()))?;
    params.distinguished_name.push(DnType::CommonName, cn);
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| Error::Internal(format!("cannot build the CSR: {e}")))?;
    Ok((key, csr))
}

/// A PKCS#10 request for `key`, signed through keyd, DER. It asks for the
/// names and usages of `params`; serial and validity are the issuer's to choose.
pub async fn csr(params: CertificateParams, key: Arc<KeydKey>) -> Result<Vec<u8>, Error> {
    let mut request = CertificateParams::default();
    request.distinguished_name = params.distinguished_name;
    request.subject_alt_names = params.subject_alt_names;
    request.key_usages = params.key_usages;
    request.extended_key_usages = params.extended_key_usages;
    request.is_ca = params.is_ca;
    let params = request;
    blocking(move || {
        params
            .serialize_request(&*key)
            .map(|c| c.der().to_vec())
            .map_err(|e| sign_error(&key, e, "signing a certificate request"))
    })
    .await
}

fn sign_error(key: &KeydKey, e: rcgen::Error, doing: &str) -> Error {
    match e {
        rcgen::Error::RemoteKeyError => key.failure(doing),
        other => Error::BadRequest(format!("{doing}: {other}")),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("signing task failed: {e}")))?
}

/// A chain from an issued leaf and the issuer's chain (root left out when the
/// issuer chain ends in one: peers have it in their trust bundle).
pub fn chain_of(leaf: Vec<u8>, issuer_chain: &Chain) -> Result<Chain, Error> {
    let mut ders = vec![leaf];
    for (der, cert) in issuer_chain.ders().iter().zip(issuer_chain.parsed()) {
        if !cert.is_self_signed() {
            ders.push(der.clone());
        }
    }
    Chain::from_der(ders)
}
