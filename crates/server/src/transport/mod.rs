//! Transports at the edge. Every transport (plaintext TCP, TLS, the HTTP gateway) is a
//! [`Connection`]: it yields the peer's frames and takes batches of encoded frames to send. Above
//! that seam, one loop ([`serve_connection`]) runs every connection: it hands frames to the
//! session, rate-limits, ends idle connections, writes what the session and the router queue,
//! obeys kicks and shutdown, and says goodbye. Every frame read and written is logged there at
//! `trace`.

use std::net::SocketAddr;
use std::sync::Arc;

use msnp24_proto::frame::error_frame;
use msnp24_proto::xml::misc::Out;
use msnp24_proto::{ErrorCode, Frame, FrameError, Headers, Payload};
use rand::Rng;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};
use tracing::Instrument;

use crate::commands::Flow;
use crate::limits::FrameRate;
use crate::routing::{Delivery, KickReason, Outbound};
use crate::session::Session;
use crate::state::{now_ms, AppState};

pub mod accept;
mod connection;
pub mod tls;

pub use connection::{Connection, FrameBuffer, StreamConnection};

/// Held by every connection task; the server waits for all of them to drop it at shutdown.
pub type DoneGuard = mpsc::Sender<()>;

/// Queued frames are moved into one write of at most about this many bytes, so the outbound
/// queue's bound is not undone by copying it all into the write buffer at once.
const MAX_WRITE_BATCH: usize = 64 * 1024;

/// How long the last `OUT` may take to write before the connection is simply closed.
const FAREWELL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Accepts MSNP connections (over TLS when `tls` is given) until shutdown.
pub async fn accept_tcp(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: watch::Receiver<bool>,
    done: DoneGuard,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let transport = if tls.is_some() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    let limits = accept::Limits {
        listener: if tls.is_some() { "msnp-tls" } else { "msnp" },
        per_address: &state.connections,
        descriptors: &state.descriptors,
    };
    let refuse = |stream: &tokio::net::TcpStream, _: accept::Refusal| {
        if tls.is_none() {
            // Best effort and never waiting: the peer learns why, if its socket has room.
            let _ = stream.try_write(
                &error_frame(ErrorCode::RateLimited, 0, "CON", "too many connections").to_bytes(),
            );
        }
    };
    let serve = |stream: tokio::net::TcpStream, peer: SocketAddr, admitted: accept::Admitted| {
        let _ = stream.set_nodelay(true);
        let span = connection_span(peer, transport);
        let state = state.clone();
        let shutdown = shutdown.clone();
        let done = done.clone();
        match tls.clone() {
            None => {
                tokio::spawn(
                    async move {
                        let conn = StreamConnection::new(stream, state.limits(), transport);
                        serve_connection(conn, peer, state, shutdown, done).await;
                        drop(admitted);
                    }
                    .instrument(span),
                );
            }
            Some(acceptor) => {
                tokio::spawn(
                    async move {
                        let handshake =
                            tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                                .await;
                        match handshake {
                            Ok(Ok(tls)) => {
                                let conn = StreamConnection::new(tls, state.limits(), transport);
                                serve_connection(conn, peer, state, shutdown, done).await
                            }
                            Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                        }
                        drop(admitted);
                    }
                    .instrument(span),
                );
            }
        }
    };
    accept::accept_loop(&listener, limits, shutdown.clone(), refuse, serve).await;
}

/// How a client reached us (a label of logs, metrics and `admin sessions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Plaintext MSNP.
    Tcp,
    /// MSNP over TLS.
    Tls,
    /// The HTTP gateway.
    Gateway,
}

impl Transport {
    /// The label: `tcp`, `tls` or `gateway`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Gateway => "gateway",
        }
    }

    /// The transport a label names.
    pub fn parse(label: &str) -> Option<Transport> {
        [Transport::Tcp, Transport::Tls, Transport::Gateway]
            .into_iter()
            .find(|t| t.as_str() == label)
    }
}

/// The span every line of one connection is logged in: its id and account are recorded once
/// known (`span` in JSON logs).
pub fn connection_span(peer: SocketAddr, transport: Transport) -> tracing::Span {
    tracing::info_span!(
        "conn",
        conn = tracing::field::Empty,
        peer = %peer,
        transport = transport.as_str(),
        account = tracing::field::Empty,
    )
}

/// Resolves once the shutdown switch is on (or its sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Writes a chat message for this connection into `out` as one `SDG 0 MSGR` frame: its own
/// `Ack-Id`, `Context` and `Skype-Age` around the shared message, which is encoded in place (a
/// thread's message goes to hundreds of connections). Returns the `Ack-Id`.
fn encode_delivery(d: &Delivery, context: &str, out: &mut Vec<u8>) -> String {
    let ack_id = format!("{:016X}", rand::thread_rng().gen::<u64>());
    let age = (now_ms() - d.arrival_ms).max(0).to_string();
    let mut payload = Vec::with_capacity(384 + d.message.body.len());
    Headers::new()
        .with("Ack-Id", ack_id.as_str())
        .with("Context", context)
        .encode_into(&mut payload);
    payload.extend_from_slice(b"\r\n");
    d.message
        .encode_into_with(&mut payload, "Original-Arrival-Time", ("Skype-Age", &age));
    Frame::new("SDG", 0, "MSGR", payload).encode_into(out);
    ack_id
}

fn out_frame(reason: &str) -> Frame {
    let body = Out {
        reason: Some(reason.to_string()),
    }
    .to_xml();
    Frame::new("OUT", 0, "CON", Payload::body(body).encode())
}

/// Logs the frames written from `from` on in `wbuf` (the loop's one place for outbound frames).
fn trace_sent(conn: u64, wbuf: &[u8], from: usize) {
    if from >= wbuf.len() {
        return;
    }
    tracing::trace!(conn, frames = ?String::from_utf8_lossy(&wbuf[from..]), "send");
}

/// The error frame for an unreadable frame: the 603 reply names the frame, others cannot.
fn unreadable(e: &FrameError) -> Frame {
    let (trid, target) = match e {
        FrameError::TooLarge { trid, target, .. } => (*trid, target.as_str()),
        _ => (0, "CON"),
    };
    error_frame(e.code(), trid, target, &e.to_string())
}

/// Runs one connection to its end, whatever its transport.
pub async fn serve_connection<C: Connection>(
    mut conn: C,
    peer: SocketAddr,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
    _done: DoneGuard,
) {
    let (tx, mut rx) = mpsc::channel(state.config.outbound_queue.max(1));
    let (kick_tx, mut kick_rx) = watch::channel(None);
    let mut session = Session::new(state.clone(), peer, conn.transport(), tx, Arc::new(kick_tx));
    let id = session.conn_id;
    let span = tracing::Span::current();
    span.record("conn", id);
    let mut account_logged = false;
    // Every transport is counted here, the gateway's sessions included.
    let _open = crate::stats::OpenConnection::new(conn.transport().as_str());
    tracing::info!(conn = id, %peer, transport = conn.transport().as_str(), "connection opened");
    let idle = state.config.idle_timeout();
    // Only whole frames count as activity: a peer trickling bytes of a frame it never finishes
    // is idle (issue 19).
    let mut deadline = Instant::now() + idle;
    let mut rate = FrameRate::new(state.config.frames_per_sec, state.config.frame_burst);
    let mut replies: Vec<Frame> = Vec::new();
    let mut wbuf: Vec<u8> = Vec::new();
    // The peer went away without a word (end of stream, socket error): its presence lingers.
    let mut vanished = false;
    // Set when a write was cut off mid-frame: nothing more may be written to this connection.
    let mut torn = false;

    let end: Option<KickReason> = 'conn: loop {
        tokio::select! {
            _ = kick_rx.changed() => break 'conn *kick_rx.borrow(),
            _ = stopped(&mut shutdown) => break 'conn Some(KickReason::ServerShutdown),
            _ = sleep_until(deadline) => break 'conn Some(KickReason::SessionTimeout),
            Some(item) = rx.recv() => {
                wbuf.clear();
                encode_outbound(&item, &mut session, &mut wbuf);
                while wbuf.len() < MAX_WRITE_BATCH {
                    match rx.try_recv() {
                        Ok(item) => encode_outbound(&item, &mut session, &mut wbuf),
                        Err(_) => break,
                    }
                }
                match guarded_write(&mut conn, &wbuf, &mut kick_rx, &mut shutdown).await {
                    WriteEnd::Written => {}
                    WriteEnd::Failed => {
                        vanished = true;
                        break 'conn None;
                    }
                    WriteEnd::Interrupted(reason) => {
                        torn = true;
                        break 'conn Some(reason);
                    }
                }
            }
            read = conn.read_frame() => {
                let mut close = false;
                let mut next = match read {
                    Ok(Some(frame)) => Some(frame),
                    Ok(None) => {
                        vanished = true;
                        break 'conn None;
                    }
                    Err(e) => {
                        tracing::info!(conn = id, %peer, error = %e, "unreadable frame; closing");
                        replies.push(unreadable(&e));
                        close = true;
                        None
                    }
                };
                // Frames the peer pipelined are handled together and answered in one write.
                while let Some(frame) = next.take() {
                    deadline = Instant::now() + idle;
                    crate::stats::frame_in(&frame.cmd);
                    tracing::trace!(conn = id, frame = ?String::from_utf8_lossy(&frame.to_bytes()), "recv");
                    if !rate.allow() {
                        tracing::warn!(conn = id, %peer, cmd = %frame.cmd, trid = frame.trid, "frame rate limit exceeded; closing");
                        replies.push(frame.error_reply(ErrorCode::RateLimited, "too many requests"));
                        close = true;
                        break;
                    }
                    session.cookie_token = conn.cookie_token();
                    let flow = session.handle(frame, &mut replies).await;
                    if !account_logged {
                        if let Some(account) = session.account() {
                            span.record("account", account.as_str());
                            account_logged = true;
                        }
                    }
                    if flow == Flow::Close {
                        close = true;
                        break;
                    }
                    match conn.buffered_frame() {
                        Ok(f) => next = f,
                        Err(e) => {
                            tracing::info!(conn = id, %peer, error = %e, "unreadable frame; closing");
                            replies.push(unreadable(&e));
                            close = true;
                        }
                    }
                }
                wbuf.clear();
                for f in replies.drain(..) {
                    crate::stats::frame_out(&f.cmd);
                    f.encode_into(&mut wbuf);
                }
                trace_sent(id, &wbuf, 0);
                if close {
                    // Sign-out flushes what was already queued for this endpoint.
                    while let Ok(item) = rx.try_recv() {
                        encode_outbound(&item, &mut session, &mut wbuf);
                    }
                }
                match guarded_write(&mut conn, &wbuf, &mut kick_rx, &mut shutdown).await {
                    WriteEnd::Written if !close => {}
                    WriteEnd::Written => break 'conn None,
                    WriteEnd::Failed => {
                        vanished = true;
                        break 'conn None;
                    }
                    WriteEnd::Interrupted(reason) => {
                        torn = true;
                        break 'conn Some(reason);
                    }
                }
            }
        }
    };
    if let Some(reason) = end {
        tracing::info!(conn = id, %peer, ?reason, "ending connection");
        if let (Some(text), false) = (reason.out_reason(), torn) {
            crate::stats::frame_out("OUT");
            let farewell = out_frame(text).to_bytes();
            trace_sent(id, &farewell, 0);
            let _ = tokio::time::timeout(FAREWELL_TIMEOUT, conn.write_batch(&farewell)).await;
        }
    }
    let _ = tokio::time::timeout(FAREWELL_TIMEOUT, conn.close()).await;
    session.closed(vanished).await;
    tracing::info!(conn = id, %peer, "connection closed");
}

/// How a write ended.
enum WriteEnd {
    /// Every byte was handed to the transport.
    Written,
    /// The transport failed or the peer did not read for too long.
    Failed,
    /// The connection was told to end while the write was blocked (a peer that stopped reading).
    Interrupted(KickReason),
}

/// A peer that stops reading must not hold its connection's task forever.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Writes `bytes` unless the connection is kicked or the server stops first: a peer that stopped
/// reading must not keep its task (and its queue) alive until the write times out.
async fn guarded_write<C: Connection>(
    conn: &mut C,
    bytes: &[u8],
    kick_rx: &mut watch::Receiver<Option<KickReason>>,
    shutdown: &mut watch::Receiver<bool>,
) -> WriteEnd {
    if bytes.is_empty() {
        return WriteEnd::Written;
    }
    tokio::select! {
        // A write that can complete now always does, even if an end was signalled meanwhile.
        biased;
        r = tokio::time::timeout(WRITE_TIMEOUT, conn.write_batch(bytes)) => match r {
            Ok(Ok(())) => WriteEnd::Written,
            Ok(Err(_)) | Err(_) => WriteEnd::Failed,
        },
        kicked = kick_rx.wait_for(Option::is_some) => match kicked.ok().and_then(|k| *k) {
            Some(reason) => WriteEnd::Interrupted(reason),
            None => WriteEnd::Failed,
        },
        _ = stopped(shutdown) => WriteEnd::Interrupted(KickReason::ServerShutdown),
    }
}

fn encode_outbound(item: &Outbound, session: &mut Session, out: &mut Vec<u8>) {
    let from = out.len();
    match item {
        Outbound::Frame(f) => {
            crate::stats::frame_out(&f.cmd);
            f.encode_into(out)
        }
        Outbound::Message(d) => {
            crate::stats::frame_out("SDG");
            crate::stats::delivered(now_ms() - d.arrival_ms);
            let ack_id = encode_delivery(d, &session.context, out);
            session.note_delivery(ack_id, d.stored.clone());
        }
    }
    trace_sent(session.conn_id, out, from);
}

#[cfg(test)]
mod tests {
    use super::*;
    use msnp24_proto::{FormattedMessage, Headers};

    /// The straightforward way: copy the message, insert `Skype-Age`, build a frame.
    /// Finishes a chat message for this connection: its own `Ack-Id`, `Context` and `Skype-Age`.
    /// Returns the frame and its `Ack-Id`.
    pub(super) fn finish_delivery(d: &Delivery, context: &str) -> (Frame, String) {
        let mut message = d.message.clone();
        let age = (now_ms() - d.arrival_ms).max(0);
        let at = message
            .content
            .0
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case("Original-Arrival-Time"))
            .map_or(message.content.0.len(), |i| i + 1);
        message
            .content
            .0
            .insert(at, ("Skype-Age".to_string(), age.to_string()));
        let ack_id = format!("{:016X}", rand::thread_rng().gen::<u64>());
        let transport = Headers::new()
            .with("Ack-Id", ack_id.clone())
            .with("Context", context);
        (
            Frame::new("SDG", 0, "MSGR", message.to_payload(&transport)),
            ack_id,
        )
    }

    fn delivery(content: Headers) -> Delivery {
        Delivery {
            message: FormattedMessage {
                routing: Headers::new()
                    .with("Routing", "1.0")
                    .with("To", "8:bob")
                    .with("From", "8:alice;epid={x}"),
                reliability: Headers::new().with("Reliability", "1.0"),
                content,
                body: b"hello there".to_vec(),
            },
            // Far ahead, so the age is 0 however long the test takes.
            arrival_ms: i64::MAX / 2,
            stored: None,
        }
    }

    #[test]
    fn delivery_encoded_in_place_as_a_copied_frame_would_be() {
        let with_time = Headers::new()
            .with("Messaging", "2.0")
            .with("Message-ID", "42")
            .with("Original-Arrival-Time", "2015-05-18T20:35:31.592Z")
            .with("Content-Type", "text/plain; charset=UTF-8");
        let with_length = Headers::new()
            .with("Messaging", "2.0")
            .with("Content-Length", "999")
            .with("Content-Type", "text/plain");
        for content in [with_time, with_length, Headers::new()] {
            let d = delivery(content);
            let mut fast = Vec::new();
            let ack_id = encode_delivery(&d, "CTX", &mut fast);
            let (frame, _) = finish_delivery(&d, "CTX");
            let expected = String::from_utf8(frame.to_bytes())
                .unwrap()
                .replace(&ack_id_of(&frame), &ack_id);
            assert_eq!(String::from_utf8(fast).unwrap(), expected);
        }
    }

    fn ack_id_of(frame: &Frame) -> String {
        let text = String::from_utf8_lossy(&frame.payload);
        let line = text.lines().next().unwrap_or_default();
        line.trim_start_matches("Ack-Id: ").to_string()
    }
}
