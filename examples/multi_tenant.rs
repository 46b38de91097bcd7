//! Multi-tenant routing: the `X-Tenant` header picks the tenant's pool of upstreams (each with
//! its own balancing); an unknown tenant gets 403 and nothing is dialled.
//!
//! ```text
//! cargo run --example multi_tenant
//! websocat -H 'X-Tenant: acme' ws://127.0.0.1:PORT/
//! ```

#[path = "quickstart.rs"]
mod quickstart;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::Router;
use axum_ws_proxy::{hooks::Refusal, upstream::UpstreamPool, WsProxyLayer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    // Two tenants, two backends each (embedded echo servers stand in for them).
    let mut pools = HashMap::new();
    for tenant in ["acme", "globex"] {
        let a = quickstart::echo_upstream().await?;
        let b = quickstart::echo_upstream().await?;
        let pool = UpstreamPool::from_urls([format!("ws://{a}"), format!("ws://{b}")])?
            .balance("hash:cookie:sid".parse()?);
        pools.insert(tenant, pool);
    }
    let pools = Arc::new(pools);
    let default = pools["acme"].clone();

    let proxy = WsProxyLayer::new(default).route(move |req| {
        let tenant = req.headers().get("x-tenant").and_then(|v| v.to_str().ok());
        match tenant.and_then(|t| pools.get(t)) {
            Some(pool) => {
                req.set_pool(pool.clone());
                Ok(())
            }
            None => Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "unknown or missing X-Tenant",
            )),
        }
    });
    let app = Router::new()
        .fallback(|| async { "send a WebSocket upgrade with X-Tenant\n" })
        .layer(proxy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!(
        "multi-tenant gateway on ws://{}/ (tenants: acme, globex)",
        listener.local_addr()?
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
