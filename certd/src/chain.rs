//! Certificate chains: PEM in and out, parsed and checked with x509-parser.

use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::Error;

/// Most certificates accepted in one chain.
const MAX_CHAIN: usize = 10;

/// A chain of DER certificates, leaf first; each parsed once on the way in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain(Vec<Vec<u8>>);

impl Chain {
    /// Parses PEM text: only `CERTIFICATE` blocks, at least one, each a valid X.509 certificate.
    pub fn from_pem(text: &str) -> Result<Self, Error> {
        let blocks =
            pem::parse_many(text).map_err(|e| Error::BadRequest(format!("not valid PEM: {e}")))?;
        if blocks.is_empty() {
            return Err(Error::BadRequest("no PEM certificate found".into()));
        }
        let ders = blocks
            .into_iter()
            .map(|b| {
                if b.tag() != "CERTIFICATE" {
                    return Err(Error::BadRequest(format!(
                        "expected CERTIFICATE PEM blocks, found '{}'",
                        b.tag()
                    )));
                }
                Ok(b.into_contents())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_der(ders)
    }

    /// Certificates in DER, leaf first.
    pub fn from_der(ders: Vec<Vec<u8>>) -> Result<Self, Error> {
        if ders.is_empty() {
            return Err(Error::BadRequest("an empty certificate chain".into()));
        }
        if ders.len() > MAX_CHAIN {
            return Err(Error::BadRequest(format!(
                "a chain of more than {MAX_CHAIN} certificates"
            )));
        }
        for (i, der) in ders.iter().enumerate() {
            match X509Certificate::from_der(der) {
                Ok(([], _)) => {}
                _ => {
                    return Err(Error::BadRequest(format!(
                        "certificate {} of the chain is not a valid X.509 certificate",
                        i + 1
                    )))
                }
            }
        }
        Ok(Self(ders))
    }

    /// The certificates, DER, leaf first.
    pub fn ders(&self) -> &[Vec<u8>] {
        &self.0
    }

    /// The leaf, DER.
    pub fn leaf_der(&self) -> &[u8] {
        &self.0[0]
    }

    /// PEM, leaf first.
    pub fn to_pem(&self) -> String {
        self.0.iter().map(|d| certificate_pem(d)).collect()
    }

    /// The leaf, parsed.
    pub fn leaf(&self) -> Certificate<'_> {
        Certificate::parse(&self.0[0])
    }

    /// Each certificate, parsed.
    pub fn parsed(&self) -> impl Iterator<Item = Certificate<'_>> {
        self.0.iter().map(|d| Certificate::parse(d))
    }

    /// Each certificate is signed by the next; the last is self-signed or its
    /// issuer is not included. Every certificate is within its validity now.
    pub fn check(&self) -> Result<(), Error> {
        let certs: Vec<_> = self.parsed().collect();
        let now = OffsetDateTime::now_utc();
        for (i, cert) in certs.iter().enumerate() {
            let (from, to) = cert.validity();
            if now < from || now > to {
                return Err(Error::BadRequest(format!(
                    "certificate {} of the chain ({}) is not valid now (valid {from} to {to})",
                    i + 1,
                    cert.subject()
                )));
            }
            if let Some(issuer) = certs.get(i + 1) {
                if cert.0.issuer() != issuer.0.subject() {
                    return Err(Error::BadRequest(format!(
                        "certificate {} was not issued by certificate {} (issuer and subject differ): give the chain leaf first",
                        i + 1,
                        i + 2
                    )));
                }
                if !issuer.is_ca() {
                    return Err(Error::BadRequest(format!(
                        "certificate {} of the chain issues another but is not a CA",
                        i + 2
                    )));
                }
                cert.0
                    .verify_signature(Some(issuer.0.public_key()))
                    .map_err(|_| {
                        Error::BadRequest(format!(
                            "the signature on certificate {} does not verify with certificate {}'s key",
                            i + 1,
                            i + 2
                        ))
                    })?;
            }
        }
        Ok(())
    }
}

/// The notAfter of a PEM chain's leaf, as IoT Edge and the aziot daemons
/// answer an `expiration` (RFC 3339, UTC written `+00:00`, as chrono's
/// `to_rfc3339` does).
pub fn leaf_not_after(chain_pem: &str) -> Result<String, Error> {
    let unreadable = |e: String| Error::Internal(format!("an unreadable certificate: {e}"));
    let leaf = pem::parse(chain_pem).map_err(|e| unreadable(e.to_string()))?;
    let (_, cert) =
        X509Certificate::from_der(leaf.contents()).map_err(|e| unreadable(e.to_string()))?;
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]+00:00");
    cert.validity()
        .not_after
        .to_datetime()
        .to_offset(time::UtcOffset::UTC)
        .format(&format)
        .map_err(|e| unreadable(e.to_string()))
}

/// One certificate as PEM, with Unix line endings.
pub fn certificate_pem(der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der.to_vec()), config)
}

/// One parsed certificate.
pub struct Certificate<'a>(X509Certificate<'a>);

impl<'a> Certificate<'a> {
    fn parse(der: &'a [u8]) -> Self {
        // Every DER in a Chain parsed once already (Chain::from_der).
        match X509Certificate::from_der(der) {
            Ok((_, c)) => Self(c),
            Err(_) => unreachable!("Chain holds only certificates that parse"),
        }
    }

    /// notBefore, notAfter.
    pub fn validity(&self) -> (OffsetDateTime, OffsetDateTime) {
        let v = self.0.validity();
        (v.not_before.to_datetime(), v.not_after.to_datetime())
    }

    /// SubjectPublicKeyInfo, DER.
    pub fn spki_der(&self) -> &'a [u8] {
        self.0.tbs_certificate.subject_pki.raw
    }

    /// The subject, as text.
    pub fn subject(&self) -> String {
        self.0.subject().to_string()
    }

    /// Whether basicConstraints says CA:TRUE.
    pub fn is_ca(&self) -> bool {
        self.0.is_ca()
    }

    /// Whether keyUsage allows signing certificates (absent counts as allowed).
    pub fn may_sign_certificates(&self) -> bool {
        match self.0.key_usage() {
            Ok(Some(ku)) => ku.value.key_cert_sign(),
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Whether it is self-signed (subject = issuer and its own key verifies it).
    pub fn is_self_signed(&self) -> bool {
        self.0.subject() == self.0.issuer() && self.0.verify_signature(None).is_ok()
    }
}
