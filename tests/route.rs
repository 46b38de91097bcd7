//! The routing hook: pick the pool, rewrite the target and headers, or refuse.

mod common;

use std::net::SocketAddr;

use axum::extract::ws::WebSocketUpgrade;
use axum::Router;
use axum_ws_proxy::{hooks::Refusal, upstream::UpstreamPool, WsProxyLayer};
use common::*;
use futures_util::SinkExt;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// An axum upstream named `name`: reports (name, uri, headers) per upgrade, then echoes.
async fn recording(
    name: &'static str,
    tx: mpsc::UnboundedSender<(&'static str, Uri, HeaderMap)>,
) -> SocketAddr {
    let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap, ws: WebSocketUpgrade| {
        let tx = tx.clone();
        async move {
            tx.send((name, uri, headers)).unwrap();
            ws.on_upgrade(echo)
        }
    });
    serve(app).await
}

fn pool(addr: SocketAddr) -> UpstreamPool {
    format!("ws://{addr}").parse().unwrap()
}

#[derive(Clone)]
struct Identity(&'static str);

#[tokio::test]
async fn the_hook_picks_the_pool_and_rewrites_target_and_headers() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let (default, eu) = (
        recording("default", tx.clone()).await,
        recording("eu", tx).await,
    );
    let eu_pool = pool(eu);
    let layer = WsProxyLayer::new(pool(default)).route(move |req| {
        if req.headers().get("x-tenant").is_some_and(|t| t == "eu") {
            req.set_pool(eu_pool.clone());
            let room = req.uri().path().trim_start_matches("/chat/").to_owned();
            req.set_path_and_query(
                PathAndQuery::try_from(format!("/rooms/{room}?tenant=eu")).unwrap(),
            );
        }
        let user = req.extensions().get::<Identity>().map(|i| i.0);
        let headers = req.upstream_headers();
        headers.remove("authorization");
        if let Some(user) = user {
            headers.insert("x-user-id", HeaderValue::from_static(user));
        }
        Ok(())
    });
    let app = Router::new()
        .fallback(|| async { "inner" })
        .layer(layer)
        .layer(axum::middleware::from_fn(
            |mut req: axum::extract::Request, next: axum::middleware::Next| async move {
                req.extensions_mut().insert(Identity("u-7"));
                next.run(req).await
            },
        ));
    let proxy = serve(app).await;

    let mut ws = connect_with(
        proxy,
        "/chat/lobby",
        &[("x-tenant", "eu"), ("authorization", "Bearer t")],
    )
    .await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("hi"));
    let (name, uri, headers) = seen.recv().await.unwrap();
    assert_eq!(
        (name, uri.to_string().as_str()),
        ("eu", "/rooms/lobby?tenant=eu")
    );
    assert_eq!(headers["x-user-id"], "u-7");
    assert!(!headers.contains_key("authorization"));

    // No tenant: the layer's pool, the client's path.
    let _ws = connect_with(proxy, "/chat/lobby", &[]).await;
    let (name, uri, _) = seen.recv().await.unwrap();
    assert_eq!((name, uri.to_string().as_str()), ("default", "/chat/lobby"));
}

#[tokio::test]
async fn the_hook_can_refuse_before_anything_is_dialled() {
    // Dialling the closed port would be a 502.
    let layer = WsProxyLayer::new(upstream(closed_port().await)).route(|req| {
        match req.extensions().get::<Identity>() {
            Some(_) => Ok(()),
            None => Err(Refusal::new(StatusCode::UNAUTHORIZED, "log in first")),
        }
    });
    let proxy = proxy(layer).await;
    let (status, headers, body) = http_request(proxy, "/", &UPGRADE_HEADERS).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(&body[..], b"log in first\n");
}
