//! Limits that only abusive peers reach: open connections per address and frames per second per
//! connection. A strict client dies on any error but 715 (§0.4), so both are set far above what a
//! real client does (a handful of connections, a few dozen frames at login, then one every few
//! seconds).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use std::time::Instant;

use crate::ratelimit::TokenBucket;

/// Counts open connections per client address.
#[derive(Debug, Default)]
pub struct ConnectionLimiter {
    max_per_ip: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One open connection's place in the count; dropping it frees the place.
#[derive(Debug)]
pub struct ConnectionSlot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

fn lock(m: &Mutex<HashMap<IpAddr, usize>>) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
    // Nothing panics while holding this lock; recover rather than refuse every later connection.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ConnectionLimiter {
    /// A limiter allowing `max_per_ip` connections per address (0: no limit).
    pub fn new(max_per_ip: usize) -> ConnectionLimiter {
        ConnectionLimiter {
            max_per_ip,
            open: Arc::default(),
        }
    }

    /// A place for one more connection from `ip`, or `None` when it already has the maximum.
    pub fn try_acquire(&self, ip: IpAddr) -> Option<ConnectionSlot> {
        let mut open = lock(&self.open);
        let n = open.entry(ip).or_insert(0);
        if self.max_per_ip != 0 && *n >= self.max_per_ip {
            return None;
        }
        *n += 1;
        Some(ConnectionSlot {
            ip,
            open: self.open.clone(),
        })
    }

    /// Connections currently open from `ip`.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        lock(&self.open).get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Frames per second of one connection: `burst` frames at once, refilled at `per_sec` per second.
#[derive(Debug, Clone)]
pub struct FrameRate {
    per_sec: f64,
    burst: f64,
    bucket: TokenBucket,
}

impl FrameRate {
    /// A full bucket; `per_sec` 0 turns the limit off.
    pub fn new(per_sec: u32, burst: u32) -> FrameRate {
        FrameRate::new_at(per_sec, burst, Instant::now())
    }

    /// [`FrameRate::new`] at a given moment (tests step time from it).
    pub fn new_at(per_sec: u32, burst: u32, now: Instant) -> FrameRate {
        let burst = f64::from(burst.max(1));
        FrameRate {
            per_sec: f64::from(per_sec),
            burst,
            bucket: TokenBucket::full(burst, now),
        }
    }

    /// Takes one frame's token; false when the connection is over its rate.
    pub fn allow(&mut self) -> bool {
        self.allow_at(Instant::now())
    }

    /// [`FrameRate::allow`] at a given moment (tests use it to step time).
    pub fn allow_at(&mut self, now: Instant) -> bool {
        self.per_sec == 0.0 || self.bucket.take(now, self.per_sec, self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_and_freed() {
        let l = ConnectionLimiter::new(2);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = l.try_acquire(ip).unwrap();
        let _b = l.try_acquire(ip).unwrap();
        assert!(l.try_acquire(ip).is_none());
        assert!(l.try_acquire("127.0.0.2".parse().unwrap()).is_some());
        drop(a);
        assert_eq!(l.open_from(ip), 1);
        assert!(l.try_acquire(ip).is_some());
        let unlimited = ConnectionLimiter::new(0);
        let held: Vec<_> = (0..1000)
            .filter_map(|_| unlimited.try_acquire(ip))
            .collect();
        assert_eq!(held.len(), 1000);
    }

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut r = FrameRate::new_at(10, 5, t0);
        assert_eq!((0..20).filter(|_| r.allow_at(t0)).count(), 5);
        let t1 = t0 + std::time::Duration::from_millis(500);
        assert_eq!((0..20).filter(|_| r.allow_at(t1)).count(), 5);
        let t2 = t1 + std::time::Duration::from_secs(3600);
        assert_eq!((0..20).filter(|_| r.allow_at(t2)).count(), 5);
        let mut off = FrameRate::new(0, 1);
        assert!((0..10_000).all(|_| off.allow()));
    }
}
