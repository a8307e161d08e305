//! Real clients nobody here wrote, run unchanged: the Azure IoT device SDKs
//! for Python (`azure-iot-device` from PyPI) and Node.js (from npm), and
//! py-spiffe on the newest grpcio. `scripts/install-clients` installs them
//! under `target/clients` (`scripts/test`, and so CI, runs it); the scripts
//! that drive them are in `tests/clients/`. A test that cannot find them
//! fails with the command that installs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The workspace's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_owned()
}

/// Where `scripts/install-clients` put the clients.
fn installed() -> PathBuf {
    std::env::var_os("EDGEID_CLIENTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/clients"))
}

fn missing(what: &Path) -> ! {
    panic!(
        "{} is not installed; this test runs the real client from it: run scripts/install-clients (scripts/test does)",
        what.display()
    )
}

/// A script of `tests/clients/`.
pub fn script(relative: &str) -> PathBuf {
    root().join("tests/clients").join(relative)
}

/// The Python of the clients' virtualenv, with `azure-iot-device`, `spiffe`,
/// `grpcio` and `h2` in it.
pub fn python() -> Command {
    let python = installed().join("venv/bin/python");
    if !python.is_file() {
        missing(&python);
    }
    let mut command = Command::new(python);
    // Nothing from the user's site-packages or environment.
    command
        .env("PYTHONNOUSERSITE", "1")
        .env_remove("PYTHONPATH");
    command
}

/// Node.js with the clients' `node_modules` on its module path.
pub fn node() -> Command {
    let modules = installed().join("node/node_modules");
    if !modules.join("azure-iot-device").is_dir() {
        missing(&modules.join("azure-iot-device"));
    }
    crate::require_tool("node", "nodejs");
    let mut command = Command::new("node");
    command.env("NODE_PATH", modules);
    command
}

/// Runs a client to its end and reads the one JSON value it prints last on
/// stdout; with its exit status, and its stderr for failure messages.
pub fn run_json(mut command: Command) -> (bool, serde_json::Value, String) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let value = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!("{command:?} printed no JSON ({e}): stdout {stdout:?}, stderr {stderr}")
    });
    (output.status.success(), value, stderr)
}
