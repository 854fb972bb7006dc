//! Failed password logins. Three counts, each a window of failures followed by a lockout:
//! per address (an IPv6 /64 counting as one), which refuses every login from there; per account
//! from one address, which refuses that address for that account; and per account from anywhere,
//! which only slows that account's logins down. So failures from one address lock that address
//! out, never the owner signing in from another, and guessing from many addresses is slowed.
//!
//! These count failures, not attempts, so a check must not use up anything: a rate limiter
//! (governor) cannot be asked without taking a unit, hence the small window counter here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{address_key, lock};
use crate::config::ThrottleConfig;

/// Failure counts remembered at most; past it stale ones are dropped, then the oldest. With
/// login names capped at [`crate::accounts::MAX_LOGIN_LEN`] bytes this bounds the map to a few
/// tens of MiB however many names an attacker tries.
pub const MAX_TRACKED: usize = 50_000;

/// What a failure count is kept for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ThrottleKey {
    /// Every login from one address.
    Address(IpAddr),
    /// One account (its name after aliases are resolved), from anywhere.
    Account(String),
    /// One account from one address.
    AccountFrom(String, IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Window {
    failures: u32,
    started: Instant,
    locked_until: Option<Instant>,
}

/// What to do with a login attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Check the password.
    Allow,
    /// Check the password after this pause (the account is failing from many places).
    Slow(Duration),
    /// Refuse without checking; retry after this many seconds.
    Refuse(u64),
}

/// Counts failed logins per address, per account and per account from one address.
pub struct LoginThrottle {
    config: ThrottleConfig,
    capacity: usize,
    windows: Mutex<HashMap<ThrottleKey, Window>>,
}

impl LoginThrottle {
    /// A throttle with these limits.
    pub fn new(config: ThrottleConfig) -> LoginThrottle {
        LoginThrottle::with_capacity(config, MAX_TRACKED)
    }

    /// A throttle remembering at most `capacity` counts.
    pub fn with_capacity(config: ThrottleConfig, capacity: usize) -> LoginThrottle {
        LoginThrottle {
            config,
            capacity: capacity.max(10),
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// What to do with an attempt on `account` (after aliases are resolved) from `ip`.
    pub fn check(&self, account: &str, ip: IpAddr) -> Verdict {
        self.check_at(account, ip, Instant::now())
    }

    /// [`LoginThrottle::check`] at a given moment.
    pub fn check_at(&self, account: &str, ip: IpAddr, now: Instant) -> Verdict {
        let ip = address_key(ip);
        let map = lock(&self.windows);
        let remaining = |k: &ThrottleKey| {
            map.get(k)
                .and_then(|w| w.locked_until)
                .filter(|until| *until > now)
                .map(|until| (until - now).as_secs().max(1))
        };
        let refused = remaining(&ThrottleKey::Address(ip)).max(remaining(
            &ThrottleKey::AccountFrom(account.to_string(), ip),
        ));
        if let Some(wait) = refused {
            return Verdict::Refuse(wait);
        }
        if remaining(&ThrottleKey::Account(account.to_string())).is_some() {
            return Verdict::Slow(Duration::from_millis(self.config.slow_down_ms));
        }
        Verdict::Allow
    }

    /// Records a failure for `account` from `ip`.
    pub fn failed(&self, account: &str, ip: IpAddr) {
        self.failed_at(account, ip, Instant::now());
    }

    /// [`LoginThrottle::failed`] at a given moment.
    pub fn failed_at(&self, account: &str, ip: IpAddr, now: Instant) {
        let ip = address_key(ip);
        let c = &self.config;
        let mut map = lock(&self.windows);
        self.record(
            &mut map,
            ThrottleKey::Address(ip),
            c.max_failures_per_ip,
            now,
        );
        self.record(
            &mut map,
            ThrottleKey::AccountFrom(account.to_string(), ip),
            c.max_failures_per_account,
            now,
        );
        self.record(
            &mut map,
            ThrottleKey::Account(account.to_string()),
            c.max_failures_per_account,
            now,
        );
    }

    /// Records a failure that names no account (an oversized or unusable login): only the
    /// address counts it.
    pub fn failed_address(&self, ip: IpAddr) {
        let mut map = lock(&self.windows);
        let max = self.config.max_failures_per_ip;
        self.record(
            &mut map,
            ThrottleKey::Address(address_key(ip)),
            max,
            Instant::now(),
        );
    }

    /// Clears the account's count from this address after a success (the address keeps its
    /// count, and so does the account's count from everywhere, which only slows).
    pub fn succeeded(&self, account: &str, ip: IpAddr) {
        lock(&self.windows).remove(&ThrottleKey::AccountFrom(
            account.to_string(),
            address_key(ip),
        ));
    }

    /// Failure counts remembered now.
    pub fn tracked(&self) -> usize {
        lock(&self.windows).len()
    }

    fn record(
        &self,
        map: &mut HashMap<ThrottleKey, Window>,
        key: ThrottleKey,
        max: u32,
        now: Instant,
    ) {
        let window = Duration::from_secs(self.config.window_secs);
        let lockout = Duration::from_secs(self.config.lockout_secs);
        if !map.contains_key(&key) && map.len() >= self.capacity {
            map.retain(|_, w| {
                now.duration_since(w.started) < window || w.locked_until.is_some_and(|u| u > now)
            });
            if map.len() > self.capacity * 9 / 10 {
                // Still full of live counts: forget the oldest tenth at once rather than grow
                // (at once, so that a flood of new names does not scan the map on every one).
                let mut starts: Vec<Instant> = map.values().map(|w| w.started).collect();
                let cut = starts.len() / 10;
                let (_, cutoff, _) = starts.select_nth_unstable(cut);
                let cutoff = *cutoff;
                map.retain(|_, w| w.started > cutoff || w.locked_until.is_some_and(|u| u > now));
            }
        }
        let w = map.entry(key).or_insert(Window {
            failures: 0,
            started: now,
            locked_until: None,
        });
        if now.duration_since(w.started) >= window && w.locked_until.is_none_or(|u| u <= now) {
            *w = Window {
                failures: 0,
                started: now,
                locked_until: None,
            };
        }
        w.failures = w.failures.saturating_add(1);
        if w.failures >= max {
            w.locked_until = Some(now + lockout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle() -> LoginThrottle {
        LoginThrottle::new(ThrottleConfig {
            max_failures_per_account: 3,
            max_failures_per_ip: 10,
            window_secs: 60,
            lockout_secs: 60,
            slow_down_ms: 1000,
        })
    }

    #[test]
    fn failures_lock_the_address_out_of_the_account_and_slow_it_elsewhere() {
        let t = throttle();
        let now = Instant::now();
        let attacker: IpAddr = "192.0.2.1".parse().unwrap();
        let owner: IpAddr = "198.51.100.7".parse().unwrap();
        for _ in 0..2 {
            t.failed_at("alice", attacker, now);
        }
        assert_eq!(t.check_at("alice", attacker, now), Verdict::Allow);
        t.failed_at("alice", attacker, now);
        assert!(matches!(
            t.check_at("alice", attacker, now),
            Verdict::Refuse(_)
        ));
        assert_eq!(
            t.check_at("alice", owner, now),
            Verdict::Slow(Duration::from_secs(1)),
            "the owner elsewhere is slowed, not refused"
        );
        assert_eq!(t.check_at("bob", attacker, now), Verdict::Allow);
        let later = now + Duration::from_secs(61);
        assert_eq!(t.check_at("alice", attacker, later), Verdict::Allow);
    }

    #[test]
    fn an_address_over_its_ceiling_is_refused_for_every_account() {
        let t = throttle();
        let now = Instant::now();
        for i in 0..10 {
            t.failed_at(&format!("user{i}"), "2001:db8::1".parse().unwrap(), now);
        }
        // Another address of the same /64.
        let same_net: IpAddr = "2001:db8::99".parse().unwrap();
        assert!(matches!(
            t.check_at("carol", same_net, now),
            Verdict::Refuse(_)
        ));
        assert_eq!(
            t.check_at("carol", "2001:db8:0:1::1".parse().unwrap(), now),
            Verdict::Allow
        );
    }

    #[test]
    fn the_map_is_bounded() {
        let config = ThrottleConfig {
            max_failures_per_ip: u32::MAX,
            ..ThrottleConfig::default()
        };
        let t = LoginThrottle::with_capacity(config, 1000);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let now = Instant::now();
        for i in 0..5000u64 {
            t.failed_at(&format!("name{i}"), ip, now + Duration::from_millis(i));
        }
        assert!(t.tracked() <= 1000, "{} counts", t.tracked());
        assert!(matches!(t.check("name1", ip), Verdict::Allow));
    }
}
