//! An auth layer in front of the proxy: unauthenticated upgrades get 401 before any upstream
//! is dialled; authenticated ones reach the upstream with `X-User-Id` (from the identity the
//! auth layer put in the request's extensions) and without the client's `Authorization`.
//!
//! ```text
//! cargo run --example auth_gateway
//! # then, e.g. with websocat:
//! websocat -H 'Authorization: Bearer alice-token' ws://127.0.0.1:PORT/chat   # accepted
//! websocat ws://127.0.0.1:PORT/chat                                           # 401
//! ```

#[path = "quickstart.rs"]
mod quickstart;

use std::net::SocketAddr;

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use axum_ws_proxy::WsProxyLayer;

/// Who the caller is, as established by the auth layer.
#[derive(Clone, Debug)]
struct Identity {
    user_id: &'static str,
}

/// A stand-in for a real token check (JWT validation, a session store, ...).
async fn authenticate(mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let user_id = match token {
        Some("alice-token") => "alice",
        Some("bob-token") => "bob",
        _ => {
            return (
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is required\n",
            )
                .into_response()
        }
    };
    req.extensions_mut().insert(Identity { user_id });
    next.run(req).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let upstream = quickstart::echo_upstream().await?;

    let proxy = WsProxyLayer::new(format!("ws://{upstream}").parse()?).route(|req| {
        // The upstream trusts the gateway's X-User-Id, never the client's token.
        let user = req.extensions().get::<Identity>().map(|i| i.user_id);
        let headers = req.upstream_headers();
        headers.remove("authorization");
        headers.remove("x-user-id"); // a client must not be able to set it itself
        if let Some(user) = user {
            headers.insert("x-user-id", HeaderValue::from_static(user));
        }
        Ok(())
    });
    // Layers run outside-in: authentication first, then the proxy.
    let app = Router::new()
        .fallback(|| async { "send a WebSocket upgrade with a bearer token\n" })
        .layer(proxy)
        .layer(middleware::from_fn(authenticate));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!(
        "auth gateway on ws://{}/ (tokens: alice-token, bob-token)",
        listener.local_addr()?
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
