//! What a connection has been doing: bytes moving, requests in flight and
//! at work, when it was last useful, whether it was asked to make room.
//! The connection's windows and the admission policy read it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

/// How long a new connection has to complete its first request before it
/// may be evicted to make room.
const NEW_CONNECTION_GRACE: Duration = Duration::from_secs(1);

/// How long a connection that completed a request must have been idle before
/// it may be evicted. Clients reuse their most recently used connections, so
/// one idle this long is rarely the one a client is about to send on.
const IDLE_BEFORE_EVICTION: Duration = Duration::from_secs(2);

/// When a connection last moved bytes, how many requests it has in flight
/// and in a handler, when it last completed one, and whether it has been
/// asked to make room for another.
pub(super) struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    begun: std::sync::atomic::AtomicBool,
    /// Requests whole and in a handler (HTTP/2: open streams).
    working: AtomicUsize,
    /// When a request last completed, in ms after `epoch` (0: never).
    useful_ms: AtomicU64,
    evicted: std::sync::atomic::AtomicBool,
    evict: tokio::sync::Notify,
    /// Whether the peer ever sent a byte (or, HTTP/2, began a stream).
    heard: std::sync::atomic::AtomicBool,
}

impl Activity {
    pub(super) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            begun: std::sync::atomic::AtomicBool::new(false),
            working: AtomicUsize::new(0),
            useful_ms: AtomicU64::new(0),
            evicted: std::sync::atomic::AtomicBool::new(false),
            evict: tokio::sync::Notify::new(),
            heard: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Marks a request at work (in a handler) until the guard drops; then
    /// the connection has just been useful.
    pub(super) fn begin_work(self: &Arc<Self>) -> AtWork {
        self.working.fetch_add(1, Ordering::AcqRel);
        AtWork(self.clone())
    }

    pub(super) fn is_working(&self) -> bool {
        self.working.load(Ordering::Acquire) > 0
    }

    /// From when it may be evicted (`None` while a request is in a handler):
    /// [`NEW_CONNECTION_GRACE`] after it connected if it never completed a
    /// request, else [`IDLE_BEFORE_EVICTION`] after it last did.
    pub(super) fn evictable_at(&self) -> Option<Instant> {
        if self.is_working() {
            return None;
        }
        let useful = self.useful_ms.load(Ordering::Relaxed);
        Some(if useful == 0 {
            self.epoch + NEW_CONNECTION_GRACE
        } else {
            self.epoch + Duration::from_millis(useful) + IDLE_BEFORE_EVICTION
        })
    }

    /// Its rank for eviction, least useful first: whether it ever completed
    /// a request, whether it ever sent a byte, then when it last completed
    /// a request (or connected).
    pub(super) fn rank(&self) -> (bool, bool, Instant) {
        let useful = self.useful_ms.load(Ordering::Relaxed);
        (
            useful > 0,
            self.heard.load(Ordering::Relaxed),
            self.epoch + Duration::from_millis(useful),
        )
    }

    pub(super) fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// Asks the connection to close to make room for a new one.
    pub(super) fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.evict.notify_one();
    }

    /// Resolves once the connection has been asked to make room.
    pub(super) async fn evicted(&self) {
        self.evict.notified().await;
    }

    /// Whether a request has begun on this connection.
    pub(super) fn has_begun(&self) -> bool {
        self.begun.load(Ordering::Acquire)
    }

    pub(super) fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub(super) fn begin_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.begun.store(true, Ordering::Release);
        self.heard.store(true, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub(super) fn idle_deadline(&self, idle: Duration) -> Instant {
        self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle
    }

    pub(super) fn is_idle(&self, idle: Duration) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && Instant::now() >= self.idle_deadline(idle)
    }
}

/// Marks a request at work until dropped.
pub(super) struct AtWork(Arc<Activity>);

impl Drop for AtWork {
    fn drop(&mut self) {
        // At least 1 ms: 0 means it never completed one.
        let now = (self.0.epoch.elapsed().as_millis() as u64).max(1);
        self.0.useful_ms.store(now, Ordering::Relaxed);
        self.0.working.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Marks a request in flight until dropped.
pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream that records when bytes last moved, for the idle timeout.
pub(super) struct Tracked {
    pub(super) inner: UnixStream,
    pub(super) activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
            self.activity.heard.store(true, Ordering::Relaxed);
        }
        poll
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
