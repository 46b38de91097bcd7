//! Tunnel mode: after a validated 101, bytes are spliced both ways, as nginx does, so
//! extensions such as permessage-deflate work end to end and nothing is unmasked, validated or
//! re-framed.
//!
//! Unlike a blind copy, the tunnel reads frame headers as they pass (never payloads, except the
//! two bytes of a close code). That keeps what a proxy needs: it knows where frames start, so it
//! can put its own frames between them — keepalive pings, and close 1001 on shutdown, idle
//! timeout or max lifetime — and it counts messages and sees close codes for logs and metrics.
//!
//! Memory: bytes are read into a per-thread scratch buffer and written straight on; a session
//! holds a buffer of its own only while its destination is not accepting bytes, and frees it
//! once drained. An idle tunnel holds no buffers.

pub(crate) mod splice;

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use self::splice::{SplicePipe, Spliced};
use crate::metrics;
use crate::registry::Sessions;
use crate::session::close_policy::Outcome;
use crate::session::close_policy::{fit_reason, Report};
use crate::session::frames::wire;
use crate::session::keepalive::{Keepalive, PING};
use crate::session::leg::{Side, Traffic};
use crate::transport::Transport;
use crate::ClosedBy;

const SCRATCH: usize = 256 << 10;
/// Payloads at least this long are spliced when both legs are plain sockets (see `splice`).
const SPLICE_MIN: u64 = 16 << 10;
/// Bytes one direction moves before letting the other run.
const BUDGET: usize = 256 << 10;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// Follows frame boundaries in one direction's byte stream.
#[derive(Clone, Debug, Default)]
struct Frames {
    head: [u8; 14],
    have: usize,
    remaining: u64,
    opcode: u8,
    fin: bool,
    mask: Option<[u8; 4]>,
    offset: u64,
    code: [u8; 2],
    /// The close code sent in this direction (1005: a close frame without one).
    closed: Option<u16>,
    /// Payload bytes of the data message in progress.
    payload: u64,
    /// A data message has begun and not ended.
    open: bool,
}

/// Where the data messages a tracker sees end are counted: the bytes that carried them were
/// written to the destination, wait in the pipe's held buffer (counted when written, by that
/// buffer's own tracker), or were discarded.
enum Tally<'a> {
    Forwarded(&'a mut Traffic),
    Held,
    Lost(&'a mut u64),
}

impl Tally<'_> {
    fn count(&mut self, payload: u64) {
        match self {
            Tally::Forwarded(traffic) => traffic.add(payload),
            Tally::Held => {}
            Tally::Lost(lost) => **lost += 1,
        }
    }
}

impl Frames {
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }

    /// Some of a data message's bytes have passed and its end has not.
    fn mid_message(&self) -> bool {
        self.open || (self.have > 0 && self.head[0] & 0x0f <= 0x2)
    }

    /// Walks `data`, counting completed data messages into `tally`; returns how many.
    fn feed(&mut self, data: &[u8], tally: &mut Tally<'_>) -> u64 {
        let mut completed = 0;
        let mut ended = |payload: Option<u64>, tally: &mut Tally<'_>| {
            if let Some(payload) = payload {
                tally.count(payload);
                completed += 1;
            }
        };
        let mut i = 0;
        while i < data.len() {
            if self.remaining == 0 && self.have == 0 {
                // The usual case: whole frames, header and payload, within this read.
                if let Some((wire_len, payload, fin, opcode)) = whole_frame(&data[i..]) {
                    i += wire_len;
                    self.opcode = opcode;
                    if opcode <= 0x2 {
                        self.payload += payload;
                        self.open = !fin;
                        ended(fin.then(|| std::mem::take(&mut self.payload)), tally);
                    }
                    continue;
                }
            }
            if self.remaining == 0 {
                // A whole header within this read, parsed where it lies.
                let rest = &data[i..];
                if self.have == 0 && rest.len() >= 2 {
                    let n = wire::head_len(rest[1]);
                    if let Some(head) = rest.get(..n) {
                        // Parsed where it lies: no copy into `head`.
                        self.start(head);
                        i += n;
                        if self.remaining == 0 {
                            ended(self.end(), tally);
                        }
                        continue;
                    }
                }
                self.head[self.have] = data[i];
                self.have += 1;
                i += 1;
                if self.have >= 2 && self.have == wire::head_len(self.head[1]) {
                    let head = self.head;
                    self.start(&head[..self.have]);
                    if self.remaining == 0 {
                        ended(self.end(), tally);
                    }
                }
            } else {
                let take = self.remaining.min((data.len() - i) as u64) as usize;
                if self.opcode == 0x8 && self.offset < 2 {
                    for (k, b) in data[i..i + take].iter().take(2).enumerate() {
                        let at = (self.offset as usize) + k;
                        if at < 2 {
                            self.code[at] = b ^ self.mask.map_or(0, |m| m[at % 4]);
                        }
                    }
                }
                if self.opcode <= 0x2 {
                    self.payload += take as u64;
                }
                self.remaining -= take as u64;
                self.offset += take as u64;
                i += take;
                if self.remaining == 0 {
                    ended(self.end(), tally);
                }
            }
        }
        completed
    }

    /// The payload bytes a frame needs before it ends, when they may pass unread: a data frame
    /// whose header is complete. Zero otherwise.
    fn unread_payload(&self) -> u64 {
        if self.have == 0 && self.opcode <= 0x2 {
            self.remaining
        } else {
            0
        }
    }

    /// `n` payload bytes of the current data frame passed without being read (spliced);
    /// returns the message's payload length if that completed a data message.
    fn skip(&mut self, n: u64) -> Option<u64> {
        let n = n.min(self.remaining);
        self.payload += n;
        self.remaining -= n;
        self.offset += n;
        if self.remaining == 0 {
            self.end()
        } else {
            None
        }
    }

    /// A frame begins with header `h` (exactly [`wire::head_len`] bytes).
    fn start(&mut self, h: &[u8]) {
        self.fin = h[0] & 0x80 != 0;
        self.opcode = h[0] & 0x0f;
        // The key is the header's last four bytes.
        let n = h.len();
        self.mask = (h[1] & 0x80 != 0).then(|| [h[n - 4], h[n - 3], h[n - 2], h[n - 1]]);
        self.remaining = wire::payload_len(h).unwrap_or_default();
        self.offset = 0;
        self.have = 0;
        self.code = [0; 2];
        if self.opcode <= 0x2 {
            self.open = true;
        }
    }

    /// A frame ended; returns the payload length of the data message it completed, if any.
    fn end(&mut self) -> Option<u64> {
        if self.opcode == 0x8 {
            self.closed = Some(if self.offset >= 2 {
                u16::from_be_bytes(self.code)
            } else {
                1005
            });
        }
        if self.fin && self.opcode <= 0x2 {
            self.open = false;
            return Some(std::mem::take(&mut self.payload));
        }
        None
    }
}

/// A frame that lies whole at the start of `data`, header and payload, and is not a close
/// (whose code is read on the way): its length on the wire, its payload's, FIN bit and opcode.
fn whole_frame(data: &[u8]) -> Option<(usize, u64, bool, u8)> {
    let (&first, &second) = (data.first()?, data.get(1)?);
    let opcode = first & 0x0f;
    if opcode == 0x8 {
        return None;
    }
    let len = wire::payload_len(data)?;
    let total = wire::head_len(second).checked_add(usize::try_from(len).ok()?)?;
    (total <= data.len()).then_some((total, len, first & 0x80 != 0, opcode))
}

/// For the fuzz target: `data` fed in pieces sized by `cuts` (an odd cut passes a data
/// payload unread, as a splice does) ends as `data` fed whole.
#[cfg(feature = "__fuzz")]
pub(crate) fn fuzz_frames(data: &[u8], cuts: &[u8]) {
    let (mut whole, mut whole_traffic) = (Frames::default(), Traffic::new(Side::Upstream));
    let whole_done = whole.feed(data, &mut Tally::Forwarded(&mut whole_traffic));
    let (mut split, mut split_traffic) = (Frames::default(), Traffic::new(Side::Upstream));
    let mut split_done = 0;
    let (mut at, mut cut) = (0, cuts.iter().cycle());
    while at < data.len() {
        let c = cut.next().copied().unwrap_or(255);
        let n = (usize::from(c) + 1).min(data.len() - at);
        let unread = split.unread_payload();
        if c % 2 == 1 && unread > 0 {
            let n = n.min(usize::try_from(unread).unwrap_or(usize::MAX));
            if let Some(payload) = split.skip(n as u64) {
                split_traffic.add(payload);
                split_done += 1;
            }
            at += n;
        } else {
            split_done += split.feed(&data[at..at + n], &mut Tally::Forwarded(&mut split_traffic));
            at += n;
        }
        assert!(split.have < 14);
    }
    assert_eq!(split_done, whole_done);
    assert_eq!(split_traffic.messages, whole_traffic.messages);
    assert_eq!(split_traffic.bytes, whole_traffic.bytes);
    assert_eq!(split.closed, whole.closed);
    assert_eq!(split.at_boundary(), whole.at_boundary());
    assert_eq!(split.mid_message(), whole.mid_message());
    assert_eq!((split.have, split.remaining), (whole.have, whole.remaining));
}

/// A control frame of the proxy's own; masked when it goes to the upstream (the proxy is the
/// upstream's client), with a fresh key as for the frame bridge's own frames.
fn control_frame(opcode: u8, payload: &[u8], to: Side) -> Vec<u8> {
    let key = (to == Side::Upstream).then(rand::random::<[u8; 4]>);
    let (head, head_len) = wire::frame_head(0x80 | opcode, payload.len(), key);
    let mut frame = Vec::with_capacity(head_len + payload.len());
    frame.extend_from_slice(&head[..head_len]);
    frame.extend_from_slice(payload);
    if let Some(key) = key {
        wire::apply_mask(&mut frame[head_len..], key);
    }
    frame
}

fn close_frame(code: u16, reason: &str, to: Side) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(fit_reason(reason).as_bytes());
    control_frame(0x8, &payload, to)
}

/// One direction of the tunnel: `from`'s bytes to `to`.
#[derive(Debug)]
struct Pipe {
    from: Side,
    to: Side,
    frames: Frames,
    /// Bytes the destination has not taken yet (empty, and unallocated, when idle).
    held: Vec<u8>,
    pos: usize,
    /// A frame of the proxy's own for `to`, written at the next frame boundary.
    inject: Option<Vec<u8>>,
    flow: Flow,
    input: Input,
    /// A close frame has crossed (either way): an EOF now ends the handshake, so it is passed
    /// on. Before that, an EOF means the peer vanished, and the run loop decides.
    handshake_started: bool,
    /// Payload bytes on their way through the kernel (see `splice`); they go out before
    /// anything else.
    spliced: Option<SplicePipe>,
    splicing: Splicing,
    /// Follows the frames in `held` as they are written, so that a message counts as
    /// forwarded once its last byte has gone, and as undeliverable if it never goes. Boxed:
    /// only a destination that is behind has one.
    held_frames: Option<Box<Frames>>,
    /// The payload length of a data message whose last bytes wait in `spliced`.
    spliced_message: Option<u64>,
    /// Data messages read from `from` that were discarded (after the proxy's close).
    lost: u64,
}

/// Whether `from`'s bytes still go to `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Forward,
    /// The queued frame is the proxy's close: forward until it has gone, then discard.
    DiscardAfterInject,
    /// Read `from` only to see its close answer; nothing more goes to `to`.
    Discard,
}

/// How far `from` has been read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Input {
    Open,
    /// `from` sent EOF (or is dead).
    Eof,
    /// ... and the EOF was passed on: `to`'s write side is shut down.
    Shut,
}

/// Whether payloads may be spliced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Splicing {
    /// Large payloads are spliced when both legs are plain sockets; reads fill the scratch buffer.
    Ready,
    /// Frames have been large: read only up to the next header, so a large payload is left in
    /// the socket to be spliced.
    HeaderReads,
    /// No pipe could be made: buffered from now on.
    Unavailable,
}

/// What stopped a pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PipeEnd {
    /// `from` closed its side (EOF) and, unless discarding, `to`'s write side was shut down.
    Finished,
    /// A read from or a write to this side failed: its connection is gone.
    Lost(Side),
}

/// What a pipe does next, decided in one place ([`Pipe::next`]), in this order of priority.
#[derive(Debug)]
enum Next {
    /// Bytes in the kernel pipe go out before anything else...
    FlushSpliced,
    /// ...then bytes the destination has not taken...
    WriteHeld,
    /// ...then the proxy's own frame, between frames (or anywhere once `from` is done).
    Inject,
    /// `from` is done: pass its EOF on if the close handshake allows, and stop.
    Finish,
    /// Inside a large data frame's payload between two plain sockets: this many bytes left.
    Splice(usize),
    Read,
}

/// One state's work: `Ok(n)` moved `n` bytes from `from` (go on), `Err` stopped the pipe.
type Stepped = Poll<Result<usize, PipeEnd>>;

impl Pipe {
    fn new(from: Side, to: Side) -> Self {
        Self {
            from,
            to,
            frames: Frames::default(),
            held: Vec::new(),
            pos: 0,
            inject: None,
            flow: Flow::Forward,
            input: Input::Open,
            handshake_started: false,
            spliced: None,
            splicing: Splicing::Ready,
            held_frames: None,
            spliced_message: None,
            lost: 0,
        }
    }

    /// Nothing of this direction's is waiting to be written: no held bytes, no frame of the
    /// proxy's own, nothing in its pipe.
    fn written_out(&self) -> bool {
        self.held.is_empty()
            && self.inject.is_none()
            && self.spliced.as_ref().is_none_or(SplicePipe::is_empty)
    }

    /// Queues `frame` for `to` at the next boundary; `then_discard` stops forwarding after it.
    fn queue(&mut self, frame: Vec<u8>, then_discard: bool) {
        self.inject = Some(frame);
        if then_discard && self.flow == Flow::Forward {
            self.flow = Flow::DiscardAfterInject;
        }
    }

    /// Nothing more goes to `to`, spliced bytes included.
    fn discard(&mut self) {
        self.flow = Flow::Discard;
        self.spliced = None;
        self.lost += u64::from(self.spliced_message.take().is_some());
    }

    /// Data messages of `from`'s that did not reach `to`, once the pipe has stopped: those
    /// discarded, those whose last bytes were still held or in the kernel pipe, and a message
    /// cut short (part of it passed, its end never came).
    fn undeliverable(&mut self) -> u64 {
        let mut lost = self.lost + u64::from(self.spliced_message.is_some());
        if let Some(mut frames) = self.held_frames.take() {
            let unwritten = self.held.get(self.pos..).unwrap_or_default();
            frames.feed(unwritten, &mut Tally::Lost(&mut lost));
        }
        lost + u64::from(self.frames.mid_message())
    }

    fn next(&self, plain_sockets: bool) -> Next {
        if self.spliced.as_ref().is_some_and(|p| !p.is_empty()) {
            return Next::FlushSpliced;
        }
        if self.pos < self.held.len() {
            return Next::WriteHeld;
        }
        let from_done = self.input != Input::Open;
        let discarding = self.flow == Flow::Discard;
        if self.inject.is_some() && (self.frames.at_boundary() || from_done || discarding) {
            return Next::Inject;
        }
        if from_done {
            return Next::Finish;
        }
        let unread = self.frames.unread_payload();
        if unread >= SPLICE_MIN
            && !discarding
            && self.splicing != Splicing::Unavailable
            && plain_sockets
        {
            return Next::Splice(usize::try_from(unread).unwrap_or(usize::MAX));
        }
        Next::Read
    }

    /// Moves bytes until `from` has none, `to` takes no more, the budget is spent, or the
    /// pipe stops: each pass asks [`next`](Self::next) what to do and does that one thing.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut Transport,
        dst: &mut Transport,
        traffic: &mut Traffic,
        keepalive: &mut Keepalive,
    ) -> Poll<PipeEnd> {
        let mut moved = 0;
        loop {
            let next = self.next(src.socket().is_some() && dst.socket().is_some());
            if matches!(next, Next::Splice(_) | Next::Read) && moved >= BUDGET {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let stepped = match next {
                Next::FlushSpliced => self.flush_spliced(cx, dst, traffic),
                Next::WriteHeld => self.write_held(cx, dst, traffic),
                Next::Inject => self.take_inject(),
                Next::Finish => self.finish(cx, dst),
                Next::Splice(len) => self.splice(cx, src, dst, len, traffic, keepalive),
                Next::Read => self.read(cx, src, dst, traffic, keepalive),
            };
            match stepped {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(end)) => return Poll::Ready(end),
                Poll::Ready(Ok(n)) => moved += n,
            }
        }
    }

    fn flush_spliced(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut Transport,
        traffic: &mut Traffic,
    ) -> Stepped {
        let (Some(pipe), Some(to)) = (self.spliced.as_mut(), dst.socket()) else {
            return Poll::Ready(Err(PipeEnd::Lost(self.to)));
        };
        match pipe.poll_flush(cx, to) {
            Poll::Ready(Ok(())) => {
                if let Some(payload) = self.spliced_message.take() {
                    traffic.add(payload);
                }
                Poll::Ready(Ok(0))
            }
            Poll::Ready(Err(_)) => Poll::Ready(Err(PipeEnd::Lost(self.to))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn write_held(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut Transport,
        traffic: &mut Traffic,
    ) -> Stepped {
        match Pin::new(&mut *dst).poll_write(cx, &self.held[self.pos..]) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(Err(PipeEnd::Lost(self.to))),
            Poll::Ready(Ok(n)) => {
                if let Some(frames) = &mut self.held_frames {
                    let written = &self.held[self.pos..self.pos + n];
                    frames.feed(written, &mut Tally::Forwarded(traffic));
                }
                self.pos += n;
                if self.pos == self.held.len() {
                    // Give the buffer back: an idle tunnel holds none.
                    self.held = Vec::new();
                    self.pos = 0;
                    self.held_frames = None;
                }
                Poll::Ready(Ok(0))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn take_inject(&mut self) -> Stepped {
        self.held = self.inject.take().unwrap_or_default();
        if self.flow == Flow::DiscardAfterInject {
            self.discard();
        }
        Poll::Ready(Ok(0))
    }

    fn finish(&mut self, cx: &mut Context<'_>, dst: &mut Transport) -> Stepped {
        let pass_on = self.handshake_started || self.frames.closed.is_some();
        if pass_on && self.input == Input::Eof && self.flow != Flow::Discard {
            if Pin::new(&mut *dst).poll_shutdown(cx).is_pending() {
                return Poll::Pending;
            }
            self.input = Input::Shut;
        }
        Poll::Ready(Err(PipeEnd::Finished))
    }

    fn splice(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut Transport,
        dst: &mut Transport,
        len: usize,
        traffic: &mut Traffic,
        keepalive: &mut Keepalive,
    ) -> Stepped {
        let (Some(from), Some(to)) = (src.socket(), dst.socket()) else {
            return Poll::Ready(Ok(0)); // `next` saw both; never here.
        };
        match splice::step(cx, from, to, len, &mut self.spliced) {
            Spliced::Pending => Poll::Pending,
            Spliced::Eof => {
                self.input = Input::Eof;
                Poll::Ready(Ok(0))
            }
            Spliced::SourceLost => Poll::Ready(Err(PipeEnd::Lost(self.from))),
            Spliced::DestinationLost => Poll::Ready(Err(PipeEnd::Lost(self.to))),
            Spliced::Moved(n) => {
                let now = Instant::now();
                keepalive.heard(self.from, now);
                if let Some(payload) = self.frames.skip(n as u64) {
                    keepalive.data(now);
                    // Counted once its last bytes have left the kernel pipe too.
                    match &self.spliced {
                        Some(pipe) if !pipe.is_empty() => self.spliced_message = Some(payload),
                        _ => traffic.add(payload),
                    }
                }
                metrics::spliced(n);
                self.splicing = Splicing::HeaderReads;
                Poll::Ready(Ok(n))
            }
            Spliced::Unavailable => {
                self.splicing = Splicing::Unavailable;
                Poll::Ready(Ok(0))
            }
        }
    }

    /// Reads what `from` has into the per-thread scratch buffer and writes it straight on;
    /// only what `to` does not take is copied into `held`.
    fn read(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut Transport,
        dst: &mut Transport,
        traffic: &mut Traffic,
        keepalive: &mut Keepalive,
    ) -> Stepped {
        SCRATCH_BUF.with(|cell| {
            let mut scratch = cell.borrow_mut();
            // After a spliced frame, read just a header's worth: if the next frame is large
            // too, its payload is left in the socket to be spliced.
            let want = match self.splicing {
                Splicing::HeaderReads => 14,
                Splicing::Ready | Splicing::Unavailable => SCRATCH,
            };
            let mut buf = ReadBuf::new(&mut scratch[..want]);
            match Pin::new(&mut *src).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(Err(PipeEnd::Lost(self.from))),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    self.input = Input::Eof;
                    return Poll::Ready(Ok(0));
                }
                Poll::Ready(Ok(())) => {}
            }
            let data = buf.filled();
            let (completed, forwarded) = if self.flow == Flow::Discard {
                let lost = &mut self.lost;
                (self.frames.feed(data, &mut Tally::Lost(lost)), Ok(()))
            } else {
                self.forward(cx, dst, data, traffic)
            };
            self.track(completed, keepalive);
            forwarded?;
            Poll::Ready(Ok(data.len()))
        })
    }

    /// After `completed` data messages were seen in a read.
    fn track(&mut self, completed: u64, keepalive: &mut Keepalive) {
        let now = Instant::now();
        keepalive.heard(self.from, now);
        if completed > 0 {
            keepalive.data(now);
        }
        if self.frames.unread_payload() < SPLICE_MIN {
            if self.splicing == Splicing::HeaderReads {
                self.splicing = Splicing::Ready;
            }
            if self.spliced.as_ref().is_some_and(SplicePipe::is_empty) {
                // Frames are small again: give the pipe's descriptors back.
                self.spliced = None;
            }
        }
    }

    /// Writes `data` to `to` as far as it takes it and holds the rest; follows its frames,
    /// counting the messages written as forwarded. Returns how many messages ended in `data`.
    fn forward(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut Transport,
        data: &[u8],
        traffic: &mut Traffic,
    ) -> (u64, Result<(), PipeEnd>) {
        let mut written = 0;
        let mut result = Ok(());
        while written < data.len() {
            match Pin::new(&mut *dst).poll_write(cx, &data[written..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    result = Err(PipeEnd::Lost(self.to));
                    break;
                }
                Poll::Ready(Ok(n)) => written += n,
                Poll::Pending => break,
            }
        }
        let (sent, rest) = data.split_at(written);
        let mut completed = self.frames.feed(sent, &mut Tally::Forwarded(traffic));
        if rest.is_empty() {
            return (completed, result);
        }
        if result.is_err() {
            completed += self.frames.feed(rest, &mut Tally::Lost(&mut self.lost));
        } else {
            // Only now does the session hold bytes of its own; their messages count as they
            // are written.
            self.held_frames = Some(Box::new(self.frames.clone()));
            completed += self.frames.feed(rest, &mut Tally::Held);
            self.held.extend_from_slice(rest);
        }
        (completed, result)
    }
}

/// Sets up the close of leg `side`: `to_leg` writes to it, `from_leg` reads from it.
fn prepare_close(to_leg: &mut Pipe, from_leg: &mut Pipe, side: Side, code: u16, close: &Outcome) {
    if close.dead == Some(side) {
        // Nothing more goes to a dead leg, and nothing more comes from it.
        from_leg.input = Input::Eof;
        from_leg.discard();
        to_leg.discard();
        return;
    }
    // Sent between frames; the other leg's bytes are no longer forwarded after it.
    to_leg.queue(close_frame(code, &close.reason, side), true);
    // The leg's answer counts from now on.
    from_leg.frames.closed = None;
}

/// Splices `client` and `upstream` until both sides are done. Keepalive pings, shutdown and
/// the session timers act between frames; a close the proxy starts is bounded by
/// `close_timeout`.
pub(crate) async fn run(
    client: Transport,
    upstream: Transport,
    to_upstream: &mut Traffic,
    to_client: &mut Traffic,
    keepalive: &mut Keepalive,
    sessions: &Sessions,
    close_timeout: Duration,
) -> Report {
    let mut tunnel = Tunnel {
        client,
        upstream,
        c2u: Pipe::new(Side::Client, Side::Upstream),
        u2c: Pipe::new(Side::Upstream, Side::Client),
        to_upstream,
        to_client,
        keepalive,
        c_done: false,
        u_done: false,
        first_close: None,
    };
    let close = tunnel.open(sessions).await;
    if close.is_none() && !(tunnel.c_done && tunnel.u_done) {
        let _ = tokio::time::timeout(close_timeout, tunnel.finish_handshake()).await;
    }
    let outcome = match close {
        Some(close) => tunnel.close(close, close_timeout).await,
        None => tunnel.closed_by_peers(),
    };
    let mut report = Report::from(outcome);
    report.undeliverable = tunnel.c2u.undeliverable() + tunnel.u2c.undeliverable();
    report
}

/// Both legs, both directions and what the phases share.
struct Tunnel<'a> {
    client: Transport,
    upstream: Transport,
    /// The client's bytes to the upstream, and the other way round.
    c2u: Pipe,
    u2c: Pipe,
    to_upstream: &'a mut Traffic,
    to_client: &'a mut Traffic,
    keepalive: &'a mut Keepalive,
    c_done: bool,
    u_done: bool,
    /// The side whose close frame crossed first.
    first_close: Option<Side>,
}

impl Tunnel<'_> {
    /// Moves what `from`'s leg has to the other leg (the one place a pipe is driven).
    fn poll_pipe(&mut self, cx: &mut Context<'_>, from: Side) -> Poll<PipeEnd> {
        match from {
            Side::Client => self.c2u.poll(
                cx,
                &mut self.client,
                &mut self.upstream,
                self.to_upstream,
                self.keepalive,
            ),
            Side::Upstream => self.u2c.poll(
                cx,
                &mut self.upstream,
                &mut self.client,
                self.to_client,
                self.keepalive,
            ),
        }
    }

    fn pipe(&mut self, from: Side) -> &mut Pipe {
        match from {
            Side::Client => &mut self.c2u,
            Side::Upstream => &mut self.u2c,
        }
    }

    fn done(&mut self, from: Side) -> &mut bool {
        match from {
            Side::Client => &mut self.c_done,
            Side::Upstream => &mut self.u_done,
        }
    }

    /// Open: splice until both sides finish (`None`), or something makes the proxy close the
    /// session (what it decided).
    async fn open(&mut self, sessions: &Sessions) -> Option<Outcome> {
        let draining = sessions.draining();
        tokio::pin!(draining);
        poll_fn(|cx| {
            if draining.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(Outcome::going_away("proxy shutting down")));
            }
            if let Poll::Ready(expired) = self.keepalive.poll(cx) {
                return Poll::Ready(Some(Outcome::expired(expired)));
            }
            for (pipe, side) in [
                (&mut self.u2c, Side::Client),
                (&mut self.c2u, Side::Upstream),
            ] {
                if self.keepalive.take_ping(side) {
                    pipe.queue(control_frame(0x9, PING, side), false);
                }
            }
            let started = self.first_close.is_some();
            for from in [Side::Client, Side::Upstream] {
                if *self.done(from) {
                    continue;
                }
                self.pipe(from).handshake_started = started;
                let polled = self.poll_pipe(cx, from);
                if self.first_close.is_none() && self.pipe(from).frames.closed.is_some() {
                    self.first_close = Some(from);
                }
                match polled {
                    Poll::Pending => {}
                    Poll::Ready(PipeEnd::Finished) => {
                        *self.done(from) = true;
                        if self.first_close.is_none() {
                            // EOF without any close frame: that side went away.
                            let why = format!("{} went away without a close frame", from.as_str());
                            let by = ClosedBy::from_side(from);
                            return Poll::Ready(Some(Outcome::gone(from, why, by)));
                        }
                    }
                    Poll::Ready(PipeEnd::Lost(side)) => {
                        if self.first_close.is_some() {
                            // The close handshake had started: a lost connection now is its end.
                            return Poll::Ready(None);
                        }
                        let why = format!("{} connection lost", side.as_str());
                        let by = ClosedBy::from_side(side);
                        return Poll::Ready(Some(Outcome::gone(side, why, by)));
                    }
                }
            }
            // Both done, or the close handshake crossed and one side finished: the rest is
            // bounded by the caller, so a peer that never closes its socket cannot hold the
            // session open.
            let (c_done, u_done) = (self.c_done, self.u_done);
            if (c_done && u_done) || (self.first_close.is_some() && (c_done || u_done)) {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// The peers' close handshake has crossed and one side finished: the other's EOF is its
    /// end, to be passed on.
    async fn finish_handshake(&mut self) {
        let from = if self.c_done {
            Side::Upstream
        } else {
            Side::Client
        };
        self.pipe(from).handshake_started = true;
        poll_fn(|cx| self.poll_pipe(cx, from).map(|_| ())).await;
    }

    /// The peers closed each other through the tunnel.
    fn closed_by_peers(&self) -> Outcome {
        match self.first_close {
            Some(side) => {
                let pipe = match side {
                    Side::Client => &self.c2u,
                    Side::Upstream => &self.u2c,
                };
                Outcome::peer_closed(side, pipe.frames.closed.unwrap_or(1005), String::new())
            }
            // Both ends finished with no close frame seen either way: counted as the client's.
            None => Outcome::peer_closed(Side::Client, 1006, String::new()),
        }
    }

    /// Closing: the proxy's close frame to each live leg, then its answer (or the deadline).
    /// `u2c` carries frames to the client and reads the upstream; `c2u` the other way round.
    async fn close(&mut self, close: Outcome, timeout: Duration) -> Outcome {
        prepare_close(
            &mut self.u2c,
            &mut self.c2u,
            Side::Client,
            close.client_code,
            &close,
        );
        prepare_close(
            &mut self.c2u,
            &mut self.u2c,
            Side::Upstream,
            close.upstream_code,
            &close,
        );
        let mut answered = [
            close.dead == Some(Side::Client),
            close.dead == Some(Side::Upstream),
        ];
        let closing = poll_fn(|cx| {
            for (i, from) in [Side::Client, Side::Upstream].into_iter().enumerate() {
                if answered[i] && self.pipe(from).written_out() {
                    continue;
                }
                let polled = self.poll_pipe(cx, from);
                if self.pipe(from).frames.closed.is_some() || polled.is_ready() {
                    answered[i] = true;
                }
            }
            // Done once both live legs answered and every close frame was written.
            let written = self.c2u.written_out() && self.u2c.written_out();
            if answered[0] && answered[1] && written {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        let _ = tokio::time::timeout(timeout, closing).await;
        close
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(first: u8, len: usize, mask: bool, payload: &[u8]) -> Vec<u8> {
        let m = if mask { 0x80 } else { 0 };
        let mut f = vec![first];
        match len {
            0..=125 => f.push(m | len as u8),
            126..=0xffff => {
                f.push(m | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        // A key of each frame's own: a mask taken from the wrong header bytes shows.
        let key = [first, len as u8, 0x33, 0x44];
        if mask {
            f.extend_from_slice(&key);
        }
        let body = (0..len).map(|i| {
            let b = payload.get(i).copied().unwrap_or(b'x');
            if mask {
                b ^ key[i % 4]
            } else {
                b
            }
        });
        f.extend(body);
        f
    }

    /// Whole frames in one read take the fast path, whole headers the parse-in-place one,
    /// headers split across reads the byte-by-byte one. All must end the same.
    #[test]
    fn frames_are_followed_the_same_however_the_reads_cut_them() {
        let mut stream = Vec::new();
        stream.extend(frame(0x81, 5, true, b"hello"));
        stream.extend(frame(0x82, 200, false, &[]));
        stream.extend(frame(0x01, 3, true, b"abc")); // a fragmented text message...
        stream.extend(frame(0x89, 0, true, &[])); // ...a ping between its fragments...
        stream.extend(frame(0x80, 70_000, true, &[])); // ...and its last fragment
        stream.extend(frame(0x82, 0, false, &[]));
        stream.extend(frame(0x88, 4, true, &[0x03, 0xe9, b'o', b'k']));
        let feed = |cuts: &mut dyn Iterator<Item = usize>| {
            let (mut frames, mut traffic) = (Frames::default(), Traffic::new(Side::Upstream));
            let (mut at, mut done) = (0, 0);
            while at < stream.len() {
                let n = cuts.next().unwrap_or(1).clamp(1, stream.len() - at);
                done += frames.feed(&stream[at..at + n], &mut Tally::Forwarded(&mut traffic));
                at += n;
            }
            (
                done,
                traffic.messages,
                traffic.bytes,
                frames.closed,
                frames.at_boundary(),
            )
        };
        let whole = feed(&mut std::iter::once(stream.len()));
        assert_eq!(whole, (4, 4, 5 + 200 + 70_003, Some(1001), true));
        assert_eq!(feed(&mut std::iter::repeat(1)), whole);
        assert_eq!(feed(&mut (1..=17).cycle()), whole);
        assert_eq!(feed(&mut [3, 1, 2, 7, 5].into_iter().cycle()), whole);
    }

    /// A message counts where its last byte went (forwarded or lost), and one whose end never
    /// came is cut, whichever frame or header its stream stopped in.
    #[test]
    fn messages_count_where_their_last_byte_went() {
        let hello = frame(0x81, 5, true, b"hello");
        let (first, last) = (frame(0x01, 3, true, b"abc"), frame(0x80, 3, true, b"def"));
        let binary = frame(0x82, 4, true, b"wxyz");
        let stream = [hello.clone(), first.clone(), last, binary].concat();
        let mut frames = Frames::default();
        let (mut traffic, mut lost) = (Traffic::new(Side::Upstream), 0);
        // The greeting and the first fragment go, then two bytes of the next header.
        let sent = hello.len() + first.len() + 2;
        frames.feed(&stream[..sent], &mut Tally::Forwarded(&mut traffic));
        assert!(frames.mid_message());
        frames.feed(&stream[sent..], &mut Tally::Lost(&mut lost));
        assert_eq!((traffic.messages, traffic.bytes, lost), (1, 5, 2));
        assert!(!frames.mid_message());
        for cut in 1..stream.len() {
            let mut frames = Frames::default();
            frames.feed(&stream[..cut], &mut Tally::Held);
            let ends = [hello.len(), stream.len() - 10, stream.len()];
            let expected = !ends.contains(&cut);
            assert_eq!(frames.mid_message(), expected, "cut at {cut}");
        }
        // A ping between fragments neither ends nor starts a message.
        let mut frames = Frames::default();
        let ping = frame(0x89, 0, true, &[]);
        frames.feed(&[first, ping].concat(), &mut Tally::Held);
        assert!(frames.mid_message());
    }

    /// Bytes the destination has not taken wait in the pipe: their messages count as forwarded
    /// once written, and as undeliverable if the pipe stops first.
    #[tokio::test]
    async fn held_messages_count_once_written_or_as_undeliverable() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut sender, src) = tokio::io::duplex(1 << 16);
        // The destination takes 64 bytes until some are read.
        let (dst, mut receiver) = tokio::io::duplex(64);
        let (mut src, mut dst) = (
            Transport::other(Box::new(src)),
            Transport::other(Box::new(dst)),
        );
        // Ten messages of 22 bytes on the wire each.
        let stream: Vec<u8> = (0..10).flat_map(|_| frame(0x82, 20, false, &[])).collect();
        sender.write_all(&stream).await.unwrap();
        let mut pipe = Pipe::new(Side::Upstream, Side::Client);
        let mut traffic = Traffic::new(Side::Client);
        let mut keepalive = Keepalive::new(crate::session::keepalive::Timeouts {
            ping_interval: None,
            ping_timeout: Duration::from_secs(1),
            idle_timeout: None,
            max_lifetime: None,
        });
        let mut run = |traffic: &mut Traffic| {
            let polled = poll_fn(|cx| {
                let p = pipe.poll(cx, &mut src, &mut dst, traffic, &mut keepalive);
                Poll::Ready(p.is_pending())
            });
            futures_util::FutureExt::now_or_never(polled).unwrap()
        };
        assert!(run(&mut traffic), "waits for the destination");
        // 64 bytes went: two messages and part of a third.
        assert_eq!(traffic.messages, 2);
        let mut taken = [0u8; 30];
        receiver.read_exact(&mut taken).await.unwrap();
        assert!(run(&mut traffic));
        // 94 bytes: four messages.
        assert_eq!(traffic.messages, 4);
        assert_eq!(pipe.undeliverable(), 6);
    }

    #[test]
    fn a_long_close_reason_is_cut_on_a_character_boundary() {
        let frame = close_frame(1001, &"é".repeat(100), Side::Client);
        let reason = &frame[4..];
        assert!(reason.len() <= 123);
        assert!(
            std::str::from_utf8(reason).is_ok(),
            "the cut split a character"
        );
    }
}
