//! permessage-deflate (RFC 7692) through frame mode, with real compressing peers (Python's
//! `websockets`): passed as it came between legs that agree, compressed at the edge for an
//! upstream that cannot, read in plaintext by message hooks, and bounded.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;

use axum_ws_proxy::{Deflate, WsProxyLayer};
use common::python::{python, Python};
use common::*;
use serde_json::Value;

/// What Python's `websockets` answers a browser-like offer with its defaults.
const UPSTREAMS_ANSWER: &str =
    "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12";

async fn chat(py: &Python, proxy: SocketAddr, count: usize) -> Value {
    let result = py
        .run(&["chat", &format!("ws://{proxy}/"), &count.to_string()])
        .await;
    assert_eq!(result["echoed"], count, "{result}");
    result
}

/// A `ws_proxy_*` counter's value from the binary's metrics.
async fn counter(metrics: SocketAddr, line: &str) -> f64 {
    let (_, _, body) = http_request(metrics, "/metrics", &[]).await;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(line))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The binary in front of `up`, with its metrics.
async fn binary(up: SocketAddr, extra: &[&str]) -> (tokio::process::Child, SocketAddr, SocketAddr) {
    let mut args = vec!["--upstream".to_owned(), format!("ws://{up}")];
    args.extend(["--metrics-listen", "127.0.0.1:0"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (child, proxy, metrics) = start_ws_proxy(&args).await;
    (child, proxy, metrics.expect("metrics"))
}

/// `Deflate::Auto` in front of a compressing upstream: the client gets the upstream's own
/// answer, and the compressed frames cross as they came (a fraction of the plaintext on the
/// client's wire), each message still inflated to be counted.
#[tokio::test]
async fn a_compressing_upstreams_deflate_reaches_the_client() {
    let Some(py) = python().await else { return };
    let (_up, up) = py.echo_upstream(true).await;
    let (_child, proxy, metrics) = binary(up, &[]).await;
    let result = chat(&py, proxy, 300).await;
    assert_eq!(result["extensions"], UPSTREAMS_ANSWER);
    let plain = counter(metrics, "ws_proxy_bytes_total{direction=\"to_client\"} ").await;
    let wire = counter(
        metrics,
        "ws_proxy_compressed_bytes_total{direction=\"to_client\"} ",
    )
    .await;
    assert!(plain > 30_000.0, "plaintext counted: {plain}");
    assert!(
        wire > 0.0 && wire * 4.0 < plain,
        "{wire} bytes on the wire for {plain}"
    );
}

/// The same through the layer inside an axum app.
#[tokio::test]
async fn the_layer_passes_deflate_between_agreeing_legs() {
    let Some(py) = python().await else { return };
    let (_up, up) = py.echo_upstream(true).await;
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    let result = chat(&py, proxy, 50).await;
    assert_eq!(result["extensions"], UPSTREAMS_ANSWER);
}

/// `Deflate::Always` compresses toward the client in front of an upstream that cannot: the
/// proxy's own answer, and compressed frames of its own.
#[tokio::test]
async fn always_compresses_at_the_edge_for_an_upstream_that_cannot() {
    let Some(py) = python().await else { return };
    let up = echo_upstream().await;
    let (_child, proxy, metrics) = binary(up, &["--deflate", "always"]).await;
    let result = chat(&py, proxy, 300).await;
    assert_eq!(
        result["extensions"],
        "permessage-deflate; client_no_context_takeover; server_max_window_bits=10"
    );
    let plain = counter(metrics, "ws_proxy_bytes_total{direction=\"to_client\"} ").await;
    let wire = counter(
        metrics,
        "ws_proxy_compressed_bytes_total{direction=\"to_client\"} ",
    )
    .await;
    assert!(
        wire > 0.0 && wire * 4.0 < plain,
        "{wire} bytes on the wire for {plain}"
    );
}

/// The compression settings reach the edge: the answer announces the window and the dropped
/// context, and without context each chat message is compressed from nothing (several times
/// the bytes of the default, which keeps its context).
#[tokio::test]
async fn the_compression_settings_shape_what_the_edge_sends() {
    let Some(py) = python().await else { return };
    let up = echo_upstream().await;
    let mut wire = Vec::new();
    for (extra, answer) in [
        (
            &[][..],
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=10",
        ),
        (
            &[
                "--deflate-window-bits",
                "12",
                "--deflate-context-takeover=false",
            ][..],
            "permessage-deflate; client_no_context_takeover; server_no_context_takeover; \
             server_max_window_bits=12",
        ),
    ] {
        let mut args = vec!["--deflate", "always"];
        args.extend(extra);
        let (_child, proxy, metrics) = binary(up, &args).await;
        let result = chat(&py, proxy, 300).await;
        assert_eq!(result["extensions"], answer);
        let to_client = "ws_proxy_compressed_bytes_total{direction=\"to_client\"} ";
        wire.push(counter(metrics, to_client).await);
    }
    assert!(
        wire[0] > 0.0 && wire[0] * 2.0 < wire[1],
        "bytes to the client with context {} and without {}",
        wire[0],
        wire[1]
    );
}

/// Messages whose plaintext is more than one walk hands on at a time (256 KiB of JSON):
/// inflated in pieces at the edge and for a message hook, compressed again, and every echo
/// arrives whole, message after message. (The last piece of such a message once left plaintext
/// in zlib and the pooled inflater mid-stream: the next message was 1007.)
#[tokio::test]
async fn large_messages_inflate_in_pieces_and_arrive_whole() {
    let Some(py) = python().await else { return };
    let up = echo_upstream().await;
    let (_child, edge, _) = binary(up, &["--deflate", "always"]).await;
    let (_up, compressing) = py.echo_upstream(true).await;
    let hooked = proxy(
        WsProxyLayer::new(upstream(compressing))
            .on_client_message(|_, _| axum_ws_proxy::hooks::Verdict::Forward),
    )
    .await;
    for at in [edge, hooked] {
        let url = format!("ws://{at}/");
        let result = py.run(&["load", &url, "json256k", "2", "6"]).await;
        assert_eq!(result["echoed"], 6, "{result}");
        assert!(result["plain_bytes"].as_u64().unwrap() > 6 * (256 << 10));
        assert!(
            result["extensions"]
                .as_str()
                .is_some_and(|e| e.starts_with("permessage-deflate")),
            "{result}"
        );
    }
}

/// `Deflate::Auto` in front of an upstream without compression: nothing compressed.
#[tokio::test]
async fn auto_compresses_nothing_for_an_upstream_that_cannot() {
    let Some(py) = python().await else { return };
    let (_up, up) = py.echo_upstream(false).await;
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    assert_eq!(chat(&py, proxy, 20).await["extensions"], Value::Null);
}

/// `Deflate::Off`: the offer is not forwarded, whatever the upstream can do.
#[tokio::test]
async fn off_forwards_no_offer() {
    let Some(py) = python().await else { return };
    let (_up, up) = py.echo_upstream(true).await;
    let proxy = proxy(WsProxyLayer::new(upstream(up)).deflate(Deflate::Off)).await;
    assert_eq!(chat(&py, proxy, 20).await["extensions"], Value::Null);
}

/// Message hooks read plaintext on compressed legs: what they see is the JSON the client
/// sent, and what they let through reaches each side compressed again, intact.
#[tokio::test]
async fn message_hooks_see_plaintext_on_compressed_legs() {
    let Some(py) = python().await else { return };
    let (_up, up) = py.echo_upstream(true).await;
    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<String>();
    let layer = WsProxyLayer::new(upstream(up)).on_upstream_message(move |_, m| {
        let _ = tx.send(m.as_text().unwrap_or("<binary>").to_owned());
        axum_ws_proxy::hooks::Verdict::Forward
    });
    let proxy = proxy(layer).await;
    let result = chat(&py, proxy, 30).await;
    assert_eq!(result["extensions"], UPSTREAMS_ANSWER);
    for i in 0..30 {
        let text = within("the hook's message", seen.recv()).await.unwrap();
        let json: Value = serde_json::from_str(&text).expect("plaintext JSON");
        assert_eq!(
            json["text"],
            format!("message number {i} with some words in it")
        );
    }
}

/// A compressed message that inflates past `max_message_size` is closed with 1009 as it
/// inflates, whether it passes to an agreeing upstream (inflated only to be checked) or is
/// inflated for an upstream without compression; the proxy never holds the plaintext.
#[tokio::test]
async fn a_deflate_bomb_is_1009_and_never_held() {
    let Some(py) = python().await else { return };
    let (_compressing, compressing) = py.echo_upstream(true).await;
    let plain = echo_upstream().await;
    for (up, extra) in [
        (compressing, &[][..]),
        (plain, &["--deflate", "always"][..]),
    ] {
        let (child, proxy, _) =
            binary(up, &[&["--max-message-size", "1MiB"], extra].concat()).await;
        let before = proc_status_kib(&child, "VmHWM:");
        // 256 MiB of zeros: about 256 KiB compressed.
        let result = py
            .run(&[
                "raw",
                &format!("ws://{proxy}/"),
                "bomb",
                &(256 << 20).to_string(),
            ])
            .await;
        assert_eq!(result["close"], 1009, "{extra:?}: {result}");
        let grew = proc_status_kib(&child, "VmHWM:").saturating_sub(before);
        assert!(grew < 8 << 10, "{extra:?}: peak RSS grew by {grew} KiB");
    }
}

/// Data that does not inflate is 1007; a compressed message on a leg that agreed no
/// compression is 1002 (RSV1 not allowed).
#[tokio::test]
async fn bad_compressed_data_is_1007_and_unnegotiated_compression_1002() {
    let Some(py) = python().await else { return };
    let up = echo_upstream().await;
    let (_child, proxy, _) = binary(up, &["--deflate", "always"]).await;
    let url = format!("ws://{proxy}/");
    let garbage = py.run(&["raw", &url, "garbage"]).await;
    assert_eq!(
        garbage["extensions"][0],
        "sec-websocket-extensions: permessage-deflate; client_no_context_takeover; \
         server_max_window_bits=10"
    );
    assert_eq!(garbage["close"], 1007, "{garbage}");
    let unasked = py.run(&["raw", &url, "rsv1-without-offer"]).await;
    assert_eq!(unasked["close"], 1002, "{unasked}");
}
