//! Step 6 for the streaming bridge: the close handshakes on both legs, carried out on the
//! raw streams by the same walkers that bridged them.
//!
//! Which leg gets which code is decided in [`close`](super::close) (from
//! [`close_policy`](crate::session::close_policy)), for both bridges; this module carries the
//! decision out as the message bridge's tungstenite does, frame for frame:
//!
//! - a leg that sent a close frame gets its echo (a forbidden code already became 1002); the
//!   client's connection is then closed, the upstream's waited on to close (the client side
//!   of a WebSocket lets its server close first);
//! - a leg the proxy closes gets its close frame, and is read until its answer: what it sends
//!   meanwhile is read to its end (a message in progress too) and counted as undeliverable;
//! - a leg that broke the protocol gets its close frame and its connection shut down; when it
//!   is the client, the upstream is closed first and what it sends before answering still
//!   reaches the client, as it would have while bridging.
//!
//! Each leg's ending gets `close_timeout`; a leg that does not answer in time is dropped.
//! Close frames are built on the stack and written at once; a close phase that goes as
//! expected allocates nothing (bytes a leg does not take at once wait in its `Wire`).

use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use super::close::{plan, LegEnd};
use super::stream::{poll_discard, Flow, Flows, Until};
use super::wire::Wire;
use crate::session::close_policy::{fit_reason, Report};
use crate::session::frame;
use crate::session::leg::{Ended, Side, Traffic};

/// How a streamed session's legs end, decided before the close phase starts (so that the
/// phase keeps only this across its waits).
pub(crate) struct Plan {
    client: Ending,
    upstream: Ending,
    /// The client broke the protocol while the upstream is to be closed: the upstream goes
    /// first, and what it sends before it answers still reaches the client.
    relayed: bool,
    report: Report,
}

impl Plan {
    /// Each leg's ending and the report, from how bridging stopped.
    pub(crate) fn of(ended: Ended) -> Self {
        // What a leg that closed is answered with: its own close frame, as checked.
        let echo = match &ended {
            Ended::Closed { frame, .. } => frame.clone(),
            _ => None,
        };
        let (client, upstream, report) = plan(ended);
        let relayed = matches!((&client, &upstream), (LegEnd::Fail(_), LegEnd::Initiate(_)));
        Self {
            client: Ending::of(client, echo.clone()),
            upstream: Ending::of(upstream, echo),
            relayed,
            report,
        }
    }
}

/// Completes the close on both legs of a streamed session as `plan` says, and reports how it
/// ended.
///
/// Everything is borrowed and no buffer is held across a wait: this runs inside the session's
/// future, which must not grow for it (the session's size is what an idle session costs).
pub(crate) async fn finish<C, U>(
    client: &mut Wire<C>,
    upstream: &mut Wire<U>,
    plan: Plan,
    flows: &mut Flows,
    to_client: &mut Traffic,
    timeout: Duration,
) -> Report
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let Flows { c2u, u2c } = flows;
    let Plan {
        client: client_end,
        upstream: upstream_end,
        relayed,
        mut report,
    } = plan;
    // Data messages read on a closing leg, which no one can take any more.
    let (mut client_lost, mut upstream_lost) = (0, 0);
    if relayed {
        // The client broke the protocol: the upstream is closed first, and what it sends
        // before it answers still reaches the client.
        let relay = async {
            if send_close(upstream, Side::Upstream, upstream_end.close.as_ref())
                .await
                .is_err()
            {
                return;
            }
            let until = poll_fn(|cx| {
                let to = Some((&mut *client, &mut *to_client));
                u2c.poll_until_close(cx, upstream, to, &mut upstream_lost)
            })
            .await;
            let until = match until {
                // The client is gone after all: the rest is read and counted.
                Until::WriteFailed => read_until_close(upstream, u2c, &mut upstream_lost).await,
                until => until,
            };
            if until == Until::Closed {
                // The proxy is the upstream's client: its server closes the connection first.
                closed_by_peer(upstream).await;
            }
        };
        let _ = tokio::time::timeout(timeout, relay).await;
        // Done with the upstream, answered or not: a FIN now if nothing is left to write (else
        // its connection closes with the session), not when the client's ending is over.
        let _ = poll_fn(|cx| Poll::Ready(Pin::new(&mut *upstream).poll_shutdown(cx))).await;
        let ending = end_leg(client, c2u, Side::Client, &client_end, &mut client_lost);
        let _ = tokio::time::timeout(timeout, ending).await;
    } else {
        // Both legs end at once, so one deadline serves both.
        let both = async {
            tokio::join!(
                end_leg(client, c2u, Side::Client, &client_end, &mut client_lost),
                end_leg(
                    upstream,
                    u2c,
                    Side::Upstream,
                    &upstream_end,
                    &mut upstream_lost
                ),
            )
        };
        let _ = tokio::time::timeout(timeout, both).await;
    }
    report.undeliverable = client_lost + upstream_lost;
    if report.undeliverable > 0 {
        tracing::debug!(
            lost = report.undeliverable,
            "data messages arrived on a closing leg and could not be delivered"
        );
    }
    report
}

/// One leg's ending: the close frame it is sent (`None`: without a code), and what follows.
struct Ending {
    close: Option<CloseFrame>,
    then: Then,
}

/// What follows a leg's close frame.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Nothing is sent: the leg's connection is gone.
    Nothing,
    /// It answered the leg's own close frame.
    Answered,
    /// The leg is to answer it.
    AwaitAnswer,
    /// The leg broke the protocol: its connection is shut down.
    ShutDown,
}

impl Ending {
    /// `end` as carried out here (`echo`: the answer to the leg's own close frame).
    fn of(end: LegEnd, echo: Option<CloseFrame>) -> Self {
        let (close, then) = match end {
            LegEnd::Drop => (None, Then::Nothing),
            LegEnd::Answer => (echo, Then::Answered),
            LegEnd::Initiate(frame) => (frame, Then::AwaitAnswer),
            LegEnd::Fail(frame) => (Some(frame), Then::ShutDown),
        };
        Self { close, then }
    }
}

/// Carries out one leg's ending (`flow`: the direction that reads the leg), counting in `lost`
/// the data messages it sends meanwhile. The caller bounds it with `close_timeout`.
async fn end_leg<S>(
    wire: &mut Wire<S>,
    flow: &mut Flow,
    side: Side,
    ending: &Ending,
    lost: &mut u64,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let then = ending.then;
    if then == Then::Nothing || send_close(wire, side, ending.close.as_ref()).await.is_err() {
        return;
    }
    match then {
        Then::Nothing => {}
        Then::Answered | Then::AwaitAnswer => {
            let until = match then {
                Then::AwaitAnswer => read_until_close(wire, flow, lost).await,
                _ => Until::Closed,
            };
            match side {
                // The proxy is the upstream's client: its server closes the connection first.
                Side::Upstream if until == Until::Closed => closed_by_peer(wire).await,
                Side::Upstream => {}
                // The proxy is the client's server: it closes the connection first, as soon
                // as this leg is done (not when the upstream's ending is).
                Side::Client => {
                    let _ = poll_fn(|cx| Pin::new(&mut *wire).poll_shutdown(cx)).await;
                }
            }
        }
        Then::ShutDown => {
            // Shut down, then read to the end: closing a socket with unread input sends a
            // reset, which could overtake the close frame.
            if poll_fn(|cx| Pin::new(&mut *wire).poll_shutdown(cx))
                .await
                .is_ok()
            {
                poll_fn(|cx| poll_discard(cx, wire, false)).await;
            }
        }
    }
}

/// Reads the leg until its close frame, counting in `lost` the data messages it sent meanwhile.
async fn read_until_close<S>(wire: &mut Wire<S>, flow: &mut Flow, lost: &mut u64) -> Until
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    poll_fn(|cx| flow.poll_until_close(cx, wire, None::<(&mut Wire<S>, _)>, lost)).await
}

/// Writes a close frame (`None`: without a code) once the leg has taken what it was sent
/// before, masked toward the upstream, and flushes it.
async fn send_close<S>(
    wire: &mut Wire<S>,
    side: Side,
    close: Option<&CloseFrame>,
) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    poll_fn(|cx| Pin::new(&mut *wire).poll_flush(cx)).await?;
    // Built where it is written, so that no frame is held across a wait.
    poll_fn(|cx| {
        let code_and_reason = close.map(|f| (u16::from(f.code), fit_reason(f.reason.as_str())));
        let (payload, len) = frame::close_payload(code_and_reason);
        Poll::Ready(wire.write_control(cx, 0x8, &payload[..len], side == Side::Upstream))
    })
    .await?;
    poll_fn(|cx| Pin::new(&mut *wire).poll_flush(cx)).await
}

/// Waits for the server to close the connection (the upstream, once the close handshake is
/// done), as tungstenite's client does; anything it still sends ends the wait too.
async fn closed_by_peer<S>(wire: &mut Wire<S>)
where
    S: AsyncRead + Unpin,
{
    poll_fn(|cx| poll_discard(cx, wire, true)).await;
}
