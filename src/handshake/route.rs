//! Per-request routing and rewriting: a hook run before the upstream is dialled. See
//! [`RouteRequest`].

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Extensions, HeaderMap, StatusCode, Uri};

use crate::error::{AuthFailure, ProxyError};
use crate::upstream::UpstreamPool;

/// One upgrade request, as the routing hook ([`WsProxyLayer::route`](crate::WsProxyLayer::route))
/// sees it: the client's request (read only), the headers that will go upstream (editable),
/// and where it will go (changeable). The hook runs after the origin check, the client
/// handshake and the session limit, before any dial; returning a [`Refusal`] answers the
/// client with it.
///
/// ```
/// use axum_ws_proxy::{WsProxyLayer, hooks::Refusal, upstream::UpstreamPool};
/// use axum_ws_proxy::http::StatusCode;
///
/// let eu: UpstreamPool = "ws://10.1.0.1:3000".parse()?;
/// let us: UpstreamPool = "ws://10.2.0.1:3000".parse()?;
/// let layer = WsProxyLayer::new("ws://10.0.0.1:3000".parse()?).route(move |req| {
///     // The tenant header picks the pool.
///     match req.headers().get("x-tenant").and_then(|v| v.to_str().ok()) {
///         Some("eu") => req.set_pool(eu.clone()),
///         Some("us") => req.set_pool(us.clone()),
///         Some(_) => return Err(Refusal::new(StatusCode::FORBIDDEN, "unknown tenant")),
///         None => {}
///     }
///     // The upstream does its own auth; it must not see the client's token.
///     req.upstream_headers().remove("authorization");
///     Ok(())
/// });
/// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
/// ```
#[derive(Debug)]
pub struct RouteRequest<'a> {
    pub(crate) parts: &'a Parts,
    pub(crate) client: Option<SocketAddr>,
    pub(crate) upstream_headers: &'a mut HeaderMap,
    pub(crate) pool: Option<UpstreamPool>,
    pub(crate) path: Option<PathAndQuery>,
}

impl RouteRequest<'_> {
    /// The URI the client asked for.
    pub fn uri(&self) -> &Uri {
        &self.parts.uri
    }

    /// The client's request headers, as received.
    pub fn headers(&self) -> &HeaderMap {
        &self.parts.headers
    }

    /// The request's extensions: what outer layers put there (an auth layer's identity, ...).
    pub fn extensions(&self) -> &Extensions {
        &self.parts.extensions
    }

    /// The client's address (with `into_make_service_with_connect_info`).
    pub fn client(&self) -> Option<SocketAddr> {
        self.client
    }

    /// The headers the upstream will get: the client's end-to-end headers plus
    /// `X-Forwarded-*` and `Host` (hop-by-hop ones already removed). Add, change or remove
    /// freely; the WebSocket handshake headers (`Upgrade`, `Connection`, `Sec-WebSocket-Key`,
    /// `Sec-WebSocket-Version`) are the proxy's and should be left alone.
    pub fn upstream_headers(&mut self) -> &mut HeaderMap {
        self.upstream_headers
    }

    /// Sends this session to `pool` instead of the layer's.
    pub fn set_pool(&mut self, pool: UpstreamPool) {
        self.pool = Some(pool);
    }

    /// Replaces the client's path and query for the upstream request (the member's path
    /// prefix is still put in front).
    pub fn set_path_and_query(&mut self, path_and_query: PathAndQuery) {
        self.path = Some(path_and_query);
    }
}

/// The routing hook's refusal: the client gets this status and body, and no upstream is
/// dialled. It is logged and counted with the cause `route_refused`.
///
/// ```
/// use axum_ws_proxy::hooks::Refusal;
/// use axum_ws_proxy::http::StatusCode;
///
/// fn check_ticket(ticket: Option<&str>) -> Result<(), Refusal> {
///     match ticket {
///         Some(t) if t.starts_with("t-") => Ok(()),
///         _ => Err(Refusal::new(StatusCode::UNAUTHORIZED, "a ticket is required")),
///     }
/// }
/// assert!(check_ticket(Some("t-1")).is_ok());
/// assert!(check_ticket(None).is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) body: String,
    /// A 401 for a missing or invalid credential, answered with its challenge.
    pub(crate) auth: Option<AuthFailure>,
}

impl Refusal {
    /// A refusal with `status` and a short text `body`.
    pub fn new(status: StatusCode, body: impl Into<String>) -> Self {
        Self {
            status,
            body: body.into(),
            auth: None,
        }
    }

    /// **401** with `WWW-Authenticate: Bearer` (RFC 6750: `error="invalid_token"` unless
    /// the token is missing) and the failure's description as the body; logged and counted
    /// with the failure's label as cause (`token_expired`, ...).
    pub fn unauthorized(failure: AuthFailure) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            body: failure.description().to_owned(),
            auth: Some(failure),
        }
    }

    /// The error the client is answered with.
    pub(crate) fn into_error(self) -> ProxyError {
        match self.auth {
            Some(failure) => ProxyError::Unauthorized(failure),
            None => ProxyError::Refused(self.status, self.body),
        }
    }
}

pub(crate) type RouteFn = dyn Fn(&mut RouteRequest<'_>) -> Result<(), Refusal> + Send + Sync;

/// The layer's routing hook.
#[derive(Clone)]
pub(crate) struct RouteHook(pub(crate) Arc<RouteFn>);

impl fmt::Debug for RouteHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RouteHook")
    }
}
