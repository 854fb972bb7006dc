//! `SDG` between endpoints (the basics of §5): durable store before the reply, delivery to the
//! recipient's and the sender's other endpoints with the server's headers, retries stored once.

mod common;

use std::time::Duration;

use common::*;
use msnp24_client::expect_ok;
use msnp24_proto::{FormattedMessage, Frame, Headers, Payload};
use msnp24_server::storage::conversation_key;

fn message_id(reply: &Frame) -> i64 {
    Payload::parse(&reply.payload)
        .unwrap()
        .headers
        .get("Message-ID")
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn message_reaches_recipient_and_senders_other_endpoint() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    t.add_user("bob").await;
    let a1 = t.signed_in("alice").await;
    let mut a2 = t.signed_in("alice").await;
    let mut b1 = t.signed_in("bob").await;
    let mut b2 = t.signed_in("bob").await;

    let reply = expect_ok(a1.send_text("8:bob", "hi <b>&</b>").await.unwrap()).unwrap();
    assert_eq!(reply.cmd, "SDG");
    assert_eq!(reply.target, "MSGR");
    let id = message_id(&reply);

    for c in [&mut b1, &mut b2, &mut a2] {
        let f = c.wait_for(WAIT, |f| f.cmd == "SDG").await.unwrap();
        assert_eq!((f.trid, f.target.as_str()), (0, "MSGR"));
        let (transport, m) = FormattedMessage::parse_payload(&f.payload).unwrap();
        let names: Vec<&str> = transport.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["Ack-Id", "Context"]);
        assert_eq!(transport.get("Ack-Id").unwrap().len(), 16);
        assert_eq!(m.to(), Some("8:bob"));
        assert_eq!(m.from().unwrap(), format!("8:alice;epid={{{}}}", a1.epid));
        let names: Vec<&str> = m.content.iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "Messaging",
                "Message-ID",
                "Message-Type",
                "Client-Message-ID",
                "Relationship-Type",
                "Is-Active",
                "Original-Arrival-Time",
                "Skype-Age",
                "Content-Type",
                "Content-Length"
            ]
        );
        assert_eq!(m.content.get("Message-ID").unwrap(), id.to_string());
        assert!(m
            .content
            .get("Original-Arrival-Time")
            .unwrap()
            .ends_with('Z'));
        assert_eq!(m.body, b"hi <b>&</b>");
    }
    for c in [&a1, &a2, &b1, &b2] {
        assert_conformant(c);
    }
    let stored = t
        .server()
        .state()
        .storage
        .conversation_messages(&conversation_key("8:alice", "8:bob"))
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].message_id, id);
}

#[tokio::test]
async fn forged_from_is_rewritten_and_retries_are_stored_once() {
    let t = TestServer::start().await;
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
    let f = b.wait_for(WAIT, |f| f.cmd == "SDG").await.unwrap();
    let (_, got) = FormattedMessage::parse_payload(&f.payload).unwrap();
    assert!(got.from().unwrap().starts_with("8:alice;epid={"));
    // The retry is not delivered a second time.
    assert!(b
        .wait_for(Duration::from_millis(300), |f| f.cmd == "SDG")
        .await
        .is_err());
    let stored = t
        .server()
        .state()
        .storage
        .conversation_messages(&conversation_key("8:alice", "8:bob"))
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
}

#[tokio::test]
async fn typing_is_relayed_not_stored_and_unknown_recipient_gets_201() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    t.add_user("bob").await;
    let a = t.signed_in("alice").await;
    let mut b = t.signed_in("bob").await;
    let mut m = FormattedMessage::new("8:bob", "8:alice", ("Messaging", "2.0"), Vec::new());
    m.content.push("Message-Type", "Control/Typing");
    expect_ok(
        a.request("SDG", "MSGR", m.to_payload(&Headers::new()))
            .await
            .unwrap(),
    )
    .unwrap();
    let f = b.wait_for(WAIT, |f| f.cmd == "SDG").await.unwrap();
    let (_, got) = FormattedMessage::parse_payload(&f.payload).unwrap();
    assert_eq!(got.message_type(), Some("Control/Typing"));
    let stored = t
        .server()
        .state()
        .storage
        .conversation_messages(&conversation_key("8:alice", "8:bob"))
        .await
        .unwrap();
    assert!(stored.is_empty());

    let r = a.send_text("8:nobody", "hello?").await.unwrap();
    assert_eq!(r.cmd, "201");
    assert_eq!(r.target, "MSGR");
    assert_conformant(&b);
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
    assert!(b
        .wait_for(Duration::from_millis(300), |f| f.cmd == "SDG")
        .await
        .is_err());
    let stored = t
        .server()
        .state()
        .storage
        .conversation_messages(&conversation_key("8:alice", "8:bob"))
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
}
