//! Reloading a layer's configuration while it serves (`WsProxyLayer::reloadable`): new
//! sessions follow the new configuration, live ones keep theirs; the session registry (limit
//! and drain) spans generations.

mod common;

use std::time::Duration;

use axum_ws_proxy::{upstream::UpstreamPool, WsProxyLayer};
use common::*;
use futures_util::SinkExt;
use http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

/// A proxy app around a reloadable layer.
async fn proxy_with(layer: axum_ws_proxy::ReloadableLayer) -> std::net::SocketAddr {
    serve(axum::Router::new().layer(layer)).await
}

async fn first_text(ws: &mut Client) -> String {
    match next_message(ws).await {
        Message::Text(t) => t.to_string(),
        other => panic!("expected a name, got {other:?}"),
    }
}

#[tokio::test]
async fn new_sessions_follow_a_reload_and_live_ones_stay() {
    let (a, b) = (named("a").await, named("b").await);
    let (layer, reload) = WsProxyLayer::new(upstream(a)).reloadable();
    let proxy = proxy_with(layer).await;
    let mut before = connect(proxy, "/").await;
    assert_eq!(first_text(&mut before).await, "a");
    assert_eq!(reload.generation(), 1);

    assert_eq!(reload.reload(WsProxyLayer::new(upstream(b))), 2);
    let mut after = connect(proxy, "/").await;
    assert_eq!(first_text(&mut after).await, "b");
    before.send(Message::text("still a")).await.unwrap();
    assert_eq!(next_message(&mut before).await, Message::text("still a"));
    assert_eq!(reload.current().pool().to_string(), format!("ws://{b}"));
}

/// `max_sessions` counts every generation's sessions; the first layer's shutdown handle
/// drains them all.
#[tokio::test]
async fn the_session_registry_spans_generations() {
    let up = echo_upstream().await;
    let first = WsProxyLayer::new(upstream(up)).max_sessions(2);
    let drain = first.shutdown_handle();
    let (layer, reload) = first.reloadable();
    let proxy = proxy_with(layer).await;
    let mut old = connect(proxy, "/").await;
    reload.reload(WsProxyLayer::new(upstream(up)).max_sessions(2));
    let mut new = connect(proxy, "/").await;
    let (status, _, _) = http_request(proxy, "/", &UPGRADE_HEADERS).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "two live sessions, limit 2"
    );
    assert_eq!(drain.live_sessions(), 2);
    let draining = tokio::spawn(async move { drain.shutdown(Duration::from_secs(5)).await });
    for ws in [&mut old, &mut new] {
        match next_message(ws).await {
            Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1012),
            other => panic!("expected 1012, got {other:?}"),
        }
        // Answer the close, as a client does.
        while let Some(Ok(_)) = futures_util::StreamExt::next(ws).await {}
    }
    assert_eq!(
        within("the drain", draining).await.unwrap(),
        0,
        "both generations closed"
    );
}

/// A pool updated in place keeps the live count of a member it still has.
#[tokio::test]
async fn update_from_keeps_live_counts_of_kept_members() {
    let (a, b) = (named("a").await, named("b").await);
    let pool = UpstreamPool::from_urls([format!("ws://{a}")]).unwrap();
    let proxy = proxy(WsProxyLayer::new(pool.clone())).await;
    let mut live = connect(proxy, "/").await;
    assert_eq!(first_text(&mut live).await, "a");
    pool.update_from(&UpstreamPool::from_urls([format!("ws://{a}"), format!("ws://{b}")]).unwrap());
    let status = pool.status();
    assert_eq!(status.len(), 2);
    assert_eq!(status[0].live_sessions, 1, "{status:?}");
    // Least-conn: the next session goes to the member without one.
    let mut next = connect(proxy, "/").await;
    assert_eq!(first_text(&mut next).await, "b");
}
