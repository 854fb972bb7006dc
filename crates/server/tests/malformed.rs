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
        (
            "10 MB payload behind a valid first line",
            [
                &b"PUT 4 MSGR\\OPTIONS 10485760\r\n"[..],
                &vec![b'X'; 10 * 1024 * 1024],
            ]
            .concat(),
            "603 4 MSGR",
        ),
        (
            "TrID of 20 digits",
            b"PNG 99999999999999999999 CON 0\r\n".to_vec(),
            "200 0 CON",
        ),
        (
            "trailing backslash in target",
            b"PUT 1 MSGR\\ 0\r\n".to_vec(),
            "200 0 CON",
        ),
        ("trailing space", b"PNG 1 CON 0 \r\n".to_vec(), "200 0 CON"),
        (
            "plus sign in length",
            b"PNG 1 CON +0\r\n".to_vec(),
            "200 0 CON",
        ),
        (
            "command of nine letters",
            b"ABCDEFGHI 1 CON 0\r\n".to_vec(),
            "200 0 CON",
        ),
        ("four-digit code", b"2000 1 CON 0\r\n".to_vec(), "200 0 CON"),
        ("empty line", b"\r\n".to_vec(), "200 0 CON"),
        (
            "binary garbage",
            (0u8..=255).cycle().take(300).collect(),
            "200 0 CON",
        ),
        (
            "frames after a broken line are not read",
            b"HELLO\r\nPNG 2 CON 0\r\n".to_vec(),
            "200 0 CON",
        ),
    ];
    for (what, bytes, expect) in cases {
        let (frames, closed) = exchange(&t, &bytes).await;
        assert_eq!(summary(&frames), [expect], "{what}");
        assert!(closed, "{what}: connection should be closed");
    }
    // LENGTH shorter than what follows: the rest is read as the next frame, which is garbage.
    let (frames, closed) = exchange(&t, b"PNG 1 CON 0\r\nGARBAGE\r\n").await;
    assert_eq!(summary(&frames), ["PNG 1 CON", "200 0 CON"]);
    assert!(closed);
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
        (
            "NUL in an XML name",
            Frame::new("CNT", 1, "CON", b"\r\n<conn\0ect><ver>2</ver></conn\0ect>".to_vec()),
            "200 1 CON",
        ),
        (
            "NUL in a header name",
            Frame::new("PNG", 1, "CON", b"Regis\0tration: x\r\n\r\n".to_vec()),
            "200 1 CON",
        ),
        (
            "element-count bomb",
            Frame::new(
                "CNT",
                1,
                "CON",
                format!("\r\n<connect><ver>2</ver>{}</connect>", "<a/>".repeat(20_001)).into_bytes(),
            ),
            "200 1 CON",
        ),
        (
            "attribute bomb",
            Frame::new(
                "CNT",
                1,
                "CON",
                format!(
                    "\r\n<connect{}><ver>2</ver></connect>",
                    (0..10_000).map(|i| format!(" a{i}=\"\"")).collect::<String>()
                )
                .into_bytes(),
            ),
            "200 1 CON",
        ),
        (
            "undefined entity",
            Frame::new("CNT", 1, "CON", b"\r\n<connect><ver>&lol;</ver></connect>".to_vec()),
            "200 1 CON",
        ),
        (
            "external entity",
            Frame::new(
                "CNT",
                1,
                "CON",
                b"\r\n<!DOCTYPE c [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><connect><ver>&x;</ver></connect>".to_vec(),
            ),
            "200 1 CON",
        ),
        (
            "seed command before auth",
            Frame::new("PUT", 1, "MSGR\\PARTNERS", b"\r\n<partners><type>ABCH</type></partners>".to_vec()),
            "911 1 MSGR",
        ),
        (
            "spam report before auth",
            Frame::new("PUT", 1, "MSGR\\REPORTSPAM", b"\r\n<reportspam><alias>8:bob</alias></reportspam>".to_vec()),
            "911 1 MSGR",
        ),
        (
            "challenge answer before auth",
            Frame::new("PUT", 1, "MSGR\\CHALLENGE", b"\r\n<challenge><appId>x</appId><response>y</response></challenge>".to_vec()),
            "911 1 MSGR",
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

fn message(to: &str, from: &str, content_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "\r\nRouting: 1.0\r\nTo: {to}\r\nFrom: {from}\r\n\r\nReliability: 1.0\r\n\r\nMessaging: 2.0\r\n{content_headers}\r\n{body}"
    )
    .into_bytes()
}

#[tokio::test]
async fn bad_input_after_bind() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    t.add_user("bob").await;
    let c = t.signed_in("alice").await;
    let mut bob = t.signed_in("bob").await;
    let thread = "19:0123456789abcdef0123456789abcdef@thread.skype";
    let text = "Message-Type: Text\r\nContent-Length: 2\r\n";
    let cases: Vec<(&str, &str, &str, Vec<u8>, &str)> = vec![
        ("unknown command", "FOO", "CON", b"\r\n".to_vec(), "240"),
        ("unknown MSGR target", "PUT", "MSGR\\NOPE", b"\r\n".to_vec(), "240"),
        ("SDG without routing", "SDG", "MSGR", b"\r\nhello".to_vec(), "200"),
        ("SDG with short body", "SDG", "MSGR", message("8:alice", "8:alice", "Content-Length: 50\r\n", "hi"), "200"),
        ("SDG with negative Content-Length", "SDG", "MSGR", message("8:bob", "8:alice", "Content-Length: -2\r\n", "hi"), "200"),
        ("SDG with non-numeric Content-Length", "SDG", "MSGR", message("8:bob", "8:alice", "Content-Length: two\r\n", "hi"), "200"),
        ("SDG to a bad address", "SDG", "MSGR", message("nobody", "8:alice", "", "hi"), "201"),
        ("SDG to a 4: address", "SDG", "MSGR", message("4:+15551234", "8:alice", "", "hi"), "201"),
        ("SDG to an unknown account", "SDG", "MSGR", message("8:nobody", "8:alice", text, "hi"), "201"),
        ("SDG with NUL in To", "SDG", "MSGR", message("8:b\0b", "8:alice", text, "hi"), "201"),
        ("SDG to a malformed epid", "SDG", "MSGR", message("8:bob;epid={zzz}", "8:alice", text, "hi"), "201"),
        ("SDG to a thread that does not exist (non-members of real ones: threads::each_refusal…)", "SDG", "MSGR", message(thread, "8:alice", text, "hi"), "201"),
        ("SDG to a malformed thread id", "SDG", "MSGR", message("19:nope", "8:alice", text, "hi"), "201"),
        ("SDG publication", "SDG", "MSGR", b"\r\nRouting: 1.0\r\nTo: 8:alice\r\n\r\nReliability: 1.0\r\n\r\nPublication: 1.0\r\n\r\n".to_vec(), "200"),
        ("SDG with unterminated blocks", "SDG", "MSGR", b"\r\nRouting: 1.0\r\nTo: 8:bob\r\n".to_vec(), "200"),
        ("ACK without Ack-Id", "ACK", "MSGR", b"\r\n".to_vec(), "200"),
        ("PARTNERS with bad XML", "PUT", "MSGR\\PARTNERS", b"\r\n<partners><type>".to_vec(), "200"),
        ("OPTIONS with a DOCTYPE", "PUT", "MSGR\\OPTIONS", b"\r\n<!DOCTYPE o><options/>".to_vec(), "200"),
        ("OPTIONS larger than a setting may be", "PUT", "MSGR\\OPTIONS", format!("\r\n<options><x>{}</x></options>", "y".repeat(5000)).into_bytes(), "201"),
        ("NETWORKS with the wrong root", "PUT", "MSGR\\NETWORKS", b"\r\n<partners/>".to_vec(), "200"),
        ("REPORTSPAM naming 51 aliases", "PUT", "MSGR\\REPORTSPAM", format!("\r\n<reportspam>{}</reportspam>", "<alias>8:x</alias>".repeat(51)).into_bytes(), "201"),
        ("REPORTSPAM with a 1 KB alias", "PUT", "MSGR\\REPORTSPAM", format!("\r\n<reportspam><alias>{}</alias></reportspam>", "x".repeat(1024)).into_bytes(), "201"),
        ("CHALLENGE with the wrong root", "PUT", "MSGR\\CHALLENGE", b"\r\n<challenges/>".to_vec(), "200"),
        ("second BND", "BND", "CON\\MSGR", format!("\r\n<msgr><ver>2</ver><epid>{}</epid></msgr>", msnp24_client::new_epid()).into_bytes(), "715"),
        ("expired-looking registration token", "PNG", "CON", b"Registration: AAAA.BBBB\r\n\r\n".to_vec(), "911"),
    ];
    for (what, cmd, target, payload, code) in cases {
        let r = c.request(cmd, target, payload).await.unwrap();
        assert_eq!(r.cmd, code, "{what}: {}", r.payload_lossy());
        assert_eq!(r.target, target.split('\\').next().unwrap(), "{what}");
    }
    // Another endpoint's registration token is refused (it names bob's endpoint, not this one).
    let foreign = bob.registration().unwrap();
    let r = c
        .request(
            "PNG",
            "CON",
            format!("Registration: {foreign}\r\n\r\n").into_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(r.cmd, "911");

    // A forged From is rewritten: bob sees alice's address and endpoint, and so does storage.
    let forged = message(
        "8:bob",
        "8:bob;epid={00000000-0000-0000-0000-000000000000}",
        "Message-Type: Text\r\nClient-Message-ID: 1\r\nContent-Length: 6\r\n",
        "forged",
    );
    expect_ok(c.request("SDG", "MSGR", forged).await.unwrap()).unwrap();
    let f = bob.wait_for(WAIT, |f| f.cmd == "SDG").await.unwrap();
    let (_, m) = msnp24_proto::FormattedMessage::parse_payload(&f.payload).unwrap();
    assert_eq!(m.from().unwrap(), format!("8:alice;epid={{{}}}", c.epid));
    assert_eq!(m.body, b"forged");

    expect_ok(c.ping().await.unwrap()).unwrap();
    assert_conformant(&c);
    assert_conformant(&bob);
    nothing_stored_but_the_good(&t).await;
}

/// After the bad input: the database is sound and holds exactly what was acknowledged.
async fn nothing_stored_but_the_good(t: &TestServer) {
    use msnp24_server::storage::prelude::*;
    use msnp24_server::storage::{conversation_key, SqliteStorage};
    let db = SqliteStorage::open(&t.config.database_path())
        .await
        .unwrap();
    assert_eq!(db.integrity_check().await.unwrap(), Vec::<String>::new());
    let names: Vec<String> = db
        .list_accounts()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name.to_string())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    let stored = db
        .conversation_messages(&conversation_key("8:alice", "8:bob"))
        .await
        .unwrap();
    let got: Vec<(&str, &[u8])> = stored
        .iter()
        .map(|m| (m.message.sender.as_str(), m.message.content.as_slice()))
        .collect();
    assert_eq!(got, [("8:alice", &b"forged"[..])]);
    let self_conv = db
        .conversation_messages(&conversation_key("8:alice", "8:alice"))
        .await
        .unwrap();
    assert!(self_conv.is_empty(), "{self_conv:?}");
    assert!(db.spam_reports().await.unwrap().is_empty());
    assert!(db.settings().await.unwrap().is_empty());
    db.close().await;
}

#[tokio::test]
async fn invalid_epids_get_201_and_the_connection_can_bind_again() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    let token = t.token("alice").await;
    let c = t.connect().await;
    let ath = msnp24_proto::xml::auth::AuthUser {
        ssl_compact_ticket: Some(format!("t={token}")),
        ..Default::default()
    };
    expect_ok(
        c.request(
            "ATH",
            "CON\\USER",
            msnp24_proto::Payload::body(ath.to_xml()).encode(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    for (what, epid) in [
        ("empty", ""),
        ("words", "not-a-uuid"),
        ("missing brace", "{b958d334-651e-82fe-a2a1-3dfbb7f5cc08"),
        ("no dashes", "b958d334651e82fea2a13dfbb7f5cc08"),
        ("non-hex", "g958d334-651e-82fe-a2a1-3dfbb7f5cc08"),
        ("NUL", "b958d334-651e-82fe-a2a1-3dfbb7f5cc0\u{0}"),
        ("too long", "b958d334-651e-82fe-a2a1-3dfbb7f5cc0800"),
    ] {
        let body = format!("\r\n<msgr><ver>2</ver><epid>{epid}</epid></msgr>");
        let r = c
            .request("BND", "CON\\MSGR", body.into_bytes())
            .await
            .unwrap();
        assert_eq!(r.cmd, "201", "{what}: {}", r.payload_lossy());
    }
    let r = c
        .request("BND", "CON\\MSGR", b"\r\n<msgr><ver>99999999999999999999</ver><epid>b958d334-651e-82fe-a2a1-3dfbb7f5cc08</epid></msgr>".to_vec())
        .await
        .unwrap();
    assert_eq!(r.cmd, "200", "a <ver> beyond u32 is not a number we read");
    let body = "\r\n<msgr><ver>2</ver><epid>{B958D334-651E-82FE-A2A1-3DFBB7F5CC08}</epid></msgr>";
    expect_ok(
        c.request("BND", "CON\\MSGR", body.as_bytes().to_vec())
            .await
            .unwrap(),
    )
    .unwrap();
    expect_ok(c.ping().await.unwrap()).unwrap();
    assert_conformant(&c);
}
