//! Session lifecycle hooks: `on_open` and `on_close` with the session's summary.

mod common;

use axum_ws_proxy::{
    hooks::{ClosedBy, SessionInfo, SessionSummary},
    Mode, WsProxyLayer,
};
use common::*;
use futures_util::SinkExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

fn hooked(
    layer: WsProxyLayer,
) -> (
    WsProxyLayer,
    mpsc::UnboundedReceiver<SessionInfo>,
    mpsc::UnboundedReceiver<SessionSummary>,
) {
    let (open_tx, open) = mpsc::unbounded_channel();
    let (close_tx, closed) = mpsc::unbounded_channel();
    let layer = layer
        .on_open(move |s| {
            let _ = open_tx.send(s.clone());
        })
        .on_close(move |s| {
            let _ = close_tx.send(s.clone());
        });
    (layer, open, closed)
}

#[tokio::test]
async fn on_open_and_on_close_describe_each_session() {
    let up = echo_upstream().await;
    let (layer, mut open, mut closed) = hooked(WsProxyLayer::new(upstream(up)));
    let proxy = proxy(layer).await;
    for round in 1..=2u64 {
        let mut ws = connect(proxy, &format!("/room/{round}?x=1")).await;
        let info = within("on_open", open.recv()).await.unwrap();
        assert_eq!(info.id, round);
        assert_eq!(info.path, format!("/room/{round}?x=1"));
        assert_eq!(info.upstream_addr, up);
        assert_eq!(info.upstream.to_string(), format!("ws://{up}"));
        assert_eq!(
            info.client.map(|c| c.ip().to_string()).as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(info.mode, Mode::Frames);
        ws.send(Message::text("abc")).await.unwrap();
        ws.send(Message::binary(vec![0u8; 10])).await.unwrap();
        next_message(&mut ws).await;
        next_message(&mut ws).await;
        close_and_wait(&mut ws, 4001, "bye").await;

        let s = within("on_close", closed.recv()).await.unwrap();
        assert_eq!(s.session.id, round);
        assert_eq!((s.messages_to_upstream, s.bytes_to_upstream), (2, 13));
        assert_eq!((s.messages_to_client, s.bytes_to_client), (2, 13));
        assert_eq!(s.closed_by, ClosedBy::Client);
        assert_eq!((s.client_close_code, s.upstream_close_code), (4001, 4001));
        assert_eq!(s.close_reason, "bye");
        assert_eq!(s.undeliverable, 0);
    }
}

#[tokio::test]
async fn on_close_reports_an_upstream_crash() {
    let up = tt_upstream(|ws: Server| async move { drop(ws) }).await;
    let (layer, _open, mut closed) = hooked(WsProxyLayer::new(upstream(up)));
    let proxy = proxy(layer).await;
    let mut ws = connect(proxy, "/").await;
    match next_message(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1011),
        other => panic!("expected close 1011, got {other:?}"),
    }
    // Reading on answers the close, completing the handshake.
    while let Some(Ok(_)) = within(
        "the close handshake",
        futures_util::StreamExt::next(&mut ws),
    )
    .await
    {}
    let s = within("on_close", closed.recv()).await.unwrap();
    assert_eq!(s.closed_by, ClosedBy::Upstream);
    assert_eq!((s.client_close_code, s.upstream_close_code), (1011, 1006));
}

#[tokio::test]
async fn hooks_work_for_tunnels_too() {
    let up = echo_upstream().await;
    let (layer, mut open, mut closed) = hooked(WsProxyLayer::new(upstream(up)).tunnel());
    let proxy = proxy(layer).await;
    let mut ws = connect(proxy, "/t").await;
    assert_eq!(
        within("on_open", open.recv()).await.unwrap().mode,
        Mode::Tunnel
    );
    ws.send(Message::text("12345")).await.unwrap();
    next_message(&mut ws).await;
    close_and_wait(&mut ws, 1000, "").await;
    drop(ws);
    let s = within("on_close", closed.recv()).await.unwrap();
    assert_eq!(
        (
            s.messages_to_upstream,
            s.bytes_to_upstream,
            s.messages_to_client
        ),
        (1, 5, 1)
    );
    assert_eq!((s.closed_by, s.client_close_code), (ClosedBy::Client, 1000));
}
