//! The vocabulary every stage of a session shares: its two legs, what crossed each way, and
//! why bridging stopped. A leaf: the bridges, the tunnel, keepalive and the close phase all
//! import it, and it imports none of them.

use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::metrics::TrafficCounters;
use crate::registry::CloseRequest;

/// One of the two legs of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Upstream,
}

impl Side {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
        }
    }
}

/// Data messages delivered to a leg and their payload bytes, for one direction.
#[derive(Debug)]
pub(crate) struct Traffic {
    pub(crate) messages: u64,
    pub(crate) bytes: u64,
    /// Of which compressed on the client's wire (permessage-deflate), as sent there.
    pub(crate) compressed_bytes: u64,
    counters: TrafficCounters,
}

impl Traffic {
    /// The traffic toward leg `to` (the metrics' `direction`: `to_upstream`, `to_client`).
    pub(crate) fn new(to: Side) -> Self {
        Self {
            messages: 0,
            bytes: 0,
            compressed_bytes: 0,
            counters: match to {
                Side::Upstream => TrafficCounters::to_upstream(),
                Side::Client => TrafficCounters::to_client(),
            },
        }
    }

    /// Compressed payload bytes of this direction that crossed the client's wire.
    pub(crate) fn compressed(&mut self, bytes: u64) {
        self.compressed_bytes += bytes;
        self.counters.compressed(bytes);
    }

    /// Traffic that is not the session's to count: what a reader walks only to hand it on.
    pub(crate) fn uncounted() -> Self {
        Self {
            messages: 0,
            bytes: 0,
            compressed_bytes: 0,
            counters: TrafficCounters::none(),
        }
    }

    pub(crate) fn add(&mut self, bytes: u64) {
        self.messages += 1;
        self.bytes += bytes;
        self.counters.add(bytes);
    }
}

/// Why bridging stopped.
#[derive(Debug)]
pub(crate) enum Ended {
    /// `by` sent a close frame (`frame`, as checked: a forbidden code is 1002), to be echoed
    /// on that leg (with message hooks, tungstenite has already queued the echo).
    Closed { by: Side, frame: Option<CloseFrame> },
    /// Reading `side` failed: it broke the protocol, or its connection dropped.
    ReadFailed { side: Side, error: WsError },
    /// Writing to `side` failed: its connection is gone.
    WriteFailed { side: Side, error: WsError },
    /// A keepalive or session timer ran out.
    Expired(Expired),
    /// The proxy asked the session to close (a drain, rebalancing).
    Requested(CloseRequest),
    /// A message hook closed the session.
    HookClosed(u16, String),
}

/// A timer that ended the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expired {
    /// This leg did not answer a ping within `ping_timeout`.
    Unresponsive(Side, Duration),
    /// No data message either way for `idle_timeout`.
    Idle,
    /// The session reached `max_lifetime`.
    Lifetime,
}

/// How bridging stopped, and any message read from one side that the other has not taken yet.
#[derive(Debug)]
pub(crate) struct Stopped {
    pub(crate) ended: Ended,
    pub(crate) held_for_client: Option<Message>,
    pub(crate) held_for_upstream: Option<Message>,
}
