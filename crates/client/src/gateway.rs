//! The HTTP gateway transport (§11): the client's byte stream carried in HTTP requests, with a
//! long poll always held for what the server sends. [`connect`] gives a stream that the
//! [`Client`](crate::Client) uses as it uses a TCP connection; a bridge task turns what the client
//! writes into sends and what responses carry into what the client reads.

use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::Mutex;

/// The gateway's path.
pub const PATH: &str = "/gateway/gateway.dll";

/// How a gateway connection behaves.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// `Lifespan` of each poll, in seconds (the server holds at most 60).
    pub lifespan_secs: u64,
    /// Sent as `MSPAuth` with `X-MSN-Auth: Use-Cookie`, for an `ATH` with `<web-compact-ticket/>`.
    pub cookie_token: Option<String>,
    /// Ask for `text/html` responses (`X-Requested-Session-Content-Type`).
    pub html: bool,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            lifespan_secs: 30,
            cookie_token: None,
            html: false,
        }
    }
}

/// Bytes the client may have written and not yet sent; one send carries at most this much.
const STREAM_BUFFER: usize = 256 * 1024;

/// How long one HTTP request may take beyond its poll's lifespan.
const REQUEST_SLACK: Duration = Duration::from_secs(30);

/// A stream over the gateway at `base` (like `http://127.0.0.1:8080`). Nothing is requested until
/// the client writes its first frames, which go in the open request (§11).
pub fn connect(http: reqwest::Client, base: &str, options: GatewayOptions) -> DuplexStream {
    let (client_end, bridge_end) = tokio::io::duplex(STREAM_BUFFER);
    let url = format!("{}{PATH}", base.trim_end_matches('/'));
    tokio::spawn(async move {
        if let Err(e) = bridge(http, url, options, bridge_end).await {
            tracing::debug!(error = %e, "gateway connection ended");
        }
    });
    client_end
}

struct Bridge {
    http: reqwest::Client,
    url: String,
    options: GatewayOptions,
    /// Where response bodies go (the client reads them).
    to_client: Mutex<WriteHalf<DuplexStream>>,
}

/// What one request came back with.
enum Answer {
    /// The session lives on; the body was passed to the client.
    Open(String),
    /// The server no longer knows the session (400): it has ended.
    Ended,
}

impl Bridge {
    async fn request(&self, query: &str, body: Vec<u8>, wait: Duration) -> anyhow::Result<Answer> {
        let mut req = self
            .http
            .post(format!("{}?{query}", self.url))
            .header("Content-Type", "application/x-msn-messenger")
            .header("X-MSN-GWCapabilities", "*")
            .timeout(wait + REQUEST_SLACK)
            .body(body);
        if self.options.html {
            req = req.header("X-Requested-Session-Content-Type", "text/html");
        }
        if let Some(token) = &self.options.cookie_token {
            req = req
                .header("X-MSN-Auth", "Use-Cookie")
                .header("Cookie", format!("MSPAuth={token}"));
        }
        let response = req.send().await.context("gateway request")?;
        let status = response.status();
        if status == reqwest::StatusCode::BAD_REQUEST {
            return Ok(Answer::Ended);
        }
        if !status.is_success() {
            bail!("gateway answered {status}");
        }
        let session = response
            .headers()
            .get("X-MSN-Messenger")
            .and_then(|v| v.to_str().ok())
            .and_then(session_id)
            .context("gateway response without X-MSN-Messenger SessionID")?;
        let body = response.bytes().await?;
        if !body.is_empty() {
            let mut w = self.to_client.lock().await;
            w.write_all(&body).await?;
            w.flush().await?;
        }
        Ok(Answer::Open(session))
    }
}

/// `SessionID=…` of an `X-MSN-Messenger` header.
pub fn session_id(header: &str) -> Option<String> {
    header
        .split(';')
        .filter_map(|part| part.trim().split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case("SessionID"))
        .map(|(_, v)| v.to_string())
}

async fn bridge(
    http: reqwest::Client,
    url: String,
    options: GatewayOptions,
    stream: DuplexStream,
) -> anyhow::Result<()> {
    let (mut from_client, to_client) = tokio::io::split(stream);
    let bridge = Bridge {
        http,
        url,
        options,
        to_client: Mutex::new(to_client),
    };
    let mut buf = vec![0u8; STREAM_BUFFER];
    let n = from_client.read(&mut buf).await?;
    if n == 0 {
        return Ok(());
    }
    let open = "Version=1&Protocol=mtp&Action=open&Server=NS&IP=none";
    let session = match bridge
        .request(open, buf[..n].to_vec(), Duration::ZERO)
        .await?
    {
        Answer::Open(id) => id,
        Answer::Ended => return end(&bridge).await,
    };
    // Sends and the held poll run side by side; whichever learns the session ended ends both.
    tokio::select! {
        r = sends(&bridge, &session, &mut from_client, &mut buf) => r?,
        r = polls(&bridge, &session) => r?,
    }
    end(&bridge).await
}

/// The client sees the stream end, as after a dropped TCP connection.
async fn end(bridge: &Bridge) -> anyhow::Result<()> {
    bridge.to_client.lock().await.shutdown().await?;
    Ok(())
}

async fn sends(
    bridge: &Bridge,
    session: &str,
    from_client: &mut ReadHalf<DuplexStream>,
    buf: &mut [u8],
) -> anyhow::Result<()> {
    let query = format!("SessionID={session}");
    loop {
        let n = from_client.read(buf).await?;
        if n == 0 {
            // The client dropped the connection: polls stop too, and the server times the
            // session out as it does a dropped TCP connection.
            return Ok(());
        }
        if let Answer::Ended = bridge
            .request(&query, buf[..n].to_vec(), Duration::ZERO)
            .await?
        {
            return Ok(());
        }
    }
}

async fn polls(bridge: &Bridge, session: &str) -> anyhow::Result<()> {
    let lifespan = bridge.options.lifespan_secs;
    let query = format!("Action=poll&SessionID={session}&Lifespan={lifespan}");
    loop {
        let wait = Duration::from_secs(lifespan);
        if let Answer::Ended = bridge.request(&query, Vec::new(), wait).await? {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_id_is_read_from_the_header() {
        assert_eq!(
            session_id("SessionID=870507030.2139024470; GW-IP=gw.example.org:443").as_deref(),
            Some("870507030.2139024470")
        );
        assert_eq!(session_id("GW-IP=x"), None);
    }
}
