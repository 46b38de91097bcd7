//! Headless Chromium for the browser tests: finding it (or skipping, saying so, outside CI),
//! running it on a page, and driving a page over the DevTools protocol.

use std::path::{Path, PathBuf};

use super::*;

/// Headless, and quiet on this machine's closed network.
pub const HEADLESS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
];

pub fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|d| d.join(name))
                    .find(|p| p.exists())
            })
        })
}

/// Chromium, or `None` after saying the test is skipped; in CI a missing Chromium fails.
pub fn chromium_or_skip() -> Option<PathBuf> {
    let found = chromium();
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have Chromium (.ci/run installs it)"
        );
        println!("SKIPPED: no Chromium installed (Debian: apt-get install chromium)");
    }
    found
}

/// Runs headless Chromium on `url` with `extra` flags; returns its standard output. (A page
/// that refreshes itself must not get `--virtual-time-budget`: it would reload forever.)
pub async fn run_chromium(browser: &Path, url: &str, extra: &[String]) -> String {
    let profile = tempdir("profile");
    let out = within(
        "Chromium",
        tokio::process::Command::new(browser)
            .args(HEADLESS)
            .arg("--window-size=800,600")
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run Chromium");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh folder per call: two Chromiums sharing a profile hand over to each other.
pub fn tempdir(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("browser-{name}-{}-{n}", std::process::id()));
    // An earlier run whose process had the same id left its folder (and its Chromium's
    // `DevToolsActivePort`, naming a port nobody listens on any more): start empty.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Headless Chromium showing `url`, driven through its DevTools protocol.
pub struct Browser {
    _process: tokio::process::Child,
    devtools: SocketAddr,
    page: Option<Client>,
    next_id: u64,
}

impl Browser {
    pub async fn open(browser: &Path, url: &str) -> Self {
        Self::open_with(browser, url, &[]).await
    }

    /// As [`open`](Self::open), with more Chromium flags.
    pub async fn open_with(browser: &Path, url: &str, extra: &[String]) -> Self {
        let profile = tempdir("devtools");
        let process = tokio::process::Command::new(browser)
            .args(HEADLESS)
            .args(extra)
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start Chromium");
        let port_file = profile.join("DevToolsActivePort");
        let devtools = within("Chromium's DevTools port", async {
            loop {
                let port = std::fs::read_to_string(&port_file)
                    .ok()
                    .and_then(|s| s.lines().next().and_then(|p| p.parse::<u16>().ok()));
                if let Some(port) = port {
                    return SocketAddr::from(([127, 0, 0, 1], port));
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        Self {
            _process: process,
            devtools,
            page: None,
            next_id: 0,
        }
    }

    /// A field of the page's entry in `/json/list`.
    pub async fn page_field(&self, field: &str) -> Option<String> {
        let (_, _, body) = http_request(self.devtools, "/json/list", &[]).await;
        let list = String::from_utf8_lossy(&body).into_owned();
        let prefix = format!("\"{field}\": \"");
        list.lines()
            .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
            .map(|t| t.trim_end_matches("\",").trim_end_matches('"').to_owned())
    }

    /// Waits until the page's title contains `text` (the page mirrors its state there).
    pub async fn title_with(&self, text: &str) -> String {
        within(&format!("a page title with {text:?}"), async {
            loop {
                if let Some(title) = self.page_field("title").await.filter(|t| t.contains(text)) {
                    return title;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// Sends one DevTools command and waits for its answer.
    pub async fn command(&mut self, method: &str, params: &str) {
        use futures_util::{SinkExt, StreamExt};
        if self.page.is_none() {
            let url = self
                .page_field("webSocketDebuggerUrl")
                .await
                .expect("a page to drive");
            self.page = Some(
                tokio_tungstenite::connect_async(url)
                    .await
                    .expect("DevTools")
                    .0,
            );
        }
        let page = self.page.as_mut().expect("connected above");
        self.next_id += 1;
        let id = self.next_id;
        let msg = format!("{{\"id\":{id},\"method\":\"{method}\",\"params\":{params}}}");
        page.send(tokio_tungstenite::tungstenite::Message::text(msg))
            .await
            .unwrap();
        let answer = format!("\"id\":{id},");
        within("a DevTools answer", async {
            while let Some(Ok(m)) = page.next().await {
                if m.to_text().is_ok_and(|t| t.contains(&answer)) {
                    return;
                }
            }
            panic!("DevTools closed");
        })
        .await;
    }

    /// Types `text` into the page's message field (as keyboard input) and clicks Send.
    pub async fn type_and_send(&mut self, text: &str) {
        let js = |e: &str| format!("{{\"expression\":\"{e}\"}}");
        self.command(
            "Runtime.evaluate",
            &js("document.getElementById('text').focus()"),
        )
        .await;
        self.command("Input.insertText", &format!("{{\"text\":\"{text}\"}}"))
            .await;
        self.command(
            "Runtime.evaluate",
            &js("document.querySelector('form button').click()"),
        )
        .await;
    }
}
