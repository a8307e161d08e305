//! identityd's aziot identity API (issue 18) over its socket, with the
//! calls aziot-edged and modules make (bodies as `aziot-identity-client-async`
//! builds them), against a device provisioned through the test DPS and hub:
//! a module made through either API is the same module through the other,
//! and its `keyHandle` signs, as another uid, exactly what the hub checks
//! with the keys identityd registered there.

mod common;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::{dps_symmetric, provisioned, random_key, Daemons};
use edgeid_common::authz::Admins;
use edgeid_identityd::config::{PrincipalConfig, Role};
use edgeid_testkit::aziot::{call, call_as, call_raw};
use edgeid_testkit::cloud::{CloudService, Enrollment};
use edgeid_testkit::IdentitydFixture;
use http::{Method, StatusCode};
use serde_json::{json, Value};

const ORCHESTRATOR: u32 = 4300;
const MODULE: u32 = 4301;
const STRANGER: u32 = 4999;
/// A host process the reference's config names with idtype = ["module"]
/// (as the Device Update agent is): identityd makes its module itself.
const HOST_PROCESS: u32 = 4302;
/// A host process with a local identity (idtype local, a TLS server's).
const LOCAL_SERVER: u32 = 4303;

struct Device {
    daemons: Daemons,
    cloud: CloudService,
    identityd: IdentitydFixture,
}

/// keyd, certd and identityd, all sockets open to every uid (the daemons
/// decide who may do what); the device provisioned through DPS as
/// `device-1`; aziot-edged is uid 4300, module `sensor` uid 4301.
async fn device() -> Device {
    let daemons = Daemons::start_with(|c| c.server.socket_mode = 0o666).await;
    edgeid_testkit::open_to_others(daemons.path());
    let cloud = CloudService::start(None).await;
    let key = random_key();
    cloud.enroll("device-1", Enrollment::SymmetricKey(key.clone()));
    let key_file = daemons.key_file("enrollment.key", &key);
    let mut config = IdentitydFixture::config_in(
        daemons.path(),
        dps_symmetric(&cloud, "device-1", key_file, false),
        Some(&cloud),
    );
    config.server.socket_mode = 0o666;
    config.principals = vec![
        PrincipalConfig {
            name: "aziot-edged".into(),
            uid: ORCHESTRATOR,
            role: Role::Orchestrator,
            module_id: None,
            keep_module: false,
            local_id: None,
        },
        PrincipalConfig {
            name: "sensor".into(),
            uid: MODULE,
            role: Role::Module,
            module_id: None,
            keep_module: false,
            local_id: None,
        },
        PrincipalConfig {
            name: "adu-agent".into(),
            uid: HOST_PROCESS,
            role: Role::Module,
            module_id: None,
            keep_module: true,
            local_id: None,
        },
        PrincipalConfig {
            name: "opcua".into(),
            uid: LOCAL_SERVER,
            role: Role::Module,
            module_id: None,
            keep_module: false,
            local_id: Some(edgeid_identityd::principal::LocalIdKind::Server),
        },
    ];
    // The reference's [localid] domain "example.com" on host "gw".
    config.modules.local_cn_suffix = Some("gw.example.com".into());
    let identityd = IdentitydFixture::configured(config, Admins::root_and_self()).await;
    provisioned(&identityd.client()).await;
    Device {
        daemons,
        cloud,
        identityd,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_module_through_both_apis_and_its_handle_signs_what_the_hub_checks() {
    assert!(
        edgeid_testkit::is_root(),
        "this test switches uids: run it as root (CI does)"
    );
    let d = device().await;
    let socket = d.identityd.socket();
    let hub = d.identityd.client().device().await.unwrap().hub;
    let at = |path: &str, v: &str| format!("{path}?api-version={v}");

    // aziot-edged creates a module, as the reference's client sends it.
    let (status, made) = call_as(
        ORCHESTRATOR,
        &socket,
        Method::POST,
        &at("/identities/modules", "2022-08-01"),
        json!({ "type": "aziot", "moduleId": "sensor" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{made}");
    assert_eq!(made["type"], "aziot");
    let spec = &made["spec"];
    assert_eq!(spec["hubName"], hub.as_str());
    assert_eq!(spec["gatewayHost"], hub.as_str());
    assert_eq!(spec["deviceId"], "device-1");
    assert_eq!(spec["moduleId"], "sensor");
    assert_eq!(spec["auth"]["type"], "sas");
    let gen_id = spec["genId"].as_str().unwrap().to_owned();
    assert!(d
        .cloud
        .modules_of("device-1")
        .contains(&"sensor".to_string()));

    // The same module through /v1.
    let v1 = d.identityd.client().module("sensor").await.unwrap();
    assert_eq!(v1.generation_id, gen_id);

    // The module, a stranger to keyd, signs with the handle through keyd's
    // aziot API: the MAC is the one the hub computes with the keys
    // identityd registered.
    let data = format!("{hub}/devices/device-1/modules/sensor\n1900000000");
    let (status, mac) = call_as(
        MODULE,
        &d.daemons.keyd.socket(),
        Method::POST,
        "/sign?api-version=2020-09-01",
        json!({ "keyHandle": spec["auth"]["keyHandle"], "algorithm": "HMAC-SHA256",
                "parameters": { "message": STANDARD.encode(&data) } }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{mac}");
    let signature = STANDARD.decode(mac["signature"].as_str().unwrap()).unwrap();
    assert_eq!(
        Some(signature),
        d.cloud.module_hmac("device-1", "sensor", data.as_bytes()),
        "signed with the key the hub holds for the module"
    );

    // The host process's module was made by identityd once the device was
    // provisioned, registered with the hub; it reads it as its identity.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !d
        .cloud
        .modules_of("device-1")
        .contains(&"adu-agent".to_string())
    {
        assert!(
            std::time::Instant::now() < until,
            "identityd made no module for adu-agent"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, me) = call_as(
        HOST_PROCESS,
        &socket,
        Method::GET,
        &at("/identities/identity", "2020-09-01"),
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["spec"]["moduleId"], "adu-agent");

    // Who each caller is.
    let (status, me) = call_as(
        MODULE,
        &socket,
        Method::GET,
        &at("/identities/identity", "2020-09-01"),
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["spec"]["moduleId"], "sensor");
    assert_eq!(me["spec"]["genId"], gen_id.as_str());
    let (status, me) = call_as(
        ORCHESTRATOR,
        &socket,
        Method::GET,
        &at("/identities/identity", "2020-09-01"),
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["spec"]["deviceId"], "device-1");
    assert!(me["spec"].get("moduleId").is_none(), "the device: {me}");
    let (status, _) = call_as(
        STRANGER,
        &socket,
        Method::GET,
        &at("/identities/identity", "2020-09-01"),
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A module made through /v1 is there through aziot, and a module may
    // not read another.
    let other = d.identityd.client().create_module("other").await.unwrap();
    let path = at("/identities/modules/other", "2020-09-01") + "&type=aziot";
    let (status, got) = call_as(ORCHESTRATOR, &socket, Method::GET, &path, Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["spec"]["genId"], other.generation_id.as_str());
    let (status, _) = call_as(MODULE, &socket, Method::GET, &path, Value::Null).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a module reads only itself");
    let list = at("/identities/modules", "2020-09-01") + "&type=aziot";
    let (status, listed) = call_as(ORCHESTRATOR, &socket, Method::GET, &list, Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    let mut ids: Vec<&str> = listed["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["spec"]["moduleId"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["adu-agent", "other", "sensor"]);

    // Update keeps the generation; delete removes it from the hub too.
    let sensor = at("/identities/modules/sensor", "2020-09-01") + "&type=aziot";
    let (status, updated) = call_as(
        ORCHESTRATOR,
        &socket,
        Method::PUT,
        &sensor,
        json!({ "type": "aziot", "moduleId": "sensor" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["spec"]["genId"], gen_id.as_str());
    let (status, _) = call_as(ORCHESTRATOR, &socket, Method::DELETE, &sensor, Value::Null).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!d
        .cloud
        .modules_of("device-1")
        .contains(&"sensor".to_string()));
    let (status, gone) = call_as(ORCHESTRATOR, &socket, Method::GET, &sensor, Value::Null).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a missing module is 400: {gone}"
    );
    // aziot-edged's watchdog updates $edgeAgent (IoT Hub makes it for every
    // edge device; edgeid has not): registered with edgeid's keys, the hub's
    // MAC is the handle's. A module may not update, even itself.
    let agent = at("/identities/modules/$edgeAgent", "2020-09-01") + "&type=aziot";
    let body = json!({ "type": "aziot", "moduleId": "$edgeAgent" });
    let (status, _) = call_as(MODULE, &socket, Method::PUT, &agent, body.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, adopted) = call_as(ORCHESTRATOR, &socket, Method::PUT, &agent, body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{adopted}");
    assert!(adopted["spec"]["genId"].is_string(), "{adopted}");
    assert!(d
        .cloud
        .modules_of("device-1")
        .contains(&"$edgeAgent".to_string()));
    let data = format!("{hub}/devices/device-1/modules/$edgeAgent\n1900000000");
    let (status, mac) = call(
        &d.daemons.keyd.socket(),
        Method::POST,
        "/sign?api-version=2020-09-01",
        json!({ "keyHandle": adopted["spec"]["auth"]["keyHandle"], "algorithm": "HMAC-SHA256",
                "parameters": { "message": STANDARD.encode(&data) } }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{mac}");
    assert_eq!(
        STANDARD.decode(mac["signature"].as_str().unwrap()).ok(),
        d.cloud
            .module_hmac("device-1", "$edgeAgent", data.as_bytes())
    );
    let (status, again) = call_as(ORCHESTRATOR, &socket, Method::PUT, &agent, body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        again["spec"]["genId"], adopted["spec"]["genId"],
        "updated again: the same module"
    );

    // The device, the trust bundle, provisioning, reprovisioning.
    let (status, device) = call_as(
        ORCHESTRATOR,
        &socket,
        Method::POST,
        &at("/identities/device", "2020-09-01"),
        json!({ "type": "aziot" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{device}");
    assert_eq!(device["spec"]["deviceId"], "device-1");
    assert!(device["spec"]["auth"]["keyHandle"].is_string());
    let (status, _) = call_as(
        MODULE,
        &socket,
        Method::POST,
        &at("/identities/device", "2020-09-01"),
        json!({ "type": "aziot" }),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a module does not read the device"
    );
    let (status, bundle) = call_as(
        ORCHESTRATOR,
        &socket,
        Method::GET,
        &at("/trust-bundle", "2020-09-01"),
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        bundle["certificate"],
        d.daemons
            .certd
            .client()
            .trust_bundle()
            .await
            .unwrap()
            .as_str()
    );
    let (status, info) = call_as(
        ORCHESTRATOR,
        &socket,
        Method::GET,
        &at("/identities/provisioning", "2021-12-01"),
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(
        info,
        json!({ "source": "dps", "auth": "symmetric_key", "endpoint": d.cloud.endpoint,
                "scope_id": d.cloud.id_scope, "registration_id": "device-1", "payload": null })
    );
    let registrations = d.cloud.registrations();
    let (status, _) = call_as(
        ORCHESTRATOR,
        &socket,
        Method::POST,
        &at("/identities/device/reprovision", "2020-09-01"),
        json!({ "type": "aziot" }),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        d.cloud.registrations(),
        registrations + 1,
        "answered once DPS was asked again"
    );
    let (status, _) = call_as(
        MODULE,
        &socket,
        Method::POST,
        &at("/identities/device/reprovision", "2020-09-01"),
        json!({ "type": "aziot" }),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call_as(
        MODULE,
        &socket,
        Method::POST,
        &at("/identities/modules", "2020-09-01"),
        json!({ "type": "local", "moduleId": "sensor" }),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a module gets no local identity"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_the_references_statuses_and_a_message() {
    let d = device().await;
    let socket = d.identityd.socket();
    #[rustfmt::skip]
    let cases: Vec<(Method, &str, &str, StatusCode, &str)> = vec![
        (Method::GET, "/identities/identity", "", StatusCode::BAD_REQUEST, "api-version"),
        (Method::GET, "/identities/identity?api-version=2019-01-01", "", StatusCode::BAD_REQUEST, "api-version"),
        (Method::GET, "/identities/provisioning?api-version=2020-09-01", "", StatusCode::BAD_REQUEST, "2021-12-01"),
        (Method::GET, "/identities/modules?api-version=2020-09-01", "", StatusCode::BAD_REQUEST, "type: missing parameter"),
        (Method::GET, "/identities/modules?api-version=2020-09-01&type=x", "", StatusCode::BAD_REQUEST, "invalid type: x"),
        (Method::GET, "/identities/modules?api-version=2020-09-01&type=local", "", StatusCode::BAD_REQUEST, "type=local"),
        (Method::POST, "/identities/modules?api-version=2020-09-01", r#"{"type":"local","moduleId":"m","localIdOpts":{"type":"x509","attributes":"admin"}}"#, StatusCode::UNPROCESSABLE_ENTITY, "admin"),
        (Method::POST, "/identities/modules?api-version=2020-09-01", r#"{"type":"aziot""#, StatusCode::UNPROCESSABLE_ENTITY, "malformed JSON"),
        (Method::POST, "/identities/modules?api-version=2020-09-01", r#"{"type":"aziot"}"#, StatusCode::UNPROCESSABLE_ENTITY, "moduleId"),
        (Method::POST, "/identities/modules?api-version=2020-09-01", "", StatusCode::BAD_REQUEST, "missing request body"),
        (Method::POST, "/identities/modules?api-version=2020-09-01", r#"{"type":"aziot","moduleId":"a/b"}"#, StatusCode::BAD_REQUEST, "module id"),
        (Method::POST, "/identities/device?api-version=2020-09-01", "", StatusCode::BAD_REQUEST, "missing request body"),
        (Method::GET, "/identities/modules/nothing?api-version=2020-09-01&type=aziot", "", StatusCode::BAD_REQUEST, "no module identity"),
        (Method::PATCH, "/identities/modules/nothing?api-version=2020-09-01", "", StatusCode::METHOD_NOT_ALLOWED, ""),
        (Method::GET, "/nothing?api-version=2020-09-01", "", StatusCode::NOT_FOUND, ""),
    ];
    for (method, path, body, status, why) in cases {
        let (got, answer) = call_raw(&socket, method.clone(), path, body.to_owned()).await;
        assert_eq!(got, status, "{method} {path}: {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{method} {path}: {answer}");
    }
    assert!(
        d.cloud
            .modules_of("device-1")
            .iter()
            .all(|m| m == "adu-agent"),
        "no module made by any of it (but the host process's own module)"
    );
    // And a well-formed request from the same caller works.
    let (status, made) = call(
        &socket,
        Method::POST,
        "/identities/modules?api-version=2020-09-01",
        json!({ "type": "aziot", "moduleId": "m" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{made}");
}

/// `openssl <args> -in <file of text>`'s output.
fn openssl_out(args: &[&str], text: &str) -> String {
    let tool = edgeid_testkit::require_tool("openssl", "openssl");
    let dir = edgeid_testkit::temp_dir();
    let file = dir.path().join("in.pem");
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(tool)
        .args(args)
        .arg("-in")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_identities_are_a_fresh_key_and_a_certificate_openssl_verifies() {
    let d = device().await;
    let socket = d.identityd.socket();
    let bundle = d.daemons.certd.client().trust_bundle().await.unwrap();
    for (attributes, purpose, not) in [
        (json!("server"), "sslserver", None),
        (json!("client"), "sslclient", Some("sslserver")),
        (Value::Null, "sslclient", Some("sslserver")),
    ] {
        let mut body = json!({ "type": "local", "moduleId": "hostproc" });
        if !attributes.is_null() {
            body["localIdOpts"] = json!({ "type": "x509", "attributes": attributes });
        }
        let (status, made) = call(
            &socket,
            Method::POST,
            "/identities/modules?api-version=2022-08-01",
            body,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{made}");
        assert_eq!(made["type"], "local");
        assert_eq!(made["spec"]["moduleId"], "hostproc");
        let auth = &made["spec"]["auth"];
        let chain = auth["certificate"].as_str().unwrap();
        edgeid_testkit::openssl::verify_chain(&bundle, chain, purpose).unwrap();
        if let Some(not) = not {
            assert!(edgeid_testkit::openssl::verify_chain(&bundle, chain, not).is_err());
        }
        // The key is the certificate's.
        assert_eq!(
            openssl_out(&["pkey", "-pubout"], auth["privateKey"].as_str().unwrap()),
            openssl_out(&["x509", "-noout", "-pubkey"], chain)
        );
        let end = openssl_out(&["x509", "-noout", "-enddate"], chain);
        let expiration = auth["expiration"].as_str().unwrap();
        assert!(expiration.ends_with("+00:00"), "{expiration}");
        assert!(end.contains(&expiration[..4]), "{end} vs {expiration}");
    }
    assert!(
        d.cloud
            .modules_of("device-1")
            .iter()
            .all(|m| m == "adu-agent"),
        "nothing in the hub (but the host process's own module)"
    );
}

/// The reference's idtype local principal: its own local identity, issued
/// anew at each `GET /identities/modules/<it>?type=local`, of the kind its
/// `localid` says, named `<module>.<hostname>.<domain>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_local_principal_gets_its_own_local_identity_and_nobody_else_does() {
    if !edgeid_testkit::is_root() {
        panic!("this test switches uids: run it as root (CI does)");
    }
    let d = device().await;
    let socket = d.identityd.socket();
    let bundle = d.daemons.certd.client().trust_bundle().await.unwrap();
    let path = "/identities/modules/opcua?api-version=2022-08-01&type=local";
    let mut keys = Vec::new();
    for uid in [LOCAL_SERVER, ORCHESTRATOR] {
        let (status, got) = call_as(uid, &socket, Method::GET, path, Value::Null).await;
        assert_eq!(status, StatusCode::OK, "uid {uid}: {got}");
        assert_eq!(got["type"], "local");
        let auth = &got["spec"]["auth"];
        let chain = auth["certificate"].as_str().unwrap();
        edgeid_testkit::openssl::verify_chain(&bundle, chain, "sslserver").unwrap();
        edgeid_testkit::openssl::verify_chain(&bundle, chain, "sslclient").unwrap();
        let subject = openssl_out(&["x509", "-noout", "-subject"], chain);
        assert!(subject.contains("CN = opcua.gw.example.com"), "{subject}");
        assert_eq!(
            openssl_out(&["pkey", "-pubout"], auth["privateKey"].as_str().unwrap()),
            openssl_out(&["x509", "-noout", "-pubkey"], chain)
        );
        keys.push(auth["privateKey"].as_str().unwrap().to_owned());
    }
    assert_ne!(keys[0], keys[1], "issued anew each time");
    for uid in [MODULE, STRANGER] {
        let (status, got) = call_as(uid, &socket, Method::GET, path, Value::Null).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "uid {uid}: {got}");
    }
    let (status, got) = call_as(
        ORCHESTRATOR,
        &socket,
        Method::GET,
        "/identities/modules/sensor?api-version=2022-08-01&type=local",
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{got}");
    assert!(
        got["message"].as_str().unwrap().contains("doesn't exist"),
        "{got}"
    );
    // As the reference: the principal's local identity is not made by POST.
    let (status, got) = call_as(
        ORCHESTRATOR,
        &socket,
        Method::POST,
        "/identities/modules?api-version=2022-08-01",
        json!({ "type": "local", "moduleId": "opcua" }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{got}");
    assert!(
        got["message"].as_str().unwrap().contains("already exists"),
        "{got}"
    );
}
