//! Who gets in: every connection is registered with its caller's uid; at
//! the connection cap a new one takes the place of the least useful, and
//! no caller holds more than its share ([`Registry::share`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::activity::Activity;

/// A connection's place in the registry, given up when its task ends (or
/// unwinds).
pub(super) struct Registered {
    pub(super) id: u64,
    pub(super) registry: Arc<Registry>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.remove(self.id);
    }
}

/// The connections a server holds, so that a new one can take the place of
/// the least useful when the cap is reached.
#[derive(Default)]
pub(super) struct Registry {
    conns: std::sync::Mutex<std::collections::HashMap<u64, (u32, Arc<Activity>)>>,
    next_id: AtomicU64,
    /// Set while the cap is reached, so that it is logged once per episode.
    full: std::sync::atomic::AtomicBool,
    /// Woken when a connection ends.
    pub(super) changed: tokio::sync::Notify,
}

impl Registry {
    pub(super) fn insert(&self, uid: u32, activity: Arc<Activity>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        crate::sync::lock(&self.conns).insert(id, (uid, activity));
        id
    }

    /// Whether `uid` may have one more connection when it may hold
    /// `per_caller`: yes under its share; at its share, yes if one of its
    /// own connections can make room (evicted as at the cap: the least
    /// useful first, never one at work); else no, and how many it holds.
    /// One caller's flood thus costs only its own connections, and the
    /// cap stays free for the others.
    pub(super) fn share(&self, uid: u32, per_caller: usize) -> Result<(), usize> {
        let conns = crate::sync::lock(&self.conns);
        let mine = || {
            conns
                .values()
                .filter(move |(u, a)| *u == uid && !a.is_evicted())
                .map(|(_, a)| a)
        };
        let held = mine().count();
        if held < per_caller {
            return Ok(());
        }
        let now = Instant::now();
        match mine()
            .filter(|a| a.evictable_at().is_some_and(|at| at <= now))
            .min_by_key(|a| a.rank())
        {
            Some(own) => {
                own.evict();
                Ok(())
            }
            None => Err(held),
        }
    }

    pub(super) fn remove(&self, id: u64) {
        crate::sync::lock(&self.conns).remove(&id);
        self.changed.notify_waiters();
    }

    pub(super) fn is_empty(&self) -> bool {
        crate::sync::lock(&self.conns).is_empty()
    }

    /// Whether a new connection may be accepted under `max`: there is a
    /// free slot, or a connection that [`Registry::make_room`] may close.
    /// If not, when one may become evictable (`None`: every connection is
    /// in a handler; look again a moment later).
    pub(super) fn admission(&self, max: usize) -> Result<(), Option<Instant>> {
        let conns = crate::sync::lock(&self.conns);
        let mut live = conns.values().map(|(_, a)| a).filter(|a| !a.is_evicted());
        if live.clone().count() < max {
            return Ok(());
        }
        let now = Instant::now();
        let mut next = None;
        for at in live.by_ref().filter_map(|a| a.evictable_at()) {
            if at <= now {
                return Ok(());
            }
            next = Some(next.map_or(at, |n: Instant| n.min(at)));
        }
        Err(next)
    }

    /// Makes room for one more connection under `max` by evicting the least
    /// useful one if the cap is reached. Only a connection with no request
    /// in a handler is evicted, and only once it has had its chance:
    /// a grace to complete a first request, or a spell of idleness after
    /// one ([`Activity::evictable_at`]) (a pooled keep-alive
    /// connection its client is about to reuse is not pulled from under it).
    /// Silent connections go first, then those stuck in a request
    /// (slow headers, half a body), oldest first, then the longest idle.
    pub(super) fn make_room(&self, max: usize) {
        let conns = crate::sync::lock(&self.conns);
        let live = conns.values().filter(|(_, a)| !a.is_evicted()).count();
        if live < max {
            if live <= max / 2 {
                self.full.store(false, Ordering::Relaxed);
            }
            return;
        }
        let now = Instant::now();
        let victim = conns
            .values()
            .map(|(_, a)| a)
            .filter(|a| !a.is_evicted() && a.evictable_at().is_some_and(|at| at <= now))
            .min_by_key(|a| a.rank());
        let Some(victim) = victim else {
            // All got to work since `admission`: one over the cap, briefly.
            return;
        };
        if !self.full.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                max_connections = max,
                "connection cap reached: closing the least recently useful connections to make room"
            );
        }
        victim.evict();
    }
}

/// At the cap with every connection in a handler, how soon to look again
/// (besides when a connection ends).
pub(super) const BUSY_RECHECK: Duration = Duration::from_millis(250);
