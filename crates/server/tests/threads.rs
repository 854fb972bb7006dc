//! Group chats (§7) over the wire: create, members and roles, topic, fan-out to members only,
//! history from the thread, ver-1 endpoints, and a 500-member thread. Every client's frames are
//! checked against §0 (including §0.6) at the end of each test.

mod common;

use std::time::{Duration, Instant};

use common::*;
use msnp24_client::Client;
use msnp24_proto::xml::thread::{Member, Thread, ThreadsResponse};
use msnp24_proto::{FormattedMessage, Frame};

fn thread_body(f: &Frame) -> Thread {
    Thread::parse(&f.parse_payload().unwrap().body).unwrap()
}

fn kind_of(f: &Frame) -> Option<String> {
    let (_, m) = FormattedMessage::parse_payload(&f.payload).ok()?;
    m.message_type().map(str::to_string)
}

fn is_sdg(f: &Frame, kind: &str) -> bool {
    f.cmd == "SDG" && kind_of(f).as_deref() == Some(kind)
}

/// The next `NFY MSGR\THREAD`.
async fn nfy(c: &mut Client) -> Thread {
    let f = c
        .wait_for(WAIT, |f| f.cmd == "NFY" && f.target == "MSGR\\THREAD")
        .await
        .unwrap();
    thread_body(&f)
}

/// The next message of this type, as a formatted message.
async fn sdg(c: &mut Client, kind: &str) -> FormattedMessage {
    let f = c.wait_for(WAIT, |f| is_sdg(f, kind)).await.unwrap();
    FormattedMessage::parse_payload(&f.payload).unwrap().1
}

fn roles(t: &Thread) -> Vec<(String, String)> {
    t.members
        .iter()
        .map(|m| (m.mri.clone(), m.role.clone().unwrap_or_default()))
        .collect()
}

fn pair(m: &str, r: &str) -> (String, String) {
    (m.to_string(), r.to_string())
}

/// Frames that reach `c` until a `PNG` round trip: what the server queued before it answered.
async fn drain(c: &mut Client) -> Vec<Frame> {
    c.ping().await.unwrap();
    let mut seen = Vec::new();
    while let Ok(Some(f)) = c.next_event_timeout(Duration::from_millis(200)).await {
        seen.push(f);
    }
    seen
}

async fn users(t: &TestServer, names: &[&str]) {
    for n in names {
        t.add_user(n).await;
    }
}

fn code(f: &Frame) -> Option<u16> {
    f.error_code()
}

#[tokio::test]
async fn create_add_roles_topic_and_threads_query() {
    let t = TestServer::start().await;
    users(&t, &["alice", "bob", "carol", "dave"]).await;
    let alice = t.signed_in("alice").await;
    let mut bob = t.signed_in("bob").await;
    let mut carol = t.signed_in("carol").await;
    let dave = t.signed_in("dave").await;

    // The creator does not list itself: it is admin anyway (§7).
    let create = Thread {
        members: vec![Member {
            mri: "8:bob".into(),
            role: Some("user".into()),
        }],
        ..Default::default()
    };
    let reply = alice.thread_request("PUT", &create).await.unwrap();
    assert_eq!((reply.cmd.as_str(), reply.target.as_str()), ("PUT", "MSGR"));
    let payload = reply.parse_payload().unwrap();
    let names: Vec<&str> = payload.headers.iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "UtcTime",
            "Set-Registration",
            "Registration-Token-Expiry",
            "Context"
        ]
    );
    let id = Thread::parse(&payload.body).unwrap().id;
    let mri = msnp24_proto::Mri::parse(&id).unwrap();
    assert!(mri.is_valid_thread(), "{id}");

    let full = nfy(&mut bob).await;
    assert_eq!(full.id, id);
    assert_eq!(full.capabilities, Some(2047));
    assert_eq!(full.topic.as_deref(), Some(""));
    assert_eq!(full.creator.as_deref(), Some("8:alice"));
    assert_eq!(
        roles(&full),
        [pair("8:alice", "admin"), pair("8:bob", "user")]
    );
    let add = sdg(&mut bob, "ThreadActivity/AddMember").await;
    assert_eq!(
        (add.from(), add.to()),
        (Some(id.as_str()), Some(id.as_str()))
    );
    let body = msnp24_proto::xml::thread::AddMember::parse(&add.body).unwrap();
    assert_eq!(body.initiator, "8:alice");
    assert_eq!(body.targets, ["8:alice", "8:bob"]);

    // Add carol; promote bob.
    alice
        .add_thread_members(&id, &[("carol", "user"), ("bob", "admin")])
        .await
        .unwrap();
    let full = nfy(&mut carol).await;
    assert_eq!(
        roles(&full),
        [
            pair("8:alice", "admin"),
            pair("8:bob", "admin"),
            pair("8:carol", "user")
        ]
    );
    assert!(full.version > Some(0));
    let add = sdg(&mut carol, "ThreadActivity/AddMember").await;
    assert!(String::from_utf8_lossy(&add.body).contains("<target>8:carol</target>"));
    let role = sdg(&mut bob, "ThreadActivity/RoleUpdate").await;
    let role = msnp24_proto::xml::thread::RoleUpdate::parse(&role.body).unwrap();
    assert_eq!(role.targets, [("8:bob".to_string(), "admin".to_string())]);

    // Any member sets the topic, a plain user included.
    carol.set_thread_topic(&id, "Weekend plans").await.unwrap();
    let topic = sdg(&mut bob, "ThreadActivity/TopicUpdate").await;
    let topic = msnp24_proto::xml::thread::TopicUpdate::parse(&topic.body).unwrap();
    assert_eq!(
        (topic.initiator.as_str(), topic.value.as_str()),
        ("8:carol", "Weekend plans")
    );

    // GET MSGR\THREADS answers for members only.
    let got: ThreadsResponse = carol
        .threads(&[&id, "19:nothex@thread.skype"])
        .await
        .unwrap();
    assert_eq!(got.threads.len(), 1);
    assert_eq!(got.threads[0].topic.as_deref(), Some("Weekend plans"));
    assert_eq!(got.threads[0].members.len(), 3);
    assert!(dave.threads(&[&id]).await.unwrap().threads.is_empty());

    for c in [&alice, &bob, &carol, &dave] {
        assert_conformant(c);
    }
}

#[tokio::test]
async fn a_member_adds_a_member_but_not_an_admin_nor_removes_or_changes_roles() {
    let t = TestServer::start().await;
    users(&t, &["alice", "bob", "carol", "dave"]).await;
    let mut alice = t.signed_in("alice").await;
    let mut bob = t.signed_in("bob").await;
    let mut carol = t.signed_in("carol").await;
    let id = alice.create_thread(&["bob"], None).await.unwrap();
    nfy(&mut bob).await;
    sdg(&mut bob, "ThreadActivity/AddMember").await;
    drain(&mut alice).await;

    // What a Skype 7 client sends from "add people": a plain member adds carol as `user`.
    bob.add_thread_members(&id, &[("carol", "user")])
        .await
        .unwrap();
    let full = nfy(&mut carol).await;
    assert_eq!(full.id, id);
    assert_eq!(
        roles(&full),
        [
            pair("8:alice", "admin"),
            pair("8:bob", "user"),
            pair("8:carol", "user")
        ]
    );
    for c in [&mut alice, &mut bob, &mut carol] {
        let add = sdg(c, "ThreadActivity/AddMember").await;
        assert_eq!(
            (add.from(), add.to()),
            (Some(id.as_str()), Some(id.as_str()))
        );
        let body = msnp24_proto::xml::thread::AddMember::parse(&add.body).unwrap();
        assert_eq!(body.initiator, "8:bob");
        assert_eq!(body.targets, ["8:carol"]);
    }

    // What stays with admins, each refused with 208 (§7, §9) and nothing applied.
    let refused = [
        ("PUT", "8:dave", Some("admin")),
        ("PUT", "8:carol", Some("admin")),
        ("PUT", "8:alice", Some("user")),
        ("DEL", "8:carol", None),
        ("DEL", "8:alice", None),
    ];
    for (verb, mri, role) in refused {
        let req = Thread {
            id: id.clone(),
            members: vec![Member {
                mri: mri.to_string(),
                role: role.map(str::to_string),
            }],
            ..Default::default()
        };
        let reply = bob.thread_request(verb, &req).await.unwrap();
        assert_eq!(code(&reply), Some(208), "{verb} {mri} {role:?}");
    }
    let got = alice.threads(&[&id]).await.unwrap();
    assert_eq!(
        roles(&got.threads[0]),
        [
            pair("8:alice", "admin"),
            pair("8:bob", "user"),
            pair("8:carol", "user")
        ]
    );
    // Nobody heard of a change that did not happen.
    for c in [&mut alice, &mut carol] {
        let seen = drain(c).await;
        assert!(
            !seen
                .iter()
                .any(|f| f.target == "MSGR\\THREAD" || f.cmd == "SDG"),
            "{seen:?}"
        );
    }
    for c in [&alice, &bob, &carol] {
        assert!(c.ping().await.unwrap().error_code().is_none());
        assert_conformant(c);
    }
}

#[tokio::test]
async fn each_refusal_and_what_is_acknowledged() {
    let t = TestServer::start().await;
    users(&t, &["alice", "bob", "carol", "dave"]).await;
    let alice = t.signed_in("alice").await;
    let bob = t.signed_in("bob").await;
    let dave = t.signed_in("dave").await;
    let id = alice.create_thread(&["bob"], None).await.unwrap();
    let put = |members: Vec<(&str, Option<&str>)>, topic: Option<&str>| Thread {
        id: id.clone(),
        topic: topic.map(str::to_string),
        members: members
            .into_iter()
            .map(|(m, r)| Member {
                mri: m.to_string(),
                role: r.map(str::to_string),
            })
            .collect(),
        ..Default::default()
    };
    let r = |f: anyhow::Result<Frame>| code(&f.unwrap());

    // 208: a user adds an admin, changes a role, removes another; a non-member sends, sets the
    // topic, removes.
    assert_eq!(
        r(bob
            .thread_request("PUT", &put(vec![("8:carol", Some("admin"))], None))
            .await),
        Some(208)
    );
    assert_eq!(
        r(bob
            .thread_request("PUT", &put(vec![("8:bob", Some("admin"))], None))
            .await),
        Some(208)
    );
    assert_eq!(
        r(bob
            .thread_request("DEL", &put(vec![("8:alice", None)], None))
            .await),
        Some(208)
    );
    assert_eq!(r(dave.send_text(&id, "let me in").await), Some(208));
    assert_eq!(
        r(dave.thread_request("PUT", &put(vec![], Some("mine"))).await),
        Some(208)
    );
    assert_eq!(
        r(dave
            .thread_request("DEL", &put(vec![("8:bob", None)], None))
            .await),
        Some(208)
    );
    // 201: a role that does not exist, a thread that does not, a malformed id.
    assert_eq!(
        r(alice
            .thread_request("PUT", &put(vec![("8:carol", Some("owner"))], None))
            .await),
        Some(201)
    );
    let nowhere = Thread {
        id: "19:00000000000000000000000000000000@thread.skype".into(),
        topic: Some("x".into()),
        ..Default::default()
    };
    assert_eq!(r(alice.thread_request("PUT", &nowhere).await), Some(201));
    assert_eq!(r(alice.send_text(&nowhere.id, "hello?").await), Some(201));
    let malformed = Thread {
        id: "19:nothex@thread.skype".into(),
        ..Default::default()
    };
    assert_eq!(r(alice.thread_request("DEL", &malformed).await), Some(201));
    // 200: not XML.
    let bad = alice
        .request("PUT", "MSGR\\THREAD", alice.payload("<thread><id>"))
        .await
        .unwrap();
    assert_eq!(code(&bad), Some(200));
    // A member may not post what only the thread posts.
    assert_eq!(
        r(bob
            .send_message(&id, "ThreadActivity/AddMember", b"<addmember/>", None)
            .await),
        Some(208)
    );

    // Acknowledged: names that are no account (left out), a user re-listing itself as it is,
    // a non-member leaving, and nothing changed.
    assert_eq!(
        r(alice
            .thread_request(
                "PUT",
                &put(vec![("8:nobody", None), ("4:+1555", None)], None)
            )
            .await),
        None
    );
    assert_eq!(
        r(bob
            .thread_request("PUT", &put(vec![("8:bob", Some("user"))], None))
            .await),
        None
    );
    assert_eq!(
        r(dave
            .thread_request("DEL", &put(vec![("8:dave", None)], None))
            .await),
        None
    );
    let got = alice.threads(&[&id]).await.unwrap();
    assert_eq!(
        roles(&got.threads[0]),
        [pair("8:alice", "admin"), pair("8:bob", "user")]
    );
    // The connections stayed open through every refusal.
    for c in [&alice, &bob, &dave] {
        assert!(c.ping().await.unwrap().error_code().is_none());
        assert_conformant(c);
    }
}

#[tokio::test]
async fn three_members_see_the_same_ordered_history() {
    let t = TestServer::start().await;
    users(&t, &["alice", "bob", "carol"]).await;
    let mut alice = t.signed_in("alice").await;
    let mut bob = t.signed_in("bob").await;
    let mut carol = t.signed_in("carol").await;
    let id = alice.create_thread(&["bob"], Some("plans")).await.unwrap();
    alice.send_text(&id, "one").await.unwrap();
    bob.send_text(&id, "two").await.unwrap();
    alice
        .add_thread_members(&id, &[("carol", "user")])
        .await
        .unwrap();
    carol.send_text(&id, "three").await.unwrap();
    bob.set_thread_topic(&id, "new plans").await.unwrap();
    alice.send_text(&id, "four").await.unwrap();

    // Live: each member saw the others' texts in the one order (a sender's own endpoint is skipped).
    let mut live = Vec::new();
    for c in [&mut alice, &mut bob, &mut carol] {
        let texts: Vec<String> = drain(c)
            .await
            .iter()
            .filter(|f| is_sdg(f, "Text"))
            .map(|f| {
                FormattedMessage::parse_payload(&f.payload)
                    .unwrap()
                    .1
                    .body_lossy()
            })
            .collect();
        live.push(texts);
    }
    assert_eq!(live[0], ["two", "three"]);
    assert_eq!(live[1], ["one", "three", "four"]);
    assert_eq!(live[2], ["four"]);

    let summary = |h: &[msnp24_proto::xml::HistoryMessage]| {
        h.iter()
            .rev()
            .map(|m| {
                (
                    m.message_id,
                    m.message_type.clone(),
                    m.from.clone(),
                    m.content.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    let a = summary(&alice.history(&id, None, 3).await.unwrap());
    let b = summary(&bob.history(&id, None, 100).await.unwrap());
    let c = summary(&carol.history(&id, None, 100).await.unwrap());
    assert_eq!(a, b);
    let kinds: Vec<&str> = a.iter().map(|m| m.1.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ThreadActivity/AddMember",
            "ThreadActivity/TopicUpdate",
            "Text",
            "Text",
            "ThreadActivity/AddMember",
            "Text",
            "ThreadActivity/TopicUpdate",
            "Text"
        ]
    );
    assert_eq!(a[0].2, id, "activity comes from the thread");
    // Carol's history starts when she joined: with the AddMember that added her.
    assert_eq!(c[..], a[4..]);

    let recent = carol
        .recent_conversations(&Default::default())
        .await
        .unwrap();
    let conv = recent.conversations.iter().find(|c| c.id == id).unwrap();
    let thread = conv.thread.as_ref().unwrap();
    assert_eq!(
        (thread.id.as_str(), thread.last_leave_at),
        (id.as_str(), None)
    );
    assert_eq!(conv.messages[0].content, "four");
    for c in [&alice, &bob, &carol] {
        assert_conformant(c);
    }
}

#[tokio::test]
async fn a_removed_member_receives_nothing_after_and_the_last_one_out_closes() {
    let t = TestServer::start().await;
    users(&t, &["alice", "bob", "carol"]).await;
    let alice = t.signed_in("alice").await;
    let mut bob = t.signed_in("bob").await;
    let mut carol = t.signed_in("carol").await;
    let id = alice.create_thread(&["bob", "carol"], None).await.unwrap();
    alice.send_text(&id, "before").await.unwrap();
    sdg(&mut bob, "Text").await;

    alice.remove_thread_members(&id, &["bob"]).await.unwrap();
    let full = nfy(&mut bob).await;
    assert!(!full.members.iter().any(|m| m.mri == "8:bob"));
    let del = sdg(&mut bob, "ThreadActivity/DeleteMember").await;
    let del = msnp24_proto::xml::thread::DeleteMember::parse(&del.body).unwrap();
    assert_eq!(
        (del.initiator.as_str(), del.targets.as_slice()),
        ("8:alice", &["8:bob".to_string()][..])
    );

    alice.send_text(&id, "after").await.unwrap();
    alice.set_thread_topic(&id, "without bob").await.unwrap();
    carol
        .wait_for(WAIT, |f| is_sdg(f, "ThreadActivity/TopicUpdate"))
        .await
        .unwrap();
    let late = drain(&mut bob).await;
    assert!(late.is_empty(), "bob received {late:?}");
    assert_eq!(
        code(&bob.send_text(&id, "hello?").await.unwrap()),
        Some(208)
    );

    // Sync: the thread with <lastleaveat> and empty <messages/>; history ends at the removal.
    let recent = bob.recent_conversations(&Default::default()).await.unwrap();
    let conv = recent.conversations.iter().find(|c| c.id == id).unwrap();
    assert!(conv.messages.is_empty());
    let left = conv.thread.as_ref().unwrap().last_leave_at.unwrap();
    let history = bob.history(&id, None, 100).await.unwrap();
    assert_eq!(history[0].message_type, "ThreadActivity/DeleteMember");
    assert_eq!(history[0].message_id, left);
    assert!(!history.iter().any(|m| m.content == "after"));

    // The last admin leaving promotes the longest-standing member; the last one out closes it.
    alice.leave_thread(&id).await.unwrap();
    let full = nfy(&mut carol).await;
    assert_eq!(roles(&full), [pair("8:carol", "admin")]);
    carol
        .wait_for(WAIT, |f| is_sdg(f, "ThreadActivity/RoleUpdate"))
        .await
        .unwrap();
    carol.leave_thread(&id).await.unwrap();
    assert!(carol.threads(&[&id]).await.unwrap().threads.is_empty());
    let reopen = Thread {
        id: id.clone(),
        topic: Some("again".into()),
        ..Default::default()
    };
    assert_eq!(
        code(&alice.thread_request("PUT", &reopen).await.unwrap()),
        Some(201)
    );
    // Leaving a closed thread again is a harmless retry.
    carol.leave_thread(&id).await.unwrap();
    for c in [&alice, &bob, &carol] {
        assert_conformant(c);
    }
}

#[tokio::test]
async fn a_ver_1_endpoint_gets_240_and_no_thread_traffic() {
    let t = TestServer::start().await;
    users(&t, &["alice", "bob"]).await;
    let mut alice = t.signed_in("alice").await;
    let mut bob2 = t.signed_in("bob").await;
    let token = t.token("bob").await;
    let mut bob1 = t.connect().await;
    let replies = bob1
        .handshake(&token, &msnp24_client::new_epid(), 1)
        .await
        .unwrap();
    assert!(replies.iter().all(|r| r.error_code().is_none()));
    bob1.account = "bob".into();
    let sub = msnp24_proto::xml::subscribe::Subscribe {
        messaging: true,
        presence: true,
        ..Default::default()
    };
    let r = bob1
        .request("PUT", "MSGR\\SUBSCRIPTIONS", bob1.payload(sub.to_xml()))
        .await
        .unwrap();
    assert!(r.error_code().is_none());

    assert_eq!(
        code(
            &bob1
                .thread_request("PUT", &Thread::default())
                .await
                .unwrap()
        ),
        Some(240)
    );
    let get = bob1
        .request("GET", "MSGR\\THREADS", bob1.payload("<threads/>"))
        .await
        .unwrap();
    assert_eq!(code(&get), Some(240));

    let id = alice.create_thread(&["bob"], None).await.unwrap();
    assert_eq!(code(&bob1.send_text(&id, "hi").await.unwrap()), Some(240));
    alice.send_text(&id, "to the group").await.unwrap();
    alice.send_text("8:bob", "one to one").await.unwrap();
    bob2.wait_for(WAIT, |f| {
        is_sdg(f, "Text") && f.payload_lossy().contains("one to one")
    })
    .await
    .unwrap();
    let seen = drain(&mut bob1).await;
    // The one-to-one message arrives; nothing from the thread does.
    assert!(seen
        .iter()
        .any(|f| f.payload_lossy().contains("one to one")));
    assert!(
        !seen
            .iter()
            .any(|f| f.payload_lossy().contains("thread.skype")),
        "{seen:?}"
    );
    drain(&mut alice).await;
    for c in [&alice, &bob1, &bob2] {
        assert_conformant(c);
    }
}

/// `n` accounts `m0000`… made and signed in directly (see `common::make_accounts`).
async fn crowd(t: &TestServer, n: usize) -> Vec<Client> {
    let names = make_accounts(t, "m", n).await;
    sign_in_many(t, &names).await
}

/// Waits until each client has received a `Text` message with `text`; returns how many did.
async fn all_receive(clients: Vec<Client>, text: &str) -> (usize, Vec<Client>) {
    let mut set = tokio::task::JoinSet::new();
    for mut c in clients {
        let text = text.to_string();
        set.spawn(async move {
            let ok = c
                .wait_for(Duration::from_secs(30), |f| {
                    is_sdg(f, "Text") && f.payload_lossy().ends_with(&text)
                })
                .await
                .is_ok();
            (ok, c)
        });
    }
    let mut got = 0;
    let mut back = Vec::new();
    while let Some(r) = set.join_next().await {
        let (ok, c) = r.unwrap();
        got += usize::from(ok);
        back.push(c);
    }
    (got, back)
}

async fn big_thread(t: &TestServer, n: usize) -> (Client, String, Vec<Client>) {
    t.add_user("host").await;
    let host = t.signed_in("host").await;
    let members = crowd(t, n).await;
    let names: Vec<String> = members.iter().map(|c| c.account.clone()).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let id = host.create_thread(&refs, Some("crowd")).await.unwrap();
    (host, id, members)
}

#[tokio::test]
async fn a_message_to_a_500_member_thread_reaches_every_online_member() {
    const N: usize = 500;
    // 501 clients from one address: lift the per-address connection limit.
    let t = TestServer::start_with(|c| c.max_connections_per_ip = 0).await;
    let (host, id, members) = big_thread(&t, N).await;
    let full = host.threads(&[&id]).await.unwrap();
    assert_eq!(full.threads[0].members.len(), N + 1);
    host.send_text(&id, "hello, crowd").await.unwrap();
    let (got, members) = all_receive(members, "hello, crowd").await;
    assert_eq!(got, N);
    for c in members.iter().take(20).chain([&host]) {
        assert_conformant(c);
    }
    assert!(members.iter().all(|c| c.violations().is_empty()));
}

/// Fan-out latency to a 500-member thread: from sending `SDG` until every member has received
/// and parsed it. Prints p50/p99 over 50 messages; a benchmark, not a pass/fail test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn thread_fan_out_speed() {
    const N: usize = 500;
    const MESSAGES: usize = 50;
    let t = TestServer::start_with(|c| {
        c.send_rate.per_second = 0.0;
        c.max_connections_per_ip = 0;
    })
    .await;
    let (host, id, mut members) = big_thread(&t, N).await;
    let mut times = Vec::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        let text = format!("message {i}");
        let start = Instant::now();
        let reply = host.send_text(&id, &text).await.unwrap();
        assert!(reply.error_code().is_none());
        let (got, back) = all_receive(members, &text).await;
        times.push(start.elapsed());
        assert_eq!(got, N);
        members = back;
    }
    times.sort();
    let p = |q: f64| times[((times.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    println!(
        "thread fan-out to {N} members over {MESSAGES} messages: p50 {:?}, p99 {:?}, best {:?}, worst {:?}",
        p(0.50),
        p(0.99),
        times[0],
        times[times.len() - 1]
    );
}
