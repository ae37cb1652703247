//! A small W3C WebDriver client for the dashboard's browser tests: Debian's `chromedriver`
//! started on a free port, driving a headless `chromium`. Only what the tests use: go to a
//! URL, find elements by CSS, click, type (keys included), run a script, read a cookie,
//! answer a `confirm()`, take a screenshot. The driver and its browser are killed with their
//! process group when the [`Browser`] is dropped.

use anyhow::{Context as _, bail};
use shoal_e2e::serde_json::{Value, json};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The keys WebDriver types for Enter and Tab.
pub const ENTER: &str = "\u{E007}";
pub const TAB: &str = "\u{E004}";

/// How long one WebDriver command may take.
const COMMAND: Duration = Duration::from_secs(30);

/// The browser and driver binaries, or an error naming what to install.
///
/// # Errors
/// Either is missing.
pub fn binaries() -> anyhow::Result<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| {
        names.iter().find_map(|n| {
            let p = Path::new(n);
            if p.is_absolute() {
                return p.is_file().then(|| p.to_path_buf());
            }
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(n))
                    .find(|p| p.is_file())
            })
        })
    };
    let chromium = find(&["chromium", "/usr/bin/chromium", "chromium-browser"]);
    let driver = find(&["chromedriver", "/usr/bin/chromedriver"]);
    match (chromium, driver) {
        (Some(c), Some(d)) => Ok((c, d)),
        (c, d) => bail!(
            "the dashboard's browser tests need headless Chromium and its WebDriver: {}{}missing; install them with `apt-get install -y chromium chromium-driver` (.ci/run does)",
            if c.is_none() { "chromium " } else { "" },
            if d.is_none() { "chromedriver " } else { "" },
        ),
    }
}

/// One browser session.
pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`.
    session: String,
    driver: std::process::Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver leads its own process group; the browser it started is in it.
        let pgid = nix::unistd::Pid::from_raw(i32::try_from(self.driver.id()).unwrap_or(0));
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.driver.wait();
    }
}

/// An element of the page.
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    /// Starts `chromedriver` and a headless Chromium with a window of `width` × `height`.
    ///
    /// # Errors
    /// Either is missing or did not start.
    pub async fn start(width: u32, height: u32) -> anyhow::Result<Browser> {
        let (chromium, chromedriver) = binaries()?;
        let port = shoal_e2e::free_port()?;
        let log = std::env::temp_dir().join(format!("shoal-chromedriver-{port}.log"));
        let driver = std::process::Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", chromedriver.display()))?;
        let http = reqwest::Client::builder().timeout(COMMAND).build()?;
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Browser {
            http,
            session: String::new(),
            driver,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let ready = browser
                .http
                .get(format!("{base}/status"))
                .send()
                .await
                .ok()
                .map(|r| r.json::<Value>());
            if let Some(body) = ready
                && body.await.ok().is_some_and(|v| v["value"]["ready"] == true)
            {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "chromedriver did not answer within 20 s (its log: {})",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--no-first-run",
                         "--force-color-profile=srgb", "--hide-scrollbars",
                         format!("--window-size={width},{height}")]
            }
        }}});
        let created = browser
            .command(
                reqwest::Method::POST,
                &format!("{base}/session"),
                Some(caps),
            )
            .await
            .context("chromedriver could not start chromium")?;
        let id = created["sessionId"]
            .as_str()
            .context("no session id from chromedriver")?;
        browser.session = format!("{base}/session/{id}");
        browser.set_size(width, height).await?;
        Ok(browser)
    }

    async fn command(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self.http.request(method.clone(), url);
        if let Some(b) = body {
            req = req.json(&b);
        } else if method == reqwest::Method::POST {
            req = req.json(&json!({}));
        }
        let res = req.send().await?;
        let status = res.status();
        let v: Value = res.json().await?;
        if !status.is_success() {
            bail!(
                "WebDriver {method} {url}: {} {}",
                v["value"]["error"],
                v["value"]["message"]
            );
        }
        Ok(v["value"].clone())
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.session);
        self.command(reqwest::Method::POST, &url, Some(body)).await
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.session);
        self.command(reqwest::Method::GET, &url, None).await
    }

    /// Sets the window's size.
    ///
    /// # Errors
    /// The driver refused.
    pub async fn set_size(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.post("/window/rect", json!({"width": width, "height": height}))
            .await?;
        Ok(())
    }

    /// Loads `url` and waits for it.
    ///
    /// # Errors
    /// The driver refused.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.post("/url", json!({"url": url})).await?;
        Ok(())
    }

    /// The page's URL now.
    ///
    /// # Errors
    /// The driver refused.
    pub async fn url(&self) -> anyhow::Result<String> {
        Ok(self
            .get("/url")
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// The first element matching `css`.
    ///
    /// # Errors
    /// None matches.
    pub async fn find(&self, css: &str) -> anyhow::Result<Element<'_>> {
        let v = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await
            .with_context(|| format!("no element {css}"))?;
        Ok(Element {
            browser: self,
            id: v[ELEMENT]
                .as_str()
                .with_context(|| format!("not an element: {v}"))?
                .to_owned(),
        })
    }

    /// How many elements match `css`.
    ///
    /// # Errors
    /// The driver refused.
    pub async fn count(&self, css: &str) -> anyhow::Result<usize> {
        let v = self
            .post("/elements", json!({"using": "css selector", "value": css}))
            .await?;
        Ok(v.as_array().map_or(0, Vec::len))
    }

    /// Runs `script` (a function body; `arguments` are `args`) and answers what it returns.
    ///
    /// # Errors
    /// The script threw.
    pub async fn eval(&self, script: &str, args: Vec<Value>) -> anyhow::Result<Value> {
        self.post("/execute/sync", json!({"script": script, "args": args}))
            .await
    }

    /// Runs `script`, which ends by calling its last argument with the answer.
    ///
    /// # Errors
    /// The script threw or did not answer in time.
    pub async fn eval_async(&self, script: &str, args: Vec<Value>) -> anyhow::Result<Value> {
        self.post("/execute/async", json!({"script": script, "args": args}))
            .await
    }

    /// Types `text` into the focused element.
    ///
    /// # Errors
    /// The driver refused.
    pub async fn type_keys(&self, text: &str) -> anyhow::Result<()> {
        let mut actions = Vec::new();
        for c in text.chars() {
            actions.push(json!({"type": "keyDown", "value": c.to_string()}));
            actions.push(json!({"type": "keyUp", "value": c.to_string()}));
        }
        self.post(
            "/actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]}),
        )
        .await?;
        Ok(())
    }

    /// The id attribute (or the text) of the focused element.
    ///
    /// # Errors
    /// The driver refused.
    pub async fn focused(&self) -> anyhow::Result<String> {
        let v = self
            .eval(
                "const e = document.activeElement; return e ? (e.id || e.textContent.trim()) : '';",
                vec![],
            )
            .await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// A cookie's value (WebDriver sees `HttpOnly` cookies too).
    ///
    /// # Errors
    /// No such cookie.
    pub async fn cookie(&self, name: &str) -> anyhow::Result<String> {
        let v = self.get(&format!("/cookie/{name}")).await?;
        Ok(v["value"]
            .as_str()
            .context("cookie without value")?
            .to_owned())
    }

    /// The whole cookie as the driver shows it (name, value, httpOnly, sameSite, …).
    ///
    /// # Errors
    /// No such cookie.
    pub async fn cookie_details(&self, name: &str) -> anyhow::Result<Value> {
        self.get(&format!("/cookie/{name}")).await
    }

    /// Answers the open `confirm()` with OK.
    ///
    /// # Errors
    /// No dialog is open.
    pub async fn accept_alert(&self) -> anyhow::Result<()> {
        self.post("/alert/accept", json!({})).await?;
        Ok(())
    }

    /// Writes a PNG of the window to `path`.
    ///
    /// # Errors
    /// The driver refused, or the file could not be written.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let v = self.get("/screenshot").await?;
        let png = base64_decode(v.as_str().context("no screenshot")?)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Ends the session (the driver is killed on drop).
    pub async fn quit(self) {
        let url = self.session.clone();
        let _ = self.command(reqwest::Method::DELETE, &url, None).await;
    }
}

impl Element<'_> {
    /// Clicks it.
    ///
    /// # Errors
    /// It cannot be clicked.
    pub async fn click(&self) -> anyhow::Result<()> {
        self.browser
            .post(&format!("/element/{}/click", self.id), json!({}))
            .await?;
        Ok(())
    }

    /// Its visible text.
    ///
    /// # Errors
    /// It is gone.
    pub async fn text(&self) -> anyhow::Result<String> {
        let v = self
            .browser
            .get(&format!("/element/{}/text", self.id))
            .await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }
}

/// Standard base64 (what WebDriver answers screenshots in).
fn base64_decode(text: &str) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
    {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => bail!("not base64: {:?}", char::from(c)),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).unwrap_or(0));
        }
    }
    Ok(out)
}

#[test]
fn base64_decodes_what_it_should() -> anyhow::Result<()> {
    assert_eq!(base64_decode("aGVsbG8=")?, b"hello");
    assert_eq!(base64_decode("iVBORw0KGgo=")?, b"\x89PNG\r\n\x1a\n");
    Ok(())
}
