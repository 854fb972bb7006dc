//! No acknowledged message is ever lost (§5): the real `msnp24 serve` is killed with SIGKILL while
//! a client streams messages, started again on the same data directory, and history sync must
//! hold every message whose `SDG` was answered, each exactly once.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use msnp24_client::{expect_ok, http_login, new_epid, Client};
use msnp24_proto::Payload;

const BIN: &str = env!("CARGO_BIN_EXE_msnp24");
const PASSWORD: &str = "secret1";
/// Answered messages before the kill.
const BEFORE_KILL: usize = 300;
/// SDGs in flight at once, so that some are always unanswered when the server dies.
const WINDOW: usize = 32;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Serve {
    child: Child,
    msnp: SocketAddr,
    http: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path) -> Serve {
    let (msnp, http) = (free_port(), free_port());
    let mut child = Command::new(BIN)
        .args(["serve", "--no-tls", "--data-dir"])
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{msnp}")])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        // The test streams as fast as it can; the per-account limit is not what it is about.
        .env("MSNP24_CONFIG", dir.join("test.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
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

async fn sign_in(s: &Serve, name: &str) -> Client {
    let token = http_login(&s.http, name, PASSWORD).await.unwrap();
    let mut c = Client::connect_tcp(s.msnp).await.unwrap();
    c.login(name, &token.token, &new_epid()).await.unwrap();
    c
}

/// Streams numbered messages to bob, `WINDOW` at a time, until the connection dies; returns
/// the number → Message-ID of every message the server answered.
async fn stream(alice: Client, answered_count: Arc<AtomicUsize>) -> HashMap<String, u64> {
    let mut answered = HashMap::new();
    let mut in_flight = VecDeque::new();
    for i in 0.. {
        let text = format!("msg {i}");
        let payload = alice.message_payload("8:bob", "Text", text.as_bytes(), Some(&i.to_string()));
        match alice.send("SDG", "MSGR", payload).await {
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
    let reply = expect_ok(reply).unwrap();
    Payload::parse(&reply.payload)
        .unwrap()
        .headers
        .get("Message-ID")
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn every_answered_message_survives_sigkill_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    std::fs::write(
        dir.path().join("test.toml"),
        "[send_rate]\nper_second = 0\n",
    )
    .unwrap();
    for name in ["alice", "bob"] {
        let out = Command::new(BIN)
            .args(["user", "add", name, "--password", PASSWORD, "--data-dir", d])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut server = serve(dir.path());

    let answered = rt.block_on(async {
        let alice = sign_in(&server, "alice").await;
        let count = Arc::new(AtomicUsize::new(0));
        let streaming = tokio::spawn(stream(alice, count.clone()));
        while count.load(Ordering::SeqCst) < BEFORE_KILL {
            assert!(!streaming.is_finished(), "the stream stopped early");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // SIGKILL: no shutdown path runs, nothing is flushed but what was committed.
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        streaming.await.unwrap()
    });
    assert!(answered.len() >= BEFORE_KILL);
    drop(server);

    let server = serve(dir.path());
    rt.block_on(async {
        let bob = sign_in(&server, "bob").await;
        let history = bob.history("8:alice", None, 200).await.unwrap();
        let mut seen: HashMap<String, u64> = HashMap::new();
        for m in &history {
            assert!(
                seen.insert(m.content.clone(), m.message_id).is_none(),
                "{} is in history twice",
                m.content
            );
        }
        for (text, id) in &answered {
            assert_eq!(seen.get(text), Some(id), "answered message {text} lost");
        }
        // Unanswered messages may or may not be there; nothing else may.
        assert!(history.iter().all(|m| m.content.starts_with("msg ")));
        eprintln!(
            "answered {}, in history {} after SIGKILL",
            answered.len(),
            history.len()
        );
        assert_conformant_client(&bob);
    });
}

fn assert_conformant_client(c: &Client) {
    let v = c.violations();
    assert!(v.is_empty(), "frames broke §0: {v:#?}");
}
