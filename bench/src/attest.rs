//! `edgeid-bench attest`: keyd's TPM attestation on a swtpm — quotes of
//! sha256:0-7,10 and TPM2_Certify of a TPM key, through the socket — beside
//! the same TPM2_Quote done with raw tss-esapi in this process; then how
//! long keyd takes to open a software store whose master key is sealed to
//! sha256:0,7 (connect, load, policy session, unseal).

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgeid_common::authz::Admins;
use edgeid_keyd::api::KeyPairSpec;
use edgeid_keyd::config::MasterKey;
use edgeid_keyd::{KeydClient, KeydConfig};

use crate::{micros, summarize, through_socket, wait_ready, Args, KeydProcess, SwtpmProcess};

/// The PCRs every quote here covers.
const PCRS: [u32; 9] = [0, 1, 2, 3, 4, 5, 6, 7, 10];

pub async fn bench(args: &Args, dir: &Path) -> Result<(), String> {
    let tpm = SwtpmProcess::start(dir)?;
    let socket = dir.join("keyd.sock");
    let keyd = KeydProcess::start(dir, &socket, &tpm.keyd_config())?;
    let client = KeydClient::new(&socket);
    wait_ready(&client).await?;
    let key = client
        .create_key_pair("bench/ec", KeyPairSpec::EcP256)
        .await
        .map_err(|e| e.to_string())?;
    // Made once, before the clock runs.
    client.tpm_ak().await.map_err(|e| e.to_string())?;
    let nonce = edgeid_common::encoding::to_base64(&[9u8; 16]);
    let quote = serde_json::json!({ "nonce": nonce, "pcrs": { "sha256": PCRS } }).to_string();
    let certify = serde_json::json!({ "handle": key.0, "nonce": nonce }).to_string();
    println!("swtpm ({}); {} s per run", tpm.tcti(), args.seconds);
    println!("| operation | concurrency | through keyd req/s | p50 | p99 |");
    println!("|---|---|---|---|---|");
    for (name, path, body) in [
        ("quote sha256:0-7,10", "/v1/tpm/quote", &quote),
        ("certify ecdsa-p256", "/v1/tpm/certify", &certify),
    ] {
        for &n in &args.concurrency {
            let m =
                through_socket(&socket, path, Bytes::from(body.clone()), n, args.seconds).await?;
            println!(
                "| {name} | {n} | {:.0} | {:.0} µs | {:.0} µs |",
                m.rate,
                micros(m.p50),
                micros(m.p99)
            );
        }
    }
    drop(keyd);

    let raw = raw_quote(&tpm, args.seconds)?;
    println!(
        "raw tss-esapi TPM2_Quote + PCR read, concurrency 1: {:.0} ops/s, p50 {:.0} µs, p99 {:.0} µs",
        raw.rate,
        micros(raw.p50),
        micros(raw.p99)
    );

    let mut config = KeydConfig::with_dirs(
        &dir.join("sealed-state"),
        &dir.join("sealed.sock"),
        &dir.join("sealed-master.key"),
    );
    config.tpm = Some(edgeid_keyd::config::TpmConfig {
        tcti: tpm.tcti(),
        primary_handle: 0x8100_0001,
        owner_auth_file: None,
        loaded_keys: 2,
        auth_key_file: dir.join("tpm-auth.key"),
        event_logs: Default::default(),
    });
    config.software.master_key = MasterKey::Tpm;
    config.software.seal_pcrs = [("sha256".to_owned(), vec![0, 7])].into();
    sealed_opens(&config, "sealed to sha256:0,7").await?;
    // Sealed to the TPM alone (no PCR policy), in a store of its own.
    config.state_dir = dir.join("tpm-only-state");
    config.software.seal_pcrs = Default::default();
    sealed_opens(&config, "sealed to the TPM alone").await
}

/// Opens keyd 21 times on `config`: the first seals a new master key, the
/// others unseal it, as a start after a reboot does.
async fn sealed_opens(config: &KeydConfig, what: &str) -> Result<(), String> {
    let mut opens = Vec::new();
    for i in 0..21 {
        let started = Instant::now();
        let keyd = edgeid_keyd::Keyd::open(config, Admins::root_and_self())
            .await
            .map_err(|e| e.to_string())?;
        let took = started.elapsed();
        drop(keyd);
        if i == 0 {
            println!(
                "first open, sealing a new master key ({what}): {:.1} ms",
                ms(took)
            );
        } else {
            opens.push(took);
        }
    }
    opens.sort_unstable();
    println!(
        "open with the master key {what} ({} runs): p50 {:.1} ms, max {:.1} ms",
        opens.len(),
        ms(opens[opens.len() / 2]),
        ms(opens[opens.len() - 1])
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// What keyd does per quote, straight on tss-esapi: TPM2_Quote with a key
/// of keyd's AK template under the same storage key, then TPM2_PCR_Read.
fn raw_quote(tpm: &SwtpmProcess, seconds: u64) -> Result<crate::Measured, String> {
    use tss_esapi::abstraction::pcr::read_all;
    use tss_esapi::interface_types::algorithm::HashingAlgorithm;
    use tss_esapi::structures::{Data, PcrSelectionListBuilder, PcrSlot, SignatureScheme};

    let err = |e: tss_esapi::Error| e.to_string();
    let (mut ctx, primary) = tpm.raw()?;
    let template = edgeid_keyd::backend::tpm::ak_template().map_err(|e| e.to_string())?;
    let created = ctx
        .create(primary, template, None, None, None, None)
        .map_err(err)?;
    let ak = ctx
        .load(primary, created.out_private, created.out_public)
        .map_err(err)?;
    let slots: Vec<PcrSlot> = PCRS
        .iter()
        .map(|p| PcrSlot::try_from(1u32 << p))
        .collect::<Result<_, _>>()
        .map_err(err)?;
    let selection = PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(err)?;
    let nonce = Data::try_from(vec![9u8; 16]).map_err(err)?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut latencies = Vec::new();
    while Instant::now() < deadline {
        let started = Instant::now();
        std::hint::black_box(
            ctx.quote(ak, nonce.clone(), SignatureScheme::Null, selection.clone())
                .map_err(err)?,
        );
        std::hint::black_box(
            ctx.execute_without_session(|c| read_all(c, selection.clone()))
                .map_err(err)?,
        );
        latencies.push(started.elapsed());
    }
    let _ = ctx.flush_context(ak.into());
    Ok(summarize(latencies, seconds))
}
