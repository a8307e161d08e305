//! Routing and path decoding as every daemon does it: percent-encoded paths
//! against patterns with ids and catch-alls, and query parameters.
#![no_main]

use std::sync::LazyLock;

use edgeid_common::routes::Routes;
use libfuzzer_sys::fuzz_target;

static ROUTES: LazyLock<Routes<u8>> = LazyLock::new(|| {
    use http::Method;
    Routes::new(&[
        (Method::GET, "/v1/health", 0),
        (Method::GET, "/v1/keypair/{*id}", 1),
        (Method::POST, "/v1/certificates/{*id}", 2),
        (Method::GET, "/v1/identities/modules/{id}", 3),
        (Method::POST, "/v1/identities/modules/{id}/token", 4),
        (Method::POST, "/modules/{name}/genid/{genid}/sign", 5),
    ])
});

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = if m % 2 == 0 {
        http::Method::GET
    } else {
        http::Method::POST
    };
    let text = String::from_utf8_lossy(rest);
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (text.into_owned(), None),
    };
    match ROUTES.find(&method, &path) {
        Ok((_, params)) => {
            for name in ["id", "name", "genid"] {
                let _ = params.get(name);
            }
        }
        // Whatever the path, a miss is the client's fault.
        Err(answer) => assert!(answer.status().is_client_error(), "{:?}", answer.status()),
    }
    let req = edgeid_common::ApiRequest {
        caller: edgeid_common::authz::Caller {
            uid: 0,
            gid: 0,
            pid: None,
        },
        method,
        path,
        query,
        body: bytes::Bytes::new(),
    };
    let _ = req.query_param("api-version");
});
