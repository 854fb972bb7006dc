//! The local control socket: `control.sock` in the data directory (mode 0600 in a 0700
//! directory, so only the server's own user reaches it). `msnp24 user passwd` and `user remove`
//! change storage themselves, then ask the running server through it to end the account's live
//! sessions (`Router::kick`, which reaches every node of a cluster).
//!
//! One request per connection, one line each way: `kick <account> [<epid>] <reason>` answered by
//! `ok <endpoints ended>` or `error <why>`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use msnp24_proto::{AccountName, Epid};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

use crate::routing::KickReason;
use crate::state::AppState;
use crate::transport::stopped;

/// The socket's name in the data directory.
pub const SOCKET_NAME: &str = "control.sock";

/// Longest request line read.
const MAX_LINE: u64 = 1024;

/// How long a request may take to arrive or be answered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

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
                    if tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &state))
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
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let mut rd = BufReader::new(rd).take(MAX_LINE);
    if rd.read_line(&mut line).await.is_err() {
        return;
    }
    let reply = match request(line.trim(), state).await {
        Ok(n) => format!("ok {n}\n"),
        Err(e) => {
            tracing::info!(request = %crate::text::log(line.trim()), error = e, "control request refused");
            format!("error {e}\n")
        }
    };
    let _ = wr.write_all(reply.as_bytes()).await;
}

async fn request(line: &str, state: &AppState) -> Result<usize, &'static str> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let (account, epid, reason) = match words.as_slice() {
        ["kick", account, reason] => (*account, None, *reason),
        ["kick", account, epid, reason] => (*account, Some(*epid), *reason),
        _ => return Err("unknown request"),
    };
    let account = AccountName::parse(account).map_err(|_| "bad account name")?;
    let epid = epid.map(Epid::parse).transpose().map_err(|_| "bad epid")?;
    let reason = parse_reason(reason).ok_or("unknown reason")?;
    let n = state.router.kick(&account, epid.as_ref(), reason).await;
    tracing::info!(account = %account, ?reason, endpoints = n, "sessions ended on request of the control socket");
    Ok(n)
}

/// Asks the server running on data directory `dir` to end `account`'s sessions (only `epid`'s,
/// if given). `Ok(None)` when no server is running there; otherwise how many endpoints it ended.
pub async fn kick(
    dir: &Path,
    account: &AccountName,
    epid: Option<&Epid>,
    reason: KickReason,
) -> anyhow::Result<Option<usize>> {
    let path = socket_path(dir);
    let stream = match tokio::net::UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(anyhow::anyhow!("connecting to {}: {e}", path.display())),
    };
    let mut req = format!("kick {account}");
    if let Some(e) = epid {
        req.push(' ');
        req.push_str(e.as_str());
    }
    req.push(' ');
    req.push_str(reason_name(reason));
    req.push('\n');
    let exchange = async {
        let (rd, mut wr) = stream.into_split();
        wr.write_all(req.as_bytes()).await?;
        let mut line = String::new();
        BufReader::new(rd)
            .take(MAX_LINE)
            .read_line(&mut line)
            .await?;
        anyhow::Ok(line)
    };
    let line = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("the server did not answer on {}", path.display()))??;
    match line.trim().split_once(' ') {
        Some(("ok", n)) => Ok(Some(n.parse()?)),
        _ => Err(anyhow::anyhow!(
            "the server refused: {}",
            crate::text::escape(line.trim())
        )),
    }
}
