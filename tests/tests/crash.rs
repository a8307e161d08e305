//! certd and identityd killed (SIGKILL) at random moments while they issue
//! certificates, provision the device and create module identities. After
//! each restart: every stored certificate is whole, chains to the local CA
//! and is the certificate of the key keyd holds under its key id; the device
//! is provisioned again with a certificate that does the same; every module
//! listed has working credentials; everything a 2xx confirmed is still
//! there; no file is empty. At the end, `openssl verify` checks every
//! certificate, and every key left behind by a killed issuance gets its
//! certificate when asked again: nothing is stuck.
//!
//! `EDGEID_CRASH_ROUNDS` sets the rounds (default 40).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edgeid_certd::CertdClient;
use edgeid_identityd::api::ProvisioningState;
use edgeid_identityd::IdentitydClient;
use edgeid_keyd::KeydClient;
use edgeid_testkit::certd::local_client;
use edgeid_testkit::faults::{files_under, rounds, Rng};
use edgeid_testkit::{openssl, KeydFixture};
use x509_parser::prelude::*;

/// A daemon binary run with a config file, killed and started again at will.
struct Daemon {
    binary: PathBuf,
    config: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    fn new(name: &str, config: PathBuf) -> Self {
        Self {
            binary: edgeid_testkit::process::build_binary(&format!("edgeid-{name}")),
            config,
            child: None,
        }
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.binary)
            .arg("--config")
            .arg(&self.config)
            .env("EDGEID_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.binary.display()));
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

fn identityd_config(dir: &Path, device_id: &str) -> String {
    let d = dir.display();
    format!(
        "state_dir = \"{d}/identityd\"\nkeyd_socket = \"{d}/keyd.sock\"\ncertd_socket = \"{d}/certd.sock\"\n\
         [server]\nsocket = \"{d}/identityd.sock\"\n\
         [provisioning]\nsource = \"local\"\ndevice_id = \"{device_id}\"\n"
    )
}

async fn wait_until<F, Fut>(what: &str, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready().await {
        assert!(Instant::now() < deadline, "{what} within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The leaf of a chain: its DER and the DER of its SubjectPublicKeyInfo.
fn leaf(chain: &str) -> (Vec<u8>, Vec<u8>) {
    let blocks = ::pem::parse_many(chain).expect("the chain is PEM");
    let der = blocks.first().expect("a leaf").contents().to_vec();
    let (_, cert) = X509Certificate::from_der(&der).expect("the leaf parses");
    let spki = cert.public_key().raw.to_vec();
    (der, spki)
}

/// Checks one stored certificate: whole, signed by the CA, and the
/// certificate of the key keyd holds under its key id.
async fn check_certificate(certd: &CertdClient, keyd: &KeydClient, ca_der: &[u8], id: &str) {
    let info = certd
        .get(id)
        .await
        .unwrap_or_else(|e| panic!("{id}: listed but not readable: {e}"));
    let (der, spki) = leaf(&info.pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let (_, ca) = X509Certificate::from_der(ca_der).unwrap();
    cert.verify_signature(Some(ca.public_key()))
        .unwrap_or_else(|e| panic!("{id}: not signed by the local CA: {e:?}"));
    let key_id = info
        .key_id
        .clone()
        .unwrap_or_else(|| panic!("{id}: no key id"));
    let handle = keyd
        .key_pair(&key_id)
        .await
        .unwrap_or_else(|e| panic!("{id}: its key '{key_id}' is not in keyd: {e}"));
    let public = keyd.public_key(&handle).await.unwrap();
    assert_eq!(
        ::pem::parse(public.pem).unwrap().contents(),
        spki.as_slice(),
        "{id}: the certificate is not that of key '{key_id}'"
    );
}

/// No file of a daemon's state is empty (an interrupted write shows as one).
/// The one exception is the temp file of a write SIGKILL interrupted
/// (`.<name>.tmp`, `edgeid_common::fs`): it is never read as state and the
/// next write of that file replaces it.
fn no_empty_files(dir: &Path) {
    for path in files_under(dir) {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with('.') && name.ends_with(".tmp") {
            continue;
        }
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        assert!(len > 0, "{} is empty", path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certd_and_identityd_killed_mid_work_leave_whole_working_state() {
    let rounds = rounds(40);
    eprintln!("crash test: {rounds} rounds");
    let mut rng = Rng::from_clock();

    let tmp = edgeid_testkit::temp_dir();
    let dir = tmp.path();
    let keyd_fixture = KeydFixture::start_in(dir).await;
    let keyd = keyd_fixture.client();
    let certd_toml = dir.join("certd.toml");
    std::fs::write(
        &certd_toml,
        format!(
            "state_dir = \"{d}/certd\"\nkeyd_socket = \"{d}/keyd.sock\"\n[server]\nsocket = \"{d}/certd.sock\"\n[renewal]\nretry_min_secs = 1\nretry_max_secs = 1\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let identityd_toml = dir.join("identityd.toml");
    std::fs::write(&identityd_toml, identityd_config(dir, "crash-start")).unwrap();
    let certd_client = CertdClient::new(dir.join("certd.sock"));
    let identityd_client = IdentitydClient::new(dir.join("identityd.sock"));
    let mut certd = Daemon::new("certd", certd_toml);
    let mut identityd = Daemon::new("identityd", identityd_toml.clone());
    certd.spawn();
    wait_until("certd answers", || async {
        certd_client.health().await.is_ok()
    })
    .await;
    let bundle = certd_client.trust_bundle().await.unwrap();
    let ca_der = ::pem::parse(&bundle).unwrap().contents().to_vec();

    let mut confirmed_certs = BTreeSet::new();
    // The modules confirmed for the device now provisioned.
    let mut confirmed_modules = BTreeSet::new();
    let mut modules_kept = 0;
    let mut kills = (0u32, 0u32);
    for round in 0..rounds {
        // Every other round identityd must provision again: a new device id
        // (whose module identities start empty), and the device certificate
        // gone, so that provisioning issues one. In between, the same device
        // keeps its modules across the kill.
        let device_id = format!("crash-{}", round / 2);
        if round % 2 == 0 {
            identityd.kill();
            match certd_client.delete("device-id").await {
                Ok(()) => {}
                Err(e) if e.status() == Some(http::StatusCode::NOT_FOUND) => {}
                Err(e) => panic!("round {round}: {e}"),
            }
            std::fs::write(&identityd_toml, identityd_config(dir, &device_id)).unwrap();
            confirmed_modules.clear();
        }
        if !identityd.is_running() {
            identityd.spawn();
        }

        // Work in flight: issuances on certd, module creations on identityd
        // (tried until identityd has provisioned and takes them, or is killed).
        let mut work = Vec::new();
        for i in 0..3 {
            let id = format!("cert-{round}-{i}");
            let client = certd_client.clone();
            work.push(tokio::spawn(async move {
                client
                    .create(&local_client(&id))
                    .await
                    .ok()
                    .map(|_| (true, id))
            }));
            let module = format!("m{round}x{i}");
            let client = identityd_client.clone();
            work.push(tokio::spawn(async move {
                let until = Instant::now() + Duration::from_secs(2);
                while Instant::now() < until {
                    if client.create_module(&module).await.is_ok() {
                        return Some((false, module));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                None
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.below(250))).await;
        match rng.below(3) {
            0 => certd.kill(),
            1 => identityd.kill(),
            _ => {
                certd.kill();
                identityd.kill();
            }
        }
        kills.0 += u32::from(!certd.is_running());
        kills.1 += u32::from(!identityd.is_running());
        for w in work {
            match w.await.unwrap() {
                Some((true, id)) => {
                    confirmed_certs.insert(id);
                }
                Some((false, module)) => {
                    confirmed_modules.insert(module);
                }
                None => {}
            }
        }

        // Back up.
        if !certd.is_running() {
            certd.spawn();
        }
        if !identityd.is_running() {
            identityd.spawn();
        }
        wait_until("certd answers after the kill", || async {
            certd_client.health().await.is_ok()
        })
        .await;
        // Until then it may serve the previous round's identity.
        wait_until("identityd provisions the new device id", || async {
            identityd_client
                .provisioning()
                .await
                .is_ok_and(|p| p.state == ProvisioningState::Provisioned)
                && identityd_client
                    .device()
                    .await
                    .is_ok_and(|d| d.device_id == device_id)
        })
        .await;

        no_empty_files(&dir.join("certd"));
        no_empty_files(&dir.join("identityd"));
        let stored: BTreeSet<String> = certd_client.list().await.unwrap().into_iter().collect();
        let lost: Vec<_> = confirmed_certs.difference(&stored).collect();
        assert!(
            lost.is_empty(),
            "round {round}: confirmed certificates lost: {lost:?}"
        );
        for id in &stored {
            if id.starts_with(&format!("cert-{round}-")) || id == "device-id" {
                check_certificate(&certd_client, &keyd, &ca_der, id).await;
            }
        }
        let device = identityd_client.device().await.unwrap();
        assert_eq!(device.device_id, device_id, "round {round}");
        let cert_id = device
            .auth
            .cert_id
            .expect("a local device has a certificate");
        check_certificate(&certd_client, &keyd, &ca_der, &cert_id).await;
        let listed: BTreeSet<String> = identityd_client
            .modules()
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.module_id)
            .collect();
        let lost: Vec<_> = confirmed_modules.difference(&listed).collect();
        assert!(
            lost.is_empty(),
            "round {round}: confirmed modules lost: {lost:?}"
        );
        modules_kept += confirmed_modules.len();
        for module in &listed {
            identityd_client
                .module_token(module, None)
                .await
                .unwrap_or_else(|e| {
                    panic!("round {round}: module {module} has no working key: {e}")
                });
        }
    }
    eprintln!(
        "{rounds} rounds: certd killed {} times, identityd {} times; {} certificates confirmed and kept, {} confirmed modules found after a kill",
        kills.0,
        kills.1,
        confirmed_certs.len(),
        modules_kept
    );

    // Every certificate, checked by openssl too.
    let stored = certd_client.list().await.unwrap();
    for id in &stored {
        let info = certd_client.get(id).await.unwrap();
        openssl::verify_chain(&bundle, &info.pem, "sslclient")
            .unwrap_or_else(|e| panic!("{id}: openssl verify: {e}"));
    }
    // A key whose issuance was killed is not stuck: asked again, its
    // certificate is issued, for that very key.
    let stored: BTreeSet<String> = stored.into_iter().collect();
    let orphans: Vec<String> = keyd
        .list_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .filter(|id| id.starts_with("cert-") && !stored.contains(id))
        .collect();
    for id in &orphans {
        let before = keyd
            .public_key(&keyd.key_pair(id).await.unwrap())
            .await
            .unwrap();
        let chain = certd_client.create(&local_client(id)).await.unwrap();
        assert_eq!(
            leaf(&chain).1,
            ::pem::parse(before.pem).unwrap().contents(),
            "{id}: issued again for the key it had"
        );
    }
    eprintln!(
        "{} keys of killed issuances got their certificates on request",
        orphans.len()
    );
}
