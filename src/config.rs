//! A layer's configuration: each stage's own settings, combined. Nothing below the public face
//! imports this; each stage is handed its part.

use std::sync::Arc;

use crate::handshake;
use crate::registry::Sessions;
use crate::session;
use crate::upstream::UpstreamPool;

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) handshake: handshake::Settings,
    /// Shared by every session started under this configuration: one clone per session is a
    /// reference count.
    pub(crate) session: Arc<session::Settings>,
    /// Shared by every clone of the layer (and kept across reloads), so one shutdown handle
    /// drains them all.
    pub(crate) sessions: Arc<Sessions>,
}

impl Config {
    pub(crate) fn new(pool: UpstreamPool) -> Self {
        Self {
            handshake: handshake::Settings::new(pool),
            session: Arc::default(),
            sessions: Arc::default(),
        }
    }
}
