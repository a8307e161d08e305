//! The reference's PKCS#11 settings read by `config apply` and honoured by
//! keyd (issue 19 item 1): `[aziot_keys] pkcs11_lib_path` and
//! `pkcs11_base_slot`, and a `preloaded_keys` entry naming a key a factory
//! put on the token with another tool (OpenSC's pkcs11-tool, here on
//! SoftHSMv2). keyd signs with that key (openssl verifies with the public
//! key pkcs11-tool reads off the token), makes new keys on the token as the
//! reference does with a base slot, and the PIN in the URI is kept in a
//! 0600 file, never in a config or a message.

use std::os::unix::fs::PermissionsExt;

use edgeid_keyd::api::SignAlgorithm;
use edgeid_testkit::process::build_binary;
use edgeid_testkit::{openssl, KeydProcess, SoftHsm};
use http::{Method, StatusCode};
use serde_json::json;
use toml::Table;

mod support;

const PIN: &str = "73519-factory";
const TOKEN: &str = "Key pairs";
const FACTORY_LABEL: &str = "Factory device key";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_references_pkcs11_token_and_a_factory_key_on_it_serve_through_keyd() {
    let hsm = SoftHsm::with_pin(PIN);
    hsm.init_token(TOKEN);
    // The factory's key, under a label of its own, not keyd's id.
    hsm.foreign_key_pair(TOKEN, FACTORY_LABEL);
    let root = support::aziot_root();
    let r = root.path();
    std::fs::create_dir_all(r.join("etc/aziot/keyd/config.d")).unwrap();
    // As aziotctl writes `[aziot_keys]` and a preloaded HSM key of the super-config.
    std::fs::write(
        r.join("etc/aziot/keyd/config.d/00-super.toml"),
        format!(
            "[aziot_keys]\nhomedir_path = \"/var/lib/aziot/keyd\"\n\
             pkcs11_lib_path = \"{}\"\npkcs11_base_slot = \"pkcs11:token=Key%20pairs?pin-value={PIN}\"\n\n\
             [preloaded_keys]\ndevice-id = \"pkcs11:token=Key%20pairs;object=Factory%20device%20key?pin-value={PIN}\"\n",
            SoftHsm::library().display()
        ),
    )
    .unwrap();
    let (ok, said) = support::config_apply(r, &[]);
    assert!(ok, "{said}");
    assert!(!said.contains(PIN), "the PIN in a message: {said}");
    let text = std::fs::read_to_string(r.join("etc/edgeid/keyd.d/config.toml")).unwrap();
    assert!(!text.contains(PIN), "the PIN in keyd's config: {text}");
    let generated: Table = text.parse().unwrap();
    let pkcs11 = generated["pkcs11"].as_table().unwrap();
    assert_eq!(pkcs11["token_label"].as_str(), Some(TOKEN));
    assert_eq!(
        pkcs11["labels"]["device-id"].as_str(),
        Some(FACTORY_LABEL),
        "keyd's device-id is the token's object of the factory's label"
    );
    assert_eq!(
        pkcs11["pin_file"].as_str(),
        Some("/etc/edgeid/keyd.d/aziot-pkcs11.pin")
    );
    assert_eq!(
        generated["backend"]["default"].as_str(),
        Some("pkcs11"),
        "a base slot: every key on the token, as the reference makes them"
    );
    assert!(
        generated.get("preloaded_key").is_none(),
        "the token's key is keyd's by its label: {text}"
    );
    let pin_file = r.join("etc/edgeid/keyd.d/aziot-pkcs11.pin");
    assert_eq!(std::fs::read_to_string(&pin_file).unwrap(), PIN);
    let mode = std::fs::metadata(&pin_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // Applied again: the same PIN is left as it is.
    let (ok, again) = support::config_apply(r, &[]);
    assert!(ok && !again.contains("aziot-pkcs11.pin"), "{again}");

    // keyd with what config apply wrote (the PIN file under the test's root).
    let mut tables = Table::new();
    tables.insert("backend".into(), generated["backend"].clone());
    let mut pkcs11 = pkcs11.clone();
    pkcs11.insert(
        "pin_file".into(),
        toml::Value::String(pin_file.display().to_string()),
    );
    tables.insert("pkcs11".into(), toml::Value::Table(pkcs11));
    let dir = edgeid_testkit::temp_dir();
    let keyd = KeydProcess::start(
        &build_binary("edgeid-keyd"),
        dir.path(),
        &toml::to_string(&tables).unwrap(),
        hsm.env(),
    )
    .await;

    // The factory's key signs; openssl checks it with the public key
    // pkcs11-tool reads off the token.
    let client = keyd.client();
    let signs_as_the_token_key = |id: &'static str, label: &'static str| {
        let (client, public) = (client.clone(), hsm.public_key_pem(TOKEN, label));
        async move {
            let handle = client.key_pair(id).await.unwrap();
            let message = b"a device identity signed in the HSM";
            let signature = client
                .sign(&handle, SignAlgorithm::EcdsaSha256, message, false)
                .await
                .unwrap();
            assert!(
                openssl::verify(SignAlgorithm::EcdsaSha256, &public, message, &signature),
                "{id}"
            );
        }
    };
    signs_as_the_token_key("device-id", FACTORY_LABEL).await;
    // keyd lists it under its id, and the label is no key id of its own.
    let listed = client.list_keys().await.unwrap();
    assert!(listed.iter().any(|k| k.id == "device-id"), "{listed:?}");

    // A key made through the aziot API, as aziot-edged makes its CA key, is on the token.
    let (status, made) = edgeid_testkit::aziot::call(
        &keyd.socket,
        Method::POST,
        "/keypair?api-version=2021-05-01",
        json!({ "keyId": "aziot-edged-ca", "preferredAlgorithms": "ec-p256:rsa-2048:*" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{made}");
    assert!(made["keyHandle"].is_string());
    let objects = hsm.list_objects(TOKEN);
    assert!(objects.contains("aziot-edged-ca"), "{objects}");
    signs_as_the_token_key("aziot-edged-ca", "aziot-edged-ca").await;
}
