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

mod pipe;
pub(crate) mod splice;
pub(crate) mod track;

use std::future::poll_fn;
use std::task::{Context, Poll};
use std::time::Duration;

use self::pipe::{Input, Pipe, PipeEnd};
use crate::registry::Entry;
use crate::session::close_policy::{fit_reason, Outcome, Report};
use crate::session::frame;
use crate::session::hooks::ClosedBy;
use crate::session::keepalive::{Keepalive, PING};
use crate::session::leg::{Side, Traffic};
use crate::transport::Transport;

/// A control frame of the proxy's own; masked when it goes to the upstream (the proxy is the
/// upstream's client), with a fresh key as for the frame bridge's own frames.
fn control_frame(opcode: u8, payload: &[u8], to: Side) -> Vec<u8> {
    let key = (to == Side::Upstream).then(rand::random::<[u8; 4]>);
    let (head, head_len) = frame::frame_head(0x80 | opcode, payload.len(), key);
    let mut frame = Vec::with_capacity(head_len + payload.len());
    frame.extend_from_slice(&head[..head_len]);
    frame.extend_from_slice(payload);
    if let Some(key) = key {
        frame::apply_mask(&mut frame[head_len..], key);
    }
    frame
}

fn close_frame(code: u16, reason: &str, to: Side) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(fit_reason(reason).as_bytes());
    control_frame(0x8, &payload, to)
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
    entry: &Entry,
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
    let close = tunnel.open(entry).await;
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
    async fn open(&mut self, entry: &Entry) -> Option<Outcome> {
        let mut closing = entry.closing();
        poll_fn(|cx| {
            if let Poll::Ready(request) = closing.poll(cx) {
                return Poll::Ready(Some(Outcome::requested(request)));
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
