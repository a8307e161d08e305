//! `edgeidctl config apply` into a throwaway root: the shipped template
//! applies; each daemon's config is 0600 and its user's, and its own config
//! type accepts it; a second run changes nothing; a broken file is reported
//! with its line and key and changes nothing on disk.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const USERS: &str = "root:x:0:0::/root:/bin/sh\n\
aziotks:x:994:994::/:/usr/sbin/nologin\n\
aziotcs:x:993:993::/:/usr/sbin/nologin\n\
aziotid:x:992:992::/:/usr/sbin/nologin\n\
edgeid-wl:x:991:991::/:/usr/sbin/nologin\n";

fn template() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config.toml.template")
}

fn root() -> tempfile::TempDir {
    let root = tempfile::Builder::new()
        .prefix("edgeid-root-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::create_dir(root.path().join("etc")).unwrap();
    std::fs::write(root.path().join("etc/passwd"), USERS).unwrap();
    root
}

fn apply(config: &Path, root: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edgeidctl"))
        .args(["config", "apply", "--no-restart", "-c"])
        .arg(config)
        .arg("--root")
        .arg(root)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_template_applies_and_a_second_run_changes_nothing() {
    let root = root();
    let (ok, out, err) = apply(&template(), root.path());
    assert!(ok, "{out}{err}");
    for (daemon, uid) in [
        ("keyd", 994),
        ("certd", 993),
        ("identityd", 992),
        ("workloadd", 991),
    ] {
        let file = root
            .path()
            .join(format!("etc/edgeid/{daemon}.d/config.toml"));
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{daemon}");
        if edgeid_common::current_uid() == 0 {
            assert_eq!(meta.uid(), uid, "{daemon}'s config is its user's");
        }
        let dir = std::fs::metadata(file.parent().unwrap()).unwrap();
        assert_eq!(dir.permissions().mode() & 0o777, 0o700);
        assert!(out.contains(&format!("{daemon:<10} written")), "{out}");
    }
    // Each daemon reads its config with its own loader.
    let etc = root.path().join("etc/edgeid");
    let keyd = edgeid_keyd::KeydConfig::load(&etc.join("keyd.d/config.toml")).unwrap();
    assert!(keyd
        .principals
        .iter()
        .any(|p| p.name == "certd" && p.uid == 993));
    edgeid_certd::CertdConfig::load(&etc.join("certd.d/config.toml"))
        .unwrap()
        .validate()
        .unwrap();
    let identityd =
        edgeid_identityd::IdentitydConfig::load(&etc.join("identityd.d/config.toml")).unwrap();
    identityd.validate().unwrap();
    assert!(identityd
        .principals
        .iter()
        .any(|p| p.name == "workloadd" && p.uid == 991));
    edgeid_workloadapi::WorkloadConfig::load(&etc.join("workloadd.d/config.toml"))
        .unwrap()
        .validate()
        .unwrap();

    let (ok, out, _) = apply(&template(), root.path());
    assert!(ok);
    assert_eq!(out.matches("unchanged").count(), 4, "{out}");
}

#[test]
fn callers_and_sections_reach_the_right_daemons() {
    let root = root();
    let config = root.path().join("config.toml");
    std::fs::write(
        &config,
        "[keys]\nbackend = \"software\"\n[[keys.override]]\nkeys = [\"device-id\"]\nbackend = \"software\"\n\
         [certificates.renewal]\nthreshold_percent = 70\n\
         [provisioning]\nsource = \"local\"\ndevice_id = \"d1\"\n\
         [workload.certificates]\nidentity_max_days = 7\n\
         [workload.spiffe]\ntrust_domain = \"example.org\"\nsvid_lifetime_secs = 600\n\
         [[orchestrator]]\nname = \"edgeagent\"\nuid = 990\n\
         [[module]]\nname = \"tempsensor\"\nuid = 1001\n",
    )
    .unwrap();
    let (ok, out, err) = apply(&config, root.path());
    assert!(ok, "{out}{err}");
    let etc = root.path().join("etc/edgeid");
    let certd = edgeid_certd::CertdConfig::load(&etc.join("certd.d/config.toml")).unwrap();
    assert_eq!(certd.renewal.threshold_percent, 70);
    let identityd =
        edgeid_identityd::IdentitydConfig::load(&etc.join("identityd.d/config.toml")).unwrap();
    assert!(identityd
        .principals
        .iter()
        .any(|p| p.name == "edgeagent" && p.uid == 990));
    assert!(identityd
        .principals
        .iter()
        .any(|p| p.module() == "tempsensor" && p.uid == 1001));
    let workload =
        edgeid_workloadapi::WorkloadConfig::load(&etc.join("workloadd.d/config.toml")).unwrap();
    assert_eq!(workload.orchestrator_uids, vec![990]);
    assert_eq!(workload.modules[0].name, "tempsensor");
    assert_eq!(workload.certificates.identity_max_days, 7);
    let spiffe = workload
        .spiffe
        .expect("[workload.spiffe] reaches workloadd");
    assert_eq!(spiffe.trust_domain, "example.org");
    assert_eq!(spiffe.svid_lifetime_secs, 600);
    assert_eq!(
        spiffe.socket,
        std::path::Path::new(edgeid_workloadapi::config::DEFAULT_SPIFFE_SOCKET)
    );
    let keyd = edgeid_keyd::KeydConfig::load(&etc.join("keyd.d/config.toml")).unwrap();
    let workloadd_keys = keyd
        .principals
        .iter()
        .find(|p| p.name == "workloadd")
        .unwrap();
    assert!(
        workloadd_keys.keys.allows("spiffe-jwt/1764000000"),
        "workloadd may make its JWT signing keys"
    );
}

/// What issue 17 put in the configs `config apply` writes: the bases of
/// derivation (a DPS group key among them), identityd's export grant and no
/// one else's, and each module's server names reaching workloadd.
#[test]
fn derivation_bases_exports_and_server_names_reach_their_daemons() {
    let root = root();
    let config = root.path().join("config.toml");
    std::fs::write(
        &config,
        "[provisioning]\nsource = \"dps\"\nid_scope = \"0ne00000001\"\n\
         [provisioning.attestation]\nmethod = \"symmetric_key\"\nregistration_id = \"d1\"\n\
         key_file = \"/etc/edgeid/group.key\"\ngroup = true\n\
         [workload.certificates]\ngateway_hostname = \"gw.example.com\"\n\
         [workload.certificates.server_names]\n\"tempsensor\" = [\"tempsensor.local\"]\n\
         [keys]\nmaster_key = \"tpm\"\nseal_pcrs = { sha256 = [0, 7] }\n\
         [keys.tpm]\ntcti = \"device:/dev/tpmrm0\"\n",
    )
    .unwrap();
    let (ok, out, err) = apply(&config, root.path());
    assert!(ok, "{out}{err}");
    let etc = root.path().join("etc/edgeid");
    let keyd = edgeid_keyd::KeydConfig::load(&etc.join("keyd.d/config.toml")).unwrap();
    // The master key sealed to the TPM, as [keys] says.
    assert_eq!(
        keyd.software.master_key,
        edgeid_keyd::config::MasterKey::Tpm
    );
    assert_eq!(keyd.software.seal_pcrs["sha256"], vec![0, 7]);
    for base in ["module-derivation", "workload-encryption", "dps-enrollment"] {
        assert!(keyd.derive_only.allows(base), "{base}");
    }
    assert!(!keyd.derive_only.allows("device-id"));
    for p in &keyd.principals {
        // DPS TPM attestation (identityd) and quotes for modules (workloadd)
        // need the TPM's grants; certd needs neither.
        assert_eq!(
            p.keys.allows("tpm/attestation-keys"),
            p.name != "certd",
            "{}",
            p.name
        );
        assert_eq!(
            p.keys.allows("tpm/quote"),
            p.name == "workloadd",
            "{}",
            p.name
        );
    }
    for p in &keyd.principals {
        assert_eq!(
            p.export.allows("module-derivation"),
            p.name == "identityd",
            "{}",
            p.name
        );
    }
    let workload =
        edgeid_workloadapi::WorkloadConfig::load(&etc.join("workloadd.d/config.toml")).unwrap();
    assert_eq!(
        workload.certificates.gateway_hostname.as_deref(),
        Some("gw.example.com")
    );
    assert_eq!(
        workload.certificates.server_names["tempsensor"],
        vec!["tempsensor.local".to_owned()]
    );
    // A grant of the wrong shape is refused before anything is written.
    std::fs::write(
        &config,
        "[provisioning]\nsource = \"local\"\ndevice_id = \"d1\"\n\
         [workload.certificates.server_names]\n\"tempsensor\" = [\"*.local\"]\n",
    )
    .unwrap();
    let (ok, out, err) = apply(&config, root.path());
    assert!(!ok, "{out}");
    assert!(
        err.contains("server_names") && err.contains("*.local"),
        "{err}"
    );
}

#[test]
fn a_broken_file_is_named_and_changes_nothing() {
    let root = root();
    let (ok, _, _) = apply(&template(), root.path());
    assert!(ok);
    let keyd_file = root.path().join("etc/edgeid/keyd.d/config.toml");
    let before = std::fs::read_to_string(&keyd_file).unwrap();
    let config = root.path().join("config.toml");
    for (text, wanted) in [
        ("[keys]\nbakend = \"tpm\"\n[provisioning]\nsource = \"local\"\ndevice_id = \"d\"\n", "line 2"),
        ("[keys]\nbackend = \"tmp\"\n[provisioning]\nsource = \"local\"\ndevice_id = \"d\"\n", "keys.backend"),
        ("[provisioning]\nsource = \"manual\"\nconnection_string = \"HostName=h\"\n", "DeviceId"),
        ("[certificates.renewal]\nthreshold_percent = 100\n[provisioning]\nsource = \"local\"\ndevice_id = \"d\"\n", "threshold_percent"),
        ("[provisioning]\nsource = \"local\"\n", "device_id"),
    ] {
        std::fs::write(&config, text).unwrap();
        let (ok, out, err) = apply(&config, root.path());
        assert!(!ok, "{text}: {out}");
        assert!(err.contains(wanted), "{text}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(std::fs::read_to_string(&keyd_file).unwrap(), before, "nothing changed on disk");
    }
    // Missing daemon users: named, nothing written.
    let bare = tempfile::Builder::new()
        .prefix("edgeid-bare-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::create_dir(bare.path().join("etc")).unwrap();
    std::fs::write(
        bare.path().join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\n",
    )
    .unwrap();
    let (ok, _, err) = apply(&template(), bare.path());
    assert!(
        !ok && err.contains("aziotks") && err.contains("sysusers"),
        "{err}"
    );
    assert!(!bare.path().join("etc/edgeid").exists());
}

#[test]
fn check_reports_each_problem_with_a_hint_and_fails() {
    let root = root();
    let (ok, _, _) = apply(&template(), root.path());
    assert!(ok);
    // A config file someone loosened.
    let certd = root.path().join("etc/edgeid/certd.d/config.toml");
    std::fs::set_permissions(&certd, std::fs::Permissions::from_mode(0o644)).unwrap();
    // A grant someone widened by hand (review finding 9: `module/*` was
    // once read as a subtree, `app-a*` matched `app-admin`).
    let keyd = root.path().join("etc/edgeid/keyd.d/config.toml");
    let widened = std::fs::read_to_string(&keyd)
        .unwrap()
        .replace("\"module/*\"", "\"module**\"")
        .replace("\"spiffe-jwt/*\"", "\"**\"");
    std::fs::write(&keyd, widened).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_edgeidctl"))
        .args(["check", "--output", "json", "-c"])
        .arg(template())
        .arg("--root")
        .arg(root.path())
        .arg("--run-dir")
        .arg(root.path().join("run"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "daemons down is a failure");
    let findings: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let find = |check: &str| -> serde_json::Value {
        findings
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["check"] == check)
            .cloned()
            .unwrap_or_else(|| panic!("no check '{check}': {findings}"))
    };
    assert_eq!(find("config")["status"], "pass");
    assert_eq!(find("keyd config file")["status"], "pass");
    let loose = find("certd config file");
    assert_eq!(loose["status"], "fail");
    assert!(loose["detail"].as_str().unwrap().contains("644"), "{loose}");
    assert!(
        loose["hint"].as_str().unwrap().contains("config apply"),
        "{loose}"
    );
    let down = find("keyd answers");
    assert_eq!(down["status"], "fail");
    assert!(
        down["hint"]
            .as_str()
            .unwrap()
            .contains("edgeid-keyd.socket"),
        "{down}"
    );
    assert_eq!(find("clock")["status"], "pass");
    // What config apply wrote for certd grants nothing too broad; the
    // widened keyd grants are named.
    assert_eq!(
        find("certd grants")["status"],
        "pass",
        "{}",
        find("certd grants")
    );
    let wide = find("keyd grants");
    assert_eq!(wide["status"], "warn");
    let detail = wide["detail"].as_str().unwrap();
    assert!(
        detail.contains("'module**' has a `**` inside a segment")
            && detail.contains("workloadd: keys '**' matches everything"),
        "{wide}"
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}
