//! Ordinary HTTP reaches the inner service; the layer works under nest, route_layer and
//! around a fallback.

mod common;

use axum::extract::ws::WebSocketUpgrade;
use axum::routing::{any, get};
use axum::Router;
use axum_ws_proxy::WsProxyLayer;
use common::*;
use futures_util::SinkExt;
use http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn ordinary_requests_reach_the_inner_service() {
    let proxy = echo_proxy().await;
    let (status, _, body) = http_request(proxy, "/http", &[]).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"inner route"[..]));
    let (status, _, body) = http_request(proxy, "/nowhere", &[]).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::NOT_FOUND, &b"inner fallback"[..])
    );
}

#[tokio::test]
async fn upgrade_headers_without_the_connection_token_pass_through() {
    let proxy = echo_proxy().await;
    let (status, _, body) = http_request(proxy, "/http", &[("upgrade", "websocket")]).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"inner route"[..]));
}

#[tokio::test]
async fn a_post_with_upgrade_headers_passes_through() {
    let app = Router::new()
        .route("/x", any(|m: http::Method| async move { m.to_string() }))
        .layer(WsProxyLayer::new(upstream(echo_upstream().await)));
    let addr = serve(app).await;
    let req = "POST /x HTTP/1.1\r\nhost: a\r\nupgrade: websocket\r\nconnection: upgrade\r\ncontent-length: 0\r\n\r\n";
    let (status, head, mut tcp, mut rest) = raw_exchange(addr, req).await;
    assert_eq!(status, 200, "{head}");
    while rest.len() < 4 {
        let mut b = [0u8; 64];
        let n = tokio::io::AsyncReadExt::read(&mut tcp, &mut b)
            .await
            .unwrap();
        rest.extend_from_slice(&b[..n]);
    }
    assert_eq!(&rest[..], b"POST");
}

#[tokio::test]
async fn works_under_nest_with_the_nest_prefix_removed() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let up = Router::new().fallback(move |uri: http::Uri, ws: WebSocketUpgrade| {
        let tx = tx.clone();
        async move {
            tx.send(uri.to_string()).unwrap();
            ws.on_upgrade(echo)
        }
    });
    let up = serve(up).await;
    let inner = Router::new()
        .route("/plain", get(|| async { "nested plain" }))
        .layer(WsProxyLayer::new(
            format!("ws://{up}/rooms").parse().unwrap(),
        ));
    let app = Router::new().nest("/chat", inner);
    let addr = serve(app).await;

    let mut ws = connect(addr, "/chat/plain?x=1").await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("hi"));
    assert_eq!(rx.recv().await.unwrap(), "/rooms/plain?x=1");
    let (status, _, body) = http_request(addr, "/chat/plain", &[]).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"nested plain"[..]));
}

#[tokio::test]
async fn works_as_a_route_layer() {
    let app = Router::new()
        .route("/ws", any(|| async { "not upgraded" }))
        .route_layer(WsProxyLayer::new(upstream(echo_upstream().await)));
    let addr = serve(app).await;
    let mut ws = connect(addr, "/ws").await;
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::binary(vec![1, 2, 3]));
    let (status, _, body) = http_request(addr, "/ws", &[]).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"not upgraded"[..]));
}

#[tokio::test]
async fn works_around_a_fallback() {
    let app = Router::new()
        .fallback(|| async { "fallback" })
        .layer(WsProxyLayer::new(upstream(echo_upstream().await)));
    let addr = serve(app).await;
    let mut ws = connect(addr, "/anything/at/all").await;
    ws.send(Message::text("x")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("x"));
}
