//! Step 5 without message hooks: data frames are streamed, chunk by chunk, as they arrive.
//!
//! Each direction reads what its source has (at most [`CHUNK`] bytes at a time, into a
//! per-thread buffer), walks the frames in it and writes every piece of data frame it holds to
//! the other leg at once, as a frame of its own: unmasked from the client and masked again
//! with a fresh key toward the upstream (RFC 6455 §5.3). A message therefore crosses
//! fragmented where it arrived in pieces, and whole where it arrived whole; its content and
//! boundaries are unchanged. Memory per direction is one chunk, held only while the
//! destination is not taking bytes (and then nothing more is read from the source); an idle
//! session holds nothing.
//!
//! What frame mode promises is kept, checked from the frame headers and the bytes as they
//! pass: masking per direction, no reserved bits or opcodes, fragments in order, frames and
//! messages within `max_frame_size` / `max_message_size` (1009), text valid UTF-8 across
//! chunks and frames (1007, as soon as the bad byte is seen). Control frames are per hop and
//! answered here, as tungstenite answers them for the message bridge: a ping gets its pong
//! (pings are never forwarded), a close ends bridging with its code and reason checked
//! (1002 for a forbidden code, 1007 for a reason that is not UTF-8).
//!
//! When bridging stops, the same walkers carry on into the close handshakes
//! ([`stream_close`](crate::session::frames::stream_close)): a frame or message in progress is
//! read to its end, and counted as undeliverable, rather than taken for a protocol error.
//! Neither leg is ever handed to tungstenite, so a streamed session holds no WebSocket buffers
//! of its own.

use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::session::deflate::Codec;
use crate::session::frame;
use crate::session::frames::drive::{drive, Legs};
use crate::session::frames::wire::Wire;
use crate::session::keepalive::{self, Keepalive};
use crate::session::leg::{Ended, Side, Traffic};

/// Bytes read from a leg at a time.
pub(crate) const CHUNK: usize = 256 << 10;
/// Reads a direction handles before letting the other run.
const BUDGET: usize = 4;
/// Largest frame header: 2 bytes, 8 of length, 4 of mask key.
const MAX_HEAD: usize = 14;
/// Largest control frame: its header and 125 bytes of payload.
const MAX_CONTROL: usize = MAX_HEAD + 125;

/// Pieces shorter than this are copied next to their header; longer ones are written from
/// where they were read (copying them cost more than the rest of the bridge together: glibc's
/// `memcpy` is slow when source and destination sit a header's length apart modulo 64).
const COPY_MAX: usize = 2 << 10;

thread_local! {
    /// What was read (unmasked and masked in place) and what is written: one pair per worker
    /// thread.
    static BUFS: RefCell<(Box<[u8]>, Output)> =
        RefCell::new((vec![0; CHUNK].into_boxed_slice(), Output::default()));
}

/// What one read turns into for the other leg, in order: frame headers and short pieces
/// copied into `own`, longer pieces left in the read buffer.
#[derive(Debug, Default)]
pub(crate) struct Output {
    own: Vec<u8>,
    parts: Vec<Part>,
}

#[derive(Clone, Copy, Debug)]
enum Part {
    /// `own[start..end]`.
    Own(usize, usize),
    /// The read buffer's `[start..end]`.
    Read(usize, usize),
}

impl Output {
    pub(crate) fn clear(&mut self) {
        self.own.clear();
        self.parts.clear();
    }

    fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Bytes copied into `own` so far.
    pub(crate) fn own_len(&self) -> usize {
        self.own.len()
    }

    /// Copies `bytes`, masked with `key` if there is one.
    pub(crate) fn copy_masked(&mut self, bytes: &[u8], key: Option<[u8; 4]>) {
        let start = self.own.len();
        self.copy(bytes);
        if let Some(key) = key {
            frame::apply_mask(&mut self.own[start..], key);
        }
    }

    pub(crate) fn copy(&mut self, bytes: &[u8]) {
        let start = self.own.len();
        self.own.extend_from_slice(bytes);
        let end = self.own.len();
        match self.parts.last_mut() {
            Some(Part::Own(_, last)) if *last == start => *last = end,
            _ => self.parts.push(Part::Own(start, end)),
        }
    }

    /// The parts as slices of `own` and of the read buffer `read`.
    pub(crate) fn slices<'a>(&'a self, read: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.parts.iter().map(move |part| match *part {
            Part::Own(start, end) => &self.own[start..end],
            Part::Read(start, end) => &read[start..end],
        })
    }
}

/// The limits frame mode enforces.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) max_frame: Option<usize>,
    pub(crate) max_message: Option<usize>,
}

/// Forwards data frames both ways until a close frame or an error ends the session. Same
/// contract as [`bridge::run`](crate::session::frames::bridge::run), without hooks; nothing is
/// ever held whole. `flows` are left as they stopped, for the close phase.
pub(crate) async fn run<C, U>(legs: Legs<'_, Wire<C>, Wire<U>>, flows: &mut Flows) -> Ended
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let Legs {
        client,
        upstream,
        to_upstream,
        to_client,
        keepalive,
        entry,
    } = legs;
    let Flows { c2u, u2c } = flows;
    let ended = drive(entry, keepalive, |cx, keepalive| {
        if let Poll::Ready(end) = c2u.poll(cx, client, upstream, to_upstream, keepalive) {
            return Poll::Ready(end);
        }
        u2c.poll(cx, upstream, client, to_client, keepalive)
    })
    .await;
    c2u.stopped();
    u2c.stopped();
    ended
}

/// Both directions of a streamed session: client to upstream, upstream to client.
#[derive(Debug)]
pub(crate) struct Flows {
    pub(crate) c2u: Flow,
    pub(crate) u2c: Flow,
}

impl Flows {
    /// Both directions within `limits`, with permessage-deflate as each direction's legs
    /// agreed it.
    pub(crate) fn new(limits: Limits, c2u: Option<Box<Codec>>, u2c: Option<Box<Codec>>) -> Self {
        Self {
            c2u: Flow::new(Side::Client, Side::Upstream, limits, c2u),
            u2c: Flow::new(Side::Upstream, Side::Client, limits, u2c),
        }
    }
}

/// Incremental UTF-8 validation of a text message that arrives in pieces.
#[derive(Debug, Default)]
struct Utf8 {
    /// The start of a character cut by the end of the last piece.
    partial: [u8; 4],
    len: usize,
}

impl Utf8 {
    /// Checks the next piece; `false` once the message cannot be valid UTF-8 any more.
    fn feed(&mut self, mut data: &[u8]) -> bool {
        if self.len > 0 {
            let width = match self.partial[0] {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                _ => 4,
            };
            let take = (width - self.len).min(data.len());
            self.partial[self.len..self.len + take].copy_from_slice(&data[..take]);
            self.len += take;
            data = &data[take..];
            match std::str::from_utf8(&self.partial[..self.len]) {
                Ok(_) => self.len = 0,
                Err(e) if e.error_len().is_some() => return false,
                // Still a valid beginning: the piece ended inside the character again.
                Err(_) => return true,
            }
        }
        match std::str::from_utf8(data) {
            Ok(_) => true,
            Err(e) if e.error_len().is_some() => false,
            Err(e) => {
                let rest = &data[e.valid_up_to()..];
                self.partial[..rest.len()].copy_from_slice(rest);
                self.len = rest.len();
                true
            }
        }
    }

    /// The message ended: no character may be left unfinished.
    fn end(&mut self) -> bool {
        std::mem::take(&mut self.len) == 0
    }
}

/// One direction: frame parsing, checks and re-framing of `from`'s bytes for `to`.
#[derive(Debug)]
pub(crate) struct Flow {
    pub(super) from: Side,
    pub(super) to: Side,
    pub(super) limits: Limits,
    /// The header (or whole control frame) being collected.
    head: [u8; MAX_CONTROL],
    have: usize,
    /// The data frame whose payload is passing.
    pub(super) frame: Option<FrameState>,
    /// The data message in progress: its opcode, payload so far, and text check.
    pub(super) message: Option<MessageState>,
    /// permessage-deflate on either leg (see [`compressed`](super::compressed)); `None` when
    /// neither compresses.
    pub(super) deflate: Option<Box<Codec>>,
    /// Something was written to `to` and not flushed yet.
    unflushed: bool,
    /// `from` owes a pong it could not take yet: it is not read until it has.
    pong_waiting: bool,
    /// The ping in `head` is still to be answered (`from` had other bytes to take first).
    ping_held: bool,
    /// When `from` was last read: a delivered piece counts as activity for `idle_timeout`.
    read_at: Instant,
}

#[derive(Debug)]
pub(super) struct FrameState {
    pub(super) fin: bool,
    pub(super) remaining: u64,
    pub(super) mask: Option<[u8; 4]>,
    /// Payload bytes of this frame already passed (the mask key's phase).
    pub(super) offset: u64,
}

#[derive(Debug)]
pub(super) struct MessageState {
    pub(super) text: bool,
    /// Payload bytes so far, as plaintext (inflated, for a compressed message).
    pub(super) len: u64,
    utf8: Utf8,
    /// Nothing of it has been written yet: the next piece carries its opcode.
    pub(super) started: bool,
    /// It arrived compressed (RSV1 on its first frame).
    pub(super) compressed: bool,
    /// It goes out compressed: RSV1 on the first frame written.
    pub(super) rsv1: bool,
}

/// Where the close phase's reading of a leg stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Until {
    /// The leg's close frame came.
    Closed,
    /// The stream ended, failed or broke the protocol first.
    Ended,
    /// What it sent could not be handed on: the other leg's connection is gone.
    WriteFailed,
}

/// What walking a read's bytes stopped at.
pub(crate) enum Walk {
    /// Every byte was used.
    Done,
    /// A complete control frame, collected in `head`, ends where the walk stopped; it is
    /// answered before the rest is walked.
    Control,
    /// The peer broke the protocol.
    Violation(WsError),
    /// Inflated output has filled what one walk may hand on: write it, then walk on.
    Full,
}

impl Flow {
    pub(crate) fn new(from: Side, to: Side, limits: Limits, deflate: Option<Box<Codec>>) -> Self {
        Self {
            from,
            to,
            limits,
            head: [0; MAX_CONTROL],
            have: 0,
            frame: None,
            message: None,
            deflate,
            unflushed: false,
            pong_waiting: false,
            ping_held: false,
            read_at: Instant::now(),
        }
    }

    fn poll<S, D>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut Wire<S>,
        dst: &mut Wire<D>,
        traffic: &mut Traffic,
        keepalive: &mut Keepalive,
    ) -> Poll<Ended>
    where
        S: AsyncRead + AsyncWrite + Unpin,
        D: AsyncRead + AsyncWrite + Unpin,
    {
        // The proxy's own ping to the destination leg, between two of its frames.
        if let Err(error) = self.queue_ping(cx, dst, keepalive) {
            return self.write_failed(WsError::Io(error));
        }
        for _ in 0..BUDGET {
            // Whatever `to` has not taken goes first; until it has, `from` is not read.
            match Pin::new(&mut *dst).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(error)) => return self.write_failed(WsError::Io(error)),
                Poll::Pending => return Poll::Pending,
            }
            let step = BUFS.with(|bufs| {
                let (input, out) = &mut *bufs.borrow_mut();
                self.step(cx, src, dst, input, out, traffic, keepalive)
            });
            match step {
                Poll::Ready(None) => {}
                Poll::Ready(Some(end)) => return Poll::Ready(end),
                Poll::Pending => return self.flush(cx, dst),
            }
        }
        // Let the other direction (and other tasks) run; come back right away.
        if let Poll::Ready(end) = self.flush(cx, dst) {
            return Poll::Ready(end);
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// The keepalive's ping to `to`, when one is due and `to` has taken what it was sent
    /// (else it waits for the next turn).
    fn queue_ping<D>(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut Wire<D>,
        keepalive: &mut Keepalive,
    ) -> std::io::Result<()>
    where
        D: AsyncWrite + Unpin,
    {
        if !keepalive.take_ping(self.to) {
            return Ok(());
        }
        match Pin::new(&mut *dst).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                let mask = self.to == Side::Upstream;
                dst.write_control(cx, 0x9, keepalive::PING, mask)?;
                self.unflushed = true;
                Ok(())
            }
            Poll::Ready(Err(error)) => Err(error),
            Poll::Pending => {
                keepalive.keep_ping(self.to);
                Ok(())
            }
        }
    }

    /// One read from `from`, walked and written on to `to`. `Ready(None)`: read more.
    #[allow(clippy::too_many_arguments)]
    fn step<S, D>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut Wire<S>,
        dst: &mut Wire<D>,
        input: &mut [u8],
        out: &mut Output,
        traffic: &mut Traffic,
        keepalive: &mut Keepalive,
    ) -> Poll<Option<Ended>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
        D: AsyncRead + AsyncWrite + Unpin,
    {
        if self.ping_held {
            let (held, len) = (self.head, self.have);
            match self.answer_ping(cx, src, &held[..len]) {
                Poll::Ready(Ok(())) => {
                    self.ping_held = false;
                    self.have = 0;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Some(self.pong_failed(error))),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.pong_waiting {
            match Pin::new(&mut *src).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.pong_waiting = false,
                Poll::Ready(Err(error)) => {
                    return Poll::Ready(Some(self.pong_failed(WsError::Io(error))))
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        let mut buf = ReadBuf::new(input);
        match Pin::new(&mut *src).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Some(self.read_failed(WsError::Io(e)))),
            Poll::Pending => return Poll::Pending,
        }
        let n = buf.filled().len();
        if n == 0 {
            // The connection ended without a close frame.
            let error = WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake);
            return Poll::Ready(Some(self.read_failed(error)));
        }
        self.read_at = Instant::now();
        keepalive.heard(self.from, self.read_at);
        let mut at = 0;
        while at < n {
            if dst.has_pending() {
                // `to` did not take all of what was written for it: the rest of this read
                // waits in `from`'s stream until it has (one unwritten write at a time).
                src.unread(&input[at..n]);
                return Poll::Ready(None);
            }
            out.clear();
            let walked = self.walk(input, at, n, out, traffic);
            // Pieces of data frames first: they were read before what stopped the walk.
            if let Err(end) = self.write_out(cx, dst, input, out, keepalive) {
                return Poll::Ready(Some(match walked.1 {
                    // `from` broke the protocol too: its stream cannot be walked on.
                    Walk::Violation(error) => self.read_failed(error),
                    // The close phase reads on from where this walk stopped.
                    other => {
                        self.put_back(src, &input[at + walked.0..n], &other);
                        end
                    }
                }));
            }
            match walked {
                (_, Walk::Done) => return Poll::Ready(None),
                // Inflated output filled what one walk may hand on; if `to` is behind, the rest
                // (still compressed) waits above.
                (used, Walk::Full) => at += used,
                (_, Walk::Violation(error)) => return Poll::Ready(Some(self.read_failed(error))),
                (used, Walk::Control) => {
                    at += used;
                    match self.control(cx, src) {
                        Ok(None) => {}
                        Ok(Some(end)) => return Poll::Ready(Some(end)),
                        Err(stop) => {
                            // `from` cannot take its pong now: read nothing more from it
                            // until it can; the rest of this read waits in its stream.
                            src.unread(&input[at..n]);
                            self.pong_waiting = true;
                            return stop;
                        }
                    }
                }
            }
        }
        Poll::Ready(None)
    }

    /// Puts back in front of `src`'s stream what a walk did not get to (`rest`), and the
    /// control frame it stopped at, if it did: the next walk starts there.
    fn put_back<S>(&mut self, src: &mut Wire<S>, rest: &[u8], walked: &Walk) {
        src.unread(rest);
        if let Walk::Control = walked {
            let (frame, len) = self.control_taken();
            src.unread(&frame[..len]);
        }
    }

    /// Bridging has stopped: a pong `from` is still owed is not written (a close frame
    /// follows, as tungstenite's replaced its queued pong), and its ping leaves `head`.
    pub(crate) fn stopped(&mut self) {
        if std::mem::take(&mut self.ping_held) {
            self.have = 0;
        }
        self.pong_waiting = false;
    }

    /// The control frame a walk stopped at ([`Walk::Control`]), taken out of `head` (read it
    /// before the next walk).
    pub(crate) fn take_control(&mut self) -> &[u8] {
        let have = std::mem::take(&mut self.have);
        &self.head[..have]
    }

    /// The same, as a copy: `head` may be walked into, or a held ping kept in it, meanwhile.
    fn control_taken(&mut self) -> ([u8; MAX_CONTROL], usize) {
        let len = self.have;
        let mut frame = [0u8; MAX_CONTROL];
        frame[..len].copy_from_slice(self.take_control());
        (frame, len)
    }

    /// Writes the pieces a walk left in `out` to `to`, from where they were read.
    fn write_out<D>(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut Wire<D>,
        input: &[u8],
        out: &Output,
        keepalive: &mut Keepalive,
    ) -> Result<(), Ended>
    where
        D: AsyncRead + AsyncWrite + Unpin,
    {
        if out.is_empty() {
            return Ok(());
        }
        if let Err(error) = write_parts(cx, dst, input, out) {
            return Err(self.write_failed_end(WsError::Io(error)));
        }
        self.unflushed = true;
        keepalive.data(self.read_at);
        Ok(())
    }

    /// The pong `from` was owed could not be written: `from`'s connection is gone.
    fn pong_failed(&self, error: WsError) -> Ended {
        Ended::WriteFailed {
            side: self.from,
            error,
        }
    }

    /// Answers the control frame a walk stopped at ([`Walk::Control`]): a close ends
    /// bridging, a ping gets its pong on `from`, a pong only showed `from` is alive (its
    /// read already said so). `Err` when reading must pause: the pong is not written yet.
    fn control<S>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut Wire<S>,
    ) -> Result<Option<Ended>, Poll<Option<Ended>>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (frame, len) = self.control_taken();
        match frame[0] & 0x0f {
            0x8 => Ok(Some(match close_frame(&frame[..len]) {
                Ok(close) => Ended::Closed {
                    by: self.from,
                    frame: close,
                },
                Err(error) => self.read_failed(error),
            })),
            // Per hop, as in the message bridge: at most one pong waits per leg; while it
            // cannot be written, `from` is not read (the flood stays in TCP's buffers).
            0x9 => match self.answer_ping(cx, src, &frame[..len]) {
                Poll::Ready(Ok(())) if self.pong_waiting => Err(Poll::Pending),
                Poll::Ready(Ok(())) => Ok(None),
                Poll::Ready(Err(error)) => Ok(Some(self.pong_failed(error))),
                Poll::Pending => {
                    // Kept until `from`'s connection has taken what it was sent before.
                    self.head[..len].copy_from_slice(&frame[..len]);
                    self.have = len;
                    self.ping_held = true;
                    Err(Poll::Pending)
                }
            },
            _ => Ok(None),
        }
    }

    /// Writes the pong for `ping` (a whole frame as `from` sent it) once `from`'s connection
    /// has taken what it was sent before; `pong_waiting` while the pong is not flushed yet.
    fn answer_ping<S>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut Wire<S>,
        ping: &[u8],
    ) -> Poll<Result<(), WsError>>
    where
        S: AsyncWrite + Unpin,
    {
        if let Err(error) = std::task::ready!(Pin::new(&mut *src).poll_flush(cx)) {
            return Poll::Ready(Err(WsError::Io(error)));
        }
        let (payload, len) = frame::control_payload(ping);
        // Toward the upstream the proxy is the client: its pong is masked.
        let mask = self.from == Side::Upstream;
        if let Err(error) = src.write_control(cx, 0xA, &payload[..len], mask) {
            return Poll::Ready(Err(WsError::Io(error)));
        }
        match Pin::new(&mut *src).poll_flush(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(error)) => return Poll::Ready(Err(WsError::Io(error))),
            Poll::Pending => self.pong_waiting = true,
        }
        Poll::Ready(Ok(()))
    }

    /// Walks `input[from..to]` (unmasking and masking payloads in place), adding to `out`
    /// what `to` gets. Returns how many bytes were used and why the walk stopped.
    pub(crate) fn walk(
        &mut self,
        input: &mut [u8],
        from: usize,
        to: usize,
        out: &mut Output,
        traffic: &mut Traffic,
    ) -> (usize, Walk) {
        let mut i = from;
        while i < to {
            if self.frame.is_some() && self.inflates() {
                // A compressed message whose plaintext goes on: inflated as far as `out` may
                // grow, so that a small frame cannot fill the memory.
                match self.inflate_frame(input, i, to, out, traffic) {
                    Ok((used, full)) => {
                        i += used;
                        if full {
                            return (i - from, Walk::Full);
                        }
                    }
                    Err(error) => return (i - from, Walk::Violation(error)),
                }
                continue;
            }
            if let Some(frame) = &mut self.frame {
                let take = frame.remaining.min((to - i) as u64) as usize;
                let range = (i, i + take);
                // The key as it applies from this piece's first byte.
                let key_in = frame.mask.map(|k| frame::key_at(k, frame.offset));
                frame.remaining -= take as u64;
                frame.offset += take as u64;
                let fin = frame.remaining == 0 && frame.fin;
                if frame.remaining == 0 {
                    self.frame = None;
                }
                i += take;
                if let Err(error) = self.piece(out, input, range, key_in, fin, traffic) {
                    return (i - from, Walk::Violation(error));
                }
                continue;
            }
            // A header (or a control frame) being collected: a header that starts here is
            // taken at once, as far as this read has it; the rest byte by byte.
            if self.have == 0 && to - i >= 2 {
                let n = frame::head_len(input[i + 1]).min(to - i);
                self.head[..n].copy_from_slice(&input[i..i + n]);
                self.have = n;
                i += n;
            } else {
                // Never past `head`: a header that failed its checks is not walked on (this
                // only guards that rule).
                let Some(byte) = self.head.get_mut(self.have) else {
                    let error = WsError::Protocol(ProtocolError::ControlFrameTooBig);
                    return (i - from, Walk::Violation(error));
                };
                *byte = input[i];
                self.have += 1;
                i += 1;
            }
            if self.have < 2 {
                continue;
            }
            let head_len = frame::head_len(self.head[1]);
            if self.have < head_len {
                continue;
            }
            let (first, second) = (self.head[0], self.head[1]);
            let opcode = OpCode::from(first & 0x0f);
            // The header is all here: its length is too.
            let len = frame::payload_len(&self.head[..head_len]).unwrap_or(u64::MAX);
            if self.have == head_len {
                if let Err(error) = self.check(first, second, opcode, len) {
                    return (i - from, Walk::Violation(error));
                }
            }
            if let OpCode::Control(_) = opcode {
                // Collected whole (header checks passed, so `len` is at most 125).
                if self.have as u64 == (head_len as u64).saturating_add(len) {
                    return (i - from, Walk::Control);
                }
                continue;
            }
            if let Err(error) = self.start_data(out, input, i, len, traffic) {
                return (i - from, Walk::Violation(error));
            }
        }
        (i - from, Walk::Done)
    }

    /// A data frame's header (in `head`, `len` bytes of payload to come) is complete at
    /// `input[at]`: its message starts or goes on; an empty frame is passed on at once.
    fn start_data(
        &mut self,
        out: &mut Output,
        input: &mut [u8],
        at: usize,
        len: u64,
        traffic: &mut Traffic,
    ) -> Result<(), WsError> {
        let (first, second) = (self.head[0], self.head[1]);
        let head_len = frame::head_len(second);
        let mask = (second & 0x80 != 0).then(|| {
            let k = &self.head[head_len - 4..head_len];
            [k[0], k[1], k[2], k[3]]
        });
        self.have = 0;
        if self.message.is_none() {
            let compressed = first & 0x40 != 0;
            let rsv1 = self.deflate.as_ref().is_some_and(|d| {
                if compressed {
                    d.passes()
                } else {
                    d.compresses()
                }
            });
            self.message = Some(MessageState {
                text: first & 0x0f == 0x1,
                len: 0,
                utf8: Utf8::default(),
                started: false,
                compressed,
                rsv1,
            });
        }
        if let Some(message) = self.message.as_mut().filter(|m| !m.compressed) {
            message.len += len;
        }
        let fin = first & 0x80 != 0;
        if len > 0 {
            self.frame = Some(FrameState {
                fin,
                remaining: len,
                mask,
                offset: 0,
            });
            return Ok(());
        }
        // Nothing will follow this header: the piece is empty.
        self.piece(out, input, (at, at), None, fin, traffic)
    }

    /// `input[range]`, a piece of the message in progress (`key_in`: the sender's mask still
    /// on it), checked and handed on to `out`; `fin` ends the message.
    fn piece(
        &mut self,
        out: &mut Output,
        input: &mut [u8],
        range: (usize, usize),
        key_in: Option<[u8; 4]>,
        fin: bool,
        traffic: &mut Traffic,
    ) -> Result<(), WsError> {
        let Some(message) = &self.message else {
            return Ok(());
        };
        let (text, compressed) = (message.text, message.compressed);
        let plain_in = !compressed && self.deflate.as_ref().is_some_and(|d| d.compresses());
        let key_in = if text || compressed || plain_in {
            // Text is checked, and compressed data inflated or compressed, in the clear.
            if let Some(key) = key_in {
                frame::apply_mask(&mut input[range.0..range.1], key);
            }
            None
        } else {
            key_in
        };
        if compressed {
            // Both legs agreed the same: the piece goes as it came, inflated to be checked.
            self.check_compressed(&input[range.0..range.1], fin, traffic)?;
            self.emit(out, input, range, None, fin);
        } else if plain_in {
            if text && !self.text_ok(&input[range.0..range.1], fin) {
                return Err(invalid_utf8());
            }
            self.hand_on(out, &input[range.0..range.1], fin, traffic)?;
        } else {
            if text && !self.text_ok(&input[range.0..range.1], fin) {
                return Err(invalid_utf8());
            }
            self.emit(out, input, range, key_in, fin);
        }
        if fin {
            self.finish_message(traffic);
        }
        Ok(())
    }

    /// Whether the text message in progress is still valid UTF-8 with `piece` (and, when
    /// `fin`, complete); binary messages always are.
    pub(super) fn text_ok(&mut self, piece: &[u8], fin: bool) -> bool {
        match &mut self.message {
            Some(m) if m.text => m.utf8.feed(piece) && (!fin || m.utf8.end()),
            _ => true,
        }
    }

    /// The checks tungstenite makes of a frame header, for the frames it does not see.
    fn check(&self, first: u8, second: u8, opcode: OpCode, len: u64) -> Result<(), WsError> {
        let protocol = |e| Err(WsError::Protocol(e));
        // RSV1 marks a compressed message, on its first frame only, where the leg agreed to
        // permessage-deflate (RFC 7692 section 6).
        let compressed_start = matches!(opcode, OpCode::Data(Data::Text | Data::Binary))
            && self
                .deflate
                .as_ref()
                .is_some_and(|d| d.accepts_compressed());
        if first & 0x30 != 0 || (first & 0x40 != 0 && !compressed_start) {
            return protocol(ProtocolError::NonZeroReservedBits);
        }
        let masked = second & 0x80 != 0;
        match self.from {
            Side::Client if !masked => return protocol(ProtocolError::UnmaskedFrameFromClient),
            Side::Upstream if masked => return protocol(ProtocolError::MaskedFrameFromServer),
            _ => {}
        }
        if let Some(max) = self.limits.max_frame {
            if len > max as u64 {
                return Err(WsError::Capacity(CapacityError::MessageTooLong {
                    size: usize::try_from(len).unwrap_or(usize::MAX),
                    max_size: max,
                }));
            }
        }
        match opcode {
            OpCode::Control(Control::Reserved(op)) => {
                protocol(ProtocolError::UnknownControlFrameType(op))
            }
            OpCode::Control(_) if first & 0x80 == 0 => {
                protocol(ProtocolError::FragmentedControlFrame)
            }
            OpCode::Control(_) if len > 125 => protocol(ProtocolError::ControlFrameTooBig),
            OpCode::Control(_) => Ok(()),
            OpCode::Data(Data::Reserved(op)) => protocol(ProtocolError::UnknownDataFrameType(op)),
            OpCode::Data(Data::Continue) if self.message.is_none() => {
                protocol(ProtocolError::UnexpectedContinueFrame)
            }
            // A compressed message's size is its plaintext's, checked as it is inflated.
            OpCode::Data(Data::Continue) if self.message.as_ref().is_some_and(|m| m.compressed) => {
                Ok(())
            }
            OpCode::Data(Data::Continue) => self.check_size(len),
            OpCode::Data(data) if self.message.is_some() => {
                protocol(ProtocolError::ExpectedFragment(data))
            }
            OpCode::Data(_) if first & 0x40 != 0 => Ok(()),
            OpCode::Data(_) => self.check_size(len),
        }
    }

    pub(super) fn check_size(&self, len: u64) -> Result<(), WsError> {
        let so_far = self.message.as_ref().map_or(0, |m| m.len);
        match self.limits.max_message {
            Some(max) if so_far.saturating_add(len) > max as u64 => {
                Err(WsError::Capacity(CapacityError::MessageTooLong {
                    size: usize::try_from(so_far.saturating_add(len)).unwrap_or(usize::MAX),
                    max_size: max,
                }))
            }
            _ => Ok(()),
        }
    }

    /// Adds `input[range]`, a piece of the message in progress, to `out` as a frame of its
    /// own. `key_in` is the sender's mask still on the piece; toward the upstream a fresh key
    /// goes on, in the same pass.
    pub(super) fn emit(
        &mut self,
        out: &mut Output,
        input: &mut [u8],
        range: (usize, usize),
        key_in: Option<[u8; 4]>,
        fin: bool,
    ) {
        let Some(message) = &mut self.message else {
            return;
        };
        let first = message.first_byte(fin);
        let key_out = (self.to == Side::Upstream).then(rand::random::<[u8; 4]>);
        let piece = &mut input[range.0..range.1];
        let (head, head_len) = frame::frame_head(first, piece.len(), key_out);
        out.copy(&head[..head_len]);
        let key = match (key_in, key_out) {
            (Some(a), Some(b)) => Some([a[0] ^ b[0], a[1] ^ b[1], a[2] ^ b[2], a[3] ^ b[3]]),
            (a, b) => a.or(b),
        };
        if let Some(key) = key {
            frame::apply_mask(piece, key);
        }
        if piece.len() < COPY_MAX {
            out.copy(piece);
        } else {
            out.parts.push(Part::Read(range.0, range.1));
        }
    }

    pub(super) fn finish_message(&mut self, traffic: &mut Traffic) {
        if let Some(message) = self.message.take() {
            traffic.add(message.len);
        }
    }

    /// Flushes `to` if anything was written; `Ready` only when the write failed.
    fn flush<D>(&mut self, cx: &mut Context<'_>, dst: &mut Wire<D>) -> Poll<Ended>
    where
        D: AsyncRead + AsyncWrite + Unpin,
    {
        if !self.unflushed {
            return Poll::Pending;
        }
        match Pin::new(&mut *dst).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                self.unflushed = false;
                Poll::Pending
            }
            Poll::Ready(Err(error)) => self.write_failed(WsError::Io(error)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The close phase's reading of `from` (see
    /// [`stream_close`](crate::session::frames::stream_close)): its frames walked on as while
    /// bridging, data handed to `to` when it is given (and counted in its traffic), until
    /// `from`'s close frame; without `to`, data messages are only counted, in `lost`. Pings are
    /// no longer answered: a close has been sent (RFC 6455 section 5.5.1).
    pub(crate) fn poll_until_close<S, D>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut Wire<S>,
        to: Option<(&mut Wire<D>, &mut Traffic)>,
        lost: &mut u64,
    ) -> Poll<Until>
    where
        S: AsyncRead + Unpin,
        D: AsyncWrite + Unpin,
    {
        let mut discarded = Traffic::uncounted();
        let (mut dst, traffic) = match to {
            Some((dst, traffic)) => (Some(dst), traffic),
            None => (None, &mut discarded),
        };
        let polled = self.poll_until_close_into(cx, src, &mut dst, traffic);
        *lost += discarded.messages;
        polled
    }

    fn poll_until_close_into<S, D>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut Wire<S>,
        dst: &mut Option<&mut Wire<D>>,
        traffic: &mut Traffic,
    ) -> Poll<Until>
    where
        S: AsyncRead + Unpin,
        D: AsyncWrite + Unpin,
    {
        loop {
            if let Some(dst) = dst.as_deref_mut() {
                if std::task::ready!(Pin::new(&mut *dst).poll_flush(cx)).is_err() {
                    return Poll::Ready(Until::WriteFailed);
                }
            }
            let polled = BUFS.with(|bufs| {
                let (input, out) = &mut *bufs.borrow_mut();
                let mut buf = ReadBuf::new(input);
                match Pin::new(&mut *src).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) if !buf.filled().is_empty() => {}
                    Poll::Ready(_) => return Poll::Ready(Some(Until::Ended)),
                    Poll::Pending => return Poll::Pending,
                }
                let n = buf.filled().len();
                let mut at = 0;
                while at < n {
                    if dst.as_deref().is_some_and(Wire::has_pending) {
                        // As while bridging: nothing more is walked until `to` has taken it.
                        src.unread(&input[at..n]);
                        return Poll::Ready(None);
                    }
                    out.clear();
                    let (used, walked) = self.walk(input, at, n, out, traffic);
                    at += used;
                    if let Some(dst) = dst.as_deref_mut() {
                        if !out.is_empty() && write_parts(cx, dst, input, out).is_err() {
                            if let Walk::Violation(_) = walked {
                                // The stream cannot be walked on.
                                return Poll::Ready(Some(Until::Ended));
                            }
                            // Read on, without `to`, from where this walk stopped.
                            self.put_back(src, &input[at..n], &walked);
                            return Poll::Ready(Some(Until::WriteFailed));
                        }
                    }
                    match walked {
                        Walk::Done | Walk::Full => {}
                        Walk::Violation(_) => return Poll::Ready(Some(Until::Ended)),
                        Walk::Control => {
                            let (frame, len) = self.control_taken();
                            if frame[0] & 0x0f == 0x8 {
                                return Poll::Ready(Some(match close_frame(&frame[..len]) {
                                    Ok(_) => Until::Closed,
                                    Err(_) => Until::Ended,
                                }));
                            }
                        }
                    }
                }
                Poll::Ready(None)
            });
            match polled {
                Poll::Ready(Some(until)) => return Poll::Ready(until),
                Poll::Ready(None) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn read_failed(&self, error: WsError) -> Ended {
        Ended::ReadFailed {
            side: self.from,
            error,
        }
    }

    fn write_failed_end(&self, error: WsError) -> Ended {
        Ended::WriteFailed {
            side: self.to,
            error,
        }
    }

    fn write_failed(&self, error: WsError) -> Poll<Ended> {
        Poll::Ready(self.write_failed_end(error))
    }
}

impl MessageState {
    /// The first byte of the next frame written for this message: FIN, RSV1 on its first
    /// frame when it goes out compressed, the opcode on its first frame.
    pub(super) fn first_byte(&mut self, fin: bool) -> u8 {
        let opcode = match (self.started, self.text) {
            (true, _) => 0x0,
            (false, true) => 0x1,
            (false, false) => 0x2,
        };
        let rsv1 = if self.rsv1 && !self.started { 0x40 } else { 0 };
        self.started = true;
        let fin = if fin { 0x80 } else { 0 };
        fin | rsv1 | opcode
    }
}

/// Reads and drops what `src` sends until its stream ends or fails, or, `once`, until its next
/// read. Through the thread's read buffer: nothing is held across a wait.
pub(crate) fn poll_discard<S>(cx: &mut Context<'_>, src: &mut Wire<S>, once: bool) -> Poll<()>
where
    S: AsyncRead + Unpin,
{
    BUFS.with(|bufs| {
        let (input, _) = &mut *bufs.borrow_mut();
        loop {
            let mut buf = ReadBuf::new(input);
            match Pin::new(&mut *src).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !once && !buf.filled().is_empty() => {}
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
}

/// A close frame's code and reason, checked as tungstenite checks them for the message
/// bridge: one byte of payload is a protocol error, a reason must be UTF-8 (else 1007), and a
/// code no endpoint may send (1005, 1006, 1015, reserved or out of range) becomes 1002
/// "Protocol violation", which the leg is answered with and the other leg is told.
pub(crate) fn close_frame(frame: &[u8]) -> Result<Option<CloseFrame>, WsError> {
    let (payload, len) = frame::control_payload(frame);
    let payload = &payload[..len];
    let (code, reason) = match payload {
        [] => return Ok(None),
        [_] => return Err(WsError::Protocol(ProtocolError::InvalidCloseSequence)),
        [a, b, reason @ ..] => (u16::from_be_bytes([*a, *b]), reason),
    };
    let Ok(reason) = std::str::from_utf8(reason) else {
        return Err(invalid_utf8());
    };
    let code = CloseCode::from(code);
    Ok(Some(if code.is_allowed() {
        CloseFrame {
            code,
            reason: reason.into(),
        }
    } else {
        CloseFrame {
            code: CloseCode::Protocol,
            reason: Utf8Bytes::from_static("Protocol violation"),
        }
    }))
}

/// Writes `out`'s parts (slices of itself and of `input`) to `dst` now, as far as it takes
/// them (the rest waits in `dst`).
fn write_parts<D>(
    cx: &mut Context<'_>,
    dst: &mut Wire<D>,
    input: &[u8],
    out: &Output,
) -> std::io::Result<()>
where
    D: AsyncWrite + Unpin,
{
    match out.parts.as_slice() {
        [Part::Own(start, end)] => dst.write_now(cx, &[&out.own[*start..*end]]),
        _ => {
            let slices: Vec<&[u8]> = out.slices(input).collect();
            dst.write_now(cx, &slices)
        }
    }
}

pub(super) fn invalid_utf8() -> WsError {
    WsError::Utf8("invalid UTF-8 in a text message".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::keepalive::Timeouts;
    use std::io;
    use std::task::Waker;

    /// A leg that has sent `bytes` (then nothing yet) and takes whatever is written.
    struct Sent(Vec<u8>);

    impl AsyncRead for Sent {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.0.is_empty() {
                return Poll::Pending;
            }
            let n = buf.remaining().min(self.0.len());
            buf.put_slice(&self.0[..n]);
            self.0.drain(..n);
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Sent {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A leg whose connection is gone: every write fails.
    struct Gone;

    impl AsyncRead for Gone {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Gone {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Found in review: a read holding a message and then a header that fails its checks (a
    /// 256-byte ping), while writing the message to the other leg fails. The failed write
    /// used to put back what followed the bad header and forget the violation; the close
    /// phase then walked on from that header and indexed past its buffer (a panic).
    #[tokio::test]
    async fn a_violation_and_a_failed_write_in_one_read_end_the_walk() {
        let key = [1, 2, 3, 4];
        let mut bytes = vec![0x82, 0x82, 1, 2, 3, 4, b'h' ^ key[0], b'i' ^ key[1]];
        bytes.extend_from_slice(&[0x89, 0x80 | 126, 0x01, 0x00, 9, 9, 9, 9]);
        bytes.extend(std::iter::repeat_n(7u8, 300));
        let (mut src, mut dst) = (Wire::new(Sent(bytes)), Wire::new(Gone));
        let limits = Limits {
            max_frame: Some(1 << 20),
            max_message: Some(1 << 20),
        };
        let mut flow = Flow::new(Side::Client, Side::Upstream, limits, None);
        let timeouts = Timeouts {
            ping_interval: None,
            ping_timeout: std::time::Duration::from_secs(30),
            idle_timeout: None,
            max_lifetime: None,
            max_lifetime_jitter: 0.0,
        };
        let mut keepalive = Keepalive::new(timeouts, None);
        let mut traffic = Traffic::uncounted();
        let mut cx = Context::from_waker(Waker::noop());
        let ended = flow.poll(&mut cx, &mut src, &mut dst, &mut traffic, &mut keepalive);
        assert!(
            matches!(
                ended,
                Poll::Ready(Ended::ReadFailed {
                    side: Side::Client,
                    ..
                })
            ),
            "the violation is what ended it: {ended:?}"
        );
        flow.stopped();
        let mut lost = 0;
        let until =
            flow.poll_until_close(&mut cx, &mut src, None::<(&mut Wire<Gone>, _)>, &mut lost);
        assert!(!matches!(until, Poll::Ready(Until::Closed)), "{until:?}");
    }
}
