//! `edgeidctl dev --dir DIR`: every daemon in this process, on software keys,
//! with sockets and state under DIR, until Ctrl-C.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edgeid_keyd::backend::BackendKind;
use edgeid_keyd::config::{Pkcs11Config, TpmConfig};
use edgeid_keyd::{KeydClient, KeydConfig};

/// Where dev mode keeps every key.
#[derive(clap::Args)]
pub struct BackendArgs {
    /// The key store for every key.
    #[arg(long, value_enum, default_value = "software")]
    backend: DevBackend,
    /// PKCS#11 module (with --backend pkcs11), e.g. /usr/lib/softhsm/libsofthsm2.so.
    #[arg(long, value_name = "PATH", required_if_eq("backend", "pkcs11"))]
    pkcs11_lib: Option<PathBuf>,
    /// Token label (with --backend pkcs11).
    #[arg(long, value_name = "LABEL", required_if_eq("backend", "pkcs11"))]
    token: Option<String>,
    /// File holding the token's user PIN, mode 0600 (with --backend pkcs11).
    #[arg(long, value_name = "FILE", required_if_eq("backend", "pkcs11"))]
    pin_file: Option<PathBuf>,
    /// How to reach the TPM (with --backend tpm), e.g. device:/dev/tpmrm0 or
    /// swtpm:host=127.0.0.1,port=2321.
    #[arg(long, value_name = "TCTI", required_if_eq("backend", "tpm"))]
    tcti: Option<String>,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum DevBackend {
    Software,
    Pkcs11,
    Tpm,
}

impl BackendArgs {
    fn apply(&self, config: &mut KeydConfig) -> &'static str {
        match self.backend {
            DevBackend::Software => "software",
            DevBackend::Pkcs11 => {
                config.backend.default = BackendKind::Pkcs11;
                config.pkcs11 = Some(Pkcs11Config {
                    library: self.pkcs11_lib.clone().unwrap_or_default(),
                    token_label: self.token.clone(),
                    slot: None,
                    pin_file: self.pin_file.clone().unwrap_or_default(),
                    sessions: 8,
                });
                "pkcs11"
            }
            DevBackend::Tpm => {
                config.backend.default = BackendKind::Tpm;
                config.tpm = Some(TpmConfig {
                    tcti: self.tcti.clone().unwrap_or_default(),
                    primary_handle: 0x8100_0001,
                    owner_auth_file: None,
                    loaded_keys: 2,
                });
                "tpm"
            }
        }
    }
}

/// Starts the suite under `dir` and runs it until SIGINT / SIGTERM.
pub async fn run(dir: &Path, modules: &[String], backend: &BackendArgs) -> Result<(), String> {
    let dir = absolute(dir)?;
    edgeid_common::fs::ensure_dir(&dir, 0o700)
        .map_err(|e| format!("cannot use {}: {e}", dir.display()))?;
    let started = Instant::now();

    let keyd_socket = dir.join("keyd.sock");
    let mut keyd_config = KeydConfig::with_dirs(
        &dir.join("keyd"),
        &keyd_socket,
        &dir.join("secrets").join("keyd-master.key"),
    );
    let backend_name = backend.apply(&mut keyd_config);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let keyd = tokio::spawn(edgeid_keyd::run(keyd_config, wait_for(stop_rx.clone())));

    // Ready means answering: wait for health on every socket.
    let keyd_client = KeydClient::new(&keyd_socket);
    let health = loop {
        if keyd.is_finished() {
            return match keyd.await {
                Ok(Err(e)) => Err(format!("keyd failed to start: {e}")),
                _ => Err("keyd stopped during start-up".into()),
            };
        }
        match keyd_client.health().await {
            Ok(h) => break h,
            Err(_) if started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => return Err(format!("keyd does not answer: {e}")),
        }
    };

    // certd on the local CA (its key in the same keyd store), answering once
    // the device CA exists.
    let certd_socket = dir.join("certd.sock");
    let certd_config =
        edgeid_certd::CertdConfig::with_dirs(&dir.join("certd"), &certd_socket, &keyd_socket);
    let certd = tokio::spawn(edgeid_certd::run(certd_config, wait_for(stop_rx.clone())));
    let certd_client = edgeid_certd::CertdClient::new(&certd_socket);
    let trust_bundle = loop {
        if certd.is_finished() {
            return match certd.await {
                Ok(Err(e)) => Err(format!("certd failed to start: {e}")),
                _ => Err("certd stopped during start-up".into()),
            };
        }
        match certd_client.trust_bundle().await {
            Ok(pem) => break pem,
            Err(_) if started.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => return Err(format!("certd does not answer: {e}")),
        }
    };
    let bundle_file = dir.join("trust-bundle.pem");
    edgeid_common::fs::write_atomic(&bundle_file, trust_bundle.as_bytes(), 0o644)
        .map_err(|e| format!("cannot write {}: {e}", bundle_file.display()))?;

    println!(
        "edgeid {} dev mode in {} (ready in {} ms)",
        health.version,
        dir.display(),
        started.elapsed().as_millis()
    );
    println!(
        "  keyd       {}   every key in: {backend_name} ({})",
        keyd_socket.display(),
        health.status
    );
    for (name, state) in health.backends.iter().filter(|(_, s)| s.as_str() != "ok") {
        println!("             {name}: {state}");
    }
    println!(
        "  certd      {}   local CA; its certificate in {}",
        certd_socket.display(),
        bundle_file.display()
    );
    println!("  identityd  not built yet (issue 5)");
    println!("  workload   not built yet (issue 6)");
    let mut declared = vec!["dev-module".to_owned()];
    declared.extend(modules.iter().cloned());
    println!(
        "  modules    {} (served once the workload API lands)",
        declared.join(", ")
    );
    println!();
    println!("Try it:");
    println!(
        "  curl -s --unix-socket {} http://localhost/v1/health",
        keyd_socket.display()
    );
    println!("  curl -s --unix-socket {} -d '{{\"id\":\"device-id\",\"spec\":\"ec-p256\"}}' http://localhost/v1/keypair", keyd_socket.display());
    println!("  curl -s --unix-socket {} -d '{{\"id\":\"web\",\"issuer\":\"local-ca\",\"profile\":\"server\",\"key_id\":\"web\",\"san\":{{\"dns\":[\"localhost\"]}}}}' http://localhost/v1/certificates", certd_socket.display());
    println!();
    println!("export EDGEID_KEYD_SOCKET={}", keyd_socket.display());
    println!("export EDGEID_CERTD_SOCKET={}", certd_socket.display());
    println!();
    println!("Running; Ctrl-C stops everything.");

    edgeid_common::server::shutdown_signal().await;
    let _ = stop_tx.send(true);
    let certd_stopped = certd.await;
    match keyd.await {
        Ok(Ok(())) => {
            if let Ok(Err(e)) = certd_stopped {
                return Err(format!("certd: {e}"));
            }
            println!("stopped; state kept in {}", dir.display());
            Ok(())
        }
        Ok(Err(e)) => Err(format!("keyd: {e}")),
        Err(e) => Err(format!("keyd task: {e}")),
    }
}

async fn wait_for(mut stop: tokio::sync::watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

fn absolute(dir: &Path) -> Result<PathBuf, String> {
    if dir.is_absolute() {
        return Ok(dir.to_owned());
    }
    std::env::current_dir()
        .map(|cwd| cwd.join(dir))
        .map_err(|e| format!("cannot resolve {}: {e}", dir.display()))
}
