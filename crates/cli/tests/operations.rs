//! What an operator sees of a running `msnp24 serve`: JSON log lines.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use msnp24_proto::Payload;

fn add_users(dir: &std::path::Path, names: &[&str]) {
    let d = dir.to_str().unwrap();
    for name in names {
        run_ok(
            &["user", "add", name, "--password", PASSWORD, "--data-dir", d],
            &[],
        );
    }
}

#[test]
fn json_log_lines_name_connection_account_and_command() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("test.toml"), "").unwrap();
    add_users(dir.path(), &["alice", "bob"]);
    let log_path = dir.path().join("log.jsonl");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut server = serve_with(
        dir.path(),
        free_port(),
        free_port(),
        &["--log-format", "json"],
        "info",
        Stdio::from(log),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let alice = sign_in(&server, "alice").await;
        let _bob = sign_in(&server, "bob").await;
        msnp24_client::expect_ok(alice.send_text("8:bob", "hello").await.unwrap()).unwrap();
        let (_, reply) = alice
            .send("XYZ", "MSGR", Payload::body("").encode())
            .await
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), reply)
            .await
            .unwrap()
            .unwrap();
        assert!(reply.cmd.parse::<u16>().is_ok(), "{reply:?}");
    });
    server.kill();

    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let find = |message: &str| -> Vec<&serde_json::Value> {
        lines.iter().filter(|l| l["message"] == message).collect()
    };
    for l in &lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(l.get(key).is_some(), "{key} missing in {l}");
        }
    }
    let opened = find("connection opened");
    assert_eq!(opened.len(), 2, "{text}");
    for l in &opened {
        assert!(l["span"]["conn"].is_u64(), "{l}");
        assert_eq!(l["span"]["transport"], "tcp", "{l}");
        assert_eq!(l["span"]["name"], "conn", "{l}");
    }
    let bound = find("endpoint bound");
    assert_eq!(bound.len(), 2, "{text}");
    for l in &bound {
        assert_eq!(l["span"]["cmd"], "BND", "{l}");
        assert!(l["span"]["conn"].is_u64(), "{l}");
    }
    let refused = find("request refused");
    assert_eq!(refused.len(), 1, "{text}");
    let r = refused[0];
    assert_eq!(r["span"]["cmd"], "XYZ", "{r}");
    assert_eq!(r["span"]["account"], "alice", "{r}");
    assert!(r["span"]["conn"].is_u64(), "{r}");
    assert_eq!(r["code"], 240, "{r}");
    // Once signed in, the connection's own lines carry the account too.
    let closed = find("connection closed");
    assert!(
        closed.is_empty() || closed.iter().all(|l| l["span"]["account"].is_string()),
        "{text}"
    );
}
