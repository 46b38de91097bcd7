//! Session lifecycle hooks: `on_open` and `on_close`, with what the session span records.
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::Arc;
//! use axum_ws_proxy::{ClosedBy, WsProxyLayer};
//!
//! let open = Arc::new(AtomicU64::new(0));
//! let counter = open.clone();
//! let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?)
//!     .on_open(move |session| {
//!         counter.fetch_add(1, Ordering::Relaxed);
//!         println!("session {} from {:?} to {}", session.id, session.client, session.upstream);
//!     })
//!     .on_close(|summary| {
//!         if summary.closed_by == ClosedBy::Upstream && summary.client_close_code == 1011 {
//!             eprintln!("upstream failure in session {}", summary.session.id);
//!         }
//!     });
//! # Ok::<(), axum_ws_proxy::ParseUpstreamError>(())
//! ```
//!
//! Hooks run on the session's task, so they should be quick (count, log, enqueue); anything
//! slow belongs in a task of its own.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::{Mode, Upstream};

/// A session, as the hooks see it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SessionInfo {
    /// Unique per layer, counting from 1.
    pub id: u64,
    /// The client's address (needs `into_make_service_with_connect_info`).
    pub client: Option<SocketAddr>,
    /// The path and query the client asked for.
    pub path: String,
    /// The pool member the session went to.
    pub upstream: Upstream,
    /// The address dialled for it.
    pub upstream_addr: SocketAddr,
    /// The subprotocol the upstream chose.
    pub subprotocol: Option<String>,
    /// Frames or tunnel.
    pub mode: Mode,
}

/// Who ended a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClosedBy {
    /// The client sent a close frame or its connection dropped.
    Client,
    /// The upstream sent a close frame or its connection dropped.
    Upstream,
    /// The proxy: a protocol error, a keepalive or session timer, or shutdown.
    Proxy,
}

impl ClosedBy {
    pub(crate) fn from_label(label: &str) -> Self {
        match label {
            "client" => Self::Client,
            "upstream" => Self::Upstream,
            _ => Self::Proxy,
        }
    }
}

/// How a session went, for `on_close`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SessionSummary {
    /// The session.
    pub session: SessionInfo,
    /// From the client's upgrade to the end of both close handshakes.
    pub duration: Duration,
    /// Data messages delivered to the upstream, and their payload bytes.
    pub messages_to_upstream: u64,
    /// Payload bytes delivered to the upstream.
    pub bytes_to_upstream: u64,
    /// Data messages delivered to the client.
    pub messages_to_client: u64,
    /// Payload bytes delivered to the client.
    pub bytes_to_client: u64,
    /// Who ended the session.
    pub closed_by: ClosedBy,
    /// The close code on the client's leg (1005: none given; 1006: no close frame).
    pub client_close_code: u16,
    /// The close code on the upstream's leg.
    pub upstream_close_code: u16,
    /// The close reason, or what went wrong.
    pub close_reason: String,
    /// Data messages that arrived on a closing leg and could not be delivered.
    pub undeliverable: u64,
}

type OpenFn = dyn Fn(&SessionInfo) + Send + Sync;
type CloseFn = dyn Fn(&SessionSummary) + Send + Sync;

/// The hooks of a layer; cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    pub(crate) on_open: Option<Arc<OpenFn>>,
    pub(crate) on_close: Option<Arc<CloseFn>>,
}

impl Hooks {
    pub(crate) fn any(&self) -> bool {
        self.on_open.is_some() || self.on_close.is_some()
    }
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("on_open", &self.on_open.is_some())
            .field("on_close", &self.on_close.is_some())
            .finish()
    }
}
