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
/// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
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

impl ParseDeflateError {
    /// The text that did not parse.
    pub fn input(&self) -> &str {
        &self.0
    }
}

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

/// How the proxy compresses where it chooses how: toward clients at the edge
/// ([`Deflate::Always`]) and toward a leg whose messages it inflated for a message hook. Where
/// both legs agreed the same and nothing reads the messages, compressed frames pass as they
/// came and this does not apply.
///
/// The defaults (a 1 KiB window, zlib's `memLevel` 1, level 6, context takeover) come from the
/// measured table in `BENCHMARKS.md`: for chat-sized JSON they deliver 4% more bytes than
/// zlib's own defaults (a 32 KiB window, `memLevel` 8) and 6% more than a compressing upstream
/// direct, for about 4 KiB of RSS per idle compressed session instead of about 80 KiB. Large
/// documents compress less with the small window (256 KiB JSON: 5.8x against 9.1x). Without
/// context takeover the compressor is shared by the sessions of a thread (nothing held while a
/// session is quiet), but each message starts from nothing: chat messages cost 6.8x the bytes.
///
/// ```
/// use axum_ws_proxy::{Compression, Deflate, WsProxyLayer};
///
/// // zlib's own defaults: a few percent fewer bytes, about 25 times the memory.
/// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?)
///     .deflate(Deflate::Always)
///     .compression(Compression::default().window_bits(15).mem_level(8));
/// # let _ = layer;
/// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub struct Compression {
    pub(crate) window_bits: u8,
    pub(crate) mem_level: u8,
    pub(crate) level: u8,
    pub(crate) context_takeover: bool,
}

impl Default for Compression {
    fn default() -> Self {
        Self {
            window_bits: 10,
            mem_level: 1,
            level: 6,
            context_takeover: true,
        }
    }
}

impl Compression {
    /// The window the proxy compresses with, as a power of two: 9 (512 bytes) to 15 (32 KiB),
    /// at most what the client allows; other values are raised or lowered into that range
    /// (zlib cannot compress with the 256-byte window RFC 7692 also names). Default 10. At the
    /// edge the proxy announces it (`server_max_window_bits`), so the client needs no larger
    /// window to inflate.
    pub fn window_bits(mut self, bits: u8) -> Self {
        self.window_bits = bits.clamp(9, 15);
        self
    }

    /// zlib's `memLevel`, how much memory the compressor uses to find matches: 1 (about 1 KiB
    /// besides the window) to 9 (about 256 KiB); other values are raised or lowered into that
    /// range. Default 1.
    pub fn mem_level(mut self, level: u8) -> Self {
        self.mem_level = level.clamp(1, 9);
        self
    }

    /// zlib's compression level: 1 (fastest) to 9 (smallest); other values are raised or
    /// lowered into that range. Default 6, zlib's own.
    pub fn level(mut self, level: u8) -> Self {
        self.level = level.clamp(1, 9);
        self
    }

    /// Whether the proxy keeps its compression context from one message to the next (default
    /// `true`). `false` answers the client `server_no_context_takeover` at the edge and shares
    /// compressors between the sessions of a thread: no compressor memory per idle session,
    /// fewer bytes saved on small messages.
    pub fn context_takeover(mut self, keep: bool) -> Self {
        self.context_takeover = keep;
        self
    }
}

/// Frame mode's compression: whether, and how where the proxy chooses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Config {
    pub(crate) mode: Deflate,
    pub(crate) compression: Compression,
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
mod codec;
#[cfg(feature = "deflate")]
pub(crate) use codec::{Codec, InflateError};

/// Without the `deflate` feature nothing is negotiated, so no direction ever compresses.
#[cfg(not(feature = "deflate"))]
#[derive(Debug)]
pub(crate) enum Codec {}

#[cfg(not(feature = "deflate"))]
#[derive(Debug)]
#[allow(dead_code)]
pub(crate) enum InflateError {
    Data,
    Refused,
}

#[cfg(not(feature = "deflate"))]
#[allow(clippy::unused_self, clippy::boxed_local, missing_docs)]
impl Codec {
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
