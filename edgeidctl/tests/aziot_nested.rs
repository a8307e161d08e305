//! Nested IoT Edge in the reference's configs: identityd's `[provisioning]
//! local_gateway_hostname` and the super-config's `parent_hostname` (or
//! `local_gateway_hostname`) become identityd's `gateway`; with DPS they
//! are refused, as the reference refuses them.

use std::path::Path;

use toml::Table;

mod support;

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// identityd's generated config, checked as identityd reads it.
fn identityd_config(root: &Path) -> Table {
    let text = std::fs::read_to_string(root.join("etc/edgeid/identityd.d/config.toml")).unwrap();
    let config: edgeid_identityd::IdentitydConfig = toml::from_str(&text).unwrap();
    config.validate().unwrap();
    text.parse().unwrap()
}

#[test]
fn the_parent_device_becomes_identityds_gateway() {
    let root = support::aziot_root();
    let r = root.path();
    // As aziotctl writes identityd's file (its test-files/apply/local-gateway).
    write(
        r,
        "etc/aziot/identityd/config.toml",
        "hostname = \"child\"\nhomedir = \"/var/lib/aziot/identityd\"\n\n\
         [provisioning]\nlocal_gateway_hostname = \"my-gateway-device\"\nsource = \"manual\"\n\
         iothub_hostname = \"contoso.azure-devices.net\"\ndevice_id = \"child-1\"\n\n\
         [provisioning.authentication]\nmethod = \"sas\"\ndevice_id_pk = \"device-id\"\n",
    );
    let (ok, out) = support::config_apply(r, &[]);
    assert!(ok, "{out}");
    let provisioning = identityd_config(r)["provisioning"]
        .as_table()
        .unwrap()
        .clone();
    assert_eq!(
        provisioning["hub"].as_str(),
        Some("contoso.azure-devices.net")
    );
    assert_eq!(provisioning["gateway"].as_str(), Some("my-gateway-device"));

    // The super-config, under either name.
    for key in ["parent_hostname", "local_gateway_hostname"] {
        let root = support::aziot_root();
        let r = root.path();
        write(
            r,
            "etc/aziot/config.toml",
            &format!(
                "hostname = \"child\"\n{key} = \"parent.local\"\n\n[provisioning]\nsource = \"manual\"\n\
                 connection_string = \"HostName=contoso.azure-devices.net;DeviceId=child-1;SharedAccessKey=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"\n"
            ),
        );
        let (ok, out) = support::config_apply(r, &[]);
        assert!(ok, "{key}: {out}");
        let provisioning = identityd_config(r)["provisioning"]
            .as_table()
            .unwrap()
            .clone();
        assert_eq!(
            provisioning["gateway"].as_str(),
            Some("parent.local"),
            "{key}"
        );
    }
}

#[test]
fn a_parent_with_dps_or_named_twice_is_refused_with_file_and_line() {
    let dps = "[provisioning]\nsource = \"dps\"\nglobal_endpoint = \"https://global.azure-devices-provisioning.net/\"\n\
               id_scope = \"0ne1\"\n[provisioning.attestation]\nmethod = \"symmetric_key\"\n\
               registration_id = \"r\"\nsymmetric_key = { value = \"AAAA\" }\n";
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "etc/aziot/identityd/config.toml",
            "[provisioning]\nsource = \"dps\"\nlocal_gateway_hostname = \"p\"\n\
             global_endpoint = \"https://global.azure-devices-provisioning.net/\"\nscope_id = \"0ne1\"\n\
             [provisioning.attestation]\nmethod = \"symmetric_key\"\nregistration_id = \"r\"\nsymmetric_key = \"device-id\"\n"
                .into(),
            &["identityd/config.toml, line 3", "local_gateway_hostname", "not supported in nested mode"],
        ),
        (
            "etc/aziot/config.toml",
            format!("parent_hostname = \"p\"\n{dps}"),
            &["etc/aziot/config.toml, line 1", "parent_hostname", "not supported in nested mode"],
        ),
        (
            "etc/aziot/config.toml",
            "parent_hostname = \"p\"\nlocal_gateway_hostname = \"q\"\n[provisioning]\nsource = \"manual\"\n\
                 connection_string = \"HostName=h;DeviceId=d;SharedAccessKey=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"\n"
                .into(),
            &["line 2", "local_gateway_hostname", "give one of them"],
        ),
        (
            "etc/aziot/identityd/config.toml",
            "[provisioning]\nsource = \"manual\"\nlocal_gateway_hostname = \"bad host/\"\n\
             iothub_hostname = \"h.azure-devices.net\"\ndevice_id = \"d\"\n\
             [provisioning.authentication]\nmethod = \"sas\"\ndevice_id_pk = \"device-id\"\n"
                .into(),
            &["provisioning.gateway"],
        ),
    ];
    for (file, text, wanted) in cases {
        let root = support::aziot_root();
        let r = root.path();
        write(r, file, &text);
        let (ok, out) = support::config_apply(r, &[]);
        assert!(!ok, "{file}: {text:?} was accepted: {out}");
        for w in wanted {
            assert!(out.contains(w), "{file}: wanted {w:?} in: {out}");
        }
    }
}
