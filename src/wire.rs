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
//! is unwritten every write from tungstenite (a pong, a close) waits behind it.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::Message;

/// Bytes taken in one read while a burst lasts.
pub(crate) const AHEAD: usize = 64 * 1024;

/// A read must have asked for at least this much, and got it all, to start read-ahead.
const STREAM_MIN: usize = 256;

/// Data messages at least this large bypass tungstenite's write buffer.
pub(crate) const DIRECT_MIN: usize = 8 * 1024;

/// A leg's stream, with read-ahead and copy-free frame writes.
#[derive(Debug)]
pub(crate) struct Wire<S> {
    io: S,
    ahead: Ahead,
    frame: Option<Frame>,
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
        }
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
        let payload = msg.into_data();
        // Toward the upstream the proxy is the client: a fresh key per frame (RFC 6455 5.3).
        let key = mask.then(rand::random::<[u8; 4]>);
        let (head, head_len) = frame_head(0x80 | opcode, payload.len(), key);
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
        Ok(())
    }
}

impl<S: AsyncWrite + Unpin> Wire<S> {
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

/// A frame header: `first` is FIN, RSV and opcode; the length in its shortest form; the mask
/// bit and key when `mask` is given. Returns the bytes and how many of them are used.
pub(crate) fn frame_head(first: u8, len: usize, mask: Option<[u8; 4]>) -> ([u8; 14], usize) {
    let mut head = [0u8; 14];
    head[0] = first;
    let mut used = if len < 126 {
        head[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        head[1] = 126;
        head[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        head[1] = 127;
        head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    if let Some(key) = mask {
        head[1] |= 0x80;
        head[used..used + 4].copy_from_slice(&key);
        used += 4;
    }
    (head, used)
}

/// XORs `data` with the repeating 4-byte `key` (RFC 6455 section 5.3).
pub(crate) fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so the key's phase is 0 again.
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i % 4];
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Wire<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let ahead = &mut this.ahead;
        if ahead.start == ahead.end {
            let wanted = buf.remaining();
            if !ahead.streaming || wanted >= AHEAD {
                let before = buf.filled().len();
                ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
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
    fn mask_matches_the_bytewise_definition() {
        let key = [0x12, 0x34, 0x56, 0x78];
        for len in [0, 1, 3, 7, 8, 9, 15, 16, 17, 100] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut fast = plain.clone();
            apply_mask(&mut fast, key);
            let slow: Vec<u8> = plain
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            assert_eq!(fast, slow, "len {len}");
        }
    }

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
}
