//! permessage-deflate (RFC 7692) in frame mode: the setting, what each leg agreed, and the
//! codec.

#[cfg(feature = "deflate")]
pub(crate) mod zlib;

/// Whether frame mode compresses messages with permessage-deflate (RFC 7692), which every
/// browser offers. Tunnel mode is not affected: it passes the extension end to end.
///
/// ```
/// use axum_ws_proxy::{Deflate, WsProxyLayer};
///
/// assert_eq!(Deflate::default(), Deflate::Auto);
/// assert_eq!("always".parse::<Deflate>(), Ok(Deflate::Always));
/// // Compress toward browsers even in front of an upstream that cannot.
/// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?).deflate(Deflate::Always);
/// # let _ = layer;
/// # Ok::<(), axum_ws_proxy::ParseUpstreamError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Deflate {
    /// The client's offer goes upstream, and the client leg is compressed only when the
    /// upstream accepted: both legs then agree, compressed frames pass as they came (each
    /// message still inflated to check it), and an upstream without compression costs nothing.
    #[default]
    Auto,
    /// As `Auto`, and when the upstream does not compress, the proxy compresses toward the
    /// client itself (its own parameters; it inflates what the client sends).
    Always,
    /// No compression in frame mode: the offer is not forwarded.
    Off,
}

impl Deflate {
    /// The setting's name: `auto`, `always` or `off`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Always => "always",
            Self::Off => "off",
        }
    }
}

impl std::fmt::Display for Deflate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Deflate {
    type Err = ParseDeflateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "always" => Ok(Self::Always),
            "off" => Ok(Self::Off),
            _ => Err(ParseDeflateError(s.to_owned())),
        }
    }
}

/// A text that is not `auto`, `always` or `off`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseDeflateError(String);

impl std::fmt::Display for ParseDeflateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid deflate setting {:?} (expected auto, always or off)",
            self.0
        )
    }
}

impl std::error::Error for ParseDeflateError {}

/// How the proxy compresses where it chooses the parameters: at the edge (`Deflate::Always`)
/// and toward a leg whose messages it had to inflate. Defaults from `BENCHMARKS.md`'s table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Config {
    pub(crate) mode: Deflate,
    /// The window the proxy compresses with (9 to 15), at most what the leg allows.
    pub(crate) window_bits: u8,
    /// zlib's `memLevel` (1 to 9).
    pub(crate) mem_level: u8,
    /// zlib's compression level (1 to 9).
    pub(crate) level: u8,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Deflate::Auto,
            window_bits: 10,
            mem_level: 1,
            level: 6,
        }
    }
}

/// permessage-deflate as one leg agreed it (RFC 7692 section 7.1): whether each side keeps its
/// compression context between messages, and the largest window each compresses with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Params {
    pub(crate) server_no_context_takeover: bool,
    pub(crate) client_no_context_takeover: bool,
    /// 8 to 15; 15 when the answer did not say.
    pub(crate) server_max_window_bits: u8,
    pub(crate) client_max_window_bits: u8,
}

/// Which side of a leg the proxy is: the client's server, or the upstream's client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// On the client leg the proxy is the server.
    Server,
    /// On the upstream leg the proxy is the client.
    Client,
}

#[cfg_attr(not(feature = "deflate"), allow(dead_code))]
impl Params {
    /// The window and context of what the peer on this leg sends (what the proxy inflates).
    pub(crate) fn peer_sends(&self, proxy: Role) -> (u8, bool) {
        match proxy {
            Role::Server => (
                self.client_max_window_bits,
                !self.client_no_context_takeover,
            ),
            Role::Client => (
                self.server_max_window_bits,
                !self.server_no_context_takeover,
            ),
        }
    }

    /// The window and context of what the proxy sends on this leg (what it compresses with).
    pub(crate) fn proxy_sends(&self, proxy: Role) -> (u8, bool) {
        match proxy {
            Role::Server => (
                self.server_max_window_bits,
                !self.server_no_context_takeover,
            ),
            Role::Client => (
                self.client_max_window_bits,
                !self.client_no_context_takeover,
            ),
        }
    }
}

#[cfg(feature = "deflate")]
mod direction;
#[cfg(feature = "deflate")]
pub(crate) use direction::{Direction, InflateError};

/// Without the `deflate` feature nothing is negotiated, so no direction ever compresses.
#[cfg(not(feature = "deflate"))]
#[derive(Debug)]
pub(crate) enum Direction {}

#[cfg(not(feature = "deflate"))]
#[derive(Debug)]
#[allow(dead_code)]
pub(crate) enum InflateError {
    Data,
    Refused,
}

#[cfg(not(feature = "deflate"))]
#[allow(clippy::unused_self, clippy::boxed_local, missing_docs)]
impl Direction {
    pub(crate) fn new(
        _: Option<(Params, Role)>,
        _: Option<(Params, Role)>,
        _: bool,
        _: &Config,
    ) -> Option<Box<Self>> {
        None
    }
    pub(crate) fn accepts_compressed(&self) -> bool {
        match *self {}
    }
    pub(crate) fn receive_only(self: Box<Self>) -> Box<Self> {
        match *self {}
    }
    pub(crate) fn passes(&self) -> bool {
        match *self {}
    }
    pub(crate) fn compresses(&self) -> bool {
        match *self {}
    }
    pub(crate) fn inflate(
        &mut self,
        _: &[u8],
        _: bool,
        _: impl FnMut(&[u8]) -> Result<bool, ()>,
    ) -> Result<usize, InflateError> {
        match *self {}
    }
    pub(crate) fn compress(&mut self, _: &[u8], _: bool, _: &mut Vec<u8>) -> Result<(), ()> {
        match *self {}
    }
}
