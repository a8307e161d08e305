//! The four daemons as `edgeidctl` knows them, written once: their system
//! users, socket files and health paths, and the host name a device is
//! named by when nothing else names it.

use std::path::Path;
use std::time::Duration;

use edgeid_common::client::UdsClient;
use edgeid_common::server::Health;

/// One daemon.
pub struct Daemon {
    /// `keyd`, `certd`, `identityd`, `workloadd` (its config dir is `<name>.d`,
    /// its units `edgeid-<name>.*`).
    pub name: &'static str,
    /// Its system user.
    pub user: &'static str,
    /// Its socket's file name in the run directory.
    pub socket: &'static str,
    /// Its health path.
    pub health: &'static str,
}

/// Every daemon, in the order each depends on the ones before.
pub const DAEMONS: [Daemon; 4] = [
    Daemon {
        name: "keyd",
        user: "aziotks",
        socket: "keyd.sock",
        health: "/v1/health",
    },
    Daemon {
        name: "certd",
        user: "aziotcs",
        socket: "certd.sock",
        health: "/v1/health",
    },
    Daemon {
        name: "identityd",
        user: "aziotid",
        socket: "identityd.sock",
        health: "/v1/health",
    },
    Daemon {
        name: "workloadd",
        user: "edgeid-wl",
        socket: "workload.sock",
        health: "/health",
    },
];

impl Daemon {
    /// Its health, from its socket in `run_dir` (5 s at most).
    pub async fn health(&self, run_dir: &Path) -> Result<Health, String> {
        UdsClient::new(run_dir.join(self.socket))
            .with_timeout(Duration::from_secs(5))
            .get::<Health>(self.health)
            .await
            .map_err(|e| e.to_string())
    }
}

/// This machine's host name, if it can be read.
pub fn hostname() -> Result<String, String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .map_err(|e| format!("cannot read the host name: {e}"))
}
