//! A small W3C WebDriver client over `reqwest` for the web messenger's browser tests: one
//! chromedriver per test, one headless Chromium session per user, DOM polled with a deadline,
//! and a screenshot of every browser when a test fails.

use std::future::Future;
use std::net::TcpListener;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use base64::Engine as _;
use futures::FutureExt as _;
use serde_json::{json, Value};

/// How long any one wait on the page may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);
/// How often a wait looks at the page again.
const POLL: Duration = Duration::from_millis(100);
/// The key WebDriver sends for Enter.
pub const ENTER: &str = "\u{E007}";
/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where failing tests leave their screenshots (`MSNP24_SCREENSHOT_DIR` overrides).
pub fn screenshot_dir() -> PathBuf {
    std::env::var_os("MSNP24_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-screenshots"))
}

fn chromedriver_path() -> PathBuf {
    std::env::var_os("MSNP24_CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("chromedriver"))
}

fn chromium_path() -> Option<PathBuf> {
    std::env::var_os("MSNP24_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| {
            ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
        })
}

/// A running chromedriver, killed when dropped.
pub struct Driver {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    /// Starts chromedriver on a free loopback port and waits until it is ready.
    pub async fn start() -> anyhow::Result<Driver> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let path = chromedriver_path();
        let child = Command::new(&path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (install chromium-driver, or set MSNP24_CHROMEDRIVER; \
                     scripts/test does both)",
                    path.display()
                )
            })?;
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(r) = driver
                .http
                .get(format!("{}/status", driver.url))
                .send()
                .await
            {
                let v: Value = r.json().await.unwrap_or_default();
                if v["value"]["ready"] == json!(true) {
                    return Ok(driver);
                }
            }
            if Instant::now() > deadline {
                bail!("chromedriver did not become ready on {}", driver.url);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A fresh headless Chromium window of this size.
    pub async fn browser(&self, label: &str, width: u32, height: u32) -> anyhow::Result<Browser> {
        let mut options = json!({
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                format!("--window-size={width},{height}"),
            ]
        });
        if let Some(binary) = chromium_path() {
            options["binary"] = json!(binary);
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": options,
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let v = call(
            &self.http,
            reqwest::Method::POST,
            &format!("{}/session", self.url),
            Some(caps),
        )
        .await?;
        let id = v["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no session id in {v}"))?;
        Ok(Browser {
            label: label.to_string(),
            base: format!("{}/session/{id}", self.url),
            http: self.http.clone(),
        })
    }
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let mut req = http.request(method.clone(), url);
    if let Some(b) = body {
        req = req.json(&b);
    } else if method == reqwest::Method::POST {
        req = req.json(&json!({}));
    }
    let response = req
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    let status = response.status();
    let v: Value = response.json().await.context("webdriver answer")?;
    if !status.is_success() {
        bail!("webdriver {method} {url}: {status}: {}", v["value"]);
    }
    Ok(v["value"].clone())
}

/// One Chromium session (one user's window).
#[derive(Clone)]
pub struct Browser {
    /// The user's name, for screenshot file names.
    pub label: String,
    base: String,
    http: reqwest::Client,
}

impl Browser {
    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        call(
            &self.http,
            reqwest::Method::POST,
            &format!("{}{path}", self.base),
            Some(body),
        )
        .await
    }

    /// Opens a URL.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.post("/url", json!({"url": url})).await.map(drop)
    }

    /// Runs a script (its `arguments` are `args`) and returns what it returns.
    pub async fn js(&self, script: &str, args: Value) -> anyhow::Result<Value> {
        self.post("/execute/sync", json!({"script": script, "args": args}))
            .await
    }

    async fn element(&self, css: &str) -> anyhow::Result<String> {
        let v = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await
            .with_context(|| format!("{}: no element {css}", self.label))?;
        v[ELEMENT]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("bad element reference {v}"))
    }

    /// Finds the element `css` names and sends it these commands (`(path, body)`). The page
    /// redraws lists as presence and messages arrive, so an element that went stale between
    /// finding and acting is found again, until [`WAIT`] is up.
    async fn act(&self, css: &str, commands: &[(&str, Value)]) -> anyhow::Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            let attempt = async {
                let e = self.element(css).await?;
                for (path, body) in commands {
                    self.post(&format!("/element/{e}/{path}"), body.clone())
                        .await?;
                }
                anyhow::Ok(())
            };
            match attempt.await {
                Ok(()) => return Ok(()),
                Err(e)
                    if Instant::now() < deadline && format!("{e:#}").contains("stale element") =>
                {
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Clicks the element `css` names, as a user would.
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        self.act(css, &[("click", json!({}))]).await
    }

    /// Types `text` into the element `css` names (after clearing it); [`ENTER`] presses Enter.
    pub async fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        self.act(
            css,
            &[("clear", json!({})), ("value", json!({"text": text}))],
        )
        .await
    }

    /// Appends keys to whatever the element `css` names holds.
    pub async fn keys(&self, css: &str, text: &str) -> anyhow::Result<()> {
        self.act(css, &[("value", json!({"text": text}))]).await
    }

    /// The text of the element `css` names, or None when there is none.
    pub async fn text(&self, css: &str) -> anyhow::Result<Option<String>> {
        let v = self
            .js(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                json!([css]),
            )
            .await?;
        Ok(v.as_str().map(str::to_string))
    }

    /// Polls `script` until it returns something other than null/false, for at most [`WAIT`].
    pub async fn wait_js(&self, what: &str, script: &str, args: Value) -> anyhow::Result<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.js(script, args.clone()).await?;
            if !(v.is_null() || v == json!(false)) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("{}: gave up waiting for {what}", self.label);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the element `css` names exists and is shown.
    pub async fn wait_visible(&self, css: &str) -> anyhow::Result<()> {
        self.wait_js(
            &format!("{css} to be shown"),
            "const e = document.querySelector(arguments[0]); return !!e && e.getClientRects().length > 0;",
            json!([css]),
        )
        .await
        .map(drop)
    }

    /// Waits until the text of the element `css` names contains `needle`.
    pub async fn wait_text(&self, css: &str, needle: &str) -> anyhow::Result<String> {
        let v = self
            .wait_js(
                &format!("{css} to contain {needle:?}"),
                "const e = document.querySelector(arguments[0]); \
                 return e && e.textContent.includes(arguments[1]) ? e.textContent : null;",
                json!([css, needle]),
            )
            .await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// Saves a PNG screenshot of the window.
    pub async fn screenshot(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let v = call(
            &self.http,
            reqwest::Method::GET,
            &format!("{}/screenshot", self.base),
            None,
        )
        .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().ok_or_else(|| anyhow!("no screenshot data"))?)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }

    /// Ends the session (closes the window).
    pub async fn quit(&self) {
        let _ = call(&self.http, reqwest::Method::DELETE, &self.base, None).await;
    }
}

/// What a browser test gets: the chromedriver, and a record of every browser it opens.
pub struct Ctx {
    /// The chromedriver.
    pub driver: Arc<Driver>,
    browsers: Arc<Mutex<Vec<Browser>>>,
}

impl Ctx {
    /// Opens a desktop-sized browser window for `label`.
    pub async fn browser(&self, label: &str) -> anyhow::Result<Browser> {
        self.browser_sized(label, 1100, 760).await
    }

    /// Opens a browser window of this size for `label`.
    pub async fn browser_sized(
        &self,
        label: &str,
        width: u32,
        height: u32,
    ) -> anyhow::Result<Browser> {
        let b = self.driver.browser(label, width, height).await?;
        self.browsers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(b.clone());
        Ok(b)
    }
}

/// Runs one browser scenario: on failure (an error or a panic) every browser it opened is
/// screenshotted into [`screenshot_dir`] and the paths printed; browsers and chromedriver are
/// closed either way.
pub async fn scenario<F, Fut>(name: &str, body: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let driver = Arc::new(Driver::start().await.expect("chromedriver"));
    let browsers = Arc::new(Mutex::new(Vec::new()));
    let ctx = Ctx {
        driver: driver.clone(),
        browsers: browsers.clone(),
    };
    let outcome = AssertUnwindSafe(body(ctx)).catch_unwind().await;
    let opened: Vec<Browser> = browsers.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if !matches!(outcome, Ok(Ok(()))) {
        for b in &opened {
            let path = screenshot_dir().join(format!("{name}-{}.png", b.label));
            let state = b
                .js(
                    "const a = document.getElementById('app-view'); \
                     return a ? JSON.stringify({...a.dataset, conn: document.getElementById('conn-state').textContent, \
                     trace: window.msnp24Trace}) : null;",
                    json!([]),
                )
                .await;
            eprintln!("{}'s page: {state:?}", b.label);
            // chromedriver's own log endpoint: what the page wrote to its console.
            if let Ok(log) = b.post("/se/log", json!({"type": "browser"})).await {
                for entry in log.as_array().into_iter().flatten() {
                    eprintln!("{}'s console: {}", b.label, entry["message"]);
                }
            }
            match b.screenshot(&path).await {
                Ok(()) => eprintln!("screenshot of {}'s browser: {}", b.label, path.display()),
                Err(e) => eprintln!("no screenshot of {}'s browser: {e:#}", b.label),
            }
        }
    }
    for b in &opened {
        b.quit().await;
    }
    drop(driver);
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{name} failed: {e:#}"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
