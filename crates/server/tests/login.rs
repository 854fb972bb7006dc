//! `POST /login` and `GET /healthz`: tokens, refusals, throttling, revocation.

mod common;

use common::*;
use msnp24_client::new_epid;
use msnp24_proto::AccountName;
use reqwest::StatusCode;

async fn post(t: &TestServer, body: &str) -> (StatusCode, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/login", t.http()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let json = r.json().await.unwrap_or(serde_json::Value::Null);
    (status, json)
}

#[tokio::test]
async fn login_issues_tokens_and_refuses_with_json_errors() {
    let t = TestServer::start().await;
    t.add_user("Alice").await;
    let (status, json) = post(&t, r#"{"username": "ALICE", "password": "correct horse"}"#).await;
    assert_eq!(status, StatusCode::OK);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let expires = json["expires_at"].as_i64().unwrap();
    assert!(expires > now && expires <= now + 86_400 + 5);
    assert!(json["token"].as_str().unwrap().len() > 20);

    for body in [
        r#"{"username": "alice", "password": "wrong"}"#,
        r#"{"username": "nobody", "password": "correct horse"}"#,
        r#"{"username": "!!", "password": "x"}"#,
    ] {
        let (status, json) = post(&t, body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(json["error"], "invalid_credentials");
    }
    for body in ["{", "[]", r#"{"username": "alice"}"#, ""] {
        let (status, json) = post(&t, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(json["error"], "bad_request");
    }
    let health: serde_json::Value = reqwest::get(format!("{}/healthz", t.http()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
}

#[tokio::test]
async fn repeated_failures_are_throttled_even_with_the_right_password() {
    let t = TestServer::start_with(|c| c.login_throttle.max_failures_per_account = 3).await;
    t.add_user("alice").await;
    t.add_user("bob").await;
    for _ in 0..3 {
        let (status, _) = post(&t, r#"{"username": "alice", "password": "wrong"}"#).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, json) = post(&t, r#"{"username": "alice", "password": "correct horse"}"#).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json["error"], "too_many_attempts");
    assert!(json["retry_after"].as_u64().unwrap() > 0);
    // Another account from the same address is not locked by alice's failures.
    let (status, _) = post(&t, r#"{"username": "bob", "password": "correct horse"}"#).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn per_address_limit_covers_many_accounts() {
    let t = TestServer::start_with(|c| c.login_throttle.max_failures_per_ip = 4).await;
    t.add_user("alice").await;
    for i in 0..4 {
        let body = format!(r#"{{"username": "user{i}", "password": "wrong"}}"#);
        assert_eq!(post(&t, &body).await.0, StatusCode::UNAUTHORIZED);
    }
    let (status, _) = post(&t, r#"{"username": "alice", "password": "correct horse"}"#).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn password_change_and_removal_revoke_tokens() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    let token = t.token("alice").await;
    let storage = &t.server().state().storage;
    let name = AccountName::parse("alice").unwrap();
    msnp24_server::accounts::set_password(storage.as_ref(), &name, "new password")
        .await
        .unwrap();
    let mut c = t.connect().await;
    let r = c.handshake(&token, &new_epid(), 2).await.unwrap();
    assert_eq!(r[1].cmd, "911");

    t.add_user("bob").await;
    let token = t.token("bob").await;
    storage
        .remove_account(&AccountName::parse("bob").unwrap())
        .await
        .unwrap();
    let mut c = t.connect().await;
    let r = c.handshake(&token, &new_epid(), 2).await.unwrap();
    assert_eq!(r[1].cmd, "911");
}

async fn post_from(t: &TestServer, from: &str, body: &str) -> StatusCode {
    reqwest::Client::builder()
        .local_address(from.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
        .post(format!("{}/login", t.http()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn failures_from_one_address_lock_it_out_of_the_account_and_its_alias_not_the_owner() {
    let t = TestServer::start_with(|c| {
        c.login_throttle.max_failures_per_account = 3;
        c.login_throttle.slow_down_ms = 10;
    })
    .await;
    t.add_user("alice").await;
    let update = msnp24_server::storage::ProfileUpdate {
        email: Some("alice@example.com".into()),
        ..Default::default()
    };
    let storage = &t.server().state().storage;
    let alice = AccountName::parse("alice").unwrap();
    assert!(storage.update_profile(&alice, &update).await.unwrap());
    let attacker = "127.0.0.2";
    for _ in 0..3 {
        let s = post_from(
            &t,
            attacker,
            r#"{"username": "alice", "password": "wrong"}"#,
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    // The e-mail alias is the same account: no fresh count of its own.
    let s = post_from(
        &t,
        attacker,
        r#"{"username": "alice@example.com", "password": "correct horse"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    // The owner, from an address of their own, still signs in (slowed, not refused).
    let s = post_from(
        &t,
        "127.0.0.3",
        r#"{"username": "alice", "password": "correct horse"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn oversized_logins_fail_before_any_work_and_stay_out_of_the_throttle() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    let long = "a".repeat(1_000_000);
    for body in [
        format!(r#"{{"username": "{long}", "password": "correct horse"}}"#),
        format!(r#"{{"username": "alice", "password": "{long}"}}"#),
    ] {
        for _ in 0..5 {
            let (status, json) = post(&t, &body).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert_eq!(json["error"], "invalid_credentials");
        }
    }
    // Only the address was counted: no entry per name, however long.
    assert_eq!(t.server().state().throttle.tracked(), 1);
    let (status, _) = post(&t, r#"{"username": "alice", "password": "correct horse"}"#).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_login_body_over_the_limit_gets_413() {
    let t = TestServer::start().await;
    let long = "a".repeat(3 * 1024 * 1024);
    let (status, json) = post(&t, &format!(r#"{{"username": "{long}", "password": "x"}}"#)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json["error"], "too_large");
}
