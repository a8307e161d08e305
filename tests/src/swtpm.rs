//! A fresh software TPM (swtpm) per test, on free loopback ports, with its
//! state in a temp dir; restartable with the same state.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// A running swtpm.
pub struct Swtpm {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Swtpm {
    /// Starts swtpm with fresh state on a free port pair (P for commands,
    /// P+1 for control), trying other pairs if another process takes one first.
    pub fn start() -> Self {
        crate::require_tool("swtpm", "swtpm swtpm-tools");
        let mut tpm = Self {
            dir: crate::temp_dir(),
            port: 0,
            child: None,
        };
        for _ in 0..50 {
            let Some(port) = free_port_pair() else {
                continue;
            };
            tpm.port = port;
            if tpm.launch() {
                return tpm;
            }
        }
        panic!("swtpm did not start on any of 50 free port pairs");
    }

    /// Spawns swtpm on this port and state; false if it did not come up.
    fn launch(&mut self) -> bool {
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--server"])
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", self.port))
            .arg("--ctrl")
            .arg(format!(
                "type=tcp,port={},bindaddr=127.0.0.1",
                self.port + 1
            ))
            .arg("--tpmstate")
            .arg(format!("dir={}", self.dir.path().display()))
            .args(["--flags", "not-need-init,startup-clear"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start swtpm");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if c.try_wait().ok().flatten().is_some() {
                    self.child = None;
                    return false;
                }
            }
            // Only our own swtpm counts: it must still be running once the port answers.
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                std::thread::sleep(Duration::from_millis(20));
                return self
                    .child
                    .as_mut()
                    .is_some_and(|c| c.try_wait().ok().flatten().is_none());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The TCTI string keyd and tpm2-tools use to reach it.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// keyd's `[tpm]` table for this TPM, with keyd's defaults.
    pub fn keyd_config(&self) -> edgeid_keyd::config::TpmConfig {
        edgeid_keyd::config::TpmConfig {
            tcti: self.tcti(),
            primary_handle: 0x8100_0001,
            owner_auth_file: None,
            loaded_keys: 2,
            // keyd's secret, kept beside this TPM's state for the test.
            auth_key_file: self.dir.path().join("keyd-tpm-auth.key"),
            event_logs: Default::default(),
        }
    }

    /// Stops it (SIGTERM, so it saves its state).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    /// Starts it again with the same state on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.launch() {
            assert!(
                Instant::now() < deadline,
                "swtpm did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs a tpm2-tools command (an independent TPM client) against this TPM
    /// and returns its stdout. swtpm serves one client at a time, so this
    /// restarts it first (state kept) for a clean server; stop keyd before
    /// calling it. Bounded at 30 s.
    pub fn tpm2_tool(&mut self, tool: &str, args: &[&str]) -> Vec<u8> {
        crate::require_tool(tool, "tpm2-tools");
        self.restart();
        let out = Command::new("timeout")
            .arg("30")
            .arg(tool)
            .args(args)
            .env("TPM2TOOLS_TCTI", self.tcti())
            .output()
            .expect("run tpm2-tools");
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Runs `script` with `sh -c` against this TPM (`TPM2TOOLS_TCTI` set), so
    /// that tpm2-tools commands that share transient objects run in one
    /// TPM session; restarts it first, as [`Self::tpm2_tool`]. Its output,
    /// whether it succeeded or not. Bounded at 60 s.
    pub fn tpm2_script(&mut self, script: &str) -> std::process::Output {
        crate::require_tool("tpm2_load", "tpm2-tools");
        self.restart();
        Command::new("timeout")
            .arg("60")
            .args(["sh", "-c", script])
            .env("TPM2TOOLS_TCTI", self.tcti())
            .output()
            .expect("run sh")
    }

    /// Extends the PCRs as the firmware and IMA did for these logs, with
    /// tpm2-tools: every digest of every event of `firmware` (a TCG event
    /// log) into its PCR and bank, and for every entry of `ima` (IMA's
    /// list) what the kernel extends into PCR 10's SHA-256 and SHA-1 banks.
    pub fn extend_as_logged(&mut self, firmware: &[u8], ima: &[u8]) {
        use edgeid_attest::{firmware_log, ima_log, Bank};
        let mut script = String::new();
        for event in firmware_log::parse(firmware)
            .expect("a firmware log")
            .events
        {
            for (bank, digest) in &event.digests {
                script += &format!("tpm2_pcrextend {}:{bank}={} && ", event.pcr, hex_of(digest));
            }
        }
        for entry in ima_log::parse(ima).expect("an IMA log") {
            script += &format!(
                "tpm2_pcrextend 10:sha256={},sha1={} && ",
                hex_of(&entry.measurement(Bank::Sha256)),
                hex_of(&entry.measurement(Bank::Sha1))
            );
        }
        script += "true";
        let out = self.tpm2_script(&script);
        assert!(
            out.status.success(),
            "tpm2_pcrextend: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `tpm2_readpublic -c HANDLE`, as text.
    pub fn readpublic(&mut self, handle: &str) -> String {
        String::from_utf8_lossy(&self.tpm2_tool("tpm2_readpublic", &["-c", handle])).into_owned()
    }

    /// Its state directory.
    pub fn state(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Port pairs handed out by this process so far (tests run in parallel threads;
/// cargo runs test binaries one after another).
static HANDED_OUT: AtomicU16 = AtomicU16::new(0);

/// A port P, never handed out before in this process, such that P and P+1 are
/// both free on loopback right now.
fn free_port_pair() -> Option<u16> {
    // Below the kernel's ephemeral range (32768 and up): libtss2's swtpm TCTI
    // opens a TCP connection per command, and the thousands of TIME-WAIT
    // sockets that leaves behind hold ephemeral ports. Spread processes apart,
    // so a leftover swtpm of an earlier run is unlikely to sit where this one looks.
    let base = 10_000 + (std::process::id() % 400) as u16 * 50;
    let port = base.checked_add(HANDED_OUT.fetch_add(2, Ordering::SeqCst))?;
    let first = TcpListener::bind(("127.0.0.1", port)).ok()?;
    let second = TcpListener::bind(("127.0.0.1", port.checked_add(1)?)).ok()?;
    drop((first, second));
    Some(port)
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
