//! What an operator sees of a running `msnp24 serve`: JSON log lines and Prometheus metrics.

mod common;

use std::process::Stdio;
use std::time::Duration;

use std::collections::HashMap;

use common::*;
use msnp24_client::{expect_ok, http_login, new_epid, Client};
use msnp24_proto::Payload;

fn add_users(dir: &std::path::Path, names: &[&str]) {
    let d = dir.to_str().unwrap();
    for name in names {
        run_ok(
            &["user", "add", name, "--password", PASSWORD, "--data-dir", d],
            &[],
        );
    }
}

#[test]
fn json_log_lines_name_connection_account_and_command() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("test.toml"), "").unwrap();
    add_users(dir.path(), &["alice", "bob"]);
    let log_path = dir.path().join("log.jsonl");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut server = serve_with(
        dir.path(),
        free_port(),
        free_port(),
        &["--log-format", "json"],
        "info",
        Stdio::from(log),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let alice = sign_in(&server, "alice").await;
        let _bob = sign_in(&server, "bob").await;
        expect_ok(alice.send_text("8:bob", "hello").await.unwrap()).unwrap();
        let (_, reply) = alice
            .send("XYZ", "MSGR", Payload::body("").encode())
            .await
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), reply)
            .await
            .unwrap()
            .unwrap();
        assert!(reply.cmd.parse::<u16>().is_ok(), "{reply:?}");
    });
    server.kill();

    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let find = |message: &str| -> Vec<&serde_json::Value> {
        lines.iter().filter(|l| l["message"] == message).collect()
    };
    for l in &lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(l.get(key).is_some(), "{key} missing in {l}");
        }
    }
    let opened = find("connection opened");
    assert_eq!(opened.len(), 2, "{text}");
    for l in &opened {
        assert!(l["span"]["conn"].is_u64(), "{l}");
        assert_eq!(l["span"]["transport"], "tcp", "{l}");
        assert_eq!(l["span"]["name"], "conn", "{l}");
    }
    let bound = find("endpoint bound");
    assert_eq!(bound.len(), 2, "{text}");
    for l in &bound {
        assert_eq!(l["span"]["cmd"], "BND", "{l}");
        assert!(l["span"]["conn"].is_u64(), "{l}");
    }
    let refused = find("request refused");
    assert_eq!(refused.len(), 1, "{text}");
    let r = refused[0];
    assert_eq!(r["span"]["cmd"], "XYZ", "{r}");
    assert_eq!(r["span"]["account"], "alice", "{r}");
    assert!(r["span"]["conn"].is_u64(), "{r}");
    assert_eq!(r["code"], 240, "{r}");
    // Once signed in, the connection's own lines carry the account too.
    let closed = find("connection closed");
    assert!(
        closed.is_empty() || closed.iter().all(|l| l["span"]["account"].is_string()),
        "{text}"
    );
}

/// `GET /metrics`, parsed into `name{labels}` → value.
async fn scrape(addr: &str) -> (String, HashMap<String, f64>) {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let values = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_string(), value.parse().unwrap())
        })
        .collect();
    (text, values)
}

fn value(m: &HashMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("{series} missing from {:?}", m.keys()))
}

#[test]
fn metrics_count_a_scripted_session_and_pass_promtool() {
    let promtool = std::env::var("MSNP24_PROMTOOL").expect(
        "MSNP24_PROMTOOL is not set: run the tests with scripts/test, which installs promtool",
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("test.toml"), "").unwrap();
    add_users(dir.path(), &["alice", "bob"]);
    let metrics = format!("127.0.0.1:{}", free_port());
    let server = serve_with(
        dir.path(),
        free_port(),
        free_port(),
        &["--metrics-listen", &metrics],
        "warn",
        Stdio::inherit(),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Off the public HTTP port: metrics only where configured.
        let public = reqwest::get(format!("{}/metrics", server.http))
            .await
            .unwrap();
        assert_eq!(public.status(), 404);

        let alice = sign_in(&server, "alice").await;
        let mut bob = sign_in(&server, "bob").await;
        assert!(http_login(&server.http, "alice", "wrong-password")
            .await
            .is_err());
        let mut intruder = Client::connect_tcp(server.msnp).await.unwrap();
        assert!(intruder
            .login("alice", "forged", &new_epid())
            .await
            .is_err());
        for i in 0..3 {
            expect_ok(alice.send_text("8:bob", &format!("m{i}")).await.unwrap()).unwrap();
        }
        let mut got = 0;
        while got < 3 {
            let f = bob
                .next_event_timeout(Duration::from_secs(10))
                .await
                .unwrap()
                .expect("bob's connection ended");
            if f.cmd == "SDG" {
                got += 1;
            }
        }
        let (_, reply) = alice
            .send("XYZ", "MSGR", Payload::body("").encode())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), reply)
            .await
            .unwrap()
            .unwrap();

        let m = scrape(&metrics).await.1;
        let expect = [
            // The intruder's connection stays open after its refused handshake.
            (r#"msnp24_connections_open{transport="tcp"}"#, 3.0),
            (r#"msnp24_connections_open{transport="tls"}"#, 0.0),
            ("msnp24_endpoints_bound", 2.0),
            ("msnp24_accounts_online", 2.0),
            (r#"msnp24_handshakes_total{outcome="bound"}"#, 2.0),
            (r#"msnp24_handshakes_total{outcome="refused"}"#, 2.0),
            (r#"msnp24_logins_total{outcome="ok"}"#, 2.0),
            (r#"msnp24_logins_total{outcome="invalid"}"#, 1.0),
            (r#"msnp24_logins_total{outcome="throttled"}"#, 0.0),
            (r#"msnp24_frames_in_total{command="SDG"}"#, 3.0),
            (r#"msnp24_frames_in_total{command="other"}"#, 1.0),
            (r#"msnp24_frames_in_total{command="BND"}"#, 3.0),
            (r#"msnp24_frames_out_total{command="error"}"#, 3.0),
            (r#"msnp24_refusals_total{code="240"}"#, 1.0),
            (r#"msnp24_refusals_total{code="911"}"#, 2.0),
            ("msnp24_messages_stored_total", 3.0),
            ("msnp24_messages_delivered_total", 3.0),
            ("msnp24_delivery_latency_seconds_count", 3.0),
            ("msnp24_store_batch_size_sum", 3.0),
            ("msnp24_outbound_drops_total", 0.0),
            ("msnp24_slow_reader_kicks_total", 0.0),
            ("msnp24_redis_errors_total", 0.0),
            (r#"msnp24_database_errors_total{backend="sqlite"}"#, 0.0),
            (r#"msnp24_cluster_deliveries_total{direction="sent"}"#, 0.0),
        ];
        let wrong: Vec<String> = expect
            .iter()
            .filter(|(s, v)| value(&m, s) != *v)
            .map(|(s, v)| format!("{s} = {} (expected {v})", value(&m, s)))
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
        // Three replies to SDG and each message's copy to bob.
        assert_eq!(value(&m, r#"msnp24_frames_out_total{command="SDG"}"#), 6.0);
        let batches = value(&m, "msnp24_store_commit_seconds_count");
        assert!((1.0..=3.0).contains(&batches), "{batches} batches");
        assert_eq!(value(&m, "msnp24_store_batch_size_count"), batches);

        // A presence change seen by a contact is one notification.
        expect_ok(alice.add_contact("bob").await.unwrap()).unwrap();
        expect_ok(bob.allow_contact("alice").await.unwrap()).unwrap();
        // Whatever the contact changes sent bob is drained first.
        while let Ok(Some(_)) = bob.next_event_timeout(Duration::from_millis(200)).await {}
        let before = value(
            &scrape(&metrics).await.1,
            "msnp24_presence_notifications_total",
        );
        expect_ok(alice.set_presence("AWY", None).await.unwrap()).unwrap();
        loop {
            let f = bob
                .next_event_timeout(Duration::from_secs(10))
                .await
                .unwrap()
                .expect("no presence notification");
            if f.cmd == "NFY" {
                break;
            }
        }
        let after = value(
            &scrape(&metrics).await.1,
            "msnp24_presence_notifications_total",
        );
        assert_eq!(after - before, 1.0);
        drop(intruder);

        let (text, _) = scrape(&metrics).await;
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP"
            );
        }
        let mut check = std::process::Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        check
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let analyze = which("systemd-analyze");
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/msnp24.service"),
    )
    .unwrap();
    for key in [
        "User=msnp24",
        "LimitNOFILE=",
        "ProtectSystem=strict",
        "NoNewPrivileges=true",
        "ReadWritePaths=/var/lib/msnp24",
        "Restart=on-failure",
        "ExecReload=",
    ] {
        assert!(unit.contains(key), "the unit lacks {key}");
    }
    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("msnp24.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/msnp24", BIN)).unwrap();
    let out = std::process::Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // It exits 0 on unknown keys and bad values too, and only says so: any word about the unit fails.
    assert!(
        out.status.success() && !stderr.contains("msnp24.service"),
        "systemd-analyze verify: {stderr}"
    );
}

/// A program on PATH; scripts/test installs the ones these tests need.
fn which(program: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{program} not found: run the tests with scripts/test, which installs it")
        })
}

#[test]
fn example_alert_rules_pass_promtool_check_rules() {
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../contrib/prometheus-alerts.yml");
    let out = std::process::Command::new(which("promtool"))
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(out.status.success(), "promtool check rules: {out:?}");
    let text = std::fs::read_to_string(&rules).unwrap();
    // Every metric the rules use is one the server exports (docs/operations.md lists them).
    let stats = include_str!("../../server/src/stats.rs");
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if let Some(base) = word.strip_prefix("msnp24_") {
            let base = base.trim_end_matches("_bucket");
            assert!(
                stats.contains(&format!("\"msnp24_{base}\"")),
                "{word} is not exported"
            );
        }
    }
}

/// Messages answered before the backup starts.
const BEFORE_BACKUP: usize = 100;

#[test]
fn backup_taken_while_serving_keeps_every_acknowledged_message() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("test.toml"),
        "[send_rate]\nper_second = 0\n",
    )
    .unwrap();
    add_users(dir.path(), &["alice", "bob"]);
    let restored = tempfile::tempdir().unwrap();
    std::fs::write(restored.path().join("test.toml"), "").unwrap();
    let copy = restored.path().join("msnp24.sqlite3");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut server = serve(dir.path());
    let (before, answered) = rt.block_on(async {
        let alice = sign_in(&server, "alice").await;
        let count = Arc::new(AtomicUsize::new(0));
        let streaming = tokio::spawn(stream(alice, "8:bob", count.clone()));
        while count.load(Ordering::SeqCst) < BEFORE_BACKUP {
            assert!(!streaming.is_finished(), "the stream stopped early");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Replies are taken in order, so these are msg 0 .. msg before-1.
        let before = count.load(Ordering::SeqCst);
        let (data, target) = (dir.path().to_path_buf(), copy.clone());
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(BIN)
                .args(["admin", "backup"])
                .arg(&target)
                .arg("--data-dir")
                .arg(&data)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("backed up"));
        // Piped: no progress drawn.
        assert!(out.stderr.is_empty(), "{out:?}");
        let still = count.load(Ordering::SeqCst);
        assert!(
            still > before,
            "the server stopped answering during the backup"
        );
        server.kill();
        (before, streaming.await.unwrap())
    });
    drop(server);

    // Restore: the copy, and the token secret beside it, are a data directory.
    std::fs::copy(
        dir.path().join("secret.key"),
        restored.path().join("secret.key"),
    )
    .unwrap();
    let server = serve(restored.path());
    rt.block_on(async {
        let bob = sign_in(&server, "bob").await;
        let history = bob.history("8:alice", None, 200).await.unwrap();
        let seen: HashMap<&str, u64> = history
            .iter()
            .map(|m| (m.content.as_str(), m.message_id))
            .collect();
        for i in 0..before {
            let text = format!("msg {i}");
            assert_eq!(
                seen.get(text.as_str()),
                answered.get(&text),
                "{text}, acknowledged before the backup, is not in it"
            );
        }
        eprintln!(
            "acknowledged before the backup {before}, in the backup {}, answered in all {}",
            history.len(),
            answered.len()
        );
    });
}
