//! The HTTP gateway (§11), rule by rule, over real HTTP to a real server: open with pipelined
//! frames, sends, long polls, one held poll per session, the session timeout, unknown sessions,
//! `OUT` both ways, cookie sign-in, the bounds (queue, body size, many polls), and a gateway
//! endpoint chatting with a TCP endpoint. Every frame received is checked against §0.

mod common;

use std::time::{Duration, Instant};

use common::*;
use msnp24_client::conformance::check_frame;
use msnp24_client::gateway::{session_id, GatewayOptions};
use msnp24_client::{new_epid, Client, Event};
use msnp24_proto::frame::decode;
use msnp24_proto::{Frame, Limits, Payload};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;

const OPEN: &str = "Version=1&Protocol=mtp&Action=open&Server=NS&IP=none";

/// One gateway answer.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn session(&self) -> String {
        let h = self.headers["x-msn-messenger"].to_str().unwrap();
        session_id(h).unwrap()
    }

    /// The body's frames, each checked against §0; the body holds nothing else.
    fn frames(&self) -> Vec<Frame> {
        let mut rest = &self.body[..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let (f, used) = decode(rest, &Limits::default())
                .unwrap()
                .expect("a response holds whole frames");
            check_frame(&f).unwrap();
            rest = &rest[used..];
            out.push(f);
        }
        out
    }
}

async fn post(
    t: &TestServer,
    query: &str,
    body: impl Into<Vec<u8>>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = reqwest::Client::new()
        .post(format!("{}/gateway/gateway.dll?{query}", t.http()))
        .header("Content-Type", "application/x-msn-messenger")
        .body(body.into());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    Answer {
        status: r.status(),
        headers: r.headers().clone(),
        body: r.bytes().await.unwrap().to_vec(),
    }
}

async fn send(t: &TestServer, session: &str, body: impl Into<Vec<u8>>) -> Answer {
    post(t, &format!("SessionID={session}"), body, &[]).await
}

async fn poll(t: &TestServer, session: &str, lifespan: Option<u64>) -> Answer {
    let q = match lifespan {
        Some(l) => format!("Action=poll&SessionID={session}&Lifespan={l}"),
        None => format!("Action=poll&SessionID={session}"),
    };
    post(t, &q, Vec::new(), &[]).await
}

fn frame(cmd: &str, trid: u64, target: &str, body: &str) -> Vec<u8> {
    Frame::new(
        cmd,
        trid,
        target,
        Payload::body(body.as_bytes().to_vec()).encode(),
    )
    .to_bytes()
}

/// CNT, ATH (with `user`'s XML) and BND, pipelined, then a subscription to messages and presence.
fn handshake(user: &str, epid: &str) -> Vec<u8> {
    let mut wire = frame(
        "CNT",
        1,
        "CON",
        "<connect><ver>2</ver><agent><os>web</os></agent></connect>",
    );
    wire.extend(frame("ATH", 2, "CON\\USER", user));
    wire.extend(frame(
        "BND",
        3,
        "CON\\MSGR",
        &format!("<msgr><ver>2</ver><client><name>web</name><ver>1</ver><networks>skype</networks></client><epid>{epid}</epid></msgr>"),
    ));
    wire.extend(frame(
        "PUT",
        4,
        "MSGR\\SUBSCRIPTIONS",
        "<subscribe><presence><buddies><all /></buddies></presence><messaging><im /><conversations /></messaging></subscribe>",
    ));
    wire
}

fn ticket_user(token: &str) -> String {
    format!("<user><ssl-compact-ticket>t={token}</ssl-compact-ticket><uic>null</uic></user>")
}

/// Opens a signed-in gateway session for `name`; returns it with the open's answer.
async fn open_signed_in(t: &TestServer, name: &str) -> (String, Answer) {
    let token = t.token(name).await;
    let a = post(t, OPEN, handshake(&ticket_user(&token), &new_epid()), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    let cmds: Vec<String> = a.frames().iter().map(|f| f.cmd.clone()).collect();
    assert_eq!(cmds, ["CNT", "ATH", "BND", "PUT"]);
    (a.session(), a)
}

#[tokio::test]
async fn open_answers_the_pipelined_handshake_with_the_gateway_headers() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    let token = t.token("alice").await;
    let a = post(
        &t,
        OPEN,
        handshake(&ticket_user(&token), &new_epid()),
        &[("X-MSN-GWCapabilities", "*")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let frames = a.frames();
    let lines: Vec<String> = frames
        .iter()
        .map(|f| format!("{} {} {}", f.cmd, f.trid, f.target))
        .collect();
    assert_eq!(lines, ["CNT 1 CON", "ATH 2 CON", "BND 3 CON", "PUT 4 MSGR"]);
    assert_eq!(a.headers["content-type"], "application/x-msn-messenger");
    let port = t.server().http_addr.port();
    let messenger = a.headers["x-msn-messenger"].to_str().unwrap();
    let id = a.session();
    assert_eq!(messenger, format!("SessionID={id}; GW-IP=127.0.0.1:{port}"));
    // 128 random bits in the dotted look.
    let parts: Vec<&str> = id.split('.').collect();
    assert_eq!(parts.len(), 2);
    assert!(parts.iter().all(|p| p.parse::<u64>().is_ok()));
    assert_eq!(a.headers["x-msn-host"], "127.0.0.1");
    assert_eq!(a.headers["x-msn-sessiontimeout"], "120");
    assert_eq!(a.headers["x-msn-gwcapabilities"], "LP");

    // Without the capability header there is none in the answer; text/html when asked.
    let b = post(
        &t,
        OPEN,
        handshake(&ticket_user(&token), &new_epid()),
        &[("X-Requested-Session-Content-Type", "text/html")],
    )
    .await;
    assert_eq!(b.status, StatusCode::OK);
    assert!(b.headers.get("x-msn-gwcapabilities").is_none());
    assert_eq!(b.headers["content-type"], "text/html");
    assert_ne!(b.session(), id);
    // A later answer carries the same session id (it never changes).
    let c = send(&t, &id, frame("PNG", 5, "CON", "")).await;
    assert_eq!(c.session(), id);
    assert_eq!(c.frames()[0].cmd, "PNG");
}

#[tokio::test]
async fn a_send_is_answered_with_its_replies_and_split_frames_are_joined() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    let (id, _) = open_signed_in(&t, "alice").await;
    let a = send(&t, &id, frame("PNG", 5, "CON", "")).await;
    let f = &a.frames()[0];
    assert_eq!((f.cmd.as_str(), f.trid), ("PNG", 5));
    assert_eq!(f.payload, b"\r\n<wait>50</wait>");
    // One frame cut in three requests is one frame, answered once it is whole.
    let wire = frame("PNG", 6, "CON", "");
    let (first, rest) = wire.split_at(4);
    let (second, third) = rest.split_at(6);
    assert!(send(&t, &id, first.to_vec()).await.frames().is_empty());
    assert!(send(&t, &id, second.to_vec()).await.frames().is_empty());
    let done = send(&t, &id, third.to_vec()).await;
    assert_eq!(done.frames()[0].trid, 6);
}

#[tokio::test]
async fn a_long_poll_answers_as_soon_as_a_frame_is_queued() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    t.add_user("bob").await;
    friends(&t, "alice", "bob").await;
    let (id, _) = open_signed_in(&t, "alice").await;
    let bob = t.signed_in("bob").await;
    let started = Instant::now();
    let held = {
        let http = t.http();
        let id = id.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!(
                    "{http}/gateway/gateway.dll?Action=poll&SessionID={id}&Lifespan=60"
                ))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob.send_text("8:alice", "through the long poll")
        .await
        .unwrap();
    let mut body = held.await.unwrap().to_vec();
    // The poll may have answered with bob's presence first; the message follows in the next.
    if !String::from_utf8_lossy(&body).contains("through the long poll") {
        body = poll(&t, &id, Some(60)).await.body;
    }
    assert!(String::from_utf8_lossy(&body).contains("through the long poll"));
    // Answered long before the 60 s it could have been held.
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn an_idle_poll_is_held_for_its_lifespan_and_one_without_answers_at_once() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    let (id, _) = open_signed_in(&t, "alice").await;
    let started = Instant::now();
    let a = poll(&t, &id, Some(2)).await;
    let held = started.elapsed();
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.is_empty());
    assert!(held >= Duration::from_millis(1900), "held only {held:?}");
    let started = Instant::now();
    let b = poll(&t, &id, None).await;
    assert!(b.body.is_empty());
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_newer_poll_answers_the_older_one_at_once() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    let (id, _) = open_signed_in(&t, "alice").await;
    let http = t.http();
    let url = format!("{http}/gateway/gateway.dll?Action=poll&SessionID={id}&Lifespan=30");
    let older = {
        let url = url.clone();
        tokio::spawn(async move {
            let r = reqwest::Client::new().post(url).send().await.unwrap();
            let status = r.status();
            let body = r.bytes().await.unwrap();
            (status, body, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let newer_started = Instant::now();
    let newer = poll(&t, &id, Some(2)).await;
    let newer_done = Instant::now();
    let (status, body, older_done) = older.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty());
    // The older one answered when the newer arrived, not after its own 30 s nor the newer's 2 s.
    assert!(older_done < newer_done);
    assert!(older_done >= newer_started);
    assert!(newer.body.is_empty());
}

#[tokio::test]
async fn the_session_timeout_ends_the_endpoint_and_contacts_see_it_go() {
    let t = TestServer::start_with(|c| {
        c.gateway_session_timeout_secs = 1;
        c.presence_keepalive_secs = 1;
    })
    .await;
    t.add_user("alice").await;
    t.add_user("bob").await;
    friends(&t, "alice", "bob").await;
    let mut bob = t.signed_in("bob").await;
    let (id, a) = open_signed_in(&t, "alice").await;
    assert_eq!(a.headers["x-msn-sessiontimeout"], "1");
    send(
        &t,
        &id,
        frame("PUT", 5, "MSGR\\PRESENCE", &presence_body("alice", "NLN")),
    )
    .await;
    bob.wait_for(WAIT, |f| f.cmd == "NFY" && f.target == "MSGR\\PUT")
        .await
        .unwrap();
    // Nobody asks for the session any more: it ends, and bob sees alice go offline.
    let gone = bob
        .wait_for(WAIT, |f| f.cmd == "NFY" && f.target == "MSGR\\DEL")
        .await
        .unwrap();
    assert_eq!(
        Event::from_frame(&gone),
        Event::Offline {
            account: "8:alice".into()
        }
    );
    let after = poll(&t, &id, None).await;
    assert_eq!(after.status, StatusCode::BAD_REQUEST);
    assert!(after.body.is_empty());
}

/// A presence publication's payload body for `name` with `status`.
fn presence_body(name: &str, status: &str) -> String {
    let doc = format!("<user><s n=\"IM\"><Status>{status}</Status></s></user>");
    format!(
        "Routing: 1.0\r\nTo: 8:{name}\r\nFrom: 8:{name}\r\n\r\nReliability: 1.0\r\n\r\nPublication: 1.0\r\nUri: /user\r\nContent-Type: application/user+xml\r\nContent-Length: {}\r\n\r\n{doc}",
        doc.len()
    )
}

#[tokio::test]
async fn unknown_and_forged_sessions_get_400_without_a_body() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    let (id, _) = open_signed_in(&t, "alice").await;
    let (a, b) = id.split_once('.').unwrap();
    let near: u64 = b.parse::<u64>().unwrap().wrapping_add(1);
    for bad in [
        "Action=poll&SessionID=1.2&Lifespan=5".to_string(),
        format!("SessionID={a}.{near}"),
        format!("SessionID={a}"),
        "Action=poll".to_string(),
        String::new(),
    ] {
        let r = post(&t, &bad, frame("PNG", 9, "CON", ""), &[]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(r.body.is_empty(), "{bad}");
    }
    // The real session was not disturbed.
    assert_eq!(
        send(&t, &id, frame("PNG", 5, "CON", "")).await.frames()[0].cmd,
        "PNG"
    );
}

#[tokio::test]
async fn out_from_the_client_ends_the_session() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    let (id, _) = open_signed_in(&t, "alice").await;
    let a = send(&t, &id, Frame::new("OUT", 5, "CON", Vec::new()).to_bytes()).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.frames().is_empty());
    let after = poll(&t, &id, Some(5)).await;
    assert_eq!(after.status, StatusCode::BAD_REQUEST);
    assert!(after.body.is_empty());
    assert_eq!(t.server().gateway().session_count(), 0);
}

#[tokio::test]
async fn out_from_the_server_reaches_the_held_poll_then_the_session_is_gone() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    let token = t.token("alice").await;
    let epid = new_epid();
    let first = post(&t, OPEN, handshake(&ticket_user(&token), &epid), &[]).await;
    let id = first.session();
    let held = {
        let http = t.http();
        let id = id.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!(
                    "{http}/gateway/gateway.dll?Action=poll&SessionID={id}&Lifespan=30"
                ))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The same endpoint signs in elsewhere (over TCP): the gateway session is told OtherLocation.
    let mut tcp = t.connect().await;
    tcp.login("alice", &token, &epid).await.unwrap();
    let body = held.await.unwrap();
    let out = Answer {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        body: body.to_vec(),
    }
    .frames();
    let last = out.last().expect("the OUT frame");
    assert_eq!(last.cmd, "OUT");
    assert_eq!(
        last.payload,
        b"\r\n<out><reason>OtherLocation</reason></out>"
    );
    assert_eq!(poll(&t, &id, None).await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_login_cookie_signs_in_a_web_ticket_only_when_asked() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    let r = reqwest::Client::new()
        .post(format!("{}/login", t.http()))
        .json(&serde_json::json!({"username": "alice", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    let token = r.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(set_cookie.starts_with(&format!("MSPAuth={token};")));
    for attr in ["Secure", "HttpOnly", "Path=/"] {
        assert!(set_cookie.split("; ").any(|a| a == attr), "{set_cookie}");
    }
    let web = "<user><uic>null</uic><web-compact-ticket /></user>";
    let cookie = format!("MSPAuth={token}");
    let ok = post(
        &t,
        OPEN,
        handshake(web, &new_epid()),
        &[("X-MSN-Auth", "Use-Cookie"), ("Cookie", &cookie)],
    )
    .await;
    let cmds: Vec<String> = ok.frames().iter().map(|f| f.cmd.clone()).collect();
    assert_eq!(cmds, ["CNT", "ATH", "BND", "PUT"]);
    // The cookie without the header, or the header with a bad cookie, authenticates nothing.
    for headers in [
        vec![("Cookie", cookie.as_str())],
        vec![("X-MSN-Auth", "Use-Cookie"), ("Cookie", "MSPAuth=forged")],
    ] {
        let refused = post(&t, OPEN, handshake(web, &new_epid()), &headers).await;
        let frames = refused.frames();
        assert_eq!(frames[1].cmd, "911", "{headers:?}");
    }
}

#[tokio::test]
async fn a_body_over_the_frame_limit_gets_413_and_an_oversized_frame_603() {
    let t = TestServer::start_with(|c| c.max_payload = 1024).await;
    t.add_user("alice").await;
    let (id, _) = open_signed_in(&t, "alice").await;
    let big = vec![b'x'; 4096];
    let r = send(&t, &id, big.clone()).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.body.is_empty());
    let r = post(&t, OPEN, big, &[]).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    // A frame announcing more than the limit gets 603 and ends the session, as on TCP.
    let r = send(&t, &id, b"SDG 7 MSGR 5000\r\n".to_vec()).await;
    assert_eq!(r.frames()[0].cmd, "603");
    assert_eq!(poll(&t, &id, None).await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_session_nobody_polls_is_ended_as_a_slow_reader() {
    let t = TestServer::start_with(|c| {
        c.outbound_queue = 16;
        c.send_rate.per_second = 0.0;
    })
    .await;
    t.add_user("alice").await;
    t.add_user("bob").await;
    friends(&t, "alice", "bob").await;
    let (id, _) = open_signed_in(&t, "alice").await;
    let bob = t.signed_in("bob").await;
    let text = "y".repeat(2000);
    // Far more than the outbox and the queue hold together.
    for _ in 0..400 {
        let r = bob.send_text("8:alice", &text).await.unwrap();
        assert_eq!(r.cmd, "SDG");
    }
    // What was kept is bounded by the outbox; then the session is gone.
    let left = poll(&t, &id, None).await;
    assert!(left.body.len() <= msnp24_server::http::gateway::OUTBOX_LIMIT + 64 * 1024);
    let mut ended = false;
    for _ in 0..50 {
        if poll(&t, &id, None).await.status == StatusCode::BAD_REQUEST {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ended, "the unpolled session was not ended");
    assert_eq!(t.server().gateway().session_count(), 0);
}

#[tokio::test]
async fn a_thousand_polls_at_once_cost_bounded_memory() {
    let t = TestServer::start_with(|c| c.max_connections_per_ip = 32).await;
    t.add_user("alice").await;
    let (id, _) = open_signed_in(&t, "alice").await;
    let http = reqwest::Client::new();
    let base = format!("{}/gateway/gateway.dll", t.http());
    // A thousand polls on one session: one stays held, every other is answered at once. At
    // most 24 at a time, so that they fit in the address's 32 HTTP connections.
    let lanes = std::sync::Arc::new(tokio::sync::Semaphore::new(24));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let (http, base, id) = (http.clone(), base.clone(), id.clone());
        let lanes = lanes.clone();
        set.spawn(async move {
            let _lane = lanes.acquire_owned().await.unwrap();
            let r = http
                .post(format!("{base}?Action=poll&SessionID={id}&Lifespan=3"))
                .send()
                .await
                .unwrap();
            (i, r.status(), Instant::now())
        });
    }
    let mut answered = 0;
    while let Some(r) = set.join_next().await {
        let (_, status, _) = r.unwrap();
        assert_eq!(status, StatusCode::OK);
        answered += 1;
    }
    assert_eq!(answered, 1000);
    // A thousand polls for sessions that do not exist, and a thousand opens from one address:
    // 400s, and at most the per-address limit of sessions.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..1000u32 {
        let (http, base) = (http.clone(), base.clone());
        let lanes = lanes.clone();
        set.spawn(async move {
            let _lane = lanes.acquire_owned().await.unwrap();
            let q = if i % 2 == 0 {
                format!("Action=poll&SessionID={i}.{i}&Lifespan=30")
            } else {
                OPEN.to_string()
            };
            http.post(format!("{base}?{q}"))
                .send()
                .await
                .unwrap()
                .status()
        });
    }
    let (mut bad, mut opened, mut refused) = (0, 0, 0);
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            StatusCode::BAD_REQUEST => bad += 1,
            StatusCode::OK => opened += 1,
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(bad, 500);
    assert_eq!(opened + refused, 500);
    // Alice's session and the opened ones, never more than the address may hold.
    assert!(t.server().gateway().session_count() <= 32);
    assert_eq!(opened, 31);
}

#[tokio::test]
async fn a_gateway_endpoint_and_a_tcp_endpoint_chat_both_ways() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    t.add_user("bob").await;
    friends(&t, "alice", "bob").await;
    let token = t.token("alice").await;
    let options = GatewayOptions {
        lifespan_secs: 5,
        ..GatewayOptions::default()
    };
    let mut alice = Client::connect_gateway_with(reqwest::Client::new(), &t.http(), options);
    alice.login("alice", &token, &new_epid()).await.unwrap();
    let mut bob = t.signed_in("bob").await;
    alice.set_presence("NLN", Some("on the web")).await.unwrap();
    bob.set_presence("BSY", None).await.unwrap();
    let seen_by_bob = bob
        .wait_for(WAIT, |f| {
            f.cmd == "NFY"
                && f.target == "MSGR\\PUT"
                && String::from_utf8_lossy(&f.payload).contains("on the web")
        })
        .await
        .unwrap();
    assert!(matches!(
        Event::from_frame(&seen_by_bob),
        Event::Presence { .. }
    ));
    alice
        .wait_for(WAIT, |f| {
            f.cmd == "NFY"
                && f.target == "MSGR\\PUT"
                && String::from_utf8_lossy(&f.payload).contains("BSY")
        })
        .await
        .unwrap();
    alice
        .send_text("8:bob", "hello from the browser")
        .await
        .unwrap();
    bob.wait_for(WAIT, |f| {
        f.cmd == "SDG" && String::from_utf8_lossy(&f.payload).contains("hello from the browser")
    })
    .await
    .unwrap();
    bob.send_text("8:alice", "hello from the desktop")
        .await
        .unwrap();
    alice
        .wait_for(WAIT, |f| {
            f.cmd == "SDG" && String::from_utf8_lossy(&f.payload).contains("hello from the desktop")
        })
        .await
        .unwrap();
    // Signing out of the gateway is seen as on TCP.
    alice.sign_out().await.unwrap();
    bob.wait_for(WAIT, |f| f.cmd == "NFY" && f.target == "MSGR\\DEL")
        .await
        .unwrap();
    assert_conformant(&alice);
    assert_conformant(&bob);
}
