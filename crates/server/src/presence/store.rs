//! Where presence state and its deadlines live: this process's memory on one node, or a store
//! every node of a cluster shares (see `crate::cluster`), behind one small trait.

use std::cmp::Reverse;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use msnp24_proto::{AccountName, Epid};

use super::state::AccountState;

/// A deadline of one endpoint: it may turn idle, or its keep-alive may run out. Firing re-checks
/// the state, so a stale or duplicate timer does nothing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timer {
    /// When, unix ms.
    pub at_ms: i64,
    /// Whose endpoint.
    pub account: AccountName,
    /// Which endpoint.
    pub epid: Epid,
}

/// The shared store failed; the change it was part of was not made.
#[derive(Debug, thiserror::Error)]
#[error("presence store: {0}")]
pub struct PresenceStoreError(pub String);

/// Result alias for store calls.
pub type PresenceResult<T> = Result<T, PresenceStoreError>;

/// Held while one account's presence is read, changed and announced; dropping it lets the next
/// change of that account in, so watchers see changes in the order they were made.
pub type PresenceGuard = Box<dyn Send + Sync>;

/// Presence state per account, and the deadlines, behind one lock per account.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// Waits for the account's turn.
    async fn lock(&self, account: &AccountName) -> PresenceGuard;
    /// The account's state, if any endpoint of it is present.
    async fn load(&self, account: &AccountName) -> PresenceResult<Option<AccountState>>;
    /// The states of those of `accounts` that have one, in any order.
    async fn load_many(
        &self,
        accounts: &[AccountName],
    ) -> PresenceResult<Vec<(AccountName, AccountState)>>;
    /// Replaces the account's state; `None` forgets it.
    async fn save(&self, account: &AccountName, state: Option<&AccountState>)
        -> PresenceResult<()>;
    /// Records a deadline.
    async fn schedule(&self, timer: Timer) -> PresenceResult<()>;
    /// Removes and returns the deadlines at or before `now_ms` (each goes to one caller only).
    async fn take_due(&self, now_ms: i64) -> PresenceResult<Vec<Timer>>;
    /// The earliest deadline, unix ms.
    async fn next_due(&self) -> PresenceResult<Option<i64>>;
    /// How often to look for deadlines others scheduled; `None` when only this process schedules.
    fn poll_interval(&self) -> Option<Duration>;
}

/// Changes of one account are serialised by one of these locks; striping keeps the table small
/// without a lock per account.
const STRIPES: usize = 64;

/// In-process locks per account, striped: changes made on this node wait here in memory.
pub struct Stripes(Vec<Arc<tokio::sync::Mutex<()>>>);

impl Default for Stripes {
    fn default() -> Self {
        Stripes((0..STRIPES).map(|_| Arc::default()).collect())
    }
}

impl Stripes {
    /// Waits for the turn of `account`'s stripe.
    pub async fn lock(&self, account: &AccountName) -> tokio::sync::OwnedMutexGuard<()> {
        let mut h = DefaultHasher::new();
        account.hash(&mut h);
        self.0[(h.finish() as usize) % STRIPES]
            .clone()
            .lock_owned()
            .await
    }
}

/// One node's presence, in memory: it dies with the process (clients publish everything again
/// at sign-in).
#[derive(Default)]
pub struct MemoryPresenceStore {
    accounts: Mutex<HashMap<AccountName, AccountState>>,
    timers: Mutex<BinaryHeap<Reverse<Timer>>>,
    stripes: Stripes,
}

/// Nothing panics while these locks are held; recover rather than poison every connection.
fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait]
impl PresenceStore for MemoryPresenceStore {
    async fn lock(&self, account: &AccountName) -> PresenceGuard {
        Box::new(self.stripes.lock(account).await)
    }

    async fn load(&self, account: &AccountName) -> PresenceResult<Option<AccountState>> {
        Ok(guard(&self.accounts).get(account).cloned())
    }

    async fn load_many(
        &self,
        accounts: &[AccountName],
    ) -> PresenceResult<Vec<(AccountName, AccountState)>> {
        let map = guard(&self.accounts);
        Ok(accounts
            .iter()
            .filter_map(|a| map.get(a).map(|s| (a.clone(), s.clone())))
            .collect())
    }

    async fn save(
        &self,
        account: &AccountName,
        state: Option<&AccountState>,
    ) -> PresenceResult<()> {
        let mut map = guard(&self.accounts);
        match state {
            Some(s) => {
                map.insert(account.clone(), s.clone());
            }
            None => {
                map.remove(account);
            }
        }
        Ok(())
    }

    async fn schedule(&self, timer: Timer) -> PresenceResult<()> {
        guard(&self.timers).push(Reverse(timer));
        Ok(())
    }

    async fn take_due(&self, now_ms: i64) -> PresenceResult<Vec<Timer>> {
        let mut timers = guard(&self.timers);
        let mut due = Vec::new();
        while timers.peek().is_some_and(|t| t.0.at_ms <= now_ms) {
            if let Some(Reverse(t)) = timers.pop() {
                due.push(t);
            }
        }
        Ok(due)
    }

    async fn next_due(&self) -> PresenceResult<Option<i64>> {
        Ok(guard(&self.timers).peek().map(|t| t.0.at_ms))
    }

    fn poll_interval(&self) -> Option<Duration> {
        None
    }
}
