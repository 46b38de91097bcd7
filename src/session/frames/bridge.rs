//! Step 5, with message hooks: bridge whole messages between the two legs until one side ends
//! the session. Without hooks, [`stream`](crate::session::frames::stream) forwards frames as they arrive; this
//! module and that one share their vocabulary from [`leg`](crate::session::leg).
//!
//! One task drives both directions, so there are no locks and no extra wake-ups. Each
//! direction reads a message, hands it to the other leg, and reads the next only once that
//! leg has taken it: a side that stops reading stops the other side's reads (TCP backpressure)
//! instead of growing a queue, and nothing is dropped. Messages are fed while the source has
//! more ready and flushed once when it has none, so a burst leaves in few writes.
//!
//! Text, binary and empty messages cross unchanged (fragmented ones arrive whole, as
//! tungstenite reassembles them). Pings and pongs are per hop: tungstenite answers each leg's
//! pings itself, so forwarding them would give the peer two pongs. Close frames end this
//! phase; [`close`](crate::session::frames::close) completes the close handshakes.

use std::pin::Pin;
use std::task::{Context, Poll};

use super::socket::Socket;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use std::sync::Arc;

use http::Extensions;

use crate::session::deflate;
use crate::session::frames::drive::{drive, Legs};
use crate::session::frames::wire::{Wire, DIRECT_MIN};
use crate::session::hooks::{
    Direction, Message as HookMessage, MessageContext, MessageHook, SessionInfo, Verdict,
    VerdictFuture,
};
use crate::session::keepalive::{self, Keepalive};
use crate::session::leg::{Ended, Side, Stopped, Traffic};

/// Messages a direction forwards in one go before letting the other direction run.
const BUDGET: usize = 64;

/// One part of a direction's work: `Ready(Ok(()))` go on, `Ready(Err(_))` the direction
/// ended, `Pending` wait (the part registered for a wake-up).
type Step = Poll<Result<(), Ended>>;

/// Does one part of [`Direction::poll`]; returns unless it says go on.
macro_rules! step {
    ($part:expr) => {
        match $part {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(end)) => return Poll::Ready(end),
            Poll::Pending => return Poll::Pending,
        }
    };
}

/// The message hooks of one session, and the state they share.
pub(crate) struct SessionHooks<'a> {
    pub(crate) session: Arc<SessionInfo>,
    pub(crate) to_upstream: Option<&'a MessageHook>,
    pub(crate) to_client: Option<&'a MessageHook>,
    pub(crate) state: Extensions,
}

/// Forwards messages both ways until a close frame or an error ends the session.
pub(crate) async fn run<C, U>(
    legs: Legs<'_, Socket<Wire<C>>, Socket<Wire<U>>>,
    mut hooks: SessionHooks<'_>,
    (c2u_deflate, u2c_deflate): (Option<Box<deflate::Codec>>, Option<Box<deflate::Codec>>),
) -> Stopped
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
    let mut c2u = Half::new(Side::Client, Side::Upstream, c2u_deflate);
    let mut u2c = Half::new(Side::Upstream, Side::Client, u2c_deflate);
    let ended = drive(entry, keepalive, |cx, keepalive| {
        if let Poll::Ready(end) = c2u.poll(cx, client, upstream, to_upstream, keepalive, &mut hooks)
        {
            return Poll::Ready(end);
        }
        u2c.poll(cx, upstream, client, to_client, keepalive, &mut hooks)
    })
    .await;
    Stopped {
        ended,
        held_for_client: u2c.pending,
        held_for_upstream: c2u.pending,
    }
}

/// One direction: a message read but not yet accepted by the destination, and whether the
/// destination has unflushed writes.
struct Half {
    from: Side,
    to: Side,
    /// Compressing what goes to the destination, when it agreed to permessage-deflate.
    deflate: Option<Box<deflate::Codec>>,
    pending: Option<Message>,
    unflushed: bool,
    /// An asynchronous hook's verdict being awaited, with the message it is about.
    awaiting: Option<(VerdictFuture, Message)>,
    /// When the last message was read: its delivery counts as activity for `idle_timeout`
    /// (one clock read per message, not two).
    read_at: Instant,
}

impl Half {
    fn new(from: Side, to: Side, deflate: Option<Box<deflate::Codec>>) -> Self {
        Self {
            from,
            to,
            deflate,
            pending: None,
            unflushed: false,
            awaiting: None,
            read_at: Instant::now(),
        }
    }

    /// Runs this direction's hook on a data message: it may be forwarded as is, replaced,
    /// dropped, or end the session. An asynchronous verdict is awaited before anything else is
    /// read from this side, so order is kept (and the hook's pace is backpressure).
    fn hook(&mut self, msg: Message, hooks: &mut SessionHooks<'_>) -> Option<Ended> {
        let (hook, direction) = match self.from {
            Side::Client => (hooks.to_upstream, Direction::ToUpstream),
            Side::Upstream => (hooks.to_client, Direction::ToClient),
        };
        match hook {
            None => {
                self.pending = Some(msg);
                None
            }
            Some(MessageHook::Sync(f)) => {
                let mut ctx = MessageContext {
                    session: &hooks.session,
                    direction,
                    state: &mut hooks.state,
                };
                let msg = HookMessage(msg);
                let verdict = f(&mut ctx, &msg);
                self.apply(verdict, msg.0)
            }
            Some(MessageHook::Async(f)) => {
                let fut = f(hooks.session.clone(), HookMessage(msg.clone()));
                self.awaiting = Some((fut, msg));
                None
            }
        }
    }

    fn apply(&mut self, verdict: Verdict, original: Message) -> Option<Ended> {
        match verdict {
            Verdict::Forward => self.pending = Some(original),
            Verdict::Replace(m) => self.pending = Some(m.0),
            Verdict::Drop => {}
            Verdict::Close(code, reason) => return Some(Ended::HookClosed(code.get(), reason)),
        }
        None
    }

    /// Moves messages from `src` to `dst` until `src` has none, `dst` takes no more, the
    /// budget is spent, or the direction ends: a verdict awaited, the message it let through
    /// sent, then one more read, in turn.
    fn poll<S, D>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut Socket<Wire<S>>,
        dst: &mut Socket<Wire<D>>,
        traffic: &mut Traffic,
        keepalive: &mut Keepalive,
        hooks: &mut SessionHooks<'_>,
    ) -> Poll<Ended>
    where
        S: AsyncRead + AsyncWrite + Unpin,
        D: AsyncRead + AsyncWrite + Unpin,
    {
        // The proxy's own ping to the destination leg, in line with its messages.
        match keepalive::queue_ping(cx, dst, keepalive, self.to) {
            Ok(queued) => self.unflushed |= queued,
            Err(error) => return Poll::Ready(self.write_failed(error)),
        }
        let mut budget = BUDGET;
        loop {
            step!(self.poll_verdict(cx, dst));
            step!(self.send_pending(cx, dst, traffic, keepalive));
            if budget == 0 {
                // Let the other direction (and other tasks) run; come back right away.
                cx.waker().wake_by_ref();
                step!(self.idle(cx, dst));
            }
            budget -= 1;
            step!(self.read_one(cx, src, dst, keepalive, hooks));
        }
    }

    /// An asynchronous hook's verdict, if one is awaited; nothing more is read from `src`
    /// until it is in.
    fn poll_verdict<D>(&mut self, cx: &mut Context<'_>, dst: &mut Socket<D>) -> Step
    where
        D: AsyncRead + AsyncWrite + Unpin,
    {
        let Some((fut, _)) = self.awaiting.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let Poll::Ready(verdict) = fut.as_mut().poll(cx) else {
            // Flush what was fed meanwhile.
            return self.idle(cx, dst);
        };
        match self.awaiting.take() {
            Some((_, original)) => match self.apply(verdict, original) {
                Some(end) => Poll::Ready(Err(end)),
                None => Poll::Ready(Ok(())),
            },
            None => Poll::Ready(Ok(())),
        }
    }

    /// Sends the message that is through (read, and let pass by its hook), if any.
    fn send_pending<D>(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut Socket<Wire<D>>,
        traffic: &mut Traffic,
        keepalive: &mut Keepalive,
    ) -> Step
    where
        D: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(msg) = self.pending.take() else {
            return Poll::Ready(Ok(()));
        };
        // A large message is written from its own bytes (see `wire`), after whatever
        // tungstenite holds; a small one joins tungstenite's batch. A compressed one is
        // written by the proxy too: tungstenite has no permessage-deflate.
        let direct = msg.len() >= DIRECT_MIN || self.deflate.is_some();
        let ready = if direct {
            Pin::new(&mut *dst).poll_flush(cx)
        } else {
            Pin::new(&mut *dst).poll_ready(cx)
        };
        match ready {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(error)) => return Poll::Ready(Err(self.write_failed(error))),
            Poll::Pending => {
                // Backpressure: keep the message, read nothing more from `src`.
                self.pending = Some(msg);
                return Poll::Pending;
            }
        }
        let len = msg.len() as u64;
        let msg = match self.deflate.as_mut() {
            Some(deflate) => match compress(deflate, msg, traffic, self.to) {
                Ok((first, payload)) => {
                    dst.get_mut()
                        .send_bytes(first, payload, self.to == Side::Upstream);
                    None
                }
                Err(msg) => Some(msg),
            },
            None if direct => dst
                .get_mut()
                .send_frame(msg, self.to == Side::Upstream)
                .err(),
            None => Some(msg),
        };
        if let Some(msg) = msg {
            if let Err(error) = Pin::new(&mut *dst).start_send(msg) {
                return Poll::Ready(Err(self.write_failed(error)));
            }
        }
        self.unflushed = true;
        traffic.add(len);
        keepalive.data(self.read_at);
        Poll::Ready(Ok(()))
    }

    /// Reads one message from `src` and acts on it.
    fn read_one<S, D>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut Socket<Wire<S>>,
        dst: &mut Socket<Wire<D>>,
        keepalive: &mut Keepalive,
        hooks: &mut SessionHooks<'_>,
    ) -> Step
    where
        S: AsyncRead + AsyncWrite + Unpin,
        D: AsyncRead + AsyncWrite + Unpin,
    {
        let msg = match Pin::new(&mut *src).poll_next(cx) {
            Poll::Ready(Some(Ok(msg))) => msg,
            Poll::Ready(Some(Err(error))) => return self.read_failed(error),
            // The stream reports its end only after a close or an error was returned.
            Poll::Ready(None) => return self.read_failed(WsError::ConnectionClosed),
            // The source has nothing more for now: push out what was fed.
            Poll::Pending => return self.idle(cx, dst),
        };
        // Anything from a leg, pongs included, shows it is alive.
        self.read_at = Instant::now();
        keepalive.heard(self.from, self.read_at);
        match msg {
            Message::Text(_) | Message::Binary(_) => match self.hook(msg, hooks) {
                Some(end) => Poll::Ready(Err(end)),
                None => Poll::Ready(Ok(())),
            },
            // Per hop: tungstenite has queued the pong on `src` already. A peer that pings and
            // never reads must not make the proxy queue pongs without end: once `src` cannot
            // take its pong, stop reading it until it can (the kernel's buffers and TCP hold
            // the rest of the flood).
            Message::Ping(_) => match Pin::new(&mut *src).poll_flush(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
                Poll::Ready(Err(error)) => Poll::Ready(Err(Ended::WriteFailed {
                    side: self.from,
                    error,
                })),
                Poll::Pending => self.idle(cx, dst),
            },
            Message::Pong(_) | Message::Frame(_) => Poll::Ready(Ok(())),
            Message::Close(frame) => Poll::Ready(Err(Ended::Closed {
                by: self.from,
                frame,
            })),
        }
    }

    /// Nothing more to do now: flush what was fed and wait (unless the flush failed).
    fn idle<D>(&mut self, cx: &mut Context<'_>, dst: &mut Socket<D>) -> Step
    where
        D: AsyncRead + AsyncWrite + Unpin,
    {
        match self.flush(cx, dst) {
            Poll::Ready(Some(end)) => Poll::Ready(Err(end)),
            _ => Poll::Pending,
        }
    }

    fn read_failed(&self, error: WsError) -> Step {
        Poll::Ready(Err(Ended::ReadFailed {
            side: self.from,
            error,
        }))
    }

    /// Flushes `dst` if anything was fed; `Ready(Some(_))` only when the write failed.
    fn flush<D>(&mut self, cx: &mut Context<'_>, dst: &mut Socket<D>) -> Poll<Option<Ended>>
    where
        D: AsyncRead + AsyncWrite + Unpin,
    {
        if !self.unflushed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut *dst).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                self.unflushed = false;
                Poll::Ready(None)
            }
            Poll::Ready(Err(error)) => Poll::Ready(Some(Ended::WriteFailed {
                side: self.to,
                error,
            })),
            Poll::Pending => Poll::Pending,
        }
    }

    fn write_failed(&self, error: WsError) -> Ended {
        Ended::WriteFailed {
            side: self.to,
            error,
        }
    }
}

/// `msg` compressed for a leg that agreed to permessage-deflate: the first byte of its one
/// frame (FIN, RSV1, opcode) and its payload; the message back if it is not a data message or
/// cannot be compressed (it then goes as it is, which the extension allows).
fn compress(
    deflate: &mut deflate::Codec,
    msg: Message,
    traffic: &mut Traffic,
    to: Side,
) -> Result<(u8, bytes::Bytes), Message> {
    let opcode = match &msg {
        Message::Text(_) => 0x1,
        Message::Binary(_) => 0x2,
        _ => return Err(msg),
    };
    let mut compressed = Vec::new();
    let plain: &[u8] = match &msg {
        Message::Text(t) => t.as_bytes(),
        Message::Binary(b) => b,
        _ => &[],
    };
    if deflate.compress(plain, true, &mut compressed).is_err() {
        return Err(msg);
    }
    if to == Side::Client {
        traffic.compressed(compressed.len() as u64);
    }
    Ok((0x80 | 0x40 | opcode, compressed.into()))
}
