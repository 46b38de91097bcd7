//! WebSocket reverse proxying as a Tower layer for axum.
//!
//! [`WsProxyLayer`] intercepts WebSocket upgrade requests inside an axum [`Router`], forwards
//! them to an upstream with corrected hop-by-hop headers, and bridges messages between the
//! client and the upstream. Every other request goes to the inner service untouched.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use axum_ws_proxy::WsProxyLayer;
//! use std::net::SocketAddr;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app = Router::new()
//!     .route("/api/health", get(|| async { "ok" }))
//!     .layer(WsProxyLayer::new("ws://127.0.0.1:3000".parse()?));
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! // Connect info gives the proxy the client address for `X-Forwarded-For`.
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(()) }
//! ```
//!
//! [`serve()`] (feature `serve`) is a drop-in for `axum::serve` that lets tunnels splice and
//! bounds request heads in size and time.
//!
//! # Where sessions go
//!
//! [`WsProxyLayer::new`] takes an [`UpstreamPool`]: `"ws://host:port".parse()?` is a pool of
//! one; [`UpstreamPool::from_urls`] makes one of several members with weights. The pool balances
//! sessions ([`Balance`]: least-conn by default, smooth weighted round-robin, or consistent
//! hashing on a client IP, header, cookie or query parameter), fails over to the next member
//! before the `101`, takes failing members out of rotation, re-resolves host names, and changes
//! members at run time ([`UpstreamPool::insert`], [`UpstreamPool::remove`],
//! [`UpstreamPool::watch`] for a `tower::discover::Discover` stream).
//!
//! # Production
//!
//! Sessions are kept alive with pings and dead peers reaped ([`WsProxyLayer::ping_interval`]);
//! optional idle and lifetime limits; [`WsProxyLayer::max_sessions`] and per-member limits
//! answer 503; [`WsProxyLayer::allowed_origins`] answers 403 to foreign origins; a
//! [`ShutdownHandle`] drains sessions with close 1012 at an even rate over a window, and pools
//! can move sessions to members added later ([`upstream::Rebalance`]); `wss://` upstreams are verified
//! ([`UpstreamTls`], feature `tls`); HTTP/2 clients (RFC 8441) are proxied (feature `http2`);
//! and [`metrics`] are recorded through the `metrics` facade (feature `metrics`).
//!
//! The reference below is also in the repository as `src/docs/*.md`; the operator's guide to
//! the `ws-proxy` binary is in `docs/`.
//!
//! [`Router`]: axum::Router
//! [`UpstreamPool`]: upstream::UpstreamPool
//! [`UpstreamPool::from_urls`]: upstream::UpstreamPool::from_urls
//! [`UpstreamPool::insert`]: upstream::UpstreamPool::insert
//! [`UpstreamPool::remove`]: upstream::UpstreamPool::remove
//! [`UpstreamPool::watch`]: upstream::UpstreamPool::watch
//! [`Balance`]: upstream::Balance
//! [`UpstreamTls`]: tls::UpstreamTls
//! [`Router::nest`]: axum::Router::nest
#![doc = include_str!("docs/settings.md")]
#![doc = include_str!("docs/proxied.md")]
#![doc = include_str!("docs/failures.md")]
#![doc = include_str!("docs/sessions.md")]
#![doc = include_str!("docs/identity.md")]
#![doc = include_str!("docs/hooks.md")]
#![deny(unsafe_code, unreachable_pub)]
#![warn(missing_docs, missing_debug_implementations)]

// The path of a connection: `serve` accepts it (step 0), `layer`/`service` detect the
// upgrade, `handshake` validates it, dials the upstream (from `upstream`) and hands back the
// answer (steps 1-4), `session` bridges or tunnels and closes (steps 5-6).
mod config;
mod control;
mod error;
mod future;
mod handshake;
pub mod hooks;
mod identity;
#[cfg(feature = "jwt")]
pub mod jwt;
mod layer;
pub mod metrics;
mod registry;
mod reload;
#[cfg(feature = "serve")]
pub mod serve;
mod service;
mod session;
#[cfg(feature = "tls")]
pub mod tls;
mod transport;
pub mod upstream;

// The Rust examples of the README and the guides in `docs/` are compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
#[cfg(doctest)]
#[doc = include_str!("../docs/upstreams.md")]
#[doc = include_str!("../docs/ws-proxy.md")]
#[doc = include_str!("../docs/tls.md")]
#[doc = include_str!("../docs/identity.md")]
struct GuideDoctests;

/// Entry points for the fuzz targets in `fuzz/`; not part of the API.
#[cfg(feature = "__fuzz")]
#[doc(hidden)]
#[path = "fuzz.rs"]
pub mod __fuzz;
// The same checks, run by `cargo test` on fixed inputs.
#[cfg(all(test, not(feature = "__fuzz")))]
#[path = "fuzz.rs"]
mod __fuzz;

/// The `http` crate this crate's API speaks (`HeaderValue`, `StatusCode`, `Request`, ...),
/// so that hooks and routing code need no dependency of their own:
///
/// ```
/// use axum_ws_proxy::http::{HeaderValue, StatusCode};
/// use axum_ws_proxy::hooks::Refusal;
///
/// let refusal = Refusal::new(StatusCode::FORBIDDEN, "no ticket");
/// let _ = HeaderValue::from_static("user-1");
/// # let _ = refusal;
/// ```
pub use http;

pub use control::{
    CloseReasonTooLong, RevocationPage, SessionControl, SessionFilter, SessionPage, SessionView,
    MAX_PAGE,
};
pub use error::{AuthFailure, ProxyError};
pub use future::ResponseFuture;
pub use handshake::identify::{Identify, IdentityFuture};
pub use handshake::request::{EscapedSlashes, ParseEscapedSlashesError};
pub use identity::Identity;
/// An IP network (`10.0.0.0/8`, `2001:db8::/32`), for [`WsProxyLayer::trusted_proxies`].
pub use ipnet::IpNet;
pub use layer::WsProxyLayer;
pub use registry::revoked::{RevocationsFull, Revoked};
pub use registry::{DrainProgress, ShutdownHandle};
pub use reload::{ReloadHandle, ReloadableLayer};
#[cfg(feature = "serve")]
pub use serve::serve;
pub use service::WsProxy;
pub use session::deflate::{Compression, Deflate, ParseDeflateError};
pub use session::mode::Mode;
