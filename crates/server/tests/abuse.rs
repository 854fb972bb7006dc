//! What a signed-in user could make the server hold or send, over real sockets: presence
//! documents grown by publication, presence queries that repeat a contact, and replies and
//! notifications past the frame limit. Each test is an attack that worked before its bound.

mod common;

use common::*;
use msnp24_client::{expect_ok, Client, Event};
use msnp24_proto::xml::contacts::{ContactEntry, ContactList};
use msnp24_proto::xml::presence_doc::{ServiceDoc, UserDoc};
use msnp24_proto::xml::presence_query::{PresenceQuery, PresenceResponse};
use msnp24_proto::{AccountName, FormattedMessage, Frame};
use msnp24_server::commands::contacts::MAX_LISTED;
use msnp24_server::presence::{MAX_DOCUMENT_BYTES, MAX_SERVICES};
use msnp24_server::storage::list_bits::{ALLOW, FORWARD};
use msnp24_server::storage::ContactUpdate;

fn name(n: &str) -> AccountName {
    AccountName::parse(n).unwrap()
}

/// Creates the accounts (one password hash for all, no HTTP login: argon2 would dominate).
async fn accounts(t: &TestServer, names: &[&str]) {
    let hash = msnp24_server::accounts::hash_password(PASSWORD.to_string())
        .await
        .unwrap();
    for n in names {
        let storage = &t.server().state().storage;
        storage
            .create_account(&name(n), &hash, &hash)
            .await
            .unwrap();
    }
}

/// One signed-in connection of `who`, with a login token issued directly.
async fn connect(t: &TestServer, who: &str) -> Client {
    sign_in_many(t, &[name(who)]).await.pop().unwrap()
}

async fn contacts_of(t: &TestServer, who: &str) -> Vec<msnp24_server::storage::Contact> {
    t.server()
        .state()
        .storage
        .contacts(&name(who))
        .await
        .unwrap()
}

/// Makes `a` and `b` mutual contacts directly in storage.
async fn friends(t: &TestServer, a: &str, b: &str) {
    let both = FORWARD | ALLOW;
    let row = |o: &str, c: &str| ContactUpdate {
        owner: name(o),
        contact: name(c),
        set: both,
        clear: 0,
    };
    t.server()
        .state()
        .storage
        .update_contacts(&[row(a, b), row(b, a)])
        .await
        .unwrap();
}

fn is_presence_put(f: &Frame) -> bool {
    f.cmd == "NFY" && f.target == "MSGR\\PUT"
}

/// The `<user>` document of a presence notification.
fn document_of(f: &Frame) -> UserDoc {
    let (_, m) = FormattedMessage::parse_payload(&f.payload).unwrap();
    UserDoc::parse(&m.body).unwrap()
}

/// Every presence notification `c` receives up to the one whose mood is `mood`.
async fn presence_until_mood(c: &mut Client, mood: &str) -> Vec<Frame> {
    let mut seen = Vec::new();
    loop {
        let f = c.wait_for(WAIT, is_presence_put).await.unwrap_or_else(|e| {
            panic!("no notification with mood {mood} after {}: {e}", seen.len())
        });
        let done =
            matches!(Event::from_frame(&f), Event::Presence { mood: Some(m), .. } if m == mood);
        seen.push(f);
        if done {
            return seen;
        }
    }
}

/// A publication with one more service of `size` bytes of data.
fn service_doc(service: &str, field: &str, size: usize) -> UserDoc {
    let mut s = ServiceDoc::new(service);
    s.set_field_text(field, &"x".repeat(size));
    UserDoc {
        services: vec![s],
        endpoints: Vec::new(),
    }
}

#[tokio::test]
async fn presence_documents_stay_bounded_and_changes_still_arrive() {
    let t = TestServer::start().await;
    accounts(&t, &["alice", "bob"]).await;
    friends(&t, "alice", "bob").await;
    let a1 = connect(&t, "alice").await;
    let mut a2 = connect(&t, "alice").await;
    let mut bob = connect(&t, "bob").await;
    a1.set_presence("NLN", Some("start")).await.unwrap();
    presence_until_mood(&mut bob, "start").await;
    presence_until_mood(&mut a2, "start").await;

    // The attack: every publication adds a service of 1 KB, which used to be merged for good and
    // re-sent whole on every later change (300 KB per notification by the end).
    for i in 0..300 {
        a1.publish(&service_doc(&format!("X{i}"), "Data", 1000))
            .await
            .unwrap();
    }
    // A field grown past the document's size is not kept either, but the status still changes.
    a1.publish(&service_doc("PE", "PSM", 2 * MAX_DOCUMENT_BYTES))
        .await
        .unwrap();
    a1.set_presence("BSY", Some("final")).await.unwrap();

    let notice_limit = MAX_DOCUMENT_BYTES + 1024;
    for (who, c) in [("bob", &mut bob), ("alice's other endpoint", &mut a2)] {
        let seen = presence_until_mood(c, "final").await;
        let largest = seen.iter().map(|f| f.payload.len()).max().unwrap();
        assert!(
            largest <= notice_limit,
            "{who} got a {largest}-byte notification (limit {notice_limit})"
        );
        let last = document_of(seen.last().unwrap());
        assert_eq!(
            last.status(),
            Some("BSY"),
            "{who}: the status change arrived"
        );
        assert!(
            last.services.len() <= MAX_SERVICES,
            "{who}: {} services kept",
            last.services.len()
        );
        assert!(
            last.service("PE").is_none(),
            "the oversized field was dropped"
        );
        assert_conformant(c);
    }
    let answer = bob.get_presence(&["8:alice"]).await.unwrap();
    assert!(answer.entries[0].1.to_xml().len() <= MAX_DOCUMENT_BYTES);
}

#[tokio::test]
async fn presence_queries_answer_each_contact_once_within_the_frame_limit() {
    let t = TestServer::start().await;
    let names: Vec<String> = (0..5).map(|i| format!("friend{i}")).collect();
    accounts(&t, &["alice"]).await;
    accounts(&t, &names.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let alice = connect(&t, "alice").await;
    let mut friends_online = Vec::new();
    for n in &names {
        friends(&t, "alice", n).await;
        let c = connect(&t, n).await;
        c.set_presence("NLN", None).await.unwrap();
        // 30 KB of profile each: within the document cap, five of them past the frame limit.
        c.publish(&service_doc("PE", "PSM", 30_000)).await.unwrap();
        friends_online.push(c);
    }

    let ask = |contacts: Vec<String>| {
        let body = PresenceQuery { contacts }.to_xml();
        alice.request("GET", "MSGR\\PRESENCE", alice.payload(body))
    };
    // One contact asked a thousand times used to be answered a thousand times (30 MB).
    let reply = expect_ok(ask(vec!["8:friend0".to_string(); 1000]).await.unwrap()).unwrap();
    let answer = PresenceResponse::parse(&reply.parse_payload().unwrap().body).unwrap();
    assert_eq!(answer.entries.len(), 1, "each contact is answered once");
    assert!(answer.entries[0].1.service("PE").is_some());

    // Five documents of 30 KB do not fit one frame: the reply stops at the limit.
    let all: Vec<String> = names.iter().map(|n| format!("8:{n}")).collect();
    let reply = expect_ok(ask(all).await.unwrap()).unwrap();
    let limit = t.config.max_payload;
    assert!(
        reply.payload.len() <= limit,
        "a {}-byte reply (limit {limit})",
        reply.payload.len()
    );
    let answer = PresenceResponse::parse(&reply.parse_payload().unwrap().body).unwrap();
    assert_eq!(answer.entries.len(), 5, "every contact is listed");
    let with_documents = answer.entries.iter().filter(|(_, d)| !d.is_empty()).count();
    assert_eq!(with_documents, 4, "documents until the frame is full");
    assert!(answer.entries[4].1.is_empty());
    assert_conformant(&alice);
}

#[tokio::test]
async fn nothing_larger_than_the_frame_limit_is_sent() {
    let limit = 4096;
    let t = TestServer::start_with(|c| c.max_payload = limit).await;
    accounts(&t, &["alice", "bob"]).await;
    friends(&t, "alice", "bob").await;
    let alice = connect(&t, "alice").await;
    let mut bob = connect(&t, "bob").await;

    // A message that fits the limit on the way in but not once the server has added its headers:
    // stored and acknowledged, but not written to bob as a frame he could not read.
    let text = "y".repeat(limit - 400);
    expect_ok(alice.send_text("8:bob", &text).await.unwrap()).unwrap();
    expect_ok(alice.send_text("8:bob", "small").await.unwrap()).unwrap();
    let got = bob
        .wait_for(WAIT, |f| f.cmd == "SDG")
        .await
        .expect("the small message arrives");
    assert!(matches!(Event::from_frame(&got), Event::Message { text, .. } if text == "small"));

    // History that no longer fits one frame is refused rather than sent whole.
    let reply = bob
        .request("GET", "MSGR\\MESSAGESBYCONVERSATION", bob.payload(
            "<messagesbyconversation><id>8:alice</id><pagesize>10</pagesize></messagesbyconversation>",
        ))
        .await
        .unwrap();
    assert!(
        reply.payload.len() <= limit,
        "a {}-byte reply",
        reply.payload.len()
    );
    assert_eq!(reply.error_code(), Some(500));
    assert_conformant(&bob);
}

#[tokio::test]
async fn a_contact_list_command_is_capped_and_resolved_as_one_batch() {
    let t = TestServer::start().await;
    accounts(&t, &["alice"]).await;
    let pals = make_accounts(&t, "pal", 50).await;
    let alice = connect(&t, "alice").await;
    let list = |names: &[String]| {
        let ml = ContactList {
            list_bits: FORWARD,
            contacts: names
                .iter()
                .map(|n| ContactEntry {
                    name: n.clone(),
                    network: 8,
                    bits: FORWARD,
                    services: Vec::new(),
                })
                .collect(),
        };
        alice.request("PUT", "MSGR\\CONTACTS", alice.payload(ml.to_xml()))
    };

    // As many names as the cap allows, most of them no account: the accounts among them are added.
    let mut names: Vec<String> = (0..MAX_LISTED - pals.len())
        .map(|i| format!("nobody{i}"))
        .collect();
    names.extend(pals.iter().map(|p| p.as_str().to_string()));
    expect_ok(list(&names).await.unwrap()).unwrap();
    let kept = contacts_of(&t, "alice").await;
    assert_eq!(kept.len(), pals.len(), "only the accounts are kept");
    assert!(kept.iter().all(|c| c.bits & FORWARD != 0));

    // One name more is refused (201), and nothing of it is applied.
    names.push("pal9999".to_string());
    let refused = list(&names).await.unwrap();
    assert_eq!(
        refused.error_code(),
        Some(201),
        "{}",
        refused.payload_lossy()
    );
    let kept = contacts_of(&t, "alice").await;
    assert_eq!(kept.len(), pals.len());
    alice.ping().await.expect("the connection stays open");
    assert_conformant(&alice);
}

#[tokio::test]
async fn members_cannot_post_messages_typed_as_group_activity() {
    let t = TestServer::start().await;
    accounts(&t, &["alice", "bob"]).await;
    let mut alice = connect(&t, "alice").await;
    let bob = connect(&t, "bob").await;
    let thread = alice.create_thread(&["bob"], None).await.unwrap();
    let forge = |payload: Vec<u8>| bob.request("SDG", "MSGR", payload);

    // Another case of the activity prefix is still activity: only the thread posts it.
    let lower = bob.message_payload(&thread, "threadactivity/addmember", b"<addmember/>", None);
    let reply = forge(lower).await.unwrap();
    assert_eq!(reply.error_code(), Some(208), "{}", reply.payload_lossy());

    // A second Message-Type header behind a harmless first one is refused.
    let doubled = String::from_utf8(bob.message_payload(&thread, "Text", b"<addmember/>", None))
        .unwrap()
        .replace(
            "Message-Type: Text\r\n",
            "Message-Type: Text\r\nMessage-Type: ThreadActivity/AddMember\r\n",
        );
    let reply = forge(doubled.into_bytes()).await.unwrap();
    assert_eq!(reply.error_code(), Some(200), "{}", reply.payload_lossy());

    // Neither reached alice: the next message she gets from bob is his plain one.
    expect_ok(
        forge(bob.message_payload(&thread, "Text", b"plain", None))
            .await
            .unwrap(),
    )
    .unwrap();
    let got = alice
        .wait_for(WAIT, |f| {
            f.cmd == "SDG" && !matches!(Event::from_frame(f), Event::Message { from, .. } if from.starts_with("19:"))
        })
        .await
        .unwrap();
    assert!(
        matches!(Event::from_frame(&got), Event::Message { ref kind, ref text, .. } if kind == "Text" && text == "plain"),
        "{got:?}"
    );
    assert_conformant(&alice);
}

/// Rows of `table` in the server's SQLite file.
async fn rows_in(t: &TestServer, table: &str) -> i64 {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", t.config.database_path().display()))
        .await
        .unwrap();
    let n = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

#[tokio::test]
async fn one_account_cannot_fill_the_disk() {
    // The default burst, refilled slowly enough that the test's own pace does not matter.
    let t = TestServer::start_with(|c| c.write_rate.per_second = 0.01).await;
    accounts(&t, &["mallory"]).await;
    let mallory = connect(&t, "mallory").await;
    let burst = t.config.write_rate.burst as usize;

    // Spam reports as fast as the connection allows: past the account's write allowance they are
    // refused with 803 and not stored.
    let aliases: String = (0..50)
        .map(|i| format!("<alias>8:victim{i}</alias>"))
        .collect();
    let body = format!("<reportspam>{aliases}</reportspam>");
    let mut refused = 0;
    for _ in 0..burst + 100 {
        let reply = mallory
            .request("PUT", "MSGR\\REPORTSPAM", mallory.payload(body.clone()))
            .await
            .unwrap();
        match reply.error_code() {
            None => {}
            Some(803) => refused += 1,
            Some(code) => panic!("unexpected {code}"),
        }
    }
    assert!(refused >= 99, "only {refused} of {} refused", burst + 100);
    let stored = rows_in(&t, "spam_reports").await;
    assert!(
        stored <= ((burst + 1) * 50) as i64,
        "{stored} report rows for one account"
    );

    // ACKs of Ack-Ids the server never handed out are acknowledged and store nothing.
    for i in 0..200u64 {
        let reply = mallory.ack(&format!("{i:016X}")).await.unwrap();
        assert_eq!(reply.cmd, "ACK");
    }
    assert_eq!(rows_in(&t, "message_acks").await, 0);
    assert_conformant(&mallory);
}
