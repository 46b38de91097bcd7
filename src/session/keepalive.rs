//! Keepalive pings and session timeouts: what replaces nginx's 60 s `proxy_read_timeout`.
//!
//! Each leg is pinged when it has been quiet for `ping_interval`; a leg that has sent nothing
//! (no pong, no message) within `ping_timeout` of a ping is dead, and the session ends: its
//! socket is dropped and the other leg gets 1001 (client gone) or 1011 (upstream gone). Quiet
//! but healthy sessions live indefinitely. Optionally, `idle_timeout` (no data messages either
//! way) and `max_lifetime` end a session with 1001 on both legs.
//!
//! Sessions opened in one burst (after a deploy, a network blip) would otherwise keep their
//! timers in step and act as a herd: each session's first ping comes at a random point between
//! half of `ping_interval` and all of it, and its lifetime is `max_lifetime` shortened by a
//! random part of `max_lifetime_jitter` (never lengthened: the setting is a security bound).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::registry::Entry;
use crate::session::leg::{Expired, Side};

/// The payload of the proxy's own keepalive pings (both modes).
pub(crate) const PING: &[u8] = b"axum-ws-proxy";

/// The session timers' settings; `None` is off.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) ping_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_lifetime: Option<Duration>,
    /// The largest part of `max_lifetime` a session's own lifetime may be shortened by, 0 to 1
    /// (the layer's setter keeps it there).
    pub(crate) max_lifetime_jitter: f64,
}

impl Timeouts {
    /// One session's lifetime: `max_lifetime` less a random part of it, up to the jitter.
    fn lifetime(&self) -> Option<Duration> {
        let jitter = self.max_lifetime_jitter;
        self.max_lifetime
            .map(|d| d.mul_f64(1.0 - jitter * rand::random::<f64>()))
    }
}

#[derive(Debug)]
struct Liveness {
    last_heard: Instant,
    /// When the unanswered ping became due.
    ping_since: Option<Instant>,
    /// A ping waits to be written to this leg.
    ping_due: bool,
}

impl Liveness {
    fn new(now: Instant) -> Self {
        Self {
            last_heard: now,
            ping_since: None,
            ping_due: false,
        }
    }
}

/// The timers of one session, driven by the bridge's task.
#[derive(Debug)]
pub(crate) struct Keepalive {
    timeouts: Timeouts,
    started: Instant,
    /// This session's own lifetime (see [`Timeouts::lifetime`]).
    lifetime: Option<Duration>,
    last_data: Instant,
    client: Liveness,
    upstream: Liveness,
    sleep: Option<Pin<Box<Sleep>>>,
    /// The waker `sleep` was last polled with: until it fires, polling it again with the same
    /// waker changes nothing, and the session's task polls on every wake-up.
    armed_for: Option<Waker>,
    /// The session's registry entry, told of data messages (a drain closes idle ones first)
    /// at most every [`TOUCH_EVERY`]: comparing two instants costs a few instructions,
    /// making the entry's stamp from one costs about 70.
    entry: Option<Arc<Entry>>,
    next_touch: Instant,
}

/// How stale a session's last activity in the registry may be.
const TOUCH_EVERY: Duration = Duration::from_millis(100);

impl Keepalive {
    pub(crate) fn new(timeouts: Timeouts, entry: Option<Arc<Entry>>) -> Self {
        let now = Instant::now();
        // The first ping of each leg at a random point of the second half of the interval:
        // as if the leg had last been heard up to half an interval ago.
        let heard = timeouts
            .ping_interval
            .and_then(|every| now.checked_sub(every.mul_f64(rand::random::<f64>() / 2.0)))
            .unwrap_or(now);
        let mut ka = Self {
            timeouts,
            started: now,
            lifetime: timeouts.lifetime(),
            last_data: now,
            client: Liveness::new(heard),
            upstream: Liveness::new(heard),
            sleep: None,
            armed_for: None,
            entry,
            next_touch: now,
        };
        if let Some(at) = ka.next_deadline() {
            ka.sleep = Some(Box::pin(tokio::time::sleep_until(at)));
        }
        ka
    }

    fn leg(&mut self, side: Side) -> &mut Liveness {
        match side {
            Side::Client => &mut self.client,
            Side::Upstream => &mut self.upstream,
        }
    }

    /// Anything (a message, a ping, a pong) arrived from `side`: it is alive.
    pub(crate) fn heard(&mut self, side: Side, now: Instant) {
        let leg = self.leg(side);
        leg.last_heard = now;
        leg.ping_since = None;
    }

    /// A data message was forwarded.
    pub(crate) fn data(&mut self, now: Instant) {
        self.last_data = now;
        if now >= self.next_touch {
            if let Some(entry) = &self.entry {
                entry.touch(now);
                self.next_touch = now + TOUCH_EVERY;
            }
        }
    }

    /// Whether a ping should be written to `side` now; clears the request.
    pub(crate) fn take_ping(&mut self, side: Side) -> bool {
        std::mem::take(&mut self.leg(side).ping_due)
    }

    /// Puts a ping back when `side` cannot take it yet.
    pub(crate) fn keep_ping(&mut self, side: Side) {
        self.leg(side).ping_due = true;
    }

    fn next_deadline(&self) -> Option<Instant> {
        let t = &self.timeouts;
        let leg_deadline = |leg: &Liveness| {
            t.ping_interval.map(|every| match leg.ping_since {
                Some(since) => since + t.ping_timeout,
                None => leg.last_heard + every,
            })
        };
        [
            leg_deadline(&self.client),
            leg_deadline(&self.upstream),
            t.idle_timeout.map(|d| self.last_data + d),
            self.lifetime.map(|d| self.started + d),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Wakes when a timer is due: schedules pings, or reports what expired.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Expired> {
        loop {
            let Some(sleep) = self.sleep.as_mut() else {
                return Poll::Pending;
            };
            let armed = self.armed_for.as_ref();
            if armed.is_some_and(|w| w.will_wake(cx.waker())) && !sleep.is_elapsed() {
                return Poll::Pending;
            }
            if sleep.as_mut().poll(cx).is_pending() {
                self.armed_for = Some(cx.waker().clone());
                return Poll::Pending;
            }
            self.armed_for = None;
            // The timer fired: check every deadline, then re-arm below.
            let now = Instant::now();
            let t = self.timeouts;
            if self.lifetime.is_some_and(|d| now >= self.started + d) {
                return Poll::Ready(Expired::Lifetime);
            }
            if t.idle_timeout.is_some_and(|d| now >= self.last_data + d) {
                return Poll::Ready(Expired::Idle);
            }
            if let Some(every) = t.ping_interval {
                for side in [Side::Client, Side::Upstream] {
                    let leg = self.leg(side);
                    match leg.ping_since {
                        Some(since) if now >= since + t.ping_timeout => {
                            return Poll::Ready(Expired::Unresponsive(side, t.ping_timeout));
                        }
                        None if now >= leg.last_heard + every => {
                            leg.ping_since = Some(now);
                            leg.ping_due = true;
                        }
                        _ => {}
                    }
                }
            }
            // Re-arm for the next deadline; the loop polls it so the waker is registered. Due
            // pings are written by the bridge's directions, polled right after this.
            match (self.next_deadline(), self.sleep.as_mut()) {
                (Some(at), Some(sleep)) => {
                    sleep.as_mut().reset(at.max(now + Duration::from_millis(1)))
                }
                _ => self.sleep = None,
            }
        }
    }
}

/// Frame mode: the proxy's own ping to leg `to`, when one is due, queued on its WebSocket
/// between two of the frames going there. `Ok(true)` when a ping was queued (flush it); a ping
/// that cannot be queued yet stays due.
pub(crate) fn queue_ping<D>(
    cx: &mut Context<'_>,
    dst: &mut D,
    keepalive: &mut Keepalive,
    to: Side,
) -> Result<bool, tokio_tungstenite::tungstenite::Error>
where
    D: futures_util::Sink<
            tokio_tungstenite::tungstenite::Message,
            Error = tokio_tungstenite::tungstenite::Error,
        > + Unpin,
{
    use tokio_tungstenite::tungstenite::Message;
    if !keepalive.take_ping(to) {
        return Ok(false);
    }
    match Pin::new(&mut *dst).poll_ready(cx) {
        Poll::Ready(Ok(())) => {
            let ping = Message::Ping(bytes::Bytes::from_static(PING));
            Pin::new(&mut *dst).start_send(ping)?;
            Ok(true)
        }
        Poll::Ready(Err(error)) => Err(error),
        Poll::Pending => {
            keepalive.keep_ping(to);
            Ok(false)
        }
    }
}
