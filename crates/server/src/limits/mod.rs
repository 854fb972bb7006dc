//! Every limit a peer can meet, in one place: open connections per address, frames per second per
//! connection, messages per second per account (keyed rates on `governor`), and failed password
//! logins per address, per account and per account from one address. A strict client dies on any
//! error but 715 (§0.4), so each is set far above what a real client does. `docs/security.md`
//! lists every limit, its value and what happens when it is hit.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use msnp24_proto::AccountName;

use crate::config::SendRateConfig;

pub mod login;

pub use login::{LoginThrottle, ThrottleKey};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding these locks; recover rather than refuse every later caller.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The address a per-address limit counts: an IPv6 client controls a whole /64, so it counts as
/// one; an IPv4-mapped IPv6 address counts as the IPv4 address.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(
                u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000,
            )),
        },
    }
}

/// Counts open connections per client address (one count for MSNP over TCP and TLS with gateway
/// sessions, one for HTTP and HTTPS).
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
        let ip = address_key(ip);
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
        lock(&self.open).get(&address_key(ip)).copied().unwrap_or(0)
    }

    /// The configured maximum (0: none).
    pub fn max_per_ip(&self) -> usize {
        self.max_per_ip
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

/// The file descriptors connections may take: the open-file limit less a reserve for everything
/// else the process opens (the database, listeners, cluster links, logs). Every accept loop takes
/// a place here before serving a connection, so that running out refuses newcomers instead of
/// failing the database or spinning on `EMFILE`. Running low is logged once, and again once
/// places are free.
#[derive(Debug)]
pub struct DescriptorBudget {
    max: usize,
    open: Arc<AtomicUsize>,
    low: AtomicBool,
    /// Held for `EMFILE`: closed to make room to accept and close the connection waiting, so the
    /// listener does not wake for it again and again.
    spare: Mutex<Option<std::fs::File>>,
}

/// One connection's descriptor; dropping it frees the place.
#[derive(Debug)]
pub struct DescriptorSlot {
    open: Arc<AtomicUsize>,
}

impl DescriptorBudget {
    /// A budget of the process's soft open-file limit less `reserve` (at least one place).
    pub fn from_rlimit(reserve: usize) -> DescriptorBudget {
        let soft = rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|(soft, _)| usize::try_from(soft).unwrap_or(usize::MAX))
            .unwrap_or(1024);
        DescriptorBudget::new(soft.saturating_sub(reserve).max(1))
    }

    /// A budget of `max` connections.
    pub fn new(max: usize) -> DescriptorBudget {
        DescriptorBudget {
            max,
            open: Arc::default(),
            low: AtomicBool::new(false),
            spare: Mutex::new(std::fs::File::open("/dev/null").ok()),
        }
    }

    /// A place for one more connection, or `None` (logged once) when the budget is spent.
    pub fn try_acquire(&self, listener: &str) -> Option<DescriptorSlot> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        match taken {
            Ok(n) => {
                // Recover below nine tenths, so a peer hovering at the edge cannot flood the log.
                if n < self.max - self.max / 10 && self.low.swap(false, Ordering::AcqRel) {
                    tracing::info!(
                        listener,
                        open = n,
                        limit = self.max,
                        "file descriptors available again; accepting connections"
                    );
                }
                Some(DescriptorSlot {
                    open: self.open.clone(),
                })
            }
            Err(n) => {
                self.running_low(listener, n, None);
                None
            }
        }
    }

    /// Notes that the process ran out (`accept` failed with `EMFILE`/`ENFILE`); logged once.
    pub fn exhausted(&self, listener: &str, error: &std::io::Error) {
        self.running_low(listener, self.open.load(Ordering::Acquire), Some(error));
    }

    fn running_low(&self, listener: &str, open: usize, error: Option<&std::io::Error>) {
        if !self.low.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                listener,
                open,
                limit = self.max,
                error = error.map(tracing::field::display),
                "file descriptors are running out; refusing new connections until some close"
            );
        }
    }

    /// Gives up the spare descriptor (see `spare`) for `f`, then takes it again.
    pub async fn with_spare<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        drop(lock(&self.spare).take());
        let out = f.await;
        *lock(&self.spare) = std::fs::File::open("/dev/null").ok();
        out
    }

    /// Connections holding a place.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Places in all.
    pub fn max(&self) -> usize {
        self.max
    }
}

impl Drop for DescriptorSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A sustained rate with a burst: `burst` at once, then one more every `1 / per_second` s.
/// `None` when `per_second` is 0 (or not a number): no limit.
pub fn quota(per_second: f64, burst: u32) -> Option<Quota> {
    if per_second <= 0.0 || !per_second.is_finite() {
        return None;
    }
    let period = Duration::from_secs_f64((1.0 / per_second).max(1e-9));
    let burst = NonZeroU32::new(burst.max(1))?;
    Quota::with_period(period).map(|q| q.allow_burst(burst))
}

/// One rate, for one thing (a connection's frames).
pub struct Rate<C: Clock = DefaultClock> {
    limiter: Option<RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>>,
}

/// Frames per second of one connection: `burst` frames at once, refilled at `per_sec` a second.
pub type FrameRate = Rate<DefaultClock>;

impl Rate<DefaultClock> {
    /// A full allowance; `per_sec` 0 turns the limit off.
    pub fn new(per_sec: u32, burst: u32) -> Rate {
        Rate::with_clock(f64::from(per_sec), burst, &DefaultClock::default())
    }
}

impl<C: Clock + Clone> Rate<C> {
    /// [`Rate::new`] on a given clock (tests step a fake one).
    pub fn with_clock(per_second: f64, burst: u32, clock: &C) -> Rate<C> {
        Rate {
            limiter: quota(per_second, burst)
                .map(|q| RateLimiter::direct_with_clock(q, C::clone(clock))),
        }
    }

    /// Takes one unit; false when over the rate.
    pub fn allow(&mut self) -> bool {
        self.limiter.as_ref().is_none_or(|l| l.check().is_ok())
    }
}

/// A governor limiter with one state per key.
type KeyedLimiter<K, C> =
    RateLimiter<K, DefaultKeyedStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// One rate per key (per account), in a map that forgets keys whose allowance is full again once
/// it holds more than `max_keys`, so that many keys cost bounded memory.
pub struct KeyedRate<K: Hash + Eq + Clone, C: Clock = DefaultClock> {
    limiter: Option<KeyedLimiter<K, C>>,
    max_keys: usize,
}

impl<K: Hash + Eq + Clone> KeyedRate<K, DefaultClock> {
    /// `per_second` sustained with `burst` at once, per key; `per_second` 0 turns it off.
    pub fn new(per_second: f64, burst: u32, max_keys: usize) -> KeyedRate<K> {
        KeyedRate::with_clock(per_second, burst, max_keys, &DefaultClock::default())
    }
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> KeyedRate<K, C> {
    /// [`KeyedRate::new`] on a given clock (tests step a fake one).
    pub fn with_clock(per_second: f64, burst: u32, max_keys: usize, clock: &C) -> KeyedRate<K, C> {
        KeyedRate {
            limiter: quota(per_second, burst)
                .map(|q| RateLimiter::dashmap_with_clock(q, C::clone(clock))),
            max_keys,
        }
    }

    /// Takes one unit for `key`; false when the key is over its rate.
    pub fn allow(&self, key: &K) -> bool {
        let Some(l) = &self.limiter else {
            return true;
        };
        if l.len() > self.max_keys {
            l.retain_recent();
            l.shrink_to_fit();
        }
        l.check_key(key).is_ok()
    }

    /// Keys currently remembered.
    pub fn tracked(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

/// Accounts whose send allowance is remembered before full ones are forgotten.
const SEND_RATE_KEYS: usize = 10_000;

/// Something per account, shared by the account's endpoints (§9 `803`): messages (`SDG`), or
/// commands that store other rows.
pub struct SendLimiter {
    rate: KeyedRate<AccountName>,
}

impl SendLimiter {
    /// A limiter with these settings.
    pub fn new(config: SendRateConfig) -> SendLimiter {
        SendLimiter {
            rate: KeyedRate::new(config.per_second, config.burst, SEND_RATE_KEYS),
        }
    }

    /// Takes one unit of `account`'s allowance; false when the account is over its rate.
    pub fn try_send(&self, account: &AccountName) -> bool {
        self.rate.allow(account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

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
    fn descriptor_places_are_counted_freed_and_never_overdrawn() {
        let b = DescriptorBudget::new(3);
        let held: Vec<_> = (0..5).filter_map(|_| b.try_acquire("test")).collect();
        assert_eq!(held.len(), 3);
        assert_eq!(b.open(), 3);
        assert!(b.low.load(Ordering::Acquire));
        drop(held);
        assert_eq!(b.open(), 0);
        assert!(b.try_acquire("test").is_some());
        assert!(
            !b.low.load(Ordering::Acquire),
            "recovered once places were free"
        );
        assert!(DescriptorBudget::from_rlimit(usize::MAX).max() >= 1);
    }

    #[test]
    fn an_ipv6_slash_64_counts_as_one_address() {
        let l = ConnectionLimiter::new(1);
        let _a = l.try_acquire("2001:db8::1".parse().unwrap()).unwrap();
        assert!(l.try_acquire("2001:db8::ffff:2".parse().unwrap()).is_none());
        assert!(l.try_acquire("2001:db8:0:1::1".parse().unwrap()).is_some());
        assert_eq!(
            address_key("::ffff:10.0.0.1".parse().unwrap()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn a_rate_allows_a_burst_then_the_rate() {
        let clock = FakeRelativeClock::default();
        let mut r = Rate::with_clock(10.0, 5, &clock);
        assert_eq!((0..20).filter(|_| r.allow()).count(), 5);
        clock.advance(Duration::from_millis(500));
        assert_eq!((0..20).filter(|_| r.allow()).count(), 5);
        clock.advance(Duration::from_secs(3600));
        assert_eq!((0..20).filter(|_| r.allow()).count(), 5);
        let mut off = FrameRate::new(0, 1);
        assert!((0..10_000).all(|_| off.allow()));
    }

    #[test]
    fn keyed_rates_are_per_key_and_forget_full_keys() {
        let clock = FakeRelativeClock::default();
        let l = KeyedRate::with_clock(2.0, 3, 100, &clock);
        let (a, b) = ("alice".to_string(), "bob".to_string());
        assert!((0..3).all(|_| l.allow(&a)));
        assert!(!l.allow(&a));
        assert!(l.allow(&b), "keys have their own allowance");
        clock.advance(Duration::from_millis(500));
        assert!(l.allow(&a));
        assert!(!l.allow(&a));
        clock.advance(Duration::from_secs(60));
        assert!((0..3).all(|_| l.allow(&a)));
        assert!(!l.allow(&a), "never more than the burst");

        // Many keys: the map is pruned of keys whose allowance is full again.
        for i in 0..1000 {
            l.allow(&format!("user{i}"));
            clock.advance(Duration::from_secs(10));
        }
        assert!(l.tracked() <= 102, "{} keys remembered", l.tracked());
        let off: KeyedRate<String> = KeyedRate::new(0.0, 1, 10);
        assert!((0..1000).all(|_| off.allow(&a)));
        assert_eq!(off.tracked(), 0);
    }
}
