//! Contacts, subscriptions and presence across endpoints (§4): requests and answers, aggregation
//! over endpoints, invisible, idle, endpoints leaving cleanly or vanishing, blocking, direct
//! queries, and fan-out at 1,000 contacts. Every client's frames are checked against §0.

mod common;

use std::time::Duration;

use common::*;
use msnp24_client::{Client, Event};
use msnp24_proto::{AccountName, Frame};
use msnp24_server::storage::list_bits::{ALLOW, FORWARD, PENDING};
use msnp24_server::storage::ContactUpdate;

fn name(n: &str) -> AccountName {
    AccountName::parse(n).unwrap()
}

fn is_presence(f: &Frame) -> bool {
    f.cmd == "NFY" && (f.target == "MSGR\\PUT" || f.target == "MSGR\\DEL")
}

/// Signs in and publishes a status.
async fn online(t: &TestServer, who: &str, status: &str) -> Client {
    let c = t.signed_in(who).await;
    c.set_presence(status, None).await.unwrap();
    c
}

/// The next presence notification about `account` (`8:name`), skipping anything else.
async fn presence_about(c: &mut Client, account: &str) -> Event {
    let account = account.to_string();
    let f = c
        .wait_for(WAIT, |f| {
            is_presence(f) && matches!(Event::from_frame(f), Event::Presence { account: a, .. } | Event::Offline { account: a } if a == account)
        })
        .await
        .unwrap_or_else(|e| panic!("no presence about {account}: {e}"));
    Event::from_frame(&f)
}

/// Every presence notification received up to and including the first one `stop` accepts: with a
/// known last event as a barrier, tests count what came before it instead of waiting for silence.
async fn presence_until(c: &mut Client, stop: impl Fn(&Event) -> bool) -> Vec<Event> {
    let mut seen = Vec::new();
    loop {
        let f = c
            .wait_for(WAIT, is_presence)
            .await
            .unwrap_or_else(|e| panic!("barrier not reached after {seen:?}: {e}"));
        let e = Event::from_frame(&f);
        let done = stop(&e);
        seen.push(e);
        if done {
            return seen;
        }
    }
}

fn status_of(e: &Event) -> &str {
    match e {
        Event::Presence { status, .. } => status,
        Event::Offline { .. } => "offline",
        _ => "other",
    }
}

fn about(e: &Event, who: &str) -> bool {
    matches!(e, Event::Presence { account, .. } | Event::Offline { account } if account == who)
}

fn is_mood(e: &Event, account: &str, want: &str) -> bool {
    matches!(e, Event::Presence { account: a, mood: Some(m), .. } if a == account && m == want)
}

async fn contacts_of(t: &TestServer, who: &str) -> Vec<(String, u32)> {
    t.server()
        .state()
        .storage
        .contacts(&name(who))
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.name.as_str().to_string(), c.bits))
        .collect()
}

#[tokio::test]
async fn contact_request_accept_and_decline() {
    let t = TestServer::start().await;
    for n in ["alice", "bob", "carol", "dave"] {
        t.add_user(n).await;
    }
    let mut alice = online(&t, "alice", "NLN").await;
    let mut bob = online(&t, "bob", "NLN").await;
    let carol = online(&t, "carol", "NLN").await;

    // Alice adds bob: a request on bob's side, and nothing visible to either yet.
    alice.add_contact("bob").await.unwrap();
    let req = bob
        .wait_for(WAIT, |f| f.target == "MSGR\\CONTACTS")
        .await
        .unwrap();
    assert_eq!(first_line(&req), "NFY 0 MSGR\\CONTACTS 48");
    assert_eq!(
        req.payload,
        b"\r\n<ml l=\"8\"><skp><c n=\"alice\" t=\"8\"/></skp></ml>"
    );
    assert_eq!(contacts_of(&t, "bob").await, [("alice".into(), PENDING)]);
    assert_eq!(
        contacts_of(&t, "alice").await,
        [("bob".into(), FORWARD | ALLOW)]
    );
    let r = alice.get_presence(&["8:bob"]).await.unwrap();
    assert!(r.entries[0].1.is_empty(), "bob has not accepted yet");

    // Bob accepts by allowing alice (and watching her back): both see each other at once.
    bob.allow_contact("alice").await.unwrap();
    assert_eq!(status_of(&presence_about(&mut bob, "8:alice").await), "NLN");
    assert_eq!(status_of(&presence_about(&mut alice, "8:bob").await), "NLN");
    assert_eq!(
        contacts_of(&t, "bob").await,
        [("alice".into(), FORWARD | ALLOW)]
    );

    // Carol asks too; bob declines: the pending bit is gone, carol sees nothing.
    carol.add_contact("bob").await.unwrap();
    let req = bob
        .wait_for(WAIT, |f| f.target == "MSGR\\CONTACTS")
        .await
        .unwrap();
    assert_eq!(
        Event::from_frame(&req),
        Event::ContactRequests {
            from: vec!["carol".into()]
        }
    );
    bob.decline_contact("carol").await.unwrap();
    assert_eq!(
        contacts_of(&t, "bob").await,
        [("alice".into(), FORWARD | ALLOW)]
    );
    assert!(carol.get_presence(&["8:bob"]).await.unwrap().entries[0]
        .1
        .is_empty());
    // Carol's client re-sends its list at sign-in: a declined request is not asked again. Alice's
    // mood change is the barrier; nothing about contacts arrives before it.
    carol.add_contact("bob").await.unwrap();
    alice.set_presence("NLN", Some("barrier")).await.unwrap();
    let f = bob
        .wait_for(WAIT, |f| f.target == "MSGR\\CONTACTS" || is_presence(f))
        .await
        .unwrap();
    assert!(is_mood(&Event::from_frame(&f), "8:alice", "barrier"));

    // Names that are not accounts, and `1:` names without an alias, are kept in no list.
    alice.add_contact("nobody").await.unwrap();
    let ml = b"<ml l=\"1\"><d n=\"example.com\"><c n=\"dave\" t=\"1\"><s l=\"3\" n=\"IM\"/></c></d></ml>";
    msnp24_client::expect_ok(
        alice
            .request("PUT", "MSGR\\CONTACTS", alice.payload(ml.to_vec()))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        contacts_of(&t, "alice").await,
        [("bob".into(), FORWARD | ALLOW)]
    );

    // A request to someone offline waits for them: it comes with their presence subscription.
    alice.add_contact("dave").await.unwrap();
    let mut dave = t.signed_in("dave").await;
    let req = dave
        .wait_for(WAIT, |f| f.target == "MSGR\\CONTACTS")
        .await
        .unwrap();
    assert_eq!(
        Event::from_frame(&req),
        Event::ContactRequests {
            from: vec!["alice".into()]
        }
    );
    // Removing someone whose answer is still pending withdraws the request.
    carol.add_contact("dave").await.unwrap();
    assert!(contacts_of(&t, "dave")
        .await
        .contains(&("carol".into(), PENDING)));
    carol.remove_contact("dave").await.unwrap();
    assert_eq!(contacts_of(&t, "dave").await, [("alice".into(), PENDING)]);
    for c in [&alice, &bob, &carol, &dave] {
        assert_conformant(c);
    }
}

#[tokio::test]
async fn bare_and_foreign_publications() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    t.add_user("bob").await;
    friends(&t, "alice", "bob").await;
    let mut bob = online(&t, "bob", "NLN").await;
    let alice = t.signed_in("alice").await;
    let bare = b"<user><s n=\"IM\"><Status>BSY</Status></s><sep n=\"IM\" epid=\"{forged}\"><Capabilities>0:1</Capabilities></sep></user>";
    let reply = alice
        .request("PUT", "MSGR\\PRESENCE", alice.payload(bare.to_vec()))
        .await
        .unwrap();
    assert_eq!(reply.error_code(), None);
    let f = bob.wait_for(WAIT, is_presence).await.unwrap();
    let (_, m) = msnp24_proto::FormattedMessage::parse_payload(&f.payload).unwrap();
    let doc = msnp24_proto::xml::presence_doc::UserDoc::parse(&m.body).unwrap();
    assert_eq!(doc.status(), Some("BSY"));
    assert_eq!(
        doc.endpoints[0].epid,
        format!("{{{}}}", alice.epid),
        "epid is the publisher's"
    );

    let other = alice
        .request("PUT", "MSGR\\PRESENCE", alice.payload(b"<other/>".to_vec()))
        .await
        .unwrap();
    assert_eq!(other.error_code(), None, "another document is acknowledged");
    let broken = alice
        .request(
            "PUT",
            "MSGR\\PRESENCE",
            alice.payload(b"<user><s>".to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(broken.error_code(), Some(200));
    for c in [&alice, &bob] {
        assert_conformant(c);
    }
}

#[tokio::test]
async fn three_endpoints_show_one_aggregate_status() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    t.add_user("bob").await;
    friends(&t, "alice", "bob").await;
    let mut bob = online(&t, "bob", "NLN").await;
    let mut e1 = online(&t, "alice", "AWY").await;
    assert_eq!(status_of(&presence_about(&mut bob, "8:alice").await), "AWY");
    let e2 = online(&t, "alice", "PHN").await;
    assert_eq!(status_of(&presence_about(&mut bob, "8:alice").await), "BSY");
    let e3 = online(&t, "alice", "NLN").await;
    let f = bob
        .wait_for(WAIT, |f| f.target == "MSGR\\PUT")
        .await
        .unwrap();
    let (_, m) = msnp24_proto::FormattedMessage::parse_payload(&f.payload).unwrap();
    assert_eq!(
        m.from().unwrap(),
        e3.address(),
        "From names the endpoint that changed"
    );
    assert_eq!(m.content.get("NotifType"), Some("Full"));
    let body = String::from_utf8(m.body).unwrap();
    assert_eq!(body.matches("<Status>").count(), 1, "{body}");
    assert!(
        body.starts_with("<user><s n=\"IM\"><Status>NLN</Status></s>"),
        "{body}"
    );
    assert_eq!(body.matches("<sep n=\"IM\"").count(), 3, "{body}");

    // The most available endpoint goes invisible: busy is next; its <sep> leaves the document.
    e3.set_presence("HDN", None).await.unwrap();
    match presence_about(&mut bob, "8:alice").await {
        Event::Presence {
            status, endpoints, ..
        } => assert_eq!((status.as_str(), endpoints), ("BSY", 2)),
        other => panic!("{other:?}"),
    }
    // A mood from one endpoint is the account's; the aggregate is unchanged.
    e2.set_presence("PHN", Some("at work")).await.unwrap();
    let e = presence_about(&mut bob, "8:alice").await;
    assert!(is_mood(&e, "8:alice", "at work"), "{e:?}");
    assert_eq!(status_of(&e), "BSY");

    // The account's own other endpoint followed every change with one status each time (its
    // first notification is bob's, from its own presence subscription).
    let own = presence_until(&mut e1, |e| is_mood(e, "8:alice", "at work")).await;
    let own: Vec<&str> = own
        .iter()
        .filter(|e| about(e, "8:alice"))
        .map(status_of)
        .collect();
    assert_eq!(own, ["BSY", "NLN", "BSY", "BSY"]);
    for c in [&bob, &e1, &e2, &e3] {
        assert_conformant(c);
    }
}

#[tokio::test]
async fn hidden_is_offline_to_others_and_hdn_to_itself() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    t.add_user("bob").await;
    friends(&t, "alice", "bob").await;
    let mut bob = online(&t, "bob", "NLN").await;
    let e1 = online(&t, "alice", "NLN").await;
    assert_eq!(status_of(&presence_about(&mut bob, "8:alice").await), "NLN");
    let mut e2 = online(&t, "alice", "HDN").await;

    e1.set_presence("HDN", None).await.unwrap();
    assert_eq!(
        status_of(&presence_about(&mut bob, "8:alice").await),
        "offline"
    );
    assert!(bob.get_presence(&["8:alice"]).await.unwrap().entries[0]
        .1
        .is_empty());
    // Alice's other endpoint sees her as HDN (and only it may); before that, her own snapshot.
    let own = presence_until(&mut e2, |e| status_of(e) == "HDN").await;
    let own: Vec<&str> = own
        .iter()
        .filter(|e| about(e, "8:alice"))
        .map(status_of)
        .collect();
    assert_eq!(own, ["NLN", "HDN"]);

    e1.set_presence("NLN", None).await.unwrap();
    assert_eq!(status_of(&presence_about(&mut bob, "8:alice").await), "NLN");
    for c in [&bob, &e1, &e2] {
        assert_conformant(c);
    }
}

#[tokio::test]
async fn idle_and_old_statuses_show_as_away() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    t.add_user("bob").await;
    friends(&t, "alice", "bob").await;
    let mut bob = online(&t, "bob", "NLN").await;
    let alice = online(&t, "alice", "NLN").await;
    assert_eq!(status_of(&presence_about(&mut bob, "8:alice").await), "NLN");

    for (published, seen) in [
        ("IDL", "AWY"),
        ("NLN", "NLN"),
        ("BRB", "AWY"),
        ("NLN", "NLN"),
        ("LUN", "AWY"),
    ] {
        alice.set_presence(published, None).await.unwrap();
        assert_eq!(
            status_of(&presence_about(&mut bob, "8:alice").await),
            seen,
            "{published}"
        );
    }
    alice.set_presence("NLN", None).await.unwrap();
    assert_eq!(status_of(&presence_about(&mut bob, "8:alice").await), "NLN");

    // Screensaver on, then back at the machine.
    alice.set_active(0).await.unwrap();
    assert_eq!(status_of(&presence_about(&mut bob, "8:alice").await), "AWY");
    alice.set_active(135).await.unwrap();
    assert_eq!(status_of(&presence_about(&mut bob, "8:alice").await), "NLN");

    // Busy stays busy when idle: no change is sent, so the next one bob sees is the barrier.
    alice.set_presence("BSY", None).await.unwrap();
    assert_eq!(status_of(&presence_about(&mut bob, "8:alice").await), "BSY");
    alice.set_active(0).await.unwrap();
    alice.set_presence("BSY", Some("barrier")).await.unwrap();
    let seen = presence_until(&mut bob, |e| is_mood(e, "8:alice", "barrier")).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(status_of(&seen[0]), "BSY");

    // An active period that runs out makes the endpoint idle on its own.
    alice.set_active(135).await.unwrap();
    alice.set_presence("NLN", None).await.unwrap();
    alice.set_active(1).await.unwrap();
    let seen = presence_until(&mut bob, |e| status_of(e) == "AWY").await;
    assert_eq!(
        seen.iter().map(status_of).collect::<Vec<_>>(),
        ["NLN", "AWY"]
    );
    for c in [&bob, &alice] {
        assert_conformant(c);
    }
}

#[tokio::test]
async fn one_endpoint_of_two_leaving_is_a_put_and_the_last_a_del() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    t.add_user("bob").await;
    friends(&t, "alice", "bob").await;
    let mut bob = online(&t, "bob", "NLN").await;
    let e1 = online(&t, "alice", "NLN").await;
    let e2 = online(&t, "alice", "BSY").await;
    let seen = presence_until(&mut bob, |e| {
        matches!(e, Event::Presence { endpoints: 2, .. })
    })
    .await;
    assert!(seen.iter().all(|e| status_of(e) == "NLN"));

    e1.sign_out().await.unwrap();
    let e = presence_about(&mut bob, "8:alice").await;
    match &e {
        Event::Presence {
            status, endpoints, ..
        } => assert_eq!((status.as_str(), *endpoints), ("BSY", 1)),
        other => panic!("one endpoint leaving must not be a DEL: {other:?}"),
    }
    e2.sign_out().await.unwrap();
    assert_eq!(
        status_of(&presence_about(&mut bob, "8:alice").await),
        "offline"
    );
    assert!(bob.get_presence(&["8:alice"]).await.unwrap().entries[0]
        .1
        .is_empty());
    for c in [&bob, &e1, &e2] {
        assert_conformant(c);
    }
}

#[tokio::test]
async fn abrupt_disconnect_goes_offline_after_the_keepalive() {
    let t = TestServer::start_with(|c| c.presence_keepalive_secs = 2).await;
    t.add_user("alice").await;
    t.add_user("bob").await;
    friends(&t, "alice", "bob").await;
    let mut bob = online(&t, "bob", "NLN").await;
    let alice = online(&t, "alice", "NLN").await;
    assert_eq!(status_of(&presence_about(&mut bob, "8:alice").await), "NLN");

    alice.drop_connection().await.unwrap();
    // The server notices at once (the endpoint leaves the router)…
    let router = &t.server().state().router;
    for _ in 0..500 {
        if router.endpoints(&name("alice")).await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(router.endpoints(&name("alice")).await.is_empty());
    // …yet alice stays present while the keep-alive runs, then goes offline with nothing between.
    let r = bob.get_presence(&["8:alice"]).await.unwrap();
    assert_eq!(
        r.entries[0].1.status(),
        Some("NLN"),
        "dropped endpoint lingers"
    );
    let seen = presence_until(&mut bob, |e| status_of(e) == "offline").await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    for c in [&bob, &alice] {
        assert_conformant(c);
    }
}

#[tokio::test]
async fn rebinding_the_same_epid_takes_over_and_out_is_immediate() {
    // A keep-alive far longer than the test: any offline seen here came from OUT, not a timeout.
    let t = TestServer::start_with(|c| c.presence_keepalive_secs = 600).await;
    t.add_user("alice").await;
    t.add_user("bob").await;
    friends(&t, "alice", "bob").await;
    let mut bob = online(&t, "bob", "NLN").await;
    let alice = online(&t, "alice", "NLN").await;
    assert_eq!(status_of(&presence_about(&mut bob, "8:alice").await), "NLN");

    // The network drops and the client comes back with the same epid: no flicker for bob.
    let epid = alice.epid.clone();
    alice.drop_connection().await.unwrap();
    let token = t.token("alice").await;
    let mut again = t.connect().await;
    again.login("alice", &token, &epid).await.unwrap();
    again.set_presence("NLN", Some("back")).await.unwrap();
    let seen = presence_until(&mut bob, |e| is_mood(e, "8:alice", "back")).await;
    assert_eq!(seen.len(), 1, "{seen:?}");

    again.sign_out().await.unwrap();
    assert_eq!(
        status_of(&presence_about(&mut bob, "8:alice").await),
        "offline"
    );
    for c in [&bob, &alice, &again] {
        assert_conformant(c);
    }
}

#[tokio::test]
async fn blocking_stops_presence_both_ways() {
    let t = TestServer::start().await;
    for n in ["alice", "bob", "carol"] {
        t.add_user(n).await;
    }
    friends(&t, "alice", "bob").await;
    friends(&t, "alice", "carol").await;
    let mut alice = online(&t, "alice", "NLN").await;
    let mut bob = online(&t, "bob", "NLN").await;
    let carol = online(&t, "carol", "NLN").await;
    assert_eq!(status_of(&presence_about(&mut alice, "8:bob").await), "NLN");
    assert_eq!(status_of(&presence_about(&mut bob, "8:alice").await), "NLN");

    alice.block_contact("bob").await.unwrap();
    assert_eq!(
        status_of(&presence_about(&mut bob, "8:alice").await),
        "offline"
    );
    assert_eq!(
        status_of(&presence_about(&mut alice, "8:bob").await),
        "offline"
    );
    let storage = &t.server().state().storage;
    assert!(storage
        .is_blocked(&name("alice"), &name("bob"))
        .await
        .unwrap());
    assert!(storage
        .is_blocked(&name("bob"), &name("alice"))
        .await
        .unwrap());
    assert!(!storage
        .is_blocked(&name("alice"), &name("carol"))
        .await
        .unwrap());

    // Bob's changes no longer reach alice; carol's change is the barrier.
    bob.set_presence("BSY", None).await.unwrap();
    carol.set_presence("AWY", None).await.unwrap();
    let seen = presence_until(
        &mut alice,
        |e| matches!(e, Event::Presence { account, .. } if account == "8:carol"),
    )
    .await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(bob.get_presence(&["8:alice"]).await.unwrap().entries[0]
        .1
        .is_empty());
    assert!(alice.get_presence(&["8:bob"]).await.unwrap().entries[0]
        .1
        .is_empty());

    alice.unblock_contact("bob").await.unwrap();
    assert_eq!(status_of(&presence_about(&mut bob, "8:alice").await), "NLN");
    assert_eq!(status_of(&presence_about(&mut alice, "8:bob").await), "BSY");
    for c in [&alice, &bob, &carol] {
        assert_conformant(c);
    }
}

#[tokio::test]
async fn get_presence_reveals_nothing_to_non_contacts_and_imonline_lists_endpoints() {
    let t = TestServer::start().await;
    for n in ["alice", "bob", "carol"] {
        t.add_user(n).await;
    }
    friends(&t, "alice", "carol").await;
    let alice = online(&t, "alice", "BSY").await;
    let alice2 = online(&t, "alice", "NLN").await;
    let bob = online(&t, "bob", "NLN").await;
    let carol = online(&t, "carol", "NLN").await;

    let asked = ["8:alice", "8:nobody", "4:+15550100", "1:alice@example.com"];
    let reply = msnp24_client::expect_ok(
        bob.request(
            "GET",
            "MSGR\\PRESENCE",
            bob.payload(
                msnp24_proto::xml::presence_query::PresenceQuery {
                    contacts: asked.iter().map(|s| s.to_string()).collect(),
                }
                .to_xml(),
            ),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    assert_eq!((reply.cmd.as_str(), reply.target.as_str()), ("GET", "MSGR"));
    let body = reply.parse_payload().unwrap().body;
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "<presence-response><from>8:alice</from><user/><from>8:nobody</from><user/><from>1:alice@example.com</from><user/></presence-response>"
    );

    let r = carol.get_presence(&["8:alice", "8:bob"]).await.unwrap();
    assert_eq!(r.entries[0].1.status(), Some("NLN"));
    assert_eq!(r.entries[0].1.endpoints.len(), 2);
    assert!(r.entries[1].1.is_empty());
    let own = alice.get_presence(&["8:alice"]).await.unwrap();
    assert_eq!(own.entries[0].1.status(), Some("NLN"));

    let online_now = alice.imonline().await.unwrap();
    let mut epids: Vec<String> = online_now
        .endpoints
        .iter()
        .map(|e| e.epid.clone())
        .collect();
    epids.sort();
    let mut want = vec![
        format!("{{{}}}", alice.epid),
        format!("{{{}}}", alice2.epid),
    ];
    want.sort();
    assert_eq!(epids, want);
    assert!(online_now
        .endpoints
        .iter()
        .all(|e| e.name == "msnp24-client"));
    for c in [&alice, &alice2, &bob, &carol] {
        assert_conformant(c);
    }
}

/// `n` accounts `u0000`… that are all mutual contacts of `star`, signed in with a presence
/// subscription and publishing `NLN`. Accounts and tokens are made directly (argon2 a thousand
/// times would dominate the test).
pub async fn crowd(t: &TestServer, star: &str, n: usize) -> Vec<Client> {
    let state = t.server().state().clone();
    let names = make_accounts(t, "u", n).await;
    let mut updates = Vec::new();
    for nm in &names {
        for (owner, contact) in [(nm, &name(star)), (&name(star), nm)] {
            updates.push(ContactUpdate {
                owner: owner.clone(),
                contact: contact.clone(),
                set: FORWARD | ALLOW,
                clear: 0,
            });
        }
    }
    state.storage.update_contacts(&updates).await.unwrap();
    let clients = sign_in_many(t, &names).await;
    for c in &clients {
        c.set_presence("NLN", None).await.unwrap();
    }
    clients
}

/// Waits until each client has received one presence notification about `account` with `status`.
pub async fn all_see(clients: Vec<Client>, account: &str, status: &str) -> (usize, Vec<Client>) {
    let mut set = tokio::task::JoinSet::new();
    for mut c in clients {
        let (account, status) = (account.to_string(), status.to_string());
        set.spawn(async move {
            let e = presence_about(&mut c, &account).await;
            (status_of(&e) == status, c)
        });
    }
    let mut seen = 0;
    let mut back = Vec::new();
    while let Some(r) = set.join_next().await {
        let (ok, c) = r.unwrap();
        seen += usize::from(ok);
        back.push(c);
    }
    (seen, back)
}

#[tokio::test]
async fn a_thousand_contacts_snapshot_and_fan_out() {
    const N: usize = 1000;
    // A thousand clients from one address: lift the per-address connection limit.
    let t = TestServer::start_with(|c| c.max_connections_per_ip = 0).await;
    t.add_user("star").await;
    let crowd = crowd(&t, "star", N).await;

    // Signing in (the client subscribes to presence) brings one full document per online contact.
    let mut star = t.signed_in("star").await;
    let mut snapshot = std::collections::BTreeSet::new();
    while snapshot.len() < N {
        let f = star.wait_for(WAIT, is_presence).await.unwrap();
        match Event::from_frame(&f) {
            Event::Presence {
                account, status, ..
            } if status == "NLN" => {
                assert!(snapshot.insert(account), "one notification per contact");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(snapshot.len(), N);

    // One change of star's reaches all thousand watchers, once each.
    star.set_presence("NLN", Some("hello, everyone"))
        .await
        .unwrap();
    let (seen, crowd) = all_see(crowd, "8:star", "NLN").await;
    assert_eq!(seen, N);
    assert_conformant(&star);
    for c in &crowd {
        assert_conformant(c);
    }
}

/// The fan-out figure of BENCHMARKS.md: `cargo test --release -p msnp24-server --test presence
/// -- --ignored --nocapture fan_out_speed`.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn fan_out_speed() {
    const N: usize = 1000;
    const ROUNDS: usize = 20;
    // A thousand clients from one address: lift the per-address connection limit.
    let t = TestServer::start_with(|c| c.max_connections_per_ip = 0).await;
    t.add_user("star").await;
    let mut crowd = crowd(&t, "star", N).await;
    let star = online(&t, "star", "NLN").await;
    let (seen, back) = all_see(crowd, "8:star", "NLN").await;
    assert_eq!(seen, N);
    crowd = back;
    let mut times = Vec::new();
    for round in 0..ROUNDS {
        let status = if round % 2 == 0 { "BSY" } else { "NLN" };
        let start = std::time::Instant::now();
        star.set_presence(status, None).await.unwrap();
        let (seen, back) = all_see(crowd, "8:star", status).await;
        times.push(start.elapsed());
        assert_eq!(seen, N);
        crowd = back;
    }
    times.sort();
    let median = times[ROUNDS / 2];
    println!(
        "presence fan-out to {N} watchers: median {:.1} ms, best {:.1} ms, worst {:.1} ms over {ROUNDS} changes ({:.0} notifications/s at the median)",
        median.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[ROUNDS - 1].as_secs_f64() * 1e3,
        N as f64 / median.as_secs_f64()
    );
}
