//! Routing between connections: "deliver this to these endpoints". The in-process map serves one
//! node; the cluster router (`crate::cluster::RedisRouter`) replaces it without touching the
//! handlers.

use std::sync::Arc;

use async_trait::async_trait;
use msnp24_proto::{AccountName, Epid, FormattedMessage, Frame};
use tokio::sync::{mpsc, watch};

pub mod local;

pub use local::LocalRouter;

/// One bound endpoint of one account.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointAddr {
    /// The account.
    pub account: AccountName,
    /// The endpoint id.
    pub epid: Epid,
}

/// What the rest of the server may know about a bound endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    /// The endpoint id.
    pub epid: Epid,
    /// BND `<ver>`: 2 enables threads.
    pub ver: u32,
    /// BND `<client><name>`.
    pub client_name: String,
    /// BND `<client><ver>`.
    pub client_ver: String,
    /// Has subscribed to live messages.
    pub messaging: bool,
    /// Has subscribed to its contacts' presence.
    pub presence: bool,
    /// Where the connection came from and since when (`None` in a registration written by an
    /// older node of a cluster).
    pub origin: Option<Origin>,
}

/// Where a bound endpoint's connection came from, for `msnp24 admin sessions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// TCP, TLS or the HTTP gateway.
    pub transport: crate::transport::Transport,
    /// The peer's address.
    pub peer: std::net::SocketAddr,
    /// When the endpoint was bound, unix ms.
    pub since_ms: i64,
}

/// One bound endpoint as the router lists it for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedEndpoint {
    /// The account.
    pub account: AccountName,
    /// The cluster node serving it (`None` on a single node).
    pub node: Option<String>,
    /// What it told BND and where it came from.
    pub info: EndpointInfo,
}

/// Why the server ends a connection on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KickReason {
    /// A new BND with the same epid replaced this connection.
    OtherLocation,
    /// The server is shutting down.
    ServerShutdown,
    /// No frame for longer than the idle timeout.
    SessionTimeout,
    /// The connection stopped reading and its outbound queue filled up.
    SlowConsumer,
    /// This node was presumed dead by its cluster (its endpoints were taken away): the client is
    /// dropped without `OUT` so that it reconnects and signs in afresh, as after any outage.
    Rejoin,
    /// The account's password was changed: its sessions must sign in again.
    PasswordChanged,
    /// The account was removed.
    AccountRemoved,
    /// The session's credentials expired (its last registration token ran out).
    CredentialsExpired,
    /// An operator ended the session.
    Admin,
}

impl KickReason {
    /// The `<reason>` of the `OUT` frame, if one is sent.
    pub fn out_reason(self) -> Option<&'static str> {
        match self {
            // Real clients know only the three reasons of §8. `OtherLocation` makes them stop and
            // ask the user to sign in again instead of reconnecting with credentials that no
            // longer work; `SessionTimeout` makes them reconnect and sign in afresh
            // (docs/protocol-notes.md).
            KickReason::OtherLocation
            | KickReason::PasswordChanged
            | KickReason::AccountRemoved
            | KickReason::Admin => Some("OtherLocation"),
            KickReason::ServerShutdown => Some("ServerShutdown"),
            KickReason::SessionTimeout | KickReason::CredentialsExpired => Some("SessionTimeout"),
            KickReason::SlowConsumer | KickReason::Rejoin => None,
        }
    }
}

/// A chat message on its way to endpoints: shared by every recipient, finished per connection
/// (each adds its own `Ack-Id`, `Context` and `Skype-Age`).
#[derive(Debug)]
pub struct Delivery {
    /// The message with every server header but `Skype-Age`.
    pub message: FormattedMessage,
    /// Arrival time, unix ms, for `Skype-Age`.
    pub arrival_ms: i64,
    /// Conversation key and message id of a stored message (not `Control/*`), so that an `ACK`
    /// of this delivery can name the message.
    pub stored: Option<(String, i64)>,
}

/// What a connection's writer receives.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A frame to write as it is.
    Frame(Frame),
    /// A chat message to finish and write as `SDG 0 MSGR`.
    Message(Arc<Delivery>),
}

/// Room for what each connection adds to a chat message (`Ack-Id`, `Context`, `Skype-Age`, and a
/// `Content-Length` the message may lack), with margin.
const PER_CONNECTION_HEADERS: usize = 160;

impl Outbound {
    /// The payload size this item is written with (for a chat message, an upper bound).
    pub fn payload_len(&self) -> usize {
        match self {
            Outbound::Frame(f) => f.payload.len(),
            Outbound::Message(d) => {
                let m = &d.message;
                let headers: usize = [&m.routing, &m.reliability, &m.content]
                    .iter()
                    .flat_map(|h| h.iter())
                    .map(|(n, v)| n.len() + v.len() + 4)
                    .sum();
                // Three blank lines end the transport, routing and reliability blocks, one the content's.
                headers + 8 + m.body.len() + PER_CONNECTION_HEADERS
            }
        }
    }
}

/// How the router reaches one connection.
#[derive(Debug, Clone)]
pub struct EndpointHandle {
    /// Unique per connection, so an old connection's cleanup never removes its replacement.
    pub conn_id: u64,
    /// The bounded outbound queue.
    pub tx: mpsc::Sender<Outbound>,
    /// Tells the connection to end.
    pub kick: Arc<watch::Sender<Option<KickReason>>>,
    /// What the endpoint told BND.
    pub info: EndpointInfo,
    /// The largest payload this connection is sent (the frame limit requests are held to).
    pub max_payload: usize,
}

impl EndpointHandle {
    /// Queues `item`; a connection whose queue is full is ended rather than allowed to grow.
    /// Nothing larger than the frame limit is queued: a peer is held to it, so the server is too.
    pub fn send(&self, item: Outbound) -> bool {
        let len = item.payload_len();
        if len > self.max_payload {
            tracing::warn!(
                conn = self.conn_id,
                len,
                limit = self.max_payload,
                "outbound frame larger than the frame limit; not sent"
            );
            return false;
        }
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                crate::stats::count(crate::stats::OUTBOUND_DROPS, 1);
                let before = self.kick.send_replace(Some(KickReason::SlowConsumer));
                if before != Some(KickReason::SlowConsumer) {
                    tracing::warn!(
                        conn = self.conn_id,
                        "outbound queue full; dropping slow connection"
                    );
                    crate::stats::count(crate::stats::SLOW_READER_KICKS, 1);
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// Delivery between connections.
#[async_trait]
pub trait Router: Send + Sync + 'static {
    /// Registers a bound endpoint; returns the connection it replaces (same account and epid).
    async fn bind(&self, addr: EndpointAddr, handle: EndpointHandle) -> Option<EndpointHandle>;
    /// Removes an endpoint if it still belongs to connection `conn_id`.
    async fn unbind(&self, addr: &EndpointAddr, conn_id: u64);
    /// Marks an endpoint as subscribed to live messages.
    async fn set_messaging(&self, addr: &EndpointAddr, conn_id: u64);
    /// Marks an endpoint as subscribed to presence notifications.
    async fn set_presence(&self, addr: &EndpointAddr, conn_id: u64);
    /// The account's bound endpoints.
    async fn endpoints(&self, account: &AccountName) -> Vec<EndpointInfo>;
    /// Queues `item` for each endpoint of `account` that passes `filter`; returns how many took it.
    async fn deliver(&self, account: &AccountName, filter: DeliveryFilter, item: Outbound)
        -> usize;
    /// Tells every connection to end.
    async fn kick_all(&self, reason: KickReason);
    /// Ends the account's bound endpoints (only `epid`, if given) on every node: each is sent
    /// `OUT` with `reason` and closed. Returns how many were told to end.
    async fn kick(&self, account: &AccountName, epid: Option<&Epid>, reason: KickReason) -> usize;
    /// Every bound endpoint (only `account`'s, if given) on every node, for an operator.
    async fn list(&self, account: Option<&AccountName>) -> anyhow::Result<Vec<ListedEndpoint>>;
    /// Leaves the cluster at shutdown, once this node's connections have ended (alone: nothing).
    async fn leave(&self) {}
}

/// Which endpoints of an account a delivery goes to.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    /// Skip this endpoint (the sender's own).
    pub except: Option<Epid>,
    /// Only endpoints subscribed to messaging.
    pub messaging_only: bool,
    /// Only endpoints bound with `<ver>` 2 or more (thread traffic).
    pub threads_only: bool,
    /// Only endpoints subscribed to presence.
    pub presence_only: bool,
}

impl DeliveryFilter {
    /// Whether an endpoint passes.
    pub fn accepts(&self, info: &EndpointInfo) -> bool {
        self.except.as_ref() != Some(&info.epid)
            && (!self.messaging_only || info.messaging)
            && (!self.threads_only || info.ver >= 2)
            && (!self.presence_only || info.presence)
    }
}
