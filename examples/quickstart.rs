//! The whole job in one process: an echo WebSocket server (the "upstream"), and an axum app in
//! front of it with `WsProxyLayer`, serving a page to try it from a browser.
//!
//! ```text
//! cargo run --example quickstart            # listens on 127.0.0.1:3000 (or a free port)
//! cargo run --example quickstart -- 0.0.0.0:8080
//! ```
//!
//! The echo upstream chooses the subprotocol `echo.v1` when offered, and answers the message
//! `/close` by closing with code 4000, so the page shows both crossing the proxy.

use std::net::SocketAddr;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use axum_ws_proxy::WsProxyLayer;
use tokio::net::TcpListener;

const PAGE: &str = include_str!("quickstart.html");

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();

    // The upstream: any WebSocket service; here an axum echo server on a free port.
    let upstream = TcpListener::bind("127.0.0.1:0").await?;
    let upstream_addr = upstream.local_addr()?;
    let echo = Router::new()
        .fallback(|ws: WebSocketUpgrade| async { ws.protocols(["echo.v1"]).on_upgrade(echo) });
    tokio::spawn(async move { axum::serve(upstream, echo).await });

    // The app: an ordinary page, and every WebSocket upgrade proxied to the upstream.
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .layer(WsProxyLayer::new(format!("ws://{upstream_addr}").parse()?));

    let listener = match std::env::args().nth(1) {
        Some(addr) => TcpListener::bind(addr.as_str()).await?,
        None => match TcpListener::bind("127.0.0.1:3000").await {
            Ok(l) => l,
            Err(_) => TcpListener::bind("127.0.0.1:0").await?, // 3000 is taken
        },
    };
    let addr = listener.local_addr()?;
    println!("WebSocket proxy ready: open http://{addr}/ in a browser");
    println!("  or connect a client to ws://{addr}/echo (echo upstream at ws://{upstream_addr})");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

/// Echoes text and binary; `/close` closes with 4000 and a reason.
async fn echo(mut socket: WebSocket) {
    while let Some(Ok(msg)) = socket.recv().await {
        let reply = match msg {
            Message::Text(t) if t.as_str() == "/close" => Message::Close(Some(CloseFrame {
                code: 4000,
                reason: "goodbye from the upstream".into(),
            })),
            Message::Text(_) | Message::Binary(_) => msg,
            _ => continue,
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
}
