//! The compatibility login chain of §10 over HTTPS, with a client that trusts only the generated
//! CA and reaches the server under the Microsoft and Skype host names; then MSNP over TLS with the
//! access token in `ATH`, and a message between two accounts logged in that way.

mod common;

use std::net::SocketAddr;

use common::*;
use msnp24_client::{expect_ok, new_epid, Client};
use msnp24_proto::{AccountName, FormattedMessage};
use msnp24_server::storage::ProfileUpdate;
use msnp24_server::tokens::{Claims, TokenKind};
use reqwest::StatusCode;

const HOSTS: [&str; 4] = [
    "login.live.com",
    "api.skype.com",
    "contacts.skype.com",
    "localhost",
];

fn https_client(t: &TestServer) -> (reqwest::Client, u16) {
    let ca = std::fs::read(t.server().ca_cert_path.as_ref().unwrap()).unwrap();
    let addr: SocketAddr = t.server().https_addr.unwrap();
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .redirect(reqwest::redirect::Policy::none());
    for host in HOSTS {
        b = b.resolve(host, addr);
    }
    (b.build().unwrap(), addr.port())
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}

/// The login page and its cookie.
async fn authorize(http: &reqwest::Client, port: u16) -> (String, String, String) {
    let url = format!("https://login.live.com:{port}/oauth20_authorize.srf?client_id=00000000480BC46C&scope=service::lw.skype.com::MBI_SSL&response_type=token&redirect_uri=https://login.live.com/oauth20_desktop.srf");
    let r = http.get(url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert!(cookie.starts_with("MSPOK="));
    let page = r.text().await.unwrap();
    let ppft = between(&page, "name=\"PPFT\" value=\"", "\"")
        .unwrap()
        .to_string();
    let url_post = between(&page, "urlPost:'", "'").unwrap().to_string();
    assert_eq!(
        url_post,
        format!("https://login.live.com:{port}/ppsecure/post.srf?client_id=00000000480BC46C&scope=service::lw.skype.com::MBI_SSL&response_type=token&redirect_uri=https://login.live.com/oauth20_desktop.srf")
    );
    (cookie, ppft, url_post)
}

struct Tokens {
    access: String,
    refresh: String,
    /// The redirect's `expires_in`.
    expires_in: String,
}

async fn form_login(
    http: &reqwest::Client,
    port: u16,
    login: &str,
    password: &str,
) -> reqwest::Response {
    let (cookie, ppft, url_post) = authorize(http, port).await;
    http.post(url_post)
        .header("cookie", cookie)
        .form(&[
            ("PPFT", ppft.as_str()),
            ("login", login),
            ("passwd", password),
            ("type", "11"),
        ])
        .send()
        .await
        .unwrap()
}

async fn full_login(http: &reqwest::Client, port: u16, login: &str) -> Tokens {
    let r = form_login(http, port, login, PASSWORD).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let (base, fragment) = location.split_once('#').unwrap();
    assert_eq!(
        base,
        format!("https://login.live.com:{port}/oauth20_desktop.srf")
    );
    let fields: std::collections::HashMap<String, String> =
        serde_urlencoded::from_str(fragment).unwrap();
    assert_eq!(fields["token_type"], "bearer");
    assert_eq!(fields["scope"], "service::lw.skype.com::MBI_SSL");
    assert_eq!(fields["user_id"].len(), 16);
    Tokens {
        access: fields["access_token"].clone(),
        refresh: fields["refresh_token"].clone(),
        expires_in: fields["expires_in"].clone(),
    }
}

async fn refresh(http: &reqwest::Client, port: u16, refresh: &str) -> reqwest::Response {
    http.post(format!("https://login.live.com:{port}/oauth20_token.srf"))
        .form(&[
            ("client_id", "00000000480BC46C"),
            ("scope", "service::lw.skype.com::MBI_SSL"),
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
        ])
        .send()
        .await
        .unwrap()
}

async fn skypetoken(http: &reqwest::Client, port: u16, access: &str) -> reqwest::Response {
    http.post(format!("https://api.skype.com:{port}/rps/skypetoken"))
        .form(&[
            ("scopes", "client"),
            ("clientVersion", "0/7.44.0.104//"),
            ("access_token", &format!("t={access}")),
            ("partner", "999"),
        ])
        .send()
        .await
        .unwrap()
}

async fn json(r: reqwest::Response) -> (StatusCode, serde_json::Value) {
    let status = r.status();
    (status, r.json().await.unwrap())
}

async fn setup() -> TestServer {
    setup_with(|_| {}).await
}

async fn setup_with(edit: impl FnOnce(&mut msnp24_server::Config)) -> TestServer {
    let t = TestServer::start_with(edit).await;
    let storage = t.server().state().storage.clone();
    for (name, email, display) in [
        ("live:alice", None, "Alice Liddell"),
        ("bob", Some("Bob@Example.com"), "Bob Builder"),
    ] {
        t.add_user(name).await;
        storage
            .update_profile(
                &AccountName::parse(name).unwrap(),
                &ProfileUpdate {
                    email: email.map(str::to_string),
                    display_name: Some(display.to_string()),
                    mood: Some("around".to_string()),
                },
            )
            .await
            .unwrap();
    }
    t
}

#[tokio::test]
async fn whole_login_chain_then_msnp_over_tls() {
    let t = setup().await;
    let (http, port) = https_client(&t);
    let mut clients = Vec::new();
    for (login, account) in [("live:alice", "live:alice"), ("bob@example.com", "bob")] {
        let first = full_login(&http, port, login).await;
        assert_eq!(first.expires_in, "86400");
        // Refresh: a new access token and refresh token.
        let (status, body) = json(refresh(&http, port, &first.refresh).await).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["token_type"], "bearer");
        assert_eq!(body["expires_in"], 86400);
        let access = body["access_token"].as_str().unwrap().to_string();
        assert!(body["refresh_token"].as_str().unwrap().len() > 20);
        // Skypetoken, then the profile with it.
        let (status, body) = json(skypetoken(&http, port, &access).await).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["expiresIn"], 86400);
        let skype = body["skypetoken"].as_str().unwrap().to_string();
        let (status, profile) = json(
            http.get(format!("https://api.skype.com:{port}/users/self/profile"))
                .header("X-Skypetoken", &skype)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(profile["username"], account);
        assert_eq!(profile["mood"], "around");
        let (_, public) = json(
            http.get(format!(
                "https://api.skype.com:{port}/users/live:alice/profile/public"
            ))
            .header("X-Skypetoken", &skype)
            .send()
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(public["displayname"], "Alice Liddell");
        assert_eq!(public["firstname"], "Alice");
        assert_eq!(public["lastname"], "Liddell");
        // Contacts, the last HTTPS step before MSNP: nobody yet.
        let (status, contacts) = json(
            http.get(format!(
                "https://contacts.skype.com:{port}/contacts/v2/users/{account}/contacts"
            ))
            .header("X-Skypetoken", &skype)
            .send()
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(contacts, serde_json::json!({"contacts": []}));
        // MSNP over TLS with the access token as `t=…` and `<uic>null</uic>`.
        let ca = std::fs::read(t.server().ca_cert_path.as_ref().unwrap()).unwrap();
        let mut c = Client::connect_tls(
            t.server().tls_addr.unwrap(),
            "s.gateway.messenger.live.com",
            &ca,
        )
        .await
        .unwrap();
        c.login(account, &access, &new_epid()).await.unwrap();
        clients.push(c);
    }
    let mut bob = clients.pop().unwrap();
    let mut alice = clients.pop().unwrap();
    expect_ok(
        alice
            .send_text("1:bob@example.com", "hi by alias")
            .await
            .unwrap(),
    )
    .unwrap();
    let f = bob.wait_for(WAIT, |f| f.cmd == "SDG").await.unwrap();
    let (_, m) = FormattedMessage::parse_payload(&f.payload).unwrap();
    assert_eq!(m.to(), Some("8:bob"));
    assert!(m.from().unwrap().starts_with("8:live:alice;epid={"));
    assert_eq!(m.body, b"hi by alias");
    expect_ok(bob.send_text("8:live:alice", "hi back").await.unwrap()).unwrap();
    let f = alice.wait_for(WAIT, |f| f.cmd == "SDG").await.unwrap();
    let (_, m) = FormattedMessage::parse_payload(&f.payload).unwrap();
    assert_eq!(m.body, b"hi back");
    assert_conformant(&alice);
    assert_conformant(&bob);
}

#[tokio::test]
async fn form_login_failures_are_pages_with_an_error_and_throttled() {
    let t = TestServer::start_with(|c| c.login_throttle.max_failures_per_account = 3).await;
    t.add_user("alice").await;
    let (http, port) = https_client(&t);
    for (login, password) in [("alice", "wrong password"), ("nobody", PASSWORD)] {
        let r = form_login(&http, port, login, password).await;
        assert_eq!(r.status(), StatusCode::OK);
        let page = r.text().await.unwrap();
        assert_eq!(
            between(&page, "sErrTxt:'", "'"),
            Some("That account name or password is incorrect.")
        );
    }
    // Malformed form bodies and a post without the page's cookie.
    let (_, ppft, url_post) = authorize(&http, port).await;
    for (body, cookie) in [
        ("%%%", None),
        ("login=alice", None),
        (&*format!("PPFT={ppft}&login=alice&passwd=x"), None),
        ("PPFT=forged&login=alice&passwd=x", Some("MSPOK=abc")),
    ] {
        let mut req = http
            .post(&url_post)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string());
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{body}");
        let page = r.text().await.unwrap();
        assert!(
            between(&page, "sErrTxt:'", "'").is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }
    // Two more failures reach the limit; then even the right password is refused.
    for _ in 0..2 {
        form_login(&http, port, "alice", "wrong password").await;
    }
    let r = form_login(&http, port, "alice", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("sErrTxt:'too many failed logins"));
}

#[tokio::test]
async fn token_failures_get_documented_errors_never_500() {
    let t = setup().await;
    let (http, port) = https_client(&t);
    let good = full_login(&http, port, "live:alice").await;
    let state = t.server().state().clone();
    let account = state
        .storage
        .account(&AccountName::parse("live:alice").unwrap())
        .await
        .unwrap()
        .unwrap();
    let expired = |kind| {
        state.tokens.issue(
            kind,
            &Claims {
                account: account.name.clone(),
                generation: account.generation,
                expires_at: 1,
                epid: None,
            },
        )
    };
    let forged = format!("{}x", good.refresh);

    // Refresh grants.
    for (token, what) in [
        (expired(TokenKind::Refresh), "expired"),
        (forged.clone(), "forged"),
        (good.access.clone(), "an access token"),
    ] {
        let (status, body) = json(refresh(&http, port, &token).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}");
        assert_eq!(body["error"], "invalid_grant", "{what}");
    }
    let (status, body) = json(
        http.post(format!("https://login.live.com:{port}/oauth20_token.srf"))
            .form(&[("grant_type", "password")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unsupported_grant_type"))
    );
    let (status, body) = json(
        http.post(format!("https://login.live.com:{port}/oauth20_token.srf"))
            .form(&[("grant_type", "refresh_token")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );

    // Skypetokens.
    for (token, code) in [
        (expired(TokenKind::Login), 40120),
        ("garbage".to_string(), 40120),
        (good.refresh.clone(), 40120),
    ] {
        let (status, body) = json(skypetoken(&http, port, &token).await).await;
        assert_eq!(
            (status, body["status"]["code"].as_u64()),
            (StatusCode::UNAUTHORIZED, Some(code))
        );
    }
    let (status, body) = json(
        http.post(format!("https://api.skype.com:{port}/rps/skypetoken"))
            .form(&[("scopes", "client")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["status"]["code"].as_u64()),
        (StatusCode::BAD_REQUEST, Some(40000))
    );

    // Profile without, with a forged and with an expired X-Skypetoken.
    let profile = format!("https://api.skype.com:{port}/users/self/profile");
    let (status, body) = json(http.get(&profile).send().await.unwrap()).await;
    assert_eq!(
        (status, body["status"]["code"].as_u64()),
        (StatusCode::UNAUTHORIZED, Some(40100))
    );
    for token in ["forged".to_string(), expired(TokenKind::Skype)] {
        let r = http
            .get(&profile)
            .header("X-Skypetoken", token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let (status, body) = json(
        http.get(format!(
            "https://api.skype.com:{port}/users/nobody/profile/public"
        ))
        .header(
            "X-Skypetoken",
            state.issue(TokenKind::Skype, &account, 60).0,
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, serde_json::json!({})));

    // A password change revokes the refresh token and the skypetoken.
    let (_, body) = json(skypetoken(&http, port, &good.access).await).await;
    let skype = body["skypetoken"].as_str().unwrap().to_string();
    msnp24_server::accounts::set_password(
        state.storage.as_ref(),
        &account.name,
        "another password",
    )
    .await
    .unwrap();
    assert_eq!(
        json(refresh(&http, port, &good.refresh).await).await.1["error"],
        "invalid_grant"
    );
    assert_eq!(
        http.get(&profile)
            .header("X-Skypetoken", skype)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

/// Every token of the chain follows `token_ttl_secs`, the skypetoken included, so an operator
/// shortens them together and a client's refresh path can be exercised.
#[tokio::test]
async fn a_short_configured_token_lifetime_shows_in_expires_in() {
    const TTL: u64 = 90;
    let t = setup_with(|c| c.token_ttl_secs = TTL).await;
    let (http, port) = https_client(&t);
    let first = full_login(&http, port, "live:alice").await;
    assert_eq!(first.expires_in, TTL.to_string());
    let (status, body) = json(refresh(&http, port, &first.refresh).await).await;
    assert_eq!(
        (status, body["expires_in"].as_u64()),
        (StatusCode::OK, Some(TTL))
    );
    let access = body["access_token"].as_str().unwrap().to_string();
    let (status, body) = json(skypetoken(&http, port, &access).await).await;
    assert_eq!(
        (status, body["expiresIn"].as_u64()),
        (StatusCode::OK, Some(TTL)),
        "{body}"
    );
    // The token itself expires then, not a day later.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let skype = body["skypetoken"].as_str().unwrap();
    let claims = t
        .server()
        .state()
        .tokens
        .verify(TokenKind::Skype, skype, now)
        .unwrap();
    assert!(
        (claims.expires_at - now - TTL as i64).abs() <= 5,
        "{claims:?}"
    );
    let later = now + TTL as i64 + 1;
    assert!(t
        .server()
        .state()
        .tokens
        .verify(TokenKind::Skype, skype, later)
        .is_err());
    // The Skype-name path issues the same lifetime.
    let digest = msnp24_server::accounts::legacy_digest("bob", PASSWORD);
    let (status, body) = json(
        http.post(format!("https://api.skype.com:{port}/login/skypetoken"))
            .form(&[
                ("scopes", "client"),
                ("username", "bob"),
                ("passwordHash", &digest),
            ])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["expiresIn"].as_u64()),
        (StatusCode::OK, Some(TTL)),
        "{body}"
    );
}

#[tokio::test]
async fn skype_name_clients_log_in_with_the_legacy_digest() {
    let t = setup().await;
    let (http, port) = https_client(&t);
    let post = |username: &str, hash: String| {
        http.post(format!("https://api.skype.com:{port}/login/skypetoken"))
            .form(&[
                ("scopes", "client"),
                ("clientVersion", "0/7.44.0.104//"),
                ("username", username),
                ("passwordHash", &hash),
            ])
            .send()
    };
    let digest = msnp24_server::accounts::legacy_digest("bob", PASSWORD);
    let (status, body) = json(post("bob", digest.clone()).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["skypetoken"].as_str().unwrap().len() > 20);
    let wrong = msnp24_server::accounts::legacy_digest("bob", "not it");
    let (status, body) = json(post("bob", wrong).await.unwrap()).await;
    assert_eq!(
        (status, body["status"]["code"].as_u64()),
        (StatusCode::UNAUTHORIZED, Some(40120))
    );
    let (status, body) = json(post("", digest).await.unwrap()).await;
    assert_eq!(
        (status, body["status"]["code"].as_u64()),
        (StatusCode::BAD_REQUEST, Some(40000))
    );
}

#[tokio::test]
async fn contacts_services_act_on_the_same_lists() {
    let t = setup().await;
    t.add_user("carol").await;
    let (http, port) = https_client(&t);
    let state = t.server().state().clone();
    let skypetoken = |name: &str| {
        let state = state.clone();
        let name = name.to_string();
        async move {
            let account = state
                .storage
                .account(&AccountName::parse(&name).unwrap())
                .await
                .unwrap()
                .unwrap();
            state.issue(TokenKind::Skype, &account, 3600).0
        }
    };
    let (alice_st, bob_st) = (skypetoken("live:alice").await, skypetoken("bob").await);
    let alice = t.signed_in("live:alice").await;
    let mut bob = t.signed_in("bob").await;
    let base = format!("https://contacts.skype.com:{port}");
    let put = |path: String, token: &str| {
        http.put(format!("{base}{path}"))
            .header("X-Skypetoken", token.to_string())
    };
    let get = |path: String, token: &str| {
        http.get(format!("{base}{path}"))
            .header("X-Skypetoken", token.to_string())
    };

    // Alice asks bob over HTTP: his MSNP endpoint gets the request as §4.1 says.
    let r = put("/users/self/contacts/auth-request/bob".into(), &alice_st)
        .form(&[("greeting", "hi bob, it's alice")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let f = bob
        .wait_for(WAIT, |f| f.cmd == "NFY" && f.target == "MSGR\\CONTACTS")
        .await
        .unwrap();
    assert_eq!(
        f.payload,
        b"\r\n<ml l=\"8\"><skp><c n=\"live:alice\" t=\"8\"/></skp></ml>"
    );

    // Carol asks bob over MSNP by his e-mail alias (`t="1"` in the older `<d>` grouping).
    let carol = t.signed_in("carol").await;
    let ml =
        "<ml l=\"1\"><d n=\"example.com\"><c n=\"bob\" t=\"1\"><s l=\"3\" n=\"IM\"/></c></d></ml>";
    expect_ok(
        carol
            .request("PUT", "MSGR\\CONTACTS", carol.payload(ml))
            .await
            .unwrap(),
    )
    .unwrap();
    bob.wait_for(WAIT, |f| f.cmd == "NFY" && f.target == "MSGR\\CONTACTS")
        .await
        .unwrap();

    let (status, pending) = json(
        get("/users/self/contacts/auth-request".into(), &bob_st)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let pending = pending.as_array().unwrap().clone();
    assert_eq!(pending.len(), 2, "{pending:?}");
    let from = |who: &str| {
        pending
            .iter()
            .find(|p| p["sender"] == who)
            .cloned()
            .unwrap()
    };
    assert_eq!(from("live:alice")["greeting"], "hi bob, it's alice");
    assert!(from("live:alice")["event_time"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert_eq!(from("carol")["greeting"], "");

    // Bob accepts alice and declines carol over HTTP.
    assert_eq!(
        put(
            "/users/self/contacts/auth-request/live:alice/accept".into(),
            &bob_st
        )
        .send()
        .await
        .unwrap()
        .status(),
        StatusCode::OK
    );
    assert_eq!(
        put(
            "/users/self/contacts/auth-request/carol/decline".into(),
            &bob_st
        )
        .send()
        .await
        .unwrap()
        .status(),
        StatusCode::OK
    );
    let (_, pending) = json(
        get("/users/self/contacts/auth-request".into(), &bob_st)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(pending, serde_json::json!([]));
    let (status, list) = json(
        get("/contacts/v2/users/live:alice/contacts".into(), &alice_st)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["contacts"].as_array().unwrap().len(), 1);
    let c = &list["contacts"][0];
    assert_eq!(
        (
            c["mri"].as_str(),
            c["display_name"].as_str(),
            c["authorized"].as_bool(),
            c["blocked"].as_bool()
        ),
        (Some("8:bob"), Some("Bob Builder"), Some(true), Some(false))
    );
    // The contacts service and the profile service split the display name alike.
    assert_eq!(
        (
            &c["profile"]["name"]["first"],
            &c["profile"]["name"]["surname"]
        ),
        (&serde_json::json!("Bob"), &serde_json::json!("Builder"))
    );
    let (status, public) = json(
        http.get(format!(
            "https://api.skype.com:{port}/users/bob/profile/public"
        ))
        .header("X-Skypetoken", &alice_st)
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            &public["firstname"],
            &public["lastname"],
            &public["displayname"]
        ),
        (
            &serde_json::json!("Bob"),
            &serde_json::json!("Builder"),
            &serde_json::json!("Bob Builder")
        )
    );
    assert_eq!(c["profile"]["mood"], "around");
    // The same list MSNP sees: bob's row for alice has forward and allow.
    let rows = state
        .storage
        .contacts(&AccountName::parse("bob").unwrap())
        .await
        .unwrap();
    assert_eq!(
        rows.iter()
            .map(|c| (c.name.as_str(), c.bits))
            .collect::<Vec<_>>(),
        [("live:alice", 3)]
    );

    // Block over HTTP stops messages (silently); unblock restores them; DELETE removes.
    assert_eq!(
        put("/users/self/contacts/live:alice/block".into(), &bob_st)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let (_, list) = json(
        get("/contacts/v2/users/self/contacts".into(), &bob_st)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(list["contacts"][0]["blocked"], true);
    expect_ok(alice.send_text("8:bob", "blocked one").await.unwrap()).unwrap();
    assert_eq!(
        put("/users/self/contacts/live:alice/unblock".into(), &bob_st)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    expect_ok(alice.send_text("8:bob", "after unblock").await.unwrap()).unwrap();
    let f = bob.wait_for(WAIT, |f| f.cmd == "SDG").await.unwrap();
    assert_eq!(
        FormattedMessage::parse_payload(&f.payload).unwrap().1.body,
        b"after unblock"
    );
    let r = http
        .delete(format!("{base}/users/self/contacts/live:alice"))
        .header("X-Skypetoken", bob_st.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (_, list) = json(
        get("/contacts/v2/users/self/contacts".into(), &bob_st)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(list["contacts"], serde_json::json!([]));

    // Refusals: unknown name, someone else's list, oneself, no token. Never a 500.
    let (status, body) = json(
        put("/users/self/contacts/auth-request/nobody".into(), &bob_st)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["status"]["code"].as_u64()),
        (StatusCode::NOT_FOUND, Some(40400))
    );
    let (status, body) = json(
        get("/contacts/v2/users/bob/contacts".into(), &alice_st)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["status"]["code"].as_u64()),
        (StatusCode::FORBIDDEN, Some(40300))
    );
    let (status, _) = json(
        put("/users/self/contacts/bob/block".into(), &bob_st)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let r = http
        .get(format!("{base}/users/self/contacts/auth-request"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    for c in [&alice, &bob, &carol] {
        assert_conformant(c);
    }
}
