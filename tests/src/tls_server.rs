//! HTTPS test servers on loopback, written once: a throwaway CA, a
//! `localhost` server certificate from it, optional client certificate
//! verification (rustls/webpki) against given roots, and an accept loop that
//! hands each request to a handler with the verified client leaf, if any.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// A self-signed CA: its params and key (to issue more) and its certificate.
pub fn ca(cn: &str) -> (CertificateParams, KeyPair, Vec<u8>) {
    let key = KeyPair::generate().expect("CA key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let der = p.self_signed(&key).expect("self-signed CA").der().to_vec();
    (p, key, der)
}

/// A DER certificate as PEM.
pub fn to_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

/// A TLS server identity for `localhost`, from its own CA.
pub struct LocalhostTls {
    /// The CA clients must trust.
    pub ca_pem: String,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl LocalhostTls {
    /// A fresh CA named `ca_cn` and a server certificate from it; client
    /// certificates are asked for (not required) and verified against
    /// `client_roots` (DER).
    pub fn new(ca_cn: &str, client_roots: &[Vec<u8>]) -> Self {
        let (ca_params, ca_key, ca_der) = ca(ca_cn);
        let server_key = KeyPair::generate().expect("server key");
        let mut sp = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_der = sp
            .signed_by(&server_key, &Issuer::from_params(&ca_params, &ca_key))
            .expect("server cert")
            .der()
            .to_vec();
        let mut roots = RootCertStore::empty();
        // webpki wants at least one root; the server's own CA issues no client certificates.
        roots
            .add(CertificateDer::from(ca_der.clone()))
            .expect("root");
        for der in client_roots {
            roots
                .add(CertificateDer::from(der.clone()))
                .expect("client root");
        }
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
            .allow_unauthenticated()
            .build()
            .expect("client verifier");
        let tls = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from(server_der)],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
            )
            .expect("server TLS config");
        Self {
            ca_pem: to_pem(&ca_der),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
        }
    }

    /// Serves HTTPS on `addr` (port 0: any) until the returned task is aborted.
    pub async fn serve<H, F>(
        &self,
        addr: SocketAddr,
        handler: H,
    ) -> (u16, tokio::task::JoinHandle<()>)
    where
        H: Fn(Option<Vec<u8>>, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let acceptor = self.acceptor.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let peer = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| c.to_vec());
                    let service = hyper::service::service_fn(move |req| {
                        let handler = handler.clone();
                        let peer = peer.clone();
                        async move { Ok::<_, Infallible>(handler(peer, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        (port, task)
    }
}

/// A response with a status and body.
pub fn answer(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}
