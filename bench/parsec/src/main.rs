//! `edgeid-bench-parsec --socket PATH [--seconds S] [-c N]...`: ECDSA P-256
//! signatures of a SHA-256 digest (PsaSignHash) through a running Parsec
//! service, from N threads with a client each, as `edgeid-bench pkcs11`
//! measures keyd on the same kind of token. Prints one table row per N in
//! the form BENCHMARKS.md uses. The key is made for the run and destroyed
//! after it.

use std::time::{Duration, Instant};

use parsec_client::core::interface::operations::psa_algorithm::{AsymmetricSignature, Hash};
use parsec_client::core::interface::operations::psa_key_attributes::{
    Attributes, EccFamily, Lifetime, Policy, Type, UsageFlags,
};
use parsec_client::BasicClient;
use sha2::{Digest, Sha256};

const KEY: &str = "edgeid-bench-ec";

struct Args {
    socket: String,
    seconds: u64,
    concurrency: Vec<usize>,
}

fn args() -> Result<Args, String> {
    let mut socket = None;
    let mut seconds = 5;
    let mut concurrency = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--socket" => socket = Some(value()?),
            "--seconds" => seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "-c" | "--concurrency" => concurrency.push(
                value()?
                    .parse()
                    .map_err(|e| format!("--concurrency: {e}"))?,
            ),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if concurrency.is_empty() {
        concurrency = vec![1, 2, 16];
    }
    Ok(Args {
        socket: socket.ok_or("--socket PATH of a running Parsec service is required")?,
        seconds,
        concurrency,
    })
}

fn client() -> Result<BasicClient, String> {
    BasicClient::new(Some("edgeid-bench".into())).map_err(|e| format!("Parsec client: {e}"))
}

fn main() -> Result<(), String> {
    let args = args()?;
    // Read by every client this process makes.
    std::env::set_var("PARSEC_SERVICE_ENDPOINT", format!("unix:{}", args.socket));
    let setup = client()?;
    let _ = setup.psa_destroy_key(KEY);
    let mut usage = UsageFlags::default();
    usage.set_sign_hash().set_verify_hash();
    setup
        .psa_generate_key(
            KEY,
            Attributes {
                lifetime: Lifetime::Persistent,
                key_type: Type::EccKeyPair {
                    curve_family: EccFamily::SecpR1,
                },
                bits: 256,
                policy: Policy {
                    usage_flags: usage,
                    permitted_algorithms: AsymmetricSignature::Ecdsa {
                        hash_alg: Hash::Sha256.into(),
                    }
                    .into(),
                },
            },
        )
        .map_err(|e| format!("PsaGenerateKey: {e}"))?;
    let digest = Sha256::digest([7u8; 32]).to_vec();
    let alg = AsymmetricSignature::Ecdsa {
        hash_alg: Hash::Sha256.into(),
    };

    for &n in &args.concurrency {
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        let threads: Vec<_> = (0..n)
            .map(|_| {
                let digest = digest.clone();
                std::thread::spawn(move || -> Result<Vec<Duration>, String> {
                    let client = client()?;
                    let mut latencies = Vec::new();
                    while Instant::now() < deadline {
                        let started = Instant::now();
                        client
                            .psa_sign_hash(KEY, &digest, alg)
                            .map_err(|e| format!("PsaSignHash: {e}"))?;
                        latencies.push(started.elapsed());
                    }
                    Ok(latencies)
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in threads {
            all.extend(t.join().map_err(|_| "a client thread panicked")??);
        }
        all.sort_unstable();
        let at = |q: f64| {
            all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
                .map_or(0.0, |d| d.as_secs_f64() * 1e6)
        };
        println!(
            "| parsec ecdsa-p256 sign | {n} | {:.0} | {:.0} µs | {:.0} µs |",
            all.len() as f64 / args.seconds as f64,
            at(0.5),
            at(0.99)
        );
    }
    setup
        .psa_destroy_key(KEY)
        .map_err(|e| format!("PsaDestroyKey: {e}"))
}
