//! A fresh SoftHSMv2 token in a temp dir, for PKCS#11 tests.
//!
//! SoftHSM finds its tokens through `SOFTHSM2_CONF`, which is process-wide, so
//! a keyd using a token runs as its own process ([`crate::KeydProcess`]) with
//! [`SoftHsm::env`] set.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The user PIN of every test token.
pub const PIN: &str = "1234";
const SO_PIN: &str = "5678";

/// A SoftHSM installation private to one test: config and token directory.
pub struct SoftHsm {
    dir: tempfile::TempDir,
    pin: String,
}

impl SoftHsm {
    /// A private SoftHSM config with no tokens yet; tokens get [`PIN`].
    pub fn new() -> Self {
        Self::with_pin(PIN)
    }

    /// The same, with tokens whose user PIN is `pin`.
    pub fn with_pin(pin: &str) -> Self {
        crate::require_tool("softhsm2-util", "softhsm2");
        let dir = crate::temp_dir();
        std::fs::create_dir(dir.path().join("tokens")).expect("token dir");
        let conf = format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            dir.path().join("tokens").display()
        );
        std::fs::write(dir.path().join("softhsm2.conf"), conf).expect("softhsm2.conf");
        let pin_file = dir.path().join("pin");
        std::fs::write(&pin_file, format!("{pin}\n")).expect("pin file");
        std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600))
            .expect("chmod pin");
        Self {
            dir,
            pin: pin.to_owned(),
        }
    }

    /// Creates and initializes a token with this label.
    pub fn init_token(&self, label: &str) {
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", self.conf())
            .args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                &self.pin,
                "--so-pin",
                SO_PIN,
            ])
            .output()
            .expect("run softhsm2-util");
        assert!(
            out.status.success(),
            "softhsm2-util --init-token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The config file to put in `SOFTHSM2_CONF`.
    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    /// The environment a process needs to see these tokens.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("SOFTHSM2_CONF".into(), self.conf().display().to_string())]
    }

    /// A 0600 file holding the user PIN.
    pub fn pin_file(&self) -> PathBuf {
        self.dir.path().join("pin")
    }

    /// The SoftHSM PKCS#11 module.
    pub fn library() -> PathBuf {
        let candidates = [
            "/usr/lib/softhsm/libsofthsm2.so",
            "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        ];
        candidates.iter().map(PathBuf::from).find(|p| p.exists()).unwrap_or_else(|| {
            panic!("libsofthsm2.so is not installed; this test needs it: sudo apt-get install -y softhsm2")
        })
    }

    /// OpenSC's pkcs11-spy module, which logs every PKCS#11 call to
    /// `PKCS11SPY_OUTPUT` on its way to the module in `PKCS11SPY`.
    pub fn spy_library() -> PathBuf {
        let candidates = [
            "/usr/lib/x86_64-linux-gnu/pkcs11-spy.so",
            "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so",
        ];
        candidates.iter().map(PathBuf::from).find(|p| p.exists()).unwrap_or_else(|| {
            panic!("pkcs11-spy.so is not installed; this test needs it: sudo apt-get install -y opensc")
        })
    }

    /// The `[pkcs11]` table of a keyd config for the token `label`.
    pub fn keyd_table(&self, label: &str) -> String {
        format!(
            "[pkcs11]\nlibrary = \"{}\"\ntoken_label = \"{label}\"\npin_file = \"{}\"\n",
            Self::library().display(),
            self.pin_file().display()
        )
    }

    /// `pkcs11-tool --list-objects` on the token, logged in (an independent
    /// PKCS#11 client, from OpenSC).
    pub fn list_objects(&self, label: &str) -> String {
        self.pkcs11_tool(label, &["--list-objects"])
    }

    /// Makes an EC key pair on the token with `pkcs11-tool`, labelled as
    /// given: an object some other program put there.
    pub fn foreign_key_pair(&self, token: &str, object_label: &str) {
        self.pkcs11_tool(
            token,
            &[
                "--keypairgen",
                "--key-type",
                "EC:prime256v1",
                "--label",
                object_label,
            ],
        );
    }

    /// The public key of the key pair labelled `object_label`, as
    /// `pkcs11-tool` reads it off the token (DER), in PEM by openssl.
    pub fn public_key_pem(&self, token: &str, object_label: &str) -> String {
        let der = self.dir.path().join(format!("{object_label}.pub.der"));
        self.pkcs11_tool(
            token,
            &[
                "--read-object",
                "--type",
                "pubkey",
                "--label",
                object_label,
                "-o",
                der.to_str().expect("UTF-8 path"),
            ],
        );
        let pem = crate::openssl::run(&[
            "pkey",
            "-pubin",
            "-inform",
            "DER",
            "-in",
            der.to_str().expect("UTF-8 path"),
        ]);
        String::from_utf8(pem).expect("PEM")
    }

    /// `pkcs11-tool` logged in to the token `label`; its output.
    fn pkcs11_tool(&self, label: &str, args: &[&str]) -> String {
        crate::require_tool("pkcs11-tool", "opensc");
        let out = Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", self.conf())
            .arg("--module")
            .arg(Self::library())
            .args(["--token-label", label, "--login", "--pin", &self.pin])
            .args(args)
            .output()
            .expect("run pkcs11-tool");
        assert!(
            out.status.success(),
            "pkcs11-tool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The directory holding everything.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for SoftHsm {
    fn default() -> Self {
        Self::new()
    }
}
