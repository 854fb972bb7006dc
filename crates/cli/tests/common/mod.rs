//! Running the real `msnp24 serve` as a child process, signing in to it, and streaming messages
//! at it while it may die: shared by the tests that kill servers.
#![allow(dead_code)] // each test file uses its own part of this

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use msnp24_client::{expect_ok, http_login, new_epid, Client};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_msnp24");
/// Every test account's password.
pub const PASSWORD: &str = "secret1";
/// SDGs in flight at once, so that some are always unanswered when a server dies.
const WINDOW: usize = 32;

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `msnp24 serve`, killed when dropped.
pub struct Serve {
    /// The process.
    pub child: Child,
    /// Plaintext MSNP.
    pub msnp: SocketAddr,
    /// HTTP base URL.
    pub http: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    /// SIGKILL: no shutdown path runs; nothing is flushed but what was committed.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// Starts `serve` on `dir` with `dir/test.toml` as its configuration and fresh loopback ports;
/// returns once it prints its listening line.
pub fn serve(dir: &Path) -> Serve {
    serve_with(dir, free_port(), free_port(), &[], "warn", Stdio::inherit())
}

/// Like [`serve`], on these ports (a restarted server comes back where its clients knew it).
pub fn serve_at(dir: &Path, msnp: u16, http: u16) -> Serve {
    serve_with(dir, msnp, http, &[], "warn", Stdio::inherit())
}

/// Like [`serve_at`], with more flags, a `RUST_LOG` filter and somewhere for the log lines.
pub fn serve_with(
    dir: &Path,
    msnp: u16,
    http: u16,
    extra: &[&str],
    log: &str,
    stderr: Stdio,
) -> Serve {
    let mut child = Command::new(BIN)
        .args(["serve", "--no-tls", "--no-https", "--data-dir"])
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{msnp}")])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .args(extra)
        .env("MSNP24_CONFIG", dir.join("test.toml"))
        .env("RUST_LOG", log)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("msnp24 listening"), "{line}");
    Serve {
        child,
        msnp: SocketAddr::from(([127, 0, 0, 1], msnp)),
        http: format!("http://127.0.0.1:{http}"),
    }
}

/// Runs `msnp24 ARGS…` to completion and asserts it succeeded.
pub fn run_ok(args: &[&str], env: &[(&str, &str)]) {
    let out = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "msnp24 {args:?}: {out:?}");
}

/// Password login over HTTP, then the handshake and subscriptions, with a fresh epid.
pub async fn sign_in(s: &Serve, name: &str) -> Client {
    sign_in_as(s, name, &new_epid()).await
}

/// Like [`sign_in`], with a given epid.
pub async fn sign_in_as(s: &Serve, name: &str, epid: &str) -> Client {
    let token = http_login(&s.http, name, PASSWORD).await.unwrap();
    let mut c = Client::connect_tcp(s.msnp).await.unwrap();
    c.login(name, &token.token, epid).await.unwrap();
    c
}

/// Streams numbered messages (`msg N`) to `to`, `WINDOW` at a time, until the connection dies;
/// returns the text → Message-ID of every message the server answered. `answered_count` rises
/// as replies arrive, so a test can pick its moment to kill the server.
pub async fn stream(
    sender: Client,
    to: &str,
    answered_count: Arc<AtomicUsize>,
) -> HashMap<String, u64> {
    let mut answered = HashMap::new();
    let mut in_flight = VecDeque::new();
    for i in 0.. {
        let text = format!("msg {i}");
        let payload = sender.message_payload(to, "Text", text.as_bytes(), Some(&i.to_string()));
        match sender.send("SDG", "MSGR", payload).await {
            Ok((_, rx)) => in_flight.push_back((text, rx)),
            Err(_) => break,
        }
        if in_flight.len() < WINDOW {
            continue;
        }
        let Some((text, rx)) = in_flight.pop_front() else {
            break;
        };
        // A reply that never comes (the server died) ends the stream.
        let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(10), rx).await else {
            break;
        };
        answered.insert(text, message_id(reply));
        answered_count.fetch_add(1, Ordering::SeqCst);
    }
    // Replies that arrived before the connection died count too; the others never will.
    for (text, rx) in in_flight {
        if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(10), rx).await {
            answered.insert(text, message_id(reply));
        }
    }
    answered
}

fn message_id(reply: msnp24_proto::Frame) -> u64 {
    msnp24_client::reply_message_id(&expect_ok(reply).unwrap()).unwrap()
}

/// Fails with every §0 violation the client saw.
pub fn assert_conformant_client(c: &Client) {
    let v = c.violations();
    assert!(v.is_empty(), "frames broke §0: {v:#?}");
}

/// A fresh, empty database on the PostgreSQL server `scripts/test` starts; returns its URL.
pub async fn fresh_postgres_db() -> String {
    use sqlx::Connection;
    let base = std::env::var("MSNP24_TEST_POSTGRES").expect(
        "MSNP24_TEST_POSTGRES is not set: run the tests with scripts/test, which starts PostgreSQL",
    );
    let name = format!("msnp24_cli_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    // The scripts/test URL has a database path and no query string.
    let (server, _) = base.rsplit_once('/').unwrap();
    format!("{server}/{name}")
}
