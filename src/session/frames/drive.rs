//! The loop both frame bridges run: shutdown and the session timers come first, then the two
//! directions, each until it has nothing to do.

use std::future::poll_fn;
use std::task::{Context, Poll};

use crate::registry::Entry;
use crate::session::keepalive::Keepalive;
use crate::session::leg::{Ended, Traffic};

/// A frame-mode session's two legs (each a `Wire` for the streaming bridge, a tungstenite
/// `Socket` around one for the message bridge) and what both directions share while bridging.
pub(crate) struct Legs<'a, C, U> {
    pub(crate) client: &'a mut C,
    pub(crate) upstream: &'a mut U,
    pub(crate) to_upstream: &'a mut Traffic,
    pub(crate) to_client: &'a mut Traffic,
    pub(crate) keepalive: &'a mut Keepalive,
    pub(crate) entry: &'a Entry,
}

/// Polls `directions` (both of a bridge's, in turn) until one of them, a close the proxy asks
/// for (a drain, rebalancing), or a keepalive or session timer ends the session.
pub(crate) async fn drive(
    entry: &Entry,
    keepalive: &mut Keepalive,
    mut directions: impl FnMut(&mut Context<'_>, &mut Keepalive) -> Poll<Ended>,
) -> Ended {
    let mut closing = entry.closing();
    poll_fn(|cx| {
        if let Poll::Ready(request) = closing.poll(cx) {
            return Poll::Ready(Ended::Requested(request));
        }
        if let Poll::Ready(expired) = keepalive.poll(cx) {
            return Poll::Ready(Ended::Expired(expired));
        }
        directions(cx, keepalive)
    })
    .await
}
