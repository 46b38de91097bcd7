//! The paced drain through the library's own server: HTTP/2 sessions (RFC 8441) are drained
//! like the others, not cut when `serve`'s grace ends.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;

use axum_ws_proxy::WsProxyLayer;

#[tokio::test]
async fn http2_sessions_are_drained_past_the_servers_grace_not_cut() {
    let up = echo_upstream().await;
    let layer = WsProxyLayer::new(upstream(up));
    let handle = layer
        .shutdown_handle()
        .drain_window(Duration::from_millis(800));
    let watch = handle.clone();
    let app = axum::Router::new().layer(layer);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum_ws_proxy::serve(listener, app)
            .grace(Duration::from_millis(100))
            .drain_sessions(handle, Duration::from_secs(5))
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
    assert_eq!(watch.live_sessions(), 4);

    // The documented pattern: the server drains the sessions itself, over the handle's
    // window, and keeps their HTTP/2 connections past its 100 ms grace until they close.
    let started = Instant::now();
    stop.send(()).unwrap();
    let mut closed_at = Vec::new();
    for ws in &mut sessions {
        assert_eq!(
            next_close(ws).await,
            (1012, "proxy draining, reconnect".into())
        );
        closed_at.push(started.elapsed());
        while let Some(Ok(_)) = within("the close handshake", ws.next()).await {}
    }
    // Asked at 0, 200, 400 and 600 ms: the last ones well after the server's 100 ms grace.
    assert!(closed_at[3] >= Duration::from_millis(500), "{closed_at:?}");
    within("the server to finish", server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(watch.live_sessions(), 0);
}

/// Without `drain_sessions`, the server does not wait for sessions it was not asked to drain:
/// it returns at its grace even with a WebSocket open on an HTTP/2 connection.
#[tokio::test]
async fn without_drain_sessions_the_server_returns_at_its_grace() {
    let up = echo_upstream().await;
    let layer = WsProxyLayer::new(upstream(up));
    let app = axum::Router::new().layer(layer);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum_ws_proxy::serve(listener, app)
            .grace(Duration::from_millis(200))
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    let (res, ws) = h2_connect(addr, "/", &[]).await;
    assert_eq!(res.status(), 200);
    let _ws = ws.unwrap();
    let started = Instant::now();
    stop.send(()).unwrap();
    within("the server to finish", server)
        .await
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

/// SIGTERM during an operator's drain: the same drain goes on, hurried to end within the
/// shutdown's window; no session is asked twice.
#[tokio::test]
async fn a_shutdown_during_a_requested_drain_finishes_it_within_its_own_window() {
    let up = echo_upstream().await;
    let layer = WsProxyLayer::new(upstream(up));
    let handle = layer
        .shutdown_handle()
        .drain_window(Duration::from_secs(30));
    let proxy = proxy(layer).await;
    let mut sessions = Vec::new();
    for _ in 0..6 {
        sessions.push(connect(proxy, "/").await);
    }
    assert!(handle.drain());
    assert!(!handle.drain(), "a second request changes nothing");
    // The first is asked at once; the next would be 5 s later.
    assert_eq!(next_close(&mut sessions[0]).await.0, 1012);
    let progress = handle.drain_progress().unwrap();
    assert_eq!(
        (progress.sessions_at_start, progress.asked_to_close),
        (6, 1)
    );

    let started = Instant::now();
    let shutdown = handle.clone().drain_window(Duration::from_millis(400));
    let drained = tokio::spawn(async move { shutdown.shutdown(Duration::from_secs(5)).await });
    for ws in &mut sessions[1..] {
        assert_eq!(
            next_close(ws).await,
            (1012, "proxy draining, reconnect".into())
        );
    }
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "{took:?}");
    for ws in &mut sessions {
        // One close frame each, then the end.
        while let Some(Ok(m)) = within("the close handshake", ws.next()).await {
            assert!(!m.is_close(), "asked twice: {m:?}");
        }
    }
    assert_eq!(within("the shutdown", drained).await.unwrap(), 0);
    let progress = handle.drain_progress().unwrap();
    assert_eq!((progress.asked_to_close, progress.done), (6, true));
}
