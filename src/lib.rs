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
//! [`serve`] (feature `serve`) is a drop-in for `axum::serve` that lets tunnels splice and
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
//! [`ShutdownHandle`] drains sessions with close 1001; `wss://` upstreams are verified
//! ([`UpstreamTls`], feature `tls`); HTTP/2 clients (RFC 8441) are proxied (feature `http2`);
//! and [`metrics`] are recorded through the `metrics` facade (feature `metrics`).
//!
//! # What is proxied
//!
//! An HTTP/1.1 `GET` with `Upgrade: websocket` and a `Connection` header holding the token
//! `upgrade` (case-insensitive; `keep-alive, Upgrade` counts). Anything else, including an
//! upgrade with another method or HTTP version, goes to the inner service.
//!
//! # The upstream request
//!
//! - Target: the upstream's path prefix, then the client's path and query byte for byte
//!   (dot-segments removed; encoded slashes as [`WsProxyLayer::escaped_slashes`] says, and
//!   never hiding a dot-segment).
//!   Under [`Router::nest`] the layer sees (and forwards) the path with the nest prefix removed.
//! - Removed: `Connection`, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`,
//!   `Transfer-Encoding`, `Upgrade`, `Proxy-Authorization`, `Proxy-Authenticate`, every header
//!   named in `Connection`, and in frame mode any `Sec-WebSocket-Extensions` offer but a valid
//!   permessage-deflate one (none with [`Deflate::Off`]); tunnel mode forwards them all.
//! - Set: `Upgrade: websocket`, `Connection: Upgrade`, `Sec-WebSocket-Key` (the client's, as
//!   nginx forwards it; a made one for an HTTP/2 client), `Sec-WebSocket-Version: 13`; `Host` is the client's (see [`WsProxyLayer::preserve_host`]);
//!   `X-Forwarded-For` is the client address (only when the app is served with
//!   `into_make_service_with_connect_info::<SocketAddr>()` or [`serve`]),
//!   `X-Forwarded-Proto: http`, and `X-Forwarded-Host` is the client's `Host`; client-sent
//!   `X-Forwarded-*`, `X-Real-IP` and `Forwarded` are dropped, except from
//!   [trusted proxies](WsProxyLayer::trusted_proxies), whose chain is kept and appended to.
//! - Forwarded unchanged: every other header, e.g. `Origin`, `Cookie`, `Authorization`,
//!   `Sec-WebSocket-Protocol` and custom ones.
//!
//! # The answer
//!
//! The upstream's handshake completes before the client gets anything. On a valid `101` the
//! client gets its own `101` carrying the upstream's chosen subprotocol and end-to-end headers
//! (e.g. `Set-Cookie`). Any other answer is relayed: status, end-to-end headers and body (up to
//! [`max_response_body_size`](WsProxyLayer::max_response_body_size)). Failures are
//! [`ProxyError`]s: 400/426 for a bad client handshake, 502 when the upstream cannot be
//! reached or sends an invalid `101`, 504 after [`connect_timeout`](WsProxyLayer::connect_timeout).
//!
//! # The session
//!
//! Messages cross unchanged; pings are answered per hop; close frames are forwarded with code
//! and reason and both close handshakes completed. When a side fails, the other gets a close
//! code saying so (one table for both modes, in `src/session/close_policy.rs` and in the
//! README). Each session logs a `ws_session` span with the client, upstream, path,
//! subprotocol, duration, messages and bytes each way, and who closed with which code.
//!
//! # Hooks
//!
//! Closures on the layer, for what a proxy in front of the service cannot do:
//!
//! - **Routing**, before anything is dialled: [`WsProxyLayer::route`] gets a
//!   [`RouteRequest`] (the client's URI, headers, address and request extensions) and may pick
//!   the pool, rewrite the path and the headers sent upstream, or refuse with a [`Refusal`].
//! - **Messages**, in frame mode: [`WsProxyLayer::on_client_message`] and
//!   [`WsProxyLayer::on_upstream_message`] get each data [`Message`] with a [`MessageContext`]
//!   and return a [`Verdict`]: forward, replace, drop, or close both legs with a
//!   [`CloseCode`]. The `_async` variants wait for their verdict before the next message from
//!   that side is read, so order holds and a slow hook is backpressure. One hook per
//!   direction; a second panics. A direction with a hook has its messages assembled whole
//!   (bounded by [`WsProxyLayer::max_message_size`]); without one, frames stream past.
//! - **Lifecycle**: [`WsProxyLayer::on_open`] gets the [`SessionInfo`],
//!   [`WsProxyLayer::on_close`] a [`SessionSummary`] (duration, traffic, [`ClosedBy`], both
//!   close codes).
//!
//! Hooks run on the session's task: keep them quick, and send anything slow to a task of its
//! own.
//!
//! ```
//! use axum_ws_proxy::http::{HeaderValue, StatusCode};
//! use axum_ws_proxy::{CloseCode, Refusal, Verdict, WsProxyLayer};
//!
//! #[derive(Clone)]
//! struct UserId(&'static str); // put in the request's extensions by an auth layer
//!
//! let layer = WsProxyLayer::new("ws://10.0.0.1:3000".parse()?)
//!     .route(|req| {
//!         let Some(user) = req.extensions().get::<UserId>().map(|u| u.0) else {
//!             return Err(Refusal::new(StatusCode::UNAUTHORIZED, "log in first"));
//!         };
//!         req.upstream_headers()
//!             .insert("x-user-id", HeaderValue::from_static(user));
//!         Ok(())
//!     })
//!     .on_client_message(|_ctx, msg| match msg.len() {
//!         0..=4096 => Verdict::Forward,
//!         _ => Verdict::close(CloseCode::POLICY_VIOLATION, "messages up to 4 KiB"),
//!     })
//!     .on_close(|s| println!("session {} closed by {}", s.session.id, s.closed_by.as_str()));
//! # let _ = layer;
//! # Ok::<(), axum_ws_proxy::ParseUpstreamError>(())
//! ```
//!
//! [`Router`]: axum::Router
//! [`Router::nest`]: axum::Router::nest
#![deny(unsafe_code, unreachable_pub)]
#![warn(missing_docs, missing_debug_implementations)]

// The path of a connection: `serve` accepts it (step 0), `layer`/`service` detect the
// upgrade, `handshake` validates it, dials the upstream (from `upstream`) and hands back the
// answer (steps 1-4), `session` bridges or tunnels and closes (steps 5-6).
mod config;
mod error;
mod future;
mod handshake;
mod layer;
pub mod metrics;
mod registry;
mod reload;
#[cfg(feature = "serve")]
mod serve;
mod service;
mod session;
mod transport;
mod upstream;

// The README's Rust examples are compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

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
/// use axum_ws_proxy::Refusal;
///
/// let refusal = Refusal::new(StatusCode::FORBIDDEN, "no ticket");
/// let _ = HeaderValue::from_static("user-1");
/// # let _ = refusal;
/// ```
pub use http;

pub use error::ProxyError;
pub use future::ResponseFuture;
pub use handshake::request::{EscapedSlashes, ParseEscapedSlashesError};
pub use handshake::route::{Refusal, RouteRequest};
/// An IP network (`10.0.0.0/8`, `2001:db8::/32`), for [`WsProxyLayer::trusted_proxies`].
pub use ipnet::IpNet;
pub use layer::WsProxyLayer;
pub use registry::ShutdownHandle;
pub use reload::{ReloadHandle, ReloadableLayer};
#[cfg(all(feature = "serve", feature = "tls"))]
pub use serve::ServerTls;
#[cfg(feature = "serve")]
pub use serve::{serve, AppMarker, IntoApp, MakeAppMarker, Serve};
pub use service::WsProxy;
pub use session::close_code::{CloseCode, InvalidCloseCode};
pub use session::deflate::{Compression, Deflate, ParseDeflateError};
pub use session::hooks::{
    ClosedBy, Direction, Message, MessageContext, SessionInfo, SessionSummary, Verdict,
    VerdictFuture,
};
pub use session::mode::Mode;
#[cfg(all(feature = "serve", feature = "tls"))]
pub use transport::TlsInfo;
#[cfg(feature = "tls")]
pub use upstream::tls::{TlsConfigError, UpstreamTls};
pub use upstream::{
    Balance, EndpointStatus, HashKey, Member, ParseBalanceError, ParseUpstreamError,
    ParseUpstreamErrorKind, Resolve, Resolving, Upstream, UpstreamPool, MAX_WEIGHT,
};
