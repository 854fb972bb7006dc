//! Cluster-wide locks in Redis: `SET NX PX` with a random token, released only by its holder.
//! They order changes (a thread's members, an account's presence); the lease bounds how long a
//! dead holder can block the others.

use std::time::Duration;

use super::RedisConn;
use async_trait::async_trait;

use super::keys::Keys;
use super::{SharedGuard, SharedLocks};

/// How long a lock stays held if its holder vanishes.
const LEASE: Duration = Duration::from_secs(10);
/// How long to wait for a lock before going on without it (and saying so).
const PATIENCE: Duration = Duration::from_secs(5);

/// Deletes the lock only if it still holds our token (it may have expired and been taken).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Locks shared by every node through Redis.
pub struct RedisLocks {
    conn: RedisConn,
    keys: Keys,
    release: redis::Script,
}

impl RedisLocks {
    /// Locks under the cluster's keys.
    pub fn new(conn: redis::aio::ConnectionManager, keys: Keys) -> RedisLocks {
        RedisLocks {
            conn: RedisConn(conn),
            keys,
            release: redis::Script::new(RELEASE),
        }
    }
}

struct RedisGuard {
    conn: RedisConn,
    key: String,
    token: String,
    release: redis::Script,
}

impl Drop for RedisGuard {
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return; // the lease ends it
        };
        let mut conn = self.conn.clone();
        let key = std::mem::take(&mut self.key);
        let token = std::mem::take(&mut self.token);
        let release = self.release.clone();
        rt.spawn(async move {
            let done: redis::RedisResult<i64> =
                release.key(&key).arg(&token).invoke_async(&mut conn).await;
            if let Err(e) = done {
                tracing::warn!(lock = %key, error = %e, "lock not released; its lease will end it");
            }
        });
    }
}

#[async_trait]
impl SharedLocks for RedisLocks {
    async fn acquire(&self, name: &str) -> SharedGuard {
        let key = self.keys.lock(name);
        let token = format!("{:032x}", rand::random::<u128>());
        let mut conn = self.conn.clone();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut pause = Duration::from_millis(1);
        loop {
            let got: redis::RedisResult<Option<String>> = redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(LEASE.as_millis() as u64)
                .query_async(&mut conn)
                .await;
            match got {
                Ok(Some(_)) => {
                    return Box::new(RedisGuard {
                        conn,
                        key,
                        token,
                        release: self.release.clone(),
                    })
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(lock = %key, error = %e, "cluster lock unavailable; going on without it");
                    return Box::new(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::error!(lock = %key, "cluster lock still held after {PATIENCE:?}; going on without it");
                return Box::new(());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}
