//! `edgeid-bench spiffe --socket DIR/spiffe.sock`: the SPIFFE Workload API of
//! a running `edgeidctl dev`.
//!
//! - Time to first SVID: a new connection, FetchX509SVID, the first message;
//!   once cold (workloadd issues the SVID: key generation and certd's CA
//!   signature through keyd), then warm, back to back.
//! - FetchJWTSVID at each concurrency, one connection per client: the same
//!   audience (workloadd reuses a token while more than half its lifetime is
//!   left, as SPIRE's agent does) and a new audience per request (a keyd
//!   ECDSA signature each); beside keyd's own ECDSA sign over its socket.

use std::time::{Duration, Instant};

use bytes::Bytes;
use edgeid_keyd::api::{KeyPairSpec, SignAlgorithm};
use edgeid_keyd::KeydClient;
use edgeid_workloadapi::spiffe::client;
use edgeid_workloadapi::spiffe::proto::{JwtsvidRequest, X509svidRequest};

use crate::{gather, micros, summarize, through_socket, Args, Measured};

/// Fresh connections timed for the warm time to first SVID.
const WARM_CONNECTIONS: usize = 200;

pub async fn bench(args: &Args) -> Result<(), String> {
    let socket = args
        .socket
        .clone()
        .ok_or("spiffe needs --socket DIR/spiffe.sock of a running `edgeidctl dev --dir DIR`")?;
    let endpoint = socket.display().to_string();
    let keyd_socket = socket
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join("keyd.sock");

    // Time to first SVID.
    let first = first_svid(&endpoint).await?;
    let mut warm = Vec::with_capacity(WARM_CONNECTIONS);
    for _ in 0..WARM_CONNECTIONS {
        warm.push(first_svid(&endpoint).await?);
    }
    let warm_total: Duration = warm.iter().sum();
    let w = summarize(warm, warm_total.as_secs().max(1));
    println!("time to first X.509-SVID on a fresh connection ({endpoint}):");
    println!("| | p50 | p99 |");
    println!("|---|---|---|");
    println!(
        "| cold (issues the SVID), once | {:.1} ms | |",
        first.as_secs_f64() * 1e3
    );
    println!(
        "| warm, {WARM_CONNECTIONS} connections one after another | {:.0} µs | {:.0} µs |",
        micros(w.p50),
        micros(w.p99)
    );
    println!();

    // FetchJWTSVID, beside keyd's ECDSA.
    let keyd = KeydClient::new(&keyd_socket);
    let key = keyd
        .create_key_pair("bench/spiffe-ec", KeyPairSpec::EcP256)
        .await
        .map_err(|e| format!("keyd at {}: {e}", keyd_socket.display()))?;
    let keyd_body = serde_json::json!({
        "handle": key.0,
        "algorithm": SignAlgorithm::EcdsaSha256,
        "data": edgeid_common::encoding::to_base64(&[7u8; 32]),
    })
    .to_string();
    // The two-hop ECDSA floor (issue 22): a relay in front of the signature,
    // as workloadd is in front of keyd. Its client is the floor's blocking
    // loop; FetchJWTSVID's is tonic's, which costs the client more.
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let floor = crate::floor::FloorServer::start(dir.path(), crate::Op::Ecdsa)?;
    let two_hops = crate::floor::FloorServer::relay(&floor)?;
    println!("FetchJWTSVID, {} s per run:", args.seconds);
    println!("| concurrency | same audience req/s | p50 | p99 | new audience req/s | p50 | p99 | two-hop ecdsa floor req/s | new/floor | keyd ecdsa req/s | p50 | p99 |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &n in &args.concurrency {
        let same = fetch_jwts(&endpoint, n, args.seconds, false).await?;
        let fresh = fetch_jwts(&endpoint, n, args.seconds, true).await?;
        let k = through_socket(
            &keyd_socket,
            "/v1/sign",
            Bytes::from(keyd_body.clone()),
            n,
            args.seconds,
        )
        .await?;
        let f = two_hops.measure(n, args.seconds)?;
        println!(
            "| {n} | {:.0} | {:.0} µs | {:.0} µs | {:.0} | {:.0} µs | {:.0} µs | {:.0} | {:.2} | {:.0} | {:.0} µs | {:.0} µs |",
            same.rate, micros(same.p50), micros(same.p99),
            fresh.rate, micros(fresh.p50), micros(fresh.p99),
            f.rate, fresh.rate / f.rate,
            k.rate, micros(k.p50), micros(k.p99)
        );
    }
    let _ = keyd.delete_key_pair("bench/spiffe-ec").await;
    Ok(())
}

/// Connect, FetchX509SVID, first message: how long.
async fn first_svid(endpoint: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let mut c = client::connect(endpoint)
        .await
        .map_err(|e| format!("{endpoint}: {e}"))?;
    let mut stream = c
        .fetch_x509svid(X509svidRequest {})
        .await
        .map_err(|e| format!("FetchX509SVID: {e}"))?
        .into_inner();
    let first = stream
        .message()
        .await
        .map_err(|e| format!("FetchX509SVID: {e}"))?;
    if first.is_none_or(|m| m.svids.is_empty()) {
        return Err("FetchX509SVID sent no SVID".into());
    }
    Ok(started.elapsed())
}

/// `n` clients, each on its own connection, FetchJWTSVID back to back.
async fn fetch_jwts(
    endpoint: &str,
    n: usize,
    seconds: u64,
    fresh: bool,
) -> Result<Measured, String> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut c = client::connect(endpoint)
            .await
            .map_err(|e| format!("{endpoint}: {e}"))?;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(100_000);
            let mut k = 0u64;
            while Instant::now() < deadline {
                let audience = if fresh {
                    k += 1;
                    format!("bench-{i}-{k}")
                } else {
                    "bench".to_owned()
                };
                let started = Instant::now();
                c.fetch_jwtsvid(JwtsvidRequest {
                    audience: vec![audience],
                    spiffe_id: String::new(),
                })
                .await
                .map_err(|e| format!("FetchJWTSVID: {e}"))?;
                latencies.push(started.elapsed());
            }
            Ok::<_, String>(latencies)
        }));
    }
    gather(tasks, seconds).await
}
