//! Step 1: is this request a WebSocket upgrade, and is it a valid one?

use http::header::{HeaderValue, CONNECTION, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
use http::{Method, Request, Version};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::error::ProxyError;
use crate::handshake::headers::has_token;
use crate::transport::ClientLeg;

/// How a WebSocket is opened: found once, by [`upgrade`], and carried through the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Upgrade {
    /// An HTTP/1.1 `GET` with `Upgrade: websocket`, answered `101`.
    Http1,
    /// An HTTP/2 extended `CONNECT` (RFC 8441), answered `200`.
    Http2,
}

/// A WebSocket opening request: an HTTP/1.1 `GET` with `Upgrade: websocket` and a
/// `Connection` header holding the token `upgrade` (case-insensitive, lists such as
/// `keep-alive, Upgrade` included), or an HTTP/2 extended `CONNECT` with `:protocol websocket`
/// (RFC 8441). Everything else (`None`) goes to the inner service untouched.
pub(crate) fn upgrade<B>(req: &Request<B>) -> Option<Upgrade> {
    if is_http1_upgrade(req) {
        Some(Upgrade::Http1)
    } else if is_http2_connect(req) {
        Some(Upgrade::Http2)
    } else {
        None
    }
}

fn is_http1_upgrade<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET
        && req.version() == Version::HTTP_11
        && has_token(req.headers(), UPGRADE, "websocket")
        && has_token(req.headers(), CONNECTION, "upgrade")
}

#[cfg(feature = "http2")]
fn is_http2_connect<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT
        && req.version() == Version::HTTP_2
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

#[cfg(not(feature = "http2"))]
fn is_http2_connect<B>(_: &Request<B>) -> bool {
    false
}

/// What is needed to answer the client once the upstream has accepted.
pub(crate) struct ClientHandshake {
    /// `Sec-WebSocket-Accept` for the client's key; `None` for HTTP/2, which has no key and
    /// is answered with `200` instead of `101`.
    pub(crate) accept: Option<HeaderValue>,
    /// Resolves to the client's connection (or HTTP/2 stream) once the answer has been sent.
    pub(crate) leg: ClientLeg,
}

/// Validates the client's side of the handshake before any upstream is dialled. `leg` is how
/// the client's connection will come (`None`: a request no server can upgrade).
pub(crate) fn client_handshake<B>(
    req: &Request<B>,
    kind: Upgrade,
    leg: Option<ClientLeg>,
) -> Result<ClientHandshake, ProxyError> {
    let headers = req.headers();
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(ProxyError::UnsupportedVersion);
    }
    let accept = if kind == Upgrade::Http2 {
        None
    } else {
        let key = headers
            .get(SEC_WEBSOCKET_KEY)
            .filter(|k| is_valid_key(k.as_bytes()))
            .ok_or(ProxyError::InvalidKey)?;
        Some(
            // From the `String` itself: `from_str` would copy it into a second allocation.
            HeaderValue::try_from(derive_accept_key(key.as_bytes()))
                .map_err(|_| ProxyError::InvalidKey)?,
        )
    };
    let leg = leg.ok_or(ProxyError::NotUpgradable)?;
    Ok(ClientHandshake { accept, leg })
}

/// RFC 6455 §4.1: the key is 16 bytes, base64-encoded, which is 22 base64 characters and `==`.
fn is_valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_shape() {
        assert!(is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25j*Q=="));
        assert!(!is_valid_key(b""));
    }

    #[test]
    fn detection_needs_get_11_upgrade_and_connection_token() {
        let req = |m: Method, v: Version, up: &str, conn: &str| {
            Request::builder()
                .method(m)
                .version(v)
                .header(UPGRADE, up)
                .header(CONNECTION, conn)
                .body(())
                .unwrap()
        };
        let kind = |m, v, up, conn| upgrade(&req(m, v, up, conn));
        assert_eq!(
            kind(
                Method::GET,
                Version::HTTP_11,
                "WebSocket",
                "keep-alive, Upgrade"
            ),
            Some(Upgrade::Http1)
        );
        assert_eq!(
            kind(Method::POST, Version::HTTP_11, "websocket", "upgrade"),
            None
        );
        assert_eq!(
            kind(Method::GET, Version::HTTP_10, "websocket", "upgrade"),
            None
        );
        assert_eq!(kind(Method::GET, Version::HTTP_11, "h2c", "upgrade"), None);
        assert_eq!(
            kind(Method::GET, Version::HTTP_11, "websocket", "keep-alive"),
            None
        );
    }
}
