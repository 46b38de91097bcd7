//! A per-session message rate limit: each session may send 5 messages per second (with a
//! burst of 10); beyond that it is closed with 1008 Policy Violation.
//!
//! ```text
//! cargo run --example rate_limit
//! ```

#[path = "quickstart.rs"]
mod quickstart;

use std::net::SocketAddr;
use std::time::Instant;

use axum::Router;
use axum_ws_proxy::{
    hooks::{CloseCode, Verdict},
    WsProxyLayer,
};

/// A token bucket kept per session in the hook's state.
#[derive(Clone, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

const RATE: f64 = 5.0;
const BURST: f64 = 10.0;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let upstream = quickstart::echo_upstream().await?;
    let proxy =
        WsProxyLayer::new(format!("ws://{upstream}").parse()?).on_client_message(|ctx, _msg| {
            let now = Instant::now();
            if ctx.state.get::<Bucket>().is_none() {
                ctx.state.insert(Bucket {
                    tokens: BURST,
                    last: now,
                });
            }
            let Some(bucket) = ctx.state.get_mut::<Bucket>() else {
                return Verdict::Forward;
            };
            bucket.tokens =
                (bucket.tokens + now.duration_since(bucket.last).as_secs_f64() * RATE).min(BURST);
            bucket.last = now;
            if bucket.tokens < 1.0 {
                tracing::warn!(session = ctx.session.id, "rate limit exceeded");
                return Verdict::close(
                    CloseCode::POLICY_VIOLATION,
                    format!("rate limit: {RATE} messages per second"),
                );
            }
            bucket.tokens -= 1.0;
            Verdict::Forward
        });
    let app = Router::new()
        .fallback(|| async { "send a WebSocket upgrade\n" })
        .layer(proxy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("rate-limited proxy on ws://{}/", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
