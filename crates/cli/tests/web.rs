//! The web messenger end to end: the real `msnp24 serve`, Debian's Chromium driven headless over
//! WebDriver (chromedriver from `MSNP24_CHROMEDRIVER`, which `scripts/test` installs and sets),
//! and, beside the browsers, the project's client library over TCP. A failing test leaves a
//! screenshot of every browser it opened in `target/tmp/web-screenshots/` and prints the path.

mod common;
mod webdriver;

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _};
use common::*;
use msnp24_client::{Client, Event};
use serde_json::json;
use webdriver::{scenario, Browser, ENTER};

/// One browser test at a time: each starts its own Chromium windows, and the machine running the
/// suite may have two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long the client library waits for one frame.
const FRAME_WAIT: Duration = Duration::from_secs(20);

/// A server in a temporary data directory with these accounts.
struct Site {
    dir: tempfile::TempDir,
    server: Serve,
    msnp_port: u16,
    http_port: u16,
}

impl Site {
    fn new(users: &[&str], config: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("test.toml"), config).unwrap();
        let d = dir.path().to_str().unwrap();
        for name in users {
            let out = Command::new(BIN)
                .args(["user", "add", name, "--password", PASSWORD, "--data-dir", d])
                .output()
                .unwrap();
            assert!(out.status.success(), "user add {name}: {out:?}");
        }
        let (msnp_port, http_port) = (free_port(), free_port());
        let server = serve_at(dir.path(), msnp_port, http_port);
        Site {
            dir,
            server,
            msnp_port,
            http_port,
        }
    }

    fn url(&self) -> String {
        format!("{}/", self.server.http)
    }

    /// SIGKILLs the server and starts it again on the same ports and data directory.
    fn restart(&mut self) {
        self.server.kill();
        self.server = serve_at(self.dir.path(), self.msnp_port, self.http_port);
    }
}

/// Opens the page, signs in with the form, and waits until the window's gateway session is up.
async fn sign_in_browser(b: &Browser, site: &Site, name: &str) -> anyhow::Result<()> {
    b.goto(&site.url()).await?;
    b.wait_visible("#login-user").await?;
    b.type_into("#login-user", name).await?;
    b.type_into("#login-password", PASSWORD).await?;
    b.click("#login-submit").await?;
    wait_connected(b).await
}

async fn wait_connected(b: &Browser) -> anyhow::Result<()> {
    b.wait_visible("#app-view").await?;
    b.wait_js(
        "the gateway session to be up",
        "return document.getElementById('app-view').dataset.connected === 'true';",
        json!([]),
    )
    .await
    .map(drop)
}

/// Waits until `who`'s entry in the contact list shows this status (NLN, AWY, BSY, offline).
async fn wait_status(b: &Browser, who: &str, status: &str) -> anyhow::Result<()> {
    b.wait_visible(&format!(
        "#contacts li[data-contact=\"{who}\"][data-status=\"{status}\"]"
    ))
    .await
}

/// Opens the conversation with a contact from the list.
async fn open_chat(b: &Browser, who: &str) -> anyhow::Result<()> {
    b.click(&format!("#contacts li[data-contact=\"{who}\"] button.open"))
        .await?;
    b.wait_visible("#compose").await
}

async fn send(b: &Browser, text: &str) -> anyhow::Result<()> {
    b.type_into("#compose", text).await?;
    b.keys("#compose", ENTER).await
}

/// Waits for a delivered message with exactly this text in the open conversation.
async fn wait_message(b: &Browser, text: &str) -> anyhow::Result<()> {
    b.wait_js(
        &format!("message {text:?}"),
        "return [...document.querySelectorAll('#message-list li.msg:not(.pending) .text')]
             .some(e => e.textContent === arguments[0]);",
        json!([text]),
    )
    .await
    .map(drop)
}

/// How many messages in the open conversation show exactly this text.
async fn count_messages(b: &Browser, text: &str) -> anyhow::Result<u64> {
    let v = b
        .js(
            "return [...document.querySelectorAll('#message-list li.msg .text')]
                 .filter(e => e.textContent === arguments[0]).length;",
            json!([text]),
        )
        .await?;
    v.as_u64().context("a count")
}

/// Signs in with the client library and makes `a` and `b` contacts of each other.
async fn befriend(site: &Site, a: &str, b: &str) -> anyhow::Result<()> {
    let ca = sign_in(&site.server, a).await;
    let cb = sign_in(&site.server, b).await;
    ca.add_contact(b).await?;
    cb.allow_contact(a).await?;
    ca.sign_out().await?;
    cb.sign_out().await?;
    Ok(())
}

/// Waits until the client library sees a message from `from` with this text.
async fn client_receives(c: &mut Client, from: &str, text: &str) -> anyhow::Result<()> {
    let from = format!("8:{from};");
    c.wait_for(FRAME_WAIT, |f| {
        matches!(Event::from_frame(f), Event::Message { from: ref f, ref kind, text: ref t }
            if f.starts_with(&from) && kind == "Text" && t == text)
    })
    .await
    .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_with_security_headers() {
    let _serial = SERIAL.lock().await;
    let site = Site::new(&[], "");
    let r = reqwest::get(site.url()).await.unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let html = r.text().await.unwrap();
    // No inline script for the CSP to forbid: every script is a file of the server's own.
    assert!(html.contains("<script type=\"module\" src=\"/web/app.js\"></script>"));
    assert_eq!(html.matches("<script").count(), 1);
    for (path, kind) in [
        ("web/app.js", "text/javascript"),
        ("web/msnp.js", "text/javascript"),
        ("web/style.css", "text/css"),
    ] {
        let r = reqwest::get(format!("{}{path}", site.url())).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(kind));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_throttling_are_explained() {
    let _serial = SERIAL.lock().await;
    let site = Site::new(
        &["alice"],
        "[login_throttle]\nmax_failures_per_account = 2\nmax_failures_per_ip = 100\n",
    );
    let site = &site;
    scenario("wrong_password", |ctx| async move {
        // A phone-sized window: the form must work there too.
        let b = ctx.browser_sized("alice", 390, 800).await?;
        b.goto(&site.url()).await?;
        b.wait_visible("#login-user").await?;
        b.type_into("#login-user", "alice").await?;
        b.type_into("#login-password", "not-the-password").await?;
        b.keys("#login-password", ENTER).await?;
        b.wait_text("#login-error", "Wrong user name or password.")
            .await?;
        if b.js(
            "return document.getElementById('app-view').hidden;",
            json!([]),
        )
        .await?
            != json!(true)
        {
            bail!("the messenger opened after a wrong password");
        }
        // Further failures lock the account for a while; the page says so and for how long.
        for _ in 0..3 {
            b.type_into("#login-password", "still-wrong").await?;
            b.click("#login-submit").await?;
            b.wait_js(
                "an answer to the attempt",
                "return document.getElementById('login-error').textContent !== '' \
                 && !document.getElementById('login-submit').disabled;",
                json!([]),
            )
            .await?;
            if b.text("#login-error")
                .await?
                .unwrap_or_default()
                .contains("Too many failed")
            {
                break;
            }
        }
        b.wait_text("#login-error", "Try again in").await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browser_users_add_each_other_and_chat() {
    let _serial = SERIAL.lock().await;
    let site = Site::new(&["alice", "bob"], "");
    let site = &site;
    scenario("two_browsers", |ctx| async move {
        let alice = ctx.browser("alice").await?;
        // Bob is on a phone-sized screen: the list and the conversation take turns.
        let bob = ctx.browser_sized("bob", 400, 780).await?;
        sign_in_browser(&alice, site, "alice").await?;
        sign_in_browser(&bob, site, "bob").await?;

        alice.type_into("#add-name", "bob").await?;
        alice.keys("#add-name", ENTER).await?;
        alice
            .wait_visible("#contacts li[data-contact=\"bob\"]")
            .await?;
        bob.wait_visible("#requests li[data-request=\"alice\"]")
            .await?;
        bob.click("#requests li[data-request=\"alice\"] button.accept")
            .await?;
        wait_status(&bob, "alice", "NLN").await?;
        wait_status(&alice, "bob", "NLN").await?;

        open_chat(&alice, "bob").await?;
        send(&alice, "hello bob").await?;
        bob.wait_text("#contacts li[data-contact=\"alice\"] .badge", "1")
            .await?;
        open_chat(&bob, "alice").await?;
        wait_message(&bob, "hello bob").await?;
        // Read on Bob's side: the unread count is gone.
        bob.wait_js(
            "the unread badge to go",
            "return !document.querySelector('#contacts li[data-contact=\"alice\"] .badge');",
            json!([]),
        )
        .await?;

        // Typing is shown to the other side, then the reply arrives; markup stays text.
        bob.type_into("#compose", "<b>bold</b> & <img src=x onerror=alert(1)>")
            .await?;
        alice.wait_text("#typing", "bob is typing").await?;
        bob.keys("#compose", ENTER).await?;
        let reply = "<b>bold</b> & <img src=x onerror=alert(1)>";
        wait_message(&alice, reply).await?;
        let injected = alice
            .js(
                "return document.querySelectorAll('#message-list b, #message-list img').length;",
                json!([]),
            )
            .await?;
        if injected != json!(0) {
            bail!("message text became HTML: {injected}");
        }
        alice
            .wait_js(
                "the typing line to clear",
                "return document.getElementById('typing').textContent === '';",
                json!([]),
            )
            .await?;

        // Presence and mood changes reach the other side.
        alice
            .js(
                "const s = document.getElementById('me-status'); s.value = 'BSY'; \
             s.dispatchEvent(new Event('change'));",
                json!([]),
            )
            .await?;
        alice.type_into("#me-mood", "writing tests").await?;
        alice.keys("#me-mood", ENTER).await?;
        bob.click("#back").await?;
        wait_status(&bob, "alice", "BSY").await?;
        bob.wait_text(
            "#contacts li[data-contact=\"alice\"] .mood",
            "writing tests",
        )
        .await?;

        // Each message exactly once on both sides.
        for (b, text) in [(&alice, "hello bob"), (&alice, reply)] {
            let n = count_messages(b, text).await?;
            if n != 1 {
                bail!("{text:?} shown {n} times");
            }
        }

        // Signing out shows the sign-in form again, and the contact sees Alice go offline.
        alice.click("#sign-out").await?;
        alice.wait_visible("#login-form").await?;
        wait_status(&bob, "alice", "offline").await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_and_client_library_users_exchange_messages_and_presence() {
    let _serial = SERIAL.lock().await;
    let site = Site::new(&["alice", "bob"], "");
    let site = &site;
    scenario("browser_and_client", |ctx| async move {
        let alice = ctx.browser("alice").await?;
        sign_in_browser(&alice, site, "alice").await?;

        // Bob uses the client library over TCP: he asks, Alice accepts in the page.
        let mut bob = sign_in(&site.server, "bob").await;
        bob.set_presence("NLN", None).await?;
        bob.add_contact("alice").await?;
        alice
            .wait_visible("#requests li[data-request=\"bob\"]")
            .await?;
        alice
            .click("#requests li[data-request=\"bob\"] button.accept")
            .await?;
        wait_status(&alice, "bob", "NLN").await?;

        bob.set_presence("AWY", Some("out for lunch")).await?;
        wait_status(&alice, "bob", "AWY").await?;
        alice
            .wait_text("#contacts li[data-contact=\"bob\"] .mood", "out for lunch")
            .await?;

        bob.send_text("8:alice", "hi from the terminal").await?;
        open_chat(&alice, "bob").await?;
        wait_message(&alice, "hi from the terminal").await?;
        send(&alice, "hi from the browser").await?;
        client_receives(&mut bob, "alice", "hi from the browser").await?;

        // Alice's own status reaches Bob.
        alice
            .js(
                "const s = document.getElementById('me-status'); s.value = 'AWY'; \
             s.dispatchEvent(new Event('change'));",
                json!([]),
            )
            .await?;
        bob.wait_for(FRAME_WAIT, |f| {
            matches!(Event::from_frame(f), Event::Presence { ref account, ref status, .. }
                if account == "8:alice" && status == "AWY")
        })
        .await?;
        bob.sign_out().await?;
        wait_status(&alice, "bob", "offline").await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_chat_with_three_members() {
    let _serial = SERIAL.lock().await;
    let site = Site::new(&["alice", "bob", "carol"], "");
    befriend(&site, "alice", "bob").await.unwrap();
    befriend(&site, "alice", "carol").await.unwrap();
    let site = &site;
    scenario("group_chat", |ctx| async move {
        let alice = ctx.browser("alice").await?;
        let bob = ctx.browser("bob").await?;
        let carol = ctx.browser("carol").await?;
        for (b, name) in [(&alice, "alice"), (&bob, "bob"), (&carol, "carol")] {
            sign_in_browser(b, site, name).await?;
        }

        // Alice creates the group with Bob, then adds Carol.
        alice.click("#new-group").await?;
        alice.type_into("#group-topic", "Weekend").await?;
        alice
            .click("#group-members input[data-member=\"bob\"]")
            .await?;
        alice.click("#group-form button[type=submit]").await?;
        alice.wait_text("#conv-title", "Weekend").await?;
        bob.wait_text("#groups", "Weekend").await?;
        alice.click("#member-form button[type=submit]").await?;
        alice.wait_text("#message-list", "You added carol").await?;
        carol.wait_text("#groups", "Weekend").await?;

        send(&alice, "hello both").await?;
        for b in [&bob, &carol] {
            b.click("#groups li button.open").await?;
            wait_message(b, "hello both").await?;
        }
        send(&carol, "hi, carol here").await?;
        wait_message(&alice, "hi, carol here").await?;
        wait_message(&bob, "hi, carol here").await?;

        // Any member may change the topic; everyone sees the activity line and the new title.
        bob.type_into("#topic-input", "Sunday plans").await?;
        bob.click("#topic-form button[type=submit]").await?;
        for b in [&alice, &carol] {
            b.wait_text("#message-list", "changed the topic to \"Sunday plans\"")
                .await?;
            b.wait_text("#conv-title", "Sunday plans").await?;
        }

        // Bob leaves: the others see it, and the group is gone from his list.
        bob.click("#leave-group").await?;
        for b in [&alice, &carol] {
            b.wait_text("#message-list", "bob left").await?;
        }
        bob.wait_js(
            "the group to leave Bob's list",
            "return document.querySelectorAll('#groups li').length === 0;",
            json!([]),
        )
        .await?;
        send(&alice, "after bob").await?;
        wait_message(&carol, "after bob").await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrolling_back_loads_older_history_pages() {
    let _serial = SERIAL.lock().await;
    let site = Site::new(&["alice", "bob"], "[send_rate]\nper_second = 0\n");
    befriend(&site, "alice", "bob").await.unwrap();
    // Bob writes while Alice is away: offline messages, more than two pages of them.
    let bob = sign_in(&site.server, "bob").await;
    const SENT: usize = 45;
    for i in 0..SENT {
        bob.send_text("8:alice", &format!("old {i}")).await.unwrap();
    }
    let site = &site;
    scenario("history_paging", |ctx| async move {
        let alice = ctx.browser("alice").await?;
        sign_in_browser(&alice, site, "alice").await?;
        // The newest page arrives at sign-in and counts as unread.
        alice
            .wait_text("#contacts li[data-contact=\"bob\"] .badge", "+")
            .await?;
        open_chat(&alice, "bob").await?;
        wait_message(&alice, &format!("old {}", SENT - 1)).await?;
        if count_messages(&alice, "old 0").await? != 0 {
            bail!("the whole history came in one page");
        }
        // Scroll to the top until the first message is there; each scroll loads one page.
        let mut scrolls = 0;
        while count_messages(&alice, "old 0").await? == 0 {
            scrolls += 1;
            if scrolls > 10 {
                bail!("old 0 never arrived");
            }
            let before = alice
                .js("return document.querySelectorAll('#message-list li.msg').length;", json!([]))
                .await?;
            alice
                .js("document.getElementById('messages').scrollTop = 0;", json!([]))
                .await?;
            alice
                .wait_js(
                    "an older page",
                    "return document.querySelectorAll('#message-list li.msg').length > arguments[0];",
                    json!([before]),
                )
                .await?;
        }
        if scrolls < 2 {
            bail!("45 messages came in {scrolls} older page(s) of 20");
        }
        let shown = alice
            .js(
                "return [...document.querySelectorAll('#message-list li.msg .text')].map(e => e.textContent);",
                json!([]),
            )
            .await?;
        let expected: Vec<String> = (0..SENT).map(|i| format!("old {i}")).collect();
        if shown != json!(expected) {
            bail!("history out of order or duplicated: {shown}");
        }
        if !alice.js("return document.getElementById('load-older').hidden;", json!([])).await?.as_bool().unwrap_or(false) {
            bail!("more history offered after the first message");
        }
        Ok(())
    })
    .await;
    drop(bob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_reconnects_after_the_server_restarts() {
    let _serial = SERIAL.lock().await;
    let mut site = Site::new(&["alice", "bob"], "");
    befriend(&site, "alice", "bob").await.unwrap();
    let site = &mut site;
    scenario("reconnect", |ctx| async move {
        let alice = ctx.browser("alice").await?;
        sign_in_browser(&alice, site, "alice").await?;
        let bob = sign_in(&site.server, "bob").await;
        bob.send_text("8:alice", "before restart").await?;
        open_chat(&alice, "bob").await?;
        wait_message(&alice, "before restart").await?;
        drop(bob);

        site.server.kill();
        alice
            .wait_js(
                "the page to notice the server is gone",
                "return document.getElementById('app-view').dataset.connected === 'false';",
                json!([]),
            )
            .await?;
        alice.wait_text("#conn-state", "Reconnecting").await?;
        // Written while the server is down: kept, and sent once the page is back.
        send(&alice, "written while down").await?;
        site.restart();

        let mut bob = sign_in(&site.server, "bob").await;
        bob.send_text("8:alice", "after restart").await?;
        wait_connected(&alice).await?;
        wait_message(&alice, "after restart").await?;
        wait_message(&alice, "written while down").await?;
        client_receives_or_history(&mut bob, "written while down").await?;
        for text in ["before restart", "after restart", "written while down"] {
            let n = count_messages(&alice, text).await?;
            if n != 1 {
                bail!("{text:?} shown {n} times after the reconnect");
            }
        }
        // The server stored the resent message once, whatever the page retried.
        let history = bob.history("8:alice", None, 200).await?;
        let stored = history
            .iter()
            .filter(|m| m.content == "written while down")
            .count();
        if stored != 1 {
            bail!("\"written while down\" stored {stored} times");
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_share_carbons_and_read_state_and_the_list_is_managed() {
    let _serial = SERIAL.lock().await;
    let site = Site::new(&["alice", "bob", "carol"], "");
    befriend(&site, "alice", "bob").await.unwrap();
    let site = &site;
    scenario("tabs_and_list", |ctx| async move {
        // Two windows of Alice's: two endpoints of one account.
        let tab1 = ctx.browser("alice-tab1").await?;
        let tab2 = ctx.browser("alice-tab2").await?;
        sign_in_browser(&tab1, site, "alice").await?;
        sign_in_browser(&tab2, site, "alice").await?;
        let mut bob = sign_in(&site.server, "bob").await;
        bob.set_presence("NLN", None).await?;
        wait_status(&tab2, "bob", "NLN").await?;

        // A message reaches both tabs as unread; reading it in one clears the count in the other.
        bob.send_text("8:alice", "to every tab").await?;
        for t in [&tab1, &tab2] {
            t.wait_text("#contacts li[data-contact=\"bob\"] .badge", "1")
                .await?;
        }
        open_chat(&tab1, "bob").await?;
        wait_message(&tab1, "to every tab").await?;
        tab2.wait_js(
            "the read state to reach the other tab",
            "return !document.querySelector('#contacts li[data-contact=\"bob\"] .badge');",
            json!([]),
        )
        .await?;

        // What one tab sends, the other shows as Alice's own (a carbon), and Bob gets once.
        send(&tab1, "sent from tab 1").await?;
        client_receives(&mut bob, "alice", "sent from tab 1").await?;
        open_chat(&tab2, "bob").await?;
        wait_message(&tab2, "sent from tab 1").await?;
        tab2.wait_visible("#message-list li.msg.mine[data-from=\"alice\"]")
            .await?;

        // Block and unblock: presence stops and comes back both ways.
        tab1.click("#contacts li[data-contact=\"bob\"] button.block")
            .await?;
        tab1.wait_text("#contacts li[data-contact=\"bob\"] .status", "Blocked")
            .await?;
        bob.wait_for(FRAME_WAIT, |f| {
            matches!(Event::from_frame(f), Event::Offline { ref account } if account == "8:alice")
        })
        .await?;
        tab1.click("#contacts li[data-contact=\"bob\"] button.block")
            .await?;
        bob.wait_for(FRAME_WAIT, |f| {
            matches!(Event::from_frame(f), Event::Presence { ref account, .. } if account == "8:alice")
        })
        .await?;
        wait_status(&tab1, "bob", "NLN").await?;

        // A request declined stays declined after a reload; a removed contact stays removed.
        let carol = sign_in(&site.server, "carol").await;
        carol.add_contact("alice").await?;
        tab1.wait_visible("#requests li[data-request=\"carol\"]").await?;
        tab1.click("#requests li[data-request=\"carol\"] button.decline")
            .await?;
        tab1.click("#contacts li[data-contact=\"bob\"] button.remove")
            .await?;
        tab1.wait_js(
            "bob to leave the list",
            "return !document.querySelector('#contacts li[data-contact=\"bob\"]');",
            json!([]),
        )
        .await?;
        // The reload signs in again from the token this tab kept, as a new endpoint.
        tab1.js("window.beforeReload = true; location.reload();", json!([]))
            .await?;
        tab1.wait_js(
            "the reloaded page to connect",
            "return !window.beforeReload \
                 && document.getElementById('app-view').dataset.connected === 'true';",
            json!([]),
        )
        .await?;
        let leftovers = tab1
            .js(
                "return document.querySelectorAll('#requests li, #contacts li').length;",
                json!([]),
            )
            .await?;
        if leftovers != json!(0) {
            bail!("after the reload {leftovers} requests or contacts are back");
        }
        Ok(())
    })
    .await;
}

/// The message reached Bob live, or (if it was delivered before he signed in again) waits in
/// his history.
async fn client_receives_or_history(bob: &mut Client, text: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + FRAME_WAIT;
    loop {
        let history = bob.history("8:alice", None, 200).await?;
        if history.iter().any(|m| m.content == text) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{text:?} never reached bob");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Takes the README's picture (`docs/web-messenger.png`): Alice chatting with Bob, who uses the
/// client library, with Carol offline. Run by hand after the page changes:
/// `cargo test -p msnp24 --test web -- --ignored readme_screenshot`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes docs/web-messenger.png; run by hand"]
async fn readme_screenshot() {
    let _serial = SERIAL.lock().await;
    let site = Site::new(&["alice", "bob", "carol"], "");
    befriend(&site, "alice", "bob").await.unwrap();
    befriend(&site, "alice", "carol").await.unwrap();
    let site = &site;
    scenario("readme_screenshot", |ctx| async move {
        let bob = sign_in(&site.server, "bob").await;
        bob.set_presence("AWY", Some("on the train")).await?;
        bob.send_text("8:alice", "Are we still on for Saturday?")
            .await?;
        let alice = ctx.browser_sized("alice", 1000, 620).await?;
        sign_in_browser(&alice, site, "alice").await?;
        alice.type_into("#me-mood", "writing Rust").await?;
        alice.keys("#me-mood", ENTER).await?;
        wait_status(&alice, "bob", "AWY").await?;
        open_chat(&alice, "bob").await?;
        wait_message(&alice, "Are we still on for Saturday?").await?;
        send(&alice, "Yes! 10 am at the station.").await?;
        wait_message(&alice, "Yes! 10 am at the station.").await?;
        bob.send_message("8:alice", "Control/Typing", b"", None)
            .await?;
        bob.send_text("8:alice", "Great, see you there!").await?;
        wait_message(&alice, "Great, see you there!").await?;
        bob.send_message("8:alice", "Control/Typing", b"", None)
            .await?;
        alice.wait_text("#typing", "is typing").await?;
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/web-messenger.png");
        alice.screenshot(&path).await?;
        eprintln!("wrote {}", path.display());
        Ok(())
    })
    .await;
}
