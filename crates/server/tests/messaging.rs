//! `SDG` and `ACK` between endpoints (§5): durable store before the reply, delivery to the
//! recipient's and the sender's other endpoints with the server's headers, retries stored once,
//! control messages relayed only, limits. Non-delivery is shown by a sentinel message that must
//! arrive first, never by waiting for a timeout.

mod common;

use common::*;
use msnp24_client::{expect_ok, Client};
use msnp24_proto::{FormattedMessage, Frame, Headers, Payload};
use msnp24_server::storage::conversation_key;

fn message_id(reply: &Frame) -> i64 {
    msnp24_client::reply_message_id(reply).unwrap() as i64
}

/// The next `SDG 0 MSGR` a client receives, parsed.
async fn next_message(c: &mut Client) -> (Headers, FormattedMessage) {
    let f = c.wait_for(WAIT, |f| f.cmd == "SDG").await.unwrap();
    assert_eq!((f.trid, f.target.as_str()), (0, "MSGR"));
    FormattedMessage::parse_payload(&f.payload).unwrap()
}

/// A message with every header a real client sends (§5's example).
fn full_message(c: &Client, to: &str, cmid: &str, text: &str) -> Vec<u8> {
    let mut m = FormattedMessage::new(
        to,
        &format!("8:{};epid={{{}}}", c.account, c.epid),
        ("Messaging", "2.0"),
        text.as_bytes().to_vec(),
    );
    m.content.push("Message-Type", "Text");
    m.content.push("Client-Message-ID", cmid);
    m.content.push("IM-Display-Name", "Alice");
    m.content.push("Content-Type", "Text/plain; charset=UTF-8");
    let mut transport = Headers::new();
    transport.push("Registration", c.registration().unwrap());
    m.to_payload(&transport)
}

async fn stored(t: &TestServer, a: &str, b: &str) -> usize {
    t.server()
        .state()
        .storage
        .conversation_messages(&conversation_key(a, b))
        .await
        .unwrap()
        .len()
}

#[tokio::test]
async fn two_endpoints_each_see_the_right_frames_with_the_reference_headers() {
    two_endpoints_each_see_the_right_frames(TestServer::start().await).await;
}

#[tokio::test]
async fn two_endpoints_each_see_the_right_frames_on_postgres() {
    two_endpoints_each_see_the_right_frames(TestServer::start_postgres().await).await;
}

async fn two_endpoints_each_see_the_right_frames(t: TestServer) {
    t.add_user("alice").await;
    t.add_user("bob").await;
    let mut a1 = t.signed_in("alice").await;
    let mut a2 = t.signed_in("alice").await;
    let mut b1 = t.signed_in("bob").await;
    let mut b2 = t.signed_in("bob").await;

    let payload = full_message(&a1, "8:bob", "6643607751647822671", "hi <b>&</b>");
    let reply = expect_ok(a1.request("SDG", "MSGR", payload).await.unwrap()).unwrap();
    assert_eq!((reply.cmd.as_str(), reply.target.as_str()), ("SDG", "MSGR"));
    let reply_headers = Payload::parse(&reply.payload).unwrap().headers;
    assert_eq!(reply_headers.iter().next().unwrap().0, "Message-ID");
    let id = message_id(&reply);

    for c in [&mut b1, &mut b2, &mut a2] {
        let (transport, m) = next_message(c).await;
        let names: Vec<&str> = transport.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["Ack-Id", "Context"]);
        let ack = transport.get("Ack-Id").unwrap();
        assert!(ack.len() == 16 && ack.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(m.routing.get("Routing"), Some("1.0"));
        assert_eq!(m.to(), Some("8:bob"));
        assert_eq!(m.from().unwrap(), format!("8:alice;epid={{{}}}", a1.epid));
        assert_eq!(m.reliability.get("Reliability"), Some("1.0"));
        let names: Vec<&str> = m.content.iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "Messaging",
                "Message-ID",
                "Client-Message-ID",
                "Message-Type",
                "IM-Display-Name",
                "Relationship-Type",
                "Is-Active",
                "Original-Arrival-Time",
                "Skype-Age",
                "Content-Type",
                "Content-Length"
            ]
        );
        let h = &m.content;
        assert_eq!(h.get("Messaging"), Some("2.0"));
        assert_eq!(h.get("Message-ID").unwrap(), id.to_string());
        assert_eq!(h.get("Client-Message-ID"), Some("6643607751647822671"));
        assert_eq!(h.get("Message-Type"), Some("Text"));
        assert_eq!(h.get("IM-Display-Name"), Some("Alice"));
        assert_eq!(h.get("Relationship-Type"), Some("Explicit"));
        assert_eq!(h.get("Is-Active"), Some("true"));
        let oat = h.get("Original-Arrival-Time").unwrap();
        assert!(
            oat.len() == 24 && oat.ends_with('Z') && oat.as_bytes()[19] == b'.',
            "{oat}"
        );
        assert!(h.get("Skype-Age").unwrap().parse::<u64>().is_ok());
        assert_eq!(h.get("Content-Type"), Some("Text/plain; charset=UTF-8"));
        assert_eq!(h.get("Content-Length"), Some("11"));
        assert_eq!(m.body, b"hi <b>&</b>");
    }

    // Bob answers from his second endpoint: alice's two and bob's first see it, b2 does not.
    expect_ok(b2.send_text("8:alice", "hello back").await.unwrap()).unwrap();
    for c in [&mut a1, &mut a2, &mut b1] {
        let (_, m) = next_message(c).await;
        assert_eq!(m.body, b"hello back");
        assert_eq!(m.from().unwrap(), format!("8:bob;epid={{{}}}", b2.epid));
    }
    // a1 saw bob's answer first, so not its own message. Nor does b2 get its own back: the next
    // message it sees is b1's sentinel (a sender's other endpoints receive its messages).
    expect_ok(b1.send_text("8:alice", "sentinel").await.unwrap()).unwrap();
    assert_eq!(next_message(&mut b2).await.1.body, b"sentinel");
    assert_eq!(next_message(&mut a1).await.1.body, b"sentinel");

    for c in [&a1, &a2, &b1, &b2] {
        assert_conformant(c);
    }
    assert_eq!(stored(&t, "8:alice", "8:bob").await, 3);
}

#[tokio::test]
async fn ack_is_answered_and_recorded_for_the_endpoint() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    t.add_user("bob").await;
    let a = t.signed_in("alice").await;
    let mut b = t.signed_in("bob").await;
    let id = message_id(&expect_ok(a.send_text("8:bob", "ack me").await.unwrap()).unwrap());
    let (transport, _) = next_message(&mut b).await;
    let ack_id = transport.get("Ack-Id").unwrap().to_string();

    let reply = b.ack(&ack_id).await.unwrap();
    assert_eq!(
        reply.to_bytes(),
        format!("ACK {} MSGR 2\r\n\r\n", reply.trid).into_bytes()
    );
    // An Ack-Id this connection never handed out is still acknowledged (a harmless request), but
    // not recorded.
    let reply = b.ack("0000013E745CEE19").await.unwrap();
    assert_eq!(reply.cmd, "ACK");

    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", t.config.database_path().display()))
        .await
        .unwrap();
    let rows: Vec<(String, String, Option<String>, Option<i64>)> = sqlx::query_as(
        "SELECT epid, ack_id, conversation, message_id FROM message_acks WHERE account = 'bob' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let epid = format!("{{{}}}", b.epid);
    assert_eq!(
        rows,
        [(
            epid,
            ack_id,
            Some(conversation_key("8:alice", "8:bob")),
            Some(id)
        ),]
    );
    assert_conformant(&b);
}

#[tokio::test]
async fn forged_from_is_rewritten_and_retries_are_stored_once() {
    forged_from_and_retries(TestServer::start().await).await;
}

#[tokio::test]
async fn forged_from_is_rewritten_and_retries_are_stored_once_on_postgres() {
    forged_from_and_retries(TestServer::start_postgres().await).await;
}

async fn forged_from_and_retries(t: TestServer) {
    t.add_user("alice").await;
    t.add_user("bob").await;
    let a = t.signed_in("alice").await;
    let mut b = t.signed_in("bob").await;
    let mut m = FormattedMessage::new(
        "8:bob",
        "8:mallory;epid={00000000-0000-0000-0000-000000000000}",
        ("Messaging", "2.0"),
        b"x".to_vec(),
    );
    m.content.push("Message-Type", "Text");
    m.content.push("Client-Message-ID", "777");
    let payload = m.to_payload(&Headers::new());
    let r1 = expect_ok(a.request("SDG", "MSGR", payload.clone()).await.unwrap()).unwrap();
    let r2 = expect_ok(a.request("SDG", "MSGR", payload).await.unwrap()).unwrap();
    assert_eq!(message_id(&r1), message_id(&r2));
    let (_, got) = next_message(&mut b).await;
    assert!(got.from().unwrap().starts_with("8:alice;epid={"));
    // The retry is not delivered a second time: the next message bob sees is the sentinel.
    expect_ok(a.send_text("8:bob", "sentinel").await.unwrap()).unwrap();
    assert_eq!(next_message(&mut b).await.1.body, b"sentinel");
    // The same client message id in another conversation is another message.
    let mut m2 = FormattedMessage::new("8:alice", "8:alice", ("Messaging", "2.0"), b"y".to_vec());
    m2.content.push("Message-Type", "Text");
    m2.content.push("Client-Message-ID", "777");
    let r3 = expect_ok(
        a.request("SDG", "MSGR", m2.to_payload(&Headers::new()))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(stored(&t, "8:alice", "8:bob").await, 2);
    assert_eq!(stored(&t, "8:alice", "8:alice").await, 1);
    let history = b.history("8:alice", None, 50).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(
        history
            .iter()
            .filter(|h| h.client_message_id.as_deref() == Some("777"))
            .count(),
        1
    );
    assert_ne!(message_id(&r3), 0);
    assert_conformant(&a);
    assert_conformant(&b);
}

#[tokio::test]
async fn typing_is_relayed_not_stored_and_unknown_recipients_get_201() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    t.add_user("bob").await;
    let a = t.signed_in("alice").await;
    let mut b = t.signed_in("bob").await;
    for kind in ["Control/Typing", "Control/ClearTyping"] {
        let r = a
            .send_message("8:bob", kind, b"", Some("123"))
            .await
            .unwrap();
        expect_ok(r).unwrap();
        let (_, got) = next_message(&mut b).await;
        assert_eq!(got.message_type(), Some(kind));
    }
    assert_eq!(stored(&t, "8:alice", "8:bob").await, 0);
    assert!(b.history("8:alice", None, 10).await.unwrap().is_empty());
    let recent = b.recent_conversations(&Default::default()).await.unwrap();
    assert!(recent.conversations.is_empty());

    for to in ["8:nobody", "1:alice@example.com", "4:+15551234", "28:bot"] {
        let r = a.send_text(to, "hello?").await.unwrap();
        assert_eq!((r.cmd.as_str(), r.target.as_str()), ("201", "MSGR"), "{to}");
    }
    assert_conformant(&b);
}

#[tokio::test]
async fn a_message_to_oneself_reaches_the_other_endpoints_and_history() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    let a1 = t.signed_in("alice").await;
    let mut a2 = t.signed_in("alice").await;
    expect_ok(a1.send_text("8:alice", "note to self").await.unwrap()).unwrap();
    let (_, m) = next_message(&mut a2).await;
    assert_eq!(m.to(), Some("8:alice"));
    assert_eq!(m.body, b"note to self");
    let recent = a2.recent_conversations(&Default::default()).await.unwrap();
    assert_eq!(recent.conversations.len(), 1);
    assert_eq!(recent.conversations[0].id, "8:alice");
    assert_eq!(recent.conversations[0].messages[0].content, "note to self");
    assert_conformant(&a1);
    assert_conformant(&a2);
}

#[tokio::test]
async fn messages_wait_for_a_messaging_subscription() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    t.add_user("bob").await;
    let a = t.signed_in("alice").await;
    // Bob is bound but has not subscribed: nothing is pushed to him, the message is stored.
    let token = t.token("bob").await;
    let mut b = t.connect().await;
    b.handshake(&token, &msnp24_client::new_epid(), 2)
        .await
        .unwrap();
    expect_ok(a.send_text("8:bob", "later").await.unwrap()).unwrap();
    // The ping's reply comes after anything queued for bob before it: no SDG among the events.
    expect_ok(b.ping().await.unwrap()).unwrap();
    while let Ok(Some(f)) = b.next_event_timeout(std::time::Duration::ZERO).await {
        assert_ne!(f.cmd, "SDG");
    }
    assert_eq!(stored(&t, "8:alice", "8:bob").await, 1);
    let history = b.history("8:alice", None, 10).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].content, "later");
    assert_conformant(&b);
}

#[tokio::test]
async fn sending_faster_than_the_account_rate_gets_803() {
    let t = TestServer::start_with(|c| {
        // A refill so slow that no token comes back during the test.
        c.send_rate.per_second = 0.001;
        c.send_rate.burst = 3;
    })
    .await;
    t.add_user("alice").await;
    t.add_user("bob").await;
    let a1 = t.signed_in("alice").await;
    let a2 = t.signed_in("alice").await;
    let b = t.signed_in("bob").await;
    for _ in 0..2 {
        expect_ok(a1.send_text("8:bob", "ok").await.unwrap()).unwrap();
    }
    expect_ok(a2.send_text("8:bob", "ok").await.unwrap()).unwrap();
    // The bucket is the account's, shared by its endpoints.
    let r = a2.send_text("8:bob", "too many").await.unwrap();
    assert_eq!((r.cmd.as_str(), r.target.as_str()), ("803", "MSGR"));
    let r = a1.send_text("8:bob", "too many").await.unwrap();
    assert_eq!(r.cmd, "803");
    // The connection stays usable, and other accounts are not affected.
    expect_ok(a1.ping().await.unwrap()).unwrap();
    expect_ok(b.send_text("8:alice", "fine").await.unwrap()).unwrap();
    assert_eq!(stored(&t, "8:alice", "8:bob").await, 4);
}

#[tokio::test]
async fn an_sdg_over_the_payload_limit_gets_603_and_a_close() {
    let t = TestServer::start_with(|c| c.max_payload = 2048).await;
    t.add_user("alice").await;
    t.add_user("bob").await;
    let mut a = t.signed_in("alice").await;
    expect_ok(a.send_text("8:bob", &"x".repeat(1000)).await.unwrap()).unwrap();
    let r = a.send_text("8:bob", &"x".repeat(4000)).await.unwrap();
    assert_eq!((r.cmd.as_str(), r.target.as_str()), ("603", "MSGR"));
    loop {
        match a.next_event_timeout(WAIT).await.unwrap() {
            None => break,
            Some(f) => assert_ne!(f.cmd, "SDG"),
        }
    }
    assert_eq!(stored(&t, "8:alice", "8:bob").await, 1);
    assert_conformant(&a);
}

#[tokio::test]
async fn messages_between_blocked_accounts_are_answered_but_neither_stored_nor_delivered() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    t.add_user("bob").await;
    let a = t.signed_in("alice").await;
    let mut b = t.signed_in("bob").await;
    // Bob blocks alice: her message is answered as usual (blocking is not revealed)…
    expect_ok(b.block_contact("alice").await.unwrap()).unwrap();
    let r = expect_ok(a.send_text("8:bob", "can you hear me").await.unwrap()).unwrap();
    assert!(message_id(&r) > 0);
    // …and reaches nobody, now or by sync: the next thing bob sees from alice is after unblocking.
    expect_ok(
        b.send_text("8:alice", "bob to alice, also blocked")
            .await
            .unwrap(),
    )
    .unwrap();
    expect_ok(b.unblock_contact("alice").await.unwrap()).unwrap();
    expect_ok(a.send_text("8:bob", "after unblock").await.unwrap()).unwrap();
    assert_eq!(next_message(&mut b).await.1.body, b"after unblock");
    let history = b.history("8:alice", None, 50).await.unwrap();
    assert_eq!(history.len(), 1, "only the unblocked message is in history");
    assert_eq!(stored(&t, "8:alice", "8:bob").await, 1);
    assert_conformant(&a);
    assert_conformant(&b);
}
