//! Nested IoT Edge: a child device reaches its hub through a parent IoT
//! Edge device (the reference's `[provisioning] local_gateway_hostname`,
//! IoT Edge's `parent_hostname`). The test cloud stands in for the parent:
//! it answers at `localhost:<port>` and takes only tokens for the hub's own
//! name, which resolves nowhere, so a module made in it proves identityd
//! called the parent with tokens for the hub.

mod common;

use common::{provisioned, random_key, Daemons};
use edgeid_common::authz::Admins;

use edgeid_identityd::config::{ManualConfig, ProvisioningConfig, SecretString};
use edgeid_testkit::cloud::CloudService;
use edgeid_testkit::IdentitydFixture;
use http::{Method, StatusCode};
use serde_json::Value;

const HUB: &str = "contoso-hub.azure-devices.net";

fn base64_of(key: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_child_device_calls_its_hub_through_the_parent_with_the_hubs_tokens() {
    let daemons = Daemons::start().await;
    let parent = CloudService::start(None).await;
    parent.stand_in_for_hub(HUB);
    let key = random_key();
    parent.add_sas_device("child-1", &key);
    let cs = format!(
        "HostName={HUB};DeviceId=child-1;SharedAccessKey={}",
        base64_of(&key)
    );
    let provisioning = ProvisioningConfig::Manual(ManualConfig {
        connection_string: Some(SecretString(cs.into())),
        hub: None,
        device_id: None,
        auth: None,
        gateway: Some(parent.hub.clone()),
    });
    let config = IdentitydFixture::config_in(daemons.path(), provisioning, Some(&parent));
    let identityd = IdentitydFixture::configured(config, Admins::root_and_self()).await;
    let client = identityd.client();
    provisioned(&client).await;

    // Module identities are made in the hub, by way of the parent.
    let module = client.create_module("sensor").await.unwrap();
    assert_eq!(parent.modules_of("child-1"), ["sensor"]);
    assert!(
        parent
            .requests()
            .iter()
            .any(|r| r.starts_with("PUT /devices/child-1/modules/sensor")),
        "{:?}",
        parent.requests()
    );
    // The device's and the module's tokens are for the hub, not the parent.
    let token = client.device_token(None).await.unwrap();
    parent.authenticate_device("child-1", &token.token).unwrap();
    let token = client.module_token("sensor", None).await.unwrap();
    parent
        .authenticate_module("child-1", "sensor", &token.token)
        .unwrap();

    // What identities say: the hub's name, and the parent as gatewayHost.
    let device = client.device().await.unwrap();
    assert_eq!(device.hub, HUB);
    assert_eq!(device.gateway.as_deref(), Some(parent.hub.as_str()));
    let socket = identityd.socket();
    let aziot = |path: &'static str| {
        let socket = socket.clone();
        async move {
            let (status, body) =
                edgeid_testkit::aziot::call(&socket, Method::GET, path, Value::Null).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            body
        }
    };
    let identity = aziot("/identities/identity?api-version=2020-09-01").await;
    assert_eq!(identity["spec"]["hubName"], HUB);
    assert_eq!(identity["spec"]["gatewayHost"], parent.hub.as_str());
    let listed = aziot("/identities/modules?api-version=2020-09-01&type=aziot").await;
    let sensor = &listed["identities"][0]["spec"];
    assert_eq!(sensor["moduleId"], "sensor");
    assert_eq!(sensor["genId"], module.generation_id.as_str());
    assert_eq!(sensor["hubName"], HUB);
    assert_eq!(sensor["gatewayHost"], parent.hub.as_str());

    // Deleting goes through the parent too.
    client.delete_module("sensor").await.unwrap();
    assert!(parent.modules_of("child-1").is_empty());
}
