//! The quickstart page in a real browser (headless Chromium): its WebSocket goes through the
//! proxy to the echo upstream, a typed message comes back, the upstream's subprotocol reaches
//! the page, and the upstream's close code 4000 and reason reach `onclose`. A screenshot is
//! saved in the test's output folder.
//!
//! `.ci/run` installs Chromium (Debian's `chromium`); elsewhere the test skips, saying so,
//! when no Chromium is installed.

#![cfg(all(feature = "serve", feature = "tls"))]

mod common;

#[path = "../examples/quickstart.rs"]
mod quickstart;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::*;

/// Headless, and quiet on this machine's closed network.
const HEADLESS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
];

fn chromium() -> Option<PathBuf> {
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
fn chromium_or_skip() -> Option<PathBuf> {
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
async fn run_chromium(browser: &Path, url: &str, extra: &[String]) -> String {
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
fn tempdir(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("browser-{name}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Headless Chromium showing `url`, driven through its DevTools protocol.
struct Browser {
    _process: tokio::process::Child,
    devtools: SocketAddr,
    page: Option<Client>,
    next_id: u64,
}

impl Browser {
    async fn open(browser: &Path, url: &str) -> Self {
        Self::open_with(browser, url, &[]).await
    }

    /// As [`open`](Self::open), with more Chromium flags.
    async fn open_with(browser: &Path, url: &str, extra: &[String]) -> Self {
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
    async fn page_field(&self, field: &str) -> Option<String> {
        let (_, _, body) = http_request(self.devtools, "/json/list", &[]).await;
        let list = String::from_utf8_lossy(&body).into_owned();
        let prefix = format!("\"{field}\": \"");
        list.lines()
            .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
            .map(|t| t.trim_end_matches("\",").trim_end_matches('"').to_owned())
    }

    /// Waits until the page's title contains `text` (the page mirrors its state there).
    async fn title_with(&self, text: &str) -> String {
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
    async fn command(&mut self, method: &str, params: &str) {
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
    async fn type_and_send(&mut self, text: &str) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_page_works_in_headless_chromium() {
    let Some(browser) = chromium_or_skip() else {
        return;
    };
    let upstream = quickstart::echo_upstream().await.unwrap();
    let proxy: SocketAddr = serve(quickstart::app(upstream).unwrap()).await;

    // Type into the page as a person would: the message crosses the proxy and comes back,
    // the upstream's subprotocol is seen, and `/close` makes the upstream close with 4000,
    // whose code and reason reach the page's `onclose`.
    let mut page = Browser::open(&browser, &format!("http://{proxy}/")).await;
    // The echo upstream has no compression; the quickstart compresses at the edge.
    page.title_with("open (subprotocol: echo.v1").await;
    page.type_and_send("typed in chromium").await;
    let title = page.title_with("echo typed in chromium").await;
    assert_eq!(
        title,
        "open (subprotocol: echo.v1, extensions: permessage-deflate; client_no_context_takeover; server_max_window_bits=10) \
         | subprotocol echo.v1 | echo typed in chromium"
    );
    page.type_and_send("/close").await;
    let title = page.title_with("closed").await;
    assert_eq!(
        title,
        "closed 4000 goodbye from the upstream | subprotocol echo.v1 | echo typed in chromium"
    );
    drop(page);

    // The scripted form (`?say=`) works too, and gives the screenshot its content.
    let url = format!("http://{proxy}/?say=hello%20from%20chromium&say=/close");
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("quickstart.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        &browser,
        &url,
        &[
            "--virtual-time-budget=5000".into(),
            format!("--screenshot={}", shot.display()),
        ],
    )
    .await;
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    println!("screenshot: {}", shot.display());
}

/// The status page of `ws-proxy` (on the metrics listener) read by a browser: it shows the
/// version, the live session, every pool member with its address and state. A screenshot is
/// saved in the test's output folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_in_headless_chromium() {
    let Some(browser) = chromium_or_skip() else {
        return;
    };
    let up = echo_upstream().await;
    let dead = closed_port().await;
    let (_child, proxy, metrics) = start_ws_proxy(&[
        "--upstream",
        &format!("ws://{up}"),
        "--upstream",
        &format!("ws://{dead}"),
        "--balance",
        "round-robin",
        "--metrics-listen",
        "127.0.0.1:0",
    ])
    .await;
    let metrics = metrics.expect("the metrics address");
    // One live session, and one failed dial that takes the dead member out of rotation.
    let _live = connect(proxy, "/").await;
    let _second = connect(proxy, "/").await;

    let dom = run_chromium(
        &browser,
        &format!("http://{metrics}/"),
        &["--dump-dom".into()],
    )
    .await;
    assert!(
        dom.contains(&format!("ws-proxy {}", env!("CARGO_PKG_VERSION"))),
        "{dom}"
    );
    assert!(dom.contains("<b id=\"live\">2</b>"), "{dom}");
    assert!(
        dom.contains(&format!("<td>ws://{up}</td><td>{up}</td>")),
        "{dom}"
    );
    assert!(
        dom.contains(&format!("<td>ws://{dead}</td><td>{dead}</td>")),
        "{dom}"
    );
    assert!(dom.contains("out of rotation"), "{dom}");

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        &browser,
        &format!("http://{metrics}/"),
        &[format!("--screenshot={}", shot.display())],
    )
    .await;
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    println!("screenshot: {}", shot.display());
}

/// Log lines written by this test binary, captured (the proxy's own record of its sessions).
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The first proof that a browser reaches the RFC 8441 path: Chromium loads the quickstart
/// page over `https://` (HTTP/2 by ALPN), and its WebSocket to the same origin goes through
/// the proxy as HTTP/2 extended CONNECT, as the session's own log line records
/// (`protocol="h2" tls=true`). A screenshot is saved in the test's output folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_carries_the_websocket_over_http2_through_wss() {
    let Some(browser) = chromium_or_skip() else {
        return;
    };
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .try_init()
        .expect("the only subscriber of this test binary");
    let upstream = quickstart::echo_upstream().await.unwrap();
    let (tls, pin) = quickstart::tls_certificate().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = axum_ws_proxy::serve(listener, quickstart::app(upstream).unwrap()).tls(tls);
    tokio::spawn(std::future::IntoFuture::into_future(server));

    let url = format!("https://localhost:{port}/?say=hello%20over%20h2&say=/close");
    let trust = format!("--ignore-certificate-errors-spki-list={pin}");
    // A message there and back, then the upstream's close code 4000 and reason: the page
    // mirrors its state in its title.
    let page = Browser::open_with(&browser, &url, std::slice::from_ref(&trust)).await;
    let title = page.title_with("closed").await;
    assert_eq!(
        title,
        "closed 4000 goodbye from the upstream | subprotocol echo.v1 | echo hello over h2"
    );
    drop(page);
    // The session has closed and logged its summary. (The other tests
    // in this binary log plaintext sessions, tls=false.)
    let line = within("the session's log line", async {
        loop {
            let text = logs.text();
            let ours = |l: &&str| l.contains("session closed") && l.contains("tls=true");
            if let Some(line) = text.lines().find(ours) {
                return line.to_owned();
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(line.contains("protocol=\"h2\""), "not over HTTP/2: {line}");
    assert!(line.contains("path=/echo"), "{line}");
    // Compressed at the edge over HTTP/2 as over HTTP/1.1.
    assert!(
        line.contains("extensions=\"permessage-deflate; client_no_context_takeover; server_max_window_bits=10\""),
        "{line}"
    );

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("quickstart-tls.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        &browser,
        &url,
        &[
            "--virtual-time-budget=5000".into(),
            trust,
            format!("--screenshot={}", shot.display()),
        ],
    )
    .await;
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
}

/// Chromium's WebSocket through `ws-proxy` in frame mode negotiates permessage-deflate: with a
/// compressing upstream (Python's `websockets`), the upstream's own parameters; in front of one
/// without compression, with `--deflate always`, the proxy's. A compressed JSON message comes
/// back the same either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_negotiates_deflate_through_frame_mode() {
    let Some(browser) = chromium_or_skip() else {
        return;
    };
    let Some(py) = common::python::python().await else {
        return;
    };
    let (_compressing, compressing) = py.echo_upstream(true).await;
    let plain = echo_upstream().await;
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/deflate_page.html");
    for (up, extra, expected) in [
        (
            compressing,
            &[][..],
            "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12",
        ),
        (
            plain,
            &["--deflate", "always"][..],
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=10",
        ),
    ] {
        let upstream = format!("ws://{up}");
        let (_child, proxy, _) =
            start_ws_proxy(&[&["--upstream", upstream.as_str()][..], extra].concat()).await;
        let url = format!("file://{}?ws=ws://{proxy}/", page.display());
        let tab = Browser::open(&browser, &url).await;
        let title = tab.title_with("echo").await;
        assert_eq!(
            title,
            format!("extensions={expected} | echo same"),
            "{extra:?}"
        );
    }
}
