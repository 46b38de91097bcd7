//! WebSocket over HTTP/2 (RFC 8441): extended CONNECT from an HTTP/2 client, proxied to an
//! HTTP/1.1 upstream, answered with 200.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;

use axum::extract::ws::WebSocketUpgrade;
use axum::Router;
use axum_ws_proxy::WsProxyLayer;
use common::*;
use futures_util::SinkExt;
use http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// An HTTP/1.1 upstream choosing subprotocol `chat`, echoing, and recording the request.
async fn h1_upstream() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<(String, http::HeaderMap)>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = Router::new().fallback(
        move |uri: http::Uri,
              version: http::Version,
              headers: http::HeaderMap,
              ws: WebSocketUpgrade| {
            let tx = tx.clone();
            async move {
                tx.send((format!("{version:?} {uri}"), headers)).unwrap();
                ws.protocols(["chat"]).on_upgrade(echo)
            }
        },
    );
    (serve(app).await, rx)
}

#[tokio::test]
async fn an_http2_client_is_proxied_to_an_http1_upstream() {
    let (up, mut seen) = h1_upstream().await;
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    let (res, ws) = h2_connect(
        proxy,
        "/room/1?x=2",
        &[
            ("sec-websocket-protocol", "chat"),
            ("origin", "https://app.example"),
        ],
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["sec-websocket-protocol"], "chat");
    assert!(!res.headers().contains_key("sec-websocket-accept"));
    let mut ws = ws.unwrap();

    let (line, headers) = seen.recv().await.unwrap();
    assert_eq!(line, "HTTP/1.1 /room/1?x=2");
    assert_eq!(headers["host"], proxy.to_string().as_str());
    assert_eq!(headers["upgrade"], "websocket");
    assert_eq!(headers["origin"], "https://app.example");

    ws.send(Message::text("over h2")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("over h2"));
    // Large enough for the proxy's own frame writer and read-ahead, over an HTTP/2 stream.
    let big: String = "h2✓".chars().cycle().take(1_000_000).collect();
    ws.send(Message::text(big.clone())).await.unwrap();
    assert!(
        next_message(&mut ws).await == Message::text(big),
        "changed over h2"
    );
    ws.send(Message::Close(Some(CloseFrame {
        code: 4002u16.into(),
        reason: "h2 bye".into(),
    })))
    .await
    .unwrap();
    match next_message(&mut ws).await {
        Message::Close(Some(f)) => {
            assert_eq!((u16::from(f.code), f.reason.as_str()), (4002, "h2 bye"))
        }
        other => panic!("expected the close echo, got {other:?}"),
    }
}

#[tokio::test]
async fn an_http2_client_gets_the_upstreams_refusal() {
    let up =
        serve(Router::new().fallback(|| async { (StatusCode::UNAUTHORIZED, "who are you") })).await;
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    let (res, ws) = h2_connect(proxy, "/", &[]).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(ws.is_none());
}

#[tokio::test]
async fn the_binary_serves_http2_cleartext_on_the_same_port() {
    let (up, _seen) = h1_upstream().await;
    let (_child, addr, _) = start_ws_proxy(&["--upstream", &format!("ws://{up}")]).await;
    let (res, ws) = h2_connect(addr, "/", &[]).await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut ws = ws.unwrap();
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::binary(vec![1, 2, 3]));
    // And HTTP/1.1 on the same port.
    let mut h1 = connect(addr, "/").await;
    h1.send(Message::text("h1")).await.unwrap();
    assert_eq!(next_message(&mut h1).await, Message::text("h1"));
}

#[tokio::test]
async fn an_http2_client_through_a_tunnel() {
    let (up, _seen) = h1_upstream().await;
    let proxy = proxy(WsProxyLayer::new(upstream(up)).tunnel()).await;
    let (res, ws) = h2_connect(proxy, "/", &[("sec-websocket-protocol", "chat")]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["sec-websocket-protocol"], "chat");
    let mut ws = ws.unwrap();
    for i in 0..5 {
        ws.send(Message::text(format!("h2 tunnel {i}")))
            .await
            .unwrap();
        assert_eq!(
            next_message(&mut ws).await,
            Message::text(format!("h2 tunnel {i}"))
        );
    }
    ws.send(Message::Close(Some(CloseFrame {
        code: 4004u16.into(),
        reason: "done".into(),
    })))
    .await
    .unwrap();
    match next_message(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 4004),
        other => panic!("expected the close echo, got {other:?}"),
    }
}
