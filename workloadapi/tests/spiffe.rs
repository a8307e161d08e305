//! The SPIFFE Workload API through its socket, with a client generated from
//! the specification's proto, every answer checked by a second party:
//! X.509-SVIDs against the X509-SVID rules (x509-parser) and the bundle
//! (`openssl verify`), a mutual TLS handshake between two modules' SVIDs
//! (rustls), JWT-SVIDs against the JWK set by an independent JWT library
//! (jsonwebtoken), rotation pushed on open streams.
//!
//! The test process (uid 0) is module `mod-a`; `mod-b` is uid 4201; uid
//! 4202 is no module.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edgeid_testkit::workload::SpiffeFixture;
use edgeid_workloadapi::config::SpiffeConfig;
use edgeid_workloadapi::spiffe::client::{self, Client};
use edgeid_workloadapi::spiffe::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use edgeid_workloadapi::spiffe::proto::*;
use tonic::Code;
use x509_parser::prelude::*;

const TD: &str = "edge.test";
const OTHER_UID: u32 = 4201;
const NOBODY_UID: u32 = 4202;

/// This suite's ways of starting a [`SpiffeFixture`].
struct Suite;

impl Suite {
    async fn start(tune: impl FnOnce(&mut SpiffeConfig)) -> SpiffeFixture {
        Suite::start_with(tune, |_| {}).await
    }

    async fn start_with(
        tune: impl FnOnce(&mut SpiffeConfig),
        server: impl FnOnce(&mut edgeid_common::config::ServerConfig),
    ) -> SpiffeFixture {
        let modules = [("mod-a", 0), ("mod-b", OTHER_UID)];
        SpiffeFixture::start(TD, &modules, |config, spiffe| {
            server(&mut config.server);
            tune(spiffe);
        })
        .await
    }
}

fn id_of(module: &str) -> String {
    format!("spiffe://{TD}/edge-1/{module}")
}

/// The first message of a FetchX509SVID stream, and the stream.
async fn first_svid(c: &mut Client) -> (X509svid, tonic::Streaming<X509svidResponse>) {
    let mut stream = c
        .fetch_x509svid(X509svidRequest {})
        .await
        .expect("FetchX509SVID")
        .into_inner();
    let msg = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("first message in time")
        .expect("first message")
        .expect("stream open");
    assert_eq!(msg.svids.len(), 1, "one identity per module");
    (msg.svids.into_iter().next().unwrap(), stream)
}

/// Concatenated DER certificates, split.
fn split_der(mut der: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !der.is_empty() {
        let (rest, _) = parse_x509_certificate(der).expect("a DER certificate");
        out.push(der[..der.len() - rest.len()].to_vec());
        der = rest;
    }
    out
}

fn to_pem(ders: &[Vec<u8>]) -> String {
    ders.iter()
        .map(|d| ::pem::encode(&::pem::Pem::new("CERTIFICATE", d.clone())))
        .collect()
}

/// The X509-SVID specification's rules on a leaf.
fn assert_svid_rules(leaf_der: &[u8], spiffe_id: &str) {
    let (_, leaf) = parse_x509_certificate(leaf_der).unwrap();
    let san = leaf
        .subject_alternative_name()
        .unwrap()
        .expect("a SAN extension");
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    assert_eq!(uris, vec![spiffe_id], "exactly one URI SAN, the SPIFFE ID");
    let bc = leaf.basic_constraints().unwrap().expect("basicConstraints");
    assert!(!bc.value.ca, "an SVID leaf is not a CA");
    let ku = leaf.key_usage().unwrap().expect("keyUsage");
    assert!(ku.critical, "keyUsage is critical");
    assert!(ku.value.digital_signature());
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
    let eku = leaf
        .extended_key_usage()
        .unwrap()
        .expect("extendedKeyUsage");
    assert!(eku.value.server_auth && eku.value.client_auth);
    assert!(leaf.validity().is_valid());
}

#[tokio::test(flavor = "multi_thread")]
async fn x509_svid_follows_the_spec_and_chains_to_the_bundle() {
    let suite = Suite::start(|_| {}).await;
    let mut c = suite.client().await;
    let (svid, _stream) = first_svid(&mut c).await;
    assert_eq!(svid.spiffe_id, id_of("mod-a"));
    let chain = split_der(&svid.x509_svid);
    assert_svid_rules(&chain[0], &svid.spiffe_id);

    // The key is unencrypted PKCS#8 and is the certificate's.
    let key = rcgen::KeyPair::try_from(svid.x509_svid_key.as_slice()).expect("PKCS#8 key");
    let (_, leaf) = parse_x509_certificate(&chain[0]).unwrap();
    assert_eq!(
        rcgen::PublicKeyData::der_bytes(&key),
        &*leaf.public_key().subject_public_key.data
    );

    // The bundle holds CA certificates only, and the chain verifies to it
    // for both TLS purposes, by openssl and by x509-parser's signature check.
    let bundle = split_der(&svid.bundle);
    assert!(!bundle.is_empty());
    for ca in &bundle {
        let (_, ca) = parse_x509_certificate(ca).unwrap();
        assert!(ca.is_ca());
    }
    for purpose in ["sslclient", "sslserver"] {
        edgeid_testkit::openssl::verify_chain(&to_pem(&bundle), &to_pem(&chain), purpose)
            .unwrap_or_else(|e| panic!("openssl verify -purpose {purpose}: {e}"));
    }
    let issuer_der = chain.get(1).unwrap_or(&bundle[0]);
    let (_, issuer) = parse_x509_certificate(issuer_der).unwrap();
    leaf.verify_signature(Some(issuer.public_key()))
        .expect("the leaf is signed by its issuer");

    // FetchX509Bundles: the same bundle, keyed by the trust domain's SPIFFE ID.
    let mut bundles = c
        .fetch_x509_bundles(X509BundlesRequest {})
        .await
        .expect("FetchX509Bundles")
        .into_inner();
    let msg = bundles.message().await.unwrap().unwrap();
    assert_eq!(msg.bundles.len(), 1);
    assert_eq!(msg.bundles[&format!("spiffe://{TD}")], svid.bundle);

    // Another module gets its own identity.
    let mut b = suite.client_as(OTHER_UID).await;
    let (svid_b, _) = first_svid(&mut b).await;
    assert_eq!(svid_b.spiffe_id, id_of("mod-b"));
    assert_svid_rules(&split_der(&svid_b.x509_svid)[0], &svid_b.spiffe_id);
    assert_ne!(svid_b.x509_svid_key, svid.x509_svid_key);
}

mod mtls {
    //! Mutual TLS between two SVIDs, as SPIFFE peers do it: the chain is
    //! checked against the trust domain's bundle, the peer's identity is its
    //! URI SAN (there is no DNS name to check).

    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use x509_parser::prelude::*;

    /// The URI SANs of a certificate.
    pub fn uris(der: &[u8]) -> Vec<String> {
        let (_, cert) = parse_x509_certificate(der).unwrap();
        cert.subject_alternative_name()
            .unwrap()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::URI(u) => Some(u.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Accepts a server whose chain verifies to `roots` and whose SPIFFE ID is `expected`.
    #[derive(Debug)]
    pub struct SpiffeServer {
        pub roots: Vec<CertificateDer<'static>>,
        pub expected: String,
    }

    impl ServerCertVerifier for SpiffeServer {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            let anchors: Vec<_> = self
                .roots
                .iter()
                .map(|r| webpki::anchor_from_trusted_cert(r).unwrap().to_owned())
                .collect();
            let cert = webpki::EndEntityCert::try_from(end_entity)
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            cert.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                intermediates,
                now,
                webpki::KeyUsage::server_auth(),
                None,
                None,
            )
            .map_err(|e| rustls::Error::General(format!("chain: {e}")))?;
            if uris(end_entity) != vec![self.expected.clone()] {
                return Err(rustls::Error::General("not the expected SPIFFE ID".into()));
            }
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            rustls::crypto::aws_lc_rs::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    pub fn certs(der_chain: &[Vec<u8>]) -> Vec<CertificateDer<'static>> {
        der_chain
            .iter()
            .map(|d| CertificateDer::from(d.clone()))
            .collect()
    }

    pub fn key(pkcs8: &[u8]) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(pkcs8.to_vec().into())
    }

    pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_modules_complete_mutual_tls_with_their_svids() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let suite = Suite::start(|_| {}).await;
    let (a, _sa) = first_svid(&mut suite.client().await).await;
    let (b, _sb) = first_svid(&mut suite.client_as(OTHER_UID).await).await;
    let bundle = split_der(&a.bundle);

    // mod-a serves, demanding a client certificate from the bundle.
    let mut roots = rustls::RootCertStore::empty();
    for ca in mtls::certs(&bundle) {
        roots.add(ca).unwrap();
    }
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        mtls::provider(),
    )
    .build()
    .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(mtls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(
            mtls::certs(&split_der(&a.x509_svid)),
            mtls::key(&a.x509_svid_key),
        )
        .unwrap();
    let server = Arc::new(server);
    // mod-b connects with its SVID, accepting only the SPIFFE ID `expected`.
    let client = |expected: &str| {
        rustls::ClientConfig::builder_with_provider(mtls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(mtls::SpiffeServer {
                roots: mtls::certs(&bundle),
                expected: expected.to_owned(),
            }))
            .with_client_auth_cert(
                mtls::certs(&split_der(&b.x509_svid)),
                mtls::key(&b.x509_svid_key),
            )
            .unwrap()
    };

    let (c_io, s_io) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(server.clone());
    let served = tokio::spawn(async move {
        let mut tls = acceptor.accept(s_io).await.expect("server handshake");
        let peer = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await.unwrap();
        tls.write_all(b"pong!").await.unwrap();
        tls.shutdown().await.ok();
        (peer, buf)
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client(&id_of("mod-a"))));
    let name = ServerNameFor::any();
    let mut tls = connector
        .connect(name, c_io)
        .await
        .expect("client handshake");
    tls.write_all(b"ping!").await.unwrap();
    let mut buf = [0u8; 5];
    tls.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong!");
    let (peer, got) = served.await.unwrap();
    assert_eq!(&got, b"ping!");
    assert_eq!(
        mtls::uris(&peer),
        vec![id_of("mod-b")],
        "the server sees mod-b"
    );

    // A module that trusts only mod-b's identity refuses mod-a's server.
    let (c_io, s_io) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    tokio::spawn(async move {
        let _ = acceptor.accept(s_io).await;
    });
    let refused = tokio_rustls::TlsConnector::from(Arc::new(client(&id_of("mod-b"))))
        .connect(ServerNameFor::any(), c_io)
        .await;
    assert!(refused.is_err(), "mod-a's SVID is not mod-b's identity");
}

/// SVIDs name no host; rustls still wants a server name to send.
struct ServerNameFor;

impl ServerNameFor {
    fn any() -> rustls::pki_types::ServerName<'static> {
        rustls::pki_types::ServerName::try_from("spiffe-peer").unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_stream_gets_the_renewed_svid_before_the_old_one_expires() {
    let suite = Suite::start(|c| {
        c.svid_lifetime_secs = 8;
        c.renewal_threshold_percent = 50;
    })
    .await;
    let mut c = suite.client().await;
    let (first, mut stream) = first_svid(&mut c).await;
    let first_leaf = split_der(&first.x509_svid).remove(0);
    let (_, cert) = parse_x509_certificate(&first_leaf).unwrap();
    let expires = cert.validity().not_after.timestamp();
    let serial = cert.serial.clone();

    let next = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("a renewed SVID pushed on the open stream")
        .expect("stream message")
        .expect("stream open");
    let now = ::time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(now < expires, "pushed before the old SVID expired");
    let renewed = &next.svids[0];
    assert_eq!(renewed.spiffe_id, first.spiffe_id);
    let leaf = split_der(&renewed.x509_svid).remove(0);
    let (_, cert) = parse_x509_certificate(&leaf).unwrap();
    assert_ne!(cert.serial, serial, "a new certificate");
    assert_ne!(renewed.x509_svid_key, first.x509_svid_key, "for a new key");
    assert!(cert.validity().not_after.timestamp() > expires);
    assert_svid_rules(&leaf, &first.spiffe_id);

    // A new stream is served the renewed SVID, not the old one.
    let (again, _) = first_svid(&mut c).await;
    assert_eq!(again.x509_svid, renewed.x509_svid);
}

/// The first JWK set of a FetchJWTBundles stream, and the stream.
async fn jwks(
    c: &mut Client,
) -> (
    jsonwebtoken::jwk::JwkSet,
    tonic::Streaming<JwtBundlesResponse>,
) {
    let mut stream = c
        .fetch_jwt_bundles(JwtBundlesRequest {})
        .await
        .expect("FetchJWTBundles")
        .into_inner();
    let msg = stream.message().await.unwrap().unwrap();
    (set_of(&msg), stream)
}

fn set_of(msg: &JwtBundlesResponse) -> jsonwebtoken::jwk::JwkSet {
    assert_eq!(msg.bundles.len(), 1);
    serde_json::from_slice(&msg.bundles[&format!("spiffe://{TD}")]).expect("a JWK set")
}

async fn jwt(c: &mut Client, audience: &[&str]) -> String {
    let msg = c
        .fetch_jwtsvid(JwtsvidRequest {
            audience: audience.iter().map(|s| s.to_string()).collect(),
            spiffe_id: String::new(),
        })
        .await
        .expect("FetchJWTSVID")
        .into_inner();
    assert_eq!(msg.svids.len(), 1);
    msg.svids.into_iter().next().unwrap().svid
}

#[derive(Debug, serde::Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    iat: i64,
}

/// Verifies `token` against the JWK set with jsonwebtoken, for `audience`.
fn verify_independently(
    set: &jsonwebtoken::jwk::JwkSet,
    token: &str,
    audience: &str,
) -> Result<Claims, jsonwebtoken::errors::Error> {
    let header = jsonwebtoken::decode_header(token)?;
    let kid = header.kid.expect("a kid");
    let jwk = set.find(&kid).expect("the kid is in the set");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk)?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "sub", "aud"]);
    validation.leeway = 0;
    jsonwebtoken::decode::<Claims>(token, &key, &validation).map(|d| d.claims)
}

async fn validate(
    c: &mut Client,
    token: &str,
    audience: &str,
) -> Result<ValidateJwtsvidResponse, tonic::Status> {
    c.validate_jwtsvid(ValidateJwtsvidRequest {
        audience: audience.into(),
        svid: token.into(),
    })
    .await
    .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_svids_validate_through_the_api_and_verify_independently() {
    let suite = Suite::start(|_| {}).await;
    let mut a = suite.client().await;
    let mut b = suite.client_as(OTHER_UID).await;
    let token = jwt(&mut a, &["svc-b"]).await;

    // The JWK set verifies it, for its audience only.
    let (set, _stream) = jwks(&mut b).await;
    for key in &set.keys {
        assert_eq!(
            key.common.key_id.as_deref().map(|k| !k.is_empty()),
            Some(true)
        );
    }
    let claims = verify_independently(&set, &token, "svc-b").expect("verifies against the JWKS");
    assert_eq!(claims.sub, id_of("mod-a"));
    let now = ::time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(claims.exp > now && claims.exp <= now + 300 + 5);
    assert!(claims.iat <= now + 1);
    assert!(verify_independently(&set, &token, "svc-c").is_err());
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);

    // mod-b validates it through the API.
    let ok = validate(&mut b, &token, "svc-b")
        .await
        .expect("valid for svc-b");
    assert_eq!(ok.spiffe_id, id_of("mod-a"));
    let claims = ok.claims.expect("claims");
    assert!(matches!(
        claims.fields["sub"].kind,
        Some(prost_types::value::Kind::StringValue(ref s)) if *s == id_of("mod-a")
    ));
    assert!(claims.fields.contains_key("exp") && claims.fields.contains_key("aud"));

    // Another audience, a tampered payload, a forged signature, alg none.
    let e = validate(&mut b, &token, "svc-c").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let parts: Vec<&str> = token.split('.').collect();
    let forged_payload = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut claims: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        claims["sub"] = serde_json::Value::String(id_of("mod-b"));
        b64.encode(claims.to_string())
    };
    let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    let e = validate(&mut b, &tampered, "svc-b").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("signature"), "{}", e.message());
    assert!(verify_independently(&set, &tampered, "svc-b").is_err());
    let mut sig = parts[2].as_bytes().to_vec();
    sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
    let bad_sig = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        String::from_utf8(sig).unwrap()
    );
    assert_eq!(
        validate(&mut b, &bad_sig, "svc-b")
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    // Issue 17, finding 10: the high-S twin of a signature (s -> n - s) is
    // a second valid ECDSA signature of the same token; the independent
    // verifier takes it, workloadd does not. Its own tokens are low-S.
    let twin = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let sig = p256::ecdsa::Signature::from_slice(&b64.decode(parts[2]).unwrap()).unwrap();
        assert!(sig.normalize_s().is_none(), "workloadd signs low-S");
        let (r, s) = sig.split_scalars();
        let high = p256::ecdsa::Signature::from_scalars(r, -s).unwrap();
        assert!(high.normalize_s().is_some(), "the twin is high-S");
        format!("{}.{}.{}", parts[0], parts[1], b64.encode(high.to_bytes()))
    };
    assert!(
        verify_independently(&set, &twin, "svc-b").is_ok(),
        "the twin is a valid ECDSA signature"
    );
    let e = validate(&mut b, &twin, "svc-b").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("low-S"), "{}", e.message());
    let none = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}.", b64.encode(r#"{"alg":"none"}"#), parts[1])
    };
    let e = validate(&mut b, &none, "svc-b").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    for junk in ["", "a.b", "a.b.c.d", "!!!.???.***", &"x".repeat(20_000)] {
        let e = validate(&mut b, junk, "svc-b").await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{junk:.20}");
    }
    assert_eq!(
        validate(&mut b, &token, "").await.unwrap_err().code(),
        Code::InvalidArgument
    );

    // Several audiences: the token is valid for each.
    let multi = jwt(&mut a, &["x", "y"]).await;
    assert!(verify_independently(&set, &multi, "x").is_ok());
    assert!(validate(&mut b, &multi, "y").await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_signing_keys_rotate_with_overlap() {
    // Tokens live 3 s; keys sign for 6 s each, published 3 s ahead, kept
    // until their last token expired.
    let suite = Suite::start(|c| {
        c.jwt_svid_lifetime_secs = 3;
        c.jwt_key_rotation_secs = 6;
    })
    .await;
    let mut c = suite.client().await;
    let (set, mut stream) = jwks(&mut c).await;
    assert_eq!(set.keys.len(), 1);
    let first_kid = set.keys[0].common.key_id.clone().unwrap();
    let kid_of = |token: &str| jsonwebtoken::decode_header(token).unwrap().kid.unwrap();

    let started = Instant::now();
    let mut saw_overlap = false;
    let mut signed_by_next_while_first_published = false;
    let mut first_gone = false;
    while started.elapsed() < Duration::from_secs(40) && !first_gone {
        let msg = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("the JWK set changes within a rotation")
            .unwrap()
            .unwrap();
        let set = set_of(&msg);
        let kids: Vec<String> = set
            .keys
            .iter()
            .filter_map(|k| k.common.key_id.clone())
            .collect();
        // Every token is signed by a key in the set of the moment.
        let token = jwt(&mut c, &["aud"]).await;
        let kid = kid_of(&token);
        if set.find(&kid).is_some() {
            verify_independently(&set, &token, "aud").expect("verifies");
        }
        validate(&mut c, &token, "aud").await.expect("validates");
        if kids.len() > 1 && kids.contains(&first_kid) {
            saw_overlap = true;
            if kid != first_kid {
                signed_by_next_while_first_published = true;
            }
        }
        if !kids.contains(&first_kid) {
            first_gone = true;
            assert!(
                saw_overlap,
                "the next key was published before the first left"
            );
        }
    }
    assert!(saw_overlap, "two keys were published at once");
    assert!(
        signed_by_next_while_first_published,
        "the first key stayed published while its successor signed"
    );
    assert!(first_gone, "the first key was retired");
}

#[tokio::test(flavor = "multi_thread")]
async fn callers_without_the_header_a_module_or_the_identity_are_refused() {
    let suite = Suite::start(|_| {}).await;

    // No security header: InvalidArgument, on every RPC.
    let plain = client::channel(&suite.socket()).await.unwrap();
    let mut bare = SpiffeWorkloadApiClient::new(plain);
    let e = bare.fetch_x509svid(X509svidRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("security header"), "{}", e.message());
    assert_eq!(
        bare.fetch_x509_bundles(X509BundlesRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        bare.fetch_jwtsvid(JwtsvidRequest {
            audience: vec!["x".into()],
            spiffe_id: String::new()
        })
        .await
        .unwrap_err()
        .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        bare.fetch_jwt_bundles(JwtBundlesRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        bare.validate_jwtsvid(ValidateJwtsvidRequest {
            audience: "x".into(),
            svid: "a.b.c".into()
        })
        .await
        .unwrap_err()
        .code(),
        Code::InvalidArgument
    );

    // A uid mapped to no module: PermissionDenied, on every RPC.
    let mut nobody = suite.client_as(NOBODY_UID).await;
    let e = nobody.fetch_x509svid(X509svidRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains(&NOBODY_UID.to_string()),
        "{}",
        e.message()
    );
    assert_eq!(
        nobody
            .fetch_x509_bundles(X509BundlesRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    assert_eq!(
        nobody
            .fetch_jwtsvid(JwtsvidRequest {
                audience: vec!["x".into()],
                spiffe_id: String::new()
            })
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    assert_eq!(
        nobody
            .fetch_jwt_bundles(JwtBundlesRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    let mut a = suite.client().await;
    let token = jwt(&mut a, &["x"]).await;
    assert_eq!(
        validate(&mut nobody, &token, "x").await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // mod-b asking for mod-a's identity: PermissionDenied; for its own: fine.
    let mut b = suite.client_as(OTHER_UID).await;
    let ask = |id: String| JwtsvidRequest {
        audience: vec!["x".into()],
        spiffe_id: id,
    };
    let e = b.fetch_jwtsvid(ask(id_of("mod-a"))).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let own = b
        .fetch_jwtsvid(ask(id_of("mod-b")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.svids[0].spiffe_id, id_of("mod-b"));

    // A body that is not the method's message (field 1 a number where the
    // audience string belongs): refused, not served.
    {
        #[derive(Clone, PartialEq, prost::Message)]
        struct NotARequest {
            #[prost(uint64, tag = "1")]
            audience: u64,
        }
        let mut grpc = tonic::client::Grpc::new(client::channel(&suite.socket()).await.unwrap());
        grpc.ready().await.unwrap();
        let mut req = tonic::Request::new(NotARequest { audience: 7 });
        req.metadata_mut()
            .insert("workload.spiffe.io", "true".parse().unwrap());
        let answer: Result<tonic::Response<JwtsvidResponse>, tonic::Status> = grpc
            .unary(
                req,
                http::uri::PathAndQuery::from_static("/SpiffeWorkloadAPI/FetchJWTSVID"),
                tonic_prost::ProstCodec::default(),
            )
            .await;
        let e = answer.expect_err("a malformed message is refused");
        assert!(
            matches!(e.code(), Code::Internal | Code::InvalidArgument),
            "{e:?}"
        );
        assert!(e.message().contains("decode"), "{e:?}");
    }

    // Bad requests: no audience, oversize messages. The server goes on.
    let e = a
        .fetch_jwtsvid(JwtsvidRequest {
            audience: vec![],
            spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = a
        .fetch_jwtsvid(JwtsvidRequest {
            audience: vec!["a\u{0}".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = a
        .fetch_jwtsvid(JwtsvidRequest {
            audience: vec!["y".repeat(100_000)],
            spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_ne!(e.code(), Code::Ok);
    assert!(validate(&mut a, &token, "x").await.is_ok(), "still serving");

    // A module deleted in identityd is entitled to nothing.
    suite
        .stack
        .identityd
        .client()
        .delete_module("mod-b")
        .await
        .unwrap();
    let e = b.fetch_x509svid(X509svidRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_workload_socket_and_the_spiffe_socket_serve_side_by_side() {
    // The IoT Edge API still answers on its own socket with SPIFFE on.
    let suite = Suite::start(|_| {}).await;
    let (status, body) = edgeid_common::client::UdsClient::new(suite.workload.socket())
        .raw(
            http::Method::GET,
            "/trust-bundle?api-version=2022-08-03",
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(status, http::StatusCode::OK);
    let pem_text: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let (svid, _) = first_svid(&mut suite.client().await).await;
    let from_edge_api: Vec<Vec<u8>> = ::pem::parse_many(pem_text["certificate"].as_str().unwrap())
        .unwrap()
        .into_iter()
        .map(|p| p.contents().to_vec())
        .collect();
    assert_eq!(
        from_edge_api.concat(),
        svid.bundle,
        "one trust bundle on both APIs"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_and_idle_connections_are_cut_and_do_not_starve_clients() {
    use tokio::io::AsyncReadExt;

    // Four connections at most; one second to send a first request.
    let suite = Suite::start_with(
        |_| {},
        |server| {
            server.max_connections = 4;
            // One uid plays every client: its share is the whole cap.
            server.max_connections_per_caller = Some(4);
            server.header_read_timeout_secs = 1;
            server.idle_timeout_secs = 2;
        },
    )
    .await;
    // Every slot taken by a client that connects and says nothing.
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(
            tokio::net::UnixStream::connect(suite.socket())
                .await
                .unwrap(),
        );
    }
    // A real client still gets served once they are cut.
    let started = Instant::now();
    let served = tokio::time::timeout(Duration::from_secs(10), async {
        let mut c = suite.client().await;
        jwt(&mut c, &["after-the-flood"]).await
    })
    .await
    .expect("served despite the silent connections");
    assert!(!served.is_empty());
    assert!(started.elapsed() < Duration::from_secs(10));
    // And the silent ones were closed by the server.
    for mut s in silent {
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue, // the server's preface and GOAWAY
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a silent connection was left open");
    }
    // An open stream is not idle: it outlives the idle timeout.
    let mut c = suite.client().await;
    let (_, mut stream) = first_svid(&mut c).await;
    let waited = tokio::time::timeout(Duration::from_secs(4), stream.message()).await;
    assert!(
        waited.is_err(),
        "the stream stayed open with nothing to say"
    );
}

/// p50 and p99 of `n` FetchJWTSVID calls, one after another, each within 10 s.
async fn jwt_latencies(c: &mut Client, n: usize) -> (Duration, Duration) {
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            c.fetch_jwtsvid(JwtsvidRequest {
                audience: vec!["victim".into()],
                spiffe_id: String::new(),
            }),
        )
        .await
        .expect("the victim is served within 10 s, flood or not");
        answer.expect("FetchJWTSVID");
        took.push(started.elapsed());
    }
    took.sort();
    (took[n / 2], took[n * 99 / 100])
}

/// Issue 17, finding 2: 1030 open FetchJWTBundles streams from one uid
/// filled the connection cap (a connection with an open stream is never
/// evicted) and another module's FetchJWTSVID hung until its timeout. Now
/// one uid holds at most its share of connections and of streams; past it
/// it is answered RESOURCE_EXHAUSTED at once, and the others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_uid_flooding_streams_takes_only_its_share() {
    const FLOOD: usize = 1030;
    // The defaults: 1024 connections, 256 per caller, 256 streams per caller.
    let suite = Suite::start(|_| {}).await;
    let mut victim = suite.client().await;
    let (p50_before, p99_before) = jwt_latencies(&mut victim, 200).await;

    let socket = suite.socket();
    let mut held = Vec::new();
    let mut exhausted = 0;
    let started = Instant::now();
    for _ in 0..FLOOD {
        let stream =
            edgeid_testkit::connect_as(OTHER_UID, OTHER_UID, std::path::Path::new(&socket));
        let mut c = client::client(client::channel_over(stream).await.expect("channel"));
        match tokio::time::timeout(
            Duration::from_secs(10),
            c.fetch_jwt_bundles(JwtBundlesRequest {}),
        )
        .await
        .expect("the flooder is answered at once too, served or refused")
        {
            Ok(open) => held.push((c, open.into_inner())),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("its share"), "{status:?}");
                exhausted += 1;
            }
        }
    }
    let flood_took = started.elapsed();
    assert!(
        held.len() <= 256,
        "{} streams held: over the share",
        held.len()
    );
    assert_eq!(held.len() + exhausted, FLOOD);
    // One stream more on a connection the flooder holds: over its share too.
    let e = held[0]
        .0
        .fetch_jwt_bundles(JwtBundlesRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("streams open"), "{e:?}");

    // Meanwhile another module, on a new connection and on its old one.
    let mut newcomer = suite.client().await;
    let (p50_new, p99_new) = jwt_latencies(&mut newcomer, 200).await;
    let (p50_during, p99_during) = jwt_latencies(&mut victim, 200).await;
    println!(
        "uid {OTHER_UID} opened {FLOOD} FetchJWTBundles streams in {flood_took:?}: {} held, {exhausted} RESOURCE_EXHAUSTED; \
         victim FetchJWTSVID p50/p99 unloaded {p50_before:?}/{p99_before:?}, under the flood {p50_during:?}/{p99_during:?} \
         (a new connection: {p50_new:?}/{p99_new:?})",
        held.len()
    );

    // The share is given back when the flood ends.
    // (Until workloadd has seen the held connections close, a new one may
    // still be over the share: refused, and closed. So each try connects
    // anew.)
    drop(held);
    let mut retried = 0;
    loop {
        let stream =
            edgeid_testkit::connect_as(OTHER_UID, OTHER_UID, std::path::Path::new(&socket));
        let mut again = client::client(client::channel_over(stream).await.expect("channel"));
        match again.fetch_jwt_bundles(JwtBundlesRequest {}).await {
            Ok(_) => break,
            Err(e)
                if matches!(e.code(), Code::ResourceExhausted | Code::Unavailable)
                    && retried < 50 =>
            {
                retried += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("after the flood: {e:?}"),
        }
    }
}
