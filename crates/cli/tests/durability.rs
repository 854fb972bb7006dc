//! No acknowledged message is ever lost (§5): the real `msnp24 serve` is killed with SIGKILL while
//! a client streams messages, started again on the same data directory, and history sync must
//! hold every message whose `SDG` was answered, each exactly once.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// Answered messages before the kill.
const BEFORE_KILL: usize = 300;

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
        let streaming = tokio::spawn(stream(alice, "8:bob", count.clone()));
        while count.load(Ordering::SeqCst) < BEFORE_KILL {
            assert!(!streaming.is_finished(), "the stream stopped early");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.kill();
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
