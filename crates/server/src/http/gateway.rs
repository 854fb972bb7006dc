//! The HTTP gateway (§11): MSNP frames in HTTP request and response bodies, with long polls for
//! what the server has to say. Each gateway session is one endpoint, run by the same connection
//! loop as a TCP connection ([`crate::transport::serve_connection`]) over a [`Connection`] whose
//! input is request bodies and whose output is a bounded outbox that responses drain.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use msnp24_proto::{Frame, FrameError};
use rand::Rng;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, Instant};

use super::compat::{cookie, request_host};
use super::PeerAddr;
use crate::limits::ConnectionSlot;
use crate::state::AppState;
use crate::transport::{self, Connection, DoneGuard, FrameBuffer, Transport};
use tracing::Instrument;

/// The gateway's one path.
pub const PATH: &str = "/gateway/gateway.dll";

/// The cookie the compatibility login sets and `X-MSN-Auth: Use-Cookie` refers to.
pub const AUTH_COOKIE: &str = "MSPAuth";

/// Longest a poll is held, in seconds, whatever `Lifespan` asks (§11).
pub const MAX_LIFESPAN_SECS: u64 = 60;

/// Bytes of encoded frames a session may have waiting for a response. Past it the session's
/// writes wait as a socket's do for a peer that does not read, its outbound queue fills and it
/// is ended as a slow reader (§9).
pub const OUTBOX_LIMIT: usize = 256 * 1024;

/// A response to a send waits at most this long for its frames to be handled.
const SEND_WAIT: Duration = Duration::from_secs(30);

/// The `Set-Cookie` value for a login token (§11: Secure, HttpOnly, Path=/).
pub fn auth_cookie(token: &str) -> String {
    format!("{AUTH_COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict")
}

/// One request body on its way to the session.
struct Chunk {
    bytes: Bytes,
    /// The `MSPAuth` token, when the request said `X-MSN-Auth: Use-Cookie`.
    cookie: Option<String>,
    /// Told once every frame of the body (and any before it) has been handled and answered.
    handled: oneshot::Sender<()>,
}

/// What the session writes and requests collect.
#[derive(Default)]
struct Outbox {
    bytes: Vec<u8>,
    /// The session's connection loop has ended: nothing more will be written.
    ended: bool,
    /// Counts polls, so a newer poll can tell the older one to answer.
    polls: u64,
}

/// A session as the HTTP side sees it.
struct GwSession {
    id: String,
    inbound: mpsc::Sender<Chunk>,
    outbox: Mutex<Outbox>,
    /// Bumped on every change of the outbox: new frames, drained, ended, a newer poll.
    changed: watch::Sender<()>,
    last_request: Mutex<Instant>,
    /// The open request asked for `text/html` responses.
    html: bool,
    /// The session's place in its address's connection count, given back when it is forgotten.
    _slot: ConnectionSlot,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; recover rather than fail every later request.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl GwSession {
    fn touch(&self) {
        *lock(&self.last_request) = Instant::now();
    }

    fn last_request(&self) -> Instant {
        *lock(&self.last_request)
    }

    fn notify(&self) {
        self.changed.send_replace(());
    }

    /// Takes every frame waiting. `None`: the session has ended and nothing is left.
    fn drain(&self) -> Option<Vec<u8>> {
        let mut o = lock(&self.outbox);
        if o.ended && o.bytes.is_empty() {
            return None;
        }
        let bytes = std::mem::take(&mut o.bytes);
        drop(o);
        self.notify();
        Some(bytes)
    }
}

/// The session's side: request bodies in, frames into the outbox.
struct GatewayConnection {
    session: Arc<GwSession>,
    inbound: mpsc::Receiver<Chunk>,
    frames: FrameBuffer,
    /// Requests whose bytes are in `frames` and wait to hear that they were handled.
    handled: Vec<oneshot::Sender<()>>,
    cookie: Option<String>,
    timeout: Duration,
}

impl GatewayConnection {
    fn answer_handled(&mut self) {
        for h in self.handled.drain(..) {
            let _ = h.send(());
        }
    }
}

impl Connection for GatewayConnection {
    async fn read_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            if let Some(frame) = self.frames.next_frame()? {
                return Ok(Some(frame));
            }
            // The loop asks for more only once it has handled and answered every frame so far.
            self.answer_handled();
            let deadline = self.session.last_request() + self.timeout;
            tokio::select! {
                chunk = self.inbound.recv() => match chunk {
                    Some(c) => {
                        self.frames.extend(&c.bytes);
                        self.cookie = c.cookie;
                        self.handled.push(c.handled);
                    }
                    None => return Ok(None),
                },
                _ = sleep_until(deadline) => {
                    if self.session.last_request() + self.timeout <= Instant::now() {
                        tracing::info!(session = %self.session.id, "gateway session timed out");
                        return Ok(None);
                    }
                }
            }
        }
    }

    fn buffered_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        self.frames.next_frame()
    }

    async fn write_batch(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut changed = self.session.changed.subscribe();
        loop {
            {
                let mut o = lock(&self.session.outbox);
                if o.bytes.is_empty() || o.bytes.len() + bytes.len() <= OUTBOX_LIMIT {
                    o.bytes.extend_from_slice(bytes);
                    drop(o);
                    self.session.notify();
                    return Ok(());
                }
            }
            // Full: wait for a response to collect, as a socket waits for its peer to read.
            if changed.changed().await.is_err() {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
        }
    }

    async fn close(&mut self) {
        lock(&self.session.outbox).ended = true;
        self.session.notify();
        self.answer_handled();
    }

    fn cookie_token(&self) -> Option<String> {
        self.cookie.clone()
    }

    fn transport(&self) -> Transport {
        Transport::Gateway
    }
}

/// Every gateway session of this node, shared by the HTTP and HTTPS listeners.
pub struct Gateway {
    state: Arc<AppState>,
    sessions: Mutex<HashMap<String, Arc<GwSession>>>,
    shutdown: watch::Receiver<bool>,
    /// Cloned into each session's task; given up at shutdown so the server can wait for them.
    done: Mutex<Option<DoneGuard>>,
}

impl Gateway {
    /// A gateway whose sessions end at `shutdown` and hold `done` while they run.
    pub fn new(
        state: Arc<AppState>,
        shutdown: watch::Receiver<bool>,
        done: DoneGuard,
    ) -> Arc<Gateway> {
        let gateway = Arc::new(Gateway {
            state,
            sessions: Mutex::default(),
            shutdown: shutdown.clone(),
            done: Mutex::new(Some(done)),
        });
        let weak = Arc::downgrade(&gateway);
        let mut stop = shutdown;
        tokio::spawn(async move {
            transport::stopped(&mut stop).await;
            if let Some(g) = weak.upgrade() {
                lock(&g.done).take();
            }
        });
        gateway
    }

    /// The gateway's route, with its body limit.
    pub fn routes(self: Arc<Self>) -> axum::Router {
        let limit = self.body_limit();
        axum::Router::new()
            .route(PATH, post(handle))
            .layer(DefaultBodyLimit::max(limit))
            .with_state(self)
    }

    /// Largest request body: one frame of the largest payload with its first line.
    pub fn body_limit(&self) -> usize {
        let limits = self.state.limits();
        limits.max_payload + limits.max_line
    }

    /// Sessions currently known (live, or ended with frames not yet collected).
    pub fn session_count(&self) -> usize {
        lock(&self.sessions).len()
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.state.config.gateway_session_timeout_secs.max(1))
    }

    fn find(&self, id: &str) -> Option<Arc<GwSession>> {
        let mut sessions = lock(&self.sessions);
        let s = sessions.get(id)?.clone();
        let o = lock(&s.outbox);
        if o.ended && o.bytes.is_empty() {
            drop(o);
            sessions.remove(id);
            return None;
        }
        drop(o);
        Some(s)
    }

    fn forget(&self, s: &Arc<GwSession>) {
        let mut sessions = lock(&self.sessions);
        if sessions.get(&s.id).is_some_and(|x| Arc::ptr_eq(x, s)) {
            sessions.remove(&s.id);
        }
    }

    /// Starts a session's connection loop; `None` when the address has too many connections or
    /// the server is stopping.
    fn open(self: &Arc<Self>, peer: SocketAddr, html: bool) -> Result<Arc<GwSession>, StatusCode> {
        let Some(done) = lock(&self.done).clone() else {
            return Err(StatusCode::SERVICE_UNAVAILABLE);
        };
        if *self.shutdown.borrow() {
            return Err(StatusCode::SERVICE_UNAVAILABLE);
        }
        let Some(slot) = self.state.connections.try_acquire(peer.ip()) else {
            tracing::warn!(%peer, limit = self.state.config.max_connections_per_ip, "too many connections from this address; gateway session refused");
            return Err(StatusCode::TOO_MANY_REQUESTS);
        };
        let (tx, rx) = mpsc::channel(self.state.config.gateway_pending_sends.max(1));
        let mut rng = rand::thread_rng();
        // 128 random bits; the dotted form only looks like the original's.
        let id = format!("{}.{}", rng.gen::<u64>(), rng.gen::<u64>());
        let session = Arc::new(GwSession {
            id: id.clone(),
            inbound: tx,
            outbox: Mutex::default(),
            changed: watch::channel(()).0,
            last_request: Mutex::new(Instant::now()),
            html,
            _slot: slot,
        });
        lock(&self.sessions).insert(id, session.clone());
        let conn = GatewayConnection {
            session: session.clone(),
            inbound: rx,
            frames: FrameBuffer::new(self.state.limits()),
            handled: Vec::new(),
            cookie: None,
            timeout: self.timeout(),
        };
        let gateway = self.clone();
        let state = self.state.clone();
        let shutdown = self.shutdown.clone();
        let s = session.clone();
        let span = transport::connection_span(peer, Transport::Gateway);
        tokio::spawn(
            async move {
                transport::serve_connection(conn, peer, state, shutdown, done).await;
                // Frames left for the client wait for one more request, for at most the timeout.
                if lock(&s.outbox).bytes.is_empty() {
                    gateway.forget(&s);
                } else {
                    tokio::time::sleep(gateway.timeout()).await;
                    gateway.forget(&s);
                }
            }
            .instrument(span),
        );
        Ok(session)
    }
}

/// The query parameters of a gateway request, names compared case-insensitively.
struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn status(code: StatusCode) -> Response {
    code.into_response()
}

fn header_is(headers: &HeaderMap, name: &str, value: &str) -> bool {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(value))
}

/// `POST /gateway/gateway.dll`: opens a session, sends frames, or polls.
async fn handle(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            tracing::info!(%peer, error = %e, "gateway request body refused");
            return status(if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            });
        }
    };
    let query =
        Query(serde_urlencoded::from_str(query.as_deref().unwrap_or("")).unwrap_or_default());
    let html = header_is(&headers, "x-requested-session-content-type", "text/html");
    let session = if query
        .get("Action")
        .is_some_and(|a| a.eq_ignore_ascii_case("open"))
    {
        match gw.open(peer, html) {
            Ok(s) => {
                tracing::info!(%peer, session = %s.id, "gateway session opened");
                s
            }
            Err(code) => return status(code),
        }
    } else {
        match query.get("SessionID").and_then(|id| gw.find(id)) {
            Some(s) => s,
            None => {
                tracing::debug!(%peer, "gateway request for an unknown or ended session");
                return status(StatusCode::BAD_REQUEST);
            }
        }
    };
    session.touch();
    // A body the session took is answered even if handling it ended the session (`OUT`).
    let mut handled = false;
    if !body.is_empty() {
        let cookie = header_is(&headers, "x-msn-auth", "use-cookie")
            .then(|| cookie(&headers, AUTH_COOKIE))
            .flatten();
        match send(&session, body, cookie).await {
            Ok(taken) => handled = taken,
            Err(code) => return status(code),
        }
    }
    let poll = query
        .get("Action")
        .is_some_and(|a| a.eq_ignore_ascii_case("poll"));
    let lifespan = query
        .get("Lifespan")
        .and_then(|l| l.trim().parse::<u64>().ok())
        .unwrap_or(0)
        .min(MAX_LIFESPAN_SECS);
    if poll && lifespan > 0 {
        hold(&session, Duration::from_secs(lifespan)).await;
    }
    let answer = session.drain();
    session.touch();
    match answer {
        Some(bytes) => {
            if lock(&session.outbox).ended {
                gw.forget(&session);
            }
            respond(&gw, &session, &headers, html, bytes)
        }
        None => {
            gw.forget(&session);
            if handled {
                respond(&gw, &session, &headers, html, Vec::new())
            } else {
                status(StatusCode::BAD_REQUEST)
            }
        }
    }
}

/// Hands a body to the session and waits until its frames are handled, or the outbox fills
/// (its replies would wait behind frames nobody collected), or the session ends. `Ok(false)`:
/// the session had already ended and did not take it.
async fn send(
    session: &GwSession,
    bytes: Bytes,
    cookie: Option<String>,
) -> Result<bool, StatusCode> {
    let (handled, mut answered) = oneshot::channel();
    let chunk = Chunk {
        bytes,
        cookie,
        handled,
    };
    let mut changed = session.changed.subscribe();
    match session.inbound.try_send(chunk) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::info!(session = %session.id, "gateway session has too many sends waiting");
            return Err(StatusCode::TOO_MANY_REQUESTS);
        }
        // Ended: the request still collects what was left for it.
        Err(mpsc::error::TrySendError::Closed(_)) => return Ok(false),
    }
    let deadline = Instant::now() + SEND_WAIT;
    loop {
        tokio::select! {
            _ = &mut answered => return Ok(true),
            r = changed.changed() => {
                let o = lock(&session.outbox);
                if r.is_err() || o.ended || o.bytes.len() >= OUTBOX_LIMIT / 2 {
                    return Ok(true);
                }
            }
            _ = sleep_until(deadline) => return Ok(true),
        }
    }
}

/// Holds a poll until a frame is queued, the session ends, a newer poll arrives or `lifespan`
/// passes.
async fn hold(session: &GwSession, lifespan: Duration) {
    let mut changed = session.changed.subscribe();
    let mine = {
        let mut o = lock(&session.outbox);
        o.polls += 1;
        o.polls
    };
    // Tells an older held poll to answer now.
    session.notify();
    let deadline = Instant::now() + lifespan;
    loop {
        {
            let o = lock(&session.outbox);
            if o.polls != mine || o.ended || !o.bytes.is_empty() {
                return;
            }
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = sleep_until(deadline) => return,
        }
    }
}

fn respond(
    gw: &Gateway,
    session: &GwSession,
    headers: &HeaderMap,
    html: bool,
    body: Vec<u8>,
) -> Response {
    let host = request_host(&gw.state, headers);
    let content_type = if html || session.html {
        "text/html"
    } else {
        "application/x-msn-messenger"
    };
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    set("content-type", content_type.to_string());
    set(
        "x-msn-messenger",
        format!("SessionID={}; GW-IP={host}", session.id),
    );
    set("x-msn-host", host_name(&host).to_string());
    set("x-msn-sessiontimeout", gw.timeout().as_secs().to_string());
    if headers.contains_key("x-msn-gwcapabilities") {
        set("x-msn-gwcapabilities", "LP".to_string());
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `host[:port]` without the port.
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.split_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_name_drops_the_port() {
        assert_eq!(host_name("gateway.example.org:443"), "gateway.example.org");
        assert_eq!(host_name("example.org"), "example.org");
        assert_eq!(host_name("[::1]:8080"), "[::1]");
    }
}
