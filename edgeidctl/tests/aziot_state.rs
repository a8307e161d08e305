//! What an installed aziot-identity-service left in `/var/lib/aziot`, taken
//! over (issue 19 item 3): the Edge CA's key, as the reference's
//! libaziot-keys writes it (PKCS#8 PEM, made here by openssl), and its
//! certificate, as aziot-certd stores it, in a throwaway root under the
//! reference's file names. `config apply` names them to keyd and certd,
//! which import each once: the key signs as the file's key does (openssl
//! verifies with the public key openssl derives from the file), the
//! certificate is the file's, and neither is replaced when the file
//! changes or goes.

use std::path::{Path, PathBuf};

use edgeid_common::authz::Admins;
use edgeid_keyd::api::SignAlgorithm;
use edgeid_keyd::config::PreloadedKey;
use edgeid_testkit::{openssl, require_tool, CertdFixture, KeydFixture};
use toml::Table;

mod support;

use support::reference_name;

fn der_of(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text).unwrap().into_contents()
}

/// `[[table]]` entries of a generated config, as (id, file under `root`).
fn entries(config: &Table, table: &str, root: &Path) -> Vec<(String, PathBuf)> {
    config[table]
        .as_array()
        .unwrap_or_else(|| panic!("no {table}: {config}"))
        .iter()
        .map(|e| {
            let file = Path::new(e["file"].as_str().unwrap());
            (
                e["id"].as_str().unwrap().to_owned(),
                root.join(file.strip_prefix("/").unwrap()),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_ca_an_aziot_identity_service_left_is_taken_over_once() {
    require_tool("openssl", "openssl");
    let root = support::aziot_root();
    let keys = root.path().join("var/lib/aziot/keyd/keys");
    let certs = root.path().join("var/lib/aziot/certd/certs");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::create_dir_all(&certs).unwrap();
    let work = edgeid_testkit::temp_dir();
    let (key_pem, cert_pem) = openssl::new_p256_ca(work.path(), "edge-ca-1", "edge-ca-1");
    let key_file = keys.join(reference_name("aziot-edged-ca", "key"));
    let cert_file = certs.join(reference_name("aziot-edged-ca", "cer"));
    std::fs::copy(&key_pem, &key_file).unwrap();
    std::fs::copy(&cert_pem, &cert_file).unwrap();
    // A key of an id that is not taken over stays where it is, named by check.
    std::fs::write(
        keys.join(reference_name("aziot_identityd_master_id", "key")),
        [7u8; 32],
    )
    .unwrap();

    let (ok, said) = support::config_apply(root.path(), &[]);
    assert!(ok, "{said}");
    assert!(
        said.contains("takes over, once, what aziot-identity-service left: aziot-edged-ca"),
        "{said}"
    );
    let generated = |daemon: &str| -> Table {
        std::fs::read_to_string(
            root.path()
                .join(format!("etc/edgeid/{daemon}.d/config.toml")),
        )
        .unwrap()
        .parse()
        .unwrap()
    };
    let imported_keys = entries(&generated("keyd"), "imported_key", root.path());
    assert_eq!(
        imported_keys,
        [("aziot-edged-ca".to_owned(), key_file.clone())]
    );
    let imported_certs = entries(&generated("certd"), "imported_cert", root.path());
    assert_eq!(
        imported_certs,
        [("aziot-edged-ca".to_owned(), cert_file.clone())]
    );

    // keyd takes the key over: it signs as the file's key.
    let dir = edgeid_testkit::temp_dir();
    let mut config = KeydFixture::config_in(dir.path());
    config.imported_keys = imported_keys
        .iter()
        .map(|(id, file)| PreloadedKey {
            id: id.clone(),
            file: file.clone(),
            symmetric: None,
        })
        .collect();
    // One whose file is gone (the reference purged) is no reason not to start.
    config.imported_keys.push(PreloadedKey {
        id: "device-id".into(),
        file: keys.join("gone.key"),
        symmetric: None,
    });
    let mut keyd = KeydFixture::configured(config.clone(), Admins::root_and_self()).await;
    let public_of_file = String::from_utf8(openssl::run(&[
        "pkey",
        "-pubout",
        "-in",
        key_file.to_str().unwrap(),
    ]))
    .unwrap();
    let check_signs_as = |keyd: &KeydFixture, public: String| {
        let client = keyd.client();
        async move {
            let handle = client.key_pair("aziot-edged-ca").await.unwrap();
            assert_eq!(
                der_of(&client.public_key(&handle).await.unwrap().pem),
                der_of(&public)
            );
            let message = b"an edge module's server certificate";
            let signature = client
                .sign(&handle, SignAlgorithm::EcdsaSha256, message, false)
                .await
                .unwrap();
            assert!(openssl::verify(
                SignAlgorithm::EcdsaSha256,
                &public,
                message,
                &signature
            ));
        }
    };
    check_signs_as(&keyd, public_of_file.clone()).await;
    assert!(
        keyd.client().key_pair("device-id").await.is_err(),
        "nothing made of a gone file"
    );

    // Once: a new file at that name (or none) changes nothing.
    keyd.stop().await;
    drop(keyd);
    let (other_key, _) = openssl::new_p256_ca(work.path(), "edge-ca-2", "edge-ca-2");
    std::fs::copy(&other_key, &key_file).unwrap();
    let mut keyd = KeydFixture::configured(config.clone(), Admins::root_and_self()).await;
    check_signs_as(&keyd, public_of_file.clone()).await;
    keyd.stop().await;
    drop(keyd);
    std::fs::remove_file(&key_file).unwrap();
    let keyd = KeydFixture::configured(config, Admins::root_and_self()).await;
    check_signs_as(&keyd, public_of_file).await;

    // certd takes the certificate over: the file's, served as stored.
    let mut certd_config = CertdFixture::config_in(dir.path(), &keyd.socket());
    certd_config.imported_certs = imported_certs
        .iter()
        .map(|(id, file)| edgeid_certd::config::ImportedCert {
            id: id.clone(),
            file: file.clone(),
        })
        .collect();
    // One that is not a certificate is skipped, and certd starts.
    let junk = work.path().join("junk.cer");
    std::fs::write(&junk, "not a certificate").unwrap();
    certd_config
        .imported_certs
        .push(edgeid_certd::config::ImportedCert {
            id: "device-id".into(),
            file: junk,
        });
    let certd = CertdFixture::configured(certd_config.clone(), Admins::root_and_self()).await;
    let served = certd.client().get("aziot-edged-ca").await.unwrap();
    let file_pem = std::fs::read_to_string(&cert_file).unwrap();
    assert_eq!(der_of(&served.pem), der_of(&file_pem));
    assert!(
        certd.client().get("device-id").await.is_err(),
        "junk is not stored"
    );
    drop(certd);
    std::fs::write(
        &cert_file,
        std::fs::read(work.path().join("edge-ca-2.pem")).unwrap(),
    )
    .unwrap();
    let certd = CertdFixture::configured(certd_config, Admins::root_and_self()).await;
    let served = certd.client().get("aziot-edged-ca").await.unwrap();
    assert_eq!(der_of(&served.pem), der_of(&file_pem), "once: not replaced");
}
