//! One device, two APIs (issue 18): a module aziot-edged creates through
//! identityd's aziot API is a module of the workload API, whose `sign` MACs
//! with the very key the aziot identity's `keyHandle` names in keyd; and a
//! module deleted through the aziot API is gone from the workload API.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use edgeid_testkit::aziot::call;
use edgeid_testkit::workload::Stack;
use edgeid_testkit::WorkloadFixture;
use http::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_module_made_through_the_aziot_api_signs_through_the_workload_api() {
    let dir = edgeid_testkit::temp_dir();
    let stack = Stack::local(dir.path(), &[]).await;
    let (status, made) = call(
        &stack.identityd.socket(),
        Method::POST,
        "/identities/modules?api-version=2022-08-01",
        json!({ "type": "aziot", "moduleId": "aziot-mod" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{made}");
    let gen_id = made["spec"]["genId"].as_str().unwrap().to_owned();
    // The test process is the module, for workloadd.
    let config = stack.workload_config(dir.path(), &[("aziot-mod", edgeid_common::current_uid())]);
    let workload = WorkloadFixture::configured(config).await;
    let data = STANDARD.encode(b"localhost/devices/edge-1/modules/aziot-mod\n1900000000");
    let (status, signed) = call(
        &workload.socket(),
        Method::POST,
        &format!("/modules/aziot-mod/genid/{gen_id}/sign?api-version=2022-08-03"),
        json!({ "keyId": "primary", "algo": "HMACSHA256", "data": data }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{signed}");
    let (status, mac) = call(
        &stack.keyd.socket(),
        Method::POST,
        "/sign?api-version=2020-09-01",
        json!({ "keyHandle": made["spec"]["auth"]["keyHandle"], "algorithm": "HMAC-SHA256",
                "parameters": { "message": data } }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{mac}");
    assert_eq!(signed["digest"], mac["signature"], "one key behind both");

    let (status, _) = call(
        &stack.identityd.socket(),
        Method::DELETE,
        "/identities/modules/aziot-mod?api-version=2020-09-01&type=aziot",
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, gone) = call(
        &workload.socket(),
        Method::POST,
        &format!("/modules/aziot-mod/genid/{gen_id}/sign?api-version=2022-08-03"),
        json!({ "keyId": "primary", "algo": "HMACSHA256", "data": data }),
    )
    .await;
    assert!(status.is_client_error(), "{status}: {gone}");
    // Made again, it is a new generation with a new key.
    let (status, again) = call(
        &stack.identityd.socket(),
        Method::POST,
        "/identities/modules?api-version=2022-08-01",
        json!({ "type": "aziot", "moduleId": "aziot-mod" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_ne!(again["spec"]["genId"], gen_id.as_str());
    let (status, renewed) = call(
        &workload.socket(),
        Method::POST,
        &format!(
            "/modules/aziot-mod/genid/{}/sign?api-version=2022-08-03",
            again["spec"]["genId"].as_str().unwrap()
        ),
        json!({ "keyId": "primary", "algo": "HMACSHA256", "data": data }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    assert_ne!(
        renewed["digest"], signed["digest"],
        "a new key with the new generation"
    );
}
