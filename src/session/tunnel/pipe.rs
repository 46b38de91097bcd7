//! One direction of a tunnel: `from`'s bytes read into a per-thread scratch buffer and written
//! straight on to `to`, their frames followed as they pass ([`track`](super::track)), large
//! payloads spliced between plain sockets ([`splice`](super::splice)), and the proxy's own
//! frames put between frames.

use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::splice::{self, SplicePipe, Spliced};
use super::track::{Frames, Tally};
use crate::metrics;
use crate::session::keepalive::Keepalive;
use crate::session::leg::{Side, Traffic};
use crate::transport::Transport;

const SCRATCH: usize = 256 << 10;
/// Payloads at least this long are spliced when both legs are plain sockets (see `splice`).
const SPLICE_MIN: u64 = 16 << 10;
/// Bytes one direction moves before letting the other run.
const BUDGET: usize = 256 << 10;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// One direction of the tunnel: `from`'s bytes to `to`.
#[derive(Debug)]
pub(super) struct Pipe {
    from: Side,
    to: Side,
    pub(super) frames: Frames,
    /// Bytes the destination has not taken yet (empty, and unallocated, when idle).
    held: Vec<u8>,
    pos: usize,
    /// A frame of the proxy's own for `to`, written at the next frame boundary.
    inject: Option<Vec<u8>>,
    flow: Flow,
    pub(super) input: Input,
    /// A close frame has crossed (either way): an EOF now ends the handshake, so it is passed
    /// on. Before that, an EOF means the peer vanished, and the run loop decides.
    pub(super) handshake_started: bool,
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
pub(super) enum Input {
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
pub(super) enum PipeEnd {
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
    pub(super) fn new(from: Side, to: Side) -> Self {
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
    pub(super) fn written_out(&self) -> bool {
        self.held.is_empty()
            && self.inject.is_none()
            && self.spliced.as_ref().is_none_or(SplicePipe::is_empty)
    }

    /// Queues `frame` for `to` at the next boundary; `then_discard` stops forwarding after it.
    pub(super) fn queue(&mut self, frame: Vec<u8>, then_discard: bool) {
        self.inject = Some(frame);
        if then_discard && self.flow == Flow::Forward {
            self.flow = Flow::DiscardAfterInject;
        }
    }

    /// Nothing more goes to `to`, spliced bytes included.
    pub(super) fn discard(&mut self) {
        self.flow = Flow::Discard;
        self.spliced = None;
        self.lost += u64::from(self.spliced_message.take().is_some());
    }

    /// Data messages of `from`'s that did not reach `to`, once the pipe has stopped: those
    /// discarded, those whose last bytes were still held or in the kernel pipe, and a message
    /// cut short (part of it passed, its end never came).
    pub(super) fn undeliverable(&mut self) -> u64 {
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
    pub(super) fn poll(
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

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use super::*;
    use crate::session::tunnel::track::test_frame;

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
        let stream: Vec<u8> = (0..10)
            .flat_map(|_| test_frame(0x82, 20, false, &[]))
            .collect();
        sender.write_all(&stream).await.unwrap();
        let mut pipe = Pipe::new(Side::Upstream, Side::Client);
        let mut traffic = Traffic::new(Side::Client);
        let mut keepalive = Keepalive::new(
            crate::session::keepalive::Timeouts {
                ping_interval: None,
                ping_timeout: Duration::from_secs(1),
                idle_timeout: None,
                max_lifetime: None,
                max_lifetime_jitter: 0.0,
            },
            None,
        );
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
}
