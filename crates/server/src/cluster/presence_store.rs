//! Presence state shared by every node: one JSON document per online account, and the deadlines
//! in one sorted set, so an endpoint's keep-alive still runs out when the node that scheduled it
//! is gone.

use std::sync::Arc;
use std::time::Duration;

use super::RedisConn;
use async_trait::async_trait;
use msnp24_proto::{AccountName, Epid};

use super::keys::Keys;
use super::SharedLocks;
use crate::presence::store::{PresenceGuard, PresenceResult, PresenceStoreError, Stripes};
use crate::presence::{PresenceStore, Timer};

/// At most this many deadlines are claimed at once.
const DUE_BATCH: usize = 500;

/// Claims due deadlines atomically, so each fires on one node only.
const TAKE_DUE: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #due > 0 then
  redis.call('ZREM', KEYS[1], unpack(due))
end
return due
";

/// Presence in Redis.
pub struct RedisPresenceStore {
    conn: RedisConn,
    keys: Keys,
    locks: Arc<dyn SharedLocks>,
    /// Taken before the shared lock, so that changes made on this node wait in memory rather
    /// than by polling Redis.
    stripes: Stripes,
    take_due: redis::Script,
}

impl RedisPresenceStore {
    /// A store under the cluster's keys, serialised by `locks`.
    pub fn new(
        conn: redis::aio::ConnectionManager,
        keys: Keys,
        locks: Arc<dyn SharedLocks>,
    ) -> RedisPresenceStore {
        RedisPresenceStore {
            conn: RedisConn(conn),
            keys,
            locks,
            stripes: Stripes::default(),
            take_due: redis::Script::new(TAKE_DUE),
        }
    }
}

fn failed(e: redis::RedisError) -> PresenceStoreError {
    PresenceStoreError(e.to_string())
}

fn decode(account: &AccountName, raw: Option<String>) -> Option<crate::presence::AccountState> {
    let raw = raw?;
    match serde_json::from_str(&raw) {
        Ok(state) => Some(state),
        Err(e) => {
            // Presence is not durable: a damaged document is dropped, and the account's clients
            // publish again.
            tracing::warn!(account = %account, error = %e, "unreadable presence document ignored");
            None
        }
    }
}

fn timer_member(t: &Timer) -> String {
    format!("{}\t{}\t{}", t.account, t.epid, t.at_ms)
}

fn parse_timer(member: &str) -> Option<Timer> {
    let mut parts = member.split('\t');
    let account = AccountName::parse(parts.next()?).ok()?;
    let epid = Epid::parse(parts.next()?).ok()?;
    let at_ms = parts.next()?.parse().ok()?;
    Some(Timer {
        at_ms,
        account,
        epid,
    })
}

#[async_trait]
impl PresenceStore for RedisPresenceStore {
    async fn lock(&self, account: &AccountName) -> PresenceGuard {
        let local = self.stripes.lock(account).await;
        let shared = self.locks.acquire(&format!("presence:{account}")).await;
        Box::new((local, shared))
    }

    async fn load(
        &self,
        account: &AccountName,
    ) -> PresenceResult<Option<crate::presence::AccountState>> {
        let raw: Option<String> = redis::cmd("GET")
            .arg(self.keys.presence(account))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(failed)?;
        Ok(decode(account, raw))
    }

    async fn load_many(
        &self,
        accounts: &[AccountName],
    ) -> PresenceResult<Vec<(AccountName, crate::presence::AccountState)>> {
        if accounts.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = accounts.iter().map(|a| self.keys.presence(a)).collect();
        let raw: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(failed)?;
        Ok(accounts
            .iter()
            .zip(raw)
            .filter_map(|(a, r)| decode(a, r).map(|s| (a.clone(), s)))
            .collect())
    }

    async fn save(
        &self,
        account: &AccountName,
        state: Option<&crate::presence::AccountState>,
    ) -> PresenceResult<()> {
        let key = self.keys.presence(account);
        let mut conn = self.conn.clone();
        match state {
            Some(s) => {
                let text = serde_json::to_string(s)
                    .map_err(|e| PresenceStoreError(format!("encoding: {e}")))?;
                redis::cmd("SET")
                    .arg(key)
                    .arg(text)
                    .query_async::<()>(&mut conn)
                    .await
            }
            None => {
                redis::cmd("DEL")
                    .arg(key)
                    .query_async::<()>(&mut conn)
                    .await
            }
        }
        .map_err(failed)
    }

    async fn schedule(&self, timer: Timer) -> PresenceResult<()> {
        redis::cmd("ZADD")
            .arg(self.keys.presence_timers())
            .arg(timer.at_ms)
            .arg(timer_member(&timer))
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(failed)
    }

    async fn take_due(&self, now_ms: i64) -> PresenceResult<Vec<Timer>> {
        let due: Vec<String> = self
            .take_due
            .key(self.keys.presence_timers())
            .arg(now_ms)
            .arg(DUE_BATCH)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(failed)?;
        Ok(due
            .iter()
            .filter_map(|m| {
                let t = parse_timer(m);
                if t.is_none() {
                    tracing::warn!(member = %m, "unreadable presence deadline dropped");
                }
                t
            })
            .collect())
    }

    async fn next_due(&self) -> PresenceResult<Option<i64>> {
        let first: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(self.keys.presence_timers())
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(failed)?;
        Ok(first.first().map(|(_, score)| *score as i64))
    }

    fn poll_interval(&self) -> Option<Duration> {
        // Other nodes schedule deadlines too (and a dead node's are taken over), so look often.
        Some(Duration::from_millis(250))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_survive_their_encoding() {
        let t = Timer {
            at_ms: 1_764_000_000_000,
            account: AccountName::parse("alice").unwrap(),
            epid: Epid::parse("{00000001-0000-0000-0000-000000000000}").unwrap(),
        };
        assert_eq!(parse_timer(&timer_member(&t)), Some(t));
        assert_eq!(parse_timer("alice\tnot-an-epid\t5"), None);
        assert_eq!(parse_timer("alice"), None);
    }
}
