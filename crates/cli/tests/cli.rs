//! The `msnp24` binary end to end: user administration, `serve`, and two `client` processes
//! exchanging a message — the README's walk-through.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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
    let (msnp, tls, http, https) = (free_port(), free_port(), free_port(), free_port());
    let mut child = Command::new(BIN)
        .args(["serve", "--data-dir"])
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
