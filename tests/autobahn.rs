//! Autobahn|Testsuite through the proxy, in front of a conformant echo server (tokio-tungstenite).
//! Requires zero FAILED cases and no unclean closes. Skips, saying why, only when no Python 2.7
//! interpreter exists (the suite is Python 2 software).

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

/// The same interpreter search as autobahn.sh: $PYTHON2, pyenv's 2.7.x, `python2` on PATH.
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
    let Some(script) = suite() else { return };
    let up = tt_upstream(conformant_echo).await;
    let (_child, proxy, _) =
        start_ws_proxy(&["--upstream", &format!("ws://{up}"), "--mode", "tunnel"]).await;
    run_suite(&script, proxy, "ws-proxy-binary-tunnel").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_through_the_binarys_frame_bridge() {
    // The binary serves HTTP/1.1 on the socket itself; messages of 8 KiB and more are written
    // by the proxy's own frame writer (cases 1.1.6-1.1.8, 1.2.6-1.2.8, 6.x, 7.x).
    let Some(script) = suite() else { return };
    let up = tt_upstream(conformant_echo).await;
    let (_child, proxy, _) = start_ws_proxy(&["--upstream", &format!("ws://{up}")]).await;
    run_suite(&script, proxy, "ws-proxy-binary-frames").await;
}

async fn autobahn(layer: impl FnOnce(axum_ws_proxy::UpstreamPool) -> WsProxyLayer, agent: &str) {
    let Some(script) = suite() else { return };
    let up = tt_upstream(conformant_echo).await;
    let proxy = proxy(layer(upstream(up))).await;
    run_suite(&script, proxy, agent).await;
}

/// The conformance script, or `None` (after saying why) where the suite cannot run.
fn suite() -> Option<PathBuf> {
    if python2().is_none() {
        println!("SKIPPED: no Python 2.7 interpreter (set PYTHON2, or install pyenv's 2.7) - Autobahn needs one");
        return None;
    }
    let script = std::env::var_os("AUTOBAHN_SH")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/autobahn.sh")
        });
    assert!(
        script.exists(),
        "conformance script not found at {} (set AUTOBAHN_SH)",
        script.display()
    );
    Some(script)
}

async fn run_suite(script: &Path, proxy: std::net::SocketAddr, agent: &str) {
    let out = tokio::process::Command::new("bash")
        .arg(script)
        .arg(format!("ws://{proxy}"))
        .arg(agent)
        .output()
        .await
        .expect("run autobahn.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(0),
        "Autobahn reported failures or could not run:\n{stdout}"
    );
}
