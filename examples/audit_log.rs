//! An audit log: every message both ways is logged with its session id, and every session's
//! start and summary (duration, counts, who closed with which code).
//!
//! ```text
//! RUST_LOG=info cargo run --example audit_log
//! ```

#[path = "quickstart.rs"]
mod quickstart;

use std::net::SocketAddr;

use axum::Router;
use axum_ws_proxy::{hooks::Verdict, WsProxyLayer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let upstream = quickstart::echo_upstream().await?;
    let proxy = WsProxyLayer::new(format!("ws://{upstream}").parse()?)
        .on_open(
            |s| tracing::info!(session = s.id, client = ?s.client, path = %s.path, "audit: open"),
        )
        .on_client_message(|ctx, msg| {
            tracing::info!(
                session = ctx.session.id,
                bytes = msg.len(),
                text = msg.as_text(),
                "audit: client -> upstream"
            );
            Verdict::Forward
        })
        .on_upstream_message(|ctx, msg| {
            tracing::info!(
                session = ctx.session.id,
                bytes = msg.len(),
                text = msg.as_text(),
                "audit: upstream -> client"
            );
            Verdict::Forward
        })
        .on_close(|s| {
            tracing::info!(
                session = s.session.id,
                duration_ms = s.duration.as_millis() as u64,
                to_upstream = s.messages_to_upstream,
                to_client = s.messages_to_client,
                closed_by = ?s.closed_by,
                code = s.client_close_code,
                "audit: closed"
            )
        });
    let app = Router::new()
        .fallback(|| async { "send a WebSocket upgrade\n" })
        .layer(proxy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("audited proxy on ws://{}/", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
