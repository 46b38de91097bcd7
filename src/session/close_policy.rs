//! Who ended a session and which close code each leg gets: the one table for both modes. The
//! frame bridge's close phase ([`close`](crate::session::frames::close)) and the tunnel
//! ([`tunnel`](crate::session::tunnel)) both take their codes from [`Outcome`], fit their
//! reasons into a close frame with [`fit_reason`], and report how the session ended as a
//! [`Report`].
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
//! | a drain (shutdown, an operator's request) or rebalancing asks it to close | **1012** | **1001** |
//!
//! In tunnel mode the proxy does not parse payloads, so protocol errors are left to the peers
//! (their own close frames pass through as in the first two rows).

use std::time::Duration;

use crate::registry::CloseRequest;
use crate::session::hooks::ClosedBy;
use crate::session::leg::{Expired, Side};

/// How one session ended: who closed it, the code each leg got (1005: a close frame without a
/// code; 1006: no close frame, the connection dropped) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) closed_by: ClosedBy,
    pub(crate) client_code: u16,
    pub(crate) upstream_code: u16,
    pub(crate) reason: String,
    /// A leg whose connection is gone: nothing is sent to it and no answer awaited.
    pub(crate) dead: Option<Side>,
}

impl Outcome {
    /// A peer's close frame (`code`, or 1005 without one) ends the session: the other leg gets
    /// the same code and reason.
    pub(crate) fn peer_closed(by: Side, code: u16, reason: String) -> Self {
        Self {
            closed_by: ClosedBy::from_side(by),
            client_code: code,
            upstream_code: code,
            reason,
            dead: None,
        }
    }

    /// The proxy ends a healthy session: 1001 on both legs.
    pub(crate) fn going_away(why: &str) -> Self {
        Self {
            closed_by: ClosedBy::Proxy,
            client_code: 1001,
            upstream_code: 1001,
            reason: why.to_owned(),
            dead: None,
        }
    }

    /// The proxy asked the session to close (a drain, rebalancing): the client gets the
    /// request's code (1012), the upstream 1001, both the reason.
    pub(crate) fn requested(request: CloseRequest) -> Self {
        Self {
            closed_by: ClosedBy::Proxy,
            client_code: request.client_code,
            upstream_code: 1001,
            reason: request.reason.into_owned(),
            dead: None,
        }
    }

    /// A keepalive or session timer ran out.
    pub(crate) fn expired(expired: Expired) -> Self {
        match expired {
            Expired::Idle => Self::going_away("idle timeout"),
            Expired::Lifetime => Self::going_away("session lifetime reached"),
            Expired::Unresponsive(side, after) => {
                Self::gone(side, unresponsive(side, after), ClosedBy::Proxy)
            }
        }
    }

    /// `side`'s connection is gone without a close frame (dropped, or silent past the ping
    /// timeout): nothing more is sent to it (1006), and the other leg gets
    /// [`other_leg_code`].
    pub(crate) fn gone(side: Side, reason: String, closed_by: ClosedBy) -> Self {
        let (client_code, upstream_code) = match side {
            Side::Client => (1006, other_leg_code(side)),
            Side::Upstream => (other_leg_code(side), 1006),
        };
        Self {
            closed_by,
            client_code,
            upstream_code,
            reason,
            dead: Some(side),
        }
    }

    /// `side` broke the protocol: it gets `own` (1002, 1007, 1009), the other leg
    /// [`other_leg_code`]. The proxy closed the session.
    pub(crate) fn violation(side: Side, own: u16, reason: String) -> Self {
        let (client_code, upstream_code) = match side {
            Side::Client => (own, other_leg_code(side)),
            Side::Upstream => (other_leg_code(side), own),
        };
        Self {
            closed_by: ClosedBy::Proxy,
            client_code,
            upstream_code,
            reason,
            dead: None,
        }
    }

    /// The code `side` gets.
    pub(crate) fn code_for(&self, side: Side) -> u16 {
        match side {
            Side::Client => self.client_code,
            Side::Upstream => self.upstream_code,
        }
    }
}

/// What the other leg gets when `side` is gone or failed: the client leaving is 1001 Going
/// Away for the upstream; the upstream failing is 1011 Internal Error for the client (1014 Bad
/// Gateway would fit better, but tungstenite treats it as invalid).
pub(crate) fn other_leg_code(side: Side) -> u16 {
    match side {
        Side::Client => 1001,
        Side::Upstream => 1011,
    }
}

/// The reason for a leg that did not answer a ping.
pub(crate) fn unresponsive(side: Side, after: Duration) -> String {
    format!("{} did not answer a ping within {after:?}", side.as_str())
}

/// RFC 6455 §5.5: a control frame's payload is at most 125 bytes, 2 of them the code.
const MAX_REASON: usize = 123;

/// Who ended the session and with which close code on each leg (1005: a close frame without
/// a code; 1006: no close frame, the connection dropped).
#[derive(Clone, Debug)]
pub(crate) struct Report {
    pub(crate) closed_by: ClosedBy,
    pub(crate) client_code: u16,
    pub(crate) upstream_code: u16,
    pub(crate) reason: String,
    /// Data messages read from one leg that never reached the other: they arrived after a
    /// close had begun, were still held for a leg that went away, or were cut mid-message.
    /// Never counted as forwarded.
    pub(crate) undeliverable: u64,
}

impl From<Outcome> for Report {
    fn from(o: Outcome) -> Self {
        Self {
            closed_by: o.closed_by,
            client_code: o.client_code,
            upstream_code: o.upstream_code,
            reason: o.reason,
            undeliverable: 0,
        }
    }
}

impl Report {
    /// The client's upgrade failed before a tunnel could open; the upstream is dropped.
    pub(crate) fn client_vanished_report() -> Self {
        Self {
            closed_by: ClosedBy::Client,
            client_code: 1006,
            upstream_code: 1006,
            reason: "client went away during the upgrade".into(),
            undeliverable: 0,
        }
    }

    /// A session still open at the shutdown deadline, dropped without a close handshake.
    pub(crate) fn dropped_at_shutdown() -> Self {
        Self {
            closed_by: ClosedBy::Proxy,
            client_code: 1006,
            upstream_code: 1006,
            reason: "dropped at the shutdown deadline".into(),
            undeliverable: 0,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_for_failures() {
        let client_gone = Outcome::gone(Side::Client, String::new(), ClosedBy::Client);
        assert_eq!(
            (client_gone.client_code, client_gone.upstream_code),
            (1006, 1001)
        );
        let upstream_gone = Outcome::gone(Side::Upstream, String::new(), ClosedBy::Upstream);
        assert_eq!(
            (upstream_gone.client_code, upstream_gone.upstream_code),
            (1011, 1006)
        );
        let bad_client = Outcome::violation(Side::Client, 1007, String::new());
        assert_eq!(
            (bad_client.client_code, bad_client.upstream_code),
            (1007, 1001)
        );
        let bad_upstream = Outcome::violation(Side::Upstream, 1009, String::new());
        assert_eq!(
            (bad_upstream.client_code, bad_upstream.upstream_code),
            (1011, 1009)
        );
        let silent = Outcome::expired(Expired::Unresponsive(
            Side::Upstream,
            Duration::from_secs(1),
        ));
        assert_eq!(silent.closed_by, ClosedBy::Proxy);
        assert_eq!((silent.client_code, silent.upstream_code), (1011, 1006));
        assert_eq!(Outcome::expired(Expired::Idle).code_for(Side::Client), 1001);
    }
}
