//! The identity phase of an upgrade: whom the session belongs to, found before the session
//! limit, the routing hook and any dial. See [`Identify`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::request::Parts;

use crate::handshake::route::Refusal;
use crate::identity::Identity;

/// What an identity hook returns: the session's identity (`None`: the session has none, and
/// proceeds), or a refusal the client gets before anything is dialled.
pub type IdentityFuture = Pin<Box<dyn Future<Output = Result<Option<Identity>, Refusal>> + Send>>;

/// Finds whom an upgrade belongs to ([`WsProxyLayer::identify`](crate::WsProxyLayer::identify)).
///
/// It runs first among the phases that decide whether a session opens: after the request
/// checks (path, `Host`, origin, the client handshake), before the session limit, the upgrade
/// rate, the routing hook and the dial. It gets the request's head, mutable: it may read what
/// the application's auth layer put in the extensions, and remove a credential from the
/// headers or the query before the request goes upstream. The future may wait (a call to an
/// auth service); a refusal ([`Refusal::unauthorized`] for a **401** with its challenge)
/// answers the client.
///
/// Any closure `Fn(&mut http::request::Parts) -> impl Future<Output = Result<Option<Identity>,
/// Refusal>>` is one:
///
/// ```
/// use axum_ws_proxy::{Identity, WsProxyLayer, AuthFailure, hooks::Refusal};
///
/// /// What the application's own auth layer inserts.
/// #[derive(Clone)]
/// struct User { id: String, org: String }
///
/// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?).identify(|parts: &mut axum_ws_proxy::http::request::Parts| {
///     let user = parts.extensions.get::<User>().cloned();
///     async move {
///         match user {
///             Some(u) => Ok(Some(Identity::new(u.id).tenant(u.org))),
///             None => Err(Refusal::unauthorized(AuthFailure::Missing)),
///         }
///     }
/// });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Identify: Send + Sync + 'static {
    /// The identity of the upgrade whose head is `parts`.
    fn identify(&self, parts: &mut Parts) -> IdentityFuture;

    /// Query parameters that carry credentials: the layer shows them as `REDACTED` in every
    /// log line, as [`WsProxyLayer::redact_query`](crate::WsProxyLayer::redact_query) does.
    fn secret_query_params(&self) -> Vec<String> {
        Vec::new()
    }
}

impl<F, Fut> Identify for F
where
    F: Fn(&mut Parts) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<Identity>, Refusal>> + Send + 'static,
{
    fn identify(&self, parts: &mut Parts) -> IdentityFuture {
        Box::pin(self(parts))
    }
}

/// The layer's identity hook, and the query parameters it said carry credentials.
#[derive(Clone)]
pub(crate) struct IdentifyHook(pub(crate) Arc<dyn Identify>, pub(crate) Arc<[String]>);

impl fmt::Debug for IdentifyHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdentifyHook")
    }
}
