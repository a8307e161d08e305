//! A real RFC 7030 EST server for tests (no Debian or PyPI package provides
//! one that runs unattended): HTTPS with rustls, HTTP basic auth or TLS client
//! certificates checked against a bootstrap CA, PKCS#10 requests parsed and
//! their signatures verified (rcgen / x509-parser), certificates issued by its
//! own CA and returned as base64 PKCS#7 certs-only (`cms`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use cms::cert::CertificateChoices;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{CertificateSet, EncapsulatedContentInfo, SignedData, SignerInfos};
use der::asn1::SetOfVec;
use der::{Decode, Encode};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair,
};
use x509_parser::prelude::{FromDer, X509Certificate};

/// A running EST server on 127.0.0.1.
pub struct EstServer {
    /// `https://localhost:<port>/.well-known/est`
    pub url: String,
    /// The CA of the server's TLS certificate (the client's trust anchor).
    pub tls_ca_pem: String,
    /// The CA that issues enrolled certificates.
    pub ca_pem: String,
    /// Successful `/simpleenroll` and `/simplereenroll` calls.
    pub enrolled: Arc<AtomicUsize>,
    /// Successful `/simplereenroll` calls.
    pub reenrolled: Arc<AtomicUsize>,
    /// Who authenticated each successful enrollment, in order: the common
    /// name of the client certificate, or "" without one.
    pub clients: Arc<std::sync::Mutex<Vec<String>>>,
    /// The RFC 7030 label (`/.well-known/est/<label>/...`) of each
    /// successful enrollment, in order: "" without one.
    pub labels: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EstServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct State {
    username: String,
    password: String,
    ca_params: CertificateParams,
    ca_key: KeyPair,
    ca_der: Vec<u8>,
    lifetime: Duration,
    enrolled: Arc<AtomicUsize>,
    reenrolled: Arc<AtomicUsize>,
    clients: Arc<std::sync::Mutex<Vec<String>>>,
    labels: Arc<std::sync::Mutex<Vec<String>>>,
}

use crate::tls_server::{answer, ca, to_pem, LocalhostTls};

impl EstServer {
    /// Starts a server that accepts `username`/`password`, or a client
    /// certificate from `bootstrap_ca_pem`, and issues certificates valid for
    /// `lifetime`. Re-enrollment needs a certificate this server issued.
    pub async fn start(
        username: &str,
        password: &str,
        bootstrap_ca_pem: Option<&str>,
        lifetime: Duration,
    ) -> Self {
        let (ca_params, ca_key, ca_der) = ca("test EST issuing CA");
        let mut client_roots = vec![ca_der.clone()];
        if let Some(pem_text) = bootstrap_ca_pem {
            for block in pem::parse_many(pem_text).expect("bootstrap CA PEM") {
                client_roots.push(block.into_contents());
            }
        }
        let tls = LocalhostTls::new("test EST TLS CA", &client_roots);
        let enrolled = Arc::new(AtomicUsize::new(0));
        let reenrolled = Arc::new(AtomicUsize::new(0));
        let clients = Arc::new(std::sync::Mutex::new(Vec::new()));
        let labels = Arc::new(std::sync::Mutex::new(Vec::new()));
        let state = Arc::new(State {
            username: username.into(),
            password: password.into(),
            ca_params,
            ca_key,
            ca_der: ca_der.clone(),
            lifetime,
            enrolled: enrolled.clone(),
            reenrolled: reenrolled.clone(),
            clients: clients.clone(),
            labels: labels.clone(),
        });
        let (port, task) = tls
            .serve("127.0.0.1:0".parse().expect("addr"), move |peer, req| {
                let state = state.clone();
                async move { handle(&state, peer.as_deref(), req).await }
            })
            .await;
        Self {
            url: format!("https://localhost:{port}/.well-known/est"),
            tls_ca_pem: tls.ca_pem.clone(),
            ca_pem: to_pem(&ca_der),
            enrolled,
            reenrolled,
            clients,
            labels,
            task,
        }
    }
}

fn certs_only(ders: &[&[u8]]) -> Response<Full<Bytes>> {
    let certs: Vec<CertificateChoices> = ders
        .iter()
        .map(|d| {
            CertificateChoices::Certificate(x509_cert::Certificate::from_der(d).expect("cert"))
        })
        .collect();
    let signed = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::new(),
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: const_oid::db::rfc5911::ID_DATA,
            econtent: None,
        },
        certificates: Some(CertificateSet(SetOfVec::try_from(certs).expect("set"))),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::new()),
    };
    let info = ContentInfo {
        content_type: const_oid::db::rfc5911::ID_SIGNED_DATA,
        content: der::Any::encode_from(&signed).expect("encode SignedData"),
    };
    let mut r = answer(StatusCode::OK, STANDARD.encode(info.to_der().expect("DER")));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/pkcs7-mime; smime-type=certs-only"),
    );
    r
}

async fn handle(
    state: &State,
    peer: Option<&[u8]>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    // An optional label (RFC 7030 3.2.2): one more segment before the operation.
    let full = req.uri().path().to_owned();
    let (label, path) = match full
        .strip_prefix("/.well-known/est/")
        .and_then(|rest| rest.split_once('/'))
    {
        Some((label, op)) => (label.to_owned(), format!("/.well-known/est/{op}")),
        None => (String::new(), full.clone()),
    };
    let basic_ok = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|t| STANDARD.decode(t).ok())
        .is_some_and(|t| t == format!("{}:{}", state.username, state.password).as_bytes());
    let peer = peer.and_then(|d| X509Certificate::from_der(d).ok().map(|(_, c)| c));
    // rustls has verified a presented certificate against the bootstrap and EST CAs.
    let ours = |c: &X509Certificate<'_>| {
        X509Certificate::from_der(&state.ca_der)
            .map(|(_, ca)| c.issuer() == ca.subject())
            .unwrap_or(false)
    };
    match (req.method().as_str(), path.as_str()) {
        ("GET", "/.well-known/est/cacerts") => certs_only(&[&state.ca_der]),
        ("POST", "/.well-known/est/simpleenroll") | ("POST", "/.well-known/est/simplereenroll") => {
            let reenroll = path.ends_with("simplereenroll");
            let authorized = if reenroll {
                peer.as_ref().is_some_and(ours)
            } else {
                basic_ok || peer.is_some()
            };
            if !authorized {
                return answer(StatusCode::UNAUTHORIZED, "authentication required");
            }
            let Ok(body) = req.into_body().collect().await else {
                return answer(StatusCode::BAD_REQUEST, "unreadable body");
            };
            let compact: Vec<u8> = body
                .to_bytes()
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            let Ok(der) = STANDARD.decode(compact) else {
                return answer(StatusCode::BAD_REQUEST, "body is not base64");
            };
            let Ok(csr) = CertificateSigningRequestParams::from_der(&der.as_slice().into()) else {
                return answer(StatusCode::BAD_REQUEST, "not a valid PKCS#10 request");
            };
            if reenroll {
                // RFC 7030 4.2.2: same subject as the certificate being renewed.
                let same = peer.as_ref().is_some_and(|p| {
                    csr.params
                        .distinguished_name
                        .get(&DnType::CommonName)
                        .is_some()
                        && p.subject()
                            .iter_common_name()
                            .next()
                            .and_then(|c| c.as_str().ok())
                            == csr_cn(&csr).as_deref()
                });
                if !same {
                    return answer(
                        StatusCode::BAD_REQUEST,
                        "subject differs from the current certificate",
                    );
                }
            }
            let mut params = csr.params.clone();
            params.is_ca = IsCa::ExplicitNoCa;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - Duration::from_secs(1);
            params.not_after = now + state.lifetime;
            let issuer = Issuer::from_params(&state.ca_params, &state.ca_key);
            let Ok(cert) = params.signed_by(&csr.public_key, &issuer) else {
                return answer(StatusCode::BAD_REQUEST, "cannot issue for this request");
            };
            let client = peer
                .as_ref()
                .and_then(|p| p.subject().iter_common_name().next())
                .and_then(|c| c.as_str().ok())
                .unwrap_or_default()
                .to_owned();
            state
                .clients
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(client);
            state
                .labels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(label);
            state.enrolled.fetch_add(1, Ordering::SeqCst);
            if reenroll {
                state.reenrolled.fetch_add(1, Ordering::SeqCst);
            }
            certs_only(&[cert.der()])
        }
        _ => answer(StatusCode::NOT_FOUND, "no such EST operation"),
    }
}

fn csr_cn(csr: &CertificateSigningRequestParams) -> Option<String> {
    match csr.params.distinguished_name.get(&DnType::CommonName)? {
        rcgen::DnValue::Utf8String(s) => Some(s.clone()),
        rcgen::DnValue::PrintableString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}
