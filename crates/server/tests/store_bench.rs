//! Store throughput with group commit: durable messages per second with N concurrent senders,
//! each waiting for its commit before the next message (as a connection waits before replying).
//! Ignored by default; the figures go to BENCHMARKS.md:
//!
//!     cargo test --release -p msnp24-server --test store_bench -- --ignored --nocapture
//!
//! The PostgreSQL variant needs the server `scripts/test` starts (`scripts/test --release -p
//! msnp24-server --test store_bench -- --ignored --nocapture`).

mod common;

use std::sync::Arc;
use std::time::Instant;

use msnp24_proto::AccountName;
use msnp24_server::storage::{
    conversation_key, NewMessage, Participant, PostgresStorage, SqliteStorage, Storage,
};

/// Messages stored per run, whatever the number of senders.
const MESSAGES: usize = 4000;

fn message(from: &str, to: &str, i: usize) -> NewMessage {
    let (f, t) = (format!("8:{from}"), format!("8:{to}"));
    NewMessage {
        conversation: conversation_key(&f, &t),
        participants: vec![
            Participant {
                account: AccountName::parse(from).unwrap(),
                conversation_id: t.clone(),
            },
            Participant {
                account: AccountName::parse(to).unwrap(),
                conversation_id: f.clone(),
            },
        ],
        sender: f,
        sender_epid: "{b958d334-651e-82fe-a2a1-3dfbb7f5cc08}".into(),
        recipient: t,
        client_message_id: Some(i.to_string()),
        message_type: "Text".into(),
        headers: "Messaging: 2.0\r\nMessage-Type: Text\r\n".into(),
        content: format!("benchmark message number {i} with a typical length of text").into_bytes(),
        arrival_ms: 1_700_000_000_000 + i as i64,
    }
}

/// Stores `MESSAGES` messages from `senders` concurrent senders, checks the first sender's all
/// arrived, closes the storage and prints one table row after `label`.
async fn measure(storage: Arc<dyn Storage>, senders: usize, label: &str) {
    let per_sender = MESSAGES / senders;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..senders {
        let storage = storage.clone();
        tasks.push(tokio::spawn(async move {
            let (from, to) = (format!("sender{s}"), format!("peer{s}"));
            for i in 0..per_sender {
                storage.store_message(message(&from, &to, i)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let total = per_sender * senders;
    println!(
        "{label}{senders:7} | {total:8} | {secs:7.2} | {:14.0}",
        total as f64 / secs
    );
    let stored = storage
        .conversation_messages(&conversation_key("8:sender0", "8:peer0"))
        .await
        .unwrap();
    assert_eq!(stored.len(), per_sender);
    storage.close().await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
async fn store_throughput_with_group_commit() {
    // On the target directory's disk, not a tmpfs: fsync must cost what it costs.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    println!("senders | messages | seconds | durable msgs/s");
    for senders in [1usize, 4, 16, 64, 256] {
        let path = dir.path().join(format!("bench-{senders}.sqlite3"));
        let storage = SqliteStorage::open(&path).await.unwrap();
        measure(Arc::new(storage), senders, "").await;
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
async fn postgres_store_throughput() {
    println!("PostgreSQL: senders | messages | seconds | durable msgs/s");
    for senders in [1usize, 4, 16, 64, 256] {
        let url = common::fresh_postgres_db().await;
        let storage = PostgresStorage::open(&url).await.unwrap();
        measure(Arc::new(storage), senders, "            ").await;
    }
}
