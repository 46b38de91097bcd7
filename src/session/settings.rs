//! What every session of a layer is told, with the defaults and why: how it crosses the proxy
//! ([`Mode`](crate::session::mode::Mode)), frame mode's limits and buffers, keepalive and session timers, the close
//! timeout, and the hooks.

use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::session::deflate;
use crate::session::hooks::Hooks;
use crate::session::keepalive::Timeouts;
pub(crate) use crate::session::mode::Mode;

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
/// Sessions end up to 10 % before `max_lifetime`, so that a burst of them does not end as one.
const DEFAULT_MAX_LIFETIME_JITTER: f64 = 0.1;

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
    pub(crate) deflate: deflate::Config,
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
                max_lifetime_jitter: DEFAULT_MAX_LIFETIME_JITTER,
            },
            hooks: Hooks::default(),
            deflate: deflate::Config::default(),
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
