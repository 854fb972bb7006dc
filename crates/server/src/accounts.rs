//! Accounts: argon2 password hashes, password checks off the async threads, and throttling of
//! failed logins per account and per client address.

use std::net::IpAddr;
use std::sync::Mutex;

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;

use base64::Engine;
use md5::{Digest, Md5};
use msnp24_proto::AccountName;

use crate::limits::login::Verdict;
use crate::state::AppState;
use crate::storage::{Account, Storage, StorageError};
use crate::text;

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
                    let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
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

/// Longest login (account name or e-mail alias) looked at, in bytes: longer ones fail at once,
/// before any lookup, hashing or throttle entry (an e-mail address is at most 254).
pub const MAX_LOGIN_LEN: usize = 256;

/// Longest password (or legacy digest) checked, in bytes; longer ones fail at once.
pub const MAX_SECRET_LEN: usize = 1024;

/// Checks a login (name or e-mail, and a secret), throttled per address, per account (after
/// aliases are resolved) and per account from one address (`crate::limits::login`). Unknown
/// accounts are checked against a dummy hash so both failures take as long.
pub async fn authenticate(
    state: &AppState,
    login: &str,
    secret: Secret<'_>,
    ip: IpAddr,
) -> Result<Account, LoginError> {
    let presented = match secret {
        Secret::Password(p) | Secret::LegacyDigest(p) => p,
    };
    if login.len() > MAX_LOGIN_LEN || presented.len() > MAX_SECRET_LEN {
        state.throttle.failed_address(ip);
        tracing::info!(%ip, login = %text::log(login), login_bytes = login.len(), secret_bytes = presented.len(), "login refused: name or password too long");
        crate::stats::login("invalid");
        return Err(LoginError::Invalid);
    }
    let account = find(state.storage.as_ref(), login).await.map_err(|e| {
        tracing::error!(error = %e, "login lookup failed");
        crate::stats::login("error");
        LoginError::Internal
    })?;
    // A name and its e-mail alias share one count: the account's, once it is known.
    let key = match &account {
        Some(a) => a.name.to_string(),
        None => login.trim().to_ascii_lowercase(),
    };
    match state.throttle.check(&key, ip) {
        Verdict::Allow => {}
        Verdict::Slow(pause) => {
            tracing::info!(%ip, account = %text::log(&key), pause_ms = pause.as_millis() as u64, "login slowed: the account failed too often");
            tokio::time::sleep(pause).await;
        }
        Verdict::Refuse(wait) => {
            tracing::info!(%ip, account = %text::log(&key), "login throttled");
            crate::stats::login("throttled");
            return Err(LoginError::Throttled(wait));
        }
    }
    let hash = match (secret, &account) {
        (Secret::Password(_), Some(a)) => a.password_hash.clone(),
        (Secret::LegacyDigest(_), Some(a)) => a
            .legacy_hash
            .clone()
            .unwrap_or_else(|| DUMMY_HASH.to_string()),
        (_, None) => DUMMY_HASH.to_string(),
    };
    let ok = verify_password(presented.to_string(), hash).await;
    match account.filter(|_| ok) {
        Some(a) => {
            state.throttle.succeeded(&key, ip);
            crate::stats::login("ok");
            Ok(a)
        }
        None => {
            state.throttle.failed(&key, ip);
            crate::stats::login("invalid");
            tracing::info!(%ip, account = %text::log(&key), "login failed");
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
}
