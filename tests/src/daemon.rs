//! A daemon served inside the test process from its library's `run_with`:
//! started, stopped as SIGTERM would, restarted on the same state. certd and
//! identityd fixtures are this, with their own configs and clients.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use edgeid_common::authz::Admins;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A shutdown signal handed to a daemon.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;
/// A daemon's `run_with`, its error made a string.
pub type Runner<C> =
    fn(C, Admins, Shutdown) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// An in-process daemon with config `C`.
pub struct InProcess<C: Clone + Send + 'static> {
    /// The config it runs with; tests may change it before a restart.
    pub config: C,
    admins: Admins,
    socket: PathBuf,
    run: Runner<C>,
    name: &'static str,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), String>>>,
}

impl<C: Clone + Send + 'static> InProcess<C> {
    /// Starts `run` with this config; serving once this returns.
    pub async fn start(
        name: &'static str,
        config: C,
        socket: PathBuf,
        admins: Admins,
        run: Runner<C>,
    ) -> Self {
        let mut d = Self {
            config,
            admins,
            socket,
            run,
            name,
            stop: None,
            task: None,
        };
        d.launch().await;
        d
    }

    async fn launch(&mut self) {
        let (tx, rx) = oneshot::channel();
        let _ = std::fs::remove_file(&self.socket);
        let shutdown: Shutdown = Box::pin(async {
            let _ = rx.await;
        });
        self.task = Some(tokio::spawn((self.run)(
            self.config.clone(),
            self.admins.clone(),
            shutdown,
        )));
        self.stop = Some(tx);
        for _ in 0..500 {
            if self.socket.exists() {
                return;
            }
            if self.task.as_ref().is_some_and(|t| t.is_finished()) {
                let result = self.task.take().expect("task").await;
                panic!("{} did not start: {result:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} did not bind {}", self.name, self.socket.display());
    }

    /// The socket path.
    pub fn socket(&self) -> PathBuf {
        self.socket.clone()
    }

    /// Stops the daemon as SIGTERM would; it must stop cleanly.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let result = task.await.expect("daemon task");
            if let Err(e) = result {
                panic!("{} did not stop cleanly: {e}", self.name);
            }
        }
    }

    /// Stops and starts the daemon on the same state and config.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }
}

impl<C: Clone + Send + 'static> Drop for InProcess<C> {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
