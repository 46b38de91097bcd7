//! The quickstart page in a real browser (headless Chromium): its WebSocket goes through the
//! proxy to the echo upstream, a typed message comes back, the upstream's subprotocol reaches
//! the page, and the upstream's close code 4000 and reason reach `onclose`. A screenshot is
//! saved in the test's output folder.
//!
//! `.ci/run` installs Chromium (Debian's `chromium`); elsewhere the test skips, saying so,
//! when no Chromium is installed.

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

/// Runs headless Chromium on `url` with `extra` flags; returns its standard output.
async fn run_chromium(browser: &Path, url: &str, extra: &[String]) -> String {
    let profile = tempdir("profile");
    let out = within(
        "Chromium",
        tokio::process::Command::new(browser)
            .args(HEADLESS)
            .args(["--virtual-time-budget=5000", "--window-size=800,600"])
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

fn tempdir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("browser-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Opens `url` in headless Chromium and waits until the page's title contains `done`;
/// returns the title. The page mirrors its state into its title; Chromium's DevTools HTTP
/// endpoint reports it.
async fn title_when(browser: &Path, url: &str, done: &str) -> String {
    let profile = tempdir("devtools");
    let _chromium = tokio::process::Command::new(browser)
        .args(HEADLESS)
        .arg("--remote-debugging-port=0")
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start Chromium");
    let port_file = profile.join("DevToolsActivePort");
    within("the page to finish", async {
        loop {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.lines().next().and_then(|p| p.parse::<u16>().ok()))
            {
                let devtools = SocketAddr::from(([127, 0, 0, 1], port));
                let (_, _, body) = http_request(devtools, "/json/list", &[]).await;
                let list = String::from_utf8_lossy(&body).into_owned();
                if let Some(title) = list
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("\"title\": \""))
                    .map(|t| t.trim_end_matches("\",").to_owned())
                    .filter(|t| t.contains(done))
                {
                    return title;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_page_works_in_headless_chromium() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have Chromium (.ci/run installs it)"
        );
        println!("SKIPPED: no Chromium installed (Debian: apt-get install chromium)");
        return;
    };
    let upstream = quickstart::echo_upstream().await.unwrap();
    let proxy: SocketAddr = serve(quickstart::app(upstream).unwrap()).await;
    let url = format!("http://{proxy}/?say=hello%20from%20chromium&say=/close");

    // The page's WebSocket: through the proxy to the upstream and back, then the upstream's
    // close with its code and reason reaches `onclose`.
    let title = title_when(&browser, &url, "closed").await;
    assert_eq!(
        title,
        "closed 4000 goodbye from the upstream | subprotocol echo.v1 | echo hello from chromium"
    );

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("quickstart.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        &browser,
        &url,
        &[format!("--screenshot={}", shot.display())],
    )
    .await;
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    println!("screenshot: {}", shot.display());
}
