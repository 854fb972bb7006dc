//! What every connection and HTTP request shares.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use msnp24_proto::Limits;

use crate::accounts::LoginThrottle;
use crate::config::Config;
use crate::limits::ConnectionLimiter;
use crate::routing::Router;
use crate::storage::Storage;
use crate::tokens::TokenSigner;

/// Shared server state.
pub struct AppState {
    /// The configuration in force.
    pub config: Config,
    /// Durable storage.
    pub storage: Arc<dyn Storage>,
    /// Delivery between connections.
    pub router: Arc<dyn Router>,
    /// Token signer.
    pub tokens: TokenSigner,
    /// Failed-login throttle.
    pub throttle: LoginThrottle,
    /// Open connections per client address.
    pub connections: ConnectionLimiter,
    next_conn: AtomicU64,
}

impl AppState {
    /// Assembles the state.
    pub fn new(
        config: Config,
        storage: Arc<dyn Storage>,
        router: Arc<dyn Router>,
        tokens: TokenSigner,
    ) -> AppState {
        let throttle = LoginThrottle::new(config.login_throttle.clone());
        let connections = ConnectionLimiter::new(config.max_connections_per_ip);
        AppState {
            connections,
            config,
            storage,
            router,
            tokens,
            throttle,
            next_conn: AtomicU64::new(1),
        }
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Frame decoding limits from the configuration.
    pub fn limits(&self) -> Limits {
        Limits {
            max_payload: self.config.max_payload,
            ..Limits::default()
        }
    }
}

/// Current time, unix seconds.
pub fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Current time, unix milliseconds.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
