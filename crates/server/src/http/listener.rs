//! Serving HTTP(S) connections with bounds `axum::serve` lacks: the shared accept loop (a place
//! per address and a descriptor per connection), a header-read timeout from a request's first
//! byte, and an idle timeout between requests. Each connection is served by hyper's HTTP/1.1
//! connection under a watchdog that drops it when either timeout passes.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::PeerAddr;
use crate::limits::{ConnectionLimiter, DescriptorBudget};
use crate::transport::accept::{self, Admitted, Refusal};
use crate::transport::{self, tls, DoneGuard};

/// How long a connection may wait between requests, and take over one request's headers.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From a request's first byte to its last header.
    pub header: Duration,
    /// From the end of one response (or the connection's start) to the next request's first byte.
    pub idle: Duration,
}

/// One listener's settings.
pub struct Listener {
    /// Its label in logs (`http`, `https`, `metrics`).
    pub label: &'static str,
    /// The routes it serves.
    pub app: axum::Router,
    /// TLS first, for HTTPS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Its timeouts.
    pub timeouts: Timeouts,
}

/// Serves `listener` until shutdown; connections finish their request in flight, then close.
pub async fn serve(
    listener: TcpListener,
    config: Listener,
    per_address: &ConnectionLimiter,
    descriptors: &DescriptorBudget,
    shutdown: watch::Receiver<bool>,
    done: DoneGuard,
) {
    let limits = accept::Limits {
        listener: config.label,
        per_address,
        descriptors,
    };
    let plain = config.tls.is_none();
    let refuse = |stream: &TcpStream, why: Refusal| {
        if plain {
            let status = match why {
                Refusal::PerAddress => "429 Too Many Requests",
                Refusal::Descriptors => "503 Service Unavailable",
            };
            let reply =
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            // Best effort and never waiting, as on MSNP.
            let _ = stream.try_write(reply.as_bytes());
        }
    };
    let config = Arc::new(config);
    let serve = |stream: TcpStream, peer: SocketAddr, admitted: Admitted| {
        let config = config.clone();
        let shutdown = shutdown.clone();
        let done = done.clone();
        tokio::spawn(async move {
            match &config.tls {
                None => connection(stream, peer, &config, shutdown).await,
                Some(acceptor) => {
                    match tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => connection(stream, peer, &config, shutdown).await,
                        Ok(Err(e)) => {
                            tracing::info!(%peer, error = %e, "HTTPS TLS handshake failed")
                        }
                        Err(_) => tracing::info!(%peer, "HTTPS TLS handshake timed out"),
                    }
                }
            }
            drop(admitted);
            drop(done);
        });
    };
    accept::accept_loop(&listener, limits, shutdown.clone(), refuse, serve).await;
}

/// Serves one connection until it closes, times out, or finishes after shutdown.
async fn connection<IO>(
    io: IO,
    peer: SocketAddr,
    config: &Listener,
    mut shutdown: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let app = config.app.clone();
    let on_request = activity.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
        req.extensions_mut().insert(ConnectInfo(PeerAddr(peer)));
        let busy = Busy::start(on_request.clone());
        let mut app = app.clone();
        async move {
            // The router is always ready; it answers every request (its error is Infallible).
            let response = tower_service::Service::call(&mut app, req).await;
            drop(busy);
            response
        }
    });
    let io = hyper_util::rt::TokioIo::new(Watched {
        inner: io,
        activity: activity.clone(),
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(listener = config.label, %peer, error = %e, "HTTP connection ended");
                }
                return;
            }
            why = activity.expired(config.timeouts) => {
                // Per connection and at debug: a peer opening many cannot flood the log.
                tracing::debug!(listener = config.label, %peer, reason = why, "HTTP connection closed: timed out");
                return;
            }
            _ = transport::stopped(&mut shutdown), if !stopping => {
                conn.as_mut().graceful_shutdown();
                stopping = true;
            }
        }
    }
}

/// Where a connection is between requests.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request's first byte since then.
    Idle(Instant),
    /// Reading a request's headers since its first byte.
    Headers(Instant),
    /// A request is being answered (a held gateway poll may take a minute).
    Busy,
}

/// A connection's phase, watched by [`Activity::expired`].
struct Activity {
    phase: Mutex<Phase>,
    changed: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            phase: Mutex::new(Phase::Idle(Instant::now())),
            changed: Notify::new(),
        }
    }

    fn set(&self, f: impl FnOnce(Phase) -> Option<Phase>) {
        let mut phase = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(next) = f(*phase) {
            *phase = next;
            drop(phase);
            self.changed.notify_one();
        }
    }

    /// Resolves with the reason once the connection has idled or read headers too long.
    async fn expired(&self, t: Timeouts) -> &'static str {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let phase = *self.phase.lock().unwrap_or_else(|p| p.into_inner());
            let (deadline, why) = match phase {
                Phase::Idle(since) => (since + t.idle, "idle"),
                Phase::Headers(since) => (since + t.header, "headers"),
                Phase::Busy => {
                    changed.await;
                    continue;
                }
            };
            if Instant::now() >= deadline {
                return why;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = changed => {}
            }
        }
    }
}

/// Marks a connection busy while a request is answered; idle again once dropped.
struct Busy(Arc<Activity>);

impl Busy {
    fn start(activity: Arc<Activity>) -> Busy {
        activity.set(|_| Some(Phase::Busy));
        Busy(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.set(|_| Some(Phase::Idle(Instant::now())));
    }
}

/// The connection's stream, noting a request's first byte.
struct Watched<IO> {
    inner: IO,
    activity: Arc<Activity>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.set(|p| match p {
                Phase::Idle(_) => Some(Phase::Headers(Instant::now())),
                _ => None,
            });
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
