//! Failures before the 101, each with the HTTP status the client gets.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::header::{
    HeaderValue, CONTENT_TYPE, RETRY_AFTER, SEC_WEBSOCKET_VERSION, WWW_AUTHENTICATE,
};
use http::StatusCode;

/// Why an upgrade request was answered with an error instead of a `101 Switching Protocols`.
///
/// Each variant becomes a response whose status is [`status`](Self::status) and whose body is
/// the [`Display`](fmt::Display) text, so the client (and whoever reads its logs) sees the cause.
/// A non-101 answer from the upstream is not an error: it is relayed as-is.
///
/// The response also carries the error itself, as `Arc<ProxyError>` in its extensions, for a
/// layer outside the proxy to read (a `TraceLayer`'s `on_response`, your own metrics):
///
/// ```
/// use std::sync::Arc;
/// use axum::response::IntoResponse;
/// use axum_ws_proxy::ProxyError;
///
/// let res = ProxyError::InvalidKey.into_response();
/// let error = res.extensions().get::<Arc<ProxyError>>().expect("carried");
/// assert_eq!(error.cause(), "invalid_key");
/// ```
///
/// ```
/// use axum_ws_proxy::ProxyError;
/// use http::StatusCode;
///
/// let e = ProxyError::TooManySessions(8000);
/// assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
/// assert_eq!(e.cause(), "max_sessions");
/// assert_eq!(e.to_string(), "the proxy is at its limit of 8000 sessions");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum ProxyError {
    /// `Sec-WebSocket-Version` is missing or not `13`: **426**, with `Sec-WebSocket-Version: 13`
    /// in the response as RFC 6455 §4.4 asks.
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` is missing or is not 16 bytes in base64: **400**.
    InvalidKey,
    /// The server connection cannot be upgraded (no `hyper::upgrade::OnUpgrade` in the request's
    /// extensions, e.g. a service called without a real connection): **426**.
    NotUpgradable,
    /// The upstream host name did not resolve: **502**.
    Resolve {
        /// The name that was looked up.
        host: String,
        /// The resolver's error.
        source: io::Error,
    },
    /// The upstream refused or failed the TCP connection (for a pool: the last one tried,
    /// after every try failed): **502**.
    Connect {
        /// The last address tried.
        addr: SocketAddr,
        /// The socket error for that address.
        source: io::Error,
    },
    /// The pool has no members (or none with an address): **502**.
    NoMembers,
    /// The `Origin` is not in `allowed_origins`: **403**.
    OriginNotAllowed(String),
    /// No `Origin` header while `allow_missing_origin(false)`: **403**.
    MissingOrigin,
    /// The layer is shutting down: **503** with `Retry-After`.
    ShuttingDown,
    /// `max_sessions` sessions are open: **503** with `Retry-After`.
    TooManySessions(usize),
    /// Every pool member is at its `max_sessions`: **503** with `Retry-After`.
    MembersFull(usize),
    /// More new upgrades than [`WsProxyLayer::max_upgrade_rate`](crate::WsProxyLayer::max_upgrade_rate)
    /// allows: **503** with `Retry-After`.
    Paced {
        /// The steady rate, upgrades a second.
        per_second: u32,
    },
    /// The routing hook refused the upgrade: its status and body.
    Refused(StatusCode, String),
    /// The TLS handshake with a `wss://` upstream failed (untrusted or expired certificate,
    /// wrong host name, no common protocol): **502**, with rustls's reason.
    Tls {
        /// The address dialled.
        addr: SocketAddr,
        /// The TLS error.
        source: io::Error,
    },
    /// The upstream did not complete the TCP connect and handshake within the connect
    /// timeout: **504**.
    Timeout {
        /// The timeout that ran out.
        after: Duration,
    },
    /// The upstream broke the HTTP exchange (closed the connection, sent malformed HTTP): **502**.
    Handshake(std::io::Error),
    /// The upstream's answer head (status line and headers) is larger than the proxy accepts
    /// (64 KiB): **502**.
    AnswerTooLarge(usize),
    /// The proxy itself could not open a connection (out of file descriptors, memory, or
    /// local ports): **503** with `Retry-After`. Not counted against the upstream's health.
    LocalResources {
        /// The system's error.
        source: io::Error,
    },
    /// The request target is neither a path (origin-form) nor an absolute URL, e.g. `*`:
    /// **400**.
    InvalidTarget,
    /// The request path climbs above the root once its dot-segments are removed (`/../x`,
    /// `/a/%2e%2e/%2E%2E/x`, `/..\\x`): **400**. Nothing is dialled.
    PathAboveRoot,
    /// The request path hides a dot-segment behind an encoded slash or a double encoding
    /// (`/..%2Fadmin`, `/a%5C..`, `/%252E%252E/x`), which a server decoding it before resolving
    /// dot-segments would take as a step up: **400**, whatever
    /// [`EscapedSlashes`](crate::EscapedSlashes) says. Nothing is dialled.
    EncodedDotSegment,
    /// The request path holds an encoded slash (`%2F`, `%5C`) and the proxy is set to
    /// [`EscapedSlashes::Reject`](crate::EscapedSlashes::Reject): **400**.
    EscapedSlash,
    /// `Host` is repeated, missing on HTTP/1.1, or not a valid `host[:port]` authority (RFC
    /// 9112 §3.2): **400**, naming which.
    InvalidHost(&'static str),
    /// The upgrade request has a body (`Content-Length` other than 0, or
    /// `Transfer-Encoding`): **400**. Its bytes would otherwise be taken as WebSocket frames.
    UpgradeWithBody,
    /// The upstream answered 101 but the answer is not a valid WebSocket acceptance (wrong
    /// `Sec-WebSocket-Accept`, missing `Upgrade`/`Connection`, a subprotocol or extension that
    /// was not offered): **502**. No session is opened on a forged or broken 101.
    InvalidUpgrade(&'static str),
    /// The identity hook (a JWT check, say) found no valid credential: **401** with
    /// `WWW-Authenticate: Bearer`, naming the cause. Nothing is dialled.
    Unauthorized(AuthFailure),
    /// The identity hook did not answer within the connect timeout: **504**. Nothing is
    /// dialled.
    IdentityTimeout {
        /// The timeout that ran out.
        after: Duration,
    },
}

/// Why an upgrade had no acceptable credential ([`ProxyError::Unauthorized`], **401**).
/// Each has a stable [`label`](Self::label), the `cause` of logs and metrics.
///
/// ```
/// use axum_ws_proxy::{AuthFailure, ProxyError};
///
/// let e = ProxyError::Unauthorized(AuthFailure::Expired);
/// assert_eq!(e.status(), 401);
/// assert_eq!(e.cause(), "token_expired");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthFailure {
    /// No token where tokens are looked for.
    Missing,
    /// Not a well-formed token, or its signature does not verify with any configured key.
    Invalid,
    /// Signed with an algorithm not on the allowlist (`none` never is).
    Algorithm,
    /// Its `exp` has passed.
    Expired,
    /// Its `nbf` is still ahead (beyond the leeway).
    NotYetValid,
    /// Its `iss` is not the one expected.
    Issuer,
    /// Its `aud` is not the one expected.
    Audience,
    /// A claim the proxy needs (the subject, `exp`) is missing or of the wrong type.
    Claims,
    /// Its subject or token id (`jti`) has been revoked.
    Revoked,
}

impl AuthFailure {
    /// The cause's name in logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "token_missing",
            Self::Invalid => "token_invalid",
            Self::Algorithm => "token_algorithm",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::Issuer => "token_issuer",
            Self::Audience => "token_audience",
            Self::Claims => "token_claims",
            Self::Revoked => "token_revoked",
        }
    }

    /// What the client is told (the response body, and `error_description`).
    pub fn description(self) -> &'static str {
        match self {
            Self::Missing => "a bearer token is required",
            Self::Invalid => "the token is malformed or its signature does not verify",
            Self::Algorithm => "the token's algorithm is not accepted",
            Self::Expired => "token expired",
            Self::NotYetValid => "the token is not valid yet",
            Self::Issuer => "the token's issuer is not accepted",
            Self::Audience => "the token's audience is not accepted",
            Self::Claims => "the token lacks a required claim",
            Self::Revoked => "the token has been revoked",
        }
    }
}

impl AuthFailure {
    /// The `WWW-Authenticate` challenge (RFC 6750 §3): a missing token gets the bare
    /// challenge, any other failure `error="invalid_token"` with the description.
    fn challenge(self) -> HeaderValue {
        match self {
            Self::Missing => HeaderValue::from_static("Bearer realm=\"websocket\""),
            _ => {
                let value = format!(
                    "Bearer realm=\"websocket\", error=\"invalid_token\", error_description=\"{}\"",
                    self.description()
                );
                // Made of the fixed texts above: always a valid value.
                HeaderValue::try_from(value)
                    .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"websocket\""))
            }
        }
    }
}

impl fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

impl ProxyError {
    /// The HTTP status the client receives for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnsupportedVersion | Self::NotUpgradable => StatusCode::UPGRADE_REQUIRED,
            Self::InvalidKey
            | Self::PathAboveRoot
            | Self::EncodedDotSegment
            | Self::EscapedSlash
            | Self::InvalidTarget
            | Self::InvalidHost(_)
            | Self::UpgradeWithBody => StatusCode::BAD_REQUEST,
            Self::Refused(status, _) => *status,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::OriginNotAllowed(_) | Self::MissingOrigin => StatusCode::FORBIDDEN,
            Self::ShuttingDown
            | Self::TooManySessions(_)
            | Self::MembersFull(_)
            | Self::Paced { .. }
            | Self::LocalResources { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout { .. } | Self::IdentityTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Resolve { .. }
            | Self::Tls { .. }
            | Self::NoMembers
            | Self::Connect { .. }
            | Self::Handshake(_)
            | Self::AnswerTooLarge(_)
            | Self::InvalidUpgrade(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// A short, stable name for the cause, used in logs (`cause=...`).
    pub fn cause(&self) -> &'static str {
        match self {
            Self::UnsupportedVersion => "unsupported_version",
            Self::InvalidKey => "invalid_key",
            Self::NotUpgradable => "not_upgradable",
            Self::Resolve { .. } => "resolve",
            Self::Connect { .. } => "connect",
            Self::Tls { .. } => "tls",
            Self::NoMembers => "no_members",
            Self::OriginNotAllowed(_) => "origin",
            Self::MissingOrigin => "missing_origin",
            Self::ShuttingDown => "shutting_down",
            Self::TooManySessions(_) => "max_sessions",
            Self::MembersFull(_) => "member_max_sessions",
            Self::Paced { .. } => "upgrade_rate",
            Self::Refused(..) => "route_refused",
            Self::Timeout { .. } => "timeout",
            Self::Handshake(_) => "handshake",
            Self::AnswerTooLarge(_) => "answer_too_large",
            Self::InvalidUpgrade(_) => "invalid_upgrade",
            Self::PathAboveRoot => "path_above_root",
            Self::EncodedDotSegment => "encoded_dot_segment",
            Self::EscapedSlash => "escaped_slash",
            Self::InvalidTarget => "invalid_target",
            Self::LocalResources { .. } => "local_resources",
            Self::InvalidHost(_) => "invalid_host",
            Self::UpgradeWithBody => "upgrade_with_body",
            Self::Unauthorized(why) => why.label(),
            Self::IdentityTimeout { .. } => "identity_timeout",
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedVersion => {
                f.write_str("unsupported Sec-WebSocket-Version: this proxy speaks version 13")
            }
            Self::InvalidKey => {
                f.write_str("missing or invalid Sec-WebSocket-Key: expected 16 bytes in base64")
            }
            Self::NotUpgradable => f.write_str("this connection cannot be upgraded"),
            Self::Resolve { host, source } => {
                write!(f, "upstream host {host:?} did not resolve: {source}")
            }
            Self::Connect { addr, source } => {
                write!(f, "upstream {addr} refused the connection: {source}")
            }
            Self::NoMembers => f.write_str("the upstream pool has no member to dial"),
            Self::OriginNotAllowed(o) => write!(f, "origin {o:?} is not allowed"),
            Self::MissingOrigin => f.write_str("an Origin header is required"),
            Self::ShuttingDown => f.write_str("the proxy is shutting down; retry elsewhere"),
            Self::TooManySessions(n) => write!(f, "the proxy is at its limit of {n} sessions"),
            Self::Paced { per_second } => write!(
                f,
                "the proxy takes new sessions at {per_second} a second; try again shortly"
            ),
            Self::Refused(_, body) => f.write_str(body),
            Self::MembersFull(n) => {
                write!(f, "every upstream member is at its limit of {n} sessions")
            }
            Self::Tls { addr, source } => {
                write!(f, "TLS handshake with upstream {addr} failed: {source}")
            }
            Self::Timeout { after } => {
                write!(f, "upstream did not answer the upgrade within {after:?}")
            }
            Self::Handshake(e) => write!(f, "upstream broke the handshake: {e}"),
            Self::AnswerTooLarge(max) => {
                write!(f, "upstream's answer head is larger than {} KiB", max >> 10)
            }
            Self::InvalidUpgrade(why) => write!(f, "upstream sent an invalid 101: {why}"),
            Self::PathAboveRoot => f.write_str("the request path climbs above the root"),
            Self::EncodedDotSegment => {
                f.write_str("the request path hides a dot-segment behind an encoded slash")
            }
            Self::EscapedSlash => {
                f.write_str("encoded slashes (%2F, %5C) are not accepted in the request path")
            }
            Self::InvalidTarget => {
                f.write_str("the request target must be a path or an absolute URL")
            }
            Self::LocalResources { source } => {
                write!(f, "the proxy cannot open a connection now: {source}")
            }
            Self::InvalidHost(why) => write!(f, "invalid Host: {why}"),
            Self::UpgradeWithBody => f.write_str("an upgrade request cannot have a body"),
            Self::Unauthorized(why) => f.write_str(why.description()),
            Self::IdentityTimeout { after } => {
                write!(f, "the identity check did not answer within {after:?}")
            }
        }
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Resolve { source, .. }
            | Self::Connect { source, .. }
            | Self::Tls { source, .. } => Some(source),
            Self::LocalResources { source } => Some(source),
            Self::Handshake(e) => Some(e),
            _ => None,
        }
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let mut res = Response::new(Body::from(format!("{self}\n")));
        *res.status_mut() = self.status();
        let headers = res.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if matches!(self, Self::UnsupportedVersion) {
            headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        if let Self::Unauthorized(why) = &self {
            headers.insert(WWW_AUTHENTICATE, why.challenge());
        }
        // The layer replaces it with a spread value (`WsProxyLayer::retry_after`).
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res.extensions_mut().insert(std::sync::Arc::new(self));
        res
    }
}

/// A TLS configuration that could not be built, for either side: `wss://` upstreams
/// ([`UpstreamTls`](crate::tls::UpstreamTls)) or clients ([`ServerTls`](crate::tls::ServerTls)).
/// [`kind`](Self::kind) says what was wrong; the message names the file and the detail.
///
/// ```
/// use axum_ws_proxy::tls::{TlsConfigErrorKind, UpstreamTls};
///
/// let err = UpstreamTls::with_root_certificates_pem(b"not a certificate").unwrap_err();
/// assert_eq!(err.kind(), TlsConfigErrorKind::NoCertificate);
/// assert_eq!(err.to_string(), "no certificates found in the PEM data");
/// ```
#[cfg(feature = "tls")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfigError {
    kind: TlsConfigErrorKind,
    message: String,
}

/// What was wrong with a TLS configuration.
#[cfg(feature = "tls")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsConfigErrorKind {
    /// A file could not be read.
    Read,
    /// Text that is not valid PEM.
    InvalidPem,
    /// PEM without the certificate (or CA certificates) it should hold.
    NoCertificate,
    /// A certificate rustls refuses to use (as a CA, or as a client CA).
    UnusableCertificate,
    /// No private key in the key file.
    NoPrivateKey,
    /// A private key of a kind the crypto provider does not support.
    UnsupportedKey,
    /// The private key does not belong to the certificate.
    KeyMismatch,
    /// A reload of a [`ServerTls`](crate::tls::ServerTls) that was not made from files.
    NotFromFiles,
    /// rustls refused the configuration for another reason.
    Rustls,
}

#[cfg(feature = "tls")]
impl TlsConfigError {
    pub(crate) fn new(kind: TlsConfigErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The same error, its message prefixed with the files it came from.
    #[cfg_attr(not(all(feature = "tls", feature = "serve")), allow(dead_code))]
    pub(crate) fn in_files(self, files: &str) -> Self {
        Self {
            kind: self.kind,
            message: format!("{files}: {}", self.message),
        }
    }

    /// What was wrong.
    pub fn kind(&self) -> TlsConfigErrorKind {
        self.kind
    }
}

#[cfg(feature = "tls")]
impl fmt::Display for TlsConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(feature = "tls")]
impl std::error::Error for TlsConfigError {}

#[cfg(test)]
mod tests {
    /// The metrics reference (`src/docs/metrics.md`) names every `cause` label
    /// [`ProxyError::cause`] can give (read from this file's `cause` function and
    /// `AuthFailure::label`, so a new variant must be documented there).
    #[test]
    fn the_metrics_reference_lists_every_cause() {
        let source = include_str!("error.rs");
        let labels_of = |function: &str| -> Vec<&str> {
            let body = source
                .split(function)
                .nth(1)
                .and_then(|rest| rest.split("\n    }\n").next())
                .expect("the function");
            body.lines()
                .filter_map(|l| l.split("=> \"").nth(1))
                .filter_map(|l| l.split('"').next())
                .collect()
        };
        let mut causes = labels_of("pub fn cause(&self)");
        let auth = labels_of("pub fn label(self)");
        assert_eq!(auth.len(), 9, "{auth:?}");
        causes.extend(auth);
        assert!(causes.len() >= 20, "{causes:?}");
        let reference = include_str!("docs/metrics.md");
        let row = reference
            .lines()
            .find(|l| l.starts_with("| `ws_proxy_handshake_failures_total`"))
            .expect("the handshake failures row");
        for cause in causes.iter().chain(&["upstream_refused"]) {
            assert!(
                row.contains(&format!("`{cause}`")),
                "src/docs/metrics.md lacks the cause `{cause}`"
            );
        }
    }
}
