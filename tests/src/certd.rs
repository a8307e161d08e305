//! A certd serving from a temp dir inside the test process, talking to a keyd.

use std::path::{Path, PathBuf};
use std::time::Duration;

use edgeid_certd::{CertdClient, CertdConfig};
use edgeid_common::authz::Admins;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// An in-process certd.
pub struct CertdFixture {
    /// The config it runs with; tests may change it before a restart.
    pub config: CertdConfig,
    admins: Admins,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), edgeid_certd::Error>>>,
}

impl CertdFixture {
    /// The test config: state and socket under `dir`, keyd at `keyd_socket`,
    /// renewal retries after a second.
    pub fn config_in(dir: &Path, keyd_socket: &Path) -> CertdConfig {
        let mut c =
            CertdConfig::with_dirs(&dir.join("certd"), &dir.join("certd.sock"), keyd_socket);
        c.renewal.retry_min_secs = 1;
        c.renewal.retry_max_secs = 2;
        c
    }

    /// certd with the test config under `dir`, using `keyd`; root and this
    /// process are admins.
    pub async fn start_in(dir: &Path, keyd: &crate::KeydFixture) -> Self {
        Self::configured(
            Self::config_in(dir, &keyd.socket()),
            Admins::root_and_self(),
        )
        .await
    }

    /// certd with this config and administrators, serving once this returns.
    pub async fn configured(config: CertdConfig, admins: Admins) -> Self {
        let mut f = Self {
            config,
            admins,
            stop: None,
            task: None,
        };
        f.launch().await;
        f
    }

    async fn launch(&mut self) {
        let (tx, rx) = oneshot::channel();
        let socket = self.config.socket();
        let _ = std::fs::remove_file(&socket);
        self.task = Some(tokio::spawn(edgeid_certd::run_with(
            self.config.clone(),
            self.admins.clone(),
            async {
                let _ = rx.await;
            },
        )));
        self.stop = Some(tx);
        for _ in 0..500 {
            if socket.exists() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("certd did not bind {}", socket.display());
    }

    /// The socket path.
    pub fn socket(&self) -> PathBuf {
        self.config.socket()
    }

    /// A new client.
    pub fn client(&self) -> CertdClient {
        CertdClient::new(self.socket())
    }

    /// Stops certd as SIGTERM would.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("certd task")
                .expect("certd stops cleanly");
        }
    }

    /// Stops and starts certd on the same state.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }
}

impl Drop for CertdFixture {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
