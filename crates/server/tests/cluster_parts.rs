//! The cluster's shared parts against a real Redis, as two nodes would use them: a cluster-wide
//! lock excludes holders on different nodes, and each presence deadline fires on one node only.
//! (`crates/cli/tests/cluster.rs` runs whole nodes.)

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::redis_url;
use msnp24_proto::{AccountName, Epid};
use msnp24_server::cluster::{Keys, RedisLocks, RedisPresenceStore, SharedLocks};
use msnp24_server::presence::{PresenceStore, Timer};

async fn connection() -> redis::aio::ConnectionManager {
    redis::Client::open(redis_url())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap()
}

fn fresh_keys() -> Keys {
    Keys::new(&format!("parts-{}", uuid::Uuid::new_v4().simple()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_lock_excludes_holders_on_other_nodes() {
    let keys = fresh_keys();
    // Two nodes: separate connections and lock services, one key space.
    let nodes: Vec<Arc<dyn SharedLocks>> = vec![
        Arc::new(RedisLocks::new(connection().await, keys.clone())),
        Arc::new(RedisLocks::new(connection().await, keys.clone())),
    ];
    // A read-modify-write with a pause in the middle loses updates unless the lock excludes.
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (locks, counter) = (nodes[t % 2].clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let _held = locks.acquire("thread:x").await;
                let seen = counter.load(Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                counter.store(seen + 1, Ordering::SeqCst);
                // Released on drop by a spawned task: the next holder may take it a moment later.
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(counter.load(Ordering::SeqCst), 80);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_presence_deadline_fires_on_one_node() {
    let keys = fresh_keys();
    let locks: Arc<dyn SharedLocks> = Arc::new(RedisLocks::new(connection().await, keys.clone()));
    let a = Arc::new(RedisPresenceStore::new(
        connection().await,
        keys.clone(),
        locks.clone(),
    ));
    let b = Arc::new(RedisPresenceStore::new(
        connection().await,
        keys.clone(),
        locks,
    ));
    let epid = Epid::parse("{00000001-0000-0000-0000-000000000000}").unwrap();
    for i in 0..200 {
        let store = if i % 2 == 0 { &a } else { &b };
        store
            .schedule(Timer {
                at_ms: 1_000 + i,
                account: AccountName::parse(&format!("user{i}")).unwrap(),
                epid: epid.clone(),
            })
            .await
            .unwrap();
    }
    let later = Timer {
        at_ms: 4_102_444_800_000, // 2100-01-01
        account: AccountName::parse("later").unwrap(),
        epid,
    };
    a.schedule(later.clone()).await.unwrap();
    assert_eq!(b.next_due().await.unwrap(), Some(1_000));

    // Both nodes poll at once, repeatedly, until nothing due is left.
    let mut seen = Vec::new();
    loop {
        let (x, y) = tokio::join!(a.take_due(10_000), b.take_due(10_000));
        let (x, y) = (x.unwrap(), y.unwrap());
        if x.is_empty() && y.is_empty() {
            break;
        }
        seen.extend(x);
        seen.extend(y);
    }
    let mut names: Vec<String> = seen.iter().map(|t| t.account.to_string()).collect();
    names.sort();
    names.dedup();
    assert_eq!(seen.len(), 200, "each deadline exactly once");
    assert_eq!(names.len(), 200);
    // The deadline not yet due stays for whoever polls when it is.
    assert_eq!(a.next_due().await.unwrap(), Some(later.at_ms));
}
