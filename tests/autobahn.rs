//! Autobahn|Testsuite through the proxy, in front of a conformant echo server (tokio-tungstenite).
//! Requires zero FAILED cases and no unclean closes. Skips, saying why, only when no Python 2.7
//! interpreter exists (the suite is Python 2 software).

mod common;

use std::path::{Path, PathBuf};

use axum_ws_proxy::WsProxyLayer;
use common::*;
use futures_util::{SinkExt, StreamExt};

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
    if python2().is_none() {
        println!("SKIPPED: no Python 2.7 interpreter (set PYTHON2, or install pyenv's 2.7) - Autobahn needs one");
        return;
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

    // A conformant echo upstream: tokio-tungstenite, echoing text and binary messages.
    let up = tt_upstream(|mut ws: Server| async move {
        while let Some(Ok(m)) = ws.next().await {
            if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                break;
            }
        }
    })
    .await;
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;

    let out = tokio::process::Command::new("bash")
        .arg(&script)
        .arg(format!("ws://{proxy}"))
        .arg("axum-ws-proxy")
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
