//! What one node shares with the others: routing between connections, presence state and the
//! per-thread locks. Alone, a node keeps all three in memory; in a cluster they live in Redis
//! (`routing = "redis://…"`), while durable state lives in the shared database.
//!
//! Redis is only ever the fast path and the meeting point: every acknowledged message is in
//! storage before anything is published, so a delivery lost with a node or a Redis hiccup is
//! recovered by the client's next sync.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::presence::{MemoryPresenceStore, PresenceStore};
use crate::routing::{EndpointAddr, LocalRouter, Router};

mod keys;
mod lock;
mod presence_store;
mod router;

pub use keys::Keys;
pub use lock::RedisLocks;
pub use presence_store::RedisPresenceStore;
pub use router::RedisRouter;

/// Held while a cluster-wide lock is ours; dropping it releases the lock.
pub type SharedGuard = Box<dyn Send + Sync>;

/// Locks that hold across every node of a cluster.
#[async_trait]
pub trait SharedLocks: Send + Sync + 'static {
    /// Waits for the lock named `key`. A lock that cannot be had within a few seconds (its holder
    /// died, or Redis is down) is given up on with a logged error rather than stalling forever.
    async fn acquire(&self, key: &str) -> SharedGuard;
}

/// A Redis connection that counts its failed calls (`msnp24_redis_errors_total`), so every
/// Redis error of the cluster is counted in one place.
#[derive(Clone)]
pub struct RedisConn(redis::aio::ConnectionManager);

impl redis::aio::ConnectionLike for RedisConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move { counted(self.0.req_packed_command(cmd).await) })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move { counted(self.0.req_packed_commands(pipeline, offset, count).await) })
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

fn counted<T>(r: redis::RedisResult<T>) -> redis::RedisResult<T> {
    if let Err(e) = &r {
        // A script not yet cached is loaded and run again by the script helper: not a failure.
        if e.kind() != redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) {
            crate::stats::count(crate::stats::REDIS_ERRORS, 1);
        }
    }
    r
}

/// Endpoints a dead node had bound, each with its connection id: this node claimed them and must
/// treat them as connections that vanished.
pub type Orphans = Vec<(EndpointAddr, u64)>;

/// Routing, presence state and locks, alone or shared.
pub struct Coordination {
    /// Delivery between connections.
    pub router: Arc<dyn Router>,
    /// Where presence state lives.
    pub presence: Arc<dyn PresenceStore>,
    /// Cluster-wide locks; `None` alone (in-process locks suffice).
    pub locks: Option<Arc<dyn SharedLocks>>,
    /// Endpoints of dead nodes to close (cluster only).
    pub orphans: Option<mpsc::Receiver<Orphans>>,
    /// This node's id in the cluster.
    pub node_id: Option<String>,
}

impl Coordination {
    /// A node on its own.
    pub fn local() -> Coordination {
        Coordination {
            router: Arc::new(LocalRouter::new()),
            presence: Arc::new(MemoryPresenceStore::default()),
            locks: None,
            orphans: None,
            node_id: None,
        }
    }

    /// What `config.routing` asks for: alone by default, or joining the cluster at a Redis URL.
    pub async fn from_config(config: &Config) -> anyhow::Result<Coordination> {
        let Some(url) = config.routing_url()? else {
            return Ok(Coordination::local());
        };
        if config.postgres_url()?.is_none() {
            // Works only for nodes on one machine sharing one data directory (tests do this).
            tracing::warn!("routing through Redis with SQLite storage: every node must share one data directory; use PostgreSQL across machines");
        }
        let client =
            redis::Client::open(url).map_err(|e| anyhow::anyhow!("routing: bad Redis URL: {e}"))?;
        // While Redis is down every call must fail fast (the node goes on serving its own
        // connections and storing messages); the defaults retry for seconds inside each call.
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1))
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            client.get_connection_manager_with_config(manager),
        )
        .await
        .map_err(|_| anyhow::anyhow!("routing: Redis did not answer within 10 s"))?
        .map_err(|e| anyhow::anyhow!("routing: cannot connect to Redis: {e}"))?;
        let keys = keys::Keys::new(&config.cluster_name);
        let node_ttl = Duration::from_secs(config.cluster_node_ttl_secs.max(1));
        let (orphans_tx, orphans_rx) = mpsc::channel(64);
        let router =
            RedisRouter::start(client, conn.clone(), keys.clone(), node_ttl, orphans_tx).await?;
        let node_id = router.node_id().to_string();
        let locks: Arc<dyn SharedLocks> = Arc::new(RedisLocks::new(conn.clone(), keys.clone()));
        let presence = Arc::new(RedisPresenceStore::new(conn, keys, locks.clone()));
        tracing::info!(node = %node_id, cluster = %config.cluster_name, "joined the cluster");
        Ok(Coordination {
            router: Arc::new(router),
            presence,
            locks: Some(locks),
            orphans: Some(orphans_rx),
            node_id: Some(node_id),
        })
    }
}
