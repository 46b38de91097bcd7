//! What every session of a layer is told, with the defaults and why: how it crosses the proxy
//! ([`Mode`]), frame mode's limits and buffers, keepalive and session timers, the close
//! timeout, and the hooks.

use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::session::hooks::Hooks;
use crate::session::keepalive::Timeouts;

/// How long each leg may take to answer a close frame before its socket is dropped.
const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A message is held whole while it crosses the proxy, so this bounds memory per direction.
/// A quarter of tungstenite's 64 MiB; browsers send a message as one frame, hence equal limits.
const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 << 20;
const DEFAULT_MAX_FRAME_SIZE: usize = 16 << 20;
/// tungstenite allocates its read buffer eagerly per connection (128 KiB by default, twice per
/// session here) and zero-fills it on every read; idle sessions are the common case for a
/// proxy. Bulk does not need it larger: `wire` reads bursts ahead in 64 KiB reads.
const DEFAULT_READ_BUFFER_SIZE: usize = 1 << 10;
/// Writes are batched up to this many bytes before they go to the socket.
const DEFAULT_WRITE_BUFFER_SIZE: usize = 8 << 10;
/// Keepalive: ping a leg quiet for this long (nginx would have closed it at 60 s).
const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);
/// A leg that has not answered a ping within this is dead.
const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(30);

/// How sessions cross the proxy.
///
/// ```
/// use axum_ws_proxy::{Mode, WsProxyLayer};
///
/// assert_eq!(Mode::default(), Mode::Frames);
/// // Bytes spliced after a validated 101; permessage-deflate works end to end.
/// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?).mode(Mode::Tunnel);
/// # let _ = layer;
/// # Ok::<(), axum_ws_proxy::ParseUpstreamError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// Message by message (the default): every message is parsed and re-framed, so close codes
    /// are mapped per leg, protocol errors get their RFC code, limits apply per message, and
    /// message hooks can apply. permessage-deflate is not offered upstream.
    #[default]
    Frames,
    /// Bytes spliced after a validated 101, as nginx does: cheaper, and extensions
    /// (permessage-deflate) work end to end. The proxy still reads frame headers, so pings,
    /// shutdown (1001) and session timers work; payloads are neither checked nor limited.
    Tunnel,
}

impl Mode {
    /// The mode as logs and metric labels name it.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Mode::Frames => "frames",
            Mode::Tunnel => "tunnel",
        }
    }
}

/// The session stage's settings; one value per layer, shared by its sessions.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) mode: Mode,
    pub(crate) close_timeout: Duration,
    pub(crate) max_message_size: usize,
    pub(crate) max_frame_size: usize,
    pub(crate) read_buffer_size: usize,
    pub(crate) write_buffer_size: usize,
    pub(crate) timeouts: Timeouts,
    pub(crate) hooks: Hooks,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            mode: Mode::Frames,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            read_buffer_size: DEFAULT_READ_BUFFER_SIZE,
            write_buffer_size: DEFAULT_WRITE_BUFFER_SIZE,
            timeouts: Timeouts {
                ping_interval: Some(DEFAULT_PING_INTERVAL),
                ping_timeout: DEFAULT_PING_TIMEOUT,
                idle_timeout: None,
                max_lifetime: None,
            },
            hooks: Hooks::default(),
        }
    }
}

impl Settings {
    /// The same limits apply on both legs.
    ///
    /// The write buffer needs no cap of its own: the bridge only hands a leg a new message once
    /// the previous ones have been written out (`poll_ready`), so it never holds more than
    /// `write_buffer_size` plus one message.
    pub(crate) fn websocket(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_size)
            .write_buffer_size(self.write_buffer_size)
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_frame_size))
    }
}
