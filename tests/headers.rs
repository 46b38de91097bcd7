//! What the upstream receives, and which of its 101 headers reach the client.

mod common;

use std::net::SocketAddr;

use axum_ws_proxy::WsProxyLayer;
use common::*;
use http::{HeaderMap, Uri};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn upgrade_seen_upstream(
    layer: impl FnOnce(WsProxyLayer) -> WsProxyLayer,
    path: &str,
    extra: &[&str],
) -> (Uri, HeaderMap, SocketAddr) {
    let (up, mut seen) = recording_upstream(&[]).await;
    let proxy = proxy(layer(WsProxyLayer::new(upstream(up)))).await;
    let (status, head, ..) = raw_exchange(proxy, &upgrade_request(proxy, path, extra)).await;
    assert_eq!(status, 101, "{head}");
    let (uri, headers) = within("the upstream request", seen.recv()).await.unwrap();
    (uri, headers, proxy)
}

fn all(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_including_connection_named_ones() {
    let (_, h, _) = upgrade_seen_upstream(
        |l| l,
        "/",
        &[
            "connection: keep-alive, X-Hop",
            "x-hop: secret",
            "keep-alive: timeout=5",
            "proxy-connection: keep-alive",
            "te: trailers",
            "trailer: x-checksum",
            "proxy-authorization: Basic Zm9vOmJhcg==",
            "proxy-authenticate: Basic",
        ],
    )
    .await;
    for gone in [
        "x-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-authenticate",
        "transfer-encoding",
    ] {
        assert!(!h.contains_key(gone), "{gone} was forwarded: {h:?}");
    }
    assert_eq!(all(&h, "connection"), ["Upgrade"]);
    assert_eq!(all(&h, "upgrade"), ["websocket"]);
}

/// The client's key goes on, as nginx forwards it (the proxy computes one accept value for
/// both legs); version 13; of the extensions, frame mode forwards the client's permessage-deflate
/// offers as they were written (and no other extension).
#[tokio::test]
async fn the_upstream_gets_the_clients_key_version_13_and_its_deflate_offers() {
    let (_, h, _) = upgrade_seen_upstream(
        |l| l,
        "/",
        &["sec-websocket-extensions: x-webkit-deflate-frame, permessage-deflate; client_max_window_bits"],
    )
    .await;
    assert_eq!(all(&h, "sec-websocket-key"), ["dGhlIHNhbXBsZSBub25jZQ=="]);
    assert_eq!(all(&h, "sec-websocket-version"), ["13"]);
    assert_eq!(
        all(&h, "sec-websocket-extensions"),
        ["permessage-deflate; client_max_window_bits"]
    );
}

/// With `Deflate::Off`, frame mode sends no extension upstream.
#[tokio::test]
async fn with_deflate_off_no_extension_goes_upstream() {
    let (_, h, _) = upgrade_seen_upstream(
        |l| l.deflate(axum_ws_proxy::Deflate::Off),
        "/",
        &["sec-websocket-extensions: permessage-deflate; client_max_window_bits"],
    )
    .await;
    assert!(!h.contains_key("sec-websocket-extensions"));
}

#[tokio::test]
async fn end_to_end_headers_pass_unchanged() {
    let (_, h, _) = upgrade_seen_upstream(
        |l| l,
        "/",
        &[
            "origin: https://app.example",
            "cookie: sid=1; theme=dark",
            "authorization: Bearer token-123",
            "x-custom: a",
            "x-custom: b",
            "sec-websocket-protocol: chat, superchat",
            "user-agent: test-agent/1",
        ],
    )
    .await;
    assert_eq!(all(&h, "origin"), ["https://app.example"]);
    assert_eq!(all(&h, "cookie"), ["sid=1; theme=dark"]);
    assert_eq!(all(&h, "authorization"), ["Bearer token-123"]);
    assert_eq!(all(&h, "x-custom"), ["a", "b"]);
    assert_eq!(all(&h, "sec-websocket-protocol"), ["chat, superchat"]);
    assert_eq!(all(&h, "user-agent"), ["test-agent/1"]);
}

/// By default no peer is trusted: what a client says about itself is replaced.
#[tokio::test]
async fn client_sent_forwarded_headers_are_replaced_from_untrusted_peers() {
    let (_, h, proxy) = upgrade_seen_upstream(
        |l| l,
        "/",
        &[
            "x-forwarded-for: 203.0.113.9",
            "x-forwarded-proto: https",
            "x-forwarded-host: spoofed",
            "x-real-ip: 203.0.113.9",
            "forwarded: for=203.0.113.9",
        ],
    )
    .await;
    assert_eq!(all(&h, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(all(&h, "x-forwarded-proto"), ["http"]);
    assert_eq!(all(&h, "x-forwarded-host"), [proxy.to_string()]);
    assert!(all(&h, "x-real-ip").is_empty());
    assert!(all(&h, "forwarded").is_empty());
}

/// A trusted peer's chain is kept with the peer appended; its proto and host pass.
#[tokio::test]
async fn a_trusted_peers_forwarded_headers_are_kept() {
    let (_, h, _) = upgrade_seen_upstream(
        |l| l.trusted_proxies(["127.0.0.0/8".parse().unwrap()]),
        "/",
        &[
            "x-forwarded-for: 203.0.113.9",
            "x-forwarded-proto: https",
            "x-forwarded-host: chat.example",
        ],
    )
    .await;
    assert_eq!(all(&h, "x-forwarded-for"), ["203.0.113.9, 127.0.0.1"]);
    assert_eq!(all(&h, "x-forwarded-proto"), ["https"]);
    assert_eq!(all(&h, "x-forwarded-host"), ["chat.example"]);
}

/// Trusting another network does not make this peer trusted.
#[tokio::test]
async fn trusting_another_network_keeps_this_peer_untrusted() {
    let (_, h, _) = upgrade_seen_upstream(
        |l| l.trusted_proxies(["10.0.0.0/8".parse().unwrap()]),
        "/",
        &["x-forwarded-for: 203.0.113.9", "x-forwarded-proto: https"],
    )
    .await;
    assert_eq!(all(&h, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(all(&h, "x-forwarded-proto"), ["http"]);
}

#[tokio::test]
async fn host_is_the_clients_by_default() {
    let (_, h, proxy) = upgrade_seen_upstream(|l| l, "/", &[]).await;
    assert_eq!(all(&h, "host"), [proxy.to_string()]);
}

#[tokio::test]
async fn preserve_host_false_sends_the_upstream_authority() {
    let (up, mut seen) = recording_upstream(&[]).await;
    let proxy = proxy(WsProxyLayer::new(upstream(up)).preserve_host(false)).await;
    let (status, ..) = raw_exchange(proxy, &upgrade_request(proxy, "/", &[])).await;
    assert_eq!(status, 101);
    let (_, h) = seen.recv().await.unwrap();
    assert_eq!(all(&h, "host"), [up.to_string()]);
}

#[tokio::test]
async fn path_and_query_follow_the_prefix_with_encoding_kept() {
    let (up, mut seen) = recording_upstream(&[]).await;
    let proxy = proxy(WsProxyLayer::new(
        format!("ws://{up}/v1/rooms/").parse().unwrap(),
    ))
    .await;
    let path = "/a%20b/%E2%9C%93?q=1%2B1&empty=&x=%2F";
    let (status, ..) = raw_exchange(proxy, &upgrade_request(proxy, path, &[])).await;
    assert_eq!(status, 101);
    let (uri, _) = seen.recv().await.unwrap();
    assert_eq!(uri.to_string(), format!("/v1/rooms{path}"));
}

#[tokio::test]
async fn the_upstreams_subprotocol_choice_reaches_the_client() {
    let (up, _seen) = recording_upstream(&["superchat"]).await;
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    let mut req = format!("ws://{proxy}/").into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "chat, superchat".parse().unwrap());
    let (_ws, res) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(all(res.headers(), "sec-websocket-protocol"), ["superchat"]);
}

#[tokio::test]
async fn no_subprotocol_when_the_upstream_chose_none() {
    let (up, _seen) = recording_upstream(&[]).await;
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    let (status, head, ..) = raw_exchange(
        proxy,
        &upgrade_request(proxy, "/", &["sec-websocket-protocol: chat"]),
    )
    .await;
    assert_eq!(status, 101);
    assert!(
        !head.to_ascii_lowercase().contains("sec-websocket-protocol"),
        "{head}"
    );
}

#[tokio::test]
async fn the_101_carries_upstream_end_to_end_headers_only() {
    let (up, _seen) = recording_upstream(&[]).await;
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    let (status, head, ..) = raw_exchange(proxy, &upgrade_request(proxy, "/", &[])).await;
    assert_eq!(status, 101);
    let head = head.to_ascii_lowercase();
    assert!(head.contains("set-cookie: sid=abc; httponly\r\n"), "{head}");
    assert!(head.contains("x-upstream: 1\r\n"), "{head}");
    assert!(!head.contains("keep-alive"), "{head}");
    assert!(!head.contains("sec-websocket-x-debug"), "{head}");
    // The proxy's own accept for the client's key (RFC 6455's example pair).
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
        "{head}"
    );
}
