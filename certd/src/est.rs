//! An RFC 7030 (EST) client: `/cacerts`, `/simpleenroll`, `/simplereenroll`
//! over HTTPS with rustls. It authenticates with HTTP basic auth and/or a TLS
//! client certificate whose key stays in keyd (the handshake is signed
//! through keyd). Responses are PKCS#7 certs-only, parsed with `cms`.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use cms::cert::CertificateChoices;
use cms::content_info::ContentInfo;
use cms::signed_data::SignedData;
use der::{Decode, Encode};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::RootCertStore;
use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

use crate::chain::Chain;
use crate::config::EstConfig;
use crate::error::Error;
use crate::signer::KeydKey;

/// Longest wait for the EST server, per request.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response accepted.
const MAX_RESPONSE: usize = 1 << 20;

/// A configured EST server.
pub struct EstClient {
    host: String,
    port: u16,
    /// The path up to and including `/.well-known/est[/label]`, no trailing slash.
    prefix: String,
    roots: Arc<RootCertStore>,
    basic: Option<(String, Zeroizing<String>)>,
    /// The server's CA certificates from the last `/cacerts`, for the trust bundle.
    anchors_file: PathBuf,
}

/// An https URL's host, port and path (no trailing slash); `what` names
/// the setting in errors.
fn split_url(url: &str, what: &str) -> Result<(String, u16, String), Error> {
    let uri = Uri::from_str(url).map_err(|e| Error::Setup(format!("{what} '{url}': {e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(Error::Setup(format!("{what} '{url}' must be https")));
    }
    let host = uri
        .host()
        .ok_or_else(|| Error::Setup(format!("{what} '{url}' has no host")))?
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    Ok((host, port, uri.path().trim_end_matches('/').to_owned()))
}

/// A TLS client identity: a chain and its key in keyd.
pub type Identity = (Chain, Arc<KeydKey>);

impl EstClient {
    /// Reads the trust anchors and password the config names.
    pub fn new(config: &EstConfig, state_dir: &Path) -> Result<Self, Error> {
        let (host, port, prefix) = split_url(&config.url, "est.url")?;
        let mut roots = RootCertStore::empty();
        for file in &config.trust_anchors {
            let bad =
                |e: String| Error::Setup(format!("est.trust_anchors {}: {e}", file.display()));
            let pem_text =
                std::fs::read_to_string(file).map_err(|e| bad(format!("cannot read it: {e}")))?;
            let anchors = Chain::from_pem(&pem_text).map_err(|e| bad(e.to_string()))?;
            for der in anchors.ders() {
                roots
                    .add(CertificateDer::from(der.clone()))
                    .map_err(|e| bad(e.to_string()))?;
            }
        }
        let basic = match (&config.username, &config.password_file) {
            (Some(user), Some(file)) => {
                edgeid_common::fs::check_private(file).map_err(|e| Error::Setup(e.to_string()))?;
                let text = std::fs::read_to_string(file).map_err(|e| {
                    Error::Setup(format!(
                        "cannot read est.password_file {}: {e}",
                        file.display()
                    ))
                })?;
                let password = Zeroizing::new(text.trim_end_matches(['\r', '\n']).to_owned());
                Some((user.clone(), password))
            }
            _ => None,
        };
        Ok(Self {
            host,
            port,
            prefix,
            roots: Arc::new(roots),
            basic,
            anchors_file: state_dir.join("est-cacerts.pem"),
        })
    }

    /// The same server (credentials, trust anchors) at another `url`: a
    /// label or path of its own for some certificates. Its CAs, as fetched,
    /// are kept apart from the default URL's.
    pub fn at_url(&self, url: &str, state_dir: &Path) -> Result<Self, Error> {
        let (host, port, prefix) = split_url(url, "est_url")?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, url.as_bytes());
        let name: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self {
            host,
            port,
            prefix,
            roots: self.roots.clone(),
            basic: self.basic.clone(),
            anchors_file: state_dir.join(format!("est-cacerts-{name}.pem")),
        })
    }

    /// The EST CAs' self-signed roots, as last fetched (PEM; empty if never).
    pub fn stored_anchors(&self) -> Result<String, Error> {
        match std::fs::read_to_string(&self.anchors_file) {
            Ok(s) => Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(Error::Internal(format!(
                "cannot read {}: {e}",
                self.anchors_file.display()
            ))),
        }
    }

    /// `GET /cacerts`: the server's CA certificates.
    pub async fn cacerts(&self) -> Result<Vec<Vec<u8>>, Error> {
        let body = self.request(Method::GET, "cacerts", None, None).await?;
        certs_from_pkcs7(&body)
    }

    /// Enrolls `csr` (DER): `/simplereenroll` when `auth` is the certificate
    /// being renewed, else `/simpleenroll` (with the bootstrap identity if
    /// given). Returns the issued certificate and the server's intermediates.
    pub async fn enroll(&self, csr: &[u8], auth: Option<(Identity, bool)>) -> Result<Chain, Error> {
        let cacerts = self.cacerts().await?;
        let cas = Chain::from_der(cacerts.clone())
            .map_err(|e| Error::Upstream(format!("EST /cacerts: {e}")))?;
        let roots: String = cas
            .parsed()
            .zip(cas.ders())
            .filter(|(c, _)| c.is_self_signed())
            .map(|(_, d)| crate::chain::certificate_pem(d))
            .collect();
        edgeid_common::fs::write_atomic(&self.anchors_file, roots.as_bytes(), 0o644).map_err(
            |e| Error::Internal(format!("cannot write {}: {e}", self.anchors_file.display())),
        )?;

        let reenroll = auth.as_ref().is_some_and(|(_, re)| *re);
        let op = if reenroll {
            "simplereenroll"
        } else {
            "simpleenroll"
        };
        let body = STANDARD.encode(csr).into_bytes();
        let answer = self
            .request(
                Method::POST,
                op,
                Some(body),
                auth.as_ref().map(|(id, _)| id),
            )
            .await?;
        let issued = certs_from_pkcs7(&answer)?;
        let (_, request) =
            x509_parser::certification_request::X509CertificationRequest::from_der(csr)
                .map_err(|_| Error::BadRequest("not a valid PKCS#10 CSR".into()))?;
        let wanted = request.certification_request_info.subject_pki.raw;
        let parsed = Chain::from_der(issued.clone())
            .map_err(|e| Error::Upstream(format!("EST /{op}: {e}")))?;
        let leaf = issued
            .iter()
            .zip(parsed.parsed())
            .find(|(_, c)| c.spki_der() == wanted)
            .map(|(d, _)| d.clone())
            .ok_or_else(|| {
                Error::Upstream(format!(
                    "EST /{op} returned no certificate for the requested key"
                ))
            })?;
        let mut chain = vec![leaf.clone()];
        for (der, cert) in cacerts.iter().zip(cas.parsed()) {
            if !cert.is_self_signed() && *der != leaf {
                chain.push(der.clone());
            }
        }
        Chain::from_der(chain)
    }

    /// One HTTPS request to `<prefix>/<op>`; the body of a 200 answer.
    async fn request(
        &self,
        method: Method,
        op: &str,
        body: Option<Vec<u8>>,
        identity: Option<&Identity>,
    ) -> Result<Bytes, Error> {
        let tls = crate::signer::tls_client_config(
            self.roots.clone(),
            identity.map(|(chain, key)| (chain.ders().to_vec(), key.clone())),
        );
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| Error::Setup(format!("est.url host '{}': {e}", self.host)))?;
        let unreachable =
            |e: String| Error::Unavailable(format!("EST server {}:{}: {e}", self.host, self.port));
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
                .connect(name, tcp)
                .await
                .map_err(|e| unreachable(format!("TLS: {e}")))?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            let mut req = Request::builder()
                .method(method)
                .uri(format!("{}/{op}", self.prefix))
                .header(http::header::HOST, format!("{}:{}", self.host, self.port));
            if body.is_some() {
                req = req
                    .header(http::header::CONTENT_TYPE, "application/pkcs10")
                    .header("content-transfer-encoding", "base64");
            }
            if let Some((user, password)) = &self.basic {
                let token =
                    Zeroizing::new(STANDARD.encode(format!("{user}:{}", password.as_str())));
                req = req.header(
                    http::header::AUTHORIZATION,
                    format!("Basic {}", token.as_str()),
                );
            }
            let req = req
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| Error::Internal(e.to_string()))?;
            let response = sender
                .send_request(req)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| unreachable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, Error>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {}s", TIMEOUT.as_secs())))??;
        match status {
            StatusCode::OK => Ok(bytes),
            StatusCode::ACCEPTED => Err(Error::Unavailable(format!(
                "EST /{op}: the server deferred the request (202); certd retries later"
            ))),
            s => {
                let text: String = String::from_utf8_lossy(&bytes).chars().take(200).collect();
                Err(Error::Upstream(format!(
                    "EST /{op} refused ({s}): {}",
                    text.trim()
                )))
            }
        }
    }
}

/// The certificates of a base64 PKCS#7 certs-only message (RFC 7030 4.1.3, 4.2.3).
pub fn certs_from_pkcs7(body: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
    let bad = |why: String| {
        Error::Upstream(format!(
            "the EST server's answer is not PKCS#7 certs-only: {why}"
        ))
    };
    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let der = STANDARD
        .decode(compact)
        .map_err(|e| bad(format!("base64: {e}")))?;
    let info = ContentInfo::from_der(&der).map_err(|e| bad(e.to_string()))?;
    if info.content_type != const_oid::db::rfc5911::ID_SIGNED_DATA {
        return Err(bad(format!("content type {}", info.content_type)));
    }
    let signed: SignedData = info.content.decode_as().map_err(|e| bad(e.to_string()))?;
    let certs: Vec<Vec<u8>> = signed
        .certificates
        .map(|set| {
            set.0
                .iter()
                .filter_map(|c| match c {
                    CertificateChoices::Certificate(cert) => cert.to_der().ok(),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if certs.is_empty() {
        return Err(bad("no certificates in it".into()));
    }
    Ok(certs)
}
