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
//! Nothing here allocates: close frames are built on the stack and written at once.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use super::close::{linger, plan, LegEnd};
use super::stream::{Flow, Flows, Until};
use super::wire::Wire;
use crate::session::close_policy::{fit_reason, Report};
use crate::session::frame;
use crate::session::leg::{Ended, Side, Traffic};

/// Completes the close on both legs of a streamed session and reports how it ended.
pub(crate) async fn finish<C, U>(
    client: &mut Wire<C>,
    upstream: &mut Wire<U>,
    (ended, flows): (Ended, Flows),
    to_client: &mut Traffic,
    timeout: Duration,
) -> Report
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let Flows { mut c2u, mut u2c } = flows;
    // What a leg that closed is answered with: its own close frame, as checked.
    let echo = match &ended {
        Ended::Closed { frame, .. } => frame.clone(),
        _ => None,
    };
    let (client_end, upstream_end, mut report) = plan(ended);
    report.undeliverable = match (client_end, upstream_end) {
        (LegEnd::Fail(client_frame), LegEnd::Initiate(upstream_frame)) => {
            let mut lost = 0;
            let relay = async {
                if send_close(upstream, Side::Upstream, upstream_frame.as_ref())
                    .await
                    .is_err()
                {
                    return;
                }
                let until =
                    poll_fn(|cx| u2c.poll_until_close(cx, upstream, Some(&mut *client), to_client))
                        .await;
                if until == Until::WriteFailed {
                    // The client is gone after all: the rest is read and counted.
                    lost += read_until_close(upstream, &mut u2c).await.1;
                }
            };
            let _ = tokio::time::timeout(timeout, relay).await;
            let client_end = LegEnd::Fail(client_frame);
            lost + end_leg(client, &mut c2u, Side::Client, client_end, None, timeout).await
        }
        (client_end, upstream_end) => {
            let (a, b) = tokio::join!(
                end_leg(
                    client,
                    &mut c2u,
                    Side::Client,
                    client_end,
                    echo.clone(),
                    timeout
                ),
                end_leg(
                    upstream,
                    &mut u2c,
                    Side::Upstream,
                    upstream_end,
                    echo,
                    timeout
                ),
            );
            a + b
        }
    };
    report
}

/// Runs one leg's ending within `timeout` (`flow`: the direction that reads it; `echo`: the
/// answer to its close frame); returns how many data messages it sent that could not be
/// delivered.
async fn end_leg<S>(
    wire: &mut Wire<S>,
    flow: &mut Flow,
    side: Side,
    end: LegEnd,
    echo: Option<CloseFrame>,
    timeout: Duration,
) -> u64
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut lost = 0;
    let ending = async {
        match end {
            LegEnd::Drop => {}
            LegEnd::Answer => {
                if send_close(wire, side, echo.as_ref()).await.is_ok() && side == Side::Upstream {
                    closed_by_peer(wire).await;
                }
            }
            LegEnd::Initiate(frame) => {
                if send_close(wire, side, frame.as_ref()).await.is_err() {
                    return;
                }
                let (until, discarded) = read_until_close(wire, flow).await;
                lost = discarded;
                if until == Until::Closed && side == Side::Upstream {
                    closed_by_peer(wire).await;
                }
            }
            LegEnd::Fail(frame) => {
                if send_close(wire, side, Some(&frame)).await.is_ok() {
                    linger(wire).await;
                }
            }
        }
    };
    // Out of time: the leg's socket is dropped by the caller.
    let _ = tokio::time::timeout(timeout, ending).await;
    if lost > 0 {
        tracing::debug!(
            lost,
            "data messages arrived on a closing leg and could not be delivered"
        );
    }
    lost
}

/// Reads the leg until its close frame, counting the data messages it sent meanwhile.
async fn read_until_close<S>(wire: &mut Wire<S>, flow: &mut Flow) -> (Until, u64)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut discarded = Traffic::uncounted();
    let until =
        poll_fn(|cx| flow.poll_until_close(cx, wire, None::<&mut Wire<S>>, &mut discarded)).await;
    (until, discarded.messages)
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
    let (payload, len) =
        frame::close_payload(close.map(|f| (u16::from(f.code), fit_reason(f.reason.as_str()))));
    let (bytes, n) = frame::control_frame(0x8, &payload[..len], side == Side::Upstream);
    poll_fn(|cx| Pin::new(&mut *wire).poll_flush(cx)).await?;
    poll_fn(|cx| Poll::Ready(wire.write_now(cx, &[&bytes[..n]]))).await?;
    poll_fn(|cx| Pin::new(&mut *wire).poll_flush(cx)).await
}

/// Waits for the server to close the connection (the upstream, once the close handshake is
/// done), as tungstenite's client does; anything it still sends ends the wait too.
async fn closed_by_peer<S>(wire: &mut Wire<S>)
where
    S: AsyncRead + Unpin,
{
    let mut sink = [0u8; 64];
    let _ = wire.read(&mut sink).await;
}
