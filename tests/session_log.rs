//! Each session records a `ws_session` span with its summary.

mod common;

use std::io::Write;

use axum_ws_proxy::WsProxyLayer;
use common::*;
use futures_util::SinkExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Sends each formatted log line to a channel, so the test can await the one it wants.
#[derive(Clone)]
struct Lines(mpsc::UnboundedSender<String>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.send(String::from_utf8_lossy(buf).into_owned());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// current_thread (the default): the proxy's tasks run on this thread, under this subscriber.
#[tokio::test]
async fn the_session_span_records_who_what_and_how_it_closed() {
    let (tx, mut lines) = mpsc::unbounded_channel();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || Lines(tx.clone()))
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let up = echo_upstream().await;
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    let mut ws = connect_with(proxy, "/room/7?x=1", &[]).await;
    ws.send(Message::text("abc")).await.unwrap();
    ws.send(Message::binary(vec![0u8; 5])).await.unwrap();
    next_message(&mut ws).await;
    next_message(&mut ws).await;
    assert_eq!(
        close_and_wait(&mut ws, 4001, "bye").await,
        Some((4001, "bye".into()))
    );

    let line = within("the session summary", async {
        loop {
            let line = lines.recv().await.unwrap();
            if line.contains("session closed") {
                return line;
            }
        }
    })
    .await;
    for field in [
        "ws_session{".to_owned(),
        "client=127.0.0.1:".to_owned(),
        format!("upstream=ws://{up}"),
        format!("upstream_addr={up}"),
        "path=/room/7?x=1".to_owned(),
        "messages_to_upstream=2".to_owned(),
        "bytes_to_upstream=8".to_owned(),
        "messages_to_client=2".to_owned(),
        "bytes_to_client=8".to_owned(),
        "closed_by=\"client\"".to_owned(),
        "client_close_code=4001".to_owned(),
        "upstream_close_code=4001".to_owned(),
        "close_reason=\"bye\"".to_owned(),
        "duration_ms=".to_owned(),
    ] {
        assert!(line.contains(&field), "missing {field} in: {line}");
    }
}
