//! A daemon binary run as its own process, the way systemd runs it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use edgeid_keyd::KeydClient;

/// An `edgeid-keyd` process with a config written to a temp dir.
pub struct KeydProcess {
    binary: PathBuf,
    config: PathBuf,
    env: Vec<(String, String)>,
    /// The socket it listens on.
    pub socket: PathBuf,
    child: Option<Child>,
}

impl KeydProcess {
    /// Writes `state_dir`, `[server]` and `[software]` for `dir`, then `extra`
    /// (more TOML tables), and starts `binary` with it; returns once keyd answers.
    pub async fn start(binary: &Path, dir: &Path, extra: &str, env: Vec<(String, String)>) -> Self {
        let socket = dir.join("keyd.sock");
        let config = dir.join("keyd.toml");
        let text = format!(
            "state_dir = \"{}\"\n{extra}\n[server]\nsocket = \"{}\"\nsocket_mode = 0o600\n[software]\nmaster_key_file = \"{}\"\n",
            dir.join("state").display(),
            socket.display(),
            dir.join("secrets/master.key").display(),
        );
        std::fs::write(&config, text).expect("write keyd config");
        let mut process = Self {
            binary: binary.to_owned(),
            config,
            env,
            socket,
            child: None,
        };
        process.launch().await;
        process
    }

    async fn launch(&mut self) {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--config")
            .arg(&self.config)
            .stderr(Stdio::inherit());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("start edgeid-keyd"));
        let client = self.client();
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.health().await.is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("edgeid-keyd exited during start-up: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "edgeid-keyd did not answer within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A client for its socket.
    pub fn client(&self) -> KeydClient {
        KeydClient::new(&self.socket)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn stop(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("keyd is running");
        sigterm(child);
        let status = wait_exit(child).await;
        self.child = None;
        status
    }

    /// Kills it (SIGKILL: no chance to finish anything) and starts it again
    /// with the same config.
    pub async fn kill_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.launch().await;
    }

    /// Stops (SIGTERM) and starts it again with the same config.
    pub async fn restart(&mut self) {
        let status = self.stop().await;
        assert_eq!(status.code(), Some(0), "keyd exit status");
        self.launch().await;
    }
}

impl Drop for KeydProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A binary of this build, beside the running test's own directory
/// (`cargo test --workspace` builds them all): `edgeid-keyd`, `edgeidctl`...
pub fn build_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the workspace tests (cargo test --workspace)",
        path.display()
    );
    path
}

/// Sends SIGTERM to a child process.
pub fn sigterm(child: &Child) {
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill -TERM {}", child.id());
}

/// Waits (up to 30 s) for a child to exit.
pub async fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit within 30 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to 20 s) for keyd on `client` to answer health; fails if `child` exits.
pub async fn wait_for_health(client: &KeydClient, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.health().await.is_err() {
        if let Some(status) = child.try_wait().expect("wait for child") {
            panic!("keyd exited early: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "keyd did not answer health within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
