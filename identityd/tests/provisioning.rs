//! Each provisioning source end to end against the test cloud service
//! (edgeid_testkit::cloud), which checks every token and certificate as the
//! real DPS and hub would: provision, read the device identity, create two
//! modules, have the service accept a module's keyd-signed SAS token.

mod common;

use common::{dps_symmetric, provisioned, random_key, settled, Daemons};
use edgeid_certd::api::CreateCertificateRequest;
use edgeid_common::authz::Admins;
use edgeid_identityd::api::{AuthType, ProvisioningState};
use edgeid_identityd::config::{
    AttestationConfig, DeviceAuthConfig, DpsConfig, LocalConfig, ManualConfig, ProvisioningConfig,
    SecretString,
};
use edgeid_identityd::IdentitydClient;
use edgeid_testkit::cloud::{CloudService, Enrollment};
use edgeid_testkit::IdentitydFixture;
use http::StatusCode;

async fn identityd(
    daemons: &Daemons,
    provisioning: ProvisioningConfig,
    cloud: Option<&CloudService>,
) -> IdentitydFixture {
    let config = IdentitydFixture::config_in(daemons.path(), provisioning, cloud);
    IdentitydFixture::configured(config, Admins::root_and_self()).await
}

/// Two modules registered with the hub; each one's token accepted there,
/// and not as the other module, and not once altered.
async fn two_modules_in_the_hub(client: &IdentitydClient, cloud: &CloudService, device: &str) {
    let a = client.create_module("sensor-a").await.unwrap();
    let b = client.create_module("sensor-b").await.unwrap();
    assert_ne!(a.generation_id, b.generation_id);
    assert_eq!(a.auth.auth_type, AuthType::Sas);
    assert!(a.auth.key_handle.is_some());
    assert_eq!(cloud.modules_of(device), vec!["sensor-a", "sensor-b"]);
    let token = client.module_token("sensor-a", Some(600)).await.unwrap();
    cloud
        .authenticate_module(device, "sensor-a", &token.token)
        .expect("the hub accepts module A's token");
    let err = cloud
        .authenticate_module(device, "sensor-b", &token.token)
        .unwrap_err();
    assert!(err.contains("not"), "A's token is not B's: {err}");
    let tampered = token.token.replacen("sig=", "sig=A", 1);
    assert!(cloud
        .authenticate_module(device, "sensor-a", &tampered)
        .is_err());
    // The same module asked again is the same identity.
    let again = client.create_module("sensor-a").await.unwrap();
    assert_eq!(again.generation_id, a.generation_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dps_symmetric_key_individual_enrollment() {
    let daemons = Daemons::start().await;
    let cloud = CloudService::start(None).await;
    let key = random_key();
    cloud.enroll("device-1", Enrollment::SymmetricKey(key.clone()));
    let key_file = daemons.key_file("enrollment.key", &key);
    let identityd = identityd(
        &daemons,
        dps_symmetric(&cloud, "device-1", key_file, false),
        Some(&cloud),
    )
    .await;
    let client = identityd.client();
    provisioned(&client).await;
    let device = client.device().await.unwrap();
    assert_eq!(device.hub, cloud.hub);
    assert_eq!(device.device_id, "device-1");
    assert_eq!(device.auth.auth_type, AuthType::Sas);
    let token = client.device_token(None).await.unwrap();
    cloud
        .authenticate_device("device-1", &token.token)
        .expect("the hub accepts the device token");
    two_modules_in_the_hub(&client, &cloud, "device-1").await;

    // Deleted here, deleted in the hub; re-created, new credentials.
    let old = client.module("sensor-b").await.unwrap();
    let old_token = client.module_token("sensor-b", None).await.unwrap();
    client.delete_module("sensor-b").await.unwrap();
    assert_eq!(cloud.modules_of("device-1"), vec!["sensor-a"]);
    let err = client.module("sensor-b").await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
    let new = client.create_module("sensor-b").await.unwrap();
    assert_ne!(new.generation_id, old.generation_id);
    assert!(
        cloud
            .authenticate_module("device-1", "sensor-b", &old_token.token)
            .is_err(),
        "a re-created module's old token is refused"
    );
    let new_token = client.module_token("sensor-b", None).await.unwrap();
    cloud
        .authenticate_module("device-1", "sensor-b", &new_token.token)
        .unwrap();

    // Nothing identityd stored holds key material.
    for file in ["device.json", "modules.json"] {
        let text = std::fs::read_to_string(daemons.path().join("identityd").join(file)).unwrap();
        assert!(!text.contains(&base64_of(&key)), "{file} holds no key");
    }
}

/// A client certificate from the device CA, its key (same id) in keyd: what
/// a factory line leaves on the device.
async fn client_cert(certd: &edgeid_certd::CertdClient, id: &str, cn: &str) {
    certd
        .create(&CreateCertificateRequest {
            subject_cn: Some(cn.into()),
            ..edgeid_testkit::certd::local_client(id)
        })
        .await
        .unwrap();
}

fn base64_of(key: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dps_symmetric_key_group_enrollment_derives_the_device_key_in_keyd() {
    // A group key is a base of derivation alone (as `config apply` writes it).
    let daemons = Daemons::start_with(|keyd| {
        keyd.derive_only = edgeid_common::authz::Grants::parse(&[
            "module-derivation",
            "workload-encryption",
            "dps-enrollment",
        ])
        .unwrap();
    })
    .await;
    let cloud = CloudService::start(None).await;
    let group_key = random_key();
    cloud.enroll_group(&group_key);
    let key_file = daemons.key_file("group.key", &group_key);
    let identityd = identityd(
        &daemons,
        dps_symmetric(&cloud, "device-7", key_file, true),
        Some(&cloud),
    )
    .await;
    let client = identityd.client();
    provisioned(&client).await;
    assert_eq!(client.device().await.unwrap().device_id, "device-7");
    let token = client.device_token(None).await.unwrap();
    cloud.authenticate_device("device-7", &token.token).unwrap();
    two_modules_in_the_hub(&client, &cloud, "device-7").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_enrollment_key_is_refused_by_the_service() {
    let daemons = Daemons::start().await;
    let cloud = CloudService::start(None).await;
    cloud.enroll("device-1", Enrollment::SymmetricKey(random_key()));
    let key_file = daemons.key_file("enrollment.key", &random_key());
    let identityd = identityd(
        &daemons,
        dps_symmetric(&cloud, "device-1", key_file, false),
        Some(&cloud),
    )
    .await;
    let client = identityd.client();
    let status = settled(&client).await;
    assert_eq!(status.state, ProvisioningState::Failed);
    let why = status.last_error.unwrap();
    assert!(
        why.contains("401") && why.contains("/registrations/device-1/register"),
        "{why}"
    );
    let err = client.device().await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert!(err.to_string().contains("not provisioned"), "{err}");
    assert!(!daemons.path().join("identityd/device.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dps_x509_attestation_and_hub_tls_client_auth() {
    let daemons = Daemons::start().await;
    // At the factory: the device certificate, its key in keyd, from the device CA.
    let certd = daemons.certd.client();
    client_cert(&certd, "device-id", "device-x").await;
    let device_ca = certd.trust_bundle().await.unwrap();
    let cloud = CloudService::start(Some(&device_ca)).await;
    cloud.enroll("device-x", Enrollment::X509);
    let identityd = identityd(
        &daemons,
        ProvisioningConfig::Dps(DpsConfig {
            global_endpoint: cloud.endpoint.clone(),
            id_scope: cloud.id_scope.clone(),
            attestation: AttestationConfig::X509 {
                registration_id: None,
                cert_id: "device-id".into(),
                key_id: "device-id".into(),
                subject: Default::default(),
            },
            payload_file: None,
        }),
        Some(&cloud),
    )
    .await;
    let client = identityd.client();
    provisioned(&client).await;
    let device = client.device().await.unwrap();
    assert_eq!(
        device.device_id, "device-x",
        "registered as the certificate's CN"
    );
    assert_eq!(device.auth.auth_type, AuthType::X509);
    assert_eq!(device.auth.cert_id.as_deref(), Some("device-id"));
    let err = client.device_token(None).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
    // Modules are registered over TLS client auth with the device certificate.
    two_modules_in_the_hub(&client, &cloud, "device-x").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_connection_string() {
    let daemons = Daemons::start().await;
    let cloud = CloudService::start(None).await;
    let key = random_key();
    cloud.add_sas_device("manual-1", &key);
    let cs = format!(
        "HostName={};DeviceId=manual-1;SharedAccessKey={}",
        cloud.hub,
        base64_of(&key)
    );
    let identityd = identityd(
        &daemons,
        ProvisioningConfig::Manual(ManualConfig {
            connection_string: Some(SecretString(cs.into())),
            hub: None,
            device_id: None,
            auth: None,
            gateway: None,
        }),
        Some(&cloud),
    )
    .await;
    let client = identityd.client();
    provisioned(&client).await;
    let token = client.device_token(None).await.unwrap();
    cloud.authenticate_device("manual-1", &token.token).unwrap();
    two_modules_in_the_hub(&client, &cloud, "manual-1").await;
    let text = std::fs::read_to_string(daemons.path().join("identityd/device.json")).unwrap();
    assert!(!text.contains(&base64_of(&key)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_x509_identity_with_x509_modules() {
    let daemons = Daemons::start().await;
    let certd = daemons.certd.client();
    client_cert(&certd, "hub-identity", "manual-x").await;
    let device_ca = certd.trust_bundle().await.unwrap();
    let cloud = CloudService::start(Some(&device_ca)).await;
    cloud.add_x509_device("manual-x");
    let mut config = IdentitydFixture::config_in(
        daemons.path(),
        ProvisioningConfig::Manual(ManualConfig {
            connection_string: None,
            hub: Some(cloud.hub.clone()),
            device_id: Some("manual-x".into()),
            auth: Some(DeviceAuthConfig::X509 {
                cert_id: "hub-identity".into(),
                key_id: "hub-identity".into(),
                subject: Default::default(),
            }),
            gateway: None,
        }),
        Some(&cloud),
    );
    config.modules.auth = AuthType::X509;
    let identityd = IdentitydFixture::configured(config, Admins::root_and_self()).await;
    let client = identityd.client();
    provisioned(&client).await;
    let module = client.create_module("$edgeHub").await.unwrap();
    assert_eq!(module.auth.auth_type, AuthType::X509);
    let cert_id = module.auth.cert_id.clone().unwrap();
    let chain = certd.get(&cert_id).await.unwrap().pem;
    edgeid_testkit::openssl::verify_chain(&device_ca, &chain, "sslclient").unwrap();
    let leaf = pem::parse(&chain).unwrap();
    let thumbprint: String = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf.contents())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    assert_eq!(
        cloud.module_thumbprint("manual-x", "$edgeHub").as_deref(),
        Some(thumbprint.as_str()),
        "the hub holds the module certificate's thumbprint"
    );
    let err = client.module_token("$edgeHub", None).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
    client.delete_module("$edgeHub").await.unwrap();
    assert!(cloud.modules_of("manual-x").is_empty());
    assert_eq!(
        certd.get(&cert_id).await.unwrap_err().status(),
        Some(StatusCode::NOT_FOUND),
        "the module's certificate goes with it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_mode_works_with_no_cloud() {
    let daemons = Daemons::start().await;
    let mut config = IdentitydFixture::config_in(
        daemons.path(),
        ProvisioningConfig::Local(LocalConfig {
            device_id: "edge-1".into(),
            hub: "localhost".into(),
        }),
        None,
    );
    // Nothing is reachable: a cloud call would fail.
    config.cloud.attempts = 1;
    let identityd = IdentitydFixture::configured(config, Admins::root_and_self()).await;
    let client = identityd.client();
    provisioned(&client).await;
    let device = client.device().await.unwrap();
    assert_eq!(device.device_id, "edge-1");
    assert_eq!(device.auth.auth_type, AuthType::X509);
    let certd = daemons.certd.client();
    let chain = certd.get("device-id").await.unwrap().pem;
    let bundle = certd.trust_bundle().await.unwrap();
    edgeid_testkit::openssl::verify_chain(&bundle, &chain, "sslclient").unwrap();
    let a = client.create_module("a").await.unwrap();
    client.create_module("b").await.unwrap();
    assert_eq!(client.modules().await.unwrap().len(), 2);
    let token = client.module_token("a", Some(60)).await.unwrap();
    assert!(token
        .token
        .starts_with("SharedAccessSignature sr=localhost%2Fdevices%2Fedge-1%2Fmodules%2Fa&sig="));
    // The key behind the token is keyd's derived key: verify with keyd's own HMAC.
    let keyd = daemons.keyd.client();
    let handle = a.auth.key_handle.unwrap();
    let (_, rest) = token.token.split_once("&se=").unwrap();
    let expiry: u64 = rest.parse().unwrap();
    let mac = keyd
        .sign(
            &handle,
            edgeid_keyd::api::SignAlgorithm::HmacSha256,
            format!("localhost%2Fdevices%2Fedge-1%2Fmodules%2Fa\n{expiry}").as_bytes(),
            false,
        )
        .await
        .unwrap();
    let sig =
        percent_encoding::utf8_percent_encode(&base64_of(&mac), percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    assert!(
        token.token.contains(&format!("sig={sig}&")),
        "{}",
        &*token.token
    );
}

/// The reference's `[provisioning.payload] uri`: the file's JSON goes with
/// each registration as its `payload` (what DPS custom allocation reads),
/// and the aziot API's provisioning info answers it. A file that is not
/// JSON stops the registration, naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dps_payload_file_goes_with_each_registration() {
    let daemons = Daemons::start().await;
    let cloud = CloudService::start(None).await;
    let key = random_key();
    cloud.enroll("device-p", Enrollment::SymmetricKey(key.clone()));
    let key_file = daemons.key_file("enrollment.key", &key);
    let payload_file = daemons.path().join("dps-payload.json");
    let payload = serde_json::json!({ "modelId": "dtmi:contoso:gateway;1", "site": { "line": 7 } });
    std::fs::write(&payload_file, payload.to_string()).unwrap();
    let mut provisioning = dps_symmetric(&cloud, "device-p", key_file, false);
    if let ProvisioningConfig::Dps(d) = &mut provisioning {
        d.payload_file = Some(payload_file.clone());
    }
    let identityd = identityd(&daemons, provisioning, Some(&cloud)).await;
    let client = identityd.client();
    provisioned(&client).await;
    let bodies = cloud.registration_bodies();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(bodies[0]["registrationId"], "device-p");
    assert_eq!(bodies[0]["payload"], payload, "the file's JSON, as it is");

    let (status, info) = edgeid_testkit::aziot::call(
        &identityd.socket(),
        http::Method::GET,
        "/identities/provisioning?api-version=2021-12-01",
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["payload"], payload);

    // Read at each registration: a file that is no longer JSON stops the next.
    std::fs::write(&payload_file, "{ not json").unwrap();
    let status = client.reprovision().await.unwrap();
    let status = if status.state == ProvisioningState::Provisioning {
        settled(&client).await
    } else {
        status
    };
    assert_eq!(status.state, ProvisioningState::Failed, "{status:?}");
    let why = status.last_error.unwrap_or_default();
    assert!(
        why.contains("dps-payload.json") && why.contains("not JSON"),
        "{why}"
    );
    assert_eq!(cloud.registration_bodies().len(), 1, "nothing sent");
    // The identity provisioned before is still served.
    assert_eq!(client.device().await.unwrap().device_id, "device-p");
}

/// The reference's manual X.509 provisioning with the device's certificate
/// and key in files (`identity_cert`, `identity_pk` as `file:` URIs, which
/// aziotctl makes preloaded): a PKI's device certificate made by openssl.
/// identityd checks the preloaded certificate certifies the preloaded key,
/// then authenticates to the hub with them; a key it does not certify is
/// refused, naming both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_x509_with_a_preloaded_certificate_and_key() {
    let work = edgeid_testkit::temp_dir();
    let ca = edgeid_testkit::openssl::new_p256_ca(work.path(), "pki-ca", "device PKI CA");
    let (key, cert) =
        edgeid_testkit::openssl::new_client_cert(work.path(), "device", "factory-7", &ca);
    let mut daemons = Daemons::start_with(|c| {
        c.preloaded_keys = vec![edgeid_keyd::config::PreloadedKey {
            id: "device-id".into(),
            file: key.clone(),
            symmetric: None,
        }];
    })
    .await;
    daemons.certd.config.preloaded.insert(
        "device-id".into(),
        edgeid_certd::config::PreloadedCert {
            file: Some(cert.clone()),
            ids: None,
        },
    );
    daemons.certd.restart().await;
    let ca_pem = std::fs::read_to_string(&ca.1).unwrap();
    let cloud = CloudService::start(Some(&ca_pem)).await;
    cloud.add_x509_device("factory-7");
    let manual = |key_id: &str| {
        ProvisioningConfig::Manual(ManualConfig {
            connection_string: None,
            hub: Some(cloud.hub.clone()),
            device_id: Some("factory-7".into()),
            auth: Some(DeviceAuthConfig::X509 {
                cert_id: "device-id".into(),
                key_id: key_id.into(),
                subject: Default::default(),
            }),
            gateway: None,
        })
    };
    let identityd = identityd(&daemons, manual("device-id"), Some(&cloud)).await;
    let client = identityd.client();
    provisioned(&client).await;
    let device = client.device().await.unwrap();
    assert_eq!(device.auth.auth_type, AuthType::X509);
    assert_eq!(device.auth.cert_id.as_deref(), Some("device-id"));
    // The hub is reached with the preloaded certificate: a module is made there.
    client.create_module("sensor").await.unwrap();
    assert_eq!(cloud.modules_of("factory-7"), ["sensor"]);
    drop(identityd);

    // A key the certificate does not certify.
    daemons
        .keyd
        .client()
        .create_key_pair("not-the-device", edgeid_keyd::api::KeyPairSpec::EcP256)
        .await
        .unwrap();
    let dir = edgeid_testkit::temp_dir();
    let config = IdentitydFixture::config_in(dir.path(), manual("not-the-device"), Some(&cloud));
    let mut config = config;
    config.keyd_socket = daemons.keyd.socket();
    config.certd_socket = daemons.certd.socket();
    let identityd = IdentitydFixture::configured(config, Admins::root_and_self()).await;
    let status = settled(&identityd.client()).await;
    assert_eq!(status.state, ProvisioningState::Failed, "{status:?}");
    let why = status.last_error.unwrap_or_default();
    assert!(
        why.contains("does not certify keyd key 'not-the-device'"),
        "{why}"
    );
}

/// The reference's X.509 provisioning before the identity certificate
/// exists: identityd asks certd for it, for a new keyd key, with the device
/// id as its common name, issued as certd's `[issuance."device-id"]` says
/// (here its local CA, as `[cert_issuance.device-id] method = "local_ca"`
/// configures it; EST likewise), and authenticates to the hub with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_x509_asks_certd_for_a_missing_identity_certificate() {
    let (daemons, cloud, provisioning) =
        common::x509_device_certd_issues("factory-9", 30, None).await;
    let device_ca = daemons.certd.client().trust_bundle().await.unwrap();
    let identityd = identityd(&daemons, provisioning, Some(&cloud)).await;
    let client = identityd.client();
    provisioned(&client).await;
    let chain = daemons.certd.client().get("device-id").await.unwrap().pem;
    edgeid_testkit::openssl::verify_chain(&device_ca, &chain, "sslclient").unwrap();
    let leaf = pem::parse(&chain).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.contents()).unwrap();
    let cn = cert.subject().iter_common_name().next().unwrap();
    assert_eq!(cn.as_str().unwrap(), "factory-9");
    let o = cert.subject().iter_organization().next().unwrap();
    assert_eq!(
        o.as_str().unwrap(),
        "Contoso",
        "the configured csr_subject's rest"
    );
    // Its key is keyd's device-id.
    let keyd = daemons.keyd.client();
    let handle = keyd.key_pair("device-id").await.unwrap();
    let public = keyd.public_key(&handle).await.unwrap().pem;
    assert_eq!(
        pem::parse(&public).unwrap().contents(),
        cert.public_key().raw
    );
    client.create_module("sensor").await.unwrap();
    assert_eq!(cloud.modules_of("factory-9"), ["sensor"]);
}
