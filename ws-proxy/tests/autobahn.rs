//! Autobahn|Testsuite through the proxy, in front of a conformant echo server (tokio-tungstenite).
//! Requires zero FAILED cases and no unclean closes. The suite is Python 2 software: it is
//! installed on first use with pip into `target/tmp/autobahn`; without a Python 2.7 these tests
//! fail (outside CI, `AUTOBAHN_SKIP=1` skips them, saying so).

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use axum_ws_proxy::WsProxyLayer;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error, Message};

/// An echo server that is conformant on errors too: a peer that breaks the protocol gets the
/// RFC 6455 close code (1002, 1007, 1009) before the connection closes. (tokio-tungstenite
/// leaves that to the application; a plain echo loop just drops the connection.) Behind a
/// tunnel this is what the client sees, as it would talking to the server directly.
async fn conformant_echo(mut ws: Server) {
    let error = loop {
        match ws.next().await {
            Some(Ok(m)) => {
                if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                    return;
                }
            }
            Some(Err(e)) => break e,
            None => return,
        }
    };
    let code = match error {
        Error::Utf8(_) => 1007,
        Error::Capacity(_) => 1009,
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => return,
        Error::Protocol(_) => 1002,
        _ => return,
    };
    let close = CloseFrame {
        code: code.into(),
        reason: "protocol error".into(),
    };
    if ws.send(Message::Close(Some(close))).await.is_ok() {
        // The stream cannot be read as frames any more: half-close and drain to EOF.
        let tcp = ws.get_mut();
        let _ = tcp.shutdown().await;
        let mut sink = [0u8; 1024];
        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
    }
}

/// A Python 2.7: $PYTHON2, pyenv's 2.7.x, `python2` on PATH.
fn python2() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PYTHON2") {
        return Some(p.into());
    }
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    let versions = home.join(".pyenv/versions");
    if let Ok(entries) = std::fs::read_dir(&versions) {
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("2.7"))
            .map(|e| e.path().join("bin/python"))
            .filter(|p| p.exists())
            .collect();
        found.sort();
        if let Some(p) = found.into_iter().next() {
            return Some(p);
        }
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("python2"))
            .find(|p| p.exists())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_through_the_frame_bridge() {
    autobahn(WsProxyLayer::new, "axum-ws-proxy-frames").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_through_the_tunnel() {
    autobahn(|up| WsProxyLayer::new(up).tunnel(), "axum-ws-proxy-tunnel").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_through_the_binarys_spliced_tunnel() {
    // ws-proxy hands hyper the socket itself: both legs are plain sockets, and payloads of
    // 16 KiB and more (cases 1.1.6-1.1.8, 1.2.6-1.2.8, 6.x fragments) go through splice(2).
    let Some(suite) = suite().await else { return };
    let up = tt_upstream(conformant_echo).await;
    let (_child, proxy, _) =
        start_ws_proxy(&["--upstream", &format!("ws://{up}"), "--mode", "tunnel"]).await;
    run_suite(&suite, proxy, "ws-proxy-binary-tunnel").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_through_the_binarys_frame_bridge() {
    // The binary serves HTTP/1.1 on the socket itself; messages of 8 KiB and more are written
    // by the proxy's own frame writer (cases 1.1.6-1.1.8, 1.2.6-1.2.8, 6.x, 7.x).
    let Some(suite) = suite().await else { return };
    let up = tt_upstream(conformant_echo).await;
    let (_child, proxy, _) = start_ws_proxy(&["--upstream", &format!("ws://{up}")]).await;
    run_suite(&suite, proxy, "ws-proxy-binary-frames").await;
}

async fn autobahn(
    layer: impl FnOnce(axum_ws_proxy::upstream::UpstreamPool) -> WsProxyLayer,
    agent: &str,
) {
    let Some(suite) = suite().await else { return };
    let up = tt_upstream(conformant_echo).await;
    let proxy = proxy(layer(upstream(up))).await;
    run_suite(&suite, proxy, agent).await;
}

/// The suite's `wstest`, installed on first use with pip into `target/tmp/autobahn` (once per
/// test run, whichever test gets there first), and the Python to run it with. `None`
/// (after saying why) only where the suite cannot run and `AUTOBAHN_SKIP=1` says that is
/// known; in CI, or without it, a missing requirement fails the test.
async fn suite() -> Option<Suite> {
    static SUITE: tokio::sync::OnceCell<Result<Suite, String>> = tokio::sync::OnceCell::const_new();
    match SUITE.get_or_init(install).await {
        Ok(suite) => Some(suite.clone()),
        Err(why)
            if std::env::var_os("CI").is_none()
                && std::env::var_os("AUTOBAHN_SKIP").is_some_and(|v| v == "1") =>
        {
            println!("SKIPPED (AUTOBAHN_SKIP=1): {why}");
            None
        }
        Err(why) => panic!("{why} (AUTOBAHN_SKIP=1 skips these tests outside CI)"),
    }
}

#[derive(Clone)]
struct Suite {
    python: PathBuf,
    /// Where pip put the suite. Added with `site.addsitedir`, not `PYTHONPATH`: only a site
    /// directory's `.pth` files are read, and `zope.interface` (Twisted's) is a namespace
    /// package that exists only through one.
    site_packages: PathBuf,
}

/// `wstest`'s own entry point, run by the Python that installed it, with the suite's site
/// directory (the first argument) added first.
const WSTEST: &str = "import site, sys; site.addsitedir(sys.argv.pop(1)); \
                      from autobahntestsuite.wstest import run; sys.exit(run())";

/// The Autobahn|Testsuite version, the last one (it is Python 2 software).
const AUTOBAHN: &str = "autobahntestsuite==0.8.2";

async fn install() -> Result<Suite, String> {
    let python = python2()
        .ok_or("Autobahn needs a Python 2.7 interpreter: set PYTHON2, or install pyenv's 2.7")?;
    let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("autobahn");
    let version = tokio::process::Command::new(&python)
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    let suite = Suite {
        python: python.clone(),
        site_packages: home.join(format!("lib/python{version}/site-packages")),
    };
    let done = home.join("installed");
    if std::fs::read_to_string(&done).ok().as_deref() == Some(AUTOBAHN) {
        return Ok(suite);
    }
    println!(
        "installing {AUTOBAHN} into {} (first run only)",
        home.display()
    );
    let out = tokio::process::Command::new(&python)
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .args(["--ignore-installed", "--prefix"])
        .arg(&home)
        .arg(AUTOBAHN)
        .output()
        .await
        .map_err(|e| format!("cannot run pip with {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "pip could not install {AUTOBAHN} with {}:\n{}",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::fs::write(&done, AUTOBAHN).map_err(|e| e.to_string())?;
    Ok(suite)
}

/// Runs the suite (fuzzingclient: cases 1-7 and 10; 9 is performance, 12/13 permessage-deflate
/// have tests of their own) against `proxy`; zero FAILED cases and no bad close allowed.
async fn run_suite(suite: &Suite, proxy: std::net::SocketAddr, agent: &str) {
    run_cases(
        suite,
        proxy,
        agent,
        &["*".into()],
        &["9.*", "12.*", "13.*"],
        200,
    )
    .await;
}

/// permessage-deflate's cases. By default a subset: all seven offers of 13.x (context takeover
/// on and off, window bits 9, 15 and the default, on either side, and a list of three) with
/// messages of 64 B, 8 KiB and 32 KiB (a whole window) and 8 KiB in 256-byte fragments, plus
/// 12.1's 16 B, 64 KiB and fragmented 32 KiB messages: about a minute each in a debug build.
/// `AUTOBAHN_DEFLATE=all` runs all 216 cases of 12 and 13 (about 22 minutes in a debug build;
/// `docs/testing.md` records the result).
fn deflate_cases() -> Vec<String> {
    if std::env::var_os("AUTOBAHN_DEFLATE").is_some_and(|v| v == "all") {
        return vec!["12.*".into(), "13.*".into()];
    }
    let mut cases: Vec<String> = ["12.1.1", "12.1.9", "12.1.13"].map(String::from).into();
    for group in 1..=7 {
        cases.extend([2, 6, 8, 11].map(|n| format!("13.{group}.{n}")));
    }
    cases
}

/// Frame mode in front of a compressing upstream (Python's `websockets`): compressed frames
/// pass between agreeing legs, inflated beside to be checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_deflate_through_the_binarys_frame_bridge() {
    let Some(suite) = suite().await else { return };
    let Some(py) = python::python().await else {
        return;
    };
    let (_up, up) = py.echo_upstream(true).await;
    let (_child, proxy, _) = start_ws_proxy(&["--upstream", &format!("ws://{up}")]).await;
    let cases = deflate_cases();
    run_cases(&suite, proxy, "ws-proxy-frames-deflate", &cases, &[], 31).await;
}

/// `--deflate always` in front of an upstream without compression: the proxy compresses toward
/// the suite and inflates what it sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_deflate_at_the_edge() {
    let Some(suite) = suite().await else { return };
    let up = tt_upstream(conformant_echo).await;
    let (_child, proxy, _) =
        start_ws_proxy(&["--upstream", &format!("ws://{up}"), "--deflate", "always"]).await;
    let cases = deflate_cases();
    run_cases(
        &suite,
        proxy,
        "ws-proxy-frames-deflate-edge",
        &cases,
        &[],
        31,
    )
    .await;
}

/// Tunnel mode in front of a compressing upstream: the extension passes end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_deflate_through_the_tunnel() {
    let Some(suite) = suite().await else { return };
    let Some(py) = python::python().await else {
        return;
    };
    let (_up, up) = py.echo_upstream(true).await;
    let (_child, proxy, _) =
        start_ws_proxy(&["--upstream", &format!("ws://{up}"), "--mode", "tunnel"]).await;
    let cases = deflate_cases();
    run_cases(&suite, proxy, "ws-proxy-tunnel-deflate", &cases, &[], 31).await;
}

/// Runs `cases` but `exclude` against `proxy`; at least `least` cases, zero FAILED, no bad
/// close.
async fn run_cases(
    suite: &Suite,
    proxy: std::net::SocketAddr,
    agent: &str,
    cases: &[String],
    exclude: &[&str],
    least: usize,
) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("autobahn/runs")
        .join(agent);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let spec = serde_json::json!({
        "outdir": dir.join("reports"),
        "servers": [{"agent": agent, "url": format!("ws://{proxy}")}],
        "cases": cases,
        "exclude-cases": exclude,
        "exclude-agent-cases": {},
    });
    std::fs::write(dir.join("spec.json"), spec.to_string()).unwrap();
    let run = tokio::process::Command::new(&suite.python)
        .args(["-c", WSTEST])
        .arg(&suite.site_packages)
        .args(["-m", "fuzzingclient", "-s", "spec.json"])
        .current_dir(&dir)
        .kill_on_drop(true)
        .output();
    // A debug build's full 12/13 run (`AUTOBAHN_DEFLATE=all`) takes about 22 minutes.
    let out = tokio::time::timeout(std::time::Duration::from_secs(3600), run)
        .await
        .expect("wstest did not finish within an hour")
        .expect("run wstest");
    assert!(
        out.status.success(),
        "wstest failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let index = std::fs::read_to_string(dir.join("reports/index.json")).unwrap();
    let index: serde_json::Value = serde_json::from_str(&index).unwrap();
    let cases = index[agent].as_object().expect("the agent's results");
    let count = |field: &str| {
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for case in cases.values() {
            *counts
                .entry(case[field].as_str().unwrap_or("?").to_owned())
                .or_default() += 1;
        }
        counts
    };
    let bad = |field: &str, verdicts: &[&str]| -> Vec<&String> {
        cases
            .iter()
            .filter(|(_, c)| verdicts.contains(&c[field].as_str().unwrap_or("?")))
            .map(|(id, _)| id)
            .collect()
    };
    println!(
        "{agent}: {} cases; behaviour {:?}; close {:?}; reports in {}",
        cases.len(),
        count("behavior"),
        count("behaviorClose"),
        dir.join("reports").display()
    );
    assert!(cases.len() >= least, "only {} cases ran", cases.len());
    // UNIMPLEMENTED is what the suite reports when the extension was declined.
    let failed = bad("behavior", &["FAILED", "UNIMPLEMENTED"]);
    assert!(
        failed.is_empty(),
        "FAILED or UNIMPLEMENTED cases: {failed:?}"
    );
    let unclean = bad("behaviorClose", &["FAILED", "UNCLEAN", "WRONG CODE"]);
    assert!(unclean.is_empty(), "bad closes: {unclean:?}");
}
