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

use base64::Engine;
use md5::{Digest, Md5};
use msnp24_proto::AccountName;

use crate::config::ThrottleConfig;
use crate::state::AppState;
use crate::storage::{Account, Storage, StorageError};

/// Runs argon2 work on a few dedicated threads, one per core. Each hash needs 19 MiB; on tokio's
/// blocking pool (up to hundreds of threads) a burst of logins left hundreds of MiB held by the
/// allocator's per-thread arenas. A fixed pool bounds both the memory and the CPU that password
/// checks can take, and queues the rest.
fn argon2_pool() -> &'static std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>> {
    static POOL: std::sync::OnceLock<std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>> =
        std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let rx = std::sync::Arc::new(Mutex::new(rx));
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || loop {
                    // The lock is held only to take the next job, not while running it.
                    let job = lock(&rx).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => break,
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start an argon2 thread");
            }
        }
        tx
    })
}

/// Runs `work` on the argon2 pool and waits for its result.
async fn on_argon2_pool<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    argon2_pool()
        .send(Box::new(move || {
            let _ = tx.send(work());
        }))
        .map_err(|_| anyhow::anyhow!("the password hashing threads are gone"))?;
    rx.await
        .map_err(|_| anyhow::anyhow!("a password hashing thread failed"))
}

/// Hashes a password with argon2id (m=19 MiB, t=2, p=1) off the async threads.
pub async fn hash_password(password: String) -> anyhow::Result<String> {
    on_argon2_pool(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("hashing password: {e}"))
    })
    .await?
}

/// Checks a password against a stored hash off the async threads; a corrupt hash never matches.
pub async fn verify_password(password: String, hash: String) -> bool {
    on_argon2_pool(move || {
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

/// The digest Skype-name clients send to `/login/skypetoken`:
/// base64(MD5(name + "\nskyper\n" + password)), with the name in lower case.
pub fn legacy_digest(name: &str, password: &str) -> String {
    let mut md5 = Md5::new();
    md5.update(name.to_ascii_lowercase().as_bytes());
    md5.update(b"\nskyper\n");
    md5.update(password.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(md5.finalize())
}

/// Both hashes kept for a password: argon2 of the password, and argon2 of its legacy digest.
pub async fn hash_credentials(
    name: &AccountName,
    password: &str,
) -> anyhow::Result<(String, String)> {
    let digest = legacy_digest(name.as_str(), password);
    let hash = hash_password(password.to_string()).await?;
    let legacy = hash_password(digest).await?;
    Ok((hash, legacy))
}

/// Why an account could not be created or changed.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The password breaks the rules.
    #[error("{0}")]
    BadPassword(&'static str),
    /// The name (or e-mail alias) is taken.
    #[error("already exists")]
    Conflict,
    /// No such account.
    #[error("no such account")]
    NotFound,
    /// Storage or hashing failed.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<StorageError> for AccountError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Conflict => AccountError::Conflict,
            e => AccountError::Other(e.into()),
        }
    }
}

/// Creates an account with a checked, hashed password.
pub async fn create(
    storage: &dyn Storage,
    name: &AccountName,
    password: &str,
) -> Result<Account, AccountError> {
    validate_password(password).map_err(AccountError::BadPassword)?;
    let (hash, legacy) = hash_credentials(name, password).await?;
    Ok(storage.create_account(name, &hash, &legacy).await?)
}

/// Sets a new password; every token issued before stops working.
pub async fn set_password(
    storage: &dyn Storage,
    name: &AccountName,
    password: &str,
) -> Result<(), AccountError> {
    validate_password(password).map_err(AccountError::BadPassword)?;
    let (hash, legacy) = hash_credentials(name, password).await?;
    if storage.set_password(name, &hash, &legacy).await? {
        Ok(())
    } else {
        Err(AccountError::NotFound)
    }
}

/// Why a password login failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// Too many failures for this account or address; retry after this many seconds.
    #[error("too many failed logins; try again in {0} s")]
    Throttled(u64),
    /// Unknown user or wrong password (deliberately indistinguishable).
    #[error("unknown user or wrong password")]
    Invalid,
    /// Storage failed.
    #[error("internal error")]
    Internal,
}

/// Which secret a login presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secret<'a> {
    /// The password itself.
    Password(&'a str),
    /// The legacy Skype digest of it.
    LegacyDigest(&'a str),
}

/// Finds an account by name or e-mail alias.
pub async fn find(storage: &dyn Storage, login: &str) -> Result<Option<Account>, StorageError> {
    let login = login.trim();
    if login.contains('@') {
        return storage.account_by_email(login).await;
    }
    match AccountName::parse(login) {
        Ok(name) => storage.account(&name).await,
        Err(_) => Ok(None),
    }
}

/// Checks a login (name or e-mail, and a secret) with throttling per account and per address.
/// Unknown accounts are checked against a dummy hash so both failures take as long.
pub async fn authenticate(
    state: &AppState,
    login: &str,
    secret: Secret<'_>,
    ip: IpAddr,
) -> Result<Account, LoginError> {
    let key = login.trim().to_ascii_lowercase();
    if let Some(wait) = state.throttle.locked(&key, ip) {
        tracing::info!(%ip, account = %key, "login throttled");
        crate::stats::login("throttled");
        return Err(LoginError::Throttled(wait));
    }
    let account = find(state.storage.as_ref(), login).await.map_err(|e| {
        tracing::error!(error = %e, "login lookup failed");
        crate::stats::login("error");
        LoginError::Internal
    })?;
    let (presented, hash) = match (secret, &account) {
        (Secret::Password(p), Some(a)) => (p.to_string(), a.password_hash.clone()),
        (Secret::LegacyDigest(d), Some(a)) => (
            d.to_string(),
            a.legacy_hash
                .clone()
                .unwrap_or_else(|| DUMMY_HASH.to_string()),
        ),
        (Secret::Password(p) | Secret::LegacyDigest(p), None) => {
            (p.to_string(), DUMMY_HASH.to_string())
        }
    };
    let ok = verify_password(presented, hash).await;
    match account.filter(|_| ok) {
        Some(a) => {
            state.throttle.succeeded(&key);
            crate::stats::login("ok");
            Ok(a)
        }
        None => {
            state.throttle.failed(&key, ip);
            crate::stats::login("invalid");
            tracing::info!(%ip, account = %key, "login failed");
            Err(LoginError::Invalid)
        }
    }
}

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
    fn legacy_digest_is_base64_md5() {
        // MD5("alice\nskyper\nsecret") computed independently (Python hashlib).
        let d = legacy_digest("Alice", "secret");
        assert_eq!(d, "Iu55xV3cyxzQZeFgaSJ/Qw==");
        assert_eq!(d, legacy_digest("alice", "secret"));
        assert_ne!(d, legacy_digest("alice", "secret2"));
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
