//! The floor (issue 22): what any socket service pays, with nothing of
//! edgeid's. A server process of its own (this binary, `floor-server`) on a
//! Unix socket: a thread per connection reads a fixed 300-byte request, does
//! keyd's work on its first 32 bytes with aws-lc (ECDSA P-256 sign, or
//! HMAC-SHA256) and writes a fixed 200-byte answer; no HTTP, no JSON, no
//! async runtime. `n` blocking client threads, one connection each, do
//! round trips for the run. keyd's rate over the floor's says what edgeid's
//! HTTP, JSON, authorization and runtime cost on top of the transport.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

use crate::pkcs11::RawToken;
use crate::wire::{self, Work, WorkFactory};
use crate::{Measured, Op};

/// A request and an answer, as large as keyd's sign request and answer.
const REQUEST: usize = 300;
const ANSWER: usize = 200;

/// `edgeid-bench floor-server --socket S --op O [--pkcs11 LIBRARY]`: serves
/// until killed. The work is aws-lc's (keyd's software store), or with
/// `--pkcs11` raw cryptoki on the bench token, a session per connection
/// (keyd's PKCS#11 store).
pub fn serve(socket: &Path, op: Op, pkcs11: Option<&Path>) -> Result<(), String> {
    let mut _login = None;
    let work = match pkcs11 {
        None => software(op)?,
        Some(library) => {
            let (raw, login) = RawToken::open(library, op)?;
            _login = Some(login);
            std::sync::Arc::new(raw).work()
        }
    };
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let Ok(mut work) = work() else { continue };
        std::thread::spawn(move || {
            let mut request = [0u8; REQUEST];
            let mut answer = [0u8; ANSWER];
            while stream.read_exact(&mut request).is_ok() {
                if work(&request[..32], &mut answer).is_err() {
                    return;
                }
                if stream.write_all(&answer).is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}

/// keyd's software-store work with aws-lc: ECDSA P-256, or HMAC-SHA256
/// with a 32-byte key.
pub fn software(op: Op) -> Result<WorkFactory, String> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| "cannot make a P-256 key")?;
    let ec = std::sync::Arc::new(
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
            .map_err(|_| "cannot load the P-256 key")?,
    );
    let mac = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &[9u8; 32]);
    Ok(Box::new(move || {
        let (ec, mac, rng) = (ec.clone(), mac.clone(), SystemRandom::new());
        Ok(Box::new(move |data: &[u8], answer: &mut [u8]| {
            match op {
                Op::Ecdsa => {
                    let sig = ec.sign(&rng, data).map_err(|_| "cannot sign")?;
                    wire::copy(sig.as_ref(), answer)
                }
                Op::Hmac => wire::copy(aws_lc_rs::hmac::sign(&mac, data).as_ref(), answer),
            };
            Ok(())
        }) as Work)
    }))
}

/// `edgeid-bench floor-server --socket S --upstream U`: the first hop of the
/// two-hop floor, as the workload API is in front of keyd. A thread per
/// connection, each with its own connection to `upstream`: a request read is
/// written there, and the answer read from there is written back.
pub fn relay(socket: &Path, upstream: &Path) -> Result<(), String> {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let Ok(mut next) = UnixStream::connect(upstream) else {
            continue;
        };
        std::thread::spawn(move || {
            let mut request = [0u8; REQUEST];
            let mut answer = [0u8; ANSWER];
            while stream.read_exact(&mut request).is_ok() {
                let relayed = next
                    .write_all(&request)
                    .and_then(|()| next.read_exact(&mut answer))
                    .and_then(|()| stream.write_all(&answer));
                if relayed.is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}

/// The floor server as a process of its own, for one operation.
pub struct FloorServer {
    child: Child,
    socket: PathBuf,
}

impl FloorServer {
    /// The one-hop floor: a server doing `op` with aws-lc.
    pub fn start(dir: &Path, op: Op) -> Result<Self, String> {
        Self::start_with(dir, op, &[])
    }

    /// The one-hop floor with more `floor-server` arguments (`--pkcs11`).
    pub fn start_with(dir: &Path, op: Op, more: &[&std::ffi::OsStr]) -> Result<Self, String> {
        let socket = dir.join(format!("floor-{}-{}.sock", op_name(op), more.len()));
        let mut args = vec![
            std::ffi::OsStr::new("--op"),
            std::ffi::OsStr::new(op_name(op)),
        ];
        args.extend_from_slice(more);
        Self::spawn(socket, &args)
    }

    /// The two-hop floor: a relay in front of `worker`, as the workload API
    /// is in front of keyd.
    pub fn relay(worker: &FloorServer) -> Result<Self, String> {
        let socket = worker.socket.with_extension("relay.sock");
        Self::spawn(
            socket,
            &[
                std::ffi::OsStr::new("--upstream"),
                worker.socket.as_os_str(),
            ],
        )
    }

    fn spawn<S: AsRef<std::ffi::OsStr>>(socket: PathBuf, args: &[S]) -> Result<Self, String> {
        let _ = std::fs::remove_file(&socket);
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let child = Command::new(exe)
            .arg("floor-server")
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the floor server: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&socket).is_err() {
            if Instant::now() > deadline {
                return Err("the floor server did not start".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Self { child, socket })
    }

    /// `n` client threads doing round trips for `seconds` ([`wire::drive`],
    /// as for edgeid's rows).
    pub fn measure(&self, n: usize, seconds: u64) -> Result<Measured, String> {
        let socket = self.socket.clone();
        wire::drive(
            n,
            seconds,
            move || UnixStream::connect(&socket).map_err(|e| e.to_string()),
            |stream| {
                let request = [7u8; REQUEST];
                let mut answer = [0u8; ANSWER];
                stream.write_all(&request).map_err(|e| e.to_string())?;
                stream.read_exact(&mut answer).map_err(|e| e.to_string())
            },
        )
    }
}

impl Drop for FloorServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Ecdsa => "ecdsa",
        Op::Hmac => "hmac",
    }
}
