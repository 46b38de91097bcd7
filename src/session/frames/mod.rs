//! Frame mode: each leg a WebSocket of its own. Without message hooks frames are [`stream`]ed
//! piece by piece; with them whole messages are [`bridge`]d; both read and write through
//! [`wire`]; [`close`] completes the close handshakes on both legs.

pub(crate) mod bridge;
pub(crate) mod close;
pub(crate) mod stream;
pub(crate) mod wire;
