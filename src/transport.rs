//! What the stages share about a connection: a leg's [`Transport`], how the client's leg
//! reaches the session ([`ClientLeg`]), what a server asks a session to hold while it lives
//! ([`HeldBySession`]), and what a TLS handshake at the edge established (`TlsInfo`). A leaf:
//! every stage may import it, and it imports none of them.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
#[cfg(all(feature = "serve", feature = "tls"))]
use tokio_rustls::rustls::pki_types::CertificateDer;

/// One leg's connection, in either mode: a plain TCP socket (a tunnel can splice between two
/// of them), or anything else behind a buffer (TLS, an HTTP/2 stream), each with the bytes
/// read past its handshake, to be read again first.
pub(crate) enum Transport {
    /// A plain TCP socket.
    Tcp { tcp: TcpStream, pre: Bytes },
    /// Behind TLS or HTTP/2: bytes go through a buffer.
    Other { io: Box<dyn Stream>, pre: Bytes },
}

/// A leg that is not a plain socket.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

impl Transport {
    /// The client's leg, from hyper's upgrade: the socket itself when hyper ran on it (or on
    /// a socket with bytes the server had read first, still a socket a tunnel can splice).
    pub(crate) fn new(upgraded: Upgraded) -> Self {
        let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let mut leg = Transport::tcp(parts.io.into_inner());
                leg.put_back(parts.read_buf);
                return leg;
            }
            Err(upgraded) => upgraded,
        };
        match upgraded.downcast::<TokioIo<Transport>>() {
            Ok(parts) => {
                let mut leg = parts.io.into_inner();
                leg.put_back(parts.read_buf);
                leg
            }
            Err(upgraded) => Transport::other(Box::new(TokioIo::new(upgraded))),
        }
    }

    pub(crate) fn tcp(tcp: TcpStream) -> Self {
        Transport::Tcp {
            tcp,
            pre: Bytes::new(),
        }
    }

    pub(crate) fn other(io: Box<dyn Stream>) -> Self {
        Transport::Other {
            io,
            pre: Bytes::new(),
        }
    }

    /// Bytes read past a handshake, to be read again first (before any still waiting, which
    /// come later in the stream). Kept only if non-empty: even an empty slice would pin the
    /// whole read buffer it came from for the life of the session.
    pub(crate) fn put_back(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        let (Transport::Tcp { pre, .. } | Transport::Other { pre, .. }) = self;
        *pre = if pre.is_empty() {
            bytes
        } else {
            let mut both = Vec::with_capacity(bytes.len() + pre.len());
            both.extend_from_slice(&bytes);
            both.extend_from_slice(pre);
            Bytes::from(both)
        };
    }

    /// The socket, once no bytes read ahead are left to pass on first.
    pub(crate) fn socket(&self) -> Option<&TcpStream> {
        match self {
            Transport::Tcp { tcp, pre } if pre.is_empty() => Some(tcp),
            _ => None,
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp { pre, .. } | Transport::Other { pre, .. } if !pre.is_empty() => {
                let n = pre.len().min(buf.remaining());
                buf.put_slice(&pre[..n]);
                pre.advance(n);
                if pre.is_empty() {
                    *pre = Bytes::new(); // let go of the buffer it came from
                }
                Poll::Ready(Ok(()))
            }
            Transport::Tcp { tcp, .. } => Pin::new(tcp).poll_read(cx, buf),
            Transport::Other { io, .. } => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp { tcp, .. } => Pin::new(tcp).poll_write(cx, buf),
            Transport::Other { io, .. } => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp { tcp, .. } => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Transport::Other { io, .. } => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Tcp { tcp, .. } => tcp.is_write_vectored(),
            Transport::Other { io, .. } => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp { tcp, .. } => Pin::new(tcp).poll_flush(cx),
            Transport::Other { io, .. } => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp { tcp, .. } => Pin::new(tcp).poll_shutdown(cx),
            Transport::Other { io, .. } => Pin::new(io).poll_shutdown(cx),
        }
    }
}

/// How the client's connection reaches its session once the client has been answered.
pub(crate) enum ClientLeg {
    /// Through hyper's upgrade (its connection, or an HTTP/2 stream).
    Hyper(OnUpgrade),
    /// From the server's own upgrade entry, which wrote the answer on the socket itself
    /// (dropped unsent if that failed).
    Handed(tokio::sync::oneshot::Receiver<Transport>),
}

impl ClientLeg {
    /// The client's connection, once its answer has been sent; `Err` names why not.
    pub(crate) async fn connected(self) -> Result<Transport, String> {
        match self {
            ClientLeg::Hyper(upgrade) => {
                upgrade.await.map(Transport::new).map_err(|e| e.to_string())
            }
            ClientLeg::Handed(handed) => handed
                .await
                .map_err(|_| String::from("the answer could not be written")),
        }
    }
}

/// Kept by a session for as long as it lives, when the server put one in the request: the
/// HTTP/2 server counts a WebSocket stream as open until its session ends (the stream outlives
/// its request), so that only connections with nothing open are closed as idle.
#[derive(Clone)]
pub(crate) struct HeldBySession(Arc<std::sync::Mutex<Option<Held>>>);

pub(crate) type Held = Box<dyn std::any::Any + Send + Sync>;

impl HeldBySession {
    #[cfg_attr(not(feature = "serve"), allow(dead_code))]
    pub(crate) fn new(held: Held) -> Self {
        Self(Arc::new(std::sync::Mutex::new(Some(held))))
    }

    /// What the slot holds, once.
    pub(crate) fn take(&self) -> Option<Held> {
        // A poisoned lock still holds a valid `Option`.
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

#[cfg(all(feature = "serve", feature = "tls"))]
/// What a connection's TLS handshake established, in every request's extensions on a TLS
/// connection (read it in a routing hook with `req.extensions().get::<TlsInfo>()`).
///
/// ```
/// use axum_ws_proxy::http::StatusCode;
/// use axum_ws_proxy::{WsProxyLayer, hooks::Refusal, tls::TlsInfo};
///
/// // Only clients that presented a certificate (see `ServerTls::client_ca_file`) get through.
/// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?).route(|req| {
///     match req.extensions().get::<TlsInfo>() {
///         Some(tls) if !tls.peer_certificates.is_empty() => Ok(()),
///         _ => Err(Refusal::new(StatusCode::FORBIDDEN, "client certificate required")),
///     }
/// });
/// # let _ = layer;
/// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TlsInfo {
    /// The ALPN protocol agreed: `h2` or `http/1.1`, or `None`.
    pub alpn: Option<Vec<u8>>,
    /// The name the client asked for (SNI).
    pub server_name: Option<String>,
    /// The client's verified certificate chain, leaf first (with a client CA), else empty.
    pub peer_certificates: Vec<CertificateDer<'static>>,
}
