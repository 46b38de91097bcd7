//! Step 6, frame mode: complete the close handshakes on both legs.
//!
//! The codes each leg gets are decided in [`close_policy`](crate::session::close_policy), for both modes;
//! this module carries them out in frame mode.
//!
//! A close frame without a code is forwarded without a code. Each close handshake gets
//! `close_timeout`; a leg that does not answer in time has its socket dropped.

use std::time::Duration;

use super::socket::Socket;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{error::ProtocolError, Error as WsError, Message};

use super::compressed::BAD_COMPRESSED;
use super::wire::Violation;
use crate::session::close_policy::{fit_reason, other_leg_code, Outcome, Report};
use crate::session::hooks::ClosedBy;
use crate::session::leg::{Ended, Side, Stopped, Traffic};

/// What happens to one leg at the end of the session.
pub(super) enum LegEnd {
    /// The peer sent a close frame: send the echo (tungstenite has queued it, for the
    /// message bridge), then wait for the end.
    Answer,
    /// Send this close frame and wait for the peer's answer.
    Initiate(Option<CloseFrame>),
    /// The peer broke the protocol: send this close frame, then shut the socket down. The
    /// stream cannot be read as frames any more, so the rest is read and discarded.
    Fail(CloseFrame),
    /// The connection is gone.
    Drop,
}

/// Completes the close on both legs, each within `timeout`, and reports how the session ended.
///
/// A message the bridge still holds for a leg is sent before that leg's close frame. When the
/// client broke the protocol, the upstream is closed first and what it sends before answering
/// is still delivered to the client; only then does the client get its close code.
pub(crate) async fn finish<C, U>(
    mut client: Socket<C>,
    mut upstream: Socket<U>,
    stopped: Stopped,
    to_client: &mut Traffic,
    to_upstream: &mut Traffic,
    timeout: Duration,
) -> Report
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let Stopped {
        ended,
        held_for_client,
        held_for_upstream,
    } = stopped;
    let (client_end, upstream_end, mut report) = plan(ended);
    report.undeliverable = match (client_end, upstream_end) {
        (LegEnd::Fail(client_frame), LegEnd::Initiate(upstream_frame)) => {
            let mut lost = 0;
            let relay = async {
                if let Some(msg) = held_for_client {
                    deliver(&mut client, msg, to_client, &mut lost).await;
                }
                if upstream.send(Message::Close(upstream_frame)).await.is_ok() {
                    while let Some(Ok(msg)) = upstream.next().await {
                        if msg.is_text() || msg.is_binary() {
                            deliver(&mut client, msg, to_client, &mut lost).await;
                        }
                    }
                }
            };
            let _ = tokio::time::timeout(timeout, relay).await;
            drop(upstream);
            lost + end_leg(client, LegEnd::Fail(client_frame), None, to_client, timeout).await
        }
        (client_end, upstream_end) => {
            let (a, b) = tokio::join!(
                end_leg(client, client_end, held_for_client, to_client, timeout),
                end_leg(
                    upstream,
                    upstream_end,
                    held_for_upstream,
                    to_upstream,
                    timeout
                )
            );
            a + b
        }
    };
    report
}

/// Sends one data message, counting it as delivered or lost.
async fn deliver<S>(ws: &mut Socket<S>, msg: Message, traffic: &mut Traffic, lost: &mut u64)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let len = msg.len() as u64;
    match ws.send(msg).await {
        Ok(()) => traffic.add(len),
        Err(_) => *lost += 1,
    }
}

/// Closes the upstream leg when the client never got its connection (its upgrade failed).
pub(crate) async fn client_vanished<U>(upstream: Socket<U>, timeout: Duration) -> Report
where
    U: AsyncRead + AsyncWrite + Unpin,
{
    let frame = frame(CloseCode::Away, "client went away during the upgrade");
    let mut unused = Traffic::new(Side::Upstream);
    let undeliverable = end_leg(
        upstream,
        LegEnd::Initiate(Some(frame)),
        None,
        &mut unused,
        timeout,
    )
    .await;
    Report {
        closed_by: ClosedBy::Client,
        client_code: 1006,
        upstream_code: 1001,
        reason: "client went away during the upgrade".into(),
        undeliverable,
    }
}

/// Decides each leg's ending from how bridging stopped; the codes come from the
/// [`close_policy`](crate::session::close_policy) table.
pub(super) fn plan(ended: Ended) -> (LegEnd, LegEnd, Report) {
    let (client, upstream, outcome) = match ended {
        Ended::Closed { by, frame } => {
            let (code, reason) = frame.as_ref().map_or((1005, String::new()), |f| {
                (u16::from(f.code), f.reason.to_string())
            });
            let (c, u) = order(by, LegEnd::Answer, LegEnd::Initiate(frame));
            (c, u, Outcome::peer_closed(by, code, reason))
        }
        Ended::ReadFailed { side, error } => match violation(&error) {
            Some(own) => {
                let outcome = Outcome::violation(side, u16::from(own.code), own.reason.to_string());
                let why = format!("{} failed: {}", side.as_str(), own.reason);
                let other = frame(CloseCode::from(other_leg_code(side)), &why);
                let (c, u) = order(side, LegEnd::Fail(own), LegEnd::Initiate(Some(other)));
                (c, u, outcome)
            }
            None => dropped(side, &error),
        },
        Ended::WriteFailed { side, error } => dropped(side, &error),
        Ended::Expired(expired) => proxy_closes(Outcome::expired(expired)),
        Ended::Requested(request) => proxy_closes(Outcome::requested(request)),
        Ended::HookClosed(code, reason) => proxy_closes(Outcome {
            closed_by: ClosedBy::Proxy,
            client_code: code,
            upstream_code: code,
            reason,
            dead: None,
        }),
    };
    (client, upstream, outcome.into())
}

/// `(client's, upstream's)` from `side`'s own and the other side's.
fn order<T>(side: Side, own: T, other: T) -> (T, T) {
    match side {
        Side::Client => (own, other),
        Side::Upstream => (other, own),
    }
}

/// The proxy closes: each live leg gets its code and the outcome's reason; a dead one is
/// dropped.
fn proxy_closes(outcome: Outcome) -> (LegEnd, LegEnd, Outcome) {
    let leg = |side: Side| {
        if outcome.dead == Some(side) {
            LegEnd::Drop
        } else {
            let code = CloseCode::from(outcome.code_for(side));
            LegEnd::Initiate(Some(frame(code, &outcome.reason)))
        }
    };
    (leg(Side::Client), leg(Side::Upstream), outcome)
}

/// `side`'s connection dropped without a close frame: the other leg is told it went away.
fn dropped(side: Side, error: &WsError) -> (LegEnd, LegEnd, Outcome) {
    let reason = format!("{} connection lost: {error}", side.as_str());
    let outcome = Outcome::gone(side, reason, ClosedBy::from_side(side));
    let told = match side {
        Side::Client => "client went away",
        Side::Upstream => "upstream went away without a close frame",
    };
    let other = frame(CloseCode::from(other_leg_code(side)), told);
    let (c, u) = order(side, LegEnd::Drop, LegEnd::Initiate(Some(other)));
    (c, u, outcome)
}

/// The close frame for a peer that broke the protocol, or `None` when the error means the
/// peer's connection is simply gone.
fn violation(error: &WsError) -> Option<CloseFrame> {
    match error {
        // Found by the reader that inflates a compressed leg for tungstenite.
        WsError::Io(e) => e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<Violation>())
            .and_then(|v| violation(&v.0)),
        WsError::Utf8(m) if m == BAD_COMPRESSED => Some(frame(CloseCode::Invalid, BAD_COMPRESSED)),
        WsError::Utf8(_) => Some(frame(CloseCode::Invalid, "invalid UTF-8 in a text message")),
        WsError::Capacity(e) => Some(frame(CloseCode::Size, &e.to_string())),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(e) => Some(frame(CloseCode::Protocol, &e.to_string())),
        _ => None,
    }
}

/// A close frame, its reason cut to fit a control frame (on a character boundary).
fn frame(code: CloseCode, reason: &str) -> CloseFrame {
    CloseFrame {
        code,
        reason: fit_reason(reason).to_owned().into(),
    }
}

/// Runs one leg's ending within `timeout`, sending `held` first where the leg can still take
/// it; returns how many data messages could not be delivered.
async fn end_leg<S>(
    mut ws: Socket<S>,
    end: LegEnd,
    held: Option<Message>,
    traffic: &mut Traffic,
    timeout: Duration,
) -> u64
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut lost = 0;
    let ending = async {
        let fail = matches!(end, LegEnd::Fail(_));
        let frame = match end {
            LegEnd::Drop | LegEnd::Answer => {
                // The leg is gone or has closed: it can take no more data.
                lost += u64::from(held.is_some());
                if matches!(end, LegEnd::Answer) && ws.flush().await.is_ok() {
                    drain(&mut ws, &mut lost).await;
                }
                return;
            }
            LegEnd::Initiate(frame) => frame,
            LegEnd::Fail(frame) => Some(frame),
        };
        if let Some(msg) = held {
            deliver(&mut ws, msg, traffic, &mut lost).await;
        }
        if ws.send(Message::Close(frame)).await.is_err() {
            return;
        }
        if fail {
            linger(ws.get_mut()).await;
        } else {
            drain(&mut ws, &mut lost).await;
        }
    };
    // Out of time: the leg's socket is dropped on return.
    let _ = tokio::time::timeout(timeout, ending).await;
    if lost > 0 {
        tracing::debug!(
            lost,
            "data messages arrived on a closing leg and could not be delivered"
        );
    }
    lost
}

/// Reads until the peer's close answer and the end of the stream.
async fn drain<S>(ws: &mut Socket<S>, discarded: &mut u64)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(Ok(msg)) = ws.next().await {
        if msg.is_text() || msg.is_binary() {
            *discarded += 1;
        }
    }
}

/// Half-closes and reads to EOF, so the close frame is not lost to a reset caused by data the
/// peer sent meanwhile (closing a socket with unread input sends RST).
async fn linger<S>(io: &mut S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if io.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 1024];
    while let Ok(n) = io.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_fit_a_control_frame() {
        let long = "é".repeat(100);
        let f = frame(CloseCode::Error, &long);
        assert!(f.reason.len() <= 123);
        assert_eq!(f.reason.len() % 2, 0, "cut on a character boundary");
    }

    #[test]
    fn violations_map_to_rfc_codes() {
        let code = |e| violation(&e).map(|f| u16::from(f.code));
        assert_eq!(code(WsError::Utf8("x".into())), Some(1007));
        assert_eq!(
            code(WsError::Protocol(ProtocolError::UnmaskedFrameFromClient)),
            Some(1002)
        );
        assert_eq!(
            code(WsError::Protocol(
                ProtocolError::ResetWithoutClosingHandshake
            )),
            None
        );
        assert_eq!(code(WsError::ConnectionClosed), None);
    }
}
