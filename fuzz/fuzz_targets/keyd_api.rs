//! keyd's whole request path in process: routing, path ids, JSON bodies,
//! handles, authorization, and the software store behind them.
//! Input: a method byte, a caller byte, the path up to `\n`, then the body.
//! The same bytes are also parsed as an AK activation credential.
#![no_main]

use std::sync::OnceLock;

use bytes::Bytes;
use edgeid_common::authz::{Admins, Caller};
use edgeid_common::{ApiRequest, Handler};
use edgeid_keyd::keys::Keyd;
use libfuzzer_sys::fuzz_target;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    keyd: Keyd,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // In memory where there is a tmpfs: every created key is written and
        // fsynced, and on a disk that, not keyd, would set the pace.
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_owned()
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("edgeid-fuzz-keyd-")
            .tempdir_in(base)
            .expect("temp dir");
        let config = edgeid_keyd::KeydConfig::with_dirs(
            &dir.path().join("keyd"),
            &dir.path().join("keyd.sock"),
            &dir.path().join("secrets/master.key"),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let keyd = runtime
            .block_on(Keyd::open(&config, Admins::only(vec![0])))
            .expect("keyd");
        Fixture {
            runtime,
            keyd,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    // A verifier's credential for `POST /v1/tpm/ak/activate`, parsed
    // before any TPM sees it.
    let _ = edgeid_keyd::backend::tpm::parse_credential(data);
    if data.len() < 2 {
        return;
    }
    let f = fixture();
    let method = match data[0] % 4 {
        0 => http::Method::GET,
        1 => http::Method::POST,
        2 => http::Method::DELETE,
        _ => http::Method::PUT,
    };
    let uid = if data[1] % 2 == 0 { 0 } else { 4321 };
    let rest = &data[2..];
    let (path, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let path = String::from_utf8_lossy(path);
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (path.into_owned(), None),
    };
    let req = ApiRequest {
        caller: Caller {
            uid,
            gid: uid,
            pid: Some(1),
        },
        method,
        path,
        query,
        body: Bytes::copy_from_slice(body),
    };
    let answer = f.runtime.block_on(f.keyd.handle(req));
    // A request from outside never makes keyd fail inside.
    assert_ne!(
        answer.status(),
        http::StatusCode::INTERNAL_SERVER_ERROR,
        "{:?}",
        answer.body()
    );
});
