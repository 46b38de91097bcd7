//! The paced drain through the library's own server: HTTP/2 sessions (RFC 8441) are drained
//! like the others, not cut when `serve`'s grace ends.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use axum_ws_proxy::WsProxyLayer;

#[tokio::test]
async fn http2_sessions_are_drained_past_the_servers_grace_not_cut() {
    let up = echo_upstream().await;
    let layer = WsProxyLayer::new(upstream(up));
    let handle = layer
        .shutdown_handle()
        .drain_window(Duration::from_millis(800));
    let app = axum::Router::new().layer(layer);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum_ws_proxy::serve(listener, app)
            .grace(Duration::from_millis(100))
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    let mut sessions = Vec::new();
    for _ in 0..4 {
        let (res, ws) = h2_connect(addr, "/", &[]).await;
        assert_eq!(res.status(), 200);
        sessions.push(ws.unwrap());
    }
    assert_eq!(handle.live_sessions(), 4);

    let started = Instant::now();
    stop.send(()).unwrap();
    let drained = tokio::spawn({
        let handle = handle.clone();
        async move { handle.shutdown(Duration::from_secs(5)).await }
    });
    let mut closed_at = Vec::new();
    for ws in &mut sessions {
        match next_message(ws).await {
            Message::Close(Some(f)) => assert_eq!(
                (u16::from(f.code), f.reason.as_str()),
                (1012, "proxy draining, reconnect")
            ),
            other => panic!("expected close 1012, got {other:?}"),
        }
        closed_at.push(started.elapsed());
        while let Some(Ok(_)) = within("the close handshake", ws.next()).await {}
    }
    // Asked at 0, 200, 400 and 600 ms: the last ones well after the server's 100 ms grace.
    assert!(closed_at[3] >= Duration::from_millis(500), "{closed_at:?}");
    assert_eq!(within("the drain", drained).await.unwrap(), 0);
    within("the server to finish", server)
        .await
        .unwrap()
        .unwrap();
}
