//! `ws-proxy` in a real browser (headless Chromium): its status page renders, and a page's
//! WebSocket through it negotiates permessage-deflate in frame mode.
//!
//! `.ci/run` installs Chromium (Debian's `chromium`); elsewhere the tests skip, saying so,
//! when no Chromium is installed.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::Path;

use common::browser::*;
use common::*;

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
