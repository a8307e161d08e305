//! Fixtures every edgeid test shares, written once:
//! - [`KeydFixture`]: a keyd in a fresh temp dir, in-process, restartable;
//! - [`request_as`]: an HTTP request from another uid (needs root);
//! - [`openssl`]: signatures checked by the `openssl` CLI, an implementation
//!   independent of the one keyd signs with;
//! - [`CertdFixture`], [`IdentitydFixture`]: certd and identityd in-process ([`daemon`]);
//! - [`cloud::CloudService`]: a test stand-in for DPS and IoT Hub that checks credentials;
//! - [`est_server::EstServer`]: a real RFC 7030 server (rustls, PKCS#10 in, PKCS#7 out);
//! - [`KeydProcess`]: the keyd binary as its own process (SIGTERM, restarts, PKCS#11);
//! - [`SoftHsm`]: a private SoftHSMv2 token directory;
//! - [`Swtpm`]: a fresh software TPM on loopback, restartable with its state;
//! - [`tpm_peer`]: a provisioning service's side of TPM attestation, on a second swtpm;
//! - [`faults`]: the files a daemon left on disk, seeded randomness for kill tests;
//! - [`require_tool`]: a missing tool fails the test with the command that installs it;
//! - [`clients`]: real clients nobody here wrote (Azure IoT SDKs, py-spiffe), run unchanged.

pub mod aziot;
pub mod certd;
pub mod clients;
pub mod cloud;
pub mod daemon;
pub mod est_server;
pub mod faults;
pub mod identityd;
pub mod openssl;
pub mod process;
pub mod proxy;
pub mod softhsm;
pub mod swtpm;
pub mod tls_server;
pub mod tpm_peer;
pub mod workload;

pub use certd::CertdFixture;
pub use identityd::IdentitydFixture;
pub use process::KeydProcess;
pub use softhsm::SoftHsm;
pub use swtpm::Swtpm;
pub use workload::WorkloadFixture;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use edgeid_common::authz::Admins;
use edgeid_keyd::{KeydClient, KeydConfig};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Fails the test, with the install command, if `tool` is not on PATH.
pub fn require_tool(tool: &str, debian_package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("`{tool}` is not installed; this test needs it: sudo apt-get install -y {debian_package}")
    })
}

/// A fresh temp dir with a short path (socket paths are limited to 107 bytes).
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("edgeid-")
        .tempdir_in("/tmp")
        .expect("create a temp dir in /tmp")
}

/// A keyd serving from a temp dir, inside the test process.
pub struct KeydFixture {
    /// The config it runs with; tests may change it before [`KeydFixture::restart`].
    pub config: KeydConfig,
    admins: Admins,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), edgeid_keyd::Error>>>,
    _dir: Option<tempfile::TempDir>,
}

impl KeydFixture {
    /// keyd on the software store in a new temp dir; root and this process are admins.
    pub async fn start() -> Self {
        let dir = temp_dir();
        let mut fixture = Self::start_in(dir.path()).await;
        fixture._dir = Some(dir);
        fixture
    }

    /// keyd on the software store under `dir` (which the caller keeps);
    /// root and this process are admins.
    pub async fn start_in(dir: &Path) -> Self {
        Self::configured(Self::config_in(dir), Admins::root_and_self()).await
    }

    /// The default test config for a directory: state, socket and master key under it.
    pub fn config_in(dir: &Path) -> KeydConfig {
        KeydConfig::with_dirs(
            &dir.join("keyd"),
            &dir.join("keyd.sock"),
            &dir.join("secrets/master.key"),
        )
    }

    /// keyd with the given config and administrators.
    pub async fn configured(config: KeydConfig, admins: Admins) -> Self {
        let mut fixture = Self {
            config,
            admins,
            stop: None,
            task: None,
            _dir: None,
        };
        fixture.launch().await;
        fixture
    }

    async fn launch(&mut self) {
        let keyd = edgeid_keyd::Keyd::open(&self.config, self.admins.clone())
            .await
            .expect("keyd opens");
        // A keyd of the same directory that was dropped rather than stopped
        // may still be draining, and holds the socket for a moment.
        let mut tries = 0;
        let listener = loop {
            match edgeid_common::listener::Listener::bind(
                &self.config.socket(),
                self.config.server.socket_mode,
            ) {
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                bound => break bound.expect("keyd binds its socket"),
            }
        };
        let (tx, rx) = oneshot::channel();
        let limits = self.config.limits();
        self.task = Some(tokio::spawn(async move {
            edgeid_common::server::serve(listener, std::sync::Arc::new(keyd), limits, async {
                let _ = rx.await;
            })
            .await
            .map_err(|e| edgeid_keyd::Error::Setup(e.to_string()))
        }));
        self.stop = Some(tx);
    }

    /// The socket path.
    pub fn socket(&self) -> PathBuf {
        self.config.socket()
    }

    /// A new client (with its own connection pool).
    pub fn client(&self) -> KeydClient {
        KeydClient::new(self.socket())
    }

    /// Stops keyd as SIGTERM would, waiting for it to drain.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("keyd task").expect("keyd stops cleanly");
        }
    }

    /// Stops keyd and starts it again on the same state.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }
}

impl Drop for KeydFixture {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Makes `dir` traversable by other uids (temp dirs are 0700), so that a test
/// can connect to a socket in it as another user.
pub fn open_to_others(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod test dir");
}

/// Whether this process can act as other uids.
pub fn is_root() -> bool {
    edgeid_common::current_uid() == 0
}

/// Connects to `socket` as `uid`/`gid`: a helper thread drops to that identity
/// with the raw per-thread syscalls (glibc's setuid would change every thread)
/// and connects; the kernel records that identity for `SO_PEERCRED`.
pub fn connect_as(uid: u32, gid: u32, socket: &Path) -> std::os::unix::net::UnixStream {
    try_connect_as(uid, gid, socket)
        .unwrap_or_else(|e| panic!("connect to {} as uid {uid}: {e}", socket.display()))
}

/// [`connect_as`], with the kernel's answer (EACCES for a socket the
/// identity may not reach) instead of a panic.
pub fn try_connect_as(
    uid: u32,
    gid: u32,
    socket: &Path,
) -> std::io::Result<std::os::unix::net::UnixStream> {
    let target = socket.to_owned();
    on_a_thread_as(uid, gid, || Ok(target))
}

/// Connects to `socket` as `uid`/`gid` the way a module in a container
/// does: through a bind mount of the socket, made (as root) in a mount
/// namespace of the helper thread's own, at a path anyone may walk to. The
/// socket's own mode still decides; the directory it lives in does not.
pub fn connect_through_mount_as(
    uid: u32,
    gid: u32,
    socket: &Path,
) -> std::io::Result<std::os::unix::net::UnixStream> {
    let open = tempfile::Builder::new()
        .prefix("edgeid-mount-")
        .tempdir_in("/tmp")
        .expect("a temp dir in /tmp");
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let target = open.path().join("workload.sock");
    std::fs::write(&target, b"").unwrap();
    let source = std::ffi::CString::new(socket.as_os_str().as_encoded_bytes()).unwrap();
    let at = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()).unwrap();
    on_a_thread_as(uid, gid, move || {
        // SAFETY: this thread's own mount namespace (CLONE_NEWNS unshares
        // only the calling thread's), made private so nothing propagates
        // back, then one bind mount in it; the C strings outlive the calls.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
                || libc::mount(
                    source.as_ptr(),
                    at.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(target)
    })
}

/// On a helper thread: `setup` as root (it returns the path to connect
/// to), then the drop to `uid`/`gid` with no supplementary groups, then the
/// connect.
fn on_a_thread_as(
    uid: u32,
    gid: u32,
    setup: impl FnOnce() -> std::io::Result<PathBuf> + Send + 'static,
) -> std::io::Result<std::os::unix::net::UnixStream> {
    assert!(
        is_root(),
        "connecting as uid {uid} needs root: run the tests as root (CI does)"
    );
    std::thread::spawn(move || {
        let target = setup()?;
        // SAFETY: raw syscalls that only change this thread's credentials; the
        // thread ends right after connecting and touches nothing shared.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
                0
            );
            assert_eq!(
                libc::syscall(libc::SYS_setresgid, gid, gid, gid),
                0,
                "setresgid"
            );
            assert_eq!(
                libc::syscall(libc::SYS_setresuid, uid, uid, uid),
                0,
                "setresuid"
            );
        }
        std::os::unix::net::UnixStream::connect(&target)
    })
    .join()
    .expect("connect thread")
}

/// Sends one request on a connection made by [`try_connect_as`] or
/// [`connect_through_mount_as`], returns status and body.
pub async fn request_on(
    stream: std::os::unix::net::UnixStream,
    method: Method,
    path: &str,
    body: &str,
) -> (StatusCode, Bytes) {
    stream.set_nonblocking(true).expect("nonblocking");
    let stream = tokio::net::UnixStream::from_std(stream).expect("tokio stream");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .expect("answer in time")
        .expect("answer");
    let status = resp.status();
    (
        status,
        resp.into_body().collect().await.expect("body").to_bytes(),
    )
}

/// Sends one request over a connection made as `uid`, returns status and body.
pub async fn request_as(
    uid: u32,
    socket: &Path,
    method: Method,
    path: &str,
    body: &str,
) -> (StatusCode, Bytes) {
    request_on(connect_as(uid, uid, socket), method, path, body).await
}

/// HMAC-SHA256 by the `hmac` crate: a second party's recomputation of a
/// MAC a daemon answered.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Fails the test unless the first certificate of `chain_pem` certifies the
/// public half of the private key `key_pem` (PKCS#8): what a service handed
/// a module is a key and the certificate for it, not two strangers.
pub fn assert_leaf_certifies(chain_pem: &str, key_pem: &str, what: &str) {
    let key = rcgen::KeyPair::from_pem(key_pem).unwrap_or_else(|e| panic!("{what}: key: {e}"));
    let leaf = pem::parse(chain_pem).unwrap_or_else(|e| panic!("{what}: chain: {e}"));
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.contents())
        .unwrap_or_else(|e| panic!("{what}: leaf: {e}"));
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw(),
        "{what}: the leaf does not certify the key"
    );
}
