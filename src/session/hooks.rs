//! Session lifecycle and message hooks: what they get ([`SessionInfo`], [`SessionSummary`],
//! [`MessageContext`]) and what message hooks decide ([`Verdict`]).

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Extensions, HeaderMap};
use tokio_tungstenite::tungstenite;

use crate::identity::Identity;
use crate::session::close_code::CloseCode;
use crate::session::mode::Mode;
use crate::upstream::Upstream;

/// A session, as the hooks see it: given to [`on_open`](crate::WsProxyLayer::on_open), in
/// [`SessionSummary`] to [`on_close`](crate::WsProxyLayer::on_close), and to message hooks.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// use axum_ws_proxy::{WsProxyLayer, hooks::ClosedBy};
///
/// let open = Arc::new(AtomicU64::new(0));
/// let counter = open.clone();
/// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?)
///     .on_open(move |session| {
///         counter.fetch_add(1, Ordering::Relaxed);
///         println!("session {} from {:?} to {}", session.id, session.client, session.upstream);
///     })
///     .on_close(|summary| {
///         if summary.closed_by == ClosedBy::Upstream && summary.client_close_code == 1011 {
///             eprintln!("upstream failure in session {}", summary.session.id);
///         }
///     });
/// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
/// ```
///
/// Hooks run on the session's task, so they should be quick (count, log, enqueue); anything
/// slow belongs in a task of its own.
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
    /// The client's upgrade request headers, as received (before any rewriting).
    pub request_headers: HeaderMap,
    /// The upgrade request's extensions (e.g. an identity an auth layer inserted).
    pub request_extensions: Extensions,
    /// Whom the session belongs to, when the identity phase said
    /// ([`WsProxyLayer::identify`](crate::WsProxyLayer::identify), or the JWT check).
    pub identity: Option<Arc<Identity>>,
}

/// Who ended a session.
///
/// ```
/// use axum_ws_proxy::{WsProxyLayer, hooks::ClosedBy};
///
/// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?).on_close(|summary| {
///     if summary.closed_by == ClosedBy::Upstream && summary.upstream_close_code == 1011 {
///         eprintln!("upstream error in session {}", summary.session.id);
///     }
/// });
/// # let _ = layer;
/// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
/// ```
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
    /// `client`, `upstream` or `proxy`: the session span's `closed_by` and the `outcome` label
    /// of `ws_proxy_sessions_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Upstream => "upstream",
            Self::Proxy => "proxy",
        }
    }

    pub(crate) fn from_side(side: crate::session::leg::Side) -> Self {
        match side {
            crate::session::leg::Side::Client => Self::Client,
            crate::session::leg::Side::Upstream => Self::Upstream,
        }
    }
}

/// How a session went, for `on_close`.
///
/// ```
/// use axum_ws_proxy::WsProxyLayer;
///
/// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?).on_close(|s| {
///     println!(
///         "session {} lasted {:?}: {} messages in, {} out; {} closed ({} / {})",
///         s.session.id,
///         s.duration,
///         s.messages_to_upstream,
///         s.messages_to_client,
///         s.closed_by.as_str(),
///         s.client_close_code,
///         s.upstream_close_code,
///     );
/// });
/// # let _ = layer;
/// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
/// ```
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
    /// Data messages read from one leg that never reached the other, in either mode: they
    /// arrived after a close had begun, were still waiting for a leg that went away, or were
    /// cut mid-message. They are not in the `messages_to_*` counts.
    pub undeliverable: u64,
}

/// A data message crossing the proxy, as message hooks see it (frame mode only).
///
/// ```
/// use axum_ws_proxy::hooks::Message;
///
/// let m = Message::text("hello");
/// assert_eq!((m.as_text(), m.len(), m.is_text()), (Some("hello"), 5, true));
/// let b = Message::binary(vec![1, 2, 3]);
/// assert_eq!((b.as_text(), b.as_bytes()), (None, &[1u8, 2, 3][..]));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message(pub(crate) tungstenite::Message);

impl Message {
    /// A text message.
    pub fn text(text: impl Into<String>) -> Self {
        Self(tungstenite::Message::text(text.into()))
    }

    /// A binary message.
    pub fn binary(data: impl Into<Bytes>) -> Self {
        Self(tungstenite::Message::binary(data.into()))
    }

    /// The text, if this is a text message.
    pub fn as_text(&self) -> Option<&str> {
        match &self.0 {
            tungstenite::Message::Text(t) => Some(t.as_str()),
            _ => None,
        }
    }

    /// The payload bytes (text as UTF-8).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            tungstenite::Message::Text(t) => t.as_bytes(),
            tungstenite::Message::Binary(b) => b,
            _ => &[],
        }
    }

    /// Whether this is a text message.
    pub fn is_text(&self) -> bool {
        self.0.is_text()
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a message hook decides for a message.
///
/// ```
/// use axum_ws_proxy::{WsProxyLayer, hooks::{CloseCode, Message, Verdict}};
///
/// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?).on_upstream_message(|_, msg| {
///     match msg.as_text() {
///         // Internal notes never reach the browser.
///         Some(t) if t.starts_with("#internal") => Verdict::Drop,
///         Some(t) if t.contains("password") => Verdict::Replace(Message::text("[redacted]")),
///         _ if msg.len() > 1 << 20 => Verdict::close(CloseCode::MESSAGE_TOO_BIG, "too big"),
///         _ => Verdict::Forward,
///     }
/// });
/// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Forward the message unchanged.
    Forward,
    /// Forward this message instead.
    Replace(Message),
    /// Drop the message (it is counted neither as delivered nor as lost).
    Drop,
    /// End the session: both legs get a close frame with this code and reason (e.g.
    /// [`CloseCode::POLICY_VIOLATION`](crate::hooks::CloseCode::POLICY_VIOLATION)); the message is
    /// not forwarded. The reason is cut to 123 bytes, on a character boundary. A bare number
    /// does not compile here, so a code that may not be sent never reaches the wire:
    ///
    /// ```compile_fail,E0308
    /// use axum_ws_proxy::hooks::Verdict;
    ///
    /// let _ = Verdict::Close(1006, "dropped".into()); // 1006 is a report, not a code to send
    /// ```
    Close(CloseCode, String),
}

impl Verdict {
    /// [`Verdict::Close`] with any string type as the reason.
    ///
    /// ```
    /// use axum_ws_proxy::hooks::{CloseCode, Verdict};
    ///
    /// let v = Verdict::close(CloseCode::POLICY_VIOLATION, "rate limit");
    /// assert_eq!(v, Verdict::Close(CloseCode::POLICY_VIOLATION, "rate limit".to_owned()));
    /// ```
    pub fn close(code: CloseCode, reason: impl Into<String>) -> Self {
        Self::Close(code, reason.into())
    }
}

/// Which way a message is going.
///
/// ```
/// use axum_ws_proxy::{WsProxyLayer, hooks::{Direction, Verdict}};
///
/// // One function for both directions: it reads which way the message goes.
/// fn log(ctx: &mut axum_ws_proxy::hooks::MessageContext<'_>, msg: &axum_ws_proxy::hooks::Message) -> Verdict {
///     let way = match ctx.direction {
///         Direction::ToUpstream => "->",
///         Direction::ToClient => "<-",
///         _ => "?",
///     };
///     println!("{} {way} {} bytes", ctx.session.id, msg.len());
///     Verdict::Forward
/// }
/// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?)
///     .on_client_message(log)
///     .on_upstream_message(log);
/// # let _ = layer;
/// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Direction {
    /// From the client to the upstream.
    ToUpstream,
    /// From the upstream to the client.
    ToClient,
}

/// What a synchronous message hook gets besides the message: the session, the direction, and
/// state kept for this session (any `Clone + Send + Sync` type, one value per type).
///
/// ```
/// use axum_ws_proxy::{WsProxyLayer, hooks::{CloseCode, Verdict}};
///
/// // At most 1000 messages per session from the client, counted in the session's own state.
/// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?).on_client_message(|ctx, _msg| {
///     let count = ctx.state.get_or_insert_default::<u64>();
///     *count += 1;
///     if *count > 1000 {
///         Verdict::close(CloseCode::POLICY_VIOLATION, "message quota spent")
///     } else {
///         Verdict::Forward
///     }
/// });
/// # let _ = layer;
/// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
/// ```
#[derive(Debug)]
pub struct MessageContext<'a> {
    /// The session.
    pub session: &'a SessionInfo,
    /// Which way the message is going.
    pub direction: Direction,
    /// Per-session state: `ctx.state.get_mut::<u64>()`, `ctx.state.insert(..)`.
    pub state: &'a mut Extensions,
}

/// The future an asynchronous message hook returns.
///
/// ```
/// use std::sync::Arc;
/// use axum_ws_proxy::{WsProxyLayer, hooks::{Message, SessionInfo, Verdict, VerdictFuture}};
///
/// // A named function for an asynchronous hook can return the boxed future.
/// fn check(_session: Arc<SessionInfo>, msg: Message) -> VerdictFuture {
///     Box::pin(async move {
///         // e.g. ask a moderation service here
///         if msg.as_text().is_some_and(|t| t.contains("spam")) {
///             Verdict::Drop
///         } else {
///             Verdict::Forward
///         }
///     })
/// }
/// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?).on_client_message_async(check);
/// # let _ = layer;
/// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
/// ```
pub type VerdictFuture = Pin<Box<dyn Future<Output = Verdict> + Send>>;

type OpenFn = dyn Fn(&SessionInfo) + Send + Sync;
type CloseFn = dyn Fn(&SessionSummary) + Send + Sync;
pub(crate) type SyncMessageFn = dyn Fn(&mut MessageContext<'_>, &Message) -> Verdict + Send + Sync;
pub(crate) type AsyncMessageFn = dyn Fn(Arc<SessionInfo>, Message) -> VerdictFuture + Send + Sync;

/// A message hook for one direction.
#[derive(Clone)]
pub(crate) enum MessageHook {
    Sync(Arc<SyncMessageFn>),
    Async(Arc<AsyncMessageFn>),
}

/// The hooks of a layer; cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    pub(crate) on_open: Option<Arc<OpenFn>>,
    pub(crate) on_close: Option<Arc<CloseFn>>,
    pub(crate) on_client_message: Option<MessageHook>,
    pub(crate) on_upstream_message: Option<MessageHook>,
}

impl Hooks {
    pub(crate) fn any(&self) -> bool {
        self.on_open.is_some()
            || self.on_close.is_some()
            || self.on_client_message.is_some()
            || self.on_upstream_message.is_some()
    }
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("on_open", &self.on_open.is_some())
            .field("on_close", &self.on_close.is_some())
            .field("on_client_message", &self.on_client_message.is_some())
            .field("on_upstream_message", &self.on_upstream_message.is_some())
            .finish()
    }
}
