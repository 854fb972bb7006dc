//! The async MSNP24 client library used by the CLI, the tests and the load generator: connect over
//! TCP, TLS or the HTTP gateway, log in over HTTP, run the pipelined handshake, send commands and await their replies
//! by TrID, and receive everything else as a stream of notifications.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use msnp24_proto::frame::decode;
use msnp24_proto::xml;
use msnp24_proto::{FormattedMessage, Frame, Headers, Limits, Payload};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};

pub mod conformance;
pub mod gateway;

/// The HTTP client crate the gateway transport takes a client of.
pub use reqwest;

/// How long `request` waits for a reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a bound connection goes without a `PNG` by default: real clients ping about every
/// 30–50 s, well inside the server's idle timeout (180 s by default, §0.9). A shorter `<wait>`
/// in the server's `PNG` reply shortens it.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(45);

type Writer = Box<dyn AsyncWrite + Send + Unpin>;

#[derive(Default)]
struct Shared {
    pending: HashMap<u64, oneshot::Sender<Frame>>,
    registration: Option<String>,
    violations: Vec<String>,
    /// The reader saw the end of the connection: no reply can arrive any more.
    closed: bool,
}

/// What the connection's own tasks (the reader, the keep-alive) share with the [`Client`].
struct Conn {
    writer: tokio::sync::Mutex<Writer>,
    shared: Arc<Mutex<Shared>>,
    next_trid: AtomicU64,
}

/// One MSNP connection.
pub struct Client {
    conn: Arc<Conn>,
    events: mpsc::UnboundedReceiver<Frame>,
    /// How often the keep-alive pings at most once bound; `None`: never.
    keepalive: Option<Duration>,
    keepalive_task: Option<tokio::task::JoinHandle<()>>,
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

/// A fresh random `Client-Message-ID` (a decimal number, as real clients send).
pub fn new_client_message_id() -> String {
    uuid::Uuid::new_v4().as_u64_pair().0.to_string()
}

/// A TLS connector trusting only the certificates in `ca_pem` (build once, connect many times).
pub fn tls_connector(ca_pem: &[u8]) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn tcp(addr: SocketAddr, local: Option<IpAddr>) -> anyhow::Result<TcpStream> {
    let stream = match local {
        None => TcpStream::connect(addr).await,
        Some(ip) => {
            let socket = if ip.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            // A bind to port 0 would make the kernel search for a free port at bind time, on
            // every connect (slow once thousands are open); this defers the choice to connect(),
            // which only needs the 4-tuple to be unique.
            #[cfg(target_os = "linux")]
            nix::sys::socket::setsockopt(
                &socket,
                nix::sys::socket::sockopt::IpBindAddressNoPort,
                &true,
            )?;
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await
        }
    }
    .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A fresh random epid in the 8-4-4-4-12 layout.
pub fn new_epid() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Client {
    /// Connects over plaintext TCP.
    pub async fn connect_tcp(addr: SocketAddr) -> anyhow::Result<Client> {
        Ok(Client::from_stream(tcp(addr, None).await?))
    }

    /// Connects over plaintext TCP from a given local address (load tests spread connections over
    /// several 127.0.0.x addresses, each good for about 28,000 ports).
    pub async fn connect_tcp_from(local: IpAddr, addr: SocketAddr) -> anyhow::Result<Client> {
        Ok(Client::from_stream(tcp(addr, Some(local)).await?))
    }

    /// Connects over the HTTP gateway at `base` (like `http://127.0.0.1:8080`), long polling
    /// (§11); every method works as over TCP.
    pub fn connect_gateway(base: &str) -> Client {
        Client::connect_gateway_with(
            reqwest::Client::new(),
            base,
            gateway::GatewayOptions::default(),
        )
    }

    /// Connects over the HTTP gateway with a prepared HTTP client (HTTPS trust, connection pool)
    /// and options.
    pub fn connect_gateway_with(
        http: reqwest::Client,
        base: &str,
        options: gateway::GatewayOptions,
    ) -> Client {
        Client::from_stream(gateway::connect(http, base, options))
    }

    /// Connects over TLS, trusting only the certificates in `ca_pem`.
    pub async fn connect_tls(
        addr: SocketAddr,
        server_name: &str,
        ca_pem: &[u8],
    ) -> anyhow::Result<Client> {
        let connector = tls_connector(ca_pem)?;
        Client::connect_tls_with(&connector, None, addr, server_name).await
    }

    /// Connects over TLS with a prepared connector, optionally from a given local address.
    pub async fn connect_tls_with(
        connector: &tokio_rustls::TlsConnector,
        local: Option<IpAddr>,
        addr: SocketAddr,
        server_name: &str,
    ) -> anyhow::Result<Client> {
        let stream = tcp(addr, local).await?;
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
            conn: Arc::new(Conn {
                writer: tokio::sync::Mutex::new(Box::new(writer)),
                shared,
                next_trid: AtomicU64::new(1),
            }),
            events,
            keepalive: Some(KEEPALIVE_INTERVAL),
            keepalive_task: None,
            epid: String::new(),
            account: String::new(),
        }
    }

    /// Sets the longest time between the keep-alive's `PNG`s once the connection is bound
    /// (default [`KEEPALIVE_INTERVAL`]; a shorter `<wait>` from the server wins), or turns the
    /// keep-alive off with `None`. Takes effect at the next successful `BND`.
    pub fn set_keepalive(&mut self, every: Option<Duration>) {
        self.keepalive = every;
    }

    /// Writes raw bytes (for tests of malformed input).
    pub async fn send_raw(&self, bytes: &[u8]) -> anyhow::Result<()> {
        self.conn.write(bytes).await
    }

    /// The next TrID this connection will use.
    pub fn next_trid(&self) -> u64 {
        self.conn.next_trid()
    }

    /// Sends a frame without waiting; returns a receiver for its reply.
    pub async fn send(
        &self,
        cmd: &str,
        target: &str,
        payload: Vec<u8>,
    ) -> anyhow::Result<(u64, oneshot::Receiver<Frame>)> {
        self.conn.send(cmd, target, payload).await
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
        self.conn.registration()
    }

    /// Every §0 rule a received frame broke.
    pub fn violations(&self) -> Vec<String> {
        lock(&self.conn.shared).violations.clone()
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
            lock(&self.conn.shared).pending.insert(trid, tx);
            Frame::new(cmd, trid, target, Payload::body(body).encode()).encode_into(&mut wire);
            receivers.push(rx);
        }
        self.send_raw(&wire).await?;
        let mut replies = Vec::new();
        for rx in receivers {
            replies.push(await_reply(rx).await?);
        }
        self.epid = epid.to_string();
        if replies[2].error_code().is_none() {
            self.start_keepalive();
        }
        replies
            .try_into()
            .map_err(|_| anyhow!("three replies expected"))
    }

    /// Pings in the background while the connection is bound, as real clients do, so a client
    /// that only listens is not signed out by the server's idle timeout (§0.9).
    fn start_keepalive(&mut self) {
        if let Some(task) = self.keepalive_task.take() {
            task.abort();
        }
        if let Some(every) = self.keepalive {
            self.keepalive_task = Some(tokio::spawn(keep_alive(self.conn.clone(), every)));
        }
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
        self.conn.ping().await
    }

    /// `OUT CON`: signs out; the server closes the connection.
    pub async fn sign_out(&self) -> anyhow::Result<()> {
        if let Some(task) = &self.keepalive_task {
            task.abort();
        }
        self.send_raw(&Frame::new("OUT", self.next_trid(), "CON", Vec::new()).to_bytes())
            .await
    }

    /// Ends the connection without `OUT`, as a client that loses its network does: the server
    /// sees the stream end.
    pub async fn drop_connection(&self) -> anyhow::Result<()> {
        if let Some(task) = &self.keepalive_task {
            task.abort();
        }
        let mut w = self.conn.writer.lock().await;
        w.shutdown().await?;
        Ok(())
    }

    /// Sends a text message with `SDG` and returns the reply (carrying `Message-ID`).
    pub async fn send_text(&self, to: &str, text: &str) -> anyhow::Result<Frame> {
        let cmid = new_client_message_id();
        self.send_message(to, "Text", text.as_bytes(), Some(&cmid))
            .await
    }

    /// The `SDG` payload of a message from this endpoint (`Messaging: 2.0`).
    pub fn message_payload(
        &self,
        to: &str,
        message_type: &str,
        body: &[u8],
        client_message_id: Option<&str>,
    ) -> Vec<u8> {
        let from = self.address();
        let mut m = FormattedMessage::new(to, &from, ("Messaging", "2.0"), body.to_vec());
        m.content.push("Message-Type", message_type);
        if let Some(cmid) = client_message_id {
            m.content.push("Client-Message-ID", cmid);
        }
        m.content.push("Content-Type", "text/plain; charset=UTF-8");
        let mut transport = Headers::new();
        if let Some(reg) = self.registration() {
            transport.push("Registration", reg);
        }
        m.to_payload(&transport)
    }

    /// Sends any message with `SDG` and returns the reply (carrying `Message-ID`).
    pub async fn send_message(
        &self,
        to: &str,
        message_type: &str,
        body: &[u8],
        client_message_id: Option<&str>,
    ) -> anyhow::Result<Frame> {
        let payload = self.message_payload(to, message_type, body, client_message_id);
        self.request("SDG", "MSGR", payload).await
    }

    /// Acknowledges a delivered message by its `Ack-Id` (`ACK MSGR`).
    pub async fn ack(&self, ack_id: &str) -> anyhow::Result<Frame> {
        let mut headers = Headers::new();
        if let Some(reg) = self.registration() {
            headers.push("Registration", reg);
        }
        headers.push("Ack-Id", ack_id);
        self.request(
            "ACK",
            "MSGR",
            Payload::with_headers(headers, Vec::new()).encode(),
        )
        .await
    }

    /// A `GET`/`PUT` whose success reply carries an XML body; error frames become errors.
    async fn xml_request(&self, cmd: &str, target: &str, body: String) -> anyhow::Result<Vec<u8>> {
        let reply = expect_ok(self.request(cmd, target, self.payload(body)).await?)?;
        Ok(reply
            .parse_payload()
            .map_err(|e| anyhow!("bad reply payload: {e}"))?
            .body)
    }

    /// `GET MSGR\RECENTCONVERSATIONS`: one page of recent conversations.
    pub async fn recent_conversations(
        &self,
        request: &xml::RecentConversations,
    ) -> anyhow::Result<xml::RecentConversationsResponse> {
        let body = self
            .xml_request("GET", "MSGR\\RECENTCONVERSATIONS", request.to_xml())
            .await?;
        Ok(xml::RecentConversationsResponse::parse(&body)?)
    }

    /// `GET MSGR\MESSAGESBYCONVERSATION`: one page of a conversation's history, newest first.
    pub async fn messages_by_conversation(
        &self,
        request: &xml::MessagesByConversation,
    ) -> anyhow::Result<xml::MessagesByConversationResponse> {
        let body = self
            .xml_request("GET", "MSGR\\MESSAGESBYCONVERSATION", request.to_xml())
            .await?;
        Ok(xml::MessagesByConversationResponse::parse(&body)?)
    }

    /// A conversation's whole history (from `start` ms), newest first, following
    /// `messagessyncstate` until `hasmore` is false.
    pub async fn history(
        &self,
        id: &str,
        start: Option<u64>,
        pagesize: u32,
    ) -> anyhow::Result<Vec<xml::HistoryMessage>> {
        let mut request = xml::MessagesByConversation {
            id: id.to_string(),
            start,
            pagesize: Some(pagesize),
            messagessyncstate: None,
        };
        let mut all = Vec::new();
        loop {
            let page = self.messages_by_conversation(&request).await?;
            all.extend(page.messages);
            match (page.hasmore, page.messagessyncstate) {
                (true, Some(state)) => request.messagessyncstate = Some(state),
                (true, None) => bail!("hasmore without a messagessyncstate"),
                (false, _) => return Ok(all),
            }
        }
    }

    /// `GET MSGR\CONVERSATIONS` for these ids.
    pub async fn conversations(&self, ids: &[&str]) -> anyhow::Result<xml::ConversationsResponse> {
        let query = xml::ConversationsQuery {
            ids: ids.iter().map(|s| s.to_string()).collect(),
        };
        let body = self
            .xml_request("GET", "MSGR\\CONVERSATIONS", query.to_xml())
            .await?;
        Ok(xml::ConversationsResponse::parse(&body)?)
    }

    /// `PUT MSGR\CONVERSATION`: sets properties of a conversation (e.g. `consumptionhorizon`).
    pub async fn set_conversation_properties(
        &self,
        id: &str,
        properties: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let put = xml::ConversationPut {
            id: id.to_string(),
            properties: properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        self.xml_request("PUT", "MSGR\\CONVERSATION", put.to_xml())
            .await?;
        Ok(())
    }

    /// Sends `PUT` or `DEL` `MSGR\THREAD` with this body and returns the reply (maybe an error frame).
    pub async fn thread_request(
        &self,
        cmd: &str,
        thread: &xml::thread::Thread,
    ) -> anyhow::Result<Frame> {
        self.request(cmd, "MSGR\\THREAD", self.payload(thread.to_xml()))
            .await
    }

    /// `PUT MSGR\THREAD` that must succeed; returns the thread id of the reply.
    async fn thread_ok(&self, cmd: &str, thread: xml::thread::Thread) -> anyhow::Result<String> {
        let reply = expect_ok(self.thread_request(cmd, &thread).await?)?;
        let body = reply
            .parse_payload()
            .map_err(|e| anyhow!("bad reply payload: {e}"))?
            .body;
        Ok(xml::thread::Thread::parse(&body)?.id)
    }

    /// Creates a group chat with these members (names or addresses; this account is its admin)
    /// and optionally a topic; returns its id (`19:…@thread.skype`).
    pub async fn create_thread(
        &self,
        members: &[&str],
        topic: Option<&str>,
    ) -> anyhow::Result<String> {
        let mut list = vec![xml::thread::Member {
            mri: format!("8:{}", self.account),
            role: Some("admin".into()),
        }];
        list.extend(members.iter().map(|m| xml::thread::Member {
            mri: mri_of(m),
            role: Some("user".into()),
        }));
        self.thread_ok(
            "PUT",
            xml::thread::Thread {
                members: list,
                topic: topic.map(str::to_string),
                ..Default::default()
            },
        )
        .await
    }

    /// Adds members to a thread, or changes their role: `(name or address, "admin" | "user")`.
    pub async fn add_thread_members(
        &self,
        thread: &str,
        members: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let members = members
            .iter()
            .map(|(m, role)| xml::thread::Member {
                mri: mri_of(m),
                role: Some(role.to_string()),
            })
            .collect();
        self.thread_ok(
            "PUT",
            xml::thread::Thread {
                id: thread.to_string(),
                members,
                ..Default::default()
            },
        )
        .await
        .map(drop)
    }

    /// Sets a thread's topic.
    pub async fn set_thread_topic(&self, thread: &str, topic: &str) -> anyhow::Result<()> {
        self.thread_ok(
            "PUT",
            xml::thread::Thread {
                id: thread.to_string(),
                topic: Some(topic.to_string()),
                ..Default::default()
            },
        )
        .await
        .map(drop)
    }

    /// Removes members from a thread (`DEL MSGR\THREAD`); naming oneself leaves it.
    pub async fn remove_thread_members(
        &self,
        thread: &str,
        members: &[&str],
    ) -> anyhow::Result<()> {
        let members = members
            .iter()
            .map(|m| xml::thread::Member {
                mri: mri_of(m),
                role: None,
            })
            .collect();
        self.thread_ok(
            "DEL",
            xml::thread::Thread {
                id: thread.to_string(),
                members,
                ..Default::default()
            },
        )
        .await
        .map(drop)
    }

    /// Leaves a thread.
    pub async fn leave_thread(&self, thread: &str) -> anyhow::Result<()> {
        let me = self.account.clone();
        self.remove_thread_members(thread, &[me.as_str()]).await
    }

    /// `GET MSGR\THREADS`: the full description of each of these threads this account is in.
    pub async fn threads(&self, ids: &[&str]) -> anyhow::Result<xml::thread::ThreadsResponse> {
        let query = xml::thread::ThreadsQuery {
            ids: ids.iter().map(|s| s.to_string()).collect(),
        };
        let body = self
            .xml_request("GET", "MSGR\\THREADS", query.to_xml())
            .await?;
        Ok(xml::thread::ThreadsResponse::parse(&body)?)
    }

    /// This endpoint's address, `8:name;epid={…}`.
    pub fn address(&self) -> String {
        format!(
            "8:{};epid={{{}}}",
            self.account,
            self.epid.trim_matches(|c| c == '{' || c == '}')
        )
    }

    /// Sends a `PUT`/`DEL` of `MSGR\CONTACTS` naming `names` (Skype names) with these list bits
    /// (1 forward, 2 allow, 4 block, 8 pending); fails on an error reply.
    pub async fn contacts(&self, cmd: &str, bits: u32, names: &[&str]) -> anyhow::Result<Frame> {
        let ml = xml::contacts::ContactList {
            list_bits: bits,
            contacts: names
                .iter()
                .map(|n| xml::contacts::ContactEntry {
                    name: n.to_string(),
                    network: 8,
                    bits,
                    services: Vec::new(),
                })
                .collect(),
        };
        expect_ok(
            self.request(cmd, "MSGR\\CONTACTS", self.payload(ml.to_xml()))
                .await?,
        )
    }

    /// Adds a contact the way real clients do (`<ml l="1">` with `<s l="3">` services: watch and
    /// allow); asks them when they have not allowed us yet.
    pub async fn add_contact(&self, name: &str) -> anyhow::Result<Frame> {
        let ml = xml::contacts::ContactList {
            list_bits: 1,
            contacts: vec![xml::contacts::ContactEntry {
                name: name.to_string(),
                network: 8,
                bits: 3,
                services: vec![("IM".into(), 3), ("SKP".into(), 3)],
            }],
        };
        expect_ok(
            self.request("PUT", "MSGR\\CONTACTS", self.payload(ml.to_xml()))
                .await?,
        )
    }

    /// Accepts a contact request (allow them, and watch them back).
    pub async fn allow_contact(&self, name: &str) -> anyhow::Result<Frame> {
        self.contacts("PUT", 3, &[name]).await
    }

    /// Declines a contact request (clears the pending bit).
    pub async fn decline_contact(&self, name: &str) -> anyhow::Result<Frame> {
        self.contacts("DEL", 8, &[name]).await
    }

    /// Blocks an account: no presence or messages either way.
    pub async fn block_contact(&self, name: &str) -> anyhow::Result<Frame> {
        self.contacts("PUT", 4, &[name]).await
    }

    /// Lifts a block.
    pub async fn unblock_contact(&self, name: &str) -> anyhow::Result<Frame> {
        self.contacts("DEL", 4, &[name]).await
    }

    /// Removes a contact (stops watching and allowing them).
    pub async fn remove_contact(&self, name: &str) -> anyhow::Result<Frame> {
        self.contacts("DEL", 3, &[name]).await
    }

    /// Publishes a presence document with `PUT MSGR\PRESENCE` (§4.3).
    pub async fn publish(&self, doc: &xml::presence_doc::UserDoc) -> anyhow::Result<Frame> {
        let mut m = FormattedMessage::new(
            &format!("8:{}", self.account),
            &self.address(),
            ("Publication", "1.0"),
            doc.to_xml().into_bytes(),
        );
        m.content.push("Uri", "/user");
        m.content.push("Content-Type", "application/user+xml");
        let mut transport = Headers::new();
        if let Some(reg) = self.registration() {
            transport.push("Registration", reg);
        }
        expect_ok(
            self.request("PUT", "MSGR\\PRESENCE", m.to_payload(&transport))
                .await?,
        )
    }

    /// Publishes a status (`NLN`, `AWY`, `BSY`, `HDN`…) and optionally a mood, with this
    /// endpoint's `<sep>` as real clients send it.
    pub async fn set_presence(&self, status: &str, mood: Option<&str>) -> anyhow::Result<Frame> {
        use xml::presence_doc::{EndpointDoc, ServiceDoc, UserDoc};
        let mut doc = UserDoc::default();
        let mut im = ServiceDoc::new("IM");
        im.set_field_text("Status", status);
        doc.services.push(im);
        if let Some(mood) = mood {
            let mut skp = ServiceDoc::new("SKP");
            skp.set_field_text("Mood", mood);
            doc.services.push(skp);
        }
        let epid = format!("{{{}}}", self.epid.trim_matches(|c| c == '{' || c == '}'));
        let mut sep = EndpointDoc::new("IM", epid);
        sep.set_field("Capabilities", "0:4194560");
        doc.endpoints.push(sep);
        self.publish(&doc).await
    }

    /// `PUT MSGR\ACTIVEENDPOINT`: active for `timeout` seconds, idle now with 0 (§4.5).
    pub async fn set_active(&self, timeout: u64) -> anyhow::Result<Frame> {
        let body = xml::endpoint::ActiveEndpoint { timeout }.to_xml();
        expect_ok(
            self.request("PUT", "MSGR\\ACTIVEENDPOINT", self.payload(body))
                .await?,
        )
    }

    /// `GET MSGR\PRESENCE` for these addresses (`8:bob`…).
    pub async fn get_presence(
        &self,
        contacts: &[&str],
    ) -> anyhow::Result<xml::presence_query::PresenceResponse> {
        let q = xml::presence_query::PresenceQuery {
            contacts: contacts.iter().map(|c| c.to_string()).collect(),
        };
        let reply = expect_ok(
            self.request("GET", "MSGR\\PRESENCE", self.payload(q.to_xml()))
                .await?,
        )?;
        let body = reply.parse_payload()?.body;
        Ok(xml::presence_query::PresenceResponse::parse(&body)?)
    }

    /// `GET MSGR\IMONLINE`: this account's online endpoints.
    pub async fn imonline(&self) -> anyhow::Result<xml::endpoint::ImOnlineResponse> {
        let reply = expect_ok(
            self.request("GET", "MSGR\\IMONLINE", self.payload(Vec::new()))
                .await?,
        )?;
        let body = reply.parse_payload()?.body;
        Ok(xml::endpoint::ImOnlineResponse::parse(&body)?)
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

impl Drop for Client {
    fn drop(&mut self) {
        // The keep-alive holds the writer; without this a dropped client's connection would stay
        // open, pinging, for as long as the runtime lives.
        if let Some(task) = self.keepalive_task.take() {
            task.abort();
        }
    }
}

impl Conn {
    fn next_trid(&self) -> u64 {
        self.next_trid.fetch_add(1, Ordering::Relaxed)
    }

    fn registration(&self) -> Option<String> {
        lock(&self.shared).registration.clone()
    }

    async fn write(&self, bytes: &[u8]) -> anyhow::Result<()> {
        let mut w = self.writer.lock().await;
        w.write_all(bytes).await?;
        w.flush().await?;
        Ok(())
    }

    async fn send(
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
        self.write(&Frame::new(cmd, trid, target, payload).to_bytes())
            .await?;
        Ok((trid, rx))
    }

    async fn ping(&self) -> anyhow::Result<Frame> {
        let mut headers = Headers::new();
        if let Some(reg) = self.registration() {
            headers.push("Registration", reg);
        }
        let (_, rx) = self
            .send(
                "PNG",
                "CON",
                Payload::with_headers(headers, Vec::new()).encode(),
            )
            .await?;
        await_reply(rx).await
    }
}

/// The keep-alive: a `PNG` at most every `every`, sooner when the server's `<wait>` says so;
/// ends when the connection does.
async fn keep_alive(conn: Arc<Conn>, every: Duration) {
    let mut delay = every;
    loop {
        tokio::time::sleep(delay).await;
        let Ok(reply) = conn.ping().await else {
            return;
        };
        let wait = reply
            .parse_payload()
            .ok()
            .and_then(|p| xml::Wait::parse(&p.body).ok())
            .map(|w| Duration::from_secs(u64::from(w.seconds)));
        // A `<wait>` of 0 would make this spin; a ping a second is the most it asks for.
        delay = wait.map_or(every, |w| w.max(Duration::from_secs(1)).min(every));
    }
}

/// What a frame the server sent on its own means, for programs that watch what arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `NFY MSGR\PUT`: an account's whole presence document.
    Presence {
        /// The account, `8:name`.
        account: String,
        /// Its aggregate status.
        status: String,
        /// Its mood, if any.
        mood: Option<String>,
        /// How many endpoints it shows.
        endpoints: usize,
    },
    /// `NFY MSGR\DEL`: the account is offline.
    Offline {
        /// The account, `8:name`.
        account: String,
    },
    /// `NFY MSGR\CONTACTS` with pending bits: these accounts ask to add us.
    ContactRequests {
        /// Their names.
        from: Vec<String>,
    },
    /// `SDG`: a message.
    Message {
        /// Sender address.
        from: String,
        /// `Message-Type`.
        kind: String,
        /// The body.
        text: String,
    },
    /// `OUT`: the server ends the connection.
    SignedOut {
        /// The reason, if given.
        reason: Option<String>,
    },
    /// Anything else.
    Other(Frame),
}

impl Event {
    /// Reads a frame; frames that do not parse as what they claim to be are `Other`.
    pub fn from_frame(frame: &Frame) -> Event {
        Self::parse(frame).unwrap_or_else(|| Event::Other(frame.clone()))
    }

    fn parse(frame: &Frame) -> Option<Event> {
        let account_of = |m: &FormattedMessage| {
            msnp24_proto::Mri::parse(m.from()?)
                .ok()
                .map(|a| a.without_epid().to_string())
        };
        match (frame.cmd.as_str(), frame.target.as_str()) {
            ("NFY", "MSGR\\PUT") => {
                let (_, m) = FormattedMessage::parse_payload(&frame.payload).ok()?;
                let doc = xml::presence_doc::UserDoc::parse(&m.body).ok()?;
                Some(Event::Presence {
                    account: account_of(&m)?,
                    status: doc.status()?.to_string(),
                    mood: doc.mood(),
                    endpoints: doc.endpoints.iter().filter(|e| e.name == "IM").count(),
                })
            }
            ("NFY", "MSGR\\DEL") => {
                let (_, m) = FormattedMessage::parse_payload(&frame.payload).ok()?;
                Some(Event::Offline {
                    account: account_of(&m)?,
                })
            }
            ("NFY", "MSGR\\CONTACTS") => {
                let body = frame.parse_payload().ok()?.body;
                let ml = xml::contacts::ContactList::parse(&body).ok()?;
                Some(Event::ContactRequests {
                    from: ml
                        .contacts
                        .into_iter()
                        .filter(|c| c.bits & 8 != 0)
                        .map(|c| c.name)
                        .collect(),
                })
            }
            ("SDG", _) => {
                let (_, m) = FormattedMessage::parse_payload(&frame.payload).ok()?;
                Some(Event::Message {
                    from: m.from()?.to_string(),
                    kind: m.message_type().unwrap_or("Text").to_string(),
                    text: m.body_lossy(),
                })
            }
            ("OUT", _) => {
                let body = frame.parse_payload().ok()?.body;
                Some(Event::SignedOut {
                    reason: xml::misc::Out::parse(&body).ok().and_then(|o| o.reason),
                })
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Presence {
                account,
                status,
                mood,
                endpoints,
            } => {
                write!(f, "presence {account}: {status}")?;
                if let Some(m) = mood {
                    write!(f, " \"{m}\"")?;
                }
                write!(f, " ({endpoints} endpoint(s))")
            }
            Event::Offline { account } => write!(f, "presence {account}: offline"),
            Event::ContactRequests { from } => {
                write!(f, "contact request from {}", from.join(", "))
            }
            Event::Message { from, kind, text } => write!(f, "[{kind}] {from}: {text}"),
            Event::SignedOut { reason } => {
                write!(
                    f,
                    "signed out by the server ({})",
                    reason.as_deref().unwrap_or("no reason")
                )
            }
            Event::Other(frame) => write!(
                f,
                "{} {} {}\n{}",
                frame.cmd,
                frame.trid,
                frame.target,
                frame.payload_lossy().trim_end()
            ),
        }
    }
}

/// An address from a name (`bob` → `8:bob`); addresses are kept as they are.
pub fn mri_of(name: &str) -> String {
    if name.contains(':') && !name.starts_with("live:") {
        name.to_string()
    } else {
        format!("8:{}", name.to_ascii_lowercase())
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

/// The server's `Message-ID` in a successful `SDG` reply.
pub fn reply_message_id(reply: &Frame) -> anyhow::Result<u64> {
    let payload = Payload::parse(&reply.payload).map_err(|e| anyhow!("bad reply payload: {e}"))?;
    payload
        .headers
        .get("Message-ID")
        .ok_or_else(|| anyhow!("no Message-ID in the reply"))?
        .parse()
        .map_err(|e| anyhow!("bad Message-ID: {e}"))
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
