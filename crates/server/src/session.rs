//! One connection's state machine (new → connected → authenticated → bound): checks the state a
//! command needs and the `Registration` header, dispatches, and keeps registration tokens fresh.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use msnp24_proto::{AccountName, Epid, ErrorCode, Frame, Payload};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::commands::{self, Flow, Needs, Refusal};
use crate::routing::{EndpointAddr, KickReason, Outbound};
use crate::state::{now_secs, AppState};
use crate::tokens::{Claims, TokenKind};

/// Where a connection is in the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Nothing yet.
    New,
    /// `CNT` answered.
    Connected,
    /// `ATH` succeeded.
    Authenticated(AccountName),
    /// `BND` succeeded.
    Bound(Bound),
}

/// A bound endpoint's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// The account.
    pub account: AccountName,
    /// The endpoint id.
    pub epid: Epid,
    /// BND `<ver>`.
    pub ver: u32,
}

impl Bound {
    /// The router address of this endpoint.
    pub fn addr(&self) -> EndpointAddr {
        EndpointAddr {
            account: self.account.clone(),
            epid: self.epid.clone(),
        }
    }
}

/// A connection's protocol state.
pub struct Session {
    /// Shared server state.
    pub state: Arc<AppState>,
    /// Unique connection id.
    pub conn_id: u64,
    /// The `Context` header value: 16 hex digits, per connection.
    pub context: String,
    /// The peer's address.
    pub peer: SocketAddr,
    /// The transport the connection came over.
    pub transport: crate::transport::Transport,
    /// Handshake state.
    pub phase: Phase,
    /// This connection's outbound queue (handed to the router at BND).
    pub tx: mpsc::Sender<Outbound>,
    /// This connection's kick switch (handed to the router at BND).
    pub kick: Arc<watch::Sender<Option<KickReason>>>,
    /// The client sent `OUT`: its endpoint leaves presence at once when the connection ends.
    pub signed_out: bool,
    /// The BND challenge nonce this endpoint has yet to answer (§2.4); `None` when challenges are
    /// off or it already answered.
    pub challenge_nonce: Option<String>,
    /// The login token of the cookie the transport authenticated the current request with (the
    /// gateway's `X-MSN-Auth: Use-Cookie`, §11), for an `ATH` with `<web-compact-ticket />`.
    pub cookie_token: Option<String>,
    /// When the registration token last handed out was issued, unix seconds.
    reg_issued_at: i64,
    /// When it expires, unix seconds (0: none handed out yet). Once past, every command of the
    /// bound session is refused, whether or not it carries the token.
    reg_expires_at: i64,
    /// Id and generation of the account as `ATH` found it: checked again before a fresh
    /// registration token is handed out, so a session of a removed account or an old password
    /// ends by then even if nothing told this node.
    pub credential: Option<(i64, i64)>,
    /// The last `Registration` token verified for this endpoint, with its expiry (unix seconds):
    /// a client repeats the same token on every command, and its HMAC need not be checked again.
    verified_registration: Option<(String, i64)>,
    /// The latest `Ack-Id`s handed out, with the stored message each names, so an `ACK` can be
    /// recorded against its message.
    deliveries: VecDeque<(String, Option<(String, i64)>)>,
}

/// `Ack-Id`s remembered per connection; an `ACK` for an older one is recorded without its message.
const REMEMBERED_DELIVERIES: usize = 256;

impl Session {
    /// A session for a new connection.
    pub fn new(
        state: Arc<AppState>,
        peer: SocketAddr,
        transport: crate::transport::Transport,
        tx: mpsc::Sender<Outbound>,
        kick: Arc<watch::Sender<Option<KickReason>>>,
    ) -> Session {
        let conn_id = state.next_conn_id();
        let context = format!("{:016X}", rand::thread_rng().gen::<u64>());
        Session {
            state,
            conn_id,
            context,
            peer,
            transport,
            phase: Phase::New,
            tx,
            kick,
            signed_out: false,
            challenge_nonce: None,
            cookie_token: None,
            reg_issued_at: 0,
            reg_expires_at: 0,
            credential: None,
            verified_registration: None,
            deliveries: VecDeque::new(),
        }
    }

    /// Remembers that `ack_id` was handed out for `message` (conversation key, message id).
    pub fn note_delivery(&mut self, ack_id: String, message: Option<(String, i64)>) {
        if self.deliveries.len() >= REMEMBERED_DELIVERIES {
            self.deliveries.pop_front();
        }
        self.deliveries.push_back((ack_id, message));
    }

    /// Whether this connection handed `ack_id` out recently, and the stored message it names
    /// (`None` inside for a message that is not stored, such as `Control/*`).
    pub fn handed_out(&self, ack_id: &str) -> Option<Option<(String, i64)>> {
        self.deliveries
            .iter()
            .rev()
            .find(|(a, _)| a.eq_ignore_ascii_case(ack_id))
            .map(|(_, m)| m.clone())
    }

    /// The bound endpoint, if any.
    pub fn bound(&self) -> Option<&Bound> {
        match &self.phase {
            Phase::Bound(b) => Some(b),
            _ => None,
        }
    }

    /// The authenticated account, if any.
    pub fn account(&self) -> Option<&AccountName> {
        match &self.phase {
            Phase::Authenticated(a) => Some(a),
            Phase::Bound(b) => Some(&b.account),
            _ => None,
        }
    }

    /// Handles one frame; replies are appended to `out` in order.
    pub async fn handle(&mut self, frame: Frame, out: &mut Vec<Frame>) -> Flow {
        // Its own root span, so that every line logged while handling a command names the
        // connection, the account and the command in one place (`span` in JSON logs).
        let span = tracing::info_span!(
            parent: None,
            "cmd",
            conn = self.conn_id,
            peer = %self.peer,
            account = self.account().map(|a| a.as_str()),
            cmd = %frame.cmd,
            trid = frame.trid,
        );
        self.handle_in_span(frame, out).instrument(span).await
    }

    async fn handle_in_span(&mut self, frame: Frame, out: &mut Vec<Frame>) -> Flow {
        let start = out.len();
        let outcome = self.check_and_dispatch(&frame, out).await;
        match (&outcome, frame.cmd.as_str()) {
            (Ok(_), "BND") if self.bound().is_some() => crate::stats::handshake(true),
            (Err(_), "CNT" | "ATH" | "BND") => crate::stats::handshake(false),
            _ => {}
        }
        self.hold_to_frame_limit(&frame, &mut out[start..]);
        match outcome {
            Ok(flow) => flow,
            Err(refusal) => {
                tracing::info!(
                    conn = self.conn_id,
                    peer = %self.peer,
                    cmd = %frame.cmd,
                    target = %frame.target,
                    code = refusal.code.code(),
                    reason = %refusal.reason,
                    "request refused"
                );
                out.push(frame.error_reply(refusal.code, &refusal.reason));
                if refusal.close {
                    Flow::Close
                } else {
                    Flow::Continue
                }
            }
        }
    }

    /// Replies are held to the frame limit requests are held to: handlers size what they build
    /// (presence, history pages), and one that did not becomes `500` here rather than a frame the
    /// client cannot read.
    fn hold_to_frame_limit(&self, request: &Frame, replies: &mut [Frame]) {
        let limit = self.state.config.max_payload;
        for reply in replies.iter_mut().filter(|r| r.payload.len() > limit) {
            tracing::error!(
                conn = self.conn_id,
                cmd = %request.cmd,
                target = %request.target,
                len = reply.payload.len(),
                limit,
                "reply larger than the frame limit; answered 500 instead"
            );
            *reply = request.error_reply(ErrorCode::Internal, "reply too large");
        }
    }

    async fn check_and_dispatch(
        &mut self,
        frame: &Frame,
        out: &mut Vec<Frame>,
    ) -> commands::Outcome {
        let payload = frame
            .parse_payload()
            .map_err(|e| Refusal::new(ErrorCode::Syntax, format!("bad payload: {e}")))?;
        let have = match self.phase {
            Phase::New | Phase::Connected => Needs::Nothing,
            Phase::Authenticated(_) => Needs::Auth,
            Phase::Bound(_) => Needs::Bound,
        };
        if commands::needs(frame) > have {
            return Err(Refusal::new(
                ErrorCode::AuthFailed,
                if have == Needs::Auth {
                    "not bound"
                } else {
                    "not authenticated"
                },
            ));
        }
        if self.challenge_nonce.is_some()
            && frame.target_head() == "MSGR"
            && !(frame.cmd == "PUT" && frame.target_tail() == "CHALLENGE")
        {
            return Err(Refusal::new(
                ErrorCode::AuthFailed,
                "the BND challenge has not been answered",
            ));
        }
        if let Some(bound) = self.bound() {
            let now = now_secs();
            if self.reg_expires_at != 0 && now >= self.reg_expires_at {
                tracing::info!(conn = self.conn_id, account = %bound.account, "registration expired; ending the session");
                self.kick.send_replace(Some(KickReason::CredentialsExpired));
                return Err(Refusal::new(ErrorCode::AuthFailed, "registration expired"));
            }
            let ttl = self.state.config.registration_ttl_secs as i64;
            if now - self.reg_issued_at >= ttl / 2 {
                self.check_credential().await?;
            }
        }
        if let (Some(bound), Some(token)) = (self.bound(), payload.headers.get("Registration")) {
            let now = now_secs();
            let known = matches!(&self.verified_registration,
                Some((t, expires_at)) if t == token && now < *expires_at);
            if !known {
                let claims = self
                    .state
                    .tokens
                    .verify(TokenKind::Registration, token, now)
                    .map_err(|e| {
                        Refusal::new(ErrorCode::AuthFailed, format!("registration: {e}"))
                    })?;
                if claims.account != bound.account || claims.epid.as_ref() != Some(&bound.epid) {
                    return Err(Refusal::new(
                        ErrorCode::AuthFailed,
                        "registration token names another endpoint",
                    ));
                }
                self.verified_registration = Some((token.to_string(), claims.expires_at));
            }
        }
        commands::dispatch(self, frame, &payload, out).await
    }

    /// Before a fresh registration token is handed out: the account must still be the one `ATH`
    /// found, under the same password; otherwise the session ends with `OUT`.
    async fn check_credential(&mut self) -> Result<(), Refusal> {
        let (Some((id, generation)), Some(bound)) = (self.credential, self.bound()) else {
            return Ok(());
        };
        let account = bound.account.clone();
        let reason = match self.state.storage.account(&account).await {
            Ok(Some(a)) if a.id == id && a.generation == generation => return Ok(()),
            Ok(Some(a)) if a.id == id => KickReason::PasswordChanged,
            Ok(_) => KickReason::AccountRemoved,
            Err(e) => {
                // Storage trouble is not a revocation: check again at the next command.
                tracing::warn!(conn = self.conn_id, error = %e, "credential check failed");
                return Ok(());
            }
        };
        tracing::info!(conn = self.conn_id, account = %account, ?reason, "credentials revoked; ending the session");
        self.kick.send_replace(Some(reason));
        Err(Refusal::new(ErrorCode::AuthFailed, "credentials revoked"))
    }

    /// A success reply to `request`; once a bound endpoint's registration token is past half its
    /// lifetime (or `force`), the reply carries a fresh one with `UtcTime` and `Context` (§1).
    pub fn reply(&mut self, request: &Frame, body: impl Into<Vec<u8>>, force_token: bool) -> Frame {
        self.reply_with(request, Payload::body(body), force_token)
    }

    /// [`Session::reply`] with a payload of the handler's: a fresh token's headers follow its own.
    pub fn reply_with(
        &mut self,
        request: &Frame,
        mut payload: Payload,
        force_token: bool,
    ) -> Frame {
        let ttl = self.state.config.registration_ttl_secs as i64;
        let now = now_secs();
        if let Some(bound) = self.bound() {
            if force_token || now - self.reg_issued_at >= ttl / 2 {
                let expires_at = now + ttl;
                let token = self.state.tokens.issue(
                    TokenKind::Registration,
                    &Claims {
                        account: bound.account.clone(),
                        account_id: 0,
                        generation: 0,
                        expires_at,
                        epid: Some(bound.epid.clone()),
                    },
                );
                self.reg_expires_at = expires_at;
                payload.headers.push("UtcTime", now.to_string());
                payload.headers.push("Set-Registration", token);
                payload
                    .headers
                    .push("Registration-Token-Expiry", expires_at.to_string());
                payload.headers.push("Context", self.context.clone());
                self.reg_issued_at = now;
            }
        }
        request.reply(&payload)
    }

    /// Unregisters the endpoint when the connection ends. `vanished`: the peer went away without
    /// `OUT` (end of stream or a socket error), so its presence stays for the keep-alive time.
    pub async fn closed(&mut self, vanished: bool) {
        if let Some(bound) = self.bound() {
            let addr = bound.addr();
            crate::stats::gauge_add(crate::stats::ENDPOINTS_BOUND, -1.0);
            self.state.router.unbind(&addr, self.conn_id).await;
            let linger = vanished && !self.signed_out;
            self.state
                .presence
                .closed(&addr.account, &addr.epid, self.conn_id, linger)
                .await;
            tracing::info!(conn = self.conn_id, account = %addr.account, epid = %addr.epid, linger, "endpoint unbound");
        }
    }
}
