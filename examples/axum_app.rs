//! `WsProxyLayer` beside ordinary routes and other tower layers in an existing axum app.
//!
//! ```text
//! cargo run --example axum_app -- ws://127.0.0.1:9000
//! ```
//!
//! `GET /api/health` and `GET /api/time` are served by the app itself; a WebSocket upgrade to
//! any path is proxied to the upstream given on the command line (default
//! `ws://127.0.0.1:9000`). Only `/ws/*` is proxied here, using `route_layer`, so upgrades
//! elsewhere reach the app's own handlers.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::routing::{any, get};
use axum::Router;
use axum_ws_proxy::WsProxyLayer;
use tower_http::trace::TraceLayer;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let upstream = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:9000".to_owned());
    let proxy = WsProxyLayer::new(upstream.parse()?)
        .connect_timeout(Duration::from_secs(3))
        .max_message_size(1 << 20);

    let api = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/time", get(|| async { unix_time() }));
    // Upgrades under /ws/ go to the upstream; a plain GET there gets this handler's answer.
    let ws = Router::new()
        .route(
            "/{*rest}",
            any(|| async { "send a WebSocket upgrade here\n" }),
        )
        .route_layer(proxy);

    let app = Router::new()
        .nest("/api", api)
        .nest("/ws", ws)
        .layer(TraceLayer::new_for_http());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    println!(
        "app on http://{}, /ws/* proxied to {upstream}",
        listener.local_addr()?
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

fn unix_time() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{secs}\n")
}
