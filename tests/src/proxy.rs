//! An HTTP CONNECT proxy on loopback (what `https_proxy` names on a
//! corporate network): it tunnels to loopback targets only and counts tunnels.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// A running proxy.
pub struct ConnectProxy {
    /// `http://127.0.0.1:<port>`
    pub url: String,
    tunnels: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConnectProxy {
    /// Starts the proxy.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let tunnels = Arc::new(AtomicUsize::new(0));
        let counter = tunnels.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let counter = counter.clone();
                        async move { Ok::<_, Infallible>(connect(req, &counter)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Self {
            url: format!("http://127.0.0.1:{port}"),
            tunnels,
            task,
        }
    }

    /// Tunnels opened so far.
    pub fn tunnels(&self) -> usize {
        self.tunnels.load(Ordering::SeqCst)
    }
}

fn connect(req: Request<Incoming>, counter: &AtomicUsize) -> Response<Full<Bytes>> {
    let target = req.uri().authority().map(|a| a.to_string());
    let allowed = target
        .as_deref()
        .is_some_and(|t| t.starts_with("localhost:") || t.starts_with("127.0.0.1:"));
    if req.method() != Method::CONNECT || !allowed {
        let mut r = Response::new(Full::new(Bytes::from_static(b"CONNECT to loopback only")));
        *r.status_mut() = StatusCode::FORBIDDEN;
        return r;
    }
    let target = target
        .unwrap_or_default()
        .replace("localhost:", "127.0.0.1:");
    counter.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else {
            return;
        };
        let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(upgraded), &mut upstream).await;
    });
    Response::new(Full::new(Bytes::new()))
}
