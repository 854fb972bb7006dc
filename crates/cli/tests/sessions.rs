//! `msnp24 admin sessions` and `admin kick` against a real server on one node: the listing of
//! bound endpoints (table and JSON, every client-controlled field escaped), the `--account`
//! filter, signing endpoints out with `OUT`, and progress that never reaches a pipe.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use msnp24_client::{expect_ok, http_login, new_epid, Client};
use msnp24_proto::xml;

const WAIT: Duration = Duration::from_secs(10);

fn add_users(dir: &std::path::Path, names: &[&str]) {
    let d = dir.to_str().unwrap();
    for name in names {
        run_ok(
            &["user", "add", name, "--password", PASSWORD, "--data-dir", d],
            &[],
        );
    }
}

fn msnp24(args: &[&str], dir: &std::path::Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap()
}

/// `admin sessions --json` (with these extra arguments), parsed.
fn sessions_json(dir: &std::path::Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let out = msnp24(&[&["admin", "sessions", "--json"], extra].concat(), dir);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

/// Signs in like [`sign_in_as`], telling BND this client name and version.
async fn sign_in_named(s: &Serve, name: &str, epid: &str, client: &str, ver: &str) -> Client {
    let token = http_login(&s.http, name, PASSWORD).await.unwrap();
    let c = Client::connect_tcp(s.msnp).await.unwrap();
    let cnt = xml::connect::Connect {
        ver: 2,
        agent: Vec::new(),
    };
    expect_ok(
        c.request("CNT", "CON", c.payload(cnt.to_xml()))
            .await
            .unwrap(),
    )
    .unwrap();
    let ath = xml::auth::AuthUser {
        ssl_compact_ticket: Some(format!("t={}", token.token)),
        uic: Some("null".into()),
        ..Default::default()
    };
    expect_ok(
        c.request("ATH", "CON\\USER", c.payload(ath.to_xml()))
            .await
            .unwrap(),
    )
    .unwrap();
    let bnd = xml::bind::Msgr {
        ver: 2,
        alt_versions: Vec::new(),
        client: Some(xml::bind::ClientInfo {
            name: client.into(),
            ver: ver.into(),
            networks: "skype".into(),
        }),
        epid: epid.into(),
    };
    expect_ok(
        c.request("BND", "CON\\MSGR", c.payload(bnd.to_xml()))
            .await
            .unwrap(),
    )
    .unwrap();
    c
}

/// Waits for `OUT` and then the end of the connection.
async fn signed_out(c: &mut Client) {
    let out = c
        .wait_for(WAIT, |f| f.cmd == "OUT")
        .await
        .unwrap_or_else(|e| panic!("no OUT: {e}"));
    assert!(out.payload_lossy().contains("OtherLocation"), "{out:?}");
    let closed =
        tokio::time::timeout(WAIT, async { while c.next_event().await.is_some() {} }).await;
    assert!(closed.is_ok(), "the connection stayed open after OUT");
}

#[test]
fn admin_sessions_lists_endpoints_and_admin_kick_signs_them_out() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("test.toml"), "").unwrap();
    add_users(dir.path(), &["alice", "bob"]);
    let d = dir.path();
    let server = serve(d);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Braced, as the server writes epids back.
        let braced = || format!("{{{}}}", new_epid());
        let (e1, e2, e3) = (braced(), braced(), braced());
        let mut alice1 = sign_in_as(&server, "alice", &e1).await;
        let mut alice2 = sign_in_as(&server, "alice", &e2).await;
        // A client name that would forge a row and reverse the rest of the line if printed raw.
        let forged = "evil\nbob  {x}  tcp\u{202e}";
        let mut bob = sign_in_named(&server, "bob", &e3, forged, "9.9").await;

        let rows = sessions_json(d, &[]);
        assert_eq!(rows.len(), 3, "{rows:#?}");
        let by_epid = |e: &str| {
            rows.iter()
                .find(|r| r["epid"] == e)
                .unwrap_or_else(|| panic!("{e} not listed: {rows:#?}"))
                .clone()
        };
        for (epid, account) in [(&e1, "alice"), (&e2, "alice"), (&e3, "bob")] {
            let r = by_epid(epid);
            assert_eq!(r["account"], account, "{r}");
            assert_eq!(r["transport"], "tcp", "{r}");
            assert!(r["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{r}");
            assert!(r["since"].as_str().unwrap().ends_with('Z'), "{r}");
            assert!(r["node"].is_null(), "single node: {r}");
        }
        assert_eq!(by_epid(&e1)["client"], "msnp24-client");
        assert_eq!(by_epid(&e1)["client_version"], env!("CARGO_PKG_VERSION"));
        // JSON carries the client's text as it is; only the terminal table escapes it.
        assert_eq!(by_epid(&e3)["client"], forged);
        assert_eq!(by_epid(&e3)["client_version"], "9.9");

        let only_bob = sessions_json(d, &["--account", "bob"]);
        assert_eq!(only_bob.len(), 1, "{only_bob:#?}");
        assert_eq!(only_bob[0]["epid"], e3.as_str());
        assert!(sessions_json(d, &["--account", "carol"]).is_empty());

        let out = msnp24(&["admin", "sessions"], d);
        assert!(out.status.success(), "{out:?}");
        let table = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines.len(),
            4,
            "a header and one line per endpoint:\n{table}"
        );
        assert!(lines[0].starts_with("ACCOUNT"), "{table}");
        assert!(
            !lines[0].contains("NODE"),
            "no node column on one node:\n{table}"
        );
        assert!(table.contains("evil\\nbob  {x}  tcp\\u{202e}"), "{table}");
        assert!(!table.contains('\u{202e}'), "{table}");
        for e in [&e1, &e2, &e3] {
            assert_eq!(
                lines.iter().filter(|l| l.contains(e.as_str())).count(),
                1,
                "{table}"
            );
        }
        assert_eq!(String::from_utf8_lossy(&out.stderr), "3 endpoint(s)\n");

        // One endpoint: it gets OUT and is closed, the account's other one stays.
        let out = msnp24(&["admin", "kick", "alice", "--epid", &e1], d);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "signed out 1 endpoint(s) of alice\n"
        );
        signed_out(&mut alice1).await;
        expect_ok(alice2.ping().await.unwrap()).unwrap();
        let left: Vec<String> = sessions_json(d, &[])
            .iter()
            .map(|r| r["epid"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left.contains(&e2) && left.contains(&e3), "{left:?}");

        // The whole account: bob is untouched.
        let out = msnp24(&["admin", "kick", "alice"], d);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "signed out 1 endpoint(s) of alice\n"
        );
        signed_out(&mut alice2).await;
        expect_ok(bob.ping().await.unwrap()).unwrap();
        let left = sessions_json(d, &[]);
        assert_eq!(left.len(), 1, "{left:#?}");
        assert_eq!(left[0]["account"], "bob");
        let out = msnp24(&["admin", "kick", "alice"], d);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "signed out 0 endpoint(s) of alice\n"
        );
        assert!(
            bob.next_event_timeout(Duration::from_millis(200))
                .await
                .is_err(),
            "bob was told something"
        );
        for bad in [
            &["admin", "kick", "alice", "--epid", "nope"][..],
            &["admin", "sessions", "--account", "1bad"][..],
        ] {
            let out = msnp24(bad, d);
            assert!(!out.status.success(), "{bad:?}: {out:?}");
        }
    });
    drop(server);

    // No server: a clear error, not an empty listing.
    for args in [&["admin", "sessions"][..], &["admin", "kick", "bob"][..]] {
        let out = msnp24(args, d);
        assert!(!out.status.success(), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("no server is running") && err.contains("control.sock"),
            "{err}"
        );
    }
}

/// Whether `bytes` hold anything a progress line draws with: a carriage return or an ESC sequence.
fn has_progress(bytes: &[u8]) -> bool {
    bytes.iter().any(|b| *b == b'\r' || *b == 0x1b)
}

#[test]
fn progress_shows_at_a_terminal_and_never_in_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("test.toml"), "").unwrap();
    add_users(dir.path(), &["alice", "bob"]);
    let d = dir.path();
    let server = serve(d);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let _alice = sign_in(&server, "alice").await;
        let _bob = sign_in(&server, "bob").await;
        let backup = d.join("copy.sqlite3");
        let commands: [&[&str]; 5] = [
            &["admin", "sessions"],
            &["user", "list"],
            &["admin", "reports"],
            &["admin", "settings"],
            &["admin", "backup", backup.to_str().unwrap()],
        ];
        for args in commands {
            let out = msnp24(args, d);
            assert!(out.status.success(), "{args:?}: {out:?}");
            assert!(
                !has_progress(&out.stdout) && !has_progress(&out.stderr),
                "{args:?}: {out:?}"
            );
        }

        // The same listing at a terminal (a pseudo-terminal from util-linux's `script`) draws
        // its bar, so the check above would see progress if it leaked into a pipe.
        let cmd = format!("{BIN} admin sessions --data-dir {}", d.to_str().unwrap());
        let out = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("TERM", "xterm")
            .env("COLUMNS", "120")
            .env("LINES", "40")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(
            has_progress(&out.stdout),
            "no progress at a terminal: {out:?}"
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("2 endpoint(s)"),
            "{out:?}"
        );
    });
}
