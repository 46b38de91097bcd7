//! The quickstart page in a real browser (headless Chromium): its WebSocket goes through the
//! proxy to the echo upstream, a typed message comes back, the upstream's subprotocol reaches
//! the page, and the upstream's close code 4000 and reason reach `onclose`; and the same page
//! over `https://`, where Chromium carries the WebSocket over HTTP/2. Screenshots are saved in
//! the tests' output folder. (The browser tests of the `ws-proxy` binary are in its package.)
//!
//! `.ci/run` installs Chromium (Debian's `chromium`); elsewhere the tests skip, saying so,
//! when no Chromium is installed.
#![cfg(all(feature = "serve", feature = "tls"))]

mod common;

#[path = "../examples/quickstart.rs"]
mod quickstart;

use std::net::SocketAddr;
use std::path::Path;

use common::browser::*;
use common::*;

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
    // Chromium carries a WebSocket over HTTP/2 only on an h2 connection it already holds to
    // the origin; on rare runs it opens the WebSocket on a connection of its own, over
    // HTTP/1.1 (both are proxied; the log line says which). Up to three page loads, then, for
    // one that takes the RFC 8441 path.
    let mut seen = Vec::new();
    let line = loop {
        let closed = |l: &&str| l.contains("session closed") && l.contains("tls=true");
        let before = logs.text().lines().filter(closed).count();
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
                if let Some(line) = text.lines().filter(closed).nth(before) {
                    return line.to_owned();
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        if line.contains("protocol=\"h2\"") {
            break line;
        }
        seen.push(line);
        assert!(
            seen.len() < 3,
            "not over HTTP/2 in three page loads: {seen:#?}"
        );
    };
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
