//! The .deb and .rpm, built from this build's binaries by the same scripts
//! a release uses (`packaging/build-deb`, `packaging/build-rpm`):
//! - the .deb installs into a throwaway root (`dpkg --root`, maintainer
//!   scripts run chrootless), which gets the users, the private state
//!   directories and each daemon's config; removal keeps the state and the
//!   admin's config file; purge deletes them;
//! - the .rpm lists the same files, with the config marked `%config`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use edgeid_testkit::require_tool;

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging")
}

/// This build's binary directory: the package holds its edgeidctl.
fn bin_dir() -> PathBuf {
    let edgeidctl = edgeid_testkit::process::build_binary("edgeidctl");
    edgeidctl.parent().expect("a directory").to_owned()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const FILES: [&str; 13] = [
    "usr/bin/edgeid-keyd",
    "usr/bin/edgeid-certd",
    "usr/bin/edgeid-identityd",
    "usr/bin/edgeid-workloadd",
    "usr/bin/edgeidctl",
    "usr/lib/systemd/system/edgeid-keyd.socket",
    "usr/lib/systemd/system/aziot-keyd.socket",
    "usr/lib/systemd/system/aziot-identityd.service",
    "usr/lib/systemd/system/edgeid-workloadd.service",
    "usr/lib/sysusers.d/edgeid.conf",
    "usr/lib/tmpfiles.d/edgeid.conf",
    "etc/edgeid/config.toml",
    "usr/share/doc/edgeid/config.toml.template",
];

#[test]
fn the_deb_installs_removes_and_purges_in_a_throwaway_root() {
    require_tool("dpkg-deb", "dpkg");
    require_tool("systemd-sysusers", "systemd");
    let out = edgeid_testkit::temp_dir();
    let deb = run(Command::new(packaging().join("build-deb"))
        .arg("--bin-dir")
        .arg(bin_dir())
        .arg("--out")
        .arg(out.path()));
    let deb = PathBuf::from(deb.trim());

    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for f in FILES {
        assert!(
            listing.contains(&format!("./{f}")),
            "{f} not in the .deb:\n{listing}"
        );
    }
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("-rw-------") && l.ends_with("./etc/edgeid/config.toml")),
        "the admin's config is 0600:\n{listing}"
    );
    // One binary; each daemon is a link to it, and the reference's units are
    // aliases of edgeid's.
    for (link, target) in [
        ("usr/bin/edgeid-keyd", "edgeidctl"),
        ("usr/bin/edgeid-certd", "edgeidctl"),
        ("usr/bin/edgeid-identityd", "edgeidctl"),
        ("usr/bin/edgeid-workloadd", "edgeidctl"),
        (
            "usr/lib/systemd/system/aziot-keyd.service",
            "edgeid-keyd.service",
        ),
        (
            "usr/lib/systemd/system/aziot-keyd.socket",
            "edgeid-keyd.socket",
        ),
        (
            "usr/lib/systemd/system/aziot-tpmd.service",
            "edgeid-keyd.service",
        ),
        (
            "usr/lib/systemd/system/aziot-tpmd.socket",
            "edgeid-keyd.socket",
        ),
        (
            "usr/lib/systemd/system/aziot-certd.service",
            "edgeid-certd.service",
        ),
        (
            "usr/lib/systemd/system/aziot-certd.socket",
            "edgeid-certd.socket",
        ),
        (
            "usr/lib/systemd/system/aziot-identityd.service",
            "edgeid-identityd.service",
        ),
        (
            "usr/lib/systemd/system/aziot-identityd.socket",
            "edgeid-identityd.socket",
        ),
    ] {
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with('l') && l.ends_with(&format!("./{link} -> {target}"))),
            "{link} -> {target} not in the .deb:\n{listing}"
        );
    }
    // aziot-edge depends on aziot-identity-service (= 1.6.0-1) exactly.
    let field = |name: &str| run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name));
    assert_eq!(
        field("Provides").trim(),
        "aziot-identity-service (= 1.6.0-1)"
    );
    assert_eq!(field("Conflicts").trim(), "aziot-identity-service");
    assert_eq!(field("Replaces").trim(), "aziot-identity-service");
    let depends = run(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .arg("Depends"));
    assert!(
        depends.contains("libtss2-esys") && depends.contains("systemd"),
        "{depends}"
    );
    // The binary is linked with packed relative relocations, which need
    // glibc 2.36's loader: the package must say so, or an older system would
    // install a binary its loader refuses.
    require_tool("readelf", "binutils");
    let versions = run(Command::new("readelf")
        .arg("-V")
        .arg(bin_dir().join("edgeidctl")));
    assert!(versions.contains("GLIBC_ABI_DT_RELR"), "{versions}");
    assert!(depends.contains("libc6 (>= 2.36)"), "{depends}");
    let conffiles = run(Command::new("dpkg-deb")
        .arg("--info")
        .arg(&deb)
        .arg("conffiles"));
    assert_eq!(conffiles.trim(), "/etc/edgeid/config.toml");

    // A root with an empty dpkg database and empty user files.
    let root = edgeid_testkit::temp_dir();
    let r = root.path();
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "etc"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    for f in [
        "var/lib/dpkg/status",
        "etc/passwd",
        "etc/group",
        "etc/shadow",
        "etc/gshadow",
    ] {
        std::fs::write(r.join(f), "").unwrap();
    }
    let dpkg = |args: &[&str]| {
        let mut cmd = Command::new("dpkg");
        cmd.arg(format!("--root={}", r.display()))
            .args([
                "--force-script-chrootless",
                "--force-depends",
                "--log=/dev/null",
            ])
            .args(args);
        cmd
    };
    run(dpkg(&["-i"]).arg(&deb));
    let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
    let uid_of = |user: &str| -> u32 {
        passwd
            .lines()
            .find(|l| l.starts_with(&format!("{user}:")))
            .and_then(|l| l.split(':').nth(2))
            .and_then(|u| u.parse().ok())
            .unwrap_or_else(|| panic!("no {user}:\n{passwd}"))
    };
    for (daemon, user) in [
        ("keyd", "aziotks"),
        ("certd", "aziotcs"),
        ("identityd", "aziotid"),
        ("workloadd", "edgeid-wl"),
    ] {
        let config = r.join(format!("etc/edgeid/{daemon}.d/config.toml"));
        let meta =
            std::fs::metadata(&config).unwrap_or_else(|e| panic!("{}: {e}", config.display()));
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.uid(), uid_of(user), "{daemon}'s config is {user}'s");
    }
    let keyd_state = r.join("var/lib/edgeid/keyd");
    let meta = std::fs::metadata(&keyd_state).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    assert_eq!(meta.uid(), uid_of("aziotks"));

    // Removal keeps state and the admin's file; purge deletes them.
    std::fs::write(keyd_state.join("a-key"), "state").unwrap();
    run(&mut dpkg(&["-r", "edgeid"]));
    assert!(!r.join("usr/bin/edgeid-keyd").exists());
    assert!(
        keyd_state.join("a-key").exists(),
        "removal keeps the device's state"
    );
    assert!(
        r.join("etc/edgeid/config.toml").exists(),
        "and the admin's config"
    );
    run(&mut dpkg(&["--purge", "edgeid"]));
    assert!(!r.join("var/lib/edgeid").exists(), "purge deletes state");
    assert!(!r.join("etc/edgeid").exists(), "and configs");
}

#[test]
fn the_rpm_holds_the_same_files() {
    require_tool("rpmbuild", "rpm");
    let out = edgeid_testkit::temp_dir();
    let rpm = run(Command::new(packaging().join("build-rpm"))
        .arg("--bin-dir")
        .arg(bin_dir())
        .arg("--out")
        .arg(out.path()));
    let rpm = PathBuf::from(rpm.trim());
    let listing = run(Command::new("rpm").arg("-qlp").arg(&rpm));
    for f in FILES {
        assert!(
            listing.lines().any(|l| l == format!("/{f}")),
            "{f} not in the .rpm:\n{listing}"
        );
    }
    let config = run(Command::new("rpm").arg("-qpc").arg(&rpm));
    assert_eq!(config.trim(), "/etc/edgeid/config.toml");
    let verbose = run(Command::new("rpm").arg("-qlpv").arg(&rpm));
    assert!(
        verbose
            .lines()
            .any(|l| l.starts_with("-rw-------") && l.ends_with("/etc/edgeid/config.toml")),
        "{verbose}"
    );
    let provides = run(Command::new("rpm").args(["-qp", "--provides"]).arg(&rpm));
    assert!(
        provides
            .lines()
            .any(|l| l.trim() == "aziot-identity-service = 1.6.0-1"),
        "{provides}"
    );
    let scripts = run(Command::new("rpm").args(["-qp", "--scripts"]).arg(&rpm));
    assert!(
        scripts.contains("systemd-sysusers") && scripts.contains("edgeidctl config apply"),
        "{scripts}"
    );
}
