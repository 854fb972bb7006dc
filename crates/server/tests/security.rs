//! What the attack run of issue 19 found on the edges of the server: file permissions of the data
//! directory, the sign-in redirect and the headers of HTML pages.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn the_data_directory_and_every_file_in_it_are_private() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    // Writes make SQLite create its -wal and -shm files.
    let _c = t.signed_in("alice").await;
    let dir = t.dir.path();
    assert_eq!(mode(dir), 0o700, "data directory");
    let db = t.config.database_path();
    let name = db.file_name().unwrap().to_str().unwrap().to_string();
    let mut seen = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                assert_eq!(mode(&p), 0o700, "{}", p.display());
                stack.push(p);
            } else {
                assert_eq!(mode(&p), 0o600, "{}", p.display());
                seen.push(p.file_name().unwrap().to_str().unwrap().to_string());
            }
        }
    }
    for want in [
        name.clone(),
        format!("{name}-wal"),
        format!("{name}-shm"),
        "secret.key".to_string(),
        "ca.key".to_string(),
    ] {
        assert!(seen.contains(&want), "{want} not among {seen:?}");
    }
}

/// Runs the form sign-in over plain HTTP with `host` as the `Host` header; returns the login
/// page's response headers, the page, and the answer to the form.
async fn sign_in_with_host(
    t: &TestServer,
    host: &str,
) -> (reqwest::header::HeaderMap, String, reqwest::Response) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = t.http();
    let query =
        "client_id=00000000480BC46C&scope=service::lw.skype.com::MBI_SSL&response_type=token";
    let r = http
        .get(format!("{base}/oauth20_authorize.srf?{query}"))
        .header("host", host)
        .send()
        .await
        .unwrap();
    let headers = r.headers().clone();
    let cookie = headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = r.text().await.unwrap();
    let ppft = page
        .split("name=\"PPFT\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    let answer = http
        .post(format!("{base}/ppsecure/post.srf?{query}"))
        .header("host", host)
        .header("cookie", cookie)
        .form(&[
            ("PPFT", ppft.as_str()),
            ("login", "alice"),
            ("passwd", PASSWORD),
            ("type", "11"),
        ])
        .send()
        .await
        .unwrap();
    (headers, page, answer)
}

#[tokio::test]
async fn the_sign_in_redirect_names_only_configured_hosts() {
    let t = TestServer::start().await;
    t.add_user("alice").await;
    let (headers, page, answer) = sign_in_with_host(&t, "evil.example").await;
    assert!(
        !page.contains("evil.example"),
        "the login page posts elsewhere"
    );
    assert_eq!(answer.status(), reqwest::StatusCode::FOUND);
    let location = answer.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with("https://localhost/oauth20_desktop.srf#access_token="),
        "{location}"
    );
    // HTML pages may not be framed, and run only this origin's scripts.
    assert_eq!(headers["x-frame-options"], "DENY");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");

    // A configured name, with its port, is kept.
    let (_, page, answer) = sign_in_with_host(&t, "Login.Live.com:8443").await;
    assert!(page.contains("https://login.live.com:8443/ppsecure/post.srf"));
    let location = answer.headers()["location"].to_str().unwrap();
    assert!(location.starts_with("https://login.live.com:8443/oauth20_desktop.srf#"));
}
