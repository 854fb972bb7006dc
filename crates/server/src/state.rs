//! What every connection and HTTP request shares.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use msnp24_proto::Limits;

use crate::cluster::SharedLocks;
use crate::config::Config;
use crate::limits::{ConnectionLimiter, DescriptorBudget, LoginThrottle, SendLimiter};
use crate::presence::{PresenceService, PresenceStore};
use crate::routing::Router;
use crate::storage::Account;
use crate::storage::Storage;
use crate::tokens::{Claims, TokenError, TokenKind, TokenSigner};

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// Forged, malformed or expired.
    #[error(transparent)]
    Token(TokenError),
    /// The account is gone or its password changed since.
    #[error("token revoked")]
    Revoked,
    /// Storage failed.
    #[error("internal error")]
    Internal,
}

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
    /// Who is online, with which documents.
    pub presence: Arc<PresenceService>,
    /// Per-account `SDG` rate.
    pub send_limiter: SendLimiter,
    /// Commands that store rows other than messages, per account.
    pub write_limiter: SendLimiter,
    /// Open MSNP connections and gateway sessions per client address.
    pub connections: ConnectionLimiter,
    /// Open HTTP(S) connections per client address.
    pub http_connections: ConnectionLimiter,
    /// File descriptors the listeners may give connections.
    pub descriptors: DescriptorBudget,
    /// One lock per thread, so its members see its changes and messages in one order.
    pub thread_locks: crate::threads::ThreadLocks,
    next_conn: AtomicU64,
}

impl AppState {
    /// Assembles the state.
    pub fn new(
        config: Config,
        storage: Arc<dyn Storage>,
        router: Arc<dyn Router>,
        presence_store: Arc<dyn PresenceStore>,
        shared_locks: Option<Arc<dyn SharedLocks>>,
        tokens: TokenSigner,
    ) -> AppState {
        let throttle = LoginThrottle::new(config.login_throttle.clone());
        let presence = Arc::new(PresenceService::new(
            presence_store,
            storage.clone(),
            router.clone(),
            config.presence_keepalive(),
            config.max_payload,
        ));
        // Connection ids name connections across a cluster (the presence and routing entries of
        // one connection), so there each node starts at a random point of the space.
        let first_conn = match shared_locks {
            Some(_) => u64::from(rand::random::<u32>()) << 32 | 1,
            None => 1,
        };
        let send_limiter = SendLimiter::new(config.send_rate.clone());
        let write_limiter = SendLimiter::new(config.write_rate.clone());
        let connections = ConnectionLimiter::new(config.max_connections_per_ip);
        AppState {
            connections,
            http_connections: ConnectionLimiter::new(config.max_connections_per_ip),
            descriptors: DescriptorBudget::from_rlimit(config.descriptor_reserve),
            config,
            storage,
            router,
            tokens,
            throttle,
            presence,
            send_limiter,
            write_limiter,
            thread_locks: crate::threads::ThreadLocks::new(shared_locks),
            next_conn: AtomicU64::new(first_conn),
        }
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Issues a token of `kind` for `account`, valid `ttl_secs`; returns it and its expiry.
    pub fn issue(&self, kind: TokenKind, account: &Account, ttl_secs: u64) -> (String, i64) {
        let expires_at = now_secs() + ttl_secs as i64;
        let token = self.tokens.issue(
            kind,
            &Claims {
                account: account.name.clone(),
                account_id: account.id,
                generation: account.generation,
                expires_at,
                epid: None,
            },
        );
        (token, expires_at)
    }

    /// Checks a token of `kind` and that its account still exists, as the same account (its id:
    /// a removed name added again is another account) under the same generation (a password
    /// change or removal revokes every earlier token).
    pub async fn verify_account_token(
        &self,
        kind: TokenKind,
        token: &str,
    ) -> Result<Account, TokenRefusal> {
        let claims = self
            .tokens
            .verify(kind, token, now_secs())
            .map_err(TokenRefusal::Token)?;
        match self.storage.account(&claims.account).await {
            Ok(Some(a)) if a.id == claims.account_id && a.generation == claims.generation => Ok(a),
            Ok(_) => Err(TokenRefusal::Revoked),
            Err(e) => {
                tracing::error!(error = %e, "token account lookup failed");
                Err(TokenRefusal::Internal)
            }
        }
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
