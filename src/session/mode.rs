//! How sessions cross the proxy: the one choice every stage after the handshake reads.

/// How sessions cross the proxy.
///
/// ```
/// use axum_ws_proxy::{Mode, WsProxyLayer};
///
/// assert_eq!(Mode::default(), Mode::Frames);
/// // Bytes spliced after a validated 101; permessage-deflate works end to end.
/// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?).mode(Mode::Tunnel);
/// # let _ = layer;
/// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// Message by message (the default): every message is parsed and re-framed, so close codes
    /// are mapped per leg, protocol errors get their RFC code, limits apply per message, and
    /// message hooks can apply. permessage-deflate is negotiated per leg (see [`Deflate`]);
    /// other extensions are not offered upstream.
    ///
    /// [`Deflate`]: crate::Deflate
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
