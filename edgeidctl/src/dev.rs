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
                    labels: Default::default(),
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
                    // Beside the software store's master key, in dev mode's secrets.
                    auth_key_file: config
                        .software
                        .master_key_file
                        .with_file_name("keyd-tpm-auth.key"),
                    event_logs: Default::default(),
                });
                "tpm"
            }
        }
    }
}

/// Starts the suite under `dir` and runs it until SIGINT / SIGTERM.
pub async fn run(
    dir: &Path,
    modules: &[String],
    trust_domain: &str,
    backend: &BackendArgs,
) -> Result<(), String> {
    let dir = absolute(dir)?;
    edgeid_common::fs::ensure_private_dir(&dir)
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
    let mut keyd = tokio::spawn(edgeid_keyd::run(keyd_config, wait_for(stop_rx.clone())));

    // Ready means answering: wait for health on every socket.
    let keyd_client = KeydClient::new(&keyd_socket);
    let health = ready("keyd", &mut keyd, started, 10, || keyd_client.health()).await?;

    // certd on the local CA (its key in the same keyd store), answering once
    // the device CA exists.
    let certd_socket = dir.join("certd.sock");
    let mut certd_config =
        edgeid_certd::CertdConfig::with_dirs(&dir.join("certd"), &certd_socket, &keyd_socket);
    // aziot-edged's edge CA, as `iotedge config apply` sets up its quickstart.
    certd_config.issuance.insert(
        "aziot-edged-ca".into(),
        edgeid_certd::config::IssuanceConfig {
            method: edgeid_certd::api::IssuerKind::SelfSigned,
            expiry_days: Some(90),
            ca: true,
            key_id: None,
            subject: None,
            renewal: None,
            est_url: None,
        },
    );
    let mut certd = tokio::spawn(edgeid_certd::run(certd_config, wait_for(stop_rx.clone())));
    let certd_client = edgeid_certd::CertdClient::new(&certd_socket);
    let trust_bundle = ready("certd", &mut certd, started, 20, || {
        certd_client.trust_bundle()
    })
    .await?;
    let bundle_file = dir.join("trust-bundle.pem");
    edgeid_common::fs::write_atomic(&bundle_file, trust_bundle.as_bytes(), 0o644)
        .map_err(|e| format!("cannot write {}: {e}", bundle_file.display()))?;

    // identityd, provisioned locally (no cloud): the device identity is a
    // certificate from the local CA; each declared module gets an identity.
    let identityd_socket = dir.join("identityd.sock");
    let identityd_config = edgeid_identityd::IdentitydConfig::local(
        &dir.join("identityd"),
        &identityd_socket,
        &keyd_socket,
        &certd_socket,
        &device_id(),
    );
    let mut identityd = tokio::spawn(edgeid_identityd::run(
        identityd_config,
        wait_for(stop_rx.clone()),
    ));
    let identityd_client = edgeid_identityd::IdentitydClient::new(&identityd_socket);
    // Ready once provisioned (asking for the device before that would only
    // log a 503 in identityd).
    ready("identityd", &mut identityd, started, 20, || async {
        match identityd_client.provisioning().await {
            Ok(p) if p.state == edgeid_identityd::api::ProvisioningState::Provisioned => Ok(()),
            Ok(p) => Err(format!(
                "not provisioned yet ({})",
                p.last_error.unwrap_or_else(|| "in progress".into())
            )),
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    let device = identityd_client
        .device()
        .await
        .map_err(|e| format!("identityd: {e}"))?;
    let mut declared = vec!["dev-module".to_owned()];
    declared.extend(modules.iter().cloned());
    let mut identities = Vec::new();
    for module in &declared {
        identities.push(
            identityd_client
                .create_module(module)
                .await
                .map_err(|e| format!("module identity '{module}': {e}"))?,
        );
    }

    // workloadd: `dev-module` is whoever runs dev mode (a module's code run
    // by the same user in a shell works unchanged).
    let workload_socket = dir.join("workload.sock");
    let mut workload_config = edgeid_workloadapi::WorkloadConfig::with_sockets(
        &workload_socket,
        &identityd_socket,
        &keyd_socket,
        &certd_socket,
    );
    workload_config.modules = vec![edgeid_workloadapi::config::ModuleConfig {
        name: "dev-module".into(),
        uid: edgeid_common::current_uid(),
    }];
    // Every client of dev mode is the developer's uid (its sockets are
    // 0600): a per-uid share would only cut that one user to a quarter of
    // the cap (edgeid-bench load holds 1000 connections).
    workload_config.server.max_connections_per_caller =
        Some(workload_config.server.max_connections);
    // A developer's module serves on this machine: it may have server
    // certificates for the loopback names as well as its own.
    workload_config.certificates.server_names.insert(
        "dev-module".into(),
        ["localhost", "dev-module.local", "127.0.0.1", "::1"]
            .map(String::from)
            .to_vec(),
    );
    let spiffe_socket = dir.join("spiffe.sock");
    workload_config.spiffe = Some(edgeid_workloadapi::config::SpiffeConfig::new(
        trust_domain,
        &spiffe_socket,
    ));
    workload_config
        .validate()
        .map_err(|e| format!("workloadd: {e}"))?;
    let mut workload = tokio::spawn(edgeid_workloadapi::run(
        workload_config,
        wait_for(stop_rx.clone()),
    ));
    let workload_client = edgeid_common::client::UdsClient::new(&workload_socket);
    ready("workloadd", &mut workload, started, 20, || {
        workload_client.get::<edgeid_common::server::Health>("/health")
    })
    .await?;

    outln!(
        "edgeid {} dev mode in {} (ready in {} ms)",
        health.version,
        dir.display(),
        started.elapsed().as_millis()
    );
    outln!(
        "  keyd       {}   every key in: {backend_name} ({})",
        keyd_socket.display(),
        health.status
    );
    for (name, state) in health.backends.iter().filter(|(_, s)| s.as_str() != "ok") {
        outln!("             {name}: {state}");
    }
    outln!(
        "  certd      {}   local CA; its certificate in {}",
        certd_socket.display(),
        bundle_file.display()
    );
    outln!(
        "  identityd  {}   local provisioning: device '{}' on '{}'",
        identityd_socket.display(),
        device.device_id,
        device.hub
    );
    outln!(
        "  workload   {}   IoT Edge workload API; dev-module is uid {}",
        workload_socket.display(),
        edgeid_common::current_uid()
    );
    outln!(
        "  spiffe     {}   SPIFFE Workload API; dev-module is spiffe://{trust_domain}/{}/dev-module",
        spiffe_socket.display(),
        device.device_id
    );
    let aziot = link_aziot_sockets(&dir)?;
    outln!(
        "  aziot      {}/{{keyd,certd,identityd,tpmd}}.sock   the same daemons, for Azure IoT Identity Service clients",
        aziot.display()
    );
    outln!("  modules    {}", declared.join(", "));
    if declared.len() > 1 {
        outln!("             (the others have identities in identityd; only dev-module is mapped to a caller)");
    }
    outln!();
    outln!("Try it:");
    outln!(
        "  curl -s --unix-socket {} http://localhost/v1/health",
        keyd_socket.display()
    );
    outln!("  curl -s --unix-socket {} -d '{{\"id\":\"device-id\",\"spec\":\"ec-p256\"}}' http://localhost/v1/keypair", keyd_socket.display());
    outln!("  curl -s --unix-socket {} -d '{{\"id\":\"web\",\"issuer\":\"local-ca\",\"profile\":\"server\",\"key_id\":\"web\",\"san\":{{\"dns\":[\"localhost\"]}}}}' http://localhost/v1/certificates", certd_socket.display());
    outln!("  curl -s --unix-socket {} -X POST http://localhost/v1/identities/modules/dev-module/token", identityd_socket.display());
    outln!(
        "  curl -s --unix-socket {} 'http://localhost/trust-bundle?api-version={}'",
        workload_socket.display(),
        edgeid_workloadapi::api::CURRENT_API_VERSION
    );
    outln!(
        "  curl -s --unix-socket {} 'http://localhost/identities/identity?api-version=2020-09-01'",
        aziot.join("identityd.sock").display()
    );
    outln!();
    outln!("A module's environment (as IoT Edge sets it, and the SPIFFE endpoint):");
    let dev_module = &identities[0];
    for (name, value) in [
        (
            "IOTEDGE_WORKLOADURI",
            format!("unix://{}", workload_socket.display()),
        ),
        ("IOTEDGE_MODULEID", dev_module.module_id.clone()),
        (
            "IOTEDGE_MODULEGENERATIONID",
            dev_module.generation_id.clone(),
        ),
        ("IOTEDGE_DEVICEID", device.device_id.clone()),
        ("IOTEDGE_IOTHUBHOSTNAME", device.hub.clone()),
        ("IOTEDGE_GATEWAYHOSTNAME", device_id()),
        (
            "IOTEDGE_APIVERSION",
            edgeid_workloadapi::api::CURRENT_API_VERSION.into(),
        ),
        ("IOTEDGE_AUTHSCHEME", "sasToken".into()),
        (
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix://{}", spiffe_socket.display()),
        ),
    ] {
        outln!("export {name}={value}");
    }
    outln!();
    outln!("export EDGEID_KEYD_SOCKET={}", keyd_socket.display());
    outln!("export EDGEID_CERTD_SOCKET={}", certd_socket.display());
    outln!(
        "export EDGEID_IDENTITYD_SOCKET={}",
        identityd_socket.display()
    );
    outln!();
    outln!("Running; Ctrl-C stops everything.");

    edgeid_common::server::shutdown_signal().await;
    let _ = stop_tx.send(true);
    // Callers first, keyd last.
    stopped("workloadd", workload).await?;
    stopped("identityd", identityd).await?;
    stopped("certd", certd).await?;
    stopped("keyd", keyd).await?;
    outln!("stopped; state kept in {}", dir.display());
    Ok(())
}

/// Waits until `probe` answers (the daemon is serving), or says why not: the
/// daemon's task ended with an error, or `limit_secs` passed since `started`.
async fn ready<T, E, P, F, C>(
    name: &str,
    task: &mut tokio::task::JoinHandle<Result<(), E>>,
    started: Instant,
    limit_secs: u64,
    probe: P,
) -> Result<T, String>
where
    E: std::fmt::Display,
    P: Fn() -> F,
    F: std::future::Future<Output = Result<T, C>>,
    C: std::fmt::Display,
{
    loop {
        if task.is_finished() {
            return Err(match task.await {
                Ok(Err(e)) => format!("{name} failed to start: {e}"),
                _ => format!("{name} stopped during start-up"),
            });
        }
        match probe().await {
            Ok(answer) => return Ok(answer),
            Err(_) if started.elapsed() < Duration::from_secs(limit_secs) => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => return Err(format!("{name} does not answer: {e}")),
        }
    }
}

/// Waits for a daemon's task; its error, if it stopped with one.
async fn stopped<E: std::fmt::Display>(
    name: &str,
    task: tokio::task::JoinHandle<Result<(), E>>,
) -> Result<(), String> {
    match task.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{name}: {e}")),
        Err(e) => Err(format!("{name} task: {e}")),
    }
}

/// The dev device's id: the host name where it is a valid device id.
fn device_id() -> String {
    crate::daemons::hostname()
        .ok()
        .filter(|h| edgeid_identityd::names::check_device_id(h).is_ok())
        .unwrap_or_else(|| "dev-device".into())
}

async fn wait_for(mut stop: tokio::sync::watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// `DIR/aziot/{keyd,certd,identityd,tpmd}.sock`: links to the daemons'
/// sockets under the names aziot clients use (`/run/aziot/*.sock` on a
/// device); tpmd's is keyd's, which holds the TPM.
fn link_aziot_sockets(dir: &Path) -> Result<PathBuf, String> {
    let aziot = dir.join("aziot");
    edgeid_common::fs::ensure_private_dir(&aziot)
        .map_err(|e| format!("cannot use {}: {e}", aziot.display()))?;
    for (name, target) in [
        ("keyd.sock", "keyd.sock"),
        ("certd.sock", "certd.sock"),
        ("identityd.sock", "identityd.sock"),
        ("tpmd.sock", "keyd.sock"),
    ] {
        let link = aziot.join(name);
        match std::fs::symlink_metadata(&link) {
            Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(&link)
                .map_err(|e| format!("cannot replace {}: {e}", link.display()))?,
            Ok(_) => {
                return Err(format!(
                    "{} exists and is not a link; remove it",
                    link.display()
                ))
            }
            Err(_) => {}
        }
        std::os::unix::fs::symlink(Path::new("..").join(target), &link)
            .map_err(|e| format!("cannot link {}: {e}", link.display()))?;
    }
    Ok(aziot)
}

fn absolute(dir: &Path) -> Result<PathBuf, String> {
    if dir.is_absolute() {
        return Ok(dir.to_owned());
    }
    std::env::current_dir()
        .map(|cwd| cwd.join(dir))
        .map_err(|e| format!("cannot resolve {}: {e}", dir.display()))
}
