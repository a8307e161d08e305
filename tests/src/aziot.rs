//! Requests to a daemon's aziot front as the reference's client crates send
//! them (JSON bodies, `?api-version=` in the path), answers parsed as JSON.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use edgeid_common::client::UdsClient;
use http::{Method, StatusCode};
use serde_json::Value;

/// One request with a JSON body; status and JSON answer (`Null` if empty).
pub async fn call(socket: &Path, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    call_raw(socket, method, path, body).await
}

/// [`call`] on a connection made as `uid` (the test process must be root).
pub async fn call_as(
    uid: u32,
    socket: &Path,
    method: Method,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let (status, bytes) = crate::request_as(uid, socket, method, path, &body).await;
    (status, json_or_null(path, &bytes))
}

/// One request with a body as given (malformed ones included).
pub async fn call_raw(
    socket: &Path,
    method: Method,
    path: &str,
    body: String,
) -> (StatusCode, Value) {
    let (status, bytes) = UdsClient::new(socket)
        .raw(method, path, body.into())
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    (status, json_or_null(path, &bytes))
}

/// An answer's JSON; `Null` if it is empty.
fn json_or_null(path: &str, bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| panic!("{path}: not JSON: {}", String::from_utf8_lossy(bytes)))
}

/// Bytes as the aziot APIs carry them: standard base64.
pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// The bytes of a base64 JSON string (a test failure if it is none).
pub fn unb64(value: &Value) -> Vec<u8> {
    STANDARD
        .decode(
            value
                .as_str()
                .unwrap_or_else(|| panic!("not a string: {value}")),
        )
        .unwrap_or_else(|e| panic!("not base64: {value}: {e}"))
}
