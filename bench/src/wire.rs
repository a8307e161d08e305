//! The client side of every socket row: `n` blocking threads, one connection
//! each, doing round trips back to back until the deadline. The floor
//! server's rows and edgeid's rows are driven by this same loop, so a ratio
//! between them compares servers, not clients: the client's own cost (a
//! write and a read per round trip, no runtime) is the same on both sides.
//!
//! Against edgeid it speaks HTTP/1.1 on a kept-alive connection: the request
//! is made once, as bytes; each answer is parsed by `httparse` (hyper's own
//! parser) and its `Content-Length` body read whole.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{summarize, Measured};

/// One thread's work on a request's bytes, the answer written into the
/// buffer: what the floor server does per request, and the in-process
/// baselines per operation.
pub type Work = Box<dyn FnMut(&[u8], &mut [u8]) -> Result<(), String> + Send>;

/// Makes each thread's [`Work`] (its own RNG, session, ...).
pub type WorkFactory = Box<dyn Fn() -> Result<Work, String> + Send + Sync>;

/// Copies what fits of `from` into `to`; how much.
pub fn copy(from: &[u8], to: &mut [u8]) -> usize {
    let n = from.len().min(to.len());
    to[..n].copy_from_slice(&from[..n]);
    n
}

/// `n` threads doing `work` on a 32-byte message for `seconds`, in this
/// process: the in-process baselines.
pub fn in_process(n: usize, seconds: u64, work: WorkFactory) -> Result<Measured, String> {
    drive(n, seconds, work, |work| {
        let mut answer = [0u8; 512];
        work(&[7u8; 32], &mut answer)
    })
}

/// `n` threads, each with its connection from `connect`, calling `trip`
/// until `seconds` have passed; the latencies of every trip, summarized.
pub fn drive<C>(
    n: usize,
    seconds: u64,
    connect: impl Fn() -> Result<C, String> + Send + Sync + 'static,
    trip: impl Fn(&mut C) -> Result<(), String> + Send + Sync + 'static,
) -> Result<Measured, String> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let shared = std::sync::Arc::new((connect, trip));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let shared = shared.clone();
            std::thread::spawn(move || -> Result<Vec<Duration>, String> {
                let (connect, trip) = &*shared;
                let mut conn = connect()?;
                let mut latencies = Vec::with_capacity(200_000);
                while Instant::now() < deadline {
                    let started = Instant::now();
                    trip(&mut conn)?;
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
    Ok(summarize(all, seconds))
}

/// `n` connections to the HTTP server on `socket`, each sending
/// `POST uri` with `body` back to back for `seconds`; any answer but 200
/// ends the run with an error.
pub fn post_loop(
    socket: &Path,
    uri: &str,
    body: &[u8],
    n: usize,
    seconds: u64,
) -> Result<Measured, String> {
    let request = post_request(uri, body);
    let socket: PathBuf = socket.to_owned();
    let uri = uri.to_owned();
    drive(
        n,
        seconds,
        move || HttpConn::connect(&socket),
        move |conn| match conn.round_trip(&request)? {
            200 => Ok(()),
            status => Err(format!("{uri} answered {status}")),
        },
    )
}

/// `POST uri` with a JSON `body`, as the bytes of an HTTP/1.1 request.
pub fn post_request(uri: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {uri} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// A kept-alive HTTP/1.1 connection over a Unix socket.
pub struct HttpConn {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl HttpConn {
    pub fn connect(socket: &Path) -> Result<Self, String> {
        let stream =
            UnixStream::connect(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Writes `request` (a whole HTTP/1.1 request) and reads its answer;
    /// returns the status.
    pub fn round_trip(&mut self, request: &[u8]) -> Result<u16, String> {
        self.stream
            .write_all(request)
            .map_err(|e| format!("write: {e}"))?;
        self.buf.clear();
        let mut filled = 0;
        let (status, head, length) = loop {
            if self.buf.len() < filled + 1024 {
                self.buf.resize(filled + 4096, 0);
            }
            let got = self
                .stream
                .read(&mut self.buf[filled..])
                .map_err(|e| format!("read: {e}"))?;
            if got == 0 {
                return Err("the server closed the connection".into());
            }
            filled += got;
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buf[..filled]) {
                Ok(httparse::Status::Complete(head)) => {
                    let length = response
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                        .ok_or("an answer without Content-Length")?;
                    break (response.code.unwrap_or(0), head, length);
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(format!("a malformed answer: {e}")),
            }
        };
        let total = head + length;
        if self.buf.len() < total {
            self.buf.resize(total, 0);
        }
        if filled < total {
            self.stream
                .read_exact(&mut self.buf[filled..total])
                .map_err(|e| format!("read: {e}"))?;
        } else if filled > total {
            return Err("bytes after the answer that nobody asked for".into());
        }
        Ok(status)
    }
}
