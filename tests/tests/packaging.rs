//! What `packaging/` ships, checked with systemd's own tools: the units
//! verify clean, sysusers.d and tmpfiles.d make the users, groups and 0700
//! state directories in a throwaway root, and every daemon serves a socket
//! handed to it by socket activation (`systemd-socket-activate`, the
//! LISTEN_FDS protocol), then drains and exits 0 on SIGTERM.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edgeid_common::client::UdsClient;
use edgeid_common::server::Health;
use edgeid_testkit::require_tool;

const DAEMONS: [&str; 4] = ["keyd", "certd", "identityd", "workloadd"];

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging")
}

/// A daemon binary of this build.
fn binary(daemon: &str) -> PathBuf {
    edgeid_testkit::process::build_binary(&format!("edgeid-{daemon}"))
}

#[test]
fn units_verify_clean() {
    require_tool("systemd-analyze", "systemd");
    let dir = edgeid_testkit::temp_dir();
    let mut units = Vec::new();
    for daemon in DAEMONS {
        for kind in ["service", "socket"] {
            let name = format!("edgeid-{daemon}.{kind}");
            let text = std::fs::read_to_string(packaging().join("systemd").join(&name)).unwrap();
            // verify checks that ExecStart exists: point it at this build's binary.
            let text = text
                .replace(
                    &format!("ExecStart=/usr/bin/edgeid-{daemon} "),
                    &format!("ExecStart={} ", binary(daemon).display()),
                )
                .replace(
                    "ExecStartPre=+/usr/bin/edgeidctl ",
                    &format!(
                        "ExecStartPre=+{} ",
                        edgeid_testkit::process::build_binary("edgeidctl").display()
                    ),
                );
            if kind == "service" && daemon != "workloadd" {
                // Each start reads the reference's config anew (and its
                // own daemons' configs), as root, before the daemon runs.
                assert!(
                    text.contains(&format!("config apply --only {daemon}\n")),
                    "{name} applies its config before it starts"
                );
            }
            if kind == "service" {
                assert!(text.contains("NoNewPrivileges=yes"), "{name} is hardened");
                assert!(text.contains("ProtectSystem=strict"), "{name} is hardened");
                assert_eq!(
                    text.contains("DeviceAllow=/dev/tpmrm0"),
                    daemon == "keyd",
                    "{name}: only keyd reaches the TPM"
                );
            }
            let path = dir.path().join(&name);
            std::fs::write(&path, text).unwrap();
            units.push(path);
        }
    }
    // The SPIFFE socket: opt-in, handing its descriptor to workloadd by name.
    let name = "edgeid-workloadd-spiffe.socket";
    let text = std::fs::read_to_string(packaging().join("systemd").join(name)).unwrap();
    assert!(
        text.contains("FileDescriptorName=spiffe")
            && text.contains("Service=edgeid-workloadd.service")
    );
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    units.push(path);
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
}

#[test]
fn sysusers_and_tmpfiles_make_users_and_private_state_dirs() {
    require_tool("systemd-sysusers", "systemd");
    require_tool("systemd-tmpfiles", "systemd");
    let root = edgeid_testkit::temp_dir();
    std::fs::create_dir(root.path().join("etc")).unwrap();
    for f in ["passwd", "group", "shadow", "gshadow"] {
        std::fs::write(root.path().join("etc").join(f), "").unwrap();
    }
    let status = Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(packaging().join("sysusers.d/edgeid.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    let uid_of = |user: &str| -> u32 {
        passwd
            .lines()
            .find(|l| l.starts_with(&format!("{user}:")))
            .and_then(|l| l.split(':').nth(2))
            .and_then(|u| u.parse().ok())
            .unwrap_or_else(|| panic!("no user {user}:\n{passwd}"))
    };
    for user in ["aziotks", "aziotcs", "aziotid", "aziottpm", "edgeid-wl"] {
        let line = passwd
            .lines()
            .find(|l| l.starts_with(&format!("{user}:")))
            .unwrap();
        assert!(line.ends_with("nologin"), "{line}");
        assert!(uid_of(user) < 1000, "{user} is a system user");
    }
    let members = |g: &str| -> String {
        group
            .lines()
            .find(|l| l.starts_with(&format!("{g}:")))
            .and_then(|l| l.rsplit(':').next())
            .unwrap_or_default()
            .to_owned()
    };
    // The sockets' groups are the daemons' own, as the reference's are.
    assert_eq!(members("aziotks"), "aziotcs,aziotid,edgeid-wl");
    assert_eq!(members("aziotcs"), "aziotid,edgeid-wl");
    assert_eq!(members("aziotid"), "edgeid-wl");
    assert_eq!(members("aziottpm"), "aziotid");
    assert!(
        members("tss").contains("aziotks"),
        "keyd reaches /dev/tpmrm0"
    );

    let status = Command::new("systemd-tmpfiles")
        .arg(format!("--root={}", root.path().display()))
        .arg("--create")
        .arg(packaging().join("tmpfiles.d/edgeid.conf"))
        .status()
        .unwrap();
    assert!(status.success());
    for (dir, user) in [
        ("keyd", "aziotks"),
        ("certd", "aziotcs"),
        ("identityd", "aziotid"),
    ] {
        let meta = std::fs::metadata(root.path().join("var/lib/edgeid").join(dir)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700, "{dir}");
        assert_eq!(meta.uid(), uid_of(user), "{dir} belongs to {user}");
    }
    // The reference's socket paths lead to edgeid's sockets.
    for d in ["keyd", "certd", "identityd"] {
        let link = root.path().join(format!("run/aziot/{d}.sock"));
        assert_eq!(
            std::fs::read_link(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display())),
            Path::new(&format!("/run/edgeid/{d}.sock"))
        );
    }
}

/// `systemd-socket-activate -l SOCKET edgeid-<daemon> --config FILE`: the
/// activator listens; the first connection execs the daemon with LISTEN_FDS.
struct Activated {
    child: Child,
    socket: PathBuf,
}

impl Activated {
    fn start(dir: &Path, daemon: &str, socket: &str, config: String) -> Self {
        Self::start_named(dir, daemon, &[(socket, "main")], socket, config)
    }

    /// As `start`, with several sockets, each passed under its
    /// `FileDescriptorName`, in this order; `health` answers health checks.
    fn start_named(
        dir: &Path,
        daemon: &str,
        sockets: &[(&str, &str)],
        health: &str,
        config: String,
    ) -> Self {
        let file = dir.join(format!("{daemon}.toml"));
        std::fs::write(&file, config).unwrap();
        let socket = dir.join(health);
        let mut cmd = Command::new("systemd-socket-activate");
        for (path, _) in sockets {
            cmd.arg("-l").arg(dir.join(path));
        }
        let names: Vec<&str> = sockets.iter().map(|(_, n)| *n).collect();
        let child = cmd
            .arg(format!("--fdname={}", names.join(":")))
            .arg(binary(daemon))
            .arg("--config")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "the activator did not listen on {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { child, socket }
    }

    async fn health(&self, path: &str) -> Health {
        UdsClient::new(&self.socket)
            .get(path)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", self.socket.display()))
    }

    /// SIGTERM; the daemon must drain and exit 0.
    fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{}: {status}", self.socket.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_daemon_serves_a_socket_activated_socket() {
    require_tool("systemd-socket-activate", "systemd");
    let dir = edgeid_testkit::temp_dir();
    let d = dir.path().display();
    // Each config names a socket the daemon must *not* create: it is handed one.
    let keyd = Activated::start(
        dir.path(),
        "keyd",
        "keyd.sock",
        format!("state_dir = \"{d}/keyd\"\n[server]\nsocket = \"{d}/not-keyd.sock\"\n[software]\nmaster_key_file = \"{d}/secrets/master.key\"\n"),
    );
    let certd = Activated::start(
        dir.path(),
        "certd",
        "certd.sock",
        format!("state_dir = \"{d}/certd\"\nkeyd_socket = \"{d}/keyd.sock\"\n[server]\nsocket = \"{d}/not-certd.sock\"\n"),
    );
    let identityd = Activated::start(
        dir.path(),
        "identityd",
        "identityd.sock",
        format!("state_dir = \"{d}/identityd\"\nkeyd_socket = \"{d}/keyd.sock\"\ncertd_socket = \"{d}/certd.sock\"\n[server]\nsocket = \"{d}/not-identityd.sock\"\n[provisioning]\nsource = \"local\"\ndevice_id = \"activated\"\n"),
    );
    // workloadd gets two: the workload socket first, the SPIFFE one by name.
    let workloadd = Activated::start_named(
        dir.path(),
        "workloadd",
        // In the order systemd need not keep: each must be taken by its name.
        &[("spiffe.sock", "spiffe"), ("workload.sock", "workload")],
        "workload.sock",
        format!("identityd_socket = \"{d}/identityd.sock\"\nkeyd_socket = \"{d}/keyd.sock\"\ncertd_socket = \"{d}/certd.sock\"\nsockets_dir = \"{d}/modules\"\n[server]\nsocket = \"{d}/not-workload.sock\"\n[spiffe]\ntrust_domain = \"example.org\"\nsocket = \"{d}/not-spiffe.sock\"\n"),
    );
    assert_eq!(keyd.health("/v1/health").await.status, "ok");
    assert_eq!(certd.health("/v1/health").await.status, "ok");
    // identityd provisions locally through certd and keyd, all activated.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h = identityd.health("/v1/health").await;
        if h.status == "ok" && h.backends.get("provisioning").map(String::as_str) == Some("ok") {
            break;
        }
        assert!(Instant::now() < deadline, "identityd: {h:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let h = workloadd.health("/health").await;
    assert_eq!(h.status, "ok", "workloadd and everything behind it: {h:?}");
    // The SPIFFE Workload API answers on the descriptor named spiffe (this
    // uid is no module there: PermissionDenied, from workloadd itself).
    let mut spiffe = edgeid_workloadapi::spiffe::client::connect(
        &dir.path().join("spiffe.sock").display().to_string(),
    )
    .await
    .unwrap();
    let refused = spiffe
        .fetch_jwt_bundles(edgeid_workloadapi::spiffe::proto::JwtBundlesRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    for name in ["keyd", "certd", "identityd", "workload", "spiffe"] {
        assert!(
            !dir.path().join(format!("not-{name}.sock")).exists(),
            "{name} bound its own socket instead of the one it was handed"
        );
    }
    for a in [workloadd, identityd, certd, keyd] {
        a.stop();
    }
}

/// The package's one binary is each daemon under its link names, edgeid's
/// and the reference's, and the CLI under its own.
#[test]
fn edgeidctl_is_the_daemon_its_link_names() {
    let dir = edgeid_testkit::temp_dir();
    let edgeidctl = edgeid_testkit::process::build_binary("edgeidctl");
    for (link, program) in [
        ("edgeid-keyd", "edgeid-keyd"),
        ("aziot-keyd", "edgeid-keyd"),
        ("edgeid-certd", "edgeid-certd"),
        ("aziot-certd", "edgeid-certd"),
        ("edgeid-identityd", "edgeid-identityd"),
        ("aziot-identityd", "edgeid-identityd"),
        ("edgeid-workloadd", "edgeid-workloadd"),
        ("edgeidctl", "edgeidctl"),
    ] {
        let path = dir.path().join(link);
        std::os::unix::fs::symlink(&edgeidctl, &path).unwrap();
        let out = Command::new(&path).arg("--version").output().unwrap();
        assert!(out.status.success(), "{link} --version");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.starts_with(&format!("{program} ")),
            "{link} is {program}: {said}"
        );
    }
    // A daemon by its link: a bad config is that daemon's refusal, exit 2.
    let path = dir.path().join("aziot-keyd");
    let out = Command::new(&path)
        .args(["--config", "/nonexistent/keyd.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/keyd.toml"));
}
