//! `edgeid-bench keyd`: sign requests through keyd's socket from N concurrent
//! connections, next to the same operation done in-process with the same crypto
//! crate, so the cost of the daemon boundary is visible.
//!
//! Without `--socket`, it starts `edgeid-keyd` (from the same build directory)
//! on a temp dir as a separate process, and also reports keyd's idle RSS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use edgeid_keyd::api::{KeyPairSpec, SignAlgorithm, SymmetricKeyType};
use edgeid_keyd::KeydClient;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

#[derive(Parser)]
#[command(about = "Benchmarks edgeid daemons over their sockets against in-process baselines")]
struct Args {
    /// What to measure.
    #[arg(value_enum, default_value = "keyd")]
    target: Target,
    /// An already running keyd; by default one is started on a temp dir.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Concurrent connections (and in-process threads); repeat for several runs.
    #[arg(long = "concurrency", short = 'c', default_values_t = vec![1, 2, 16])]
    concurrency: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Operations to measure.
    #[arg(long = "op", value_enum, default_values_t = vec![Op::Ecdsa, Op::Hmac])]
    ops: Vec<Op>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Target {
    Keyd,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Op {
    /// ECDSA P-256 sign (SHA-256) of a 32-byte message.
    Ecdsa,
    /// HMAC-SHA256 of a 32-byte message.
    Hmac,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Ecdsa => "ecdsa-p256 sign",
            Op::Hmac => "hmac-sha256 sign",
        })
    }
}

/// Throughput and latency of one run.
struct Measured {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let Target::Keyd = args.target;
    let runtime = edgeid_common::runtime::build().map_err(|e| e.to_string())?;
    runtime.block_on(bench_keyd(&args))
}

async fn bench_keyd(args: &Args) -> Result<(), String> {
    let _dir;
    let mut child = None;
    let socket = match &args.socket {
        Some(s) => s.clone(),
        None => {
            let dir = tempfile::Builder::new()
                .prefix("edgeid-bench-")
                .tempdir_in("/tmp")
                .map_err(|e| e.to_string())?;
            let socket = dir.path().join("keyd.sock");
            child = Some(KeydProcess::start(dir.path(), &socket)?);
            _dir = dir;
            socket
        }
    };
    let client = KeydClient::new(&socket);
    wait_ready(&client).await?;
    if let Some(c) = &child {
        println!(
            "keyd idle RSS: {} KiB (pid {})",
            c.rss_kib().unwrap_or(0),
            c.child.id()
        );
    }

    let ec = client
        .create_key_pair("bench/ec", KeyPairSpec::EcP256)
        .await
        .map_err(|e| e.to_string())?;
    let mac = client
        .create_key("bench/mac", SymmetricKeyType::HmacSha256, None)
        .await
        .map_err(|e| e.to_string())?;
    let message = [7u8; 32];
    println!(
        "{} s per run; through = over keyd's socket, in-process = aws-lc-rs in this process",
        args.seconds
    );
    println!("| operation | concurrency | through keyd req/s | p50 | p99 | in-process ops/s | p50 | p99 | ratio |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for op in &args.ops {
        let (handle, algorithm) = match op {
            Op::Ecdsa => (&ec, SignAlgorithm::EcdsaSha256),
            Op::Hmac => (&mac, SignAlgorithm::HmacSha256),
        };
        let body = serde_json::json!({
            "handle": handle.0,
            "algorithm": algorithm,
            "data": edgeid_common::encoding::to_base64(&message),
        })
        .to_string();
        for &n in &args.concurrency {
            let through =
                through_socket(&socket, Bytes::from(body.clone()), n, args.seconds).await?;
            let local = in_process(*op, n, args.seconds);
            println!(
                "| {op} | {n} | {:.0} | {:.0} µs | {:.0} µs | {:.0} | {:.1} µs | {:.1} µs | {:.2} |",
                through.rate,
                micros(through.p50),
                micros(through.p99),
                local.rate,
                micros(local.p50),
                micros(local.p99),
                through.rate / local.rate
            );
        }
    }
    if let Some(c) = &child {
        println!("keyd RSS after load: {} KiB", c.rss_kib().unwrap_or(0));
    }
    Ok(())
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn wait_ready(client: &KeydClient) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.health().await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("keyd does not answer: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// `n` connections, each sending sign requests back to back for `seconds`.
async fn through_socket(
    socket: &Path,
    body: Bytes,
    n: usize,
    seconds: u64,
) -> Result<Measured, String> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..n {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(200_000);
            while Instant::now() < deadline {
                let req = Request::builder()
                    .method(Method::POST)
                    .uri("/v1/sign")
                    .header("host", "localhost")
                    .header("content-type", "application/json")
                    .body(Full::new(body.clone()))
                    .map_err(|e| e.to_string())?;
                let started = Instant::now();
                let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
                let status = resp.status();
                resp.into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?;
                if status != StatusCode::OK {
                    return Err(format!("keyd answered {status}"));
                }
                latencies.push(started.elapsed());
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())??);
    }
    Ok(summarize(all, seconds))
}

/// `n` threads doing the same operation directly with aws-lc-rs.
fn in_process(op: Op, n: usize, seconds: u64) -> Measured {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .expect("generate a P-256 key");
    let ec = Arc::new(
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).expect("load it"),
    );
    let mac = Arc::new(aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA256,
        &[9u8; 32],
    ));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let ec = ec.clone();
            let mac = mac.clone();
            std::thread::spawn(move || {
                let rng = SystemRandom::new();
                let message = [7u8; 32];
                let mut latencies = Vec::with_capacity(1_000_000);
                while Instant::now() < deadline {
                    let started = Instant::now();
                    match op {
                        Op::Ecdsa => {
                            let _ = std::hint::black_box(ec.sign(&rng, &message));
                        }
                        Op::Hmac => {
                            let _ = std::hint::black_box(aws_lc_rs::hmac::sign(&mac, &message));
                        }
                    }
                    latencies.push(started.elapsed());
                }
                latencies
            })
        })
        .collect();
    let all = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap_or_default())
        .collect();
    summarize(all, seconds)
}

fn summarize(mut latencies: Vec<Duration>, seconds: u64) -> Measured {
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
    };
    Measured {
        rate: latencies.len() as f64 / seconds as f64,
        p50: at(0.50).copied().unwrap_or_default(),
        p99: at(0.99).copied().unwrap_or_default(),
    }
}

/// keyd started as its own process for the benchmark.
struct KeydProcess {
    child: Child,
}

impl KeydProcess {
    fn start(dir: &Path, socket: &Path) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let keyd = exe.with_file_name("edgeid-keyd");
        if !keyd.exists() {
            return Err(format!(
                "{} not found: build it first (cargo build --release -p edgeid-keyd)",
                keyd.display()
            ));
        }
        let config = dir.join("keyd.toml");
        let text = format!(
            "state_dir = \"{}\"\n[server]\nsocket = \"{}\"\n[software]\nmaster_key_file = \"{}\"\n",
            dir.join("state").display(),
            socket.display(),
            dir.join("master.key").display()
        );
        std::fs::write(&config, text).map_err(|e| e.to_string())?;
        let child = Command::new(keyd)
            .arg("--config")
            .arg(&config)
            .env("EDGEID_LOG", "warn")
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| e.to_string())?;
        Ok(Self { child })
    }

    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

impl Drop for KeydProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
