//! Malformed input over a raw socket: each case gets the §9 error (or a clean close) and the
//! server keeps serving everyone else.

mod common;

use std::time::Duration;

use common::*;
use msnp24_client::{conformance::check_frame, expect_ok};
use msnp24_proto::frame::{decode, Limits};
use msnp24_proto::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `bytes`, then reads until the server closes or goes quiet; returns the frames received
/// and whether the server closed the connection.
async fn exchange(t: &TestServer, bytes: &[u8]) -> (Vec<Frame>, bool) {
    let mut s = TcpStream::connect(t.server().tcp_addr).await.unwrap();
    // The server may close before reading everything; a failed write is part of some cases.
    let _ = s.write_all(bytes).await;
    let mut buf = Vec::new();
    let mut closed = false;
    loop {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(Duration::from_millis(700), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    let mut frames = Vec::new();
    let mut rest = &buf[..];
    while let Ok(Some((f, used))) = decode(
        rest,
        &Limits {
            max_payload: 1 << 20,
            max_line: 1024,
        },
    ) {
        assert!(check_frame(&f).is_ok(), "{:?}", check_frame(&f));
        frames.push(f);
        rest = &rest[used..];
    }
    assert!(
        rest.is_empty(),
        "undecodable bytes from server: {:?}",
        String::from_utf8_lossy(rest)
    );
    (frames, closed)
}

fn summary(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .map(|f| format!("{} {} {}", f.cmd, f.trid, f.target))
        .collect()
}

async fn still_serving(t: &TestServer) {
    let c = t.connect().await;
    expect_ok(c.ping().await.unwrap()).unwrap();
}

#[tokio::test]
async fn framing_errors_get_200_or_603_and_a_close() {
    let t = TestServer::start_with(|c| c.max_payload = 1024).await;
    let huge_line = vec![b'A'; 10 * 1024 * 1024];
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage first line",
            b"HELLO WORLD\r\n".to_vec(),
            "200 0 CON",
        ),
        (
            "non-numeric TrID",
            b"PNG one CON 0\r\n".to_vec(),
            "200 0 CON",
        ),
        ("negative length", b"PNG 1 CON -5\r\n".to_vec(), "200 0 CON"),
        (
            "lower-case command",
            b"png 1 CON 0\r\n".to_vec(),
            "200 0 CON",
        ),
        (
            "two backslashes",
            b"PUT 1 MSGR\\A\\B 0\r\n".to_vec(),
            "200 0 CON",
        ),
        (
            "NUL in first line",
            b"PNG 1 C\0N 0\r\n".to_vec(),
            "200 0 CON",
        ),
        ("bare LF", b"PNG 1 CON 0\n".to_vec(), "200 0 CON"),
        (
            "invalid UTF-8 first line",
            b"PNG \xff\xfe CON 0\r\n".to_vec(),
            "200 0 CON",
        ),
        ("10 MB line", huge_line, "200 0 CON"),
        (
            "length over the limit",
            b"SDG 9 MSGR 5000\r\n".to_vec(),
            "603 9 MSGR",
        ),
        (
            "absurd length",
            b"SDG 9 MSGR\\X 99999999999999999999\r\n".to_vec(),
            "200 0 CON",
        ),
        (
            "huge but numeric length",
            b"SDG 9 MSGR\\X 9999999999\r\n".to_vec(),
            "603 9 MSGR",
        ),
    ];
    for (what, bytes, expect) in cases {
        let (frames, closed) = exchange(&t, &bytes).await;
        assert_eq!(summary(&frames), [expect], "{what}");
        assert!(closed, "{what}: connection should be closed");
    }
    still_serving(&t).await;
}

#[tokio::test]
async fn payload_errors_get_an_error_and_the_connection_stays_open() {
    let t = TestServer::start().await;
    let ping = Frame::new("PNG", 99, "CON", Vec::new()).to_bytes();
    let cases: Vec<(&str, Frame, &str)> = vec![
        (
            "bad XML",
            Frame::new("CNT", 1, "CON", b"\r\n<connect><ver>2</connect>".to_vec()),
            "200 1 CON",
        ),
        (
            "invalid UTF-8 XML",
            Frame::new(
                "CNT",
                1,
                "CON",
                b"\r\n<connect><ver>\xff</ver></connect>".to_vec(),
            ),
            "200 1 CON",
        ),
        (
            "wrong root",
            Frame::new("CNT", 1, "CON", b"\r\n<user/>".to_vec()),
            "200 1 CON",
        ),
        (
            "missing ver",
            Frame::new("CNT", 1, "CON", b"\r\n<connect/>".to_vec()),
            "200 1 CON",
        ),
        (
            "XML bomb",
            Frame::new(
                "CNT",
                1,
                "CON",
                b"\r\n<!DOCTYPE a [<!ENTITY a \"aaaa\">]><connect><ver>&a;</ver></connect>"
                    .to_vec(),
            ),
            "200 1 CON",
        ),
        (
            "deep nesting",
            Frame::new(
                "CNT",
                1,
                "CON",
                format!("\r\n{}", "<a>".repeat(5000)).into_bytes(),
            ),
            "200 1 CON",
        ),
        (
            "header without colon",
            Frame::new("PNG", 1, "CON", b"nocolon\r\n\r\n".to_vec()),
            "200 1 CON",
        ),
        (
            "header with bad name",
            Frame::new("PNG", 1, "CON", b"Bad Name: x\r\n\r\n".to_vec()),
            "200 1 CON",
        ),
        (
            "empty CNT",
            Frame::new("CNT", 1, "CON", Vec::new()),
            "200 1 CON",
        ),
        (
            "command before auth",
            Frame::new("SDG", 1, "MSGR", b"\r\n".to_vec()),
            "911 1 MSGR",
        ),
        (
            "ATH garbage",
            Frame::new(
                "ATH",
                1,
                "CON\\USER",
                b"\r\n<user><uic>x</uic></user>".to_vec(),
            ),
            "911 1 CON",
        ),
        (
            "BND before ATH",
            Frame::new(
                "BND",
                1,
                "CON\\MSGR",
                b"\r\n<msgr><ver>2</ver><epid>x</epid></msgr>".to_vec(),
            ),
            "911 1 CON",
        ),
        (
            "unknown target before auth",
            Frame::new("XYZ", 1, "ABC\\DEF", b"\r\n".to_vec()),
            "911 1 ABC",
        ),
    ];
    for (what, frame, expect) in cases {
        let mut bytes = frame.to_bytes();
        bytes.extend_from_slice(&ping);
        let (frames, closed) = exchange(&t, &bytes).await;
        assert_eq!(summary(&frames), [expect, "PNG 99 CON"], "{what}");
        assert!(!closed, "{what}: connection should stay open");
    }
    still_serving(&t).await;
}

#[tokio::test]
async fn truncated_payload_and_abrupt_close_are_harmless() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    let mut watcher = t.signed_in("alice").await;
    let (frames, _) = exchange(&t, b"CNT 1 CON 100\r\n\r\n<connect>").await;
    assert!(frames.is_empty());
    {
        let mut s = TcpStream::connect(t.server().tcp_addr).await.unwrap();
        s.write_all(b"SDG 1 MSGR 50\r\nRouting").await.unwrap();
    } // dropped mid-frame
    still_serving(&t).await;
    expect_ok(watcher.ping().await.unwrap()).unwrap();
    assert!(watcher
        .next_event_timeout(Duration::from_millis(200))
        .await
        .is_err());
}

#[tokio::test]
async fn bad_input_after_bind() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    let c = t.signed_in("alice").await;
    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        ("unknown command", "FOO", b"\r\n".to_vec(), "240"),
        ("unknown MSGR target", "PUT", b"\r\n".to_vec(), "240"),
        ("SDG without routing", "SDG", b"\r\nhello".to_vec(), "200"),
        ("SDG with short body", "SDG", b"\r\nRouting: 1.0\r\nTo: 8:alice\r\n\r\nReliability: 1.0\r\n\r\nMessaging: 2.0\r\nContent-Length: 50\r\n\r\nhi".to_vec(), "200"),
        ("SDG to a bad address", "SDG", b"\r\nRouting: 1.0\r\nTo: nobody\r\n\r\nReliability: 1.0\r\n\r\nMessaging: 2.0\r\n\r\nhi".to_vec(), "201"),
        ("SDG to a 4: address", "SDG", b"\r\nRouting: 1.0\r\nTo: 4:+15551234\r\n\r\nReliability: 1.0\r\n\r\nMessaging: 2.0\r\n\r\nhi".to_vec(), "201"),
        ("SDG publication", "SDG", b"\r\nRouting: 1.0\r\nTo: 8:alice\r\n\r\nReliability: 1.0\r\n\r\nPublication: 1.0\r\n\r\n".to_vec(), "200"),
        ("ACK without Ack-Id", "ACK", b"\r\n".to_vec(), "200"),
    ];
    for (what, cmd, payload, code) in cases {
        let target = if what == "unknown MSGR target" {
            "MSGR\\NOPE"
        } else if cmd == "FOO" {
            "CON"
        } else {
            "MSGR"
        };
        let r = c.request(cmd, target, payload).await.unwrap();
        assert_eq!(r.cmd, code, "{what}: {}", r.payload_lossy());
    }
    expect_ok(c.ping().await.unwrap()).unwrap();
    assert_conformant(&c);
}
