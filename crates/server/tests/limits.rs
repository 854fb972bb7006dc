//! Limits that only abusive peers reach, over real sockets: a recipient that stops reading is
//! dropped once its outbound queue is full (and the server's memory stays bounded), too many
//! connections from one address and a flood of frames get 803 and a close. Counts and bounds only.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use msnp24_client::expect_ok;
use msnp24_proto::frame::{decode, Limits};
use msnp24_proto::{AccountName, FormattedMessage, Frame, Headers, Payload};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The test process's resident set (the server runs in it), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Reads frames from a raw socket until `want` of them arrived.
async fn read_frames(s: &mut TcpStream, buf: &mut Vec<u8>, want: usize) -> Vec<Frame> {
    let limits = Limits {
        max_payload: 1 << 20,
        max_line: 1024,
    };
    let mut frames = Vec::new();
    while frames.len() < want {
        while let Ok(Some((f, used))) = decode(buf, &limits) {
            buf.drain(..used);
            frames.push(f);
        }
        if frames.len() >= want {
            break;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed after {} frames", frames.len());
        buf.extend_from_slice(&chunk[..n]);
    }
    frames
}

/// Reads until the server closes the connection; returns every byte (bounded by `max`).
async fn read_to_close(s: &mut TcpStream, max: usize) -> Vec<u8> {
    let mut all = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("the server closes the connection")
            .unwrap_or(0);
        if n == 0 {
            return all;
        }
        all.extend_from_slice(&chunk[..n]);
        assert!(all.len() <= max, "more than {max} bytes before the close");
    }
}

/// Logs `name` in on a raw socket (handshake and messaging subscription), then hands the socket
/// back: the caller decides whether it ever reads again.
async fn raw_signed_in(t: &TestServer, name: &str) -> TcpStream {
    let token = t.token(name).await;
    let mut s = TcpStream::connect(t.server().tcp_addr).await.unwrap();
    let epid = msnp24_client::new_epid();
    let mut wire = Vec::new();
    for (i, (cmd, target, body)) in [
        ("CNT", "CON", "<connect><ver>2</ver></connect>".to_string()),
        (
            "ATH",
            "CON\\USER",
            format!(
                "<user><ssl-compact-ticket>t={token}</ssl-compact-ticket><uic>null</uic></user>"
            ),
        ),
        (
            "BND",
            "CON\\MSGR",
            format!("<msgr><ver>2</ver><epid>{epid}</epid></msgr>"),
        ),
        (
            "PUT",
            "MSGR\\SUBSCRIPTIONS",
            "<subscribe><messaging><im /></messaging></subscribe>".to_string(),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        Frame::new(cmd, i as u64 + 1, target, Payload::body(body).encode()).encode_into(&mut wire);
    }
    s.write_all(&wire).await.unwrap();
    let mut buf = Vec::new();
    for f in read_frames(&mut s, &mut buf, 4).await {
        assert_eq!(f.error_code(), None, "{}", f.payload_lossy());
    }
    s
}

/// A large `Control/Typing` message: relayed live and never stored, so the test measures the
/// delivery path, not the database.
fn big_typing(to: &str, size: usize) -> Vec<u8> {
    let mut m = FormattedMessage::new(to, "8:alice", ("Messaging", "2.0"), vec![b'x'; size]);
    m.content.push("Message-Type", "Control/Typing");
    m.to_payload(&Headers::new())
}

#[tokio::test]
async fn a_recipient_that_stops_reading_is_dropped_and_memory_stays_bounded() {
    const QUEUE: usize = 16;
    const MESSAGE: usize = 100 * 1024;
    const BATCH: usize = 20;
    const TOTAL: usize = 1000; // 100 MB towards a client that reads nothing
    let t = TestServer::start_with(|c| {
        c.outbound_queue = QUEUE;
        c.frames_per_sec = 0;
        // 1,000 messages in a few seconds: the per-account send rate would answer 803 first.
        c.send_rate.per_second = 0.0;
    })
    .await;
    t.add_user("alice").await;
    t.add_user("bob").await;
    let alice = t.signed_in("alice").await;
    let mut bob = raw_signed_in(&t, "bob").await;
    let bob_name = AccountName::parse("bob").unwrap();
    let router = t.server().state().router.clone();
    assert_eq!(router.endpoints(&bob_name).await.len(), 1);

    let baseline = rss_kib();
    let mut peak = baseline;
    let mut dropped_after = None;
    let mut sent = 0;
    while sent < TOTAL {
        let mut replies = Vec::new();
        for _ in 0..BATCH {
            let (_, rx) = alice
                .send("SDG", "MSGR", big_typing("8:bob", MESSAGE))
                .await
                .unwrap();
            replies.push(rx);
        }
        for rx in replies {
            let reply = tokio::time::timeout(WAIT, rx).await.unwrap().unwrap();
            expect_ok(reply).unwrap();
        }
        sent += BATCH;
        peak = peak.max(rss_kib());
        if dropped_after.is_none() && router.endpoints(&bob_name).await.is_empty() {
            dropped_after = Some(sent);
        }
    }
    eprintln!("dropped after {dropped_after:?} messages; RSS {baseline} -> peak {peak} KiB");
    let dropped_after = dropped_after.expect("the non-reading client is dropped");
    // Dropped once the queue (16) and the kernel's socket buffers (a few MB on loopback) are full:
    // far fewer than the 1,000 messages sent.
    assert!(
        dropped_after <= 400,
        "dropped only after {dropped_after} messages"
    );
    let growth_mib = (peak - baseline) / 1024;
    assert!(
        growth_mib < 64,
        "RSS grew by {growth_mib} MiB while 100 MB were sent to a client that reads nothing"
    );
    // Its connection is closed: what the kernel buffered, then EOF.
    let got = read_to_close(&mut bob, 64 << 20).await;
    assert!(
        got.len() < 32 << 20,
        "{} bytes were buffered for bob",
        got.len()
    );
    // The sender was never held up, and is still served.
    expect_ok(alice.ping().await.unwrap()).unwrap();
    assert_conformant(&alice);
}

#[tokio::test]
async fn connections_per_address_are_limited() {
    let t = TestServer::start_with(|c| c.max_connections_per_ip = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let c = t.connect().await;
        expect_ok(c.ping().await.unwrap()).unwrap();
        held.push(c);
    }
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    assert_eq!(t.server().state().connections.open_from(local), 3);

    let mut s = TcpStream::connect(t.server().tcp_addr).await.unwrap();
    let got = read_to_close(&mut s, 1024).await;
    let (f, used) = decode(&got, &Limits::default()).unwrap().unwrap();
    assert_eq!(
        (f.cmd.as_str(), f.trid, f.target.as_str()),
        ("803", 0, "CON")
    );
    assert_eq!(used, got.len());

    // A place frees up when a connection ends.
    held.pop().unwrap().sign_out().await.unwrap();
    for _ in 0..500 {
        if t.server().state().connections.open_from(local) < 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let c = t.connect().await;
    expect_ok(c.ping().await.unwrap()).unwrap();
    for c in &held {
        expect_ok(c.ping().await.unwrap()).unwrap();
    }
}

#[tokio::test]
async fn a_flood_of_frames_gets_803_and_a_close() {
    const BURST: u64 = 20;
    let t = TestServer::start_with(|c| {
        c.frames_per_sec = 1;
        c.frame_burst = BURST as u32;
    })
    .await;
    let mut s = TcpStream::connect(t.server().tcp_addr).await.unwrap();
    let mut wire = Vec::new();
    for trid in 1..=200u64 {
        Frame::new("PNG", trid, "CON", Vec::new()).encode_into(&mut wire);
    }
    let _ = s.write_all(&wire).await;
    let got = read_to_close(&mut s, 1 << 20).await;
    let mut rest = &got[..];
    let mut frames = Vec::new();
    while let Ok(Some((f, used))) = decode(rest, &Limits::default()) {
        frames.push(f);
        rest = &rest[used..];
    }
    let (last, pings) = frames.split_last().unwrap();
    assert_eq!(last.cmd, "803");
    assert!(pings.iter().all(|f| f.cmd == "PNG"));
    let served = pings.len() as u64;
    // The burst is served; the refill (1 a second) may add a few; the flood is cut off.
    assert!((BURST..100).contains(&served), "{served} pings served");
    assert_eq!(
        last.trid,
        served + 1,
        "803 answers the first frame over the limit"
    );
    // Other clients are unaffected.
    let c = t.connect().await;
    expect_ok(c.ping().await.unwrap()).unwrap();
}
