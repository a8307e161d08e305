//! identityd when things go wrong: the cloud down at restart, callers asking
//! for what is not theirs, malformed input, a provisioning service answering
//! garbage or 5xx, and a hub that stops accepting the device's credential.

mod common;

use common::{dps_symmetric, provisioned, random_key, settled, Daemons};
use edgeid_common::authz::Admins;
use edgeid_identityd::api::ProvisioningState;
use edgeid_identityd::config::{LocalConfig, PrincipalConfig, ProvisioningConfig, Role};
use edgeid_testkit::cloud::{CloudService, Enrollment, Fault};
use edgeid_testkit::IdentitydFixture;
use http::{Method, StatusCode};

async fn dps_device(daemons: &Daemons, cloud: &CloudService) -> IdentitydFixture {
    let key = random_key();
    cloud.enroll("device-1", Enrollment::SymmetricKey(key.clone()));
    let key_file = daemons.key_file("enrollment.key", &key);
    let config = IdentitydFixture::config_in(
        daemons.path(),
        dps_symmetric(cloud, "device-1", key_file, false),
        Some(cloud),
    );
    IdentitydFixture::configured(config, Admins::root_and_self()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_with_the_cloud_down_serves_the_stored_identity_then_reprovisions() {
    let daemons = Daemons::start().await;
    let mut cloud = CloudService::start(None).await;
    let mut identityd = dps_device(&daemons, &cloud).await;
    let client = identityd.client();
    provisioned(&client).await;
    let device = client.device().await.unwrap();
    let module = client.create_module("m").await.unwrap();

    cloud.stop();
    identityd.restart().await;
    let client = identityd.client();
    assert_eq!(
        client.device().await.unwrap(),
        device,
        "served from disk, offline"
    );
    assert_eq!(client.module("m").await.unwrap(), module);
    assert_eq!(
        client.provisioning().await.unwrap().state,
        ProvisioningState::Provisioned
    );
    assert_eq!(cloud.registrations(), 1);

    // Reprovision while the network is down: it fails, the old identity stays.
    let started = client.reprovision().await.unwrap();
    assert_eq!(started.state, ProvisioningState::Provisioning);
    let status = settled(&client).await;
    assert_eq!(status.state, ProvisioningState::Failed);
    let why = status.last_error.unwrap();
    assert!(why.contains("register"), "names the endpoint: {why}");
    assert_eq!(client.device().await.unwrap(), device);
    // Creating a module needs the hub: a clear 503, nothing stored.
    let err = client.create_module("n").await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE), "{err}");
    assert_eq!(client.modules().await.unwrap().len(), 1);

    // The network comes back: the background attempts succeed.
    cloud.resume().await;
    for _ in 0..200 {
        if cloud.registrations() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        cloud.registrations(),
        2,
        "reprovisioned once the service was back"
    );
    provisioned(&client).await;
    client.create_module("n").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn modules_cannot_read_each_other() {
    assert!(
        edgeid_testkit::is_root(),
        "this test switches uids: run it as root"
    );
    let daemons = Daemons::start().await;
    edgeid_testkit::open_to_others(daemons.path());
    let mut config = IdentitydFixture::config_in(
        daemons.path(),
        ProvisioningConfig::Local(LocalConfig {
            device_id: "edge".into(),
            hub: "localhost".into(),
        }),
        None,
    );
    config.server.socket_mode = 0o666;
    let principal = |name: &str, uid, role| PrincipalConfig {
        name: name.into(),
        uid,
        role,
        module_id: None,
        keep_module: false,
        local_id: None,
    };
    config.principals = vec![
        principal("agent", 4100, Role::Orchestrator),
        principal("module-a", 4101, Role::Module),
        principal("module-b", 4102, Role::Module),
        // The reference's idtype = ["device"], and ["device", "module"].
        principal("host-agent", 4103, Role::Device),
        principal("both", 4104, Role::Device),
        principal("module-a", 4104, Role::Module),
    ];
    let identityd = IdentitydFixture::configured(config, Admins::root_and_self()).await;
    provisioned(&identityd.client()).await;
    let socket = identityd.socket();
    let call = |uid, method: Method, path: &str, body: &str| {
        let socket = socket.clone();
        let path = path.to_owned();
        let body = body.to_owned();
        async move { edgeid_testkit::request_as(uid, &socket, method, &path, &body).await }
    };
    for m in ["module-a", "module-b"] {
        let (code, _) = call(
            4100,
            Method::POST,
            "/v1/identities/modules",
            &format!("{{\"module_id\":\"{m}\"}}"),
        )
        .await;
        assert_eq!(code, StatusCode::CREATED, "the orchestrator creates {m}");
    }
    let (code, body) = call(4101, Method::GET, "/v1/identities/modules/module-a", "").await;
    assert_eq!(code, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let (code, body) = call(4101, Method::GET, "/v1/identities/modules/module-b", "").await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&body).contains("may not read module 'module-b'"));
    let (code, _) = call(
        4101,
        Method::POST,
        "/v1/identities/modules/module-b/token",
        "",
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "nor get its tokens");
    let (code, _) = call(
        4101,
        Method::POST,
        "/v1/identities/modules/module-a/token",
        "",
    )
    .await;
    assert_eq!(code, StatusCode::OK, "its own tokens it may");
    let (code, body) = call(4101, Method::GET, "/v1/identities/modules", "").await;
    assert_eq!(code, StatusCode::OK);
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        list["modules"].as_array().unwrap().len(),
        1,
        "a module lists only itself"
    );
    let (code, _) = call(4101, Method::GET, "/v1/identities/device", "").await;
    assert_eq!(
        code,
        StatusCode::FORBIDDEN,
        "a module does not read the device identity"
    );
    let (code, _) = call(
        4101,
        Method::POST,
        "/v1/identities/modules",
        "{\"module_id\":\"x\"}",
    )
    .await;
    assert_eq!(
        code,
        StatusCode::FORBIDDEN,
        "a module does not create modules"
    );
    let (code, _) = call(4101, Method::DELETE, "/v1/identities/modules/module-b", "").await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (code, body) = call(4999, Method::GET, "/v1/identities/modules/module-a", "").await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&body).contains("uid 4999 is not a principal of identityd"));
    let (code, _) = call(4100, Method::GET, "/v1/identities/device", "").await;
    assert_eq!(code, StatusCode::OK, "the orchestrator reads the device");
    // What only the orchestrator may do.
    for (method, path) in [
        (Method::POST, "/v1/identities/device/token"),
        (Method::GET, "/v1/provisioning"),
        (Method::POST, "/v1/reprovision"),
    ] {
        let (code, _) = call(4101, method.clone(), path, "").await;
        assert_eq!(code, StatusCode::FORBIDDEN, "a module: {method} {path}");
        let (code, _) = call(4999, method.clone(), path, "").await;
        assert_eq!(code, StatusCode::FORBIDDEN, "a stranger: {method} {path}");
    }
    let (code, _) = call(4100, Method::GET, "/v1/provisioning", "").await;
    assert_eq!(code, StatusCode::OK);
    // A device principal reads the device identity and signs as it, and
    // nothing else: not a module that shares its name, not the orchestrator's work.
    let (code, body) = call(4103, Method::GET, "/v1/identities/device", "").await;
    assert_eq!(code, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    for (method, path, body) in [
        (Method::GET, "/v1/identities/modules/host-agent", ""),
        (Method::GET, "/v1/identities/modules/module-a", ""),
        (
            Method::POST,
            "/v1/identities/modules",
            "{\"module_id\":\"host-agent\"}",
        ),
        (Method::DELETE, "/v1/identities/modules/module-a", ""),
        (Method::POST, "/v1/reprovision", ""),
    ] {
        let (code, answer) = call(4103, method.clone(), path, body).await;
        assert_eq!(
            code,
            StatusCode::FORBIDDEN,
            "a device principal: {method} {path}"
        );
        assert!(
            String::from_utf8_lossy(&answer).contains("may read the device identity only"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    // Device and module at once: both reads, still no management.
    let (code, _) = call(4104, Method::GET, "/v1/identities/device", "").await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = call(4104, Method::GET, "/v1/identities/modules/module-a", "").await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = call(4104, Method::GET, "/v1/identities/modules/module-b", "").await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (code, _) = call(4104, Method::DELETE, "/v1/identities/modules/module-b", "").await;
    assert_eq!(code, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_clear_4xx_answers() {
    let daemons = Daemons::start().await;
    let config = IdentitydFixture::config_in(
        daemons.path(),
        ProvisioningConfig::Local(LocalConfig {
            device_id: "edge".into(),
            hub: "localhost".into(),
        }),
        None,
    );
    let identityd = IdentitydFixture::configured(config, Admins::root_and_self()).await;
    let client = identityd.client();
    provisioned(&client).await;
    let raw = client.transport();
    let ask = |method: Method, path: &'static str, body: &'static str| async move {
        let (status, body) = raw
            .raw(method, path, bytes::Bytes::from_static(body.as_bytes()))
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    let (code, body) = ask(Method::GET, "/v1/identities/modules/ghost", "").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(body.contains("no module identity 'ghost'"), "{body}");
    let (code, body) = ask(
        Method::POST,
        "/v1/identities/modules",
        "{\"module_id\":\"a b\"}",
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        body.contains("module id 'a b'") && body.contains("not allowed"),
        "{body}"
    );
    let (code, body) = ask(Method::GET, "/v1/identities/modules/a%2Fb", "").await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    let (code, _) = ask(Method::POST, "/v1/identities/modules", "{\"module_id\":").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let (code, body) = ask(Method::POST, "/v1/identities/modules", "{\"module\":\"a\"}").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(body.contains("module"), "{body}");
    client.create_module("a").await.unwrap();
    let (code, body) = ask(
        Method::POST,
        "/v1/identities/modules/a/token",
        "{\"expiry_secs\":0}",
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(body.contains("expiry_secs"), "{body}");
    let (code, _) = ask(Method::DELETE, "/v1/identities/modules/ghost", "").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _) = ask(
        Method::POST,
        "/v1/identities/device/token",
        "{\"expiry_secs\":",
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "malformed JSON");
    let (code, body) = ask(
        Method::POST,
        "/v1/identities/modules/a/token",
        "{\"expiry\":5}",
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "unknown field: {body}");
    let (code, _) = ask(Method::POST, "/v1/identities/modules/ghost/token", "").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _) = ask(Method::PUT, "/v1/identities/device", "").await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provisioning_service_answering_garbage_or_5xx_leaves_no_state() {
    let daemons = Daemons::start().await;
    let cloud = CloudService::start(None).await;
    cloud.set_fault(Some(Fault::Garbage));
    let identityd = dps_device(&daemons, &cloud).await;
    let client = identityd.client();
    let status = settled(&client).await;
    assert_eq!(status.state, ProvisioningState::Failed);
    let why = status.last_error.unwrap();
    assert!(
        why.contains("not the expected JSON") && why.contains("/register"),
        "{why}"
    );
    assert!(!daemons.path().join("identityd/device.json").exists());

    cloud.set_fault(Some(Fault::Unavailable));
    let before = cloud.requests().len();
    client.reprovision().await.unwrap();
    let status = settled(&client).await;
    assert_eq!(status.state, ProvisioningState::Failed);
    let why = status.last_error.unwrap();
    assert!(why.contains("503"), "names the status: {why}");
    let attempts = cloud.requests()[before..]
        .iter()
        .filter(|r| r.ends_with("/register"))
        .count();
    assert!(attempts >= 3, "retried ({attempts} attempts)");
    assert!(!daemons.path().join("identityd/device.json").exists());

    // Healthy again: asked to, it gets through at once.
    cloud.set_fault(None);
    client.reprovision().await.unwrap();
    provisioned(&client).await;
    assert!(daemons.path().join("identityd/device.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hub_401_reprovisions_once_then_backs_off() {
    let daemons = Daemons::start().await;
    let cloud = CloudService::start(None).await;
    let identityd = dps_device(&daemons, &cloud).await;
    let client = identityd.client();
    provisioned(&client).await;
    assert_eq!(cloud.registrations(), 1);
    cloud.set_fault(Some(Fault::HubRefusesDevice));
    let err = client.create_module("m").await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::BAD_GATEWAY));
    assert!(err.to_string().contains("401"), "{err}");
    assert_eq!(cloud.registrations(), 2, "one reprovisioning after the 401");
    let err = client.create_module("m").await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    assert_eq!(
        cloud.registrations(),
        2,
        "not again within the backoff window"
    );
    assert!(
        client.modules().await.unwrap().is_empty(),
        "nothing half-made"
    );
    cloud.set_fault(None);
    client.create_module("m").await.unwrap();
}

#[test]
fn a_malformed_connection_string_stops_the_binary_with_a_clear_message() {
    let dir = edgeid_testkit::temp_dir();
    let config = dir.path().join("identityd.toml");
    let key = "c2VjcmV0LWtleS1ieXRlcy0xMjM0NTY3OA==";
    for (connection_string, wanted) in [
        (
            format!("HostName=hub.example.net;SharedAccessKey={key}"),
            "DeviceId is missing",
        ),
        (
            "HostName=hub.example.net;DeviceId=d;SharedAccessKey=%%%".to_owned(),
            "SharedAccessKey: is not base64",
        ),
        ("just some text".to_owned(), "is not Name=Value"),
    ] {
        std::fs::write(
            &config,
            format!(
                "state_dir = \"{}\"\n[provisioning]\nsource = \"manual\"\nconnection_string = \"{connection_string}\"\n",
                dir.path().join("state").display()
            ),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgeid-identityd"))
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("provisioning.connection_string") && stderr.contains(wanted),
            "{stderr}"
        );
        assert!(!stderr.contains(key), "the key is never printed: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
