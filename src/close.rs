//! Step 6: close both legs. This is where close codes are mapped.
//!
//! | how the session ended | client leg | upstream leg |
//! |---|---|---|
//! | client sends close `code, reason` | echoed (`code, reason`) | gets `code, reason` |
//! | upstream sends close `code, reason` | gets `code, reason` | echoed |
//! | client connection drops (no close frame) | - | **1001** "client went away" |
//! | upstream connection drops (no close frame) | **1011** "upstream went away ..." | - |
//! | client sends invalid UTF-8 text | **1007** | **1001** |
//! | client breaks framing (e.g. unmasked frame) | **1002** | **1001** |
//! | client message or frame over the limit | **1009** | **1001** |
//! | upstream breaks the protocol / sends too much | **1011** | 1002 / 1007 / 1009 |
//! | client does not answer a ping within `ping_timeout` | dropped | **1001** |
//! | upstream does not answer a ping within `ping_timeout` | **1011** | dropped |
//! | `idle_timeout` or `max_lifetime` reached | **1001** | **1001** |
//! | graceful shutdown | **1001** | **1001** |
//!
//! A close frame without a code is forwarded without a code. Each close handshake gets
//! `close_timeout`; a leg that does not answer in time has its socket dropped.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{error::ProtocolError, Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::leg::{Ended, Expired, Side, Stopped, Traffic};

/// RFC 6455 §5.5: a control frame's payload is at most 125 bytes, 2 of them the code.
const MAX_REASON: usize = 123;

/// Who ended the session and with which close code on each leg (1005: a close frame without
/// a code; 1006: no close frame, the connection dropped).
#[derive(Clone, Debug)]
pub(crate) struct Report {
    pub(crate) closed_by: &'static str,
    pub(crate) client_code: u16,
    pub(crate) upstream_code: u16,
    pub(crate) reason: String,
    /// Data messages that arrived on a leg after it was closing and could not be delivered.
    pub(crate) undeliverable: u64,
}

impl Report {
    /// The client's upgrade failed before a tunnel could open; the upstream is dropped.
    pub(crate) fn client_vanished_report() -> Self {
        Self {
            closed_by: "client",
            client_code: 1006,
            upstream_code: 1006,
            reason: "client went away during the upgrade".into(),
            undeliverable: 0,
        }
    }

    /// A session still open at the shutdown deadline, dropped without a close handshake.
    pub(crate) fn dropped_at_shutdown() -> Self {
        Self {
            closed_by: "proxy",
            client_code: 1006,
            upstream_code: 1006,
            reason: "dropped at the shutdown deadline".into(),
            undeliverable: 0,
        }
    }
}

/// What happens to one leg at the end of the session.
enum LegEnd {
    /// The peer sent a close frame: send tungstenite's queued echo, then wait for the end.
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
    mut client: WebSocketStream<C>,
    mut upstream: WebSocketStream<U>,
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
async fn deliver<S>(
    ws: &mut WebSocketStream<S>,
    msg: Message,
    traffic: &mut Traffic,
    lost: &mut u64,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let len = msg.len() as u64;
    match ws.send(msg).await {
        Ok(()) => traffic.add(len),
        Err(_) => *lost += 1,
    }
}

/// Closes the upstream leg when the client never got its connection (its upgrade failed).
pub(crate) async fn client_vanished<U>(upstream: WebSocketStream<U>, timeout: Duration) -> Report
where
    U: AsyncRead + AsyncWrite + Unpin,
{
    let frame = frame(CloseCode::Away, "client went away during the upgrade");
    let mut unused = Traffic::new("to_upstream");
    let undeliverable = end_leg(
        upstream,
        LegEnd::Initiate(Some(frame)),
        None,
        &mut unused,
        timeout,
    )
    .await;
    Report {
        closed_by: "client",
        client_code: 1006,
        upstream_code: 1001,
        reason: "client went away during the upgrade".into(),
        undeliverable,
    }
}

/// Decides each leg's ending from how bridging stopped.
fn plan(ended: Ended) -> (LegEnd, LegEnd, Report) {
    let report = |closed_by, client_code, upstream_code, reason: String| Report {
        closed_by,
        client_code,
        upstream_code,
        reason,
        undeliverable: 0,
    };
    match ended {
        Ended::Closed { by, frame } => {
            let (code, reason) = frame.as_ref().map_or((1005, String::new()), |f| {
                (u16::from(f.code), f.reason.to_string())
            });
            let (c, u) = order(by, LegEnd::Answer, LegEnd::Initiate(frame));
            (c, u, report(by.as_str(), code, code, reason))
        }
        Ended::ReadFailed { side, error } => match violation(&error) {
            Some(own) => {
                let other = gone(side, &format!("{} failed: {}", side.as_str(), own.reason));
                let (cc, uc) = order(side, u16::from(own.code), u16::from(other.code));
                let reason = error.to_string();
                let (c, u) = order(side, LegEnd::Fail(own), LegEnd::Initiate(Some(other)));
                (c, u, report("proxy", cc, uc, reason))
            }
            None => dropped(side, &error),
        },
        Ended::WriteFailed { side, error } => dropped(side, &error),
        Ended::Expired(Expired::Unresponsive(side, after)) => {
            let why = format!("{} did not answer a ping within {after:?}", side.as_str());
            abandon(side, gone(side, &why), "proxy", why)
        }
        Ended::Expired(Expired::Idle) => going_away("idle timeout"),
        Ended::Expired(Expired::Lifetime) => going_away("session lifetime reached"),
        Ended::ShuttingDown => going_away("proxy shutting down"),
        Ended::HookClosed(code, reason) => {
            let report = Report {
                closed_by: "proxy",
                client_code: code,
                upstream_code: code,
                reason: reason.clone(),
                undeliverable: 0,
            };
            let close = || LegEnd::Initiate(Some(frame(CloseCode::from(code), &reason)));
            (close(), close(), report)
        }
    }
}

/// `(client's, upstream's)` from `side`'s own and the other side's.
fn order<T>(side: Side, own: T, other: T) -> (T, T) {
    match side {
        Side::Client => (own, other),
        Side::Upstream => (other, own),
    }
}

/// `side`'s connection dropped without a close frame.
fn dropped(side: Side, error: &WsError) -> (LegEnd, LegEnd, Report) {
    let reason = format!("{} connection lost: {error}", side.as_str());
    abandon(side, gone(side, ""), side.as_str(), reason)
}

/// Drops `side`'s socket and closes the other leg with `other`.
fn abandon(
    side: Side,
    other: CloseFrame,
    closed_by: &'static str,
    reason: String,
) -> (LegEnd, LegEnd, Report) {
    let (cc, uc) = order(side, 1006, u16::from(other.code));
    let (c, u) = order(side, LegEnd::Drop, LegEnd::Initiate(Some(other)));
    let report = Report {
        closed_by,
        client_code: cc,
        upstream_code: uc,
        reason,
        undeliverable: 0,
    };
    (c, u, report)
}

/// The proxy ends a healthy session: 1001 with `why` on both legs.
fn going_away(why: &str) -> (LegEnd, LegEnd, Report) {
    let report = Report {
        closed_by: "proxy",
        client_code: 1001,
        upstream_code: 1001,
        reason: why.to_owned(),
        undeliverable: 0,
    };
    let close = || LegEnd::Initiate(Some(frame(CloseCode::Away, why)));
    (close(), close(), report)
}

/// The close frame the *other* leg gets when `side` is gone: the client leaving is 1001 Going
/// Away for the upstream; the upstream failing is 1011 Internal Error for the client (1014 Bad
/// Gateway would fit better, but tungstenite treats it as invalid).
fn gone(side: Side, detail: &str) -> CloseFrame {
    match (side, detail) {
        (Side::Client, "") => frame(CloseCode::Away, "client went away"),
        (Side::Client, d) => frame(CloseCode::Away, d),
        (Side::Upstream, "") => frame(CloseCode::Error, "upstream went away without a close frame"),
        (Side::Upstream, d) => frame(CloseCode::Error, d),
    }
}

/// The close frame for a peer that broke the protocol, or `None` when the error means the
/// peer's connection is simply gone.
fn violation(error: &WsError) -> Option<CloseFrame> {
    match error {
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

/// `reason` cut to fit a close frame (123 bytes), on a character boundary so it stays UTF-8.
pub(crate) fn fit_reason(reason: &str) -> &str {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Runs one leg's ending within `timeout`, sending `held` first where the leg can still take
/// it; returns how many data messages could not be delivered.
async fn end_leg<S>(
    mut ws: WebSocketStream<S>,
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
async fn drain<S>(ws: &mut WebSocketStream<S>, discarded: &mut u64)
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
        assert!(f.reason.len() <= MAX_REASON);
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
