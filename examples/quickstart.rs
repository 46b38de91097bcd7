//! The whole job in one process: an echo WebSocket server (the "upstream"), and an axum app in
//! front of it with `WsProxyLayer`, serving a page to try it from a browser.
//!
//! ```text
//! cargo run --example quickstart            # listens on 127.0.0.1:3000 (or a free port)
//! cargo run --example quickstart -- 0.0.0.0:8080
//! ```
//!
//! The echo upstream chooses the subprotocol `echo.v1` when offered, and answers the message
//! `/close` by closing with code 4000, so the page shows both crossing the proxy. (The
//! browser test in `tests/browser.rs` drives this same code in headless Chromium.)

use std::net::SocketAddr;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use axum_ws_proxy::WsProxyLayer;
use tokio::net::TcpListener;

const PAGE: &str = include_str!("quickstart.html");

#[allow(dead_code)] // also compiled into tests/browser.rs, which has its own entry point
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let upstream = echo_upstream().await?;

    let listener = match std::env::args().nth(1) {
        Some(addr) => TcpListener::bind(addr.as_str()).await?,
        None => match TcpListener::bind("127.0.0.1:3000").await {
            Ok(l) => l,
            Err(_) => TcpListener::bind("127.0.0.1:0").await?, // 3000 is taken
        },
    };
    let addr = listener.local_addr()?;
    println!("WebSocket proxy ready: open http://{addr}/ in a browser");
    println!("  or connect a client to ws://{addr}/echo (echo upstream at ws://{upstream})");
    let app = app(upstream)?;
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

/// The app: the page at `/`, and every WebSocket upgrade proxied to `upstream`.
pub fn app(upstream: SocketAddr) -> Result<Router, axum_ws_proxy::ParseUpstreamError> {
    Ok(Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .layer(WsProxyLayer::new(format!("ws://{upstream}").parse()?)))
}

/// The upstream: any WebSocket service; here an axum echo server on a free port.
pub async fn echo_upstream() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let echo = Router::new()
        .fallback(|ws: WebSocketUpgrade| async { ws.protocols(["echo.v1"]).on_upgrade(echo) });
    tokio::spawn(async move { axum::serve(listener, echo).await });
    Ok(addr)
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
