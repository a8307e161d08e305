//! `edgeid-bench aziot --socket S`: the aziot keys API's sign on any daemon
//! that serves it (edgeid's keyd, or the reference's aziot-keyd) at `S`,
//! with keys made through that API: ECDSA P-256 over a 32-byte digest and
//! HMAC-SHA256 of 32 bytes, as aziot clients send them.

use bytes::Bytes;
use edgeid_common::client::UdsClient;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::{micros, through_socket, Args, Op};

/// Creates (or loads) `bench-ec` and `bench-mac` through the aziot API;
/// their handles.
async fn keys(client: &UdsClient) -> Result<(Value, Value), String> {
    let post = |path: &'static str, body: Value| async move {
        let (status, bytes) = client
            .raw(Method::POST, path, Bytes::from(body.to_string()))
            .await
            .map_err(|e| e.to_string())?;
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status != StatusCode::OK {
            return Err(format!("{path}: {status} {answer}"));
        }
        Ok(answer["keyHandle"].clone())
    };
    let ec = post(
        "/keypair?api-version=2021-05-01",
        json!({ "keyId": "bench-ec", "preferredAlgorithms": "ec-p256" }),
    )
    .await?;
    let mac = post(
        "/key?api-version=2021-05-01",
        json!({ "keyId": "bench-mac", "usage": "sign" }),
    )
    .await?;
    Ok((ec, mac))
}

pub async fn bench(args: &Args) -> Result<(), String> {
    let socket = args
        .socket
        .clone()
        .ok_or("aziot needs --socket: a keyd or aziot-keyd socket")?;
    let (ec, mac) = keys(&UdsClient::new(&socket)).await?;
    let digest = edgeid_common::encoding::to_base64(&[7u8; 32]);
    println!(
        "aziot /sign through {}; {} s per run",
        socket.display(),
        args.seconds
    );
    println!("| operation | concurrency | req/s | p50 | p99 |");
    println!("|---|---|---|---|---|");
    for op in &args.ops {
        let body = match op {
            Op::Ecdsa => json!({ "keyHandle": ec, "algorithm": "ECDSA",
                "parameters": { "digest": digest } }),
            Op::Hmac => json!({ "keyHandle": mac, "algorithm": "HMAC-SHA256",
                "parameters": { "message": digest } }),
        }
        .to_string();
        for &n in &args.concurrency {
            let m = through_socket(
                &socket,
                "/sign?api-version=2021-05-01",
                Bytes::from(body.clone()),
                n,
                args.seconds,
            )
            .await?;
            println!(
                "| {op} | {n} | {:.0} | {:.0} µs | {:.0} µs |",
                m.rate,
                micros(m.p50),
                micros(m.p99)
            );
        }
    }
    Ok(())
}
