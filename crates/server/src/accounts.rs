//! Accounts: argon2 password hashes, password checks off the async threads, and throttling of
//! failed logins per account and per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;

use crate::config::ThrottleConfig;

/// Hashes a password with argon2id (m=19 MiB, t=2, p=1) on a blocking thread.
pub async fn hash_password(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("hashing password: {e}"))
    })
    .await?
}

/// Checks a password against a stored hash on a blocking thread; a corrupt hash never matches.
pub async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// A hash that matches nothing, checked when the account does not exist so that unknown names
/// take as long as wrong passwords.
pub const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Ag3Ze5Ctv6mzXdmZjfK6ZhkImTPyjTgDSuF+6wdp6fQ";

/// Checks that a new password is acceptable.
pub fn validate_password(password: &str) -> Result<(), &'static str> {
    if password.chars().count() < 6 {
        return Err("password must be at least 6 characters");
    }
    if password.len() > 1024 {
        return Err("password must be at most 1024 bytes");
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct Window {
    failures: u32,
    started: Instant,
    locked_until: Option<Instant>,
}

/// Counts failed logins and locks out an account or address that fails too often.
pub struct LoginThrottle {
    config: ThrottleConfig,
    accounts: Mutex<HashMap<String, Window>>,
    addresses: Mutex<HashMap<IpAddr, Window>>,
}

impl LoginThrottle {
    /// A throttle with these limits.
    pub fn new(config: ThrottleConfig) -> LoginThrottle {
        LoginThrottle {
            config,
            accounts: Mutex::new(HashMap::new()),
            addresses: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds to wait if this account or address is locked out now.
    pub fn locked(&self, account: &str, ip: IpAddr) -> Option<u64> {
        let now = Instant::now();
        let remaining = |w: Option<&Window>| {
            w.and_then(|w| w.locked_until)
                .filter(|until| *until > now)
                .map(|until| (until - now).as_secs().max(1))
        };
        let a = remaining(lock(&self.accounts).get(account));
        let b = remaining(lock(&self.addresses).get(&ip));
        a.max(b)
    }

    /// Records a failure.
    pub fn failed(&self, account: &str, ip: IpAddr) {
        let window = Duration::from_secs(self.config.window_secs);
        let lockout = Duration::from_secs(self.config.lockout_secs);
        record(
            &mut lock(&self.accounts),
            account.to_string(),
            self.config.max_failures_per_account,
            window,
            lockout,
        );
        record(
            &mut lock(&self.addresses),
            ip,
            self.config.max_failures_per_ip,
            window,
            lockout,
        );
    }

    /// Clears the account's failures after a success (the address keeps its count).
    pub fn succeeded(&self, account: &str) {
        lock(&self.accounts).remove(account);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the counters inconsistent; keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn record<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Window>,
    key: K,
    max: u32,
    window: Duration,
    lockout: Duration,
) {
    let now = Instant::now();
    // Forget stale entries so an attacker cycling names cannot grow the map without bound.
    if map.len() > 100_000 {
        map.retain(|_, w| {
            now.duration_since(w.started) < window || w.locked_until.is_some_and(|u| u > now)
        });
    }
    let w = map.entry(key).or_insert(Window {
        failures: 0,
        started: now,
        locked_until: None,
    });
    if now.duration_since(w.started) >= window {
        *w = Window {
            failures: 0,
            started: now,
            locked_until: None,
        };
    }
    w.failures += 1;
    if w.failures >= max {
        w.locked_until = Some(now + lockout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify() {
        let h = hash_password("secret-pw".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_password("secret-pw".into(), h.clone()).await);
        assert!(!verify_password("wrong".into(), h).await);
        assert!(!verify_password("x".into(), "not a hash".into()).await);
        assert!(!verify_password("x".into(), DUMMY_HASH.into()).await);
    }

    #[test]
    fn locks_after_max_failures() {
        let t = LoginThrottle::new(ThrottleConfig {
            max_failures_per_account: 3,
            max_failures_per_ip: 10,
            window_secs: 60,
            lockout_secs: 60,
        });
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        t.failed("alice", ip);
        t.failed("alice", ip);
        assert_eq!(t.locked("alice", ip), None);
        t.failed("alice", ip);
        assert!(t.locked("alice", ip).is_some());
        assert_eq!(t.locked("bob", ip), None);
    }
}
