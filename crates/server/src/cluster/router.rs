//! The cluster router: each node serves its own connections from memory (a [`LocalRouter`]),
//! registers them in Redis (one hash per account, owner node and endpoint info per epid) and
//! listens on its own pub/sub channel. A delivery reads the account's hash once, hands local
//! endpoints their copy directly and publishes one envelope per other node that has endpoints
//! wanting it.
//!
//! Nodes prove they are alive by refreshing a key with a short expiry. When one's key has expired,
//! one surviving node claims it, removes its endpoints from the registry and closes them as
//! vanished connections (their presence lingers for the keep-alive, then goes offline).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::RedisConn;
use async_trait::async_trait;
use futures::StreamExt;
use msnp24_proto::{AccountName, Epid, FormattedMessage, Frame};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::keys::Keys;
use super::Orphans;
use crate::routing::{
    Delivery, DeliveryFilter, EndpointAddr, EndpointHandle, EndpointInfo, KickReason,
    ListedEndpoint, LocalRouter, Origin, Outbound, Router,
};
use crate::transport::Transport;

/// Replaces an endpoint's registration and returns the one it replaced.
const BIND: &str = r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return old
";

/// Removes an endpoint's registration if it still belongs to the given owner (`node|conn|`).
const UNBIND: &str = r"
if KEYS[2] ~= '' then redis.call('SREM', KEYS[2], ARGV[3]) end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and string.sub(cur, 1, #ARGV[2]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
";

/// Rewrites an endpoint's registration if it still belongs to the given owner.
const UPDATE: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and string.sub(cur, 1, #ARGV[2]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
";

/// Accounts whose registrations one pipelined call of `admin sessions` reads.
const LIST_BATCH: usize = 512;

/// Endpoint info as registered.
#[derive(Debug, Serialize, Deserialize)]
struct WireInfo {
    ver: u32,
    name: String,
    cver: String,
    msg: bool,
    pres: bool,
    /// Transport, peer address and bind time (unix ms), for `admin sessions`; absent in
    /// registrations of older nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    peer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<i64>,
}

impl WireInfo {
    fn origin(&self) -> Option<Origin> {
        Some(Origin {
            transport: Transport::parse(self.tr.as_deref()?)?,
            peer: self.peer.as_deref()?.parse().ok()?,
            since_ms: self.since?,
        })
    }
}

/// One registration read back: who owns it and what it is.
#[derive(Debug)]
struct Registered {
    node: String,
    conn: u64,
    info: EndpointInfo,
}

fn owner(node: &str, conn: u64) -> String {
    format!("{node}|{conn}|")
}

fn encode_entry(node: &str, conn: u64, info: &EndpointInfo) -> String {
    let wire = WireInfo {
        ver: info.ver,
        name: info.client_name.clone(),
        cver: info.client_ver.clone(),
        msg: info.messaging,
        pres: info.presence,
        tr: info.origin.map(|o| o.transport.as_str().to_string()),
        peer: info.origin.map(|o| o.peer.to_string()),
        since: info.origin.map(|o| o.since_ms),
    };
    // Serialising plain strings and numbers cannot fail.
    let json = serde_json::to_string(&wire).unwrap_or_default();
    format!("{}{json}", owner(node, conn))
}

fn decode_entry(epid: &str, raw: &str) -> Option<Registered> {
    let mut parts = raw.splitn(3, '|');
    let node = parts.next()?.to_string();
    let conn = parts.next()?.parse().ok()?;
    let wire: WireInfo = serde_json::from_str(parts.next()?).ok()?;
    let origin = wire.origin();
    Some(Registered {
        node,
        conn,
        info: EndpointInfo {
            origin,
            epid: Epid::parse(epid).ok()?,
            ver: wire.ver,
            client_name: wire.name,
            client_ver: wire.cver,
            messaging: wire.msg,
            presence: wire.pres,
        },
    })
}

fn member(addr: &EndpointAddr, conn: u64) -> String {
    format!("{}\t{}\t{conn}", addr.account, addr.epid)
}

fn parse_member(m: &str) -> Option<(EndpointAddr, u64)> {
    let mut parts = m.split('\t');
    let account = AccountName::parse(parts.next()?).ok()?;
    let epid = Epid::parse(parts.next()?).ok()?;
    let conn = parts.next()?.parse().ok()?;
    Some((EndpointAddr { account, epid }, conn))
}

/// A delivery filter as published.
#[derive(Debug, Serialize, Deserialize)]
struct WireFilter {
    except: Option<String>,
    messaging: bool,
    threads: bool,
    presence: bool,
}

impl WireFilter {
    fn from(f: &DeliveryFilter) -> WireFilter {
        WireFilter {
            except: f.except.as_ref().map(|e| e.to_string()),
            messaging: f.messaging_only,
            threads: f.threads_only,
            presence: f.presence_only,
        }
    }

    fn into_filter(self) -> Option<DeliveryFilter> {
        Some(DeliveryFilter {
            except: match self.except {
                Some(e) => Some(Epid::parse(&e).ok()?),
                None => None,
            },
            messaging_only: self.messaging,
            threads_only: self.threads,
            presence_only: self.presence,
        })
    }
}

/// What one node asks of another: the header line of an envelope; the bytes after its newline
/// are the frame's payload or the encoded chat message.
#[derive(Debug, Serialize, Deserialize)]
enum Envelope {
    /// Write this frame to the account's endpoints that pass the filter.
    Frame {
        account: String,
        filter: WireFilter,
        cmd: String,
        trid: u64,
        target: String,
    },
    /// Deliver this chat message to the account's endpoints that pass the filter.
    Message {
        account: String,
        filter: WireFilter,
        arrival_ms: i64,
        stored: Option<(String, i64)>,
    },
    /// End this connection: the same epid was bound on another node.
    Kick {
        account: String,
        epid: String,
        conn: u64,
    },
    /// End the account's endpoints here (only this epid, if given): `OUT` with the reason.
    End {
        account: String,
        epid: Option<String>,
        reason: KickReason,
    },
}

fn seal(header: &Envelope, body: &[u8]) -> Vec<u8> {
    // Serialising plain strings and numbers cannot fail.
    let mut out = serde_json::to_vec(header).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

fn envelope_for(account: &AccountName, filter: &DeliveryFilter, item: &Outbound) -> Vec<u8> {
    let account = account.to_string();
    let filter = WireFilter::from(filter);
    match item {
        Outbound::Frame(f) => seal(
            &Envelope::Frame {
                account,
                filter,
                cmd: f.cmd.clone(),
                trid: f.trid,
                target: f.target.clone(),
            },
            &f.payload,
        ),
        Outbound::Message(d) => seal(
            &Envelope::Message {
                account,
                filter,
                arrival_ms: d.arrival_ms,
                stored: d.stored.clone(),
            },
            &d.message.encode(),
        ),
    }
}

/// What an envelope asks this node to do.
#[derive(Debug)]
enum Request {
    Deliver(AccountName, DeliveryFilter, Outbound),
    Kick(EndpointAddr, u64),
    End(AccountName, Option<Epid>, KickReason),
}

fn open(bytes: &[u8]) -> Result<Request, String> {
    let nl = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("no header line")?;
    let header: Envelope = serde_json::from_slice(&bytes[..nl]).map_err(|e| e.to_string())?;
    let body = &bytes[nl + 1..];
    let account_of = |a: &str| AccountName::parse(a).map_err(|e| e.to_string());
    Ok(match header {
        Envelope::Frame {
            account,
            filter,
            cmd,
            trid,
            target,
        } => Request::Deliver(
            account_of(&account)?,
            filter.into_filter().ok_or("bad filter")?,
            Outbound::Frame(Frame::new(cmd, trid, target, body.to_vec())),
        ),
        Envelope::Message {
            account,
            filter,
            arrival_ms,
            stored,
        } => Request::Deliver(
            account_of(&account)?,
            filter.into_filter().ok_or("bad filter")?,
            Outbound::Message(Arc::new(Delivery {
                message: FormattedMessage::parse(body).map_err(|e| e.to_string())?,
                arrival_ms,
                stored,
            })),
        ),
        Envelope::Kick {
            account,
            epid,
            conn,
        } => Request::Kick(
            EndpointAddr {
                account: account_of(&account)?,
                epid: Epid::parse(&epid).map_err(|e| e.to_string())?,
            },
            conn,
        ),
        Envelope::End {
            account,
            epid,
            reason,
        } => Request::End(
            account_of(&account)?,
            match epid {
                Some(e) => Some(Epid::parse(&e).map_err(|e| e.to_string())?),
                None => None,
            },
            reason,
        ),
    })
}

struct Shared {
    id: String,
    keys: Keys,
    conn: RedisConn,
    local: LocalRouter,
    /// Nodes whose alive key was found gone: their registrations are ignored.
    dead: RwLock<HashSet<String>>,
    /// Set once the first heartbeat registered this node.
    joined: AtomicBool,
    bind: redis::Script,
    unbind: redis::Script,
    update: redis::Script,
}

impl Shared {
    fn is_dead(&self, node: &str) -> bool {
        self.dead
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(node)
    }

    /// The account's registrations on live nodes.
    async fn registered(&self, account: &AccountName) -> redis::RedisResult<Vec<Registered>> {
        let raw: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.endpoints(account))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(raw
            .iter()
            .filter_map(|(epid, v)| {
                let r = decode_entry(epid, v);
                if r.is_none() {
                    tracing::warn!(account = %account, epid = %epid, "unreadable registration ignored");
                }
                r
            })
            .filter(|r| !self.is_dead(&r.node))
            .collect())
    }

    /// Every account with an endpoint registered by another live node.
    async fn accounts_elsewhere(&self) -> anyhow::Result<Vec<AccountName>> {
        let mut conn = self.conn.clone();
        let nodes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.nodes())
            .query_async(&mut conn)
            .await
            .map_err(|e| anyhow::anyhow!("Redis: {e}"))?;
        let mut accounts = HashSet::new();
        for node in nodes.iter().filter(|n| **n != self.id && !self.is_dead(n)) {
            let members: Vec<String> = redis::cmd("SMEMBERS")
                .arg(self.keys.node_endpoints(node))
                .query_async(&mut conn)
                .await
                .map_err(|e| anyhow::anyhow!("Redis: {e}"))?;
            accounts.extend(
                members
                    .iter()
                    .filter_map(|m| parse_member(m))
                    .map(|(a, _)| a.account),
            );
        }
        Ok(accounts.into_iter().collect())
    }

    async fn publish(&self, node: &str, bytes: Vec<u8>) -> redis::RedisResult<()> {
        redis::cmd("PUBLISH")
            .arg(self.keys.channel(node))
            .arg(bytes)
            .query_async::<()>(&mut self.conn.clone())
            .await
    }

    fn handle(&self, bytes: &[u8]) {
        match open(bytes) {
            Ok(Request::Deliver(account, filter, item)) => {
                crate::stats::cluster_delivery(false);
                self.local.deliver_now(&account, &filter, &item);
            }
            Ok(Request::Kick(addr, conn)) => {
                tracing::info!(account = %addr.account, epid = %addr.epid, conn, "same epid bound on another node; ending this connection");
                self.local.kick_conn(&addr, conn, KickReason::OtherLocation);
            }
            Ok(Request::End(account, epid, reason)) => {
                let n = self.local.kick_now(&account, epid.as_ref(), reason);
                tracing::info!(account = %account, ?reason, endpoints = n, "ending endpoints at another node's request");
            }
            Err(e) => tracing::warn!(error = %e, "unreadable envelope from another node dropped"),
        }
    }

    /// Refreshes this node's alive key, then looks for dead nodes and reaps those it can claim.
    async fn heartbeat(&self, ttl: Duration, orphans: &mpsc::Sender<Orphans>) {
        let mut conn = self.conn.clone();
        let refreshed: redis::RedisResult<(Option<String>,)> = redis::pipe()
            .cmd("SET")
            .arg(self.keys.alive(&self.id))
            .arg(1)
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .arg("GET")
            .cmd("SADD")
            .arg(self.keys.nodes())
            .arg(&self.id)
            .ignore()
            .query_async(&mut conn)
            .await;
        let was_alive = match refreshed {
            Ok((previous,)) => previous.is_some(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot refresh this node's registration in Redis");
                return;
            }
        };
        if !was_alive && self.joined.swap(true, Ordering::SeqCst) {
            // Our key expired (a partition, a long pause): the others may have reaped us, taking
            // our endpoints out of the registry and their presence offline. Clients that
            // reconnect get all of it back; keeping them would leave them unreachable.
            tracing::error!(node = %self.id, "this node was presumed dead by the cluster; dropping its connections so they reconnect");
            let cleared: redis::RedisResult<()> = redis::cmd("DEL")
                .arg(self.keys.reaped(&self.id))
                .query_async(&mut conn)
                .await;
            if let Err(e) = cleared {
                tracing::warn!(error = %e, "cannot clear this node's reaped mark");
            }
            self.local.kick_all(KickReason::Rejoin).await;
        }
        let nodes: Vec<String> = match redis::cmd("SMEMBERS")
            .arg(self.keys.nodes())
            .query_async(&mut conn)
            .await
        {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list cluster nodes");
                return;
            }
        };
        let others: Vec<&String> = nodes.iter().filter(|n| **n != self.id).collect();
        if others.is_empty() {
            return;
        }
        let alive_keys: Vec<String> = others.iter().map(|n| self.keys.alive(n)).collect();
        let alive: Vec<Option<String>> = match redis::cmd("MGET")
            .arg(&alive_keys)
            .query_async(&mut conn)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot check cluster nodes");
                return;
            }
        };
        let dead: HashSet<String> = others
            .iter()
            .zip(alive)
            .filter(|(_, a)| a.is_none())
            .map(|(n, _)| (*n).clone())
            .collect();
        *self.dead.write().unwrap_or_else(|p| p.into_inner()) = dead.clone();
        for node in dead {
            match self.reap(&node).await {
                Ok(Some(found)) => {
                    tracing::warn!(node = %node, endpoints = found.len(), "node died; its endpoints are closed as vanished");
                    if orphans.send(found).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(node = %node, error = %e, "reaping a dead node failed"),
            }
        }
    }

    /// Claims a dead node and removes its registrations; `None` when another node claimed it.
    async fn reap(&self, node: &str) -> redis::RedisResult<Option<Orphans>> {
        let mut conn = self.conn.clone();
        let claimed: Option<String> = redis::cmd("SET")
            .arg(self.keys.reaped(node))
            .arg(&self.id)
            .arg("NX")
            .arg("EX")
            .arg(3600)
            .query_async(&mut conn)
            .await?;
        if claimed.is_none() {
            return Ok(None);
        }
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.node_endpoints(node))
            .query_async(&mut conn)
            .await?;
        let mut found = Vec::new();
        for m in members {
            let Some((addr, conn_id)) = parse_member(&m) else {
                tracing::warn!(member = %m, "unreadable registration of a dead node skipped");
                continue;
            };
            let _: i64 = self
                .unbind
                .key(self.keys.endpoints(&addr.account))
                .key("")
                .arg(addr.epid.to_string())
                .arg(owner(node, conn_id))
                .arg("")
                .invoke_async(&mut conn)
                .await?;
            found.push((addr, conn_id));
        }
        redis::pipe()
            .cmd("DEL")
            .arg(self.keys.node_endpoints(node))
            .ignore()
            .cmd("SREM")
            .arg(self.keys.nodes())
            .arg(node)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(Some(found))
    }
}

/// Routes between the connections of every node of a cluster.
pub struct RedisRouter {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl RedisRouter {
    /// Joins the cluster: registers this node, subscribes to its channel (before returning, so
    /// nothing published to it is missed) and starts the heartbeat that also reaps dead nodes.
    pub async fn start(
        client: redis::Client,
        conn: redis::aio::ConnectionManager,
        keys: Keys,
        node_ttl: Duration,
        orphans: mpsc::Sender<Orphans>,
    ) -> anyhow::Result<RedisRouter> {
        let id = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let shared = Arc::new(Shared {
            id: id.clone(),
            keys: keys.clone(),
            conn: RedisConn(conn),
            local: LocalRouter::new(),
            dead: RwLock::default(),
            joined: AtomicBool::new(false),
            bind: redis::Script::new(BIND),
            unbind: redis::Script::new(UNBIND),
            update: redis::Script::new(UPDATE),
        });
        let channel = keys.channel(&id);
        let mut pubsub = client
            .get_async_pubsub()
            .await
            .map_err(|e| anyhow::anyhow!("routing: cannot subscribe in Redis: {e}"))?;
        pubsub
            .subscribe(&channel)
            .await
            .map_err(|e| anyhow::anyhow!("routing: cannot subscribe in Redis: {e}"))?;
        let mut tasks = Vec::new();
        let sub_shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut pubsub = pubsub;
            loop {
                {
                    let mut stream = pubsub.on_message();
                    while let Some(msg) = stream.next().await {
                        sub_shared.handle(msg.get_payload_bytes());
                    }
                }
                tracing::warn!("lost the Redis subscription; reconnecting");
                pubsub = loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    match client.get_async_pubsub().await {
                        Ok(mut p) => match p.subscribe(&channel).await {
                            Ok(()) => break p,
                            Err(e) => tracing::warn!(error = %e, "Redis subscribe failed"),
                        },
                        Err(e) => tracing::warn!(error = %e, "Redis reconnect failed"),
                    }
                };
            }
        }));
        shared.heartbeat(node_ttl, &orphans).await;
        let beat_shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let period = (node_ttl / 3).max(Duration::from_millis(100));
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                beat_shared.heartbeat(node_ttl, &orphans).await;
            }
        }));
        Ok(RedisRouter { shared, tasks })
    }

    /// This node's id in the cluster.
    pub fn node_id(&self) -> &str {
        &self.shared.id
    }

    async fn register_update(&self, addr: &EndpointAddr, conn_id: u64) {
        let s = &self.shared;
        let Some(info) = s.local.info(addr, conn_id) else {
            return;
        };
        let done: redis::RedisResult<i64> = s
            .update
            .key(s.keys.endpoints(&addr.account))
            .arg(addr.epid.to_string())
            .arg(owner(&s.id, conn_id))
            .arg(encode_entry(&s.id, conn_id, &info))
            .invoke_async(&mut s.conn.clone())
            .await;
        if let Err(e) = done {
            tracing::error!(account = %addr.account, error = %e, "endpoint subscription not registered in Redis");
        }
    }
}

impl Drop for RedisRouter {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[async_trait]
impl Router for RedisRouter {
    async fn bind(&self, addr: EndpointAddr, handle: EndpointHandle) -> Option<EndpointHandle> {
        let s = &self.shared;
        let conn_id = handle.conn_id;
        let entry = encode_entry(&s.id, conn_id, &handle.info);
        let replaced = s.local.bind(addr.clone(), handle).await;
        let old: redis::RedisResult<Option<String>> = s
            .bind
            .key(s.keys.endpoints(&addr.account))
            .key(s.keys.node_endpoints(&s.id))
            .arg(addr.epid.to_string())
            .arg(entry)
            .arg(member(&addr, conn_id))
            .invoke_async(&mut s.conn.clone())
            .await;
        match old {
            Ok(Some(old)) => {
                if let Some(old) = decode_entry(&addr.epid.to_string(), &old) {
                    if old.node != s.id && !s.is_dead(&old.node) {
                        let kick = seal(
                            &Envelope::Kick {
                                account: addr.account.to_string(),
                                epid: addr.epid.to_string(),
                                conn: old.conn,
                            },
                            b"",
                        );
                        if let Err(e) = s.publish(&old.node, kick).await {
                            tracing::warn!(error = %e, "could not end the older connection on another node");
                        }
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(account = %addr.account, error = %e, "endpoint not registered in Redis; only this node can reach it")
            }
        }
        replaced
    }

    async fn unbind(&self, addr: &EndpointAddr, conn_id: u64) {
        let s = &self.shared;
        s.local.unbind(addr, conn_id).await;
        let done: redis::RedisResult<i64> = s
            .unbind
            .key(s.keys.endpoints(&addr.account))
            .key(s.keys.node_endpoints(&s.id))
            .arg(addr.epid.to_string())
            .arg(owner(&s.id, conn_id))
            .arg(member(addr, conn_id))
            .invoke_async(&mut s.conn.clone())
            .await;
        if let Err(e) = done {
            tracing::warn!(account = %addr.account, error = %e, "endpoint not removed from Redis; it goes when this node does");
        }
    }

    async fn set_messaging(&self, addr: &EndpointAddr, conn_id: u64) {
        self.shared.local.set_messaging(addr, conn_id).await;
        self.register_update(addr, conn_id).await;
    }

    async fn set_presence(&self, addr: &EndpointAddr, conn_id: u64) {
        self.shared.local.set_presence(addr, conn_id).await;
        self.register_update(addr, conn_id).await;
    }

    async fn endpoints(&self, account: &AccountName) -> Vec<EndpointInfo> {
        let s = &self.shared;
        match s.registered(account).await {
            Ok(list) => {
                // This node's own endpoints come from memory, which is never behind.
                let mut infos = s.local.endpoints(account).await;
                infos.extend(list.into_iter().filter(|r| r.node != s.id).map(|r| r.info));
                infos
            }
            Err(e) => {
                tracing::error!(account = %account, error = %e, "Redis unavailable; only this node's endpoints are known");
                s.local.endpoints(account).await
            }
        }
    }

    async fn deliver(
        &self,
        account: &AccountName,
        filter: DeliveryFilter,
        item: Outbound,
    ) -> usize {
        let s = &self.shared;
        let remote = match s.registered(account).await {
            Ok(list) => list,
            Err(e) => {
                tracing::error!(account = %account, error = %e, "Redis unavailable; delivering on this node only (sync recovers the rest)");
                Vec::new()
            }
        };
        let mut per_node: HashMap<&str, usize> = HashMap::new();
        for r in &remote {
            if r.node != s.id && filter.accepts(&r.info) {
                *per_node.entry(r.node.as_str()).or_default() += 1;
            }
        }
        let mut delivered = s.local.deliver_now(account, &filter, &item);
        if !per_node.is_empty() {
            let bytes = envelope_for(account, &filter, &item);
            for (node, n) in per_node {
                match s.publish(node, bytes.clone()).await {
                    Ok(()) => {
                        crate::stats::cluster_delivery(true);
                        delivered += n
                    }
                    Err(e) => {
                        tracing::error!(node = %node, error = %e, "publish to another node failed (sync recovers it)")
                    }
                }
            }
        }
        delivered
    }

    async fn kick_all(&self, reason: KickReason) {
        self.shared.local.kick_all(reason).await;
    }

    async fn kick(&self, account: &AccountName, epid: Option<&Epid>, reason: KickReason) -> usize {
        let s = &self.shared;
        let mut ended = s.local.kick_now(account, epid, reason);
        let remote = match s.registered(account).await {
            Ok(list) => list,
            Err(e) => {
                tracing::error!(account = %account, error = %e, "Redis unavailable; ending endpoints on this node only");
                return ended;
            }
        };
        let mut per_node: HashMap<&str, usize> = HashMap::new();
        for r in &remote {
            if r.node != s.id && epid.is_none_or(|e| *e == r.info.epid) {
                *per_node.entry(r.node.as_str()).or_default() += 1;
            }
        }
        if per_node.is_empty() {
            return ended;
        }
        let bytes = seal(
            &Envelope::End {
                account: account.to_string(),
                epid: epid.map(|e| e.to_string()),
                reason,
            },
            b"",
        );
        for (node, n) in per_node {
            match s.publish(node, bytes.clone()).await {
                Ok(()) => ended += n,
                Err(e) => {
                    tracing::error!(node = %node, account = %account, error = %e, "could not end endpoints on another node")
                }
            }
        }
        ended
    }

    async fn list(&self, account: Option<&AccountName>) -> anyhow::Result<Vec<ListedEndpoint>> {
        let s = &self.shared;
        let accounts: Vec<AccountName> = match account {
            Some(a) => vec![a.clone()],
            None => s.accounts_elsewhere().await?,
        };
        let mut listed = s.local.list_here(account);
        for l in &mut listed {
            l.node = Some(s.id.clone());
        }
        // One round trip per batch, not per account: a listing of a large cluster stays quick.
        for batch in accounts.chunks(LIST_BATCH) {
            let mut pipe = redis::pipe();
            for a in batch {
                pipe.cmd("HGETALL").arg(s.keys.endpoints(a));
            }
            let hashes: Vec<HashMap<String, String>> = pipe
                .query_async(&mut s.conn.clone())
                .await
                .map_err(|e| anyhow::anyhow!("Redis: {e}"))?;
            for (a, hash) in batch.iter().zip(hashes) {
                for (epid, raw) in &hash {
                    let Some(r) = decode_entry(epid, raw) else {
                        continue;
                    };
                    // This node's own come from memory, which is never behind.
                    if r.node != s.id && !s.is_dead(&r.node) {
                        listed.push(ListedEndpoint {
                            account: a.clone(),
                            node: Some(r.node),
                            info: r.info,
                        });
                    }
                }
            }
        }
        Ok(listed)
    }

    async fn leave(&self) {
        let s = &self.shared;
        for t in &self.tasks {
            t.abort();
        }
        let left: redis::RedisResult<()> = redis::pipe()
            .cmd("DEL")
            .arg(s.keys.alive(&s.id))
            .ignore()
            .cmd("DEL")
            .arg(s.keys.node_endpoints(&s.id))
            .ignore()
            .cmd("SREM")
            .arg(s.keys.nodes())
            .arg(&s.id)
            .ignore()
            .query_async(&mut s.conn.clone())
            .await;
        match left {
            Ok(()) => tracing::info!(node = %s.id, "left the cluster"),
            Err(e) => {
                tracing::warn!(error = %e, "could not leave the cluster cleanly; the others will reap this node")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msnp24_proto::Headers;

    fn epid() -> Epid {
        Epid::parse("{00000001-0000-0000-0000-000000000000}").unwrap()
    }

    #[test]
    fn registrations_survive_their_encoding() {
        let info = EndpointInfo {
            epid: epid(),
            ver: 2,
            client_name: "Skype|x".into(),
            client_ver: "7.0".into(),
            messaging: true,
            presence: false,
            origin: Some(Origin {
                transport: Transport::Gateway,
                peer: "[::1]:443".parse().unwrap(),
                since_ms: 1_700_000_000_123,
            }),
        };
        let raw = encode_entry("abc", u64::MAX - 3, &info);
        let back = decode_entry(&epid().to_string(), &raw).unwrap();
        assert_eq!((back.node.as_str(), back.conn), ("abc", u64::MAX - 3));
        assert_eq!(back.info, info);
        // A registration of an older node, without the origin, is still read.
        let old = r#"abc|1|{"ver":2,"name":"x","cver":"1","msg":true,"pres":true}"#;
        let back = decode_entry(&epid().to_string(), old).unwrap();
        assert_eq!(back.info.origin, None);
        assert!(back.info.messaging);
        assert!(raw.starts_with(&owner("abc", u64::MAX - 3)));
        assert!(decode_entry("nope", &raw).is_none());
        assert!(decode_entry(&epid().to_string(), "abc|1").is_none());
    }

    #[test]
    fn envelopes_carry_frames_messages_and_kicks() {
        let alice = AccountName::parse("alice").unwrap();
        let filter = DeliveryFilter {
            except: Some(epid()),
            messaging_only: true,
            threads_only: false,
            presence_only: true,
        };
        let frame = Frame::new("NFY", 0, "MSGR\\PUT", b"a\r\nb\n\0binary".to_vec());
        let bytes = envelope_for(&alice, &filter, &Outbound::Frame(frame.clone()));
        match open(&bytes).unwrap() {
            Request::Deliver(a, f, Outbound::Frame(got)) => {
                assert_eq!(a, alice);
                assert_eq!(got, frame);
                assert_eq!(f.except, Some(epid()));
                assert!(f.messaging_only && f.presence_only && !f.threads_only);
            }
            other => panic!("{other:?}"),
        }

        let mut m =
            FormattedMessage::new("8:alice", "8:bob", ("Messaging", "2.0"), "hi\r\n\r\nthere");
        m.content.push("Message-Type", "Text");
        let d = Delivery {
            message: m.clone(),
            arrival_ms: 42,
            stored: Some(("8:alice|8:bob".into(), 42)),
        };
        let bytes = envelope_for(&alice, &filter, &Outbound::Message(Arc::new(d)));
        match open(&bytes).unwrap() {
            Request::Deliver(_, _, Outbound::Message(got)) => {
                assert_eq!(
                    got.message.to_payload(&Headers::new()),
                    m.to_payload(&Headers::new())
                );
                assert_eq!(got.arrival_ms, 42);
                assert_eq!(got.stored, Some(("8:alice|8:bob".into(), 42)));
            }
            other => panic!("{other:?}"),
        }

        let kick = seal(
            &Envelope::Kick {
                account: "alice".into(),
                epid: epid().to_string(),
                conn: 7,
            },
            b"",
        );
        assert!(matches!(open(&kick).unwrap(), Request::Kick(a, 7) if a.epid == epid()));
        for epid in [Some(epid()), None] {
            let end = seal(
                &Envelope::End {
                    account: "alice".into(),
                    epid: epid.as_ref().map(|e| e.to_string()),
                    reason: KickReason::PasswordChanged,
                },
                b"",
            );
            match open(&end).unwrap() {
                Request::End(a, e, KickReason::PasswordChanged) => {
                    assert_eq!(a, alice);
                    assert_eq!(e, epid);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(open(b"not json\n").is_err());
        assert!(open(b"no newline").is_err());
    }

    #[test]
    fn members_survive_their_encoding() {
        let addr = EndpointAddr {
            account: AccountName::parse("bob").unwrap(),
            epid: epid(),
        };
        assert_eq!(parse_member(&member(&addr, 9)), Some((addr, 9)));
        assert_eq!(parse_member("bob\tx\t1"), None);
    }
}
