//! The remaining commands of the seed page (§8) and the BND challenge (§2.4) over real sockets:
//! what they answer, what they store, and that unknown commands and targets get 240 in every state.

mod common;

use common::*;
use msnp24_client::{expect_ok, new_epid};
use msnp24_proto::challenge::challenge_response;
use msnp24_proto::xml::bind::MsgrResponse;
use msnp24_proto::xml::misc::Challenge;
use msnp24_proto::{Frame, Payload};
use msnp24_server::storage::SettingScope;

fn reply_summary(f: &Frame) -> String {
    format!("{} {} {}", f.cmd, f.trid, f.target)
}

#[tokio::test]
async fn partners_options_networks_are_acknowledged_and_stored() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    let c = t.signed_in("alice").await;
    let seed_options = "<options>\n  <pwrmode>1</pwrmode>\n  <deliveryConfirmation>true</deliveryConfirmation>\n  <batchtimeout>10</batchtimeout>\n</options>";
    for (target, body) in [
        ("MSGR\\PARTNERS", "<partners><type>ABCH</type></partners>"),
        ("MSGR\\OPTIONS", "<options><pwrmode>0</pwrmode></options>"),
        ("MSGR\\OPTIONS", seed_options),
        (
            "MSGR\\NETWORKS",
            "<networks><network>fb</network></networks>",
        ),
    ] {
        let r = c.request("PUT", target, c.payload(body)).await.unwrap();
        let r = expect_ok(r).unwrap();
        assert_eq!(r.cmd, "PUT");
        assert_eq!(r.target, "MSGR", "§0.2: only the first part of the target");
    }
    let settings = t.server().state().storage.settings().await.unwrap();
    let epid = format!("{{{}}}", c.epid);
    let rows: Vec<(String, SettingScope, String, String)> = settings
        .into_iter()
        .map(|s| (s.account, s.scope, s.kind, s.value))
        .collect();
    assert_eq!(
        rows,
        [
            ("8:alice".to_string(), SettingScope::Account, "networks".to_string(), "<networks><network>fb</network></networks>".to_string()),
            ("8:alice".to_string(), SettingScope::Endpoint(epid.clone()), "options".to_string(), "<options><pwrmode>1</pwrmode><deliveryConfirmation>true</deliveryConfirmation><batchtimeout>10</batchtimeout></options>".to_string()),
            ("8:alice".to_string(), SettingScope::Endpoint(epid), "partners".to_string(), "<partners><type>ABCH</type></partners>".to_string()),
        ]
    );
    assert_conformant(&c);
}

#[tokio::test]
async fn spam_reports_are_stored_with_reporter_and_time() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    let c = t.signed_in("alice").await;
    let before = time::OffsetDateTime::now_utc().unix_timestamp();
    for body in [
        "<reportspam><alias>8:bob</alias></reportspam>",
        "<reportspam>\n  <alias>{wluid}</alias>\n</reportspam>",
        "<reportspam/>",
    ] {
        expect_ok(
            c.request("PUT", "MSGR\\REPORTSPAM", c.payload(body))
                .await
                .unwrap(),
        )
        .unwrap();
    }
    let many = format!(
        "<reportspam>{}</reportspam>",
        "<alias>8:x</alias>".repeat(51)
    );
    let r = c
        .request("PUT", "MSGR\\REPORTSPAM", c.payload(many))
        .await
        .unwrap();
    assert_eq!(r.cmd, "201");
    let reports = t.server().state().storage.spam_reports().await.unwrap();
    let got: Vec<(&str, &str)> = reports
        .iter()
        .map(|r| (r.reporter.as_str(), r.reported.as_str()))
        .collect();
    assert_eq!(got, [("8:alice", "8:bob"), ("8:alice", "{wluid}")]);
    for r in &reports {
        assert_eq!(r.reporter_epid, format!("{{{}}}", c.epid));
        assert!(r.reported_at >= before && r.reported_at <= before + 60);
    }
    expect_ok(c.ping().await.unwrap()).unwrap();
    assert_conformant(&c);
}

#[tokio::test]
async fn unknown_commands_and_targets_get_240_in_every_state() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    let token = t.token("alice").await;

    // Before ATH the reference's rule (§2) wins: anything but CNT, ATH, PNG, OUT is 911.
    let c = t.connect().await;
    for (cmd, target) in [("FOO", "CON"), ("PUT", "MSGR\\NOPE"), ("PNG", "MSGR")] {
        let r = c.request(cmd, target, b"\r\n".to_vec()).await.unwrap();
        let expect = if cmd == "PNG" { "240" } else { "911" };
        assert_eq!(r.cmd, expect, "{cmd} {target} before ATH");
    }

    let unknown: [(&str, &str); 10] = [
        ("FOO", "CON"),
        ("XFR", "CON"),
        ("CNT", "MSGR"),
        ("PUT", "CON\\USER"),
        ("GET", "CON\\NOPE"),
        ("PUT", "MSGR\\NOPE"),
        ("GET", "MSGR\\PARTNERS"),
        ("DEL", "MSGR\\REPORTSPAM"),
        ("NFY", "MSGR\\PUT"),
        ("200", "MSGR"),
    ];
    // Bound: every unknown shape is 240 and the connection stays usable.
    let mut c = t.connect().await;
    let replies = c.handshake(&token, &new_epid(), 2).await.unwrap();
    for r in &replies {
        expect_ok(r.clone()).unwrap();
    }
    for (cmd, target) in unknown {
        let r = c.request(cmd, target, c.payload(Vec::new())).await.unwrap();
        assert_eq!(
            r.cmd,
            "240",
            "{cmd} {target} when bound: {}",
            reply_summary(&r)
        );
        assert_eq!(r.target, target.split('\\').next().unwrap());
    }
    expect_ok(c.ping().await.unwrap()).unwrap();
    assert_conformant(&c);

    // Authenticated but not bound: unknown CON commands are 240, MSGR ones 911 (not bound yet).
    let c = t.connect().await;
    let ath = msnp24_proto::xml::auth::AuthUser {
        ssl_compact_ticket: Some(format!("t={token}")),
        ..Default::default()
    };
    expect_ok(
        c.request("ATH", "CON\\USER", Payload::body(ath.to_xml()).encode())
            .await
            .unwrap(),
    )
    .unwrap();
    for (cmd, target) in unknown {
        let r = c.request(cmd, target, b"\r\n".to_vec()).await.unwrap();
        // CNT is allowed in any state, so `CNT MSGR` reaches the dispatcher and is unknown.
        let expect = if target.starts_with("MSGR") && cmd != "CNT" {
            "911"
        } else {
            "240"
        };
        assert_eq!(r.cmd, expect, "{cmd} {target} before BND");
    }
    assert_conformant(&c);
}

fn nonce_of(bnd: &Frame) -> Option<String> {
    let p = Payload::parse(&bnd.payload).unwrap();
    MsgrResponse::parse(&p.body).unwrap().nonce
}

fn answer(nonce: &str, app_id: &str, key: &str) -> Vec<u8> {
    Challenge {
        app_id: app_id.to_string(),
        response: challenge_response(nonce, app_id, key),
    }
    .to_xml()
    .into_bytes()
}

#[tokio::test]
async fn challenge_is_off_by_default_and_an_unprompted_answer_is_acknowledged() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    let token = t.token("alice").await;
    let mut c = t.connect().await;
    let [_, _, bnd] = c.handshake(&token, &new_epid(), 2).await.unwrap();
    assert_eq!(nonce_of(&bnd), None, "§0.8: no nonce unless switched on");
    let body = answer("whatever", "PROD0090YUAUV{2B", "YMM8C_H7KCQ2S_KL");
    expect_ok(
        c.request("PUT", "MSGR\\CHALLENGE", c.payload(body))
            .await
            .unwrap(),
    )
    .unwrap();
    expect_ok(c.ping().await.unwrap()).unwrap();
    assert_conformant(&c);
}

#[tokio::test]
async fn challenge_must_be_answered_before_other_msgr_commands() {
    let t = TestServer::start_with(|c| {
        c.challenges.enabled = true;
        c.challenges
            .products
            .insert("PRODTEST".to_string(), "SECRETKEY".to_string());
    })
    .await;
    t.add_user("alice").await;
    let token = t.token("alice").await;

    for (app_id, key) in [
        ("PROD0090YUAUV{2B", "YMM8C_H7KCQ2S_KL"),
        ("PROD0120PW!CCV9@", "C1BX{V4W}Q3*10SM"),
        ("PRODTEST", "SECRETKEY"),
    ] {
        let mut c = t.connect().await;
        let [_, _, bnd] = c.handshake(&token, &new_epid(), 2).await.unwrap();
        let nonce = nonce_of(&bnd).expect("a nonce when challenges are on");
        assert!(
            nonce.len() == 20 && nonce.bytes().all(|b| b.is_ascii_digit()),
            "{nonce}"
        );
        // Before the answer: MSGR commands are refused (the connection stays), CON ones served.
        let sub = b"<subscribe><presence><buddies><all /></buddies></presence><messaging>2</messaging></subscribe>";
        let r = c
            .request("PUT", "MSGR\\SUBSCRIPTIONS", c.payload(&sub[..]))
            .await
            .unwrap();
        assert_eq!(r.cmd, "911");
        expect_ok(c.ping().await.unwrap()).unwrap();
        let r = c
            .request(
                "PUT",
                "MSGR\\CHALLENGE",
                c.payload(answer(&nonce, app_id, key)),
            )
            .await
            .unwrap();
        assert_eq!(
            reply_summary(&expect_ok(r).unwrap()),
            format!("PUT {} MSGR", 6)
        );
        let r = c
            .request("PUT", "MSGR\\SUBSCRIPTIONS", c.payload(&sub[..]))
            .await
            .unwrap();
        expect_ok(r).unwrap();
        assert_conformant(&c);
    }
}

#[tokio::test]
async fn wrong_challenge_answers_get_911_and_a_close() {
    let t = TestServer::start_with(|c| c.challenges.enabled = true).await;
    t.add_user("alice").await;
    let token = t.token("alice").await;
    for (what, make) in [
        (
            "wrong digest",
            Box::new(|n: &str| {
                let mut b = answer(n, "PROD0090YUAUV{2B", "YMM8C_H7KCQ2S_KL");
                // Flip one hex digit of the response.
                let at = b.windows(10).position(|w| w == b"<response>").unwrap() + 10;
                b[at] = if b[at] == b'0' { b'1' } else { b'0' };
                b
            }) as Box<dyn Fn(&str) -> Vec<u8>>,
        ),
        (
            "other nonce",
            Box::new(|_: &str| {
                answer(
                    "12345678901234567890",
                    "PROD0090YUAUV{2B",
                    "YMM8C_H7KCQ2S_KL",
                )
            }),
        ),
        (
            "unknown product",
            Box::new(|n: &str| answer(n, "PRODNOPE", "YMM8C_H7KCQ2S_KL")),
        ),
    ] {
        let mut c = t.connect().await;
        let [_, _, bnd] = c.handshake(&token, &new_epid(), 2).await.unwrap();
        let nonce = nonce_of(&bnd).unwrap();
        let r = c
            .request("PUT", "MSGR\\CHALLENGE", c.payload(make(&nonce)))
            .await
            .unwrap();
        assert_eq!(reply_summary(&r), "911 4 MSGR", "{what}");
        assert_eq!(
            c.next_event_timeout(WAIT).await.unwrap(),
            None,
            "{what}: the connection is closed"
        );
    }
    // A malformed answer is a syntax error like any other bad body, and the challenge stays open.
    let mut c = t.connect().await;
    let [_, _, bnd] = c.handshake(&token, &new_epid(), 2).await.unwrap();
    let nonce = nonce_of(&bnd).unwrap();
    let r = c
        .request("PUT", "MSGR\\CHALLENGE", c.payload("<challenge/>"))
        .await
        .unwrap();
    assert_eq!(r.cmd, "200");
    let good = answer(&nonce, "PROD0090YUAUV{2B", "YMM8C_H7KCQ2S_KL");
    expect_ok(
        c.request("PUT", "MSGR\\CHALLENGE", c.payload(good))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_conformant(&c);
}
