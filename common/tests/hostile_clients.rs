//! Slow and hostile clients against the HTTP/1 server every daemon runs:
//! floods of silent, slow-header and half-sent connections, far more than the
//! connection cap, must not keep a good client out, and every one of them is
//! cut off by the limits or the timeouts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgeid_common::client::UdsClient;
use edgeid_common::listener::Listener;
use edgeid_common::server::{serve, Limits};
use edgeid_common::{ApiRequest, ApiResponse, Handler};
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Answers every request with the length of its body.
struct Echo;

impl Handler for Echo {
    async fn handle(&self, req: ApiRequest) -> ApiResponse {
        ApiResponse::json(
            StatusCode::OK,
            &serde_json::json!({ "length": req.body.len() }),
        )
    }
}

struct Server {
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// The server answering with [`Echo`].
    fn start(limits: Limits) -> Self {
        Self::serving(Echo, limits)
    }

    fn serving(handler: impl Handler, limits: Limits) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("edgeid-hostile-")
            .tempdir_in("/tmp")
            .unwrap();
        let socket = dir.path().join("s.sock");
        let listener = Listener::bind(&socket, 0o600).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, Arc::new(handler), limits, async {
            let _ = stopped.await;
        }));
        Self {
            _dir: dir,
            socket,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }
}

/// How a hostile client misbehaves.
#[derive(Clone, Copy, Debug)]
enum Hostile {
    /// Connects and never sends a byte.
    Silent,
    /// Sends the request line and then a header byte every 200 ms, never
    /// finishing (slowloris).
    SlowHeaders,
    /// Sends whole headers announcing a 1000-byte body, then 10 bytes of it.
    HalfBody,
    /// Sends one whole request, reads the answer, then idles.
    Idle,
}

/// What became of one hostile connection: when the server closed it, and
/// what it had answered before.
struct Outcome {
    closed_after: Duration,
    answer: String,
}

/// Opens a hostile connection and holds it until the server closes it (or
/// `give_up` passes); what the server sent before closing is returned.
/// Counts itself in `arrived` once connected and its first bytes sent (or
/// refused: a full listen queue counts as closed at once).
async fn hostile(
    socket: &std::path::Path,
    kind: Hostile,
    give_up: Duration,
    arrived: &AtomicUsize,
) -> Option<Outcome> {
    let started = Instant::now();
    let closed = |answer: Vec<u8>| {
        Some(Outcome {
            closed_after: started.elapsed(),
            answer: String::from_utf8_lossy(&answer).into_owned(),
        })
    };
    let Ok(mut stream) = UnixStream::connect(socket).await else {
        arrived.fetch_add(1, Ordering::Relaxed);
        return closed(Vec::new());
    };
    let first: &[u8] = match kind {
        Hostile::Silent => b"",
        Hostile::SlowHeaders => b"POST /slow HTTP/1.1\r\nHost: x\r\n",
        Hostile::HalfBody => {
            b"POST /half HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789"
        }
        Hostile::Idle => b"GET /idle HTTP/1.1\r\nHost: x\r\n\r\n",
    };
    let refused = stream.write_all(first).await.is_err();
    arrived.fetch_add(1, Ordering::Relaxed);
    if refused {
        return closed(Vec::new());
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + give_up;
    loop {
        let read = if matches!(kind, Hostile::SlowHeaders) {
            // Trickle one header byte between reads.
            match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
                Ok(r) => Some(r),
                Err(_) => {
                    if stream.write_all(b"X").await.is_err() {
                        None
                    } else if tokio::time::Instant::now() > deadline {
                        return None;
                    } else {
                        continue;
                    }
                }
            }
        } else {
            match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Ok(r) => Some(r),
                Err(_) => return None,
            }
        };
        match read {
            Some(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            // EOF, a reset, or a write refused: the server closed it.
            _ => return closed(answer),
        }
    }
}

/// As many hostile connections as this process's open-file limit allows
/// beside the server's own descriptors, up to `wanted`.
fn affordable(wanted: usize) -> usize {
    let limit = edgeid_common::runtime::raise_fd_limit().expect("read RLIMIT_NOFILE");
    // Each connection costs a descriptor here and, until it is closed, one
    // in the server (the same process); keep room for the rest.
    let room = usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .saturating_sub(256)
        / 2;
    assert!(
        room >= 200,
        "RLIMIT_NOFILE is {limit}: too low to test floods of connections; raise it (ulimit -n 4096)"
    );
    wanted.min(room)
}

/// The connection cap of the flood test: the flood is eight times that. A
/// connection has a second to complete its first request before it may be
/// evicted, so the flood drains at about this many per second.
const CAP: usize = 256;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_slow_and_half_sent_clients_does_not_keep_good_clients_out() {
    // Timeouts far longer than the test: only the cap's eviction can let a
    // good client in past the flood.
    // One uid plays every client here: its share is the whole cap (the
    // per-caller share has its own test below).
    let limits = Limits {
        max_connections: CAP,
        max_connections_per_caller: CAP,
        header_read_timeout: Duration::from_secs(60),
        request_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let server = Server::start(limits);
    let socket = server.socket.clone();

    // A client with a keep-alive connection that did real work before the flood.
    let regular = UdsClient::new(&socket);
    let (status, _) = regular
        .raw(Method::POST, "/before", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);

    let total = affordable(2000);
    let closed = Arc::new(AtomicUsize::new(0));
    let arrived = Arc::new(AtomicUsize::new(0));
    let mut flood = Vec::new();
    for i in 0..total {
        let kind = match i % 4 {
            0 | 1 => Hostile::Silent,
            2 => Hostile::SlowHeaders,
            _ => Hostile::HalfBody,
        };
        let socket = socket.clone();
        let closed = closed.clone();
        let arrived = arrived.clone();
        flood.push(tokio::spawn(async move {
            if hostile(&socket, kind, Duration::from_secs(40), &arrived)
                .await
                .is_some()
            {
                closed.fetch_add(1, Ordering::Relaxed);
            }
        }));
        if i % 100 == 99 {
            tokio::task::yield_now().await;
        }
    }
    // The flood is in: every hostile client has arrived and sent what it
    // sends (or was refused by a full listen queue, which counts as closed).
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrived.load(Ordering::Relaxed) < total {
        assert!(
            Instant::now() < deadline,
            "the flood did not connect: {} of {total} arrived",
            arrived.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Good clients, each on a fresh connection, while the flood holds the
    // cap many times over; and the regular client on its own.
    let good_started = Instant::now();
    for i in 0..100 {
        if i == 1 {
            eprintln!(
                "the first good client was served {:?} after the flood of {total} was in",
                good_started.elapsed()
            );
        }
        let client = UdsClient::new(&socket);
        let answer = tokio::time::timeout(
            Duration::from_secs(20),
            client.raw(Method::POST, "/good", Bytes::from(format!("{{\"n\":{i}}}"))),
        )
        .await
        .unwrap_or_else(|_| {
            panic!("good client {i} kept out for 20 s by {total} hostile connections")
        })
        .unwrap_or_else(|e| panic!("good client {i}: {e}"));
        assert_eq!(answer.0, StatusCode::OK, "good client {i}");
    }
    let (status, _) = tokio::time::timeout(
        Duration::from_secs(20),
        regular.raw(Method::POST, "/after", Bytes::from_static(b"{}")),
    )
    .await
    .expect("the regular client is served")
    .expect("the regular client is served");
    assert_eq!(status, StatusCode::OK);

    eprintln!("100 good clients served in {:?}", good_started.elapsed());
    // All but the cap's worth of the flood has been closed by the server.
    let deadline = Instant::now() + Duration::from_secs(30);
    while closed.load(Ordering::Relaxed) < total - CAP {
        assert!(
            Instant::now() < deadline,
            "only {} of {total} hostile connections closed; at most {CAP} may stay",
            closed.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for task in flood {
        task.abort();
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_slow_half_sent_and_idle_clients_are_cut_off_by_the_timeouts() {
    let limits = Limits {
        max_connections: 512,
        max_connections_per_caller: 512,
        header_read_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let server = Server::start(limits);
    let each = affordable(400) / 4;
    let arrived = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for kind in [
        Hostile::Silent,
        Hostile::SlowHeaders,
        Hostile::HalfBody,
        Hostile::Idle,
    ] {
        for _ in 0..each {
            let socket = server.socket.clone();
            let arrived = arrived.clone();
            clients.push((
                kind,
                tokio::spawn(async move {
                    hostile(&socket, kind, Duration::from_secs(15), &arrived).await
                }),
            ));
        }
    }
    // A good client is served all along.
    let good = UdsClient::new(&server.socket);
    for _ in 0..20 {
        let (status, _) = good
            .raw(Method::POST, "/good", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut slowest = Duration::ZERO;
    for (kind, task) in clients {
        let outcome = task
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("a {kind:?} connection was still open after 15 s"));
        match kind {
            // Nothing to answer: closed without a word.
            Hostile::Silent | Hostile::SlowHeaders => {
                assert!(
                    outcome.answer.is_empty() || outcome.answer.starts_with("HTTP/1.1 408"),
                    "{kind:?}: {:?}",
                    outcome.answer
                )
            }
            Hostile::HalfBody => assert!(
                outcome.answer.starts_with("HTTP/1.1 408")
                    && outcome
                        .answer
                        .contains("request body not received within 1s"),
                "a half-sent body gets a 408 that says why: {:?}",
                outcome.answer
            ),
            Hostile::Idle => assert!(
                outcome.answer.starts_with("HTTP/1.1 200"),
                "{:?}",
                outcome.answer
            ),
        }
        slowest = slowest.max(outcome.closed_after);
    }
    eprintln!(
        "{} hostile connections closed, the last after {slowest:?}",
        each * 4
    );
    server.stop().await;
}

/// Issue 17, finding 3, on the server every daemon runs: bodies held at once
/// have a budget. Clients that each send most of an allowed body and then
/// stall hold the budget; the next body over it is refused at once with 503
/// (not buffered, not left waiting), and once they are gone a request with
/// a body is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_bodies_hold_no_more_than_the_budget() {
    const PART: usize = 200 * 1024;
    let limits = Limits {
        max_body_bytes: 256 * 1024,
        max_buffered_bytes: 1024 * 1024,
        request_timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let server = Server::start(limits);
    // Five stalled bodies of 200 KiB each fill the 1 MiB budget.
    let mut stalled = Vec::new();
    for _ in 0..5 {
        let mut s = UnixStream::connect(&server.socket).await.unwrap();
        let head = format!(
            "POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            256 * 1024
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&vec![b'a'; PART]).await.unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = UdsClient::new(&server.socket);
    let started = Instant::now();
    let (status, body) = client
        .raw(Method::POST, "/one-more", Bytes::from(vec![b'b'; PART]))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let message = String::from_utf8_lossy(&body);
    assert!(message.contains("too many request bodies"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once, not after a timeout"
    );
    // A body-less request needs none of the budget.
    let (status, _) = client.raw(Method::GET, "/h", Bytes::new()).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    drop(stalled);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = client
        .raw(Method::POST, "/again", Bytes::from(vec![b'c'; PART]))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "the budget is given back");
    server.stop().await;
}

/// Answers after a second.
struct Busy;

impl Handler for Busy {
    async fn handle(&self, _: ApiRequest) -> ApiResponse {
        tokio::time::sleep(Duration::from_secs(1)).await;
        ApiResponse::no_content()
    }
}

/// Issue 17, finding 2, on HTTP/1: a caller (here this process's uid) that
/// holds its share of connections, every one with a request in a handler,
/// is answered 429 with why on the next, at once; when its requests end,
/// it is served again. Its idle connections make room for its new ones
/// instead (they are its own to lose).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_over_its_share_of_connections_gets_429_at_once() {
    let limits = Limits {
        max_connections: 64,
        max_connections_per_caller: 4,
        ..Limits::default()
    };
    let server = Server::serving(Busy, limits);
    let socket = server.socket.clone();
    let mut busy = Vec::new();
    for i in 0..4 {
        let mut s = UnixStream::connect(&socket).await.unwrap();
        s.write_all(format!("GET /busy-{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        busy.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let (status, body) = UdsClient::new(&socket)
        .raw(Method::GET, "/one-more", Bytes::new())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let message = String::from_utf8_lossy(&body);
    assert!(
        message.contains("4 connections open, its share"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_millis(500), "at once");
    for mut s in busy {
        let mut answer = vec![0u8; 64];
        let n = s.read(&mut answer).await.unwrap();
        assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 204"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _) = UdsClient::new(&socket)
        .raw(Method::GET, "/after", Bytes::new())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT, "served again");
    server.stop().await;
}
