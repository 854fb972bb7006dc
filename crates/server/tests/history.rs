//! Conversations and history sync (§6): offline messages found by sync, paging that never repeats
//! or skips while messages keep arriving, tamper-evident states, conversation properties and
//! their notification, the exact XML of the responses.

mod common;

use std::collections::HashSet;

use common::*;
use msnp24_client::{expect_ok, Client};
use msnp24_proto::xml::conversations::{
    ConversationNotify, MessagesByConversation, MessagesByConversationResponse, RecentConversations,
};
use msnp24_proto::{Frame, Payload};

fn body(f: &Frame) -> String {
    String::from_utf8(Payload::parse(&f.payload).unwrap().body).unwrap()
}

fn message_id(reply: &Frame) -> u64 {
    msnp24_client::reply_message_id(reply).unwrap()
}

/// A raw `GET` whose reply is checked to be a success and returned as it came.
async fn get(c: &Client, target: &str, xml: String) -> Frame {
    let f = expect_ok(c.request("GET", target, c.payload(xml)).await.unwrap()).unwrap();
    assert_eq!((f.cmd.as_str(), f.target.as_str()), ("GET", "MSGR"));
    f
}

fn is_iso_ms(t: &str) -> bool {
    t.len() == 24 && t.ends_with('Z') && t.as_bytes()[10] == b'T' && t.as_bytes()[19] == b'.'
}

#[tokio::test]
async fn a_message_to_an_offline_account_is_found_by_sync_at_sign_in() {
    offline_message_found_by_sync(TestServer::start().await).await;
}

#[tokio::test]
async fn a_message_to_an_offline_account_is_found_by_sync_at_sign_in_on_postgres() {
    offline_message_found_by_sync(TestServer::start_postgres().await).await;
}

async fn offline_message_found_by_sync(t: TestServer) {
    t.add_user("alice").await;
    t.add_user("bob").await;
    let a = t.signed_in("alice").await;
    let reply = expect_ok(a.send_text("8:bob", "x < y & \"z\"").await.unwrap()).unwrap();
    let id = message_id(&reply);

    // Bob was never online; he signs in and syncs as a real client does.
    let b = t.signed_in("bob").await;
    let f = get(
        &b,
        "MSGR\\RECENTCONVERSATIONS",
        "<recentconversations><start>0</start><pagesize>100</pagesize></recentconversations>"
            .into(),
    )
    .await;
    let xml = body(&f);
    let epid = format!("{{{}}}", a.epid);
    let expected_prefix = format!(
        "<recentconversations-response><conversations><conversation><id>8:alice</id><version>{id}</version>\
         <properties/><options/><messages><message><messageid>{id}</messageid><originalarrivaltime>"
    );
    assert!(xml.starts_with(&expected_prefix), "{xml}");
    assert!(xml.contains(&format!(
        "<from>8:alice;epid={epid}</from><messagetype>Text</messagetype><content>x &lt; y &amp; \"z\"</content><clientmessageid>"
    )), "{xml}");
    assert!(
        xml.ends_with(
            "</message></messages></conversation></conversations></recentconversations-response>"
        ),
        "{xml}"
    );

    let recent = b.recent_conversations(&Default::default()).await.unwrap();
    let m = &recent.conversations[0].messages[0];
    assert!(is_iso_ms(&m.original_arrival_time));
    assert!(is_iso_ms(m.compose_time.as_deref().unwrap()));
    assert_eq!(m.content, "x < y & \"z\"");
    assert_eq!(recent.hasmore, None);

    let f = get(
        &b,
        "MSGR\\MESSAGESBYCONVERSATION",
        "<messagesbyconversation><id>8:alice</id><start>0</start><pagesize>100</pagesize></messagesbyconversation>".into(),
    )
    .await;
    let xml = body(&f);
    assert!(
        xml.starts_with("<messagesbyconversation-response><id>8:alice</id><hasmore>false</hasmore><messages><message>"),
        "{xml}"
    );
    let page = MessagesByConversationResponse::parse(xml.as_bytes()).unwrap();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].message_id, id);

    // The sender's own view holds its sent message too.
    let mine = a.history("8:bob", None, 10).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].from, format!("8:alice;epid={epid}"));
    // A start after the message leaves it out; GET MSGR\CONVERSATIONS finds the conversation.
    assert!(b
        .history("8:alice", Some(id + 1), 10)
        .await
        .unwrap()
        .is_empty());
    let convs = b
        .conversations(&["8:alice", "8:nobody", "bad"])
        .await
        .unwrap();
    assert_eq!(convs.conversations.len(), 1);
    assert_eq!(convs.conversations[0].messages[0].message_id, id);
    assert_conformant(&a);
    assert_conformant(&b);
}

/// Sends `count` messages alice → bob over `senders`, pipelined; returns their bodies.
async fn seed(senders: &[Client], count: usize) -> HashSet<String> {
    let mut bodies = HashSet::new();
    let mut waiting = Vec::new();
    for i in 0..count {
        let c = &senders[i % senders.len()];
        let text = format!("m{i}");
        let payload = c.message_payload("8:bob", "Text", text.as_bytes(), Some(&i.to_string()));
        waiting.push(c.send("SDG", "MSGR", payload).await.unwrap().1);
        bodies.insert(text);
    }
    for rx in waiting {
        expect_ok(rx.await.unwrap()).unwrap();
    }
    bodies
}

#[tokio::test]
async fn paging_1000_messages_by_7_returns_each_once_newest_first_while_new_ones_arrive() {
    let t = TestServer::start_with(|c| c.send_rate.per_second = 0.0).await;
    t.add_user("alice").await;
    t.add_user("bob").await;
    let mut senders = Vec::new();
    for _ in 0..4 {
        senders.push(t.signed_in("alice").await);
    }
    let seeded = seed(&senders, 1000).await;
    let b = t.signed_in("bob").await;

    let mut request = MessagesByConversation {
        id: "8:alice".into(),
        start: Some(0),
        pagesize: Some(7),
        messagessyncstate: None,
    };
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = b.messages_by_conversation(&request).await.unwrap();
        pages += 1;
        let len = page.messages.len();
        assert!(len <= 7);
        seen.extend(page.messages);
        // New messages keep arriving between pages, on both sides of the conversation.
        let text = format!("late{pages}");
        expect_ok(senders[pages % 4].send_text("8:bob", &text).await.unwrap()).unwrap();
        expect_ok(b.send_text("8:alice", &text).await.unwrap()).unwrap();
        match (page.hasmore, page.messagessyncstate) {
            (true, Some(state)) => {
                assert_eq!(len, 7, "only the last page is short");
                request.messagessyncstate = Some(state);
            }
            (false, None) => break,
            other => panic!("hasmore and state disagree: {other:?}"),
        }
    }
    assert_eq!(pages, 143);
    assert_eq!(seen.len(), 1000);
    assert!(
        seen.windows(2).all(|w| w[0].message_id > w[1].message_id),
        "newest first, never repeated"
    );
    let got: HashSet<String> = seen.iter().map(|m| m.content.clone()).collect();
    assert_eq!(got, seeded);
    // Within one sender's pipeline, later messages are newer.
    let order: Vec<usize> = seen
        .iter()
        .map(|m| m.client_message_id.as_deref().unwrap().parse().unwrap())
        .filter(|i: &usize| i % 4 == 1)
        .collect();
    assert!(order.windows(2).all(|w| w[0] > w[1]));

    // The late messages are all there on a fresh sync, newest first.
    let all = b.history("8:alice", None, 200).await.unwrap();
    assert_eq!(all.len(), 1000 + 2 * pages);
    assert!(all[0].content.starts_with("late"));
    for c in senders.iter().chain([&b]) {
        assert_conformant(c);
    }
}

#[tokio::test]
async fn sync_states_are_tamper_evident_and_pagesize_is_capped() {
    let t = TestServer::start_with(|c| c.send_rate.per_second = 0.0).await;
    t.add_user("alice").await;
    t.add_user("bob").await;
    t.add_user("carol").await;
    let a = t.signed_in("alice").await;
    let senders = [a];
    seed(&senders, 250).await;
    let [a] = senders;
    let b = t.signed_in("bob").await;
    let c = t.signed_in("carol").await;

    let first = b
        .messages_by_conversation(&MessagesByConversation {
            id: "8:alice".into(),
            pagesize: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(first.messages.len(), 200);
    assert!(first.hasmore);
    let state = first.messagessyncstate.clone().unwrap();
    let next = |id: &str, state: &str| MessagesByConversation {
        id: id.into(),
        pagesize: Some(100),
        messagessyncstate: Some(state.into()),
        ..Default::default()
    };
    let second = b
        .messages_by_conversation(&next("8:alice", &state))
        .await
        .unwrap();
    assert_eq!(second.messages.len(), 50);
    assert!(!second.hasmore);

    let mut forged = state.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    for (client, id, st) in [
        (&b, "8:alice", forged.as_str()),
        (&b, "8:alice", "not a state"),
        // A state is bound to its conversation and its account.
        (&b, "8:bob", state.as_str()),
        (&c, "8:alice", state.as_str()),
    ] {
        let r = client
            .request(
                "GET",
                "MSGR\\MESSAGESBYCONVERSATION",
                client.payload(next(id, st).to_xml()),
            )
            .await
            .unwrap();
        assert_eq!(
            (r.cmd.as_str(), r.target.as_str()),
            ("201", "MSGR"),
            "{id} {st}"
        );
    }
    let r = b
        .request(
            "GET",
            "MSGR\\RECENTCONVERSATIONS",
            b.payload("<recentconversations><syncstate>x</syncstate></recentconversations>"),
        )
        .await
        .unwrap();
    assert_eq!(r.cmd, "201");
    // A conversation the account does not have is simply empty.
    let empty = c.history("8:alice", None, 10).await.unwrap();
    assert!(empty.is_empty());
    assert_conformant(&a);
    assert_conformant(&b);
    assert_conformant(&c);
}

#[tokio::test]
async fn recent_conversations_are_most_recent_first_and_page_by_syncstate() {
    let t = TestServer::start().await;
    let names = ["bob", "carol", "dave", "erin", "frank"];
    t.add_user("alice").await;
    for n in names {
        t.add_user(n).await;
    }
    let a = t.signed_in("alice").await;
    let mut ids = Vec::new();
    for n in names {
        let r = expect_ok(a.send_text(&format!("8:{n}"), n).await.unwrap()).unwrap();
        ids.push(message_id(&r));
    }
    // An empty body asks for everything.
    let f = get(&a, "MSGR\\RECENTCONVERSATIONS", String::new()).await;
    assert!(body(&f).contains("<id>8:frank</id>"));

    let mut request = RecentConversations {
        start: None,
        pagesize: Some(2),
        syncstate: None,
    };
    let mut order = Vec::new();
    loop {
        let page = a.recent_conversations(&request).await.unwrap();
        for c in &page.conversations {
            assert_eq!(c.messages.len(), 1, "only the last message");
            assert_eq!(c.thread, None);
            order.push(c.id.clone());
        }
        match page.hasmore {
            Some(true) => request.syncstate = page.syncstate,
            _ => {
                assert_eq!(page.syncstate, None);
                break;
            }
        }
    }
    assert_eq!(order, ["8:frank", "8:erin", "8:dave", "8:carol", "8:bob"]);
    // `start` leaves out conversations quiet since then.
    let since = a
        .recent_conversations(&RecentConversations {
            start: Some(ids[3]),
            ..Default::default()
        })
        .await
        .unwrap();
    let since: Vec<&str> = since.conversations.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(since, ["8:frank", "8:erin"]);
    assert_conformant(&a);
}

#[tokio::test]
async fn consumption_horizon_reaches_the_accounts_other_endpoint() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    t.add_user("bob").await;
    let mut a1 = t.signed_in("alice").await;
    let mut a2 = t.signed_in("alice").await;
    let mut b = t.signed_in("bob").await;
    let id = message_id(&expect_ok(b.send_text("8:alice", "read me").await.unwrap()).unwrap());
    let horizon = format!("{id};{id};{}", 42);

    let reply = a1
        .request(
            "PUT",
            "MSGR\\CONVERSATION",
            a1.payload(format!(
                "<conversation><id>8:bob</id><properties><consumptionhorizon>{horizon}</consumptionhorizon></properties></conversation>"
            )),
        )
        .await
        .unwrap();
    assert_eq!(
        reply.to_bytes(),
        format!("PUT {} MSGR 2\r\n\r\n", reply.trid).into_bytes()
    );
    let nfy = a2
        .wait_for(WAIT, |f| f.cmd == "NFY" && f.target == "MSGR\\CONVERSATION")
        .await
        .unwrap();
    assert_eq!(nfy.trid, 0);
    assert!(nfy.payload.starts_with(b"\r\n<conversation>"));
    let n = ConversationNotify::parse(&Payload::parse(&nfy.payload).unwrap().body).unwrap();
    assert_eq!(n.id, "8:bob");
    assert!(n.version >= id);
    assert_eq!(
        n.properties,
        [("consumptionhorizon".to_string(), horizon.clone())]
    );

    // Neither the endpoint that set it nor bob is told: their next frames are the sentinels.
    expect_ok(b.send_text("8:alice", "sentinel").await.unwrap()).unwrap();
    let f = a1
        .wait_for(WAIT, |f| f.cmd == "SDG" || f.cmd == "NFY")
        .await
        .unwrap();
    assert_eq!(f.cmd, "SDG");
    expect_ok(a2.send_text("8:bob", "sentinel").await.unwrap()).unwrap();
    let f = b
        .wait_for(WAIT, |f| f.cmd == "SDG" || f.cmd == "NFY")
        .await
        .unwrap();
    assert_eq!(f.cmd, "SDG");

    // Sync echoes the property to alice only; a later change bumps the version.
    let mine = a2.conversations(&["8:bob"]).await.unwrap().conversations;
    assert_eq!(mine[0].properties, n.properties);
    let theirs = b.conversations(&["8:alice"]).await.unwrap().conversations;
    assert!(theirs[0].properties.is_empty());
    a2.set_conversation_properties("8:bob", &[("consumptionhorizon", "1;2;3")])
        .await
        .unwrap();
    let again = a1
        .wait_for(WAIT, |f| f.cmd == "NFY" && f.target == "MSGR\\CONVERSATION")
        .await
        .unwrap();
    let n2 = ConversationNotify::parse(&Payload::parse(&again.payload).unwrap().body).unwrap();
    assert!(n2.version > n.version);
    let recent = a1.recent_conversations(&Default::default()).await.unwrap();
    assert_eq!(
        recent.conversations[0].properties,
        [("consumptionhorizon".to_string(), "1;2;3".to_string())]
    );
    assert_eq!(recent.conversations[0].version, n2.version);

    // Properties for a conversation with no such account are acknowledged and not kept.
    a1.set_conversation_properties("8:nobody", &[("consumptionhorizon", "1;2;3")])
        .await
        .unwrap();
    assert!(a1
        .conversations(&["8:nobody"])
        .await
        .unwrap()
        .conversations
        .is_empty());
    for c in [&a1, &a2, &b] {
        assert_conformant(c);
    }
}

#[tokio::test]
async fn history_and_properties_survive_a_restart() {
    survive_a_restart(TestServer::start().await).await;
}

#[tokio::test]
async fn history_and_properties_survive_a_restart_on_postgres() {
    survive_a_restart(TestServer::start_postgres().await).await;
}

async fn survive_a_restart(mut t: TestServer) {
    t.add_user("alice").await;
    t.add_user("bob").await;
    let a = t.signed_in("alice").await;
    for i in 0..5 {
        expect_ok(
            a.send_text("8:bob", &format!("before restart {i}"))
                .await
                .unwrap(),
        )
        .unwrap();
    }
    a.set_conversation_properties("8:bob", &[("consumptionhorizon", "1;2;3")])
        .await
        .unwrap();
    drop(a);
    t.restart().await;
    let a = t.signed_in("alice").await;
    let b = t.signed_in("bob").await;
    let history = b.history("8:alice", None, 2).await.unwrap();
    let texts: Vec<&str> = history.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(
        texts,
        (0..5)
            .rev()
            .map(|i| format!("before restart {i}"))
            .collect::<Vec<_>>()
    );
    let mine = a.conversations(&["8:bob"]).await.unwrap().conversations;
    assert_eq!(mine[0].properties.len(), 1);
    assert_conformant(&a);
    assert_conformant(&b);
}
