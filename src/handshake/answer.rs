//! Step 4: hand the upstream's answer back to the client.
//!
//! A `101` is checked before a session is opened on it (the `Sec-WebSocket-Accept` must match
//! the key the proxy sent, `Upgrade`/`Connection` must be right, and the subprotocol must be one
//! the client offered), then answered with the proxy's own `101`. Anything else is relayed as
//! an ordinary response: status, end-to-end headers and a bounded body.

use axum::body::Body;
use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS,
    SEC_WEBSOCKET_PROTOCOL, UPGRADE,
};
use http::{Response, StatusCode};

use crate::error::ProxyError;
use crate::handshake::headers::{self, has_token};

/// Validates the upstream's 101 (`accept`: the value it must carry for the key that was sent)
/// and returns the subprotocol it chose, if any.
pub(crate) fn verify_switch(
    upstream: &HeaderMap,
    accept: Option<&HeaderValue>,
    offered: &[HeaderValue],
) -> Result<Option<HeaderValue>, ProxyError> {
    if !has_token(upstream, UPGRADE, "websocket") {
        return Err(ProxyError::InvalidUpgrade("no `Upgrade: websocket`"));
    }
    if !has_token(upstream, CONNECTION, "upgrade") {
        return Err(ProxyError::InvalidUpgrade("no `Connection: upgrade`"));
    }
    let answered = upstream
        .get(SEC_WEBSOCKET_ACCEPT)
        .map(HeaderValue::as_bytes);
    if answered.is_none() || answered != accept.map(HeaderValue::as_bytes) {
        return Err(ProxyError::InvalidUpgrade(
            "Sec-WebSocket-Accept does not match the key that was sent",
        ));
    }
    let Some(chosen) = upstream.get(SEC_WEBSOCKET_PROTOCOL) else {
        return Ok(None);
    };
    let was_offered = offered
        .iter()
        .flat_map(headers::list_items)
        .any(|p| p == chosen.as_bytes());
    if was_offered {
        Ok(Some(chosen.clone()))
    } else {
        Err(ProxyError::InvalidUpgrade(
            "the chosen subprotocol was not offered by the client",
        ))
    }
}

/// The client's acceptance: for HTTP/1.1 a `101 Switching Protocols` with the proxy's own
/// handshake headers; for HTTP/2 (no `accept`) a `200` (RFC 8441). Either way it carries the
/// upstream's subprotocol choice and end-to-end headers (e.g. `Set-Cookie`), and `extensions`
/// as the client's leg negotiated them (the upstream's own are not relayed).
pub(crate) fn accepted(
    accept: Option<HeaderValue>,
    protocol: Option<HeaderValue>,
    mut upstream: HeaderMap,
    extensions: Option<HeaderValue>,
) -> Response<Body> {
    upstream.remove(SEC_WEBSOCKET_EXTENSIONS);
    let mut res = Response::new(Body::empty());
    let h = res.headers_mut();
    *h = headers::switching_response(upstream);
    if let Some(e) = extensions {
        h.insert(SEC_WEBSOCKET_EXTENSIONS, e);
    }
    match accept {
        Some(accept) => {
            *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = res.headers_mut();
            h.insert(UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(SEC_WEBSOCKET_ACCEPT, accept);
        }
        None => *res.status_mut() = StatusCode::OK,
    }
    if let Some(p) = protocol {
        res.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, p);
    }
    res
}

/// Relays a non-101 answer: its status, end-to-end headers, and its body, read up to `limit`
/// bytes (`cut`: it was longer, and a warning says so).
pub(crate) fn relay(
    upstream: Response<()>,
    body: Bytes,
    cut: bool,
    limit: usize,
) -> Response<Body> {
    let (parts, ()) = upstream.into_parts();
    if cut {
        tracing::warn!(
            status = parts.status.as_u16(),
            limit,
            "upstream's refusal body is longer than max_response_body_size; relaying the first {limit} bytes"
        );
    }
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = parts.status;
    *res.headers_mut() = headers::relayed_response(parts.headers);
    res
}
