//! Crash safety: keyd is killed (SIGKILL) at random points while keys are
//! being created, hundreds of times, and after each restart every key is
//! either whole and working or absent: every key keyd lists loads and signs
//! (checked with its public key by openssl), every key whose creation was
//! answered 2xx before the kill is there, and no key file is empty. A
//! leftover `.<name>.tmp` from an interrupted write is the only debris
//! allowed, and it is never taken for a key.
//!
//! Rounds: `EDGEID_CRASH_ROUNDS` (default 150).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use edgeid_keyd::api::{KeyPairSpec, SignAlgorithm, SymmetricKeyType};
use edgeid_testkit::faults::{files_under, rounds, Rng};
use edgeid_testkit::openssl::assert_verifies;
use edgeid_testkit::KeydProcess;

/// Eight creations in flight, half key pairs, half HMAC keys, ids
/// `<prefix>/k<i>`: each answers (id, is a pair, answered 2xx).
fn creations(
    client: &Arc<edgeid_keyd::KeydClient>,
    prefix: &str,
) -> Vec<tokio::task::JoinHandle<(String, bool, bool)>> {
    (0..8)
        .map(|i| {
            let client = client.clone();
            let id = format!("{prefix}/k{i}");
            tokio::spawn(async move {
                let pair = i % 2 == 0;
                let ok = if pair {
                    client
                        .create_key_pair(&id, KeyPairSpec::EcP256)
                        .await
                        .is_ok()
                } else {
                    client
                        .create_key(&id, SymmetricKeyType::HmacSha256, None)
                        .await
                        .is_ok()
                };
                (id, pair, ok)
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_survive_sigkill_whole_or_not_at_all() {
    let rounds = rounds(150);
    let mut rng = Rng::from_clock();
    let dir = edgeid_testkit::temp_dir();
    let state = dir.path().join("state");
    let mut keyd = KeydProcess::start(
        Path::new(env!("CARGO_BIN_EXE_edgeid-keyd")),
        dir.path(),
        "",
        vec![],
    )
    .await;
    // How long a round of eight creations takes on this machine, now: the
    // kills are spread over twice that, so they land both mid-write and after
    // on a loaded CI machine (slow fsyncs) as on an idle one. A fixed window
    // once let every kill land before any creation finished.
    let window_us = {
        let client = Arc::new(keyd.client());
        let started = std::time::Instant::now();
        let tasks = creations(&client, "calibrate");
        for t in tasks {
            assert!(t.await.unwrap().2, "keyd creates keys before any kill");
        }
        let round_us = started.elapsed().as_micros() as u64;
        (2 * round_us).clamp(20_000, 2_000_000)
    };
    let mut confirmed: Vec<(String, bool)> = Vec::new();
    let mut killed_mid_write = 0usize;
    for round in 0..rounds {
        let client = Arc::new(keyd.client());
        let tasks = creations(&client, &format!("r{round}"));
        tokio::time::sleep(Duration::from_micros(rng.below(window_us))).await;
        keyd.kill_and_restart().await;
        let mut answered = 0;
        for t in tasks {
            let (id, pair, ok) = t.await.unwrap();
            if ok {
                answered += 1;
                confirmed.push((id, pair));
            }
        }
        if answered < 8 {
            killed_mid_write += 1;
        }

        // After the restart: every listed key is whole and works.
        let client = keyd.client();
        let listed = client.list_keys().await.expect("keyd lists its keys");
        for key in listed
            .iter()
            .filter(|k| k.id.starts_with(&format!("r{round}/")))
        {
            if key.kind == "ec-p256" {
                let handle = client.key_pair(&key.id).await.unwrap_or_else(|e| {
                    panic!(
                        "round {round}: listed key pair {} does not load: {e}",
                        key.id
                    )
                });
                let pem = client.public_key(&handle).await.unwrap().pem;
                let sig = client
                    .sign(
                        &handle,
                        SignAlgorithm::EcdsaSha256,
                        b"after the crash",
                        false,
                    )
                    .await
                    .unwrap();
                assert_verifies(SignAlgorithm::EcdsaSha256, &pem, b"after the crash", &sig);
            } else {
                let handle = client.key(&key.id).await.unwrap_or_else(|e| {
                    panic!("round {round}: listed key {} does not load: {e}", key.id)
                });
                let mac = client
                    .sign(&handle, SignAlgorithm::HmacSha256, b"x", false)
                    .await
                    .unwrap();
                assert_eq!(mac.len(), 32);
            }
        }
        // Nothing empty, and debris is only an interrupted write's temp file.
        for f in files_under(&state) {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            let len = std::fs::metadata(&f).unwrap().len();
            if name.starts_with('.') && name.ends_with(".tmp") {
                continue;
            }
            assert!(len > 0, "round {round}: {} is empty", f.display());
        }
        assert!(
            listed.iter().all(|k| !k.id.contains(".tmp")),
            "a temp file was taken for a key"
        );
    }

    // Every creation keyd confirmed before a kill survived all the kills after it.
    let client = keyd.client();
    let listed: std::collections::HashSet<String> = client
        .list_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    for (id, _) in &confirmed {
        assert!(listed.contains(id), "{id} was confirmed, then lost");
    }
    println!(
        "{rounds} kills within {window_us} us, {killed_mid_write} with creations still in flight, {} keys confirmed and kept",
        confirmed.len()
    );
    assert!(
        killed_mid_write > 0 && !confirmed.is_empty(),
        "kills must land both during and after writes for the test to prove anything"
    );
}
