//! Transports at the edge: accept loops for plaintext TCP and TLS, and the per-connection loop that
//! turns bytes into frames for the session and writes what the session and the router queue.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use msnp24_proto::frame::{decode, error_frame};
use msnp24_proto::xml::misc::Out;
use msnp24_proto::{Frame, Headers, Payload};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};

use crate::commands::Flow;
use crate::routing::{Delivery, KickReason, Outbound};
use crate::session::Session;
use crate::state::{now_ms, AppState};

pub mod tls;

/// Held by every connection task; the server waits for all of them to drop it at shutdown.
pub type DoneGuard = mpsc::Sender<()>;

/// Reads start small: an idle connection should cost a few KiB, not a large default buffer.
const INITIAL_READ_BUFFER: usize = 512;

/// Accepts plaintext connections until shutdown.
pub async fn accept_tcp(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: watch::Receiver<bool>,
    done: DoneGuard,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut stop = shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = stopped(&mut stop) => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Usually EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let shutdown = shutdown.clone();
        let done = done.clone();
        match tls.clone() {
            None => {
                tokio::spawn(serve_connection(stream, peer, state, shutdown, done));
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                    match handshake {
                        Ok(Ok(tls)) => serve_connection(tls, peer, state, shutdown, done).await,
                        Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// Resolves once the shutdown switch is on (or its sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Finishes a chat message for this connection: its own `Ack-Id`, `Context` and `Skype-Age`.
/// Returns the frame and its `Ack-Id`.
fn finish_delivery(d: &Delivery, context: &str) -> (Frame, String) {
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

fn out_frame(reason: &str) -> Frame {
    let body = Out {
        reason: Some(reason.to_string()),
    }
    .to_xml();
    Frame::new("OUT", 0, "CON", Payload::body(body).encode())
}

/// Runs one connection to its end.
pub async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
    _done: DoneGuard,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (tx, mut rx) = mpsc::channel(state.config.outbound_queue.max(1));
    let (kick_tx, mut kick_rx) = watch::channel(None);
    let mut session = Session::new(state.clone(), peer, tx, Arc::new(kick_tx));
    let conn = session.conn_id;
    tracing::info!(conn, %peer, "connection opened");
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf = BytesMut::with_capacity(INITIAL_READ_BUFFER);
    let limits = state.limits();
    let idle = state.config.idle_timeout();
    let mut deadline = Instant::now() + idle;
    let mut replies: Vec<Frame> = Vec::new();
    let mut wbuf: Vec<u8> = Vec::new();
    // The peer went away without a word (end of stream, socket error): its presence lingers.
    let mut vanished = false;

    let end: Option<KickReason> = 'conn: loop {
        tokio::select! {
            _ = kick_rx.changed() => break 'conn *kick_rx.borrow(),
            _ = stopped(&mut shutdown) => break 'conn Some(KickReason::ServerShutdown),
            _ = sleep_until(deadline) => break 'conn Some(KickReason::SessionTimeout),
            Some(item) = rx.recv() => {
                wbuf.clear();
                encode_outbound(&item, &mut session, &mut wbuf);
                while let Ok(item) = rx.try_recv() {
                    encode_outbound(&item, &mut session, &mut wbuf);
                }
                if write_all(&mut wr, &wbuf).await.is_err() {
                    vanished = true;
                    break 'conn None;
                }
            }
            read = rd.read_buf(&mut buf) => {
                match read {
                    Ok(0) => {
                        vanished = true;
                        break 'conn None;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(conn, error = %e, "read failed");
                        vanished = true;
                        break 'conn None;
                    }
                }
                deadline = Instant::now() + idle;
                let mut close = false;
                loop {
                    match decode(&buf, &limits) {
                        Ok(Some((frame, used))) => {
                            buf.advance(used);
                            if session.handle(frame, &mut replies).await == Flow::Close {
                                close = true;
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::info!(conn, %peer, error = %e, "unreadable frame; closing");
                            let (trid, target) = match &e {
                                msnp24_proto::FrameError::TooLarge { trid, target, .. } => (*trid, target.as_str()),
                                _ => (0, "CON"),
                            };
                            replies.push(error_frame(e.code(), trid, target, &e.to_string()));
                            close = true;
                            break;
                        }
                    }
                }
                // A large frame grew the buffer; give the memory back once it is drained.
                if buf.is_empty() && buf.capacity() > 16 * 1024 {
                    buf = BytesMut::with_capacity(INITIAL_READ_BUFFER);
                }
                wbuf.clear();
                for f in replies.drain(..) {
                    tracing::trace!(conn, frame = %String::from_utf8_lossy(&f.to_bytes()), "send");
                    f.encode_into(&mut wbuf);
                }
                if close {
                    // Sign-out flushes what was already queued for this endpoint.
                    while let Ok(item) = rx.try_recv() {
                        encode_outbound(&item, &mut session, &mut wbuf);
                    }
                }
                if write_all(&mut wr, &wbuf).await.is_err() {
                    vanished = true;
                    break 'conn None;
                }
                if close {
                    break 'conn None;
                }
            }
        }
    };
    if let Some(reason) = end {
        tracing::info!(conn, %peer, ?reason, "ending connection");
        if let Some(text) = reason.out_reason() {
            let _ = write_all(&mut wr, &out_frame(text).to_bytes()).await;
        }
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), wr.shutdown()).await;
    session.closed(vanished).await;
    tracing::info!(conn, %peer, "connection closed");
}

fn encode_outbound(item: &Outbound, session: &mut Session, out: &mut Vec<u8>) {
    match item {
        Outbound::Frame(f) => f.encode_into(out),
        Outbound::Message(d) => {
            let (frame, ack_id) = finish_delivery(d, &session.context);
            frame.encode_into(out);
            session.note_delivery(ack_id, d.stored.clone());
        }
    }
}

async fn write_all<W: AsyncWrite + Unpin>(wr: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    // A peer that stops reading must not hold this task forever.
    match tokio::time::timeout(std::time::Duration::from_secs(30), async {
        wr.write_all(bytes).await?;
        wr.flush().await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "write timed out",
        )),
    }
}
