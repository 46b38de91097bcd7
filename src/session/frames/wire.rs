//! Step 5, underneath: the bytes of each bridged leg.
//!
//! tungstenite reads at most `read_buffer_size` bytes per call, and copies every outgoing
//! payload into its write buffer. Both are fine for chat-sized messages and costly for bulk:
//! a 256 KiB message took 64 reads, and the copy ran into a slow path of `rep movsb` on some
//! CPUs (the payload and the buffer sit a few bytes apart modulo 64; measured 88 µs instead of
//! 7 µs per 256 KiB on AMD EPYC). [`Wire`] sits between tungstenite and the socket and fixes
//! both without changing what goes on the wire:
//!
//! - **Read-ahead.** Once a read fills tungstenite's buffer (more is probably waiting; a
//!   request of under [`STREAM_MIN`] bytes does not count), the next read takes up to
//!   [`AHEAD`] bytes into a per-session buffer that tungstenite then drains without a system
//!   call. The buffer exists only while a burst lasts, so an idle
//!   session holds none.
//! - **Frames written from the message's own bytes.** The bridge hands a large data message
//!   to [`Wire::send_frame`]: its header and payload go out in one vectored write, with no
//!   copy. Toward the upstream the payload is masked in place with a fresh random key, as
//!   RFC 6455 asks of a client.
//!
//! Order is kept: a frame is only handed over when tungstenite's buffer is empty, and while it
//! is unwritten every write from tungstenite (a pong, a close) waits behind it. The streaming
//! bridge, which writes each read's pieces at once with [`Wire::write_now`], writes only
//! once the leg has taken what it was sent before.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::Message;

use crate::session::frame::{apply_mask, control_frame, frame_head};

/// Bytes taken in one read while a burst lasts.
pub(crate) const AHEAD: usize = 64 * 1024;

/// A read must have asked for at least this much, and got it all, to start read-ahead.
const STREAM_MIN: usize = 256;

/// Data messages at least this large bypass tungstenite's write buffer.
pub(crate) const DIRECT_MIN: usize = 8 * 1024;

/// Raw bytes read at a time for a transform.
const TRANSFORM_READ: usize = 16 << 10;

/// Turns what a leg sends into what tungstenite reads, where tungstenite cannot read it as it
/// is (a compressed message: tungstenite has no permessage-deflate).
pub(crate) trait Transform: Send {
    /// Walks `raw` (as read from the leg; changed in place), appending what tungstenite reads
    /// to `out`; returns how much of `raw` it took (the rest is read again). An error ends
    /// the stream; `raw` is empty at the stream's end.
    fn transform(&mut self, raw: &mut [u8], out: &mut Vec<u8>) -> io::Result<usize>;
}

/// A peer's protocol error found by a [`Transform`], carried to tungstenite's reader as the
/// source of an I/O error, and told apart from a lost connection by the close phase.
#[derive(Debug)]
pub(crate) struct Violation(pub(crate) tokio_tungstenite::tungstenite::Error);

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Violation {}

/// A leg's stream, with read-ahead and copy-free frame writes.
pub(crate) struct Wire<S> {
    io: S,
    ahead: Ahead,
    frame: Option<Frame>,
    /// Bytes put back into the stream (see [`Wire::unread`]): read before anything else.
    unread: Vec<u8>,
    unread_at: usize,
    /// What tungstenite reads instead of the raw stream, when set; and its output not yet
    /// read.
    transform: Option<Box<dyn Transform>>,
    plain: Vec<u8>,
    plain_at: usize,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Wire<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire")
            .field("io", &self.io)
            .field("transform", &self.transform.is_some())
            .finish_non_exhaustive()
    }
}

/// Bytes read past what tungstenite asked for.
#[derive(Debug, Default)]
struct Ahead {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The last read filled what it was given: more is probably waiting.
    streaming: bool,
}

/// A frame being written straight from its payload.
#[derive(Debug)]
struct Frame {
    head: [u8; 14],
    head_len: usize,
    payload: Bytes,
    /// Bytes of head and payload written so far.
    written: usize,
}

impl<S> Wire<S> {
    pub(crate) fn new(io: S) -> Self {
        Self {
            io,
            ahead: Ahead::default(),
            frame: None,
            unread: Vec::new(),
            unread_at: 0,
            transform: None,
            plain: Vec::new(),
            plain_at: 0,
        }
    }

    /// From now on tungstenite reads this leg through `transform`.
    pub(crate) fn set_transform(&mut self, transform: Box<dyn Transform>) {
        self.transform = Some(transform);
    }

    /// Bytes written for the leg wait here for the socket (a flush will send them).
    pub(crate) fn has_pending(&self) -> bool {
        self.frame.is_some()
    }

    /// The read-ahead buffer's size (0 when the session holds none).
    #[cfg(any(test, feature = "__fuzz"))]
    pub(crate) fn ahead_capacity(&self) -> usize {
        self.ahead.buf.capacity()
    }

    /// Puts `bytes` back in front of the stream: the next reads return them first. The
    /// streaming bridge keeps what it read past a pause this way, and so does a transform
    /// with what it did not take.
    pub(crate) fn unread(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.unread_at == self.unread.len() && self.unread.capacity() <= 1024 {
            // Nothing left unread: a small buffer is refilled in place; a large one (the rest
            // of a big read) is let go below, not kept for the session's life.
            self.unread.clear();
            self.unread.extend_from_slice(bytes);
            self.unread_at = 0;
            return;
        }
        let rest = &self.unread[self.unread_at..];
        let mut joined = Vec::with_capacity(bytes.len() + rest.len());
        joined.extend_from_slice(bytes);
        joined.extend_from_slice(rest);
        self.unread = joined;
        self.unread_at = 0;
    }

    /// Queues `msg` as one frame written from its own bytes; masked when `mask` (toward the
    /// upstream). Returns the message back if it is not a data message. The caller must have
    /// flushed tungstenite first, and must flush again to get the frame out.
    pub(crate) fn send_frame(&mut self, msg: Message, mask: bool) -> Result<(), Message> {
        let opcode = match msg {
            Message::Text(_) => 0x1,
            Message::Binary(_) => 0x2,
            other => return Err(other),
        };
        self.send_bytes(0x80 | opcode, msg.into_data(), mask);
        Ok(())
    }

    /// Queues one frame with first byte `first` (FIN, RSV, opcode) and `payload`, written from
    /// its own bytes; masked when `mask`. As [`send_frame`](Self::send_frame), after a flush.
    pub(crate) fn send_bytes(&mut self, first: u8, payload: Bytes, mask: bool) {
        // Toward the upstream the proxy is the client: a fresh key per frame (RFC 6455 5.3).
        let key = mask.then(rand::random::<[u8; 4]>);
        let (head, head_len) = frame_head(first, payload.len(), key);
        let payload = match key {
            Some(key) => {
                // In place when the bridge holds the only reference (the usual case).
                let mut data = payload
                    .try_into_mut()
                    .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
                apply_mask(&mut data, key);
                data.freeze()
            }
            None => payload,
        };
        debug_assert!(self.frame.is_none(), "one frame at a time");
        self.frame = Some(Frame {
            head,
            head_len,
            payload,
            written: 0,
        });
    }
}

impl<S: AsyncWrite + Unpin> Wire<S> {
    /// Writes `parts` now, in order, as far as the socket takes them; the rest is kept and
    /// goes out before any later write. Only when nothing is queued (after a flush).
    pub(crate) fn write_now(&mut self, cx: &mut Context<'_>, parts: &[&[u8]]) -> io::Result<()> {
        debug_assert!(self.frame.is_none(), "write_now after a flush only");
        if let Some(queued) = self.frame.take() {
            // Misuse, caught by the assertion in tests: still nothing is lost or reordered.
            let head = &queued.head[queued.written.min(queued.head_len)..queued.head_len];
            let payload = &queued.payload[queued.written.saturating_sub(queued.head_len)..];
            let mut rest = [head, payload].concat();
            for part in parts {
                rest.extend_from_slice(part);
            }
            self.frame = Some(Frame {
                head: [0; 14],
                head_len: 0,
                payload: Bytes::from(rest),
                written: 0,
            });
            return Ok(());
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        // Several parts: their slices are made once, and advanced past what each write took.
        let mut slices: Vec<IoSlice<'_>> = match parts {
            [_] => Vec::new(),
            _ => parts.iter().map(|p| IoSlice::new(p)).collect(),
        };
        let mut rest = &mut slices[..];
        let mut written = 0;
        while written < total {
            let polled = match parts {
                [one] => Pin::new(&mut self.io).poll_write(cx, &one[written..]),
                _ => Pin::new(&mut self.io).poll_write_vectored(cx, rest),
            };
            match polled {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    written += n;
                    if parts.len() > 1 {
                        IoSlice::advance_slices(&mut rest, n);
                    }
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }
        if written < total {
            // What the socket did not take waits here, the only copy of it.
            let mut rest = Vec::with_capacity(total - written);
            let mut skip = written;
            for part in parts {
                let from = skip.min(part.len());
                rest.extend_from_slice(&part[from..]);
                skip -= from;
            }
            self.frame = Some(Frame {
                head: [0; 14],
                head_len: 0,
                payload: Bytes::from(rest),
                written: 0,
            });
        }
        Ok(())
    }

    /// Writes one control frame now (see [`control_frame`]), as [`write_now`](Self::write_now)
    /// does: only when nothing is queued.
    pub(crate) fn write_control(
        &mut self,
        cx: &mut Context<'_>,
        opcode: u8,
        payload: &[u8],
        mask: bool,
    ) -> io::Result<()> {
        let (frame, len) = control_frame(opcode, payload, mask);
        self.write_now(cx, &[&frame[..len]])
    }

    /// Writes out the queued frame, if any.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(frame) = &mut self.frame {
            let total = frame.head_len + frame.payload.len();
            if frame.written == total {
                self.frame = None;
                break;
            }
            let n = if frame.written < frame.head_len {
                let head = &frame.head[frame.written..frame.head_len];
                if self.io.is_write_vectored() {
                    let bufs = [IoSlice::new(head), IoSlice::new(&frame.payload)];
                    ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &bufs))?
                } else {
                    ready!(Pin::new(&mut self.io).poll_write(cx, head))?
                }
            } else {
                let rest = &frame.payload[frame.written - frame.head_len..];
                ready!(Pin::new(&mut self.io).poll_write(cx, rest))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            frame.written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Wire<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.transform.is_some() {
            return this.poll_transformed(cx, buf);
        }
        this.poll_raw(cx, buf)
    }
}

impl<S: AsyncRead + Unpin> Wire<S> {
    /// Reads what the leg sent, as it sent it.
    fn poll_raw(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self;
        if this.unread_at < this.unread.len() {
            let n = buf.remaining().min(this.unread.len() - this.unread_at);
            buf.put_slice(&this.unread[this.unread_at..this.unread_at + n]);
            this.unread_at += n;
            if this.unread_at == this.unread.len() {
                this.unread = Vec::new();
                this.unread_at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        this.poll_stream(cx, buf)
    }

    /// Reads what the leg sent through the transform: its output first, then raw bytes,
    /// which the transform turns into more (what it does not take now is read again next).
    fn poll_transformed(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.plain_at < self.plain.len() {
                let n = buf.remaining().min(self.plain.len() - self.plain_at);
                buf.put_slice(&self.plain[self.plain_at..self.plain_at + n]);
                self.plain_at += n;
                if self.plain_at == self.plain.len() {
                    // Served: the session keeps no buffer of it.
                    self.plain = Vec::new();
                    self.plain_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut raw = [0u8; TRANSFORM_READ];
            let mut into = ReadBuf::new(&mut raw);
            ready!(self.poll_raw(cx, &mut into))?;
            let n = into.filled().len();
            let Some(transform) = self.transform.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            if n == 0 {
                // The end of the stream: anything the transform holds back (an error) now.
                transform.transform(&mut [], &mut self.plain)?;
                if self.plain.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let used = transform.transform(&mut raw[..n], &mut self.plain)?;
            if used < n {
                self.unread(&raw[used..n]);
            }
        }
    }

    /// Reads from the socket, through the read-ahead buffer.
    fn poll_stream(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self;
        let ahead = &mut this.ahead;
        if ahead.start == ahead.end {
            let wanted = buf.remaining();
            if !ahead.streaming || wanted >= AHEAD {
                let before = buf.filled().len();
                if Pin::new(&mut this.io).poll_read(cx, buf)?.is_pending() {
                    // Quiet: a buffer left from an earlier burst is not kept through it.
                    ahead.streaming = false;
                    ahead.buf = Vec::new();
                    return Poll::Pending;
                }
                let got = buf.filled().len() - before;
                // A small request that fills says nothing: tungstenite often asks for just
                // what is left of its buffer (a few bytes); a 64 KiB buffer for that was ~20%
                // of the proxy's instructions per handshake.
                ahead.streaming = got > 0 && got == wanted && wanted >= STREAM_MIN;
                if !ahead.streaming {
                    // The burst is over: an idle session keeps no read-ahead buffer.
                    ahead.buf = Vec::new();
                }
                return Poll::Ready(Ok(()));
            }
            if ahead.buf.is_empty() {
                ahead.buf = vec![0; AHEAD + 64];
            }
            // Start where the copy into `buf` will be fast: the same address modulo 64 (see
            // the module docs); consecutive copies then stay aligned with each other.
            let dst = buf.initialize_unfilled().as_ptr() as usize;
            let start = dst.wrapping_sub(ahead.buf.as_ptr() as usize) % 64;
            let mut into = ReadBuf::new(&mut ahead.buf[start..start + AHEAD]);
            if Pin::new(&mut this.io)
                .poll_read(cx, &mut into)?
                .is_pending()
            {
                // Caught up after all: don't hold the buffer through a quiet spell.
                ahead.streaming = false;
                ahead.buf = Vec::new();
                return Poll::Pending;
            }
            let got = into.filled().len();
            ahead.streaming = got == AHEAD;
            ahead.start = start;
            ahead.end = start + got;
        }
        let n = buf.remaining().min(ahead.end - ahead.start);
        buf.put_slice(&ahead.buf[ahead.start..ahead.start + n]);
        ahead.start += n;
        if ahead.start == ahead.end && !ahead.streaming {
            ahead.buf = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Wire<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_frame(cx))?;
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_frame(cx))?;
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_frame(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_frame(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_heads_use_the_shortest_length_form() {
        for (len, head_len, marker) in [
            (125, 2, 125u8),
            (126, 4, 126),
            (65535, 4, 126),
            (65536, 10, 127),
        ] {
            let mut wire = Wire::new(tokio::io::empty());
            wire.send_frame(Message::Binary(Bytes::from(vec![0; len])), false)
                .map_err(|_| "not data")
                .unwrap();
            let frame = wire.frame.take().unwrap();
            assert_eq!(frame.head[0], 0x82);
            assert_eq!(frame.head[1], marker, "len {len}");
            assert_eq!(frame.head_len, head_len, "len {len}");
        }
        let mut wire = Wire::new(tokio::io::empty());
        wire.send_frame(Message::text("hi"), true)
            .map_err(|_| "not data")
            .unwrap();
        let frame = wire.frame.take().unwrap();
        assert_eq!(frame.head[..2], [0x81, 0x82]);
        assert_eq!(frame.head_len, 6);
        let key = &frame.head[2..6];
        assert_eq!(frame.payload[0] ^ key[0], b'h');
        assert_eq!(frame.payload[1] ^ key[1], b'i');
    }

    /// Reads `want` bytes through `wire` (the source has plenty), as tungstenite would.
    fn read_exact_into<S: AsyncRead + Unpin>(wire: &mut Wire<S>, want: usize) {
        let mut space = vec![0; want];
        let mut buf = ReadBuf::new(&mut space);
        let waker = std::task::Waker::noop();
        let polled = Pin::new(wire).poll_read(&mut Context::from_waker(waker), &mut buf);
        assert!(matches!(polled, Poll::Ready(Ok(()))));
        assert_eq!(buf.filled().len(), want);
    }

    #[test]
    fn only_a_full_read_of_a_real_request_starts_read_ahead() {
        let source = vec![7u8; 4 * AHEAD];
        // tungstenite asking for the few bytes left in its buffer: no 64 KiB buffer for that.
        let mut wire = Wire::new(&source[..]);
        read_exact_into(&mut wire, 14);
        assert!(!wire.ahead.streaming);
        read_exact_into(&mut wire, 14);
        assert_eq!(wire.ahead.buf.capacity(), 0);
        // A full read of a buffer's worth: a burst, so the next read takes AHEAD bytes.
        read_exact_into(&mut wire, 1024);
        assert!(wire.ahead.streaming);
        read_exact_into(&mut wire, 1024);
        assert_eq!(wire.ahead.end - wire.ahead.start, AHEAD - 1024);
    }

    /// A source that returns as much as asked until `ready` runs out, then is not ready.
    struct Bursty {
        ready: usize,
    }

    impl AsyncRead for Bursty {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.ready == 0 {
                return Poll::Pending;
            }
            let n = buf.remaining().min(self.ready);
            buf.put_slice(&vec![1; n]);
            self.ready -= n;
            Poll::Ready(Ok(()))
        }
    }

    /// Found while writing the `wire_read` fuzz target: after a burst read through the
    /// read-ahead buffer, a large read that found nothing waiting kept the 64 KiB buffer for
    /// as long as the session stayed quiet.
    #[test]
    fn a_quiet_session_holds_no_read_ahead_buffer() {
        let mut wire = Wire::new(Bursty {
            ready: 1024 + AHEAD,
        });
        read_exact_into(&mut wire, 1024);
        for _ in 0..AHEAD / 1024 {
            read_exact_into(&mut wire, 1024);
        }
        assert!(wire.ahead.streaming);
        let mut space = vec![0; 2 * AHEAD];
        let mut buf = ReadBuf::new(&mut space);
        let waker = std::task::Waker::noop();
        let polled = Pin::new(&mut wire).poll_read(&mut Context::from_waker(waker), &mut buf);
        assert!(polled.is_pending());
        assert_eq!(wire.ahead.buf.capacity(), 0);
    }
}
