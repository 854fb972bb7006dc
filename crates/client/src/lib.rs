//! The async MSNP24 client library used by the CLI, the tests and the load generator: connect over
//! TCP or TLS, log in over HTTP, run the pipelined handshake, send commands and await their replies
//! by TrID, and receive everything else as a stream of notifications.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use msnp24_proto::frame::decode;
use msnp24_proto::xml;
use msnp24_proto::{FormattedMessage, Frame, Headers, Limits, Payload};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

pub mod conformance;

/// How long `request` waits for a reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

type Writer = Box<dyn AsyncWrite + Send + Unpin>;

#[derive(Default)]
struct Shared {
    pending: HashMap<u64, oneshot::Sender<Frame>>,
    registration: Option<String>,
    violations: Vec<String>,
    /// The reader saw the end of the connection: no reply can arrive any more.
    closed: bool,
}

/// One MSNP connection.
pub struct Client {
    writer: tokio::sync::Mutex<Writer>,
    shared: Arc<Mutex<Shared>>,
    next_trid: AtomicU64,
    events: mpsc::UnboundedReceiver<Frame>,
    /// This endpoint's id, set by [`Client::login`].
    pub epid: String,
    /// The account name, set by [`Client::login`] from the caller.
    pub account: String,
}

/// The token `POST /login` returns.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct LoginToken {
    /// Goes into `ATH`.
    pub token: String,
    /// Expiry, unix seconds.
    pub expires_at: i64,
}

/// Logs in over HTTP (`base` like `http://127.0.0.1:8080`).
pub async fn http_login(base: &str, username: &str, password: &str) -> anyhow::Result<LoginToken> {
    let response = reqwest::Client::new()
        .post(format!("{}/login", base.trim_end_matches('/')))
        .json(&serde_json::json!({"username": username, "password": password}))
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("login refused ({status}): {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("unexpected login answer: {text}"))
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fresh random epid in the 8-4-4-4-12 layout.
pub fn new_epid() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Client {
    /// Connects over plaintext TCP.
    pub async fn connect_tcp(addr: SocketAddr) -> anyhow::Result<Client> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Client::from_stream(stream))
    }

    /// Connects over TLS, trusting only the certificates in `ca_pem`.
    pub async fn connect_tls(
        addr: SocketAddr,
        server_name: &str,
        ca_pem: &[u8],
    ) -> anyhow::Result<Client> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())?;
        let tls = connector
            .connect(name, stream)
            .await
            .context("TLS handshake")?;
        Ok(Client::from_stream(tls))
    }

    /// Wraps any byte stream.
    pub fn from_stream<S>(stream: S) -> Client
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (reader, writer) = tokio::io::split(stream);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (events_tx, events) = mpsc::unbounded_channel();
        tokio::spawn(read_loop(reader, shared.clone(), events_tx));
        Client {
            writer: tokio::sync::Mutex::new(Box::new(writer)),
            shared,
            next_trid: AtomicU64::new(1),
            events,
            epid: String::new(),
            account: String::new(),
        }
    }

    /// Writes raw bytes (for tests of malformed input).
    pub async fn send_raw(&self, bytes: &[u8]) -> anyhow::Result<()> {
        let mut w = self.writer.lock().await;
        w.write_all(bytes).await?;
        w.flush().await?;
        Ok(())
    }

    /// The next TrID this connection will use.
    pub fn next_trid(&self) -> u64 {
        self.next_trid.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a frame without waiting; returns a receiver for its reply.
    pub async fn send(
        &self,
        cmd: &str,
        target: &str,
        payload: Vec<u8>,
    ) -> anyhow::Result<(u64, oneshot::Receiver<Frame>)> {
        let trid = self.next_trid();
        let (tx, rx) = oneshot::channel();
        {
            // Checked under the same lock the reader takes when it ends, so a request sent just
            // after the close fails now instead of waiting out REPLY_TIMEOUT.
            let mut shared = lock(&self.shared);
            if shared.closed {
                bail!("connection closed");
            }
            shared.pending.insert(trid, tx);
        }
        self.send_raw(&Frame::new(cmd, trid, target, payload).to_bytes())
            .await?;
        Ok((trid, rx))
    }

    /// Sends a frame and waits for the frame answering its TrID (which may be an error frame).
    pub async fn request(
        &self,
        cmd: &str,
        target: &str,
        payload: Vec<u8>,
    ) -> anyhow::Result<Frame> {
        let (_, rx) = self.send(cmd, target, payload).await?;
        await_reply(rx).await
    }

    /// A payload with the current `Registration` header (if any) and this body.
    pub fn payload(&self, body: impl Into<Vec<u8>>) -> Vec<u8> {
        let mut headers = Headers::new();
        if let Some(reg) = self.registration() {
            headers.push("Registration", reg);
        }
        Payload::with_headers(headers, body).encode()
    }

    /// The last `Set-Registration` the server sent.
    pub fn registration(&self) -> Option<String> {
        lock(&self.shared).registration.clone()
    }

    /// Every §0 rule a received frame broke.
    pub fn violations(&self) -> Vec<String> {
        lock(&self.shared).violations.clone()
    }

    /// Runs CNT, ATH and BND pipelined (written in one go) and returns their three replies.
    pub async fn handshake(
        &mut self,
        token: &str,
        epid: &str,
        ver: u32,
    ) -> anyhow::Result<[Frame; 3]> {
        let cnt = xml::connect::Connect {
            ver: 2,
            agent: vec![
                ("os".into(), "linux".into()),
                ("lcid".into(), "en-us".into()),
            ],
        };
        let ath = xml::auth::AuthUser {
            ssl_compact_ticket: Some(format!("t={token}")),
            uic: Some("null".into()),
            ..Default::default()
        };
        let bnd = xml::bind::Msgr {
            ver,
            alt_versions: Vec::new(),
            client: Some(xml::bind::ClientInfo {
                name: "msnp24-client".into(),
                ver: env!("CARGO_PKG_VERSION").into(),
                networks: "skype".into(),
            }),
            epid: epid.to_string(),
        };
        let mut wire = Vec::new();
        let mut receivers = Vec::new();
        for (cmd, target, body) in [
            ("CNT", "CON", cnt.to_xml()),
            ("ATH", "CON\\USER", ath.to_xml()),
            ("BND", "CON\\MSGR", bnd.to_xml()),
        ] {
            let trid = self.next_trid();
            let (tx, rx) = oneshot::channel();
            lock(&self.shared).pending.insert(trid, tx);
            Frame::new(cmd, trid, target, Payload::body(body).encode()).encode_into(&mut wire);
            receivers.push(rx);
        }
        self.send_raw(&wire).await?;
        let mut replies = Vec::new();
        for rx in receivers {
            replies.push(await_reply(rx).await?);
        }
        self.epid = epid.to_string();
        replies
            .try_into()
            .map_err(|_| anyhow!("three replies expected"))
    }

    /// Handshake that must succeed, then a messaging subscription.
    pub async fn login(&mut self, account: &str, token: &str, epid: &str) -> anyhow::Result<()> {
        let replies = self.handshake(token, epid, 2).await?;
        for r in &replies {
            if let Some(code) = r.error_code() {
                bail!(
                    "{} refused with {code}: {}",
                    r.cmd,
                    r.payload_lossy().trim()
                );
            }
        }
        self.account = account.to_string();
        let sub = xml::subscribe::Subscribe {
            messaging: true,
            presence: true,
            ..Default::default()
        };
        expect_ok(
            self.request("PUT", "MSGR\\SUBSCRIPTIONS", self.payload(sub.to_xml()))
                .await?,
        )?;
        Ok(())
    }

    /// `PNG CON`.
    pub async fn ping(&self) -> anyhow::Result<Frame> {
        self.request("PNG", "CON", self.payload(Vec::new())).await
    }

    /// `OUT CON`: signs out; the server closes the connection.
    pub async fn sign_out(&self) -> anyhow::Result<()> {
        self.send_raw(&Frame::new("OUT", self.next_trid(), "CON", Vec::new()).to_bytes())
            .await
    }

    /// Sends a text message with `SDG` and returns the reply (carrying `Message-ID`).
    pub async fn send_text(&self, to: &str, text: &str) -> anyhow::Result<Frame> {
        let from = format!(
            "8:{};epid={{{}}}",
            self.account,
            self.epid.trim_matches(|c| c == '{' || c == '}')
        );
        let mut m =
            FormattedMessage::new(to, &from, ("Messaging", "2.0"), text.as_bytes().to_vec());
        m.content.push("Message-Type", "Text");
        m.content.push(
            "Client-Message-ID",
            uuid::Uuid::new_v4().as_u64_pair().0.to_string(),
        );
        m.content.push("Content-Type", "text/plain; charset=UTF-8");
        let mut transport = Headers::new();
        if let Some(reg) = self.registration() {
            transport.push("Registration", reg);
        }
        self.request("SDG", "MSGR", m.to_payload(&transport)).await
    }

    /// The next frame the server sent on its own, or `None` once the connection is closed.
    pub async fn next_event(&mut self) -> Option<Frame> {
        self.events.recv().await
    }

    /// Like [`Client::next_event`], giving up after `wait`.
    pub async fn next_event_timeout(&mut self, wait: Duration) -> anyhow::Result<Option<Frame>> {
        tokio::time::timeout(wait, self.events.recv())
            .await
            .map_err(|_| anyhow!("no frame from the server within {wait:?}"))
    }

    /// Waits for the next event that satisfies `pred`, skipping others.
    pub async fn wait_for(
        &mut self,
        wait: Duration,
        pred: impl Fn(&Frame) -> bool,
    ) -> anyhow::Result<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event_timeout(left).await? {
                Some(f) if pred(&f) => return Ok(f),
                Some(_) => continue,
                None => bail!("connection closed while waiting"),
            }
        }
    }
}

/// Fails if `frame` is an error frame.
pub fn expect_ok(frame: Frame) -> anyhow::Result<Frame> {
    match frame.error_code() {
        Some(code) => bail!(
            "{} {} refused with {code}: {}",
            frame.trid,
            frame.target,
            frame.payload_lossy().trim()
        ),
        None => Ok(frame),
    }
}

async fn await_reply(rx: oneshot::Receiver<Frame>) -> anyhow::Result<Frame> {
    match tokio::time::timeout(REPLY_TIMEOUT, rx).await {
        Ok(Ok(frame)) => Ok(frame),
        Ok(Err(_)) => bail!("connection closed before the reply"),
        Err(_) => bail!("no reply within {REPLY_TIMEOUT:?}"),
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut reader: R,
    shared: Arc<Mutex<Shared>>,
    events: mpsc::UnboundedSender<Frame>,
) {
    let limits = Limits {
        max_payload: 64 * 1024 * 1024,
        max_line: 1024,
    };
    let mut buf = bytes::BytesMut::with_capacity(4096);
    loop {
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            match decode(&buf, &limits) {
                Ok(Some((frame, used))) => {
                    bytes::Buf::advance(&mut buf, used);
                    let mut s = lock(&shared);
                    if let Err(v) = conformance::check_frame(&frame) {
                        s.violations.push(format!(
                            "{v} (frame {} {} {})",
                            frame.cmd, frame.trid, frame.target
                        ));
                    }
                    if let Ok(p) = frame.parse_payload() {
                        if let Some(reg) = p.headers.get("Set-Registration") {
                            s.registration = Some(reg.to_string());
                        }
                    }
                    let waiter = if frame.trid != 0 {
                        s.pending.remove(&frame.trid)
                    } else {
                        None
                    };
                    drop(s);
                    match waiter {
                        Some(tx) => {
                            let _ = tx.send(frame);
                        }
                        None => {
                            let _ = events.send(frame);
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    lock(&shared)
                        .violations
                        .push(format!("undecodable frame from server: {e}"));
                    return;
                }
            }
        }
    }
    let mut s = lock(&shared);
    s.closed = true;
    s.pending.clear();
}
