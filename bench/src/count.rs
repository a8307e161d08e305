//! `edgeid-bench trips --socket S --op O --requests N`: exactly `N` sign
//! requests through keyd's `/v1/sign` on one connection, for tools that
//! count rather than time (`scripts/bench-instructions` runs keyd under
//! valgrind's callgrind and dhat, and takes the difference of two runs of
//! different `N`, so that start-up and key creation cancel out).

use std::path::Path;

use edgeid_keyd::api::{KeyPairSpec, SignAlgorithm, SymmetricKeyType};
use edgeid_keyd::KeydClient;

use crate::wire::{self, HttpConn};
use crate::{wait_ready, Op};

pub async fn trips(socket: &Path, op: Op, requests: u64) -> Result<(), String> {
    let client = KeydClient::new(socket);
    wait_ready(&client).await?;
    let (handle, algorithm) = match op {
        Op::Ecdsa => (
            client
                .create_key_pair("bench/trips-ec", KeyPairSpec::EcP256)
                .await,
            SignAlgorithm::EcdsaSha256,
        ),
        Op::Hmac => (
            client
                .create_key("bench/trips-mac", SymmetricKeyType::HmacSha256, None)
                .await,
            SignAlgorithm::HmacSha256,
        ),
    };
    let handle = handle.map_err(|e| e.to_string())?;
    let body = serde_json::json!({
        "handle": handle.0,
        "algorithm": algorithm,
        "data": edgeid_common::encoding::to_base64(&[7u8; 32]),
    })
    .to_string();
    let request = wire::post_request("/v1/sign", body.as_bytes());
    let socket = socket.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn = HttpConn::connect(&socket)?;
        for _ in 0..requests {
            match conn.round_trip(&request)? {
                200 => {}
                status => return Err(format!("/v1/sign answered {status}")),
            }
        }
        println!("{requests} requests");
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?
}
