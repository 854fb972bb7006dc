//! The `msnp24` binary end to end: user administration, `serve`, and two `client` processes
//! exchanging a message — the README's walk-through.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_msnp24");

fn run(args: &[&str]) -> Output {
    let out = Command::new(BIN).args(args).output().unwrap();
    out
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &Path) -> (Serve, u16, u16) {
    serve_with(dir, &[])
}

fn serve_with(dir: &Path, extra: &[&str]) -> (Serve, u16, u16) {
    let (msnp, tls, http, https) = (free_port(), free_port(), free_port(), free_port());
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(extra)
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{msnp}")])
        .args(["--tls-listen", &format!("127.0.0.1:{tls}")])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .args(["--https-listen", &format!("127.0.0.1:{https}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(line.starts_with("msnp24 listening"), "{line}");
    assert!(line.contains(&format!("127.0.0.1:{msnp}")));
    (Serve(child), msnp, http)
}

#[test]
fn user_administration() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = run(&[
        "user",
        "add",
        "Alice",
        "--password",
        "secret1",
        "--data-dir",
        d,
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "created alice\n");
    let out = run(&[
        "user",
        "add",
        "alice",
        "--password",
        "secret1",
        "--data-dir",
        d,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    for bad in [
        ["user", "add", "1x", "--password", "secret1"],
        ["user", "add", "bob", "--password", "short"],
    ] {
        let out = run(&[&bad[..], &["--data-dir", d]].concat());
        assert!(!out.status.success(), "{bad:?}");
    }
    assert!(run(&[
        "user",
        "add",
        "live:bob",
        "--password",
        "secret2",
        "--data-dir",
        d
    ])
    .status
    .success());
    let out = run(&["user", "list", "--data-dir", d]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alice\nlive:bob\n");
    assert!(run(&[
        "user",
        "passwd",
        "alice",
        "--password",
        "secret3",
        "--data-dir",
        d
    ])
    .status
    .success());
    assert!(!run(&[
        "user",
        "passwd",
        "carol",
        "--password",
        "secret3",
        "--data-dir",
        d
    ])
    .status
    .success());
    assert!(run(&["user", "remove", "live:bob", "--data-dir", d])
        .status
        .success());
    assert!(!run(&["user", "remove", "live:bob", "--data-dir", d])
        .status
        .success());
    let out = run(&["user", "list", "--data-dir", d]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alice\n");

    // E-mail aliases and profiles.
    let out = run(&[
        "user",
        "add",
        "live:carol",
        "--password",
        "secret1",
        "--email",
        "Carol@Example.com",
        "--display-name",
        "Carol C",
        "--data-dir",
        d,
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&[
        "user",
        "add",
        "dave",
        "--password",
        "secret1",
        "--email",
        "carol@example.com",
        "--data-dir",
        d,
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("belongs to another account"),
        "{out:?}"
    );
    assert!(!run(&[
        "user",
        "add",
        "erin",
        "--password",
        "secret1",
        "--email",
        "not-an-address",
        "--data-dir",
        d
    ])
    .status
    .success());
    let out = run(&["user", "list", "--data-dir", d]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "alice\nlive:carol\tcarol@example.com\n",
        "dave was not half-created"
    );
    assert!(run(&[
        "user",
        "set",
        "alice",
        "--email",
        "alice@example.com",
        "--mood",
        "busy",
        "--data-dir",
        d
    ])
    .status
    .success());
    assert!(!run(&[
        "user",
        "set",
        "live:carol",
        "--email",
        "alice@example.com",
        "--data-dir",
        d
    ])
    .status
    .success());
    assert!(
        run(&["user", "set", "live:carol", "--email", "", "--data-dir", d])
            .status
            .success()
    );
    let out = run(&["user", "list", "--data-dir", d]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "alice\talice@example.com\nlive:carol\n"
    );
}

#[test]
fn cert_export_writes_the_ca_in_both_formats() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let pem_path = dir.path().join("ca.pem");
    let out = run(&[
        "cert",
        "export",
        "--format",
        "pem",
        "--out",
        pem_path.to_str().unwrap(),
        "--data-dir",
        d,
    ]);
    assert!(out.status.success(), "{out:?}");
    let pem = std::fs::read_to_string(&pem_path).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
    assert_eq!(
        pem,
        std::fs::read_to_string(dir.path().join("tls/ca.crt")).unwrap()
    );
    // Exporting again gives the same CA (it is created once).
    let out = run(&["cert", "export", "--data-dir", d]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), pem);
    let out = run(&["cert", "export", "--format", "pkcs12", "--data-dir", d]);
    assert!(out.status.success());
    assert_eq!(out.stdout[0], 0x30, "DER SEQUENCE");
    assert!(out.stdout.len() > 300);
}

/// Waits for `child` to exit, at most `limit`; kills it and fails beyond.
fn exit_within(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A listening `msnp24 client` pings by itself and is still signed in after three idle timeouts;
/// a send-only one exits 0 once its message is acknowledged, without being told not to listen.
#[test]
fn a_listening_client_outlives_the_idle_timeout_and_a_send_only_one_exits() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for name in ["alice", "bob"] {
        let out = run(&[
            "user",
            "add",
            name,
            "--password",
            "secret1",
            "--data-dir",
            d,
        ]);
        assert!(out.status.success(), "{out:?}");
    }
    let config = dir.path().join("idle.toml");
    std::fs::write(&config, "idle_timeout_secs = 1\n").unwrap();
    let (_server, msnp, http) = serve_with(dir.path(), &["--config", config.to_str().unwrap()]);
    let (server, http) = (
        format!("127.0.0.1:{msnp}"),
        format!("http://127.0.0.1:{http}"),
    );
    let client = |user: &str, extra: &[&str]| {
        let mut c = Command::new(BIN);
        c.args(["client", "--server", &server, "--http", &http])
            .args(["--user", user, "--password", "secret1"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    let mut bob = client("bob", &["--listen-secs", "10", "--keepalive-secs", "0.2"])
        .spawn()
        .unwrap();
    let mut bob_out = BufReader::new(bob.stdout.take().unwrap());
    let mut line = String::new();
    bob_out.read_line(&mut line).unwrap();
    assert_eq!(line, "signed in as 8:bob\n");
    std::thread::sleep(Duration::from_secs(3));

    let mut alice = client(
        "alice",
        &[
            "--to",
            "bob",
            "--message",
            "past the timeout",
            "--keepalive-secs",
            "0.2",
        ],
    )
    .spawn()
    .unwrap();
    let status = exit_within(&mut alice, Duration::from_secs(60));
    let mut said = String::new();
    std::io::Read::read_to_string(&mut alice.stdout.take().unwrap(), &mut said).unwrap();
    assert!(status.success(), "{status:?} {said}");
    assert!(said.contains("sent to 8:bob (Message-ID "), "{said}");

    let status = exit_within(&mut bob, Duration::from_secs(60));
    let mut seen = String::new();
    std::io::Read::read_to_string(&mut bob_out, &mut seen).unwrap();
    assert!(status.success(), "{status:?} {seen}");
    assert!(seen.contains(": past the timeout"), "{seen}");
    assert!(!seen.contains("signed out by the server"), "{seen}");
    assert!(!seen.contains("connection closed by the server"), "{seen}");
}

#[test]
fn two_clients_exchange_a_message_through_serve() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for name in ["alice", "bob"] {
        assert!(run(&[
            "user",
            "add",
            name,
            "--password",
            "secret1",
            "--data-dir",
            d
        ])
        .status
        .success());
    }
    let (_server, msnp, http) = serve(dir.path());
    let server = format!("127.0.0.1:{msnp}");
    let http = format!("http://127.0.0.1:{http}");
    let mut bob = Command::new(BIN)
        .args([
            "client",
            "--server",
            &server,
            "--http",
            &http,
            "--user",
            "bob",
            "--password",
            "secret1",
            "--listen-secs",
            "8",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut bob_out = BufReader::new(bob.stdout.take().unwrap());
    let mut line = String::new();
    bob_out.read_line(&mut line).unwrap();
    assert_eq!(line, "signed in as 8:bob\n");

    let out = run(&[
        "client",
        "--server",
        &server,
        "--http",
        &http,
        "--user",
        "alice",
        "--password",
        "secret1",
        "--to",
        "bob",
        "--message",
        "hello bob",
        "--no-listen",
    ]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("sent to 8:bob (Message-ID "), "{stdout}");

    let deadline = Instant::now() + Duration::from_secs(8);
    let mut seen = String::new();
    while Instant::now() < deadline {
        line.clear();
        if bob_out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
        if line.contains("hello bob") {
            break;
        }
    }
    let _ = bob.kill();
    let _ = bob.wait();
    assert!(seen.contains("[Text] 8:alice;epid={"), "{seen}");
    assert!(seen.contains(": hello bob"), "{seen}");

    // Both sides find the message by sync: the recent list and the conversation's history.
    for (user, other) in [("bob", "alice"), ("alice", "bob")] {
        let out = run(&[
            "client",
            "--server",
            &server,
            "--http",
            &http,
            "--user",
            user,
            "--password",
            "secret1",
            "--recent",
            "--history",
            other,
            "--pagesize",
            "7",
            "--no-listen",
        ]);
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!("8:{other}  (last at ")),
            "{stdout}"
        );
        assert!(stdout.contains("1 conversation(s)"), "{stdout}");
        assert!(stdout.contains("[Text] 8:alice;epid={"), "{stdout}");
        assert!(
            stdout.contains(&format!("1 message(s) with 8:{other}")),
            "{stdout}"
        );
    }

    let out = run(&[
        "client",
        "--server",
        &server,
        "--http",
        &http,
        "--user",
        "alice",
        "--password",
        "wrong-pw",
        "--no-listen",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

#[test]
fn contacts_through_the_client_and_user_contacts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for name in ["alice", "bob"] {
        assert!(run(&[
            "user",
            "add",
            name,
            "--password",
            "secret1",
            "--data-dir",
            d
        ])
        .status
        .success());
    }
    let (_server, msnp, http) = serve(dir.path());
    let server = format!("127.0.0.1:{msnp}");
    let http = format!("http://127.0.0.1:{http}");
    let client = |user: &str, extra: &[&str]| -> Vec<String> {
        let base = [
            "client",
            "--server",
            &server,
            "--http",
            &http,
            "--user",
            user,
            "--password",
            "secret1",
        ];
        let mut args: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let mut bob = Command::new(BIN)
        .args(client("bob", &["--status", "nln", "--listen-secs", "8"]))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut bob_out = BufReader::new(bob.stdout.take().unwrap());
    let mut line = String::new();
    bob_out.read_line(&mut line).unwrap();
    assert_eq!(line, "signed in as 8:bob\n");
    line.clear();
    bob_out.read_line(&mut line).unwrap();
    assert_eq!(line, "presence: NLN\n");

    let args = client(
        "alice",
        &[
            "--add",
            "bob",
            "--status",
            "BSY",
            "--mood",
            "at work",
            "--no-listen",
        ],
    );
    let out = Command::new(BIN).args(&args).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("added bob\npresence: BSY\n"), "{stdout}");

    line.clear();
    bob_out.read_line(&mut line).unwrap();
    assert_eq!(line, "contact request from alice\n");
    let _ = bob.kill();
    let _ = bob.wait();

    let contacts = |who: &str| {
        let out = run(&["user", "contacts", who, "--data-dir", d]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(contacts("bob"), "alice\tpending (8)\n");
    let out = Command::new(BIN)
        .args(client("bob", &["--allow", "alice", "--no-listen"]))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(contacts("bob"), "alice\tforward,allow (3)\n");
    assert_eq!(contacts("alice"), "bob\tforward,allow (3)\n");
    assert!(!run(&["user", "contacts", "nobody", "--data-dir", d])
        .status
        .success());
}

#[test]
fn admin_lists_spam_reports_and_settings() {
    use msnp24_server::storage::{Setting, SettingScope, SpamReport};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = run(&["admin", "reports", "--data-dir", d]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 report(s)"));

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let config = msnp24_server::Config {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        let storage = msnp24_server::open_storage(&config).await.unwrap();
        storage
            .add_spam_reports(&[SpamReport {
                reporter: "8:alice".into(),
                reporter_epid: "{b958d334-651e-82fe-a2a1-3dfbb7f5cc08}".into(),
                reported: "8:spammer".into(),
                reported_at: 1_430_577_279,
            }])
            .await
            .unwrap();
        storage
            .put_setting(Setting {
                account: "8:alice".into(),
                scope: SettingScope::Endpoint("{b958d334-651e-82fe-a2a1-3dfbb7f5cc08}".into()),
                kind: "options".into(),
                value: "<options><pwrmode>1</pwrmode></options>".into(),
                updated_at: 1_430_577_279,
            })
            .await
            .unwrap();
        storage.close().await;
    });

    let out = run(&["admin", "reports", "--data-dir", d]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2015-05-02T14:34:39.000Z\t8:alice\t{b958d334-651e-82fe-a2a1-3dfbb7f5cc08}\t8:spammer\n"
    );
    let out = run(&["admin", "settings", "--data-dir", d]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2015-05-02T14:34:39.000Z\t8:alice\t{b958d334-651e-82fe-a2a1-3dfbb7f5cc08}\toptions\t<options><pwrmode>1</pwrmode></options>\n"
    );
}

#[test]
fn sigterm_during_traffic_loses_no_acknowledged_message() {
    use msnp24_server::storage::prelude::*;
    use msnp24_server::storage::{conversation_key, SqliteStorage};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    const SENDERS: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for name in ["alice", "bob"] {
        let out = run(&[
            "user",
            "add",
            name,
            "--password",
            "secret1",
            "--data-dir",
            d,
        ]);
        assert!(out.status.success(), "{out:?}");
    }
    // Senders go as fast as the server answers, far above the per-connection frame limit that
    // protects against floods; this test is about shutdown, so the limit is off.
    let config = dir.path().join("serve.toml");
    std::fs::write(&config, "frames_per_sec = 0\n").unwrap();
    let (mut server, msnp, http) = serve_with(dir.path(), &["--config", config.to_str().unwrap()]);
    let pid = server.0.id().to_string();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{msnp}").parse().unwrap();
    let http = format!("http://127.0.0.1:{http}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (acked, told_out) = rt.block_on(async {
        let login = |name: &'static str| {
            let http = http.clone();
            async move {
                let token = msnp24_client::http_login(&http, name, "secret1")
                    .await
                    .unwrap();
                let mut c = msnp24_client::Client::connect_tcp(addr).await.unwrap();
                c.login(name, &token.token, &msnp24_client::new_epid())
                    .await
                    .unwrap();
                c
            }
        };
        let _bob = login("bob").await;
        let count = Arc::new(AtomicUsize::new(0));
        let mut senders = Vec::new();
        for _ in 0..SENDERS {
            senders.push(login("alice").await);
        }
        let mut tasks = Vec::new();
        for (k, mut c) in senders.into_iter().enumerate() {
            let count = count.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                // Bounded: the server stops long before this many.
                for i in 0..20_000 {
                    let text = format!("m{k}-{i}");
                    match c.send_text("8:bob", &text).await {
                        Ok(reply) if reply.error_code().is_none() => {
                            acked.push(text);
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        // An error reply or a closed connection: not acknowledged, so it may
                        // or may not have been stored.
                        Ok(_) | Err(_) => break,
                    }
                }
                // Everything the server sent until it closed the connection (the bound only
                // guards against a server that never closes).
                let mut told_out = false;
                while let Ok(Some(f)) = c.next_event_timeout(Duration::from_secs(60)).await {
                    told_out |= f.cmd == "OUT" && f.payload_lossy().contains("ServerShutdown");
                }
                (acked, told_out)
            }));
        }
        // Terminate while every sender is mid-stream.
        while count.load(Ordering::Relaxed) < 60 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(kill.success());
        let mut all = Vec::new();
        let mut told = 0;
        for t in tasks {
            let (acked, told_out) = t.await.unwrap();
            all.extend(acked);
            told += usize::from(told_out);
        }
        (all, told)
    });

    let status = server.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "serve exits 0 on SIGTERM");
    assert_eq!(
        told_out, SENDERS,
        "every client was told OUT (ServerShutdown)"
    );
    assert!(acked.len() >= 60, "{} messages acknowledged", acked.len());
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "nothing listens any more"
    );

    let stored: std::collections::HashSet<String> = rt.block_on(async {
        let db = SqliteStorage::open(&dir.path().join("msnp24.sqlite3"))
            .await
            .unwrap();
        let rows = db
            .conversation_messages(&conversation_key("8:alice", "8:bob"))
            .await
            .unwrap();
        db.close().await;
        rows.into_iter()
            .map(|m| String::from_utf8(m.message.content).unwrap())
            .collect()
    });
    let lost: Vec<&String> = acked.iter().filter(|m| !stored.contains(*m)).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
}

#[test]
fn bench_scenarios_run_and_count_what_they_did() {
    let json = |args: &[&str]| -> serde_json::Value {
        let out = run(&[&["bench"], args, &["--json"]].concat());
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let idle = json(&["idle", "--clients", "25", "--hold-secs", "0"]);
    assert_eq!(idle["extra"]["bound_endpoints"], 25);
    assert_eq!(idle["errors"], 0);
    assert!(idle["server_after"]["rss_kib"].as_u64().unwrap() > 0);
    let relay = json(&["relay", "--pairs", "2", "--duration-secs", "1"]);
    assert_eq!(relay["errors"], 0);
    assert!(relay["operations"].as_u64().unwrap() > 0);
    assert!(
        relay["latency_ms"]["samples"].as_u64().unwrap() > 0,
        "receivers saw the messages"
    );
    assert!(
        relay["server_cpu_us_per_op"].is_f64(),
        "server CPU per message is reported: {relay}"
    );
    assert_eq!(relay["load_average"].as_array().map(Vec::len), Some(2));
    // Senders at a fixed rate, their ticks staggered: all of them still send.
    let paced = json(&[
        "relay",
        "--pairs",
        "3",
        "--rate",
        "20",
        "--duration-secs",
        "1",
    ]);
    assert_eq!(paced["errors"], 0);
    assert!(paced["operations"].as_u64().unwrap() >= 3, "{paced}");
    let reconnect = json(&[
        "reconnect",
        "--concurrency",
        "2",
        "--duration-secs",
        "1",
        "--tls",
    ]);
    assert_eq!(reconnect["errors"], 0);
    assert_eq!(reconnect["transport"], "tls");
    assert!(reconnect["operations"].as_u64().unwrap() > 0);
    let fanout = json(&["fanout", "--members", "5", "--messages", "3"]);
    assert_eq!(
        (fanout["operations"].as_u64(), fanout["errors"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!(
        fanout["extra"]["deliveries"], 15,
        "every member got every message"
    );
    let presence = json(&["presence", "--watchers", "5", "--changes", "3"]);
    assert_eq!(
        (presence["operations"].as_u64(), presence["errors"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!(
        presence["extra"]["notifications"], 15,
        "every watcher saw every change"
    );
    assert!(presence["extra"]["server_cpu_us_per_notification"].is_f64());
}

#[test]
fn a_group_chat_through_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for name in ["alice", "bob", "carol"] {
        assert!(run(&[
            "user",
            "add",
            name,
            "--password",
            "secret1",
            "--data-dir",
            d
        ])
        .status
        .success());
    }
    let (_server, msnp, http) = serve(dir.path());
    let server = format!("127.0.0.1:{msnp}");
    let http = format!("http://127.0.0.1:{http}");
    let client = |user: &str, extra: &[&str]| -> Output {
        let mut args: Vec<String> = [
            "client",
            "--server",
            &server,
            "--http",
            &http,
            "--user",
            user,
            "--password",
            "secret1",
            "--no-listen",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        out
    };
    let out = client(
        "alice",
        &[
            "--create-group",
            "bob",
            "--topic",
            "plans",
            "--add-member",
            "carol",
            "--group-message",
            "hello group",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("created group "))
        .unwrap_or_else(|| panic!("{stdout}"))
        .to_string();
    assert!(
        stdout.contains(&format!("added carol to {id}\nsent to {id}\n")),
        "{stdout}"
    );
    let out = client("alice", &["--group", &id, "--remove-member", "bob"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("removed bob from {id}")));
    let out = client("carol", &["--group", &id, "--leave", "--history", &id]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("left {id}")), "{stdout}");
    assert!(stdout.contains("hello group"), "{stdout}");
}

#[test]
fn user_and_admin_commands_work_on_postgres() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(common::fresh_postgres_db());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = run(&[
        "user",
        "add",
        "alice",
        "--password",
        "secret1",
        "--email",
        "a@example.com",
        "--storage",
        &url,
        "--data-dir",
        d,
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = Command::new(BIN)
        .args(["user", "list", "--data-dir", d])
        .env("MSNP24_STORAGE", &url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "alice\ta@example.com\n"
    );
    // Nothing of it is in the data directory's SQLite file.
    let out = run(&["user", "list", "--data-dir", d]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0 account(s)"),
        "{out:?}"
    );
    let out = run(&["admin", "reports", "--storage", &url, "--data-dir", d]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0 report(s)"),
        "{out:?}"
    );
    let out = run(&["user", "list", "--storage", "mysql://x", "--data-dir", d]);
    assert!(!out.status.success());
}
