//! The in-process router: a map from account to its bound endpoints.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use msnp24_proto::{AccountName, Epid};

use super::{
    DeliveryFilter, EndpointAddr, EndpointHandle, EndpointInfo, KickReason, ListedEndpoint,
    Outbound, Router,
};

/// Routes between connections of this process.
#[derive(Default)]
pub struct LocalRouter {
    accounts: Mutex<HashMap<AccountName, Vec<EndpointHandle>>>,
}

impl LocalRouter {
    /// An empty router.
    pub fn new() -> LocalRouter {
        LocalRouter::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<AccountName, Vec<EndpointHandle>>> {
        // Nothing panics while holding this lock; recover rather than poison every connection.
        self.accounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, addr: &EndpointAddr, conn_id: u64, change: impl FnOnce(&mut EndpointInfo)) {
        let mut map = self.map();
        if let Some(h) = map.get_mut(&addr.account).and_then(|l| {
            l.iter_mut()
                .find(|h| h.conn_id == conn_id && h.info.epid == addr.epid)
        }) {
            change(&mut h.info);
        }
    }
}

impl LocalRouter {
    /// Queues `item` for each endpoint of `account` here that passes `filter`; returns how many
    /// took it.
    pub fn deliver_now(
        &self,
        account: &AccountName,
        filter: &DeliveryFilter,
        item: &Outbound,
    ) -> usize {
        // Queued under the lock: a send never waits (a full queue ends its connection instead),
        // and copying each endpoint's handle out first cost more than the sends.
        let map = self.map();
        let Some(list) = map.get(account) else {
            return 0;
        };
        list.iter()
            .filter(|h| filter.accepts(&h.info) && h.send(item.clone()))
            .count()
    }

    /// Tells one connection to end, if it is still bound here.
    pub fn kick_conn(&self, addr: &EndpointAddr, conn_id: u64, reason: KickReason) {
        if let Some(h) = self.map().get(&addr.account).and_then(|l| {
            l.iter()
                .find(|h| h.conn_id == conn_id && h.info.epid == addr.epid)
        }) {
            h.kick.send_replace(Some(reason));
        }
    }

    /// Tells the account's endpoints here (only `epid`, if given) to end; returns how many.
    pub fn kick_now(
        &self,
        account: &AccountName,
        epid: Option<&Epid>,
        reason: KickReason,
    ) -> usize {
        let map = self.map();
        let Some(list) = map.get(account) else {
            return 0;
        };
        let mut n = 0;
        for h in list
            .iter()
            .filter(|h| epid.is_none_or(|e| *e == h.info.epid))
        {
            h.kick.send_replace(Some(reason));
            n += 1;
        }
        n
    }

    /// The endpoints bound here (only `account`'s, if given), with no node named.
    pub fn list_here(&self, account: Option<&AccountName>) -> Vec<ListedEndpoint> {
        let map = self.map();
        let listed = |(a, l): (&AccountName, &Vec<EndpointHandle>)| {
            l.iter()
                .map(|h| ListedEndpoint {
                    account: a.clone(),
                    node: None,
                    info: h.info.clone(),
                })
                .collect::<Vec<_>>()
        };
        match account {
            Some(a) => map.get_key_value(a).map(listed).unwrap_or_default(),
            None => map.iter().flat_map(listed).collect(),
        }
    }

    /// What one connection's endpoint told BND and subscribed to, if it is still bound here.
    pub fn info(&self, addr: &EndpointAddr, conn_id: u64) -> Option<EndpointInfo> {
        self.map().get(&addr.account).and_then(|l| {
            l.iter()
                .find(|h| h.conn_id == conn_id && h.info.epid == addr.epid)
                .map(|h| h.info.clone())
        })
    }
}

#[async_trait]
impl Router for LocalRouter {
    async fn bind(&self, addr: EndpointAddr, handle: EndpointHandle) -> Option<EndpointHandle> {
        let mut map = self.map();
        let list = map.entry(addr.account).or_default();
        if list.is_empty() {
            crate::stats::gauge_add(crate::stats::ACCOUNTS_ONLINE, 1.0);
        }
        let old = list
            .iter()
            .position(|h| h.info.epid == addr.epid)
            .map(|i| list.swap_remove(i));
        list.push(handle);
        old
    }

    async fn unbind(&self, addr: &EndpointAddr, conn_id: u64) {
        let mut map = self.map();
        if let Some(list) = map.get_mut(&addr.account) {
            list.retain(|h| !(h.conn_id == conn_id && h.info.epid == addr.epid));
            if list.is_empty() {
                map.remove(&addr.account);
                crate::stats::gauge_add(crate::stats::ACCOUNTS_ONLINE, -1.0);
            }
        }
    }

    async fn set_messaging(&self, addr: &EndpointAddr, conn_id: u64) {
        self.update(addr, conn_id, |info| info.messaging = true);
    }

    async fn set_presence(&self, addr: &EndpointAddr, conn_id: u64) {
        self.update(addr, conn_id, |info| info.presence = true);
    }

    async fn endpoints(&self, account: &AccountName) -> Vec<EndpointInfo> {
        self.map()
            .get(account)
            .map(|l| l.iter().map(|h| h.info.clone()).collect())
            .unwrap_or_default()
    }

    async fn deliver(
        &self,
        account: &AccountName,
        filter: DeliveryFilter,
        item: Outbound,
    ) -> usize {
        self.deliver_now(account, &filter, &item)
    }

    async fn kick_all(&self, reason: KickReason) {
        for list in self.map().values() {
            for h in list {
                h.kick.send_replace(Some(reason));
            }
        }
    }

    async fn kick(&self, account: &AccountName, epid: Option<&Epid>, reason: KickReason) -> usize {
        self.kick_now(account, epid, reason)
    }

    async fn list(&self, account: Option<&AccountName>) -> anyhow::Result<Vec<ListedEndpoint>> {
        Ok(self.list_here(account))
    }
}
