//! How certd issues and renews certificates, from the reference's configs
//! through `edgeidctl config apply`: `identity_auto_renew` (identityd's DPS
//! x509 attestation, the super-config's `identity_cert.auto_renew`, the EST
//! identity's) as certd's renewal policies, in each of the reference's forms
//! (`%`, `min`, `day`), what it refuses, and EST certificates at URLs of
//! their own as `est_url`.

use std::path::Path;

use toml::Table;

mod support;

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// certd's generated config, checked as certd loads it.
fn certd_config(root: &Path) -> Table {
    let file = root.join("etc/edgeid/certd.d/config.toml");
    edgeid_certd::CertdConfig::load(&file)
        .unwrap()
        .validate()
        .unwrap();
    std::fs::read_to_string(&file).unwrap().parse().unwrap()
}

const DPS_X509: &str = "hostname = \"gw\"\n\n[provisioning]\nsource = \"dps\"\n\
     global_endpoint = \"https://global.azure-devices-provisioning.net/\"\nscope_id = \"0ne1\"\n\n\
     [provisioning.attestation]\nmethod = \"x509\"\nregistration_id = \"reg-1\"\n\
     identity_cert = \"device-id\"\nidentity_pk = \"device-id\"\n";

const CERTD_ISSUES_IT: &str =
    "[cert_issuance.device-id]\nmethod = \"local_ca\"\nexpiry_days = 30\n";

#[test]
fn identityds_identity_auto_renew_becomes_certds_policy_for_the_identity_certificate() {
    let cases: &[(&str, &[(&str, toml::Value)])] = &[
        (
            "rotate_key = true\nthreshold = \"80%\"\nretry = \"4%\"\n",
            &[
                ("rekey", true.into()),
                ("threshold_percent", 80.into()),
                ("retry_percent", 4.into()),
            ],
        ),
        (
            "rotate_key = false\nthreshold = \"2day\"\nretry = \"90min\"\n",
            &[
                ("rekey", false.into()),
                ("before_expiry_secs", (2 * 86_400).into()),
                ("retry_secs", (90 * 60).into()),
            ],
        ),
    ];
    for (table, wanted) in cases {
        let root = support::aziot_root();
        let r = root.path();
        write(
            r,
            "etc/aziot/identityd/config.toml",
            &format!("{DPS_X509}\n[provisioning.attestation.identity_auto_renew]\n{table}"),
        );
        write(r, "etc/aziot/certd/config.toml", CERTD_ISSUES_IT);
        let (ok, out) = support::config_apply(r, &[]);
        assert!(ok, "{table}: {out}");
        let certd = certd_config(r);
        let policy = certd["issuance"]["device-id"]["renewal"]
            .as_table()
            .unwrap();
        for (key, value) in *wanted {
            assert_eq!(policy.get(*key), Some(value), "{table}: {key} in {policy}");
        }
        // certd alone (`systemctl restart aziot-certd`) reads identityd's file too.
        std::fs::remove_file(r.join("etc/edgeid/certd.d/config.toml")).unwrap();
        let (ok, out) = support::config_apply(r, &["--only", "certd"]);
        assert!(ok, "{table}: {out}");
        assert_eq!(
            certd_config(r)["issuance"]["device-id"]["renewal"].as_table(),
            Some(policy)
        );
    }
}

#[test]
fn the_super_configs_identity_cert_auto_renew_reaches_certd() {
    let root = support::aziot_root();
    let r = root.path();
    write(
        r,
        "etc/aziot/config.toml",
        "hostname = \"gw\"\n\n[provisioning]\nsource = \"dps\"\n\
         global_endpoint = \"https://global.azure-devices-provisioning.net/\"\nid_scope = \"0ne1\"\n\n\
         [provisioning.attestation]\nmethod = \"x509\"\nregistration_id = \"reg-1\"\n\n\
         [provisioning.attestation.identity_cert]\nmethod = \"local_ca\"\nexpiry_days = 7\n\n\
         [provisioning.attestation.identity_cert.auto_renew]\nrotate_key = true\nthreshold = \"1day\"\nretry = \"10%\"\n\n\
         [cert_issuance.local_ca]\ncert = \"file:///var/secrets/local-ca.pem\"\n\
         pk = \"file:///var/secrets/local-ca.key.pem\"\n",
    );
    let (ok, out) = support::config_apply(r, &[]);
    assert!(ok, "{out}");
    let certd = certd_config(r);
    let device = certd["issuance"]["device-id"].as_table().unwrap();
    assert_eq!(device["method"].as_str(), Some("local-ca"));
    assert!(device.get("auto_renew").is_none(), "{device}");
    let policy = device["renewal"].as_table().unwrap();
    assert_eq!(policy["rekey"].as_bool(), Some(true));
    assert_eq!(policy["before_expiry_secs"].as_integer(), Some(86_400));
    assert_eq!(policy["retry_percent"].as_integer(), Some(10));
}

#[test]
fn auto_renew_values_the_reference_refuses_or_edgeid_cannot_follow_are_refused_with_file_and_line()
{
    let renew = |table: &str| {
        format!("{DPS_X509}\n[provisioning.attestation.identity_auto_renew]\n{table}")
    };
    let cases: Vec<(String, &str, &[&str])> = vec![
        (
            renew("rotate_key = true\nthreshold = \"100%\"\nretry = \"4%\"\n"),
            CERTD_ISSUES_IT,
            &[
                "identityd/config.toml, line 16",
                "identity_auto_renew.threshold",
                "less than 100%",
            ],
        ),
        (
            renew("rotate_key = true\nthreshold = \"80%\"\nretry = \"1year\"\n"),
            CERTD_ISSUES_IT,
            &["line 17", "identity_auto_renew.retry", "unit 'year'"],
        ),
        (
            renew("rotate_key = true\nthreshold = \"0min\"\nretry = \"4%\"\n"),
            CERTD_ISSUES_IT,
            &["identity_auto_renew.threshold", "positive"],
        ),
        (
            renew("rotate_key = true\nthreshold = \"80%\"\nretry = \"99999999day\"\n"),
            CERTD_ISSUES_IT,
            &["identity_auto_renew.retry", "longer than 100 years"],
        ),
        (
            renew("rotate_key = true\nthreshold = \"%\"\nretry = \"4%\"\n"),
            CERTD_ISSUES_IT,
            &["identity_auto_renew.threshold", "not a number and a unit"],
        ),
        (
            renew("threshold = \"80%\"\nretry = \"4%\"\n"),
            CERTD_ISSUES_IT,
            &["identity_auto_renew.rotate_key", "is required"],
        ),
        (
            renew("rotate_key = true\nthreshold = \"80%\"\nretry = \"4%\"\nevery = 1\n"),
            CERTD_ISSUES_IT,
            &["line 18", "every"],
        ),
        (
            renew("rotate_key = true\nthreshold = \"80%\"\nretry = \"4%\"\n"),
            "",
            &[
                "identity_auto_renew",
                "certificate 'device-id', which certd does not issue",
            ],
        ),
    ];
    for (identityd, certd, wanted) in cases {
        let root = support::aziot_root();
        let r = root.path();
        write(r, "etc/aziot/identityd/config.toml", &identityd);
        write(r, "etc/aziot/certd/config.toml", certd);
        let (ok, out) = support::config_apply(r, &[]);
        assert!(!ok, "{identityd}: accepted: {out}");
        for w in wanted {
            assert!(out.contains(w), "{identityd}: wanted {w:?} in: {out}");
        }
    }
    // A manual device's issued certificate: the reference does not renew it.
    let root = support::aziot_root();
    let r = root.path();
    write(
        r,
        "etc/aziot/config.toml",
        "[provisioning]\nsource = \"manual\"\niothub_hostname = \"h\"\ndevice_id = \"d\"\n\
         [provisioning.authentication]\nmethod = \"x509\"\n\
         identity_cert = { method = \"local_ca\", auto_renew = { rotate_key = true, threshold = \"80%\", retry = \"4%\" } }\n",
    );
    let (ok, out) = support::config_apply(r, &[]);
    assert!(!ok, "accepted: {out}");
    assert!(
        out.contains("identity_cert.auto_renew") && out.contains("[certificates.renewal]"),
        "{out}"
    );
}

#[test]
fn the_est_identitys_auto_renew_becomes_certds_est_identity_renewal() {
    let root = support::aziot_root();
    let r = root.path();
    write(
        r,
        "etc/aziot/certd/config.toml",
        "[cert_issuance.est]\nusername = \"u\"\npassword = \"s3cret\"\n\
         identity_cert = \"est-id\"\nidentity_pk = \"est-id\"\n\
         [cert_issuance.est.urls]\ndefault = \"https://a.example/.well-known/est\"\n\
         [cert_issuance.est.identity_auto_renew]\nrotate_key = true\nthreshold = \"50%\"\nretry = \"30min\"\n\
         [cert_issuance.device-id]\nmethod = \"est\"\n",
    );
    let (ok, out) = support::config_apply(r, &[]);
    assert!(ok, "{out}");
    let certd = certd_config(r);
    let policy = certd["est"]["identity_renewal"].as_table().unwrap();
    assert_eq!(policy["rekey"].as_bool(), Some(true));
    assert_eq!(policy["threshold_percent"].as_integer(), Some(50));
    assert_eq!(policy["retry_secs"].as_integer(), Some(1800));
}

/// EST certificates at URLs of their own (one server's labels) become
/// `est_url`; `urls.default` stays `[est] url`.
#[test]
fn an_est_certificates_own_url_becomes_its_est_url() {
    let root = support::aziot_root();
    let r = root.path();
    write(
        r,
        "etc/aziot/certd/config.toml",
        "[cert_issuance.est]\nusername = \"u\"\npassword = \"s3cret\"\n\
         [cert_issuance.est.urls]\ndefault = \"https://est.example/.well-known/est\"\n\
         aziot-edged-ca = \"https://est.example/.well-known/est/edgeca\"\n\
         [cert_issuance.device-id]\nmethod = \"est\"\n\
         [cert_issuance.aziot-edged-ca]\nmethod = \"est\"\n\
         [cert_issuance.other]\nmethod = \"est\"\nurl = \"https://est.example/.well-known/est/other\"\n",
    );
    let (ok, out) = support::config_apply(r, &[]);
    assert!(ok, "{out}");
    let certd = certd_config(r);
    assert_eq!(
        certd["est"]["url"].as_str(),
        Some("https://est.example/.well-known/est")
    );
    let issuance = certd["issuance"].as_table().unwrap();
    assert!(issuance["device-id"].get("est_url").is_none(), "{issuance}");
    assert_eq!(
        issuance["aziot-edged-ca"]["est_url"].as_str(),
        Some("https://est.example/.well-known/est/edgeca")
    );
    assert_eq!(
        issuance["other"]["est_url"].as_str(),
        Some("https://est.example/.well-known/est/other")
    );
}

/// The super-config's identity certificate with EST credentials of its own
/// (aziotctl's `manual-x509-est-custom` shape): its identity files are
/// preloaded as `est-id-device-id`, as aziotctl writes them, and certd
/// enrolls with them; its basic-auth password goes to certd's file.
#[test]
fn the_super_configs_identity_cert_with_its_own_est_credentials_reaches_certd() {
    let root = support::aziot_root();
    let r = root.path();
    write(
        r,
        "etc/aziot/config.toml",
        "[provisioning]\nsource = \"manual\"\niothub_hostname = \"h.azure-devices.net\"\ndevice_id = \"d1\"\n\n\
         [provisioning.authentication]\nmethod = \"x509\"\n\n\
         [provisioning.authentication.identity_cert]\nmethod = \"est\"\ncommon_name = \"d1\"\n\
         url = \"https://est.example/.well-known/est\"\nusername = \"user\"\npassword = \"s3cret\"\n\
         identity_cert = \"file:///var/secrets/est-id.pem\"\nidentity_pk = \"file:///var/secrets/est-id.key.pem\"\n",
    );
    let (ok, out) = support::config_apply(r, &[]);
    assert!(ok, "{out}");
    assert!(!out.contains("s3cret"), "{out}");
    let certd = certd_config(r);
    let est = certd["est"].as_table().unwrap();
    assert_eq!(
        est["url"].as_str(),
        Some("https://est.example/.well-known/est")
    );
    assert_eq!(est["username"].as_str(), Some("user"));
    assert_eq!(est["identity_cert"].as_str(), Some("est-id-device-id"));
    assert_eq!(est["identity_key"].as_str(), Some("est-id-device-id"));
    assert_eq!(
        certd["preloaded"]["est-id-device-id"]["file"].as_str(),
        Some("/var/secrets/est-id.pem")
    );
    let keyd: Table = std::fs::read_to_string(r.join("etc/edgeid/keyd.d/config.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let preloaded = keyd["preloaded_key"].as_array().unwrap();
    assert!(
        preloaded
            .iter()
            .any(|k| k["id"].as_str() == Some("est-id-device-id")
                && k["file"].as_str() == Some("/var/secrets/est-id.key.pem")),
        "{preloaded:?}"
    );
    let password =
        std::fs::read_to_string(r.join("etc/edgeid/certd.d/aziot-est.password")).unwrap();
    assert_eq!(password, "s3cret");
}

/// The super-config's EST credentials go in `[cert_issuance.est.auth]`;
/// the reference ignores them beside it, so they are refused there (as
/// certd's own file, which holds them flat, still takes them).
#[test]
fn super_config_est_credentials_outside_auth_are_refused() {
    let root = support::aziot_root();
    let r = root.path();
    write(
        r,
        "etc/aziot/config.toml",
        "[cert_issuance.est]\ntrusted_certs = [\"file:///var/secrets/est-ca.pem\"]\nusername = \"u\"\n",
    );
    let (ok, out) = support::config_apply(r, &[]);
    assert!(!ok, "accepted: {out}");
    assert!(
        out.contains("etc/aziot/config.toml, line 3") && out.contains("cert_issuance.est.username"),
        "{out}"
    );
}

/// certd signs EST enrollments with the EST identity's key (renewed as
/// `est-id.r<N>`) and the bootstrap key, and issues with a local CA's key
/// in files: keyd's config grants certd each, also when `config apply`
/// runs for keyd alone (as `systemctl restart aziot-keyd` runs it).
#[test]
fn certd_is_granted_the_keys_its_est_identities_and_local_ca_use() {
    let root = support::aziot_root();
    let r = root.path();
    write(
        r,
        "etc/aziot/config.toml",
        "[provisioning]\nsource = \"manual\"\niothub_hostname = \"h.azure-devices.net\"\ndevice_id = \"d1\"\n\n\
         [provisioning.authentication]\nmethod = \"x509\"\nidentity_cert = { method = \"est\", common_name = \"d1\" }\n\n\
         [cert_issuance.est]\ntrusted_certs = [\"file:///var/secrets/est-ca.pem\"]\n\n\
         [cert_issuance.est.auth]\nbootstrap_identity_cert = \"file:///var/secrets/b.pem\"\n\
         bootstrap_identity_pk = \"file:///var/secrets/b.key.pem\"\n\n\
         [cert_issuance.est.urls]\ndefault = \"https://est.example/.well-known/est\"\n\n\
         [cert_issuance.local_ca]\ncert = \"file:///var/secrets/ca.pem\"\npk = \"file:///var/secrets/ca.key.pem\"\n",
    );
    for only in [&[][..], &["--only", "keyd"][..]] {
        let (ok, out) = support::config_apply(r, only);
        assert!(ok, "{only:?}: {out}");
        let keyd: Table = std::fs::read_to_string(r.join("etc/edgeid/keyd.d/config.toml"))
            .unwrap()
            .parse()
            .unwrap();
        let certd = keyd["principal"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some("certd"))
            .unwrap();
        let keys: Vec<&str> = certd["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|k| k.as_str())
            .collect();
        for wanted in ["est-id", "est-id.r*", "est-bootstrap-id", "local-ca"] {
            assert!(keys.contains(&wanted), "{only:?}: {wanted} not in {keys:?}");
        }
        std::fs::remove_file(r.join("etc/edgeid/keyd.d/config.toml")).unwrap();
    }
}
