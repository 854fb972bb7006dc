//! Cluster mode end to end: three real `msnp24 serve` processes, each with its own data
//! directory, sharing one PostgreSQL database and one Redis. Users bound to different nodes
//! exchange one-to-one and group messages, see each other's presence (aggregated over endpoints
//! on different nodes), a second endpoint of an account on another node gets the carbon copies, binding an epid again on another node ends the older
//! connection, and SIGKILLing a node mid-conversation loses no acknowledged message while its
//! users go offline for their watchers once the node's registration and keep-alive run out.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use msnp24_client::{expect_ok, new_epid, Client, Event};
use msnp24_proto::Frame;

const WAIT: Duration = Duration::from_secs(10);
/// How long after its last heartbeat a node counts as dead, and a vanished endpoint as gone.
const NODE_TTL_SECS: u64 = 2;
const KEEPALIVE_SECS: u64 = 2;

fn redis_url() -> String {
    std::env::var("MSNP24_TEST_REDIS").unwrap_or_else(|_| {
        panic!("MSNP24_TEST_REDIS is not set: run the tests with scripts/test, which starts Redis")
    })
}

/// One cluster: a configuration every node shares (its own name in Redis, so runs never meet),
/// and the nodes' data directories.
struct Cluster {
    root: tempfile::TempDir,
    config: PathBuf,
    name: String,
    storage: String,
    nodes: usize,
}

impl Cluster {
    /// A fresh database and a fresh name in the test Redis.
    async fn new() -> Cluster {
        Cluster::with_redis(&redis_url()).await
    }

    /// A fresh database and a fresh name in the Redis at `redis`.
    async fn with_redis(redis: &str) -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let name = format!("test-{}", uuid::Uuid::new_v4().simple());
        let storage = fresh_postgres_db().await;
        let config = root.path().join("cluster.toml");
        std::fs::write(
            &config,
            format!(
                "storage = \"{storage}\"\nrouting = \"{}\"\ncluster_name = \"{name}\"\n\
                 cluster_node_ttl_secs = {NODE_TTL_SECS}\npresence_keepalive_secs = {KEEPALIVE_SECS}\n\
                 max_connections_per_ip = 0\nframes_per_sec = 0\n[send_rate]\nper_second = 0\n",
                redis
            ),
        )
        .unwrap();
        Cluster {
            root,
            config,
            name,
            storage,
            nodes: 0,
        }
    }

    /// A node with its own data directory (its configuration is the cluster's).
    fn node(&mut self) -> Serve {
        self.nodes += 1;
        let dir = self.root.path().join(format!("node{}", self.nodes));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&self.config, dir.join("test.toml")).unwrap();
        serve(&dir)
    }

    /// `msnp24 user add` against the cluster's database, from a directory of its own.
    fn add_user(&self, name: &str) {
        let dir = self.root.path().join("admin");
        let d = dir.to_str().unwrap();
        run_ok(
            &["user", "add", name, "--password", PASSWORD, "--data-dir", d],
            &[("MSNP24_STORAGE", &self.storage)],
        );
    }
}

fn is_presence_of(f: &Frame, account: &str) -> Option<Event> {
    let e = Event::from_frame(f);
    match &e {
        Event::Presence { account: a, .. } | Event::Offline { account: a } if a == account => {
            Some(e)
        }
        _ => None,
    }
}

/// Waits for a presence notification about `account` that `pred` accepts.
async fn presence(c: &mut Client, account: &str, pred: impl Fn(&Event) -> bool) -> Event {
    let f = c
        .wait_for(WAIT, |f| {
            is_presence_of(f, account).is_some_and(|e| pred(&e))
        })
        .await
        .unwrap_or_else(|e| panic!("{}: no such presence about {account}: {e}", c.address()));
    Event::from_frame(&f)
}

fn status_is(want: &'static str, endpoints: usize) -> impl Fn(&Event) -> bool {
    move |e| matches!(e, Event::Presence { status, endpoints: n, .. } if status == want && *n == endpoints)
}

/// Waits for a message with this text.
async fn message(c: &mut Client, from: &str, text: &str) {
    c.wait_for(WAIT, |f| {
        matches!(Event::from_frame(f), Event::Message { from: fr, text: t, .. } if fr.starts_with(from) && t == text)
    })
    .await
    .unwrap_or_else(|e| panic!("{}: no \"{text}\" from {from}: {e}", c.address()));
}

/// Makes two accounts contacts through the protocol: `a` asks (on its node), `b` accepts (on its).
async fn befriend(a: &mut Client, b: &mut Client, a_name: &str, b_name: &str) {
    a.add_contact(b_name).await.unwrap();
    b.wait_for(WAIT, |f| {
        matches!(Event::from_frame(f), Event::ContactRequests { from } if from.iter().any(|n| n == a_name))
    })
    .await
    .unwrap_or_else(|e| panic!("{b_name} never saw {a_name}'s request: {e}"));
    b.allow_contact(a_name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_messages_presence_threads_and_survive_a_kill() {
    let mut cluster = Cluster::new().await;
    for name in ["alice", "bob", "carol"] {
        cluster.add_user(name);
    }
    let node_a = cluster.node();
    let node_b = cluster.node();
    let mut node_c = cluster.node();

    // alice on A (and a second endpoint on C), bob on B, carol on C.
    let mut alice = sign_in(&node_a, "alice").await;
    let mut bob = sign_in(&node_b, "bob").await;
    let mut carol = sign_in(&node_c, "carol").await;
    befriend(&mut alice, &mut bob, "alice", "bob").await;
    befriend(&mut carol, &mut bob, "carol", "bob").await;

    // Presence across nodes, aggregated over endpoints on different nodes (§4.3).
    alice.set_presence("BSY", None).await.unwrap();
    presence(&mut bob, "8:alice", status_is("BSY", 1)).await;
    let mut alice2 = sign_in(&node_c, "alice").await;
    alice2.set_presence("NLN", None).await.unwrap();
    presence(&mut bob, "8:alice", status_is("NLN", 2)).await;
    bob.set_presence("AWY", None).await.unwrap();
    presence(&mut alice, "8:bob", status_is("AWY", 1)).await;
    presence(&mut alice2, "8:bob", status_is("AWY", 1)).await;
    carol.set_presence("NLN", None).await.unwrap();
    presence(&mut bob, "8:carol", status_is("NLN", 1)).await;

    // One-to-one between nodes; the sender's endpoint on another node gets the carbon copy, and
    // both of alice's endpoints get bob's answer.
    alice.send_text("8:bob", "hello from A").await.unwrap();
    message(&mut bob, "8:alice", "hello from A").await;
    message(&mut alice2, "8:alice", "hello from A").await;
    bob.send_text("8:alice", "hello from B").await.unwrap();
    message(&mut alice, "8:bob", "hello from B").await;
    message(&mut alice2, "8:bob", "hello from B").await;

    // A group chat whose members are on three nodes.
    let thread = alice
        .create_thread(&["bob", "carol"], Some("across"))
        .await
        .unwrap();
    alice.send_text(&thread, "to the group").await.unwrap();
    for c in [&mut bob, &mut carol, &mut alice2] {
        message(c, "8:alice", "to the group").await;
    }
    carol.send_text(&thread, "from C").await.unwrap();
    for c in [&mut alice, &mut bob, &mut alice2] {
        message(c, "8:carol", "from C").await;
    }

    // The same epid bound on another node ends the older connection with OtherLocation.
    let epid = new_epid();
    let mut bob_old = sign_in_as(&node_a, "bob", &epid).await;
    let _bob_new = sign_in_as(&node_b, "bob", &epid).await;
    bob_old
        .wait_for(WAIT, |f| {
            matches!(Event::from_frame(f), Event::SignedOut { reason: Some(r) } if r == "OtherLocation")
        })
        .await
        .expect("the older connection on node A was not told OtherLocation");

    // Kill node C while carol (on it) streams to bob: every answered message is kept, once.
    let count = Arc::new(AtomicUsize::new(0));
    let sender = sign_in(&node_c, "carol").await;
    let streaming = tokio::spawn(stream(sender, "8:bob", count.clone()));
    while count.load(Ordering::SeqCst) < 200 {
        assert!(!streaming.is_finished(), "the stream stopped early");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    node_c.kill();
    let killed_at = Instant::now();
    let answered = streaming.await.unwrap();
    assert!(answered.len() >= 200);

    // bob watched carol: she goes offline once node C's registration expires and her
    // endpoints' keep-alive runs out on a surviving node; alice's endpoint on C vanished too, so
    // bob sees her with one endpoint again (both notifications come together, in either order).
    let (mut carol_gone, mut alice_shrunk) = (false, false);
    while !(carol_gone && alice_shrunk) {
        let f = bob
            .wait_for(WAIT, |f| {
                is_presence_of(f, "8:carol").is_some() || is_presence_of(f, "8:alice").is_some()
            })
            .await
            .expect("no presence change after node C died");
        carol_gone |=
            is_presence_of(&f, "8:carol").is_some_and(|e| matches!(e, Event::Offline { .. }));
        alice_shrunk |= is_presence_of(&f, "8:alice").is_some_and(|e| status_is("BSY", 1)(&e));
    }
    let offline_after = killed_at.elapsed();
    assert!(
        offline_after >= Duration::from_secs(KEEPALIVE_SECS),
        "offline after {offline_after:?}, before the keep-alive ran out"
    );

    // carol signs in again on a surviving node and finds everything in history, exactly once.
    let carol_again = sign_in(&node_a, "carol").await;
    for (c, with) in [(&carol_again, "8:bob"), (&bob, "8:carol")] {
        let history = c.history(with, None, 100).await.unwrap();
        let mut seen: HashMap<&str, u64> = HashMap::new();
        for m in history.iter().filter(|m| m.content.starts_with("msg ")) {
            assert!(
                seen.insert(&m.content, m.message_id).is_none(),
                "{} is in history twice",
                m.content
            );
        }
        for (text, id) in &answered {
            assert_eq!(
                seen.get(text.as_str()),
                Some(id),
                "answered message {text} lost"
            );
        }
        eprintln!(
            "{}: answered {}, in history {} after SIGKILL of node C",
            c.address(),
            answered.len(),
            seen.len()
        );
    }
    for c in [&alice, &bob, &alice2, &carol_again] {
        assert_conformant_client(c);
    }
    drop((node_a, node_b));
}

/// A node whose registration expired while it was alive (a partition, a long pause) may have been
/// reaped: when it sees that, it drops its connections (without `OUT`) so the clients reconnect
/// and get their routing and presence back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_presumed_dead_drops_its_connections_to_rejoin() {
    let mut cluster = Cluster::new().await;
    cluster.add_user("alice");
    let node = cluster.node();
    let mut alice = sign_in(&node, "alice").await;

    let redis = redis::Client::open(redis_url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let pattern = format!("msnp24:{}:alive:*", cluster.name);
    let alive: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(alive.len(), 1, "one node registered: {alive:?}");
    let _: () = redis::cmd("DEL")
        .arg(&alive[0])
        .query_async(&mut conn)
        .await
        .unwrap();

    // The next heartbeat (a third of the node TTL) notices and drops the connection, silently.
    let end = alice
        .wait_for(WAIT, |f| f.cmd == "OUT")
        .await
        .expect_err("no OUT: the connection just closes");
    assert!(end.to_string().contains("closed"), "{end}");
    // The node registered again and serves a new sign-in.
    let again = sign_in(&node, "alice").await;
    again.ping().await.unwrap();
    let alive: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(alive.len(), 1);
    assert_conformant_client(&alice);
}

/// A redis-server of the test's own, on a free port, killed when dropped.
struct OwnRedis {
    child: std::process::Child,
    url: String,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let port = free_port();
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test installs it)");
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        OwnRedis {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Redis is only the meeting point: with it gone, a node still signs its users in, stores their
/// messages and delivers them between its own connections (each Redis call gives up quickly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_redis_is_gone_still_serves_its_own_users() {
    let mut redis = OwnRedis::start();
    let mut cluster = Cluster::with_redis(&redis.url).await;
    cluster.add_user("alice");
    cluster.add_user("bob");
    let node = cluster.node();
    let mut bob = sign_in(&node, "bob").await;
    redis.kill();

    let alice = sign_in(&node, "alice").await;
    let reply = alice
        .send_text("8:bob", "while redis is down")
        .await
        .unwrap();
    assert!(reply.error_code().is_none(), "{}", reply.payload_lossy());
    message(&mut bob, "8:alice", "while redis is down").await;
    let history = bob.history("8:alice", None, 10).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].content, "while redis is down");
    for c in [&alice, &bob] {
        assert_conformant_client(c);
    }
}

/// `admin sessions --json` run against one node's data directory, parsed.
fn sessions_json(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let out = std::process::Command::new(BIN)
        .args(["admin", "sessions", "--json", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

/// `admin kick ARGS…` against one node's data directory; returns what it printed.
fn kick(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(BIN)
        .args(["admin", "kick"])
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits for `OUT` and then the end of the connection.
async fn signed_out(c: &mut Client) {
    c.wait_for(WAIT, |f| f.cmd == "OUT")
        .await
        .unwrap_or_else(|e| panic!("no OUT: {e}"));
    let closed =
        tokio::time::timeout(WAIT, async { while c.next_event().await.is_some() {} }).await;
    assert!(closed.is_ok(), "the connection stayed open after OUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_sessions_and_kick_reach_every_node() {
    let mut cluster = Cluster::new().await;
    for name in ["alice", "bob"] {
        cluster.add_user(name);
    }
    let node_a = cluster.node();
    let node_b = cluster.node();
    let dir_a = cluster.root.path().join("node1");
    let braced = || format!("{{{}}}", new_epid());
    let (e1, e2, e3) = (braced(), braced(), braced());
    // alice on A and on B, bob on B; asked through A only.
    let alice_a = sign_in_as(&node_a, "alice", &e1).await;
    let mut alice_b = sign_in_as(&node_b, "alice", &e2).await;
    let mut bob = sign_in_as(&node_b, "bob", &e3).await;

    let rows = sessions_json(&dir_a);
    assert_eq!(rows.len(), 3, "{rows:#?}");
    let row = |e: &str| {
        rows.iter()
            .find(|r| r["epid"] == e)
            .unwrap_or_else(|| panic!("{e} not listed: {rows:#?}"))
            .clone()
    };
    for e in [&e1, &e2, &e3] {
        let r = row(e);
        assert_eq!(r["transport"], "tcp", "{r}");
        assert!(r["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{r}");
        assert_eq!(r["client"], "msnp24-client", "{r}");
        assert!(r["since"].is_string(), "{r}");
        assert!(r["node"].is_string(), "{r}");
    }
    assert_eq!(row(&e1)["account"], "alice");
    assert_eq!(row(&e3)["account"], "bob");
    assert_ne!(row(&e1)["node"], row(&e2)["node"], "two nodes: {rows:#?}");
    assert_eq!(row(&e2)["node"], row(&e3)["node"], "{rows:#?}");

    // One endpoint on the other node; the account's endpoint here stays.
    assert_eq!(
        kick(&dir_a, &["alice", "--epid", &e2]),
        "signed out 1 endpoint(s) of alice\n"
    );
    signed_out(&mut alice_b).await;
    expect_ok(alice_a.ping().await.unwrap()).unwrap();
    // A whole account that lives only on the other node.
    assert_eq!(kick(&dir_a, &["bob"]), "signed out 1 endpoint(s) of bob\n");
    signed_out(&mut bob).await;
    let rows = sessions_json(&dir_a);
    let left: Vec<&serde_json::Value> = rows.iter().map(|r| &r["epid"]).collect();
    assert_eq!(left, [&serde_json::Value::from(e1.as_str())], "{rows:#?}");
    drop(node_b);
}
