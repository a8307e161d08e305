//! `edgeid-bench load`: a load test of the workload socket. `--connections`
//! keep-alive clients of `dev-module` sign back to back, and every
//! `--cert-every`th request of each asks for a server certificate, for
//! `--seconds`. Reported: every error by kind (the goal is none), latency
//! percentiles per request kind, requests per connection (fairness), and the
//! serving process's RSS idle, at its peak under load and after the clients
//! have gone.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::{micros, proc_status_kib, Args};

/// What one client connection saw.
#[derive(Default)]
struct ClientRun {
    sign: Vec<Duration>,
    cert: Vec<Duration>,
    errors: BTreeMap<String, u64>,
}

impl ClientRun {
    fn error(&mut self, what: String) {
        *self.errors.entry(what).or_default() += 1;
    }
}

/// The two requests a client sends.
struct Requests {
    sign_uri: String,
    sign_body: Bytes,
    cert_uri: String,
    cert_body: Bytes,
}

pub async fn run(args: &Args) -> Result<(), String> {
    let socket = args
        .socket
        .clone()
        .ok_or("load needs --socket DIR/workload.sock of a running `edgeidctl dev --dir DIR`")?;
    let dir = socket.parent().unwrap_or(Path::new("."));
    let module = edgeid_identityd::IdentitydClient::new(dir.join("identityd.sock"))
        .module("dev-module")
        .await
        .map_err(|e| format!("identityd in {}: {e}", dir.display()))?;
    let genid = module.generation_id;
    let requests = std::sync::Arc::new(Requests {
        sign_uri: format!("/modules/dev-module/genid/{genid}/sign?api-version=2022-08-03"),
        sign_body: Bytes::from(
            serde_json::json!({
                "keyId": "primary",
                "algo": "HMACSHA256",
                "data": edgeid_common::encoding::to_base64(&[7u8; 32]),
            })
            .to_string(),
        ),
        cert_uri: format!(
            "/modules/dev-module/genid/{genid}/certificate/server?api-version=2022-08-03"
        ),
        cert_body: Bytes::from(
            serde_json::json!({
                "commonName": "dev-module.local",
                "expiration": "2099-01-01T00:00:00Z",
            })
            .to_string(),
        ),
    });

    // The process behind the socket, from the socket itself.
    let pid = tokio::net::UnixStream::connect(&socket)
        .await
        .and_then(|s| s.peer_cred())
        .map_err(|e| format!("{}: {e}", socket.display()))?
        .pid()
        .and_then(|p| u32::try_from(p).ok())
        .ok_or("the kernel did not give the server's pid")?;
    let rss = |field| proc_status_kib(pid, field).unwrap_or(0);
    let idle_rss = rss("VmRSS");
    println!(
        "load: {} connections on {} (pid {pid}) for {} s; every {}th request a server certificate, the others a sign",
        args.connections,
        socket.display(),
        args.seconds,
        args.cert_every
    );

    // RSS sampled while the load runs.
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(async move {
        let mut peak = 0;
        loop {
            peak = peak.max(proc_status_kib(pid, "VmRSS").unwrap_or(0));
            tokio::select! {
                _ = done_rx.changed() => return peak,
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    });

    // Every connection opened before the clock starts, so that all of them
    // are held at once.
    let mut senders = Vec::with_capacity(args.connections);
    let opening = Instant::now();
    for i in 0..args.connections {
        senders.push(
            connect(&socket)
                .await
                .map_err(|e| format!("connection {i}: {e}"))?,
        );
    }
    let opened_in = opening.elapsed();
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|sender| {
            let requests = requests.clone();
            let socket = socket.clone();
            let cert_every = args.cert_every;
            tokio::spawn(client(sender, socket, requests, cert_every, deadline))
        })
        .collect();
    let mut runs = Vec::with_capacity(tasks.len());
    for t in tasks {
        runs.push(t.await.map_err(|e| e.to_string())?);
    }
    let under_load_rss = rss("VmRSS");
    // The clients are gone (their connections dropped with their tasks);
    // give the server a moment to close its side and free what it can.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after_rss = rss("VmRSS");
    let _ = done_tx.send(true);
    let peak_rss = sampler.await.map_err(|e| e.to_string())?;

    report(
        args,
        &runs,
        opened_in,
        [idle_rss, peak_rss.max(under_load_rss), after_rss],
    );
    Ok(())
}

/// One client: requests back to back until `deadline`; a broken connection
/// is counted as an error and replaced.
async fn client(
    mut sender: Sender,
    socket: std::path::PathBuf,
    requests: std::sync::Arc<Requests>,
    cert_every: u64,
    deadline: Instant,
) -> ClientRun {
    let mut run = ClientRun::default();
    let mut n: u64 = 0;
    while Instant::now() < deadline {
        n += 1;
        let cert = cert_every > 0 && n.is_multiple_of(cert_every);
        let (uri, body) = if cert {
            (&requests.cert_uri, &requests.cert_body)
        } else {
            (&requests.sign_uri, &requests.sign_body)
        };
        let req = match Request::builder()
            .method(Method::POST)
            .uri(uri.as_str())
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))
        {
            Ok(r) => r,
            Err(e) => {
                run.error(format!("building the request: {e}"));
                return run;
            }
        };
        let started = Instant::now();
        let answer = async {
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        }
        .await;
        match answer {
            Ok((status, _)) if status.is_success() => {
                let took = started.elapsed();
                if cert {
                    run.cert.push(took);
                } else {
                    run.sign.push(took);
                }
            }
            Ok((status, body)) => run.error(format!(
                "{} answered {status}: {}",
                if cert { "certificate" } else { "sign" },
                serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| format!("({} bytes, not an error message)", body.len()))
            )),
            Err(e) => {
                run.error(format!("connection: {e}"));
                match connect(&socket).await {
                    Ok(s) => sender = s,
                    Err(e) => {
                        run.error(format!("reconnect: {e}"));
                        return run;
                    }
                }
            }
        }
    }
    run
}

fn report(args: &Args, runs: &[ClientRun], opened_in: Duration, [idle, peak, after]: [u64; 3]) {
    let mut sign: Vec<Duration> = runs.iter().flat_map(|r| r.sign.iter().copied()).collect();
    let mut cert: Vec<Duration> = runs.iter().flat_map(|r| r.cert.iter().copied()).collect();
    let mut errors: BTreeMap<&str, u64> = BTreeMap::new();
    for r in runs {
        for (what, n) in &r.errors {
            *errors.entry(what.as_str()).or_default() += n;
        }
    }
    let mut per_connection: Vec<usize> = runs.iter().map(|r| r.sign.len() + r.cert.len()).collect();
    per_connection.sort_unstable();
    let secs = args.seconds.max(1) as f64;

    println!(
        "{} connections opened in {:.0} ms",
        runs.len(),
        opened_in.as_secs_f64() * 1e3
    );
    println!("| request | count | req/s | p50 | p99 | p99.9 | max |");
    println!("|---|---|---|---|---|---|---|");
    for (name, latencies) in [("sign", &mut sign), ("server certificate", &mut cert)] {
        latencies.sort_unstable();
        let at = |q: f64| {
            let i = ((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1));
            latencies.get(i).map_or(0.0, |d| micros(*d) / 1e3)
        };
        println!(
            "| {name} | {} | {:.0} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
            latencies.len(),
            latencies.len() as f64 / secs,
            at(0.5),
            at(0.99),
            at(0.999),
            at(1.0)
        );
    }
    let q = |f: f64| {
        per_connection
            .get(
                ((per_connection.len() as f64 * f) as usize)
                    .min(per_connection.len().saturating_sub(1)),
            )
            .copied()
            .unwrap_or(0)
    };
    println!(
        "requests per connection: min {}, p1 {}, median {}, max {}",
        q(0.0),
        q(0.01),
        q(0.5),
        q(1.0)
    );
    let total_errors: u64 = errors.values().sum();
    println!("errors: {total_errors}");
    for (what, n) in &errors {
        println!("  {n} × {what}");
    }
    println!(
        "server RSS: {:.1} MiB idle, {:.1} MiB peak under load, {:.1} MiB 5 s after the clients left",
        idle as f64 / 1024.0,
        peak as f64 / 1024.0,
        after as f64 / 1024.0
    );
}

/// An HTTP/1.1 connection to `socket`, driven on its own task: a thousand
/// of them are held open, so this load is async, unlike the rate rows.
async fn connect(socket: &Path) -> Result<Sender, String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
