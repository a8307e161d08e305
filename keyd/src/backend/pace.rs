//! Where a device's calls run: on the async worker that took the request,
//! or handed off the worker first. A hand-off (`block_in_place` or
//! `spawn_blocking`) costs thread wake-ups that a fast token does not
//! justify: measured on SoftHSM, handing off cost more than the signature
//! itself (BENCHMARKS.md, issue 22). A slow or stuck device must not hold a
//! worker, whose other connections would wait behind it.
//!
//! So each device keeps the moving average of its calls' durations. Calls
//! run on the worker only while that average is below [`ON_WORKER_BELOW`],
//! after [`WARM_UP`] calls have shown it; any call slower than
//! [`SLOW_CALL`] sends the next ones off the worker at once (the average
//! jumps to it), until fast calls bring it down again.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Calls whose average is below this run on the worker.
pub(crate) const ON_WORKER_BELOW: Duration = Duration::from_micros(250);
/// A single call this slow puts the device off the worker at once.
pub(crate) const SLOW_CALL: Duration = Duration::from_millis(10);
/// Calls measured, off the worker, before any runs on it.
pub(crate) const WARM_UP: u32 = 32;

/// The pace of one device's calls.
#[derive(Debug, Default)]
pub(crate) struct Pace {
    /// Moving average of call durations, in nanoseconds (1/8 weight per call).
    average_ns: AtomicU64,
    /// Calls measured, up to [`WARM_UP`].
    seen: AtomicU32,
}

impl Pace {
    /// Whether the next call may run on the worker that asks.
    pub(crate) fn on_worker(&self) -> bool {
        self.seen.load(Ordering::Relaxed) >= WARM_UP
            && self.average_ns.load(Ordering::Relaxed) < ON_WORKER_BELOW.as_nanos() as u64
    }

    /// Records how long a call took. Updates race (two workers at once may
    /// each apply theirs to the same old average); an average is all this
    /// needs, and a slow call always wins.
    pub(crate) fn record(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let seen = self.seen.load(Ordering::Relaxed);
        let next = if seen == 0 || took >= SLOW_CALL {
            ns
        } else {
            let old = self.average_ns.load(Ordering::Relaxed);
            old - old / 8 + ns / 8
        };
        self.average_ns.store(next, Ordering::Relaxed);
        if seen < WARM_UP {
            self.seen.store(seen + 1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_calls_run_on_the_worker_after_the_warm_up_and_one_slow_call_stops_that() {
        let pace = Pace::default();
        for _ in 0..WARM_UP - 1 {
            pace.record(Duration::from_micros(10));
            assert!(!pace.on_worker(), "not before the warm-up is over");
        }
        pace.record(Duration::from_micros(10));
        assert!(pace.on_worker());
        pace.record(SLOW_CALL);
        assert!(!pace.on_worker(), "one slow call is enough");
        // Fast calls bring the average down again, gradually.
        let mut calls = 0;
        while !pace.on_worker() {
            pace.record(Duration::from_micros(10));
            calls += 1;
            assert!(calls < 100, "it never came back");
        }
        assert!(calls > 5, "back after {calls} fast calls: too soon");
    }

    #[test]
    fn a_device_slower_than_the_bound_stays_off_the_worker() {
        let pace = Pace::default();
        for _ in 0..1000 {
            pace.record(Duration::from_micros(400));
        }
        assert!(!pace.on_worker());
    }
}
