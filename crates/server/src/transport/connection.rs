//! The seam between a transport and the connection loop: a [`Connection`] yields the peer's
//! frames and accepts batches of encoded frames, so TCP, TLS and the HTTP gateway share
//! everything above it.

use std::future::Future;

use bytes::{Buf, BytesMut};
use msnp24_proto::frame::decode;
use msnp24_proto::{Frame, FrameError, Limits};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// One peer's frames in, encoded frames out.
pub trait Connection: Send {
    /// The next whole frame from the peer, waiting for it; `Ok(None)` when the peer went away
    /// (end of stream, socket error, gateway session timeout). An unreadable frame is an error,
    /// after which nothing more can be read. Cancel-safe: bytes already read stay buffered.
    fn read_frame(&mut self) -> impl Future<Output = Result<Option<Frame>, FrameError>> + Send;

    /// A whole frame already received, if any, without waiting: pipelined frames are handled
    /// together and answered in one batch.
    fn buffered_frame(&mut self) -> Result<Option<Frame>, FrameError>;

    /// Hands one batch of whole encoded frames to the peer, waiting while it cannot take them.
    fn write_batch(&mut self, bytes: &[u8]) -> impl Future<Output = std::io::Result<()>> + Send;

    /// Ends the outbound side after the last batch.
    fn close(&mut self) -> impl Future<Output = ()> + Send;

    /// The login token of the request that carried the current frames, when the transport
    /// authenticates by cookie (the gateway's `X-MSN-Auth: Use-Cookie`, §11).
    fn cookie_token(&self) -> Option<String> {
        None
    }

    /// Which transport this is (logs, metrics).
    fn transport(&self) -> super::Transport;
}

/// Reads start small: an idle connection should cost a few KiB, not a large default buffer.
const INITIAL_READ_BUFFER: usize = 512;

/// A buffer above which, once drained, the memory is given back.
const SHRINK_ABOVE: usize = 16 * 1024;

/// Bytes received but not yet decoded, and the frames they hold.
#[derive(Debug)]
pub struct FrameBuffer {
    buf: BytesMut,
    limits: Limits,
}

impl FrameBuffer {
    /// An empty buffer decoding within `limits`.
    pub fn new(limits: Limits) -> FrameBuffer {
        FrameBuffer {
            buf: BytesMut::with_capacity(INITIAL_READ_BUFFER),
            limits,
        }
    }

    /// The next whole frame in the buffer, removing it.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let Some((frame, used)) = decode(&self.buf, &self.limits)? else {
            return Ok(None);
        };
        self.buf.advance(used);
        // A large frame grew the buffer; give the memory back once it is drained.
        if self.buf.is_empty() && self.buf.capacity() > SHRINK_ABOVE {
            self.buf = BytesMut::with_capacity(INITIAL_READ_BUFFER);
        }
        Ok(Some(frame))
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The buffer to read into.
    fn buf_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }
}

/// A byte stream (plaintext TCP or TLS) as a [`Connection`].
pub struct StreamConnection<S> {
    stream: S,
    frames: FrameBuffer,
    transport: super::Transport,
}

impl<S> StreamConnection<S> {
    /// Wraps `stream` (plaintext TCP or TLS, as `transport` says), decoding within `limits`.
    pub fn new(stream: S, limits: Limits, transport: super::Transport) -> StreamConnection<S> {
        StreamConnection {
            stream,
            frames: FrameBuffer::new(limits),
            transport,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection for StreamConnection<S> {
    async fn read_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            if let Some(frame) = self.frames.next_frame()? {
                return Ok(Some(frame));
            }
            match self.stream.read_buf(self.frames.buf_mut()).await {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "read failed");
                    return Ok(None);
                }
            }
        }
    }

    fn buffered_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        self.frames.next_frame()
    }

    async fn write_batch(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    async fn close(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    fn transport(&self) -> super::Transport {
        self.transport
    }
}
