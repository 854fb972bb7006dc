//! Issue 20 item 3: with trace logging on, every frame a connection writes is in the log — the
//! frames the server pushes on its own (a delivered `SDG`, presence `NFY`) as well as replies.
//! Its own test binary, because it installs the process's one log subscriber.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;

/// Collects everything the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn pushed_frames_are_traced() {
    let log = Captured::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "warn,msnp24_server::transport=trace",
        ))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    let t = TestServer::start().await;
    t.add_user("alice").await;
    t.add_user("bob").await;
    friends(&t, "alice", "bob").await;
    let mut bob = t.signed_in("bob").await;
    let alice = t.signed_in("alice").await;
    alice.set_presence("NLN", Some("tracing")).await.unwrap();
    bob.wait_for(WAIT, |f| f.cmd == "NFY" && f.target == "MSGR\\PUT")
        .await
        .unwrap();
    alice.send_text("8:bob", "traced hello").await.unwrap();
    bob.wait_for(WAIT, |f| f.cmd == "SDG").await.unwrap();

    let text = log.text();
    let sent: Vec<&str> = text.lines().filter(|l| l.contains(" send ")).collect();
    // Frames are logged escaped (Debug), so a target's backslash shows doubled.
    let pushed_nfy = sent
        .iter()
        .any(|l| l.contains(r"NFY 0 MSGR\\PUT") && l.contains("tracing"));
    let delivered_sdg = sent
        .iter()
        .any(|l| l.contains("SDG 0 MSGR") && l.contains("traced hello"));
    assert!(
        pushed_nfy,
        "no pushed NFY MSGR\\PUT in the trace log:\n{text}"
    );
    assert!(delivered_sdg, "no delivered SDG in the trace log:\n{text}");
    // Frames read are traced too.
    assert!(text
        .lines()
        .any(|l| l.contains(" recv ") && l.contains("SDG ") && l.contains("traced hello")));
}
