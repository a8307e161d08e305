//! keyd on a SoftHSMv2 token: the token made for the run, raw cryptoki on
//! it (the in-process baseline), and the same raw calls behind the floor
//! server (the floor keyd's PKCS#11 rows are measured against, issue 22).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use crate::wire::{self, Work, WorkFactory};
use crate::{Measured, Op};

/// A SoftHSMv2 token created for the benchmark, and raw cryptoki access to it.
pub struct SoftHsmToken {
    library: PathBuf,
    pin_file: PathBuf,
}

const BENCH_TOKEN: &str = "edgeid-bench";
const BENCH_PIN: &str = "1234";

impl SoftHsmToken {
    pub fn create(dir: &Path) -> Result<Self, String> {
        let library = [
            "/usr/lib/softhsm/libsofthsm2.so",
            "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or("libsofthsm2.so not found: sudo apt-get install -y softhsm2")?;
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).map_err(|e| e.to_string())?;
        let conf = dir.join("softhsm2.conf");
        let text = format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        );
        std::fs::write(&conf, text).map_err(|e| e.to_string())?;
        // Set before any other thread exists; keyd inherits it.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        let status = Command::new("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                BENCH_TOKEN,
                "--pin",
                BENCH_PIN,
                "--so-pin",
                "5678",
            ])
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("softhsm2-util: {e} (sudo apt-get install -y softhsm2)"))?;
        if !status.success() {
            return Err("softhsm2-util --init-token failed".into());
        }
        let pin_file = dir.join("pin");
        std::fs::write(&pin_file, BENCH_PIN).map_err(|e| e.to_string())?;
        std::fs::set_permissions(
            &pin_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .map_err(|e| e.to_string())?;
        Ok(Self { library, pin_file })
    }

    pub fn keyd_config(&self) -> String {
        format!(
            "[backend]\ndefault = \"pkcs11\"\n[pkcs11]\nlibrary = \"{}\"\ntoken_label = \"{BENCH_TOKEN}\"\npin_file = \"{}\"\n",
            self.library.display(),
            self.pin_file.display()
        )
    }

    /// `n` threads, each with its own session, doing what keyd does per
    /// request ([`RawToken::sign`]) on the same token, in this process.
    pub fn in_process(&self, op: Op, n: usize, seconds: u64) -> Result<Measured, String> {
        let (raw, _login) = RawToken::open(&self.library, op)?;
        wire::in_process(n, seconds, std::sync::Arc::new(raw).work())
    }

    /// The PKCS#11 module, which `floor-server --pkcs11` loads for the floor.
    pub fn library(&self) -> &Path {
        &self.library
    }
}

/// Raw cryptoki on the bench token: a key made as keyd makes its keys (a
/// token object, sensitive, not extractable), and sessions for threads.
pub struct RawToken {
    ctx: Pkcs11,
    slot: Slot,
    key: ObjectHandle,
    op: Op,
}

impl RawToken {
    /// The token, and the logged-in session that made the key: the token
    /// stays logged in for every session while it is kept.
    pub fn open(library: &Path, op: Op) -> Result<(Self, Session), String> {
        let err = |e: cryptoki::error::Error| e.to_string();
        let ctx = Pkcs11::new(library).map_err(err)?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(())
            | Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::CryptokiAlreadyInitialized,
                _,
            )) => {}
            Err(e) => return Err(e.to_string()),
        }
        let slot = ctx
            .get_slots_with_initialized_token()
            .map_err(err)?
            .into_iter()
            .find(|s| {
                ctx.get_token_info(*s)
                    .is_ok_and(|i| i.label().trim_end() == BENCH_TOKEN)
            })
            .ok_or("bench token not found")?;
        let session = ctx.open_rw_session(slot).map_err(err)?;
        match session.login(UserType::User, Some(&AuthPin::from(BENCH_PIN.to_owned()))) {
            Ok(())
            | Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::UserAlreadyLoggedIn,
                _,
            )) => {}
            Err(e) => return Err(e.to_string()),
        }
        let label = Attribute::Label(b"raw-bench".to_vec());
        let key = match op {
            Op::Ecdsa => {
                let p256_oid = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
                let public = [
                    Attribute::Token(false),
                    Attribute::EcParams(p256_oid),
                    label.clone(),
                ];
                let private = [
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sign(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    label,
                ];
                session
                    .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
                    .map_err(err)?
                    .1
            }
            Op::Hmac => {
                let template = [
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sign(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::ValueLen(32u64.into()),
                    label,
                ];
                session
                    .generate_key(&Mechanism::GenericSecretKeyGen, &template)
                    .map_err(err)?
            }
        };
        Ok((Self { ctx, slot, key, op }, session))
    }

    /// A session of its own for one thread (logged in already: the login
    /// is the token's).
    pub fn session(&self) -> Result<Session, String> {
        self.ctx
            .open_rw_session(self.slot)
            .map_err(|e| e.to_string())
    }

    /// Each thread's work: [`Self::sign`] with a session of its own.
    pub fn work(self: std::sync::Arc<Self>) -> WorkFactory {
        Box::new(move || {
            let session = self.session()?;
            let raw = self.clone();
            Ok(Box::new(move |data: &[u8], answer: &mut [u8]| {
                wire::copy(&raw.sign(&session, data)?, answer);
                Ok(())
            }) as Work)
        })
    }

    /// What keyd does per request: hash with aws-lc and sign the digest with
    /// CKM_ECDSA, or HMAC with CKM_SHA256_HMAC.
    pub fn sign(&self, session: &Session, message: &[u8]) -> Result<Vec<u8>, String> {
        match self.op {
            Op::Ecdsa => {
                let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, message);
                session.sign(&Mechanism::Ecdsa, self.key, digest.as_ref())
            }
            Op::Hmac => session.sign(&Mechanism::Sha256Hmac, self.key, message),
        }
        .map_err(|e| e.to_string())
    }
}
