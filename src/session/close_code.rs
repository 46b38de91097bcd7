//! The close codes a hook may send.

use std::fmt;

/// A close code the proxy may send on both legs for a hook's
/// [`Verdict::Close`](crate::hooks::Verdict::Close): one RFC 6455 §7.4 allows in a close frame. Codes
/// that only report what happened (1005 no code, 1006 dropped, 1015 TLS failure), 1004 and
/// the unassigned ranges are refused when the value is made, so they never reach the wire.
///
/// ```
/// use axum_ws_proxy::hooks::CloseCode;
///
/// assert_eq!(CloseCode::POLICY_VIOLATION.get(), 1008);
/// assert_eq!(CloseCode::new(4001).map(CloseCode::get), Ok(4001)); // the application's own
/// assert!(CloseCode::new(1006).is_err()); // a report, never sent
/// assert!(CloseCode::new(2000).is_err()); // reserved for future RFCs
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CloseCode(u16);

impl CloseCode {
    /// 1000: the purpose of the session is fulfilled.
    pub const NORMAL: Self = Self(1000);
    /// 1001: going away (a server shutting down, a page left).
    pub const GOING_AWAY: Self = Self(1001);
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL_ERROR: Self = Self(1002);
    /// 1003: a kind of data that cannot be accepted.
    pub const UNSUPPORTED_DATA: Self = Self(1003);
    /// 1007: data inconsistent with the message's type.
    pub const INVALID_PAYLOAD: Self = Self(1007);
    /// 1008: a message violates a policy (rate limits, content rules).
    pub const POLICY_VIOLATION: Self = Self(1008);
    /// 1009: a message too big to process.
    pub const MESSAGE_TOO_BIG: Self = Self(1009);
    /// 1011: an unexpected condition on the server's side.
    pub const INTERNAL_ERROR: Self = Self(1011);
    /// 1012: the service is restarting.
    pub const SERVICE_RESTART: Self = Self(1012);
    /// 1013: try again later (overload).
    pub const TRY_AGAIN_LATER: Self = Self(1013);

    /// `code` if it may be sent: 1000–1003, 1007–1014, or 3000–4999 (libraries and
    /// applications).
    pub fn new(code: u16) -> Result<Self, InvalidCloseCode> {
        match code {
            1000..=1003 | 1007..=1014 | 3000..=4999 => Ok(Self(code)),
            _ => Err(InvalidCloseCode(code)),
        }
    }

    /// The code's number.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl TryFrom<u16> for CloseCode {
    type Error = InvalidCloseCode;

    fn try_from(code: u16) -> Result<Self, Self::Error> {
        Self::new(code)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A number that is not a close code a hook may send; see [`CloseCode::new`].
///
/// ```
/// use axum_ws_proxy::hooks::{CloseCode, InvalidCloseCode};
///
/// // 1006 means "no close frame": it may never be sent.
/// assert_eq!(CloseCode::new(1006), Err(InvalidCloseCode(1006)));
/// assert_eq!(CloseCode::new(4000).map(CloseCode::get), Ok(4000));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidCloseCode(pub u16);

impl fmt::Display for InvalidCloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.0 {
            1005 | 1006 | 1015 => "it only reports what happened and is never sent",
            1004 | 1016..=2999 => "it is reserved",
            _ => "it is outside the close code space",
        };
        write!(
            f,
            "close code {} cannot be sent: {why}; use 1000-1003, 1007-1014 or 3000-4999",
            self.0
        )
    }
}

impl std::error::Error for InvalidCloseCode {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sendable_codes_are_made() {
        for code in [1000, 1003, 1007, 1014, 3000, 4999] {
            assert_eq!(CloseCode::new(code).map(CloseCode::get), Ok(code));
        }
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, u16::MAX] {
            assert_eq!(CloseCode::new(code), Err(InvalidCloseCode(code)), "{code}");
        }
        assert_eq!(
            InvalidCloseCode(1006).to_string(),
            "close code 1006 cannot be sent: it only reports what happened and is never sent; \
             use 1000-1003, 1007-1014 or 3000-4999"
        );
    }
}
