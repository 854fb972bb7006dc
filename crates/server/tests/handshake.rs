//! The handshake of §2 over real sockets: HTTP login, pipelined CNT/ATH/BND, refusals, endpoint
//! replacement, keep-alives, sign-out, idle timeout, TLS and restarts.

mod common;

use std::time::Duration;

use common::*;
use msnp24_client::{expect_ok, new_epid, Client};
use msnp24_proto::Payload;

#[tokio::test]
async fn pipelined_handshake_replies_in_order_with_registration_headers() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    let token = t.token("alice").await;
    let mut c = t.connect().await;
    let epid = "B958D334-651E-82FE-A2A1-3DFBB7F5CC08";
    let [cnt, ath, bnd] = c.handshake(&token, epid, 2).await.unwrap();

    assert_eq!(
        (cnt.cmd.as_str(), cnt.trid, cnt.target.as_str()),
        ("CNT", 1, "CON")
    );
    let body = String::from_utf8(Payload::parse(&cnt.payload).unwrap().body).unwrap();
    assert!(
        body.starts_with("<connect-response><ver>2</ver><qostest>false</qostest><nonce>"),
        "{body}"
    );
    assert!(cnt.payload.starts_with(b"\r\n"));

    assert_eq!(
        first_line(&ath).split(' ').take(3).collect::<Vec<_>>(),
        ["ATH", "2", "CON"]
    );
    assert_eq!(
        Payload::parse(&ath.payload).unwrap().body,
        b"<auth-response><new-thread-allowed>true</new-thread-allowed><p2p-migration-allowed>false</p2p-migration-allowed></auth-response>"
    );

    assert_eq!(
        (bnd.cmd.as_str(), bnd.trid, bnd.target.as_str()),
        ("BND", 3, "CON")
    );
    let p = Payload::parse(&bnd.payload).unwrap();
    let names: Vec<&str> = p.headers.iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "UtcTime",
            "Set-Registration",
            "Registration-Token-Expiry",
            "Context"
        ]
    );
    assert_eq!(p.body, b"<msgr-response><ver>2</ver></msgr-response>");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let utc: i64 = p.headers.get("UtcTime").unwrap().parse().unwrap();
    let expiry: i64 = p
        .headers
        .get("Registration-Token-Expiry")
        .unwrap()
        .parse()
        .unwrap();
    assert!((utc - now).abs() < 5);
    assert!(expiry > now + 23 * 3600 && expiry <= now + 24 * 3600 + 5);
    let context = p.headers.get("Context").unwrap();
    assert_eq!(context.len(), 16);
    assert!(context.bytes().all(|b| b.is_ascii_hexdigit()));

    // The token from Set-Registration is accepted on later frames.
    let reply = c.ping().await.unwrap();
    assert_eq!(
        first_line(&reply),
        format!("PNG 4 CON {}", reply.payload.len())
    );
    assert_eq!(
        Payload::parse(&reply.payload).unwrap().body,
        b"<wait>50</wait>"
    );
    assert_conformant(&c);
}

#[tokio::test]
async fn bad_token_gets_911_and_connection_stays_usable() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    let mut c = t.connect().await;
    let [cnt, ath, bnd] = c.handshake("not-a-token", &new_epid(), 2).await.unwrap();
    assert_eq!(cnt.cmd, "CNT");
    assert_eq!(
        first_line(&ath).split(' ').take(3).collect::<Vec<_>>(),
        ["911", "2", "CON"]
    );
    assert_eq!(ath.payload, b"\r\nAuthentication failed");
    // BND without a successful ATH is refused too.
    assert_eq!(bnd.cmd, "911");
    // A forged token (valid shape, wrong signature) and an empty ticket fail the same way.
    let good = t.token("alice").await;
    let (body, sig) = good.split_once('.').unwrap();
    let forged = format!("{body}.{}", sig.chars().rev().collect::<String>());
    for ticket in [forged.as_str(), ""] {
        let ath = format!(
            "<user><ssl-compact-ticket>t={ticket}</ssl-compact-ticket><uic>null</uic></user>"
        );
        let r = c
            .request("ATH", "CON\\USER", Payload::body(ath).encode())
            .await
            .unwrap();
        assert_eq!(r.cmd, "911", "{ticket}");
    }
    // The connection is still open: a ping is answered, and a good token still works.
    expect_ok(c.ping().await.unwrap()).unwrap();
    let shapes = [
        format!("<user><ssl-compact-ticket>t={good}&amp;p=</ssl-compact-ticket><uic>x</uic><id>alice@example.com</id></user>"),
        format!("<user><ssl-compact-ticket>{good}</ssl-compact-ticket><uic>UIC</uic><ssl-site-name>chatservice.live.com</ssl-site-name></user>"),
        format!("<user><uic>{good}</uic><id>alice</id></user>"),
    ];
    for ath in shapes {
        let r = c
            .request("ATH", "CON\\USER", Payload::body(ath.clone()).encode())
            .await
            .unwrap();
        assert_eq!(r.cmd, "ATH", "{ath}: {}", r.payload_lossy());
    }
    assert_conformant(&c);
}

#[tokio::test]
async fn state_rules_before_ath_and_bnd() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    let c = t.connect().await;
    // Before ATH: MSGR commands and BND get 911; PNG is answered.
    let r = c
        .request(
            "PUT",
            "MSGR\\SUBSCRIPTIONS",
            b"\r\n<subscribe><messaging><im /></messaging></subscribe>".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(
        first_line(&r).split(' ').take(3).collect::<Vec<_>>(),
        ["911", "1", "MSGR"]
    );
    expect_ok(c.ping().await.unwrap()).unwrap();
    // After ATH, before BND: MSGR commands still 911, unknown CON commands 240.
    let token = t.token("alice").await;
    let ath =
        format!("<user><ssl-compact-ticket>t={token}</ssl-compact-ticket><uic>null</uic></user>");
    expect_ok(
        c.request("ATH", "CON\\USER", Payload::body(ath).encode())
            .await
            .unwrap(),
    )
    .unwrap();
    let r = c.request("SDG", "MSGR", b"\r\n".to_vec()).await.unwrap();
    assert_eq!(r.cmd, "911");
    let r = c.request("FOO", "CON", b"\r\n".to_vec()).await.unwrap();
    assert_eq!(r.cmd, "240");
    assert_conformant(&c);
}

#[tokio::test]
async fn second_bnd_gets_715_and_bad_epid_201() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    let token = t.token("alice").await;
    let mut c = t.connect().await;
    let r = c.handshake(&token, "not-an-epid", 2).await.unwrap();
    assert_eq!(r[2].cmd, "201");
    let bnd = format!(
        "<msgr><ver>2</ver><epid>{{{}}}</epid></msgr>",
        new_epid().to_uppercase()
    );
    let first = c
        .request("BND", "CON\\MSGR", Payload::body(bnd.clone()).encode())
        .await
        .unwrap();
    assert_eq!(first.cmd, "BND");
    let second = c
        .request("BND", "CON\\MSGR", Payload::body(bnd).encode())
        .await
        .unwrap();
    assert_eq!(
        first_line(&second).split(' ').take(3).collect::<Vec<_>>(),
        ["715", &second.trid.to_string(), "CON"]
    );
    // 715 is harmless: the connection keeps working.
    expect_ok(c.ping().await.unwrap()).unwrap();
    assert_conformant(&c);
}

#[tokio::test]
async fn same_epid_replaces_the_older_connection_with_out() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    let token = t.token("alice").await;
    let epid = new_epid();
    let mut old = t.connect().await;
    old.login("alice", &token, &epid).await.unwrap();
    let mut other = t.connect().await;
    other.login("alice", &token, &new_epid()).await.unwrap();

    let mut new = t.connect().await;
    new.login("alice", &token, &epid.to_uppercase())
        .await
        .unwrap();
    let out = old
        .next_event_timeout(WAIT)
        .await
        .unwrap()
        .expect("OUT before close");
    assert_eq!(first_line(&out), format!("OUT 0 CON {}", out.payload.len()));
    assert_eq!(
        out.payload,
        b"\r\n<out><reason>OtherLocation</reason></out>"
    );
    assert!(
        old.next_event_timeout(WAIT).await.unwrap().is_none(),
        "closed after OUT"
    );
    // The replacement and the other endpoint are untouched.
    expect_ok(new.ping().await.unwrap()).unwrap();
    expect_ok(other.ping().await.unwrap()).unwrap();
    assert!(other
        .next_event_timeout(Duration::from_millis(200))
        .await
        .is_err());
    for c in [&old, &new, &other] {
        assert_conformant(c);
    }
}

#[tokio::test]
async fn sign_out_closes_the_connection() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    let mut c = t.signed_in("alice").await;
    c.sign_out().await.unwrap();
    assert!(c.next_event_timeout(WAIT).await.unwrap().is_none());
    assert_conformant(&c);
}

#[tokio::test]
async fn registration_header_is_checked() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    t.add_user("bob").await;
    let c = t.signed_in("alice").await;
    let bob = t.signed_in("bob").await;
    // Bob's valid token on Alice's connection, and garbage, are refused with 911.
    let bobs = bob.registration().unwrap();
    for reg in [bobs.as_str(), "garbage"] {
        let payload = format!("Registration: {reg}\r\n\r\n");
        let r = c.request("PNG", "CON", payload.into_bytes()).await.unwrap();
        assert_eq!(r.cmd, "911", "{reg}");
    }
    // Her own, and none at all, are accepted.
    let own = format!("Registration: {}\r\n", c.registration().unwrap());
    expect_ok(c.request("PNG", "CON", own.into_bytes()).await.unwrap()).unwrap();
    expect_ok(c.request("PNG", "CON", Vec::new()).await.unwrap()).unwrap();
    assert_conformant(&c);
}

#[tokio::test]
async fn idle_connection_times_out_with_out() {
    let t = TestServer::start_with(|c| c.idle_timeout_secs = 1).await;
    t.add_user("alice").await;
    let mut c = t.signed_in("alice").await;
    let out = c.next_event_timeout(WAIT).await.unwrap().unwrap();
    assert_eq!(
        out.payload,
        b"\r\n<out><reason>SessionTimeout</reason></out>"
    );
    assert!(c.next_event_timeout(WAIT).await.unwrap().is_none());
}

/// Issue 19 item 9: only whole frames count as activity. A peer trickling the bytes of a frame it
/// never finishes is idle and is ended like any idle connection, however often a byte arrives.
#[tokio::test]
async fn trickling_an_unfinished_frame_does_not_keep_a_connection_open() {
    let t = TestServer::start_with(|c| c.idle_timeout_secs = 1).await;
    t.add_user("alice").await;
    let mut c = t.signed_in("alice").await;
    // A frame announcing 200 bytes of payload, then one byte every 200 ms for up to 5 s: far
    // more often than the idle timeout, never a whole frame.
    c.send_raw(b"PNG 9 CON 200\r\n").await.unwrap();
    let mut ended = None;
    for _ in 0..25 {
        if c.send_raw(b"x").await.is_err() {
            break;
        }
        // A timeout here is the normal case: nothing arrived yet.
        if let Ok(f) = c.next_event_timeout(Duration::from_millis(200)).await {
            ended = f;
            break;
        }
    }
    let out = ended.expect("the trickling connection was never ended");
    assert_eq!(out.cmd, "OUT");
    assert_eq!(
        out.payload,
        b"\r\n<out><reason>SessionTimeout</reason></out>"
    );
    assert!(c.next_event_timeout(WAIT).await.unwrap().is_none());
}

/// The client library pings by itself once bound (as real clients do every 30–50 s), so a
/// client that only listens outlives a short idle timeout; with its keep-alive off, the same
/// client is signed out.
#[tokio::test]
async fn a_listening_client_keeps_itself_alive_past_the_idle_timeout() {
    let t = TestServer::start_with(|c| c.idle_timeout_secs = 1).await;
    for name in ["alice", "bob", "carol"] {
        t.add_user(name).await;
    }
    let bound = |name: &'static str, keepalive: Option<Duration>| {
        let t = &t;
        async move {
            let token = t.token(name).await;
            let mut c = t.connect().await;
            c.set_keepalive(keepalive);
            c.login(name, &token, &new_epid()).await.unwrap();
            c
        }
    };
    let mut quiet = bound("carol", None).await;
    let mut alive = bound("alice", Some(Duration::from_millis(200))).await;

    let out = quiet.next_event_timeout(WAIT).await.unwrap().unwrap();
    assert_eq!(
        out.payload,
        b"\r\n<out><reason>SessionTimeout</reason></out>"
    );

    // Three idle timeouts pass with nothing to read: no OUT, no close.
    let quiet_until = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let left = quiet_until.saturating_duration_since(tokio::time::Instant::now());
        match alive.next_event_timeout(left).await {
            Err(_) => break,
            Ok(None) => panic!("the server closed a client that pings"),
            Ok(Some(f)) => assert_ne!(f.cmd, "OUT", "{f:?}"),
        }
    }
    let bob = bound("bob", Some(Duration::from_millis(200))).await;
    expect_ok(bob.send_text("8:alice", "still there?").await.unwrap()).unwrap();
    let got = alive
        .wait_for(WAIT, |f| {
            f.cmd == "SDG" && f.payload_lossy().ends_with("still there?")
        })
        .await;
    assert!(got.is_ok(), "{got:?}");
    assert!(alive.ping().await.unwrap().error_code().is_none());
    assert_conformant(&alive);
}

#[tokio::test]
async fn tls_connection_completes_the_same_handshake() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    let token = t.token("alice").await;
    let ca = std::fs::read(t.server().ca_cert_path.as_ref().unwrap()).unwrap();
    let mut c = Client::connect_tls(t.server().tls_addr.unwrap(), "localhost", &ca)
        .await
        .unwrap();
    c.login("alice", &token, &new_epid()).await.unwrap();
    let r = c.ping().await.unwrap();
    assert_eq!(r.cmd, "PNG");
    c.sign_out().await.unwrap();
    assert!(c.next_event_timeout(WAIT).await.unwrap().is_none());
    assert_conformant(&c);
    // A client that does not trust the certificate cannot connect.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    assert!(Client::connect_tls(
        t.server().tls_addr.unwrap(),
        "localhost",
        other.cert.pem().as_bytes()
    )
    .await
    .is_err());
}

#[tokio::test]
async fn restart_keeps_accounts_tokens_and_certificate() {
    let mut t = TestServer::start().await;
    t.add_user("alice").await;
    let token = t.token("alice").await;
    let cert = std::fs::read(t.server().tls_cert_path.as_ref().unwrap()).unwrap();
    t.restart().await;
    let mut c = t.connect().await;
    c.login("alice", &token, &new_epid()).await.unwrap();
    assert_eq!(
        std::fs::read(t.server().tls_cert_path.as_ref().unwrap()).unwrap(),
        cert
    );
    // And the password still works.
    t.token("alice").await;
    assert_conformant(&c);
}

#[tokio::test]
async fn server_shutdown_sends_out_to_clients() {
    let mut t = TestServer::start().await;
    t.add_user("alice").await;
    let mut c = t.signed_in("alice").await;
    t.server.take().unwrap().shutdown().await;
    let out = c.next_event_timeout(WAIT).await.unwrap().unwrap();
    assert_eq!(
        out.payload,
        b"\r\n<out><reason>ServerShutdown</reason></out>"
    );
}
