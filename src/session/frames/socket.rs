//! One leg's WebSocket protocol (tungstenite's), as a `Stream` of messages and a `Sink`,
//! polled in the session's own task.
//!
//! tokio-tungstenite's `WebSocketStream` does the same for a socket that may be read and
//! written from different tasks: it keeps a waker proxy per direction (two `Arc`s per leg, and
//! a waker swapped on every poll). A session polls both directions of both legs from its one
//! task, so each call here lends the socket with the caller's context instead. The semantics
//! are `WebSocketStream`'s: the stream ends after a close or an error; a message sent is
//! queued and written by the next flush.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// A leg's connection and its WebSocket state.
#[derive(Debug)]
pub(crate) struct Socket<S> {
    io: S,
    ws: WebSocketContext,
    /// The stream has ended (closed, or an error was returned): it yields nothing more.
    ended: bool,
    /// A close was queued by `poll_close` and is being flushed.
    closing: bool,
    /// `false` once a queued message could not be written yet: `poll_ready` flushes first.
    ready: bool,
}

impl<S> Socket<S> {
    pub(crate) fn new(io: S, role: Role, config: WebSocketConfig) -> Self {
        Self {
            io,
            ws: WebSocketContext::new(role, Some(config)),
            ended: false,
            closing: false,
            ready: true,
        }
    }

    pub(crate) fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Socket<S> {
    /// Runs `f` on the protocol with the socket lent as blocking I/O for this poll: pending I/O
    /// is `WouldBlock` (the context is woken when it can go on); without a context, all I/O is.
    fn with<R>(
        &mut self,
        cx: Option<&mut Context<'_>>,
        f: impl FnOnce(&mut WebSocketContext, &mut Lent<'_, '_, S>) -> R,
    ) -> R {
        let mut lent = Lent {
            io: &mut self.io,
            cx,
        };
        f(&mut self.ws, &mut lent)
    }
}

/// The socket as `Read + Write` for one call into tungstenite.
struct Lent<'a, 'b, S> {
    io: &'a mut S,
    cx: Option<&'a mut Context<'b>>,
}

fn would_block() -> io::Error {
    io::ErrorKind::WouldBlock.into()
}

impl<S: AsyncRead + Unpin> Read for Lent<'_, '_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(cx) = self.cx.as_deref_mut() else {
            return Err(would_block());
        };
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => Ok(buf.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(would_block()),
        }
    }
}

impl<S: AsyncWrite + Unpin> Write for Lent<'_, '_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(cx) = self.cx.as_deref_mut() else {
            return Err(would_block());
        };
        match Pin::new(&mut *self.io).poll_write(cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(would_block()),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let Some(cx) = self.cx.as_deref_mut() else {
            return Err(would_block());
        };
        match Pin::new(&mut *self.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(would_block()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let Some(cx) = self.cx.as_deref_mut() else {
            return Err(would_block());
        };
        match Pin::new(&mut *self.io).poll_flush(cx) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(would_block()),
        }
    }
}

/// `WouldBlock` as pending; anything else as it is.
fn pending<T>(result: Result<T, WsError>) -> Poll<Result<T, WsError>> {
    match result {
        Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        other => Poll::Ready(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for Socket<S> {
    type Item = Result<Message, WsError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match std::task::ready!(pending(self.with(Some(cx), |ws, io| ws.read(io)))) {
            Ok(msg) => Poll::Ready(Some(Ok(msg))),
            Err(e) => {
                self.ended = true;
                match e {
                    WsError::AlreadyClosed | WsError::ConnectionClosed => Poll::Ready(None),
                    e => Poll::Ready(Some(Err(e))),
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for Socket<S> {
    type Error = WsError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        if self.ready {
            return Poll::Ready(Ok(()));
        }
        let flushed = std::task::ready!(pending(self.with(Some(cx), |ws, io| ws.flush(io))));
        self.ready = true;
        Poll::Ready(flushed)
    }

    fn start_send(mut self: Pin<&mut Self>, msg: Message) -> Result<(), WsError> {
        // Queued only: the next flush writes it (without a context no I/O can wait).
        match self.with(None, |ws, io| ws.write(io, msg)) {
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                self.ready = false;
                Ok(())
            }
            other => {
                self.ready = true;
                other
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let flushed = std::task::ready!(pending(self.with(Some(cx), |ws, io| ws.flush(io))));
        self.ready = true;
        Poll::Ready(match flushed {
            // The close handshake just completed: flushed, not an error.
            Err(WsError::ConnectionClosed) => Ok(()),
            other => other,
        })
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        self.ready = true;
        let result = if self.closing {
            self.with(Some(cx), |ws, io| ws.flush(io))
        } else {
            self.with(Some(cx), |ws, io| ws.close(io, None))
        };
        match result {
            Ok(()) | Err(WsError::ConnectionClosed) => Poll::Ready(Ok(())),
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                self.closing = true;
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}
