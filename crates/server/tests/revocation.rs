//! Ending live sessions: `Router::kick` sends `OUT` with a reason and closes, on one node and
//! across the nodes of a cluster (real PostgreSQL and Redis, two servers in one process).

mod common;

use common::*;
use msnp24_client::{expect_ok, new_epid, Client};
use msnp24_proto::{AccountName, Epid};
use msnp24_server::routing::KickReason;

/// Expects `OUT 0 CON` with `reason`, then the end of the stream.
async fn expect_out(c: &mut Client, reason: &str) {
    let out = c
        .next_event_timeout(WAIT)
        .await
        .unwrap()
        .expect("OUT before close");
    assert_eq!(first_line(&out), format!("OUT 0 CON {}", out.payload.len()));
    assert_eq!(
        String::from_utf8_lossy(&out.payload),
        format!("\r\n<out><reason>{reason}</reason></out>")
    );
    assert!(
        c.next_event_timeout(WAIT).await.unwrap().is_none(),
        "closed after OUT"
    );
}

fn name(n: &str) -> AccountName {
    AccountName::parse(n).unwrap()
}

#[tokio::test]
async fn kick_ends_an_accounts_endpoints_or_one_of_them() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    t.add_user("bob").await;
    let token = t.token("alice").await;
    let (e1, e2) = (new_epid(), new_epid());
    let mut a1 = t.connect().await;
    a1.login("alice", &token, &e1).await.unwrap();
    let mut a2 = t.connect().await;
    a2.login("alice", &token, &e2).await.unwrap();
    let mut bob = t.signed_in("bob").await;
    let router = &t.server().state().router;

    let one = Epid::parse(&e1).unwrap();
    assert_eq!(
        router
            .kick(&name("alice"), Some(&one), KickReason::Admin)
            .await,
        1
    );
    expect_out(&mut a1, "OtherLocation").await;
    expect_ok(a2.ping().await.unwrap()).unwrap();

    assert_eq!(
        router
            .kick(&name("alice"), None, KickReason::CredentialsExpired)
            .await,
        1
    );
    expect_out(&mut a2, "SessionTimeout").await;
    assert_eq!(
        router
            .kick(&name("alice"), None, KickReason::PasswordChanged)
            .await,
        0,
        "nothing left to end"
    );
    // Another account is untouched.
    expect_ok(bob.ping().await.unwrap()).unwrap();
    assert!(bob
        .next_event_timeout(std::time::Duration::from_millis(200))
        .await
        .is_err());
}

/// Two nodes of one cluster (shared PostgreSQL database and Redis).
async fn two_nodes() -> (TestServer, TestServer) {
    let url = fresh_postgres_db().await;
    let cluster = format!("kick-{}", uuid::Uuid::new_v4().simple());
    let node = |url: String, cluster: String| {
        TestServer::start_with(move |c| {
            c.storage = Some(url);
            c.routing = Some(redis_url());
            c.cluster_name = cluster;
        })
    };
    let a = node(url.clone(), cluster.clone()).await;
    let b = node(url, cluster).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kick_reaches_endpoints_on_other_nodes() {
    let (a, b) = two_nodes().await;
    a.add_user("alice").await;
    let token = a.token("alice").await;
    let epid_b = new_epid();
    let mut on_a = a.connect().await;
    on_a.login("alice", &token, &new_epid()).await.unwrap();
    let mut on_b = b.connect().await;
    on_b.login("alice", &token, &epid_b).await.unwrap();
    let mut other_b = b.connect().await;
    other_b.login("alice", &token, &new_epid()).await.unwrap();

    // One endpoint on the other node, by epid.
    let router = &a.server().state().router;
    let one = Epid::parse(&epid_b).unwrap();
    assert_eq!(
        router
            .kick(&name("alice"), Some(&one), KickReason::AccountRemoved)
            .await,
        1
    );
    expect_out(&mut on_b, "OtherLocation").await;
    expect_ok(other_b.ping().await.unwrap()).unwrap();

    // Every endpoint of the account, here and there.
    assert_eq!(
        router
            .kick(&name("alice"), None, KickReason::PasswordChanged)
            .await,
        2
    );
    expect_out(&mut on_a, "OtherLocation").await;
    expect_out(&mut other_b, "OtherLocation").await;
}
