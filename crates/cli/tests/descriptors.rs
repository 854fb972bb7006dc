//! Descriptor exhaustion (issue 19 item 2): a real `msnp24 serve` under a low open-file limit
//! (`prlimit`) is flooded with connections until it refuses them; it logs that once, and answers
//! MSNP and `/healthz` again once they close.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, BIN};
use msnp24_proto::frame::{decode, Limits};
use msnp24_proto::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `PNG` and says whether the server answered it (a refused connection gets `803 0 CON`
/// and is closed).
async fn answers(s: &mut TcpStream) -> bool {
    if s.write_all(&Frame::new("PNG", 1, "CON", Vec::new()).to_bytes())
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Ok(Some((f, _))) = decode(&buf, &Limits::default()) {
            return f.cmd != "803";
        }
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return false,
        }
    }
}

/// A child process killed and reaped when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn running_out_of_descriptors_refuses_newcomers_logs_once_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    // No per-address cap: only the descriptors bound what one address may open.
    std::fs::write(
        dir.path().join("test.toml"),
        "max_connections_per_ip = 0\ndescriptor_reserve = 48\n",
    )
    .unwrap();
    let (msnp, http) = (free_port(), free_port());
    // A file, not a pipe: nobody reads a pipe while the flood runs, and a full one stops the server.
    let log_path = dir.path().join("server.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let child = Command::new("prlimit")
        .args([
            "--nofile=128:128",
            "--",
            BIN,
            "serve",
            "--no-tls",
            "--no-https",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", &format!("127.0.0.1:{msnp}")])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .env("MSNP24_CONFIG", dir.path().join("test.toml"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .spawn()
        .unwrap();
    // Killed when dropped, so a failing assertion leaves no server behind.
    let mut child = Killed(child);
    let mut line = [0u8; 16];
    child
        .0
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut line)
        .unwrap();
    assert_eq!(&line, b"msnp24 listening");

    // Far more than the 80 places: MSNP and HTTP together.
    let mut held = Vec::new();
    for i in 0..200 {
        let port = if i % 2 == 0 { msnp } else { http };
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
            held.push((port, s));
        }
    }
    let mut served = 0;
    let mut refused = 0;
    for (port, s) in &mut held {
        if *port != msnp {
            continue;
        }
        if answers(s).await {
            served += 1;
        } else {
            refused += 1;
        }
    }
    assert!(served > 0, "nothing was served");
    assert!(refused > 0, "nothing was refused ({served} served)");
    drop(held);

    // Once they close: MSNP and /healthz answer again.
    let mut ok = false;
    for _ in 0..100 {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", msnp)).await {
            if answers(&mut s).await {
                ok = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "MSNP does not answer after the connections closed");
    let health = reqwest::get(format!("http://127.0.0.1:{http}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    drop(child);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(
        log.matches("file descriptors are running out").count(),
        1,
        "logged once:\n{log}"
    );
    assert!(log.contains("file descriptors available again"), "{log}");
}
