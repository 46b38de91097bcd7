//! Hooks: closures on the layer for what a proxy in front of the service cannot do. Route each
//! upgrade before anything is dialled, look at every message in frame mode, and see sessions
//! open and close.
//!
//! ```
//! use axum_ws_proxy::hooks::{CloseCode, Refusal, Verdict};
//! use axum_ws_proxy::http::StatusCode;
//! use axum_ws_proxy::WsProxyLayer;
//!
//! let layer = WsProxyLayer::new("ws://10.0.0.1:3000".parse()?)
//!     // Before any dial: refuse, pick the pool, rewrite the path or the upstream headers.
//!     .route(|req| match req.uri().path() {
//!         "/admin" => Err(Refusal::new(StatusCode::FORBIDDEN, "not through the proxy")),
//!         _ => Ok(()),
//!     })
//!     // Every data message from the client: forward, replace, drop, or close both legs.
//!     .on_client_message(|_ctx, msg| match msg.len() {
//!         0..=4096 => Verdict::Forward,
//!         _ => Verdict::close(CloseCode::POLICY_VIOLATION, "messages up to 4 KiB"),
//!     })
//!     .on_close(|s| println!("session {} closed by {}", s.session.id, s.closed_by.as_str()));
//! # let _ = layer;
//! # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
//! ```
//!
//! What each hook sees and when it runs: the crate docs' [Hooks](crate#hooks) section.

pub use crate::handshake::route::{Refusal, RouteRequest};
pub use crate::session::close_code::{CloseCode, InvalidCloseCode};
pub use crate::session::hooks::{
    ClosedBy, Direction, Message, MessageContext, SessionInfo, SessionSummary, Verdict,
    VerdictFuture,
};
