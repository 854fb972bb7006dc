//! The local control socket: `control.sock` in the data directory (mode 0600 in a 0700
//! directory, so only the server's own user reaches it). `msnp24 user passwd` and `user remove`
//! change storage themselves, then ask the running server through it to end the account's live
//! sessions (`Router::kick`, which reaches every node of a cluster).
//!
//! `msnp24 admin sessions` and `admin kick` use it too, to list and end endpoints.
//!
//! One request line per connection: `kick <account> [<epid>] <reason>` answered by
//! `ok <endpoints ended>`; `sessions [<account>]` answered by `ok <n>` and `n` lines of one
//! [`SessionRow`] in JSON each. Anything refused is answered by `error <why>`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use msnp24_proto::{AccountName, Epid};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

use crate::routing::{KickReason, ListedEndpoint};
use crate::state::AppState;
use crate::transport::stopped;

/// The socket's name in the data directory.
pub const SOCKET_NAME: &str = "control.sock";

/// Longest request line read.
const MAX_LINE: u64 = 1024;

/// Longest row line of a `sessions` answer read (a row holds a BND client name and version,
/// which a frame bounds).
const MAX_ROW: u64 = 256 * 1024;

/// How long a request may take to arrive or be answered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a `sessions` answer may take to be written or read in full (a large cluster lists
/// many rows to a client that draws its progress as they come).
const LISTING_TIMEOUT: Duration = Duration::from_secs(300);

/// One bound endpoint as `msnp24 admin sessions` shows it (and `--json` prints it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionRow {
    /// The account.
    pub account: String,
    /// The endpoint id.
    pub epid: String,
    /// `tcp`, `tls` or `gateway` (absent for an endpoint registered by an older cluster node).
    pub transport: Option<String>,
    /// The peer's address and port.
    pub peer: Option<String>,
    /// BND `<client><name>`.
    pub client: String,
    /// BND `<client><ver>`.
    pub client_version: String,
    /// When it was bound, RFC 3339 UTC.
    pub since: Option<String>,
    /// The cluster node serving it (absent on a single node).
    pub node: Option<String>,
}

impl SessionRow {
    fn from_listed(l: ListedEndpoint) -> SessionRow {
        let origin = l.info.origin;
        SessionRow {
            account: l.account.to_string(),
            epid: l.info.epid.to_string(),
            transport: origin.map(|o| o.transport.as_str().to_string()),
            peer: origin.map(|o| o.peer.to_string()),
            client: l.info.client_name,
            client_version: l.info.client_ver,
            since: origin.map(|o| crate::commands::messaging::iso_time(o.since_ms)),
            node: l.node,
        }
    }
}

/// The control socket of the data directory `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET_NAME)
}

fn reason_name(reason: KickReason) -> &'static str {
    match reason {
        KickReason::PasswordChanged => "password-changed",
        KickReason::AccountRemoved => "account-removed",
        _ => "admin",
    }
}

fn parse_reason(name: &str) -> Option<KickReason> {
    match name {
        "password-changed" => Some(KickReason::PasswordChanged),
        "account-removed" => Some(KickReason::AccountRemoved),
        "admin" => Some(KickReason::Admin),
        _ => None,
    }
}

/// Listens on the control socket until shutdown; removes the socket file when it stops.
pub async fn serve(
    listener: tokio::net::UnixListener,
    path: PathBuf,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stopped(&mut shutdown) => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, _)) => {
                let state = state.clone();
                tokio::spawn(async move {
                    if tokio::time::timeout(LISTING_TIMEOUT, answer(stream, &state))
                        .await
                        .is_err()
                    {
                        tracing::info!("control request timed out");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

async fn answer(stream: tokio::net::UnixStream, state: &AppState) {
    let (rd, wr) = stream.into_split();
    let mut line = String::new();
    let mut rd = BufReader::new(rd).take(MAX_LINE);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, rd.read_line(&mut line)).await;
    if !matches!(read, Ok(Ok(_))) {
        return;
    }
    let mut wr = tokio::io::BufWriter::new(wr);
    let rows = match request(line.trim(), state).await {
        Ok((n, rows)) => {
            let _ = wr.write_all(format!("ok {n}\n").as_bytes()).await;
            rows
        }
        Err(e) => {
            tracing::info!(request = %crate::text::log(line.trim()), error = %e, "control request refused");
            let _ = wr.write_all(format!("error {e}\n").as_bytes()).await;
            Vec::new()
        }
    };
    for row in rows {
        // Serialising plain strings cannot fail; JSON escapes every control character, so a
        // client name cannot break the one-row-a-line framing.
        let mut json = serde_json::to_vec(&row).unwrap_or_default();
        json.push(b'\n');
        if wr.write_all(&json).await.is_err() {
            return;
        }
    }
    let _ = wr.flush().await;
}

/// Carries out one request: the number for the `ok` line, and the rows that follow it.
async fn request(line: &str, state: &AppState) -> Result<(usize, Vec<SessionRow>), String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let (account, epid, reason) = match words.as_slice() {
        ["kick", account, reason] => (*account, None, *reason),
        ["kick", account, epid, reason] => (*account, Some(*epid), *reason),
        ["sessions"] => return list(None, state).await,
        ["sessions", account] => {
            let account = AccountName::parse(account).map_err(|_| "bad account name")?;
            return list(Some(&account), state).await;
        }
        _ => return Err("unknown request".into()),
    };
    let account = AccountName::parse(account).map_err(|_| "bad account name")?;
    let epid = epid.map(Epid::parse).transpose().map_err(|_| "bad epid")?;
    let reason = parse_reason(reason).ok_or("unknown reason")?;
    let n = state.router.kick(&account, epid.as_ref(), reason).await;
    tracing::info!(account = %account, ?reason, endpoints = n, "sessions ended on request of the control socket");
    Ok((n, Vec::new()))
}

async fn list(
    account: Option<&AccountName>,
    state: &AppState,
) -> Result<(usize, Vec<SessionRow>), String> {
    let mut listed = state
        .router
        .list(account)
        .await
        .map_err(|e| format!("cannot list every node's endpoints: {e}"))?;
    listed.sort_by(|a, b| {
        (&a.account, &a.node, a.info.origin.map(|o| o.since_ms)).cmp(&(
            &b.account,
            &b.node,
            b.info.origin.map(|o| o.since_ms),
        ))
    });
    let rows: Vec<SessionRow> = listed.into_iter().map(SessionRow::from_listed).collect();
    Ok((rows.len(), rows))
}

/// Connects to the control socket of the server running on data directory `dir`; `None` when
/// none runs there (no socket, or nothing listening on it).
async fn connect(dir: &Path) -> anyhow::Result<Option<tokio::net::UnixStream>> {
    let path = socket_path(dir);
    match tokio::net::UnixStream::connect(&path).await {
        Ok(s) => Ok(Some(s)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(anyhow::anyhow!("connecting to {}: {e}", path.display())),
    }
}

/// Sends `req` and reads the `ok <n>` line; the reader is left at the rows that may follow.
async fn exchange(
    dir: &Path,
    stream: tokio::net::UnixStream,
    req: &str,
) -> anyhow::Result<(usize, BufReader<tokio::net::unix::OwnedReadHalf>)> {
    let path = socket_path(dir);
    let send = async {
        let (rd, mut wr) = stream.into_split();
        wr.write_all(req.as_bytes()).await?;
        let mut rd = BufReader::new(rd);
        let mut line = String::new();
        (&mut rd).take(MAX_LINE).read_line(&mut line).await?;
        anyhow::Ok((line, rd))
    };
    let (line, rd) = tokio::time::timeout(REQUEST_TIMEOUT, send)
        .await
        .map_err(|_| anyhow::anyhow!("the server did not answer on {}", path.display()))??;
    match line.trim().split_once(' ') {
        Some(("ok", n)) => Ok((n.parse()?, rd)),
        _ => Err(anyhow::anyhow!(
            "the server refused: {}",
            crate::text::escape(line.trim())
        )),
    }
}

/// Lists the endpoints bound on the server running on data directory `dir` (on every node of
/// its cluster; only `account`'s, if given). `Ok(None)` when no server is running there.
/// `progress(read, total)` is called as rows arrive.
pub async fn sessions(
    dir: &Path,
    account: Option<&AccountName>,
    mut progress: impl FnMut(usize, usize),
) -> anyhow::Result<Option<Vec<SessionRow>>> {
    let Some(stream) = connect(dir).await? else {
        return Ok(None);
    };
    let req = match account {
        Some(a) => format!("sessions {a}\n"),
        None => "sessions\n".to_string(),
    };
    let (total, mut rd) = exchange(dir, stream, &req).await?;
    let read = async {
        // Rows are allocated as they arrive, not by the count the server announced.
        let mut rows = Vec::new();
        let mut line = String::new();
        progress(0, total);
        while rows.len() < total {
            line.clear();
            if (&mut rd).take(MAX_ROW).read_line(&mut line).await? == 0 {
                anyhow::bail!(
                    "the server ended the listing after {} of {total} rows",
                    rows.len()
                );
            }
            rows.push(serde_json::from_str::<SessionRow>(&line)?);
            progress(rows.len(), total);
        }
        anyhow::Ok(rows)
    };
    let rows = tokio::time::timeout(LISTING_TIMEOUT, read)
        .await
        .map_err(|_| anyhow::anyhow!("the listing did not arrive in time"))??;
    Ok(Some(rows))
}

/// Asks the server running on data directory `dir` to end `account`'s sessions (only `epid`'s,
/// if given). `Ok(None)` when no server is running there; otherwise how many endpoints it ended.
pub async fn kick(
    dir: &Path,
    account: &AccountName,
    epid: Option<&Epid>,
    reason: KickReason,
) -> anyhow::Result<Option<usize>> {
    let Some(stream) = connect(dir).await? else {
        return Ok(None);
    };
    let mut req = format!("kick {account}");
    if let Some(e) = epid {
        req.push(' ');
        req.push_str(e.as_str());
    }
    req.push(' ');
    req.push_str(reason_name(reason));
    req.push('\n');
    let (n, _) = exchange(dir, stream, &req).await?;
    Ok(Some(n))
}
