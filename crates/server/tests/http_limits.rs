//! The HTTP(S) listeners' bounds over real sockets (issue 19 item 2): connections per address,
//! a header-read timeout and an idle timeout. Timeouts are configured short; the tests check
//! that the connection is closed, never how fast.

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// Reads until the server closes the connection (a reset counts as closed); panics after
/// [`WAIT`]. Returns what it sent.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("the server closes the connection")
            .unwrap_or(0);
        if n == 0 {
            return all;
        }
        all.extend_from_slice(&chunk[..n]);
    }
}

/// Sends `GET /healthz` on a kept-alive connection and reads one whole response.
async fn healthz(s: &mut TcpStream) -> String {
    s.write_all(HEALTHZ).await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("{\"status\":\"ok\"}") {
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A connection to `to` from the loopback address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    socket.connect(to).await.unwrap()
}

#[tokio::test]
async fn http_connections_per_address_are_capped() {
    let t = TestServer::start_with(|c| c.max_connections_per_ip = 3).await;
    let addr = t.server().http_addr;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert!(healthz(&mut s).await.starts_with("HTTP/1.1 200"));
        held.push(s);
    }

    // The fourth from the same address is refused and closed…
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(HEALTHZ).await;
    let got = String::from_utf8_lossy(&read_to_close(&mut s).await).into_owned();
    assert!(
        got.is_empty() || got.starts_with("HTTP/1.1 429"),
        "the connection past the cap got {got:?}"
    );
    // …while the three still answer, and another address is served.
    for s in &mut held {
        assert!(healthz(s).await.starts_with("HTTP/1.1 200"));
    }
    let mut other = connect_from("127.0.0.2", addr).await;
    assert!(healthz(&mut other).await.starts_with("HTTP/1.1 200"));

    // HTTPS counts with HTTP: the address is still full there.
    let mut s = TcpStream::connect(t.server().https_addr.unwrap())
        .await
        .unwrap();
    assert!(read_to_close(&mut s).await.is_empty());

    // A place frees up when a connection ends.
    drop(held.pop());
    let mut again = None;
    for _ in 0..100 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(HEALTHZ).await.unwrap();
        let mut first = [0u8; 12];
        if tokio::time::timeout(WAIT, s.read_exact(&mut first))
            .await
            .is_ok_and(|r| r.is_ok())
            && &first == b"HTTP/1.1 200"
        {
            again = Some(s);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "a freed place is given again");
}

#[tokio::test]
async fn a_connection_slow_to_send_its_headers_is_closed() {
    let t = TestServer::start_with(|c| {
        c.http_header_timeout_secs = 1;
        c.http_idle_timeout_secs = 3600;
    })
    .await;
    let mut s = TcpStream::connect(t.server().http_addr).await.unwrap();
    // Half a request, then a byte now and then, never the blank line.
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let mut closed = false;
    let mut chunk = [0u8; 256];
    for i in 0..40 {
        if s.write_all(format!("X-{i}: y\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        match tokio::time::timeout(std::time::Duration::from_millis(250), s.read(&mut chunk)).await
        {
            Ok(Ok(0) | Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => panic!("answered {:?}", String::from_utf8_lossy(&chunk[..n])),
            Err(_) => {}
        }
    }
    assert!(closed, "still open after 10 s of trickled headers");

    // A prompt client is still served.
    let mut s = TcpStream::connect(t.server().http_addr).await.unwrap();
    assert!(healthz(&mut s).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed() {
    let t = TestServer::start_with(|c| {
        c.http_idle_timeout_secs = 1;
        c.http_header_timeout_secs = 3600;
    })
    .await;
    let mut s = TcpStream::connect(t.server().http_addr).await.unwrap();
    let answer = healthz(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("connection: close"),
        "kept alive: {answer}"
    );
    // Nothing more is sent: the server ends it.
    assert!(read_to_close(&mut s).await.is_empty());

    // A connection that never sends its first request is idle too.
    let mut silent = TcpStream::connect(t.server().http_addr).await.unwrap();
    assert!(read_to_close(&mut silent).await.is_empty());
}
