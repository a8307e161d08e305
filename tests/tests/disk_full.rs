//! A full disk under keyd and certd: a new key or certificate is refused
//! with 507 and a message that says the disk is full, nothing already stored
//! changes (no partial file, no stray temp file), both daemons keep serving
//! what they have, and once space is freed the same requests succeed.
//!
//! The state lives on a small tmpfs that the test mounts, so it needs root.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use edgeid_keyd::api::{KeyPairSpec, SignAlgorithm, SymmetricKeyType};
use edgeid_testkit::certd::local_client;
use edgeid_testkit::{openssl, CertdFixture, KeydFixture};
use http::StatusCode;

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        assert!(
            edgeid_testkit::is_root(),
            "this test mounts a tmpfs to fill it: run it as root (CI does)"
        );
        let dir = edgeid_testkit::temp_dir();
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs failed (this test needs root with CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { _dir: dir, path }
    }

    /// Writes a file until the file system refuses: ENOSPC.
    fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if edgeid_common::fs::is_out_of_space(&e) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        // Even a byte more is refused now.
        assert!(f.write_all(b"x").and_then(|()| f.sync_all()).is_err());
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// Every file the daemons keep on the tmpfs, and its bytes (not the filler).
fn state_files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = edgeid_testkit::faults::snapshot(dir);
    files.remove(&dir.join("filler"));
    files
}

/// A 507 whose message says `says`.
fn no_space<T: std::fmt::Debug>(result: Result<T, edgeid_common::client::ClientError>, says: &str) {
    let err = result.expect_err("refused on a full disk");
    assert_eq!(
        err.status(),
        Some(StatusCode::INSUFFICIENT_STORAGE),
        "{err}"
    );
    assert!(err.to_string().contains(says), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_keys_and_certificates_and_keeps_the_old_ones() {
    let fs = Tmpfs::mount("2m");
    let mut keyd = KeydFixture::start_in(&fs.path).await;
    let certd = CertdFixture::start_in(&fs.path, &keyd).await;
    let keys = keyd.client();
    let certs = certd.client();

    // What exists before the disk fills.
    let pair = keys
        .create_key_pair("before", KeyPairSpec::EcP256)
        .await
        .unwrap();
    let mac = keys
        .create_key("before-mac", SymmetricKeyType::HmacSha256, None)
        .await
        .unwrap();
    let chain = certs.create(&local_client("before-cert")).await.unwrap();
    // A key made now, whose certificate will be asked for on the full disk.
    keys.create_key_pair("later-cert", KeyPairSpec::EcP256)
        .await
        .unwrap();
    let before = state_files(&fs.path);

    let filler = fs.fill();
    no_space(
        keys.create_key_pair("after", KeyPairSpec::EcP256).await,
        "no space left to store key 'after'",
    );
    no_space(
        keys.create_key("after-mac", SymmetricKeyType::HmacSha256, None)
            .await,
        "no space left to store key 'after-mac'",
    );
    no_space(
        certs.create(&local_client("later-cert")).await,
        "no space left to store certificate 'later-cert'",
    );

    // Nothing stored changed, nothing half-written was left.
    assert_eq!(
        state_files(&fs.path),
        before,
        "the state changed on a full disk"
    );
    // What was there still works, also after a restart on the full disk.
    keyd.restart().await;
    let keys = keyd.client();
    openssl::check_signing(&keys, &pair, SignAlgorithm::EcdsaSha256, b"full disk").await;
    keys.sign(&mac, SignAlgorithm::HmacSha256, b"full disk", false)
        .await
        .unwrap();
    let info = certs.get("before-cert").await.unwrap();
    assert_eq!(info.pem, chain);
    let err = keys.key_pair("after").await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::NOT_FOUND), "{err}");

    // Space back: the same requests succeed.
    std::fs::remove_file(filler).unwrap();
    let pair = keys
        .create_key_pair("after", KeyPairSpec::EcP256)
        .await
        .unwrap();
    openssl::check_signing(&keys, &pair, SignAlgorithm::EcdsaSha256, b"space again").await;
    certs.create(&local_client("later-cert")).await.unwrap();
}
