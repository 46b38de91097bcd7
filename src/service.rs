use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::BoxError;
use bytes::Bytes;
use http::{Request, Response};
use hyper::upgrade::OnUpgrade;
use tower::Service;

use crate::config::Config;
use crate::future::ResponseFuture;
use crate::handshake::{detect, upgrade};
use crate::transport::ClientLeg;

/// The service made by [`WsProxyLayer`](crate::WsProxyLayer): proxies WebSocket upgrades and
/// passes every other request to `S`.
///
/// ```
/// use axum::body::Body;
/// use axum_ws_proxy::WsProxyLayer;
/// use http::{header, Request, Response};
/// use tower::{Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let inner = tower::service_fn(|_: Request<Body>| async {
///     Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
/// });
/// let proxy = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?).layer(inner);
/// // An upgrade without Sec-WebSocket-Key is answered by the proxy, before any dial.
/// let upgrade = Request::get("/")
///     .header(header::CONNECTION, "upgrade")
///     .header(header::UPGRADE, "websocket")
///     .header(header::SEC_WEBSOCKET_VERSION, "13")
///     .body(Body::empty())?;
/// let res = proxy.oneshot(upgrade).await?;
/// assert_eq!(res.status(), 400);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct WsProxy<S> {
    inner: S,
    config: Source,
}

/// The configuration every clone of a [`ReloadableLayer`](crate::ReloadableLayer) reads for
/// each new upgrade, which its [`ReloadHandle`](crate::ReloadHandle) replaces.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) current: RwLock<Arc<Config>>,
    pub(crate) generation: AtomicU64,
}

impl Live {
    pub(crate) fn get(&self) -> Arc<Config> {
        // Nothing panics while this lock is held; take it regardless.
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Where a service finds its configuration.
#[derive(Clone, Debug)]
pub(crate) enum Source {
    Fixed(Arc<Config>),
    /// Read for each upgrade: a [`ReloadHandle`](crate::ReloadHandle) may replace it.
    Live(Arc<Live>),
}

impl Source {
    /// Answers one upgrade with the configuration of the moment.
    fn upgrade<B: Send + 'static>(
        &self,
        req: Request<B>,
        kind: detect::Upgrade,
        leg: Option<ClientLeg>,
        peer: Option<std::net::SocketAddr>,
    ) -> impl std::future::Future<Output = Response<Body>> + Send + 'static {
        let config = match self {
            Source::Fixed(c) => c.clone(),
            Source::Live(live) => live.get(),
        };
        async move {
            let Config {
                handshake,
                session,
                sessions,
            } = &*config;
            let mut req = req;
            // Hooks read the request's extensions, where the client's address is as it is
            // through the app; without hooks the handshake takes it as given (an insert into
            // empty extensions costs three allocations).
            let hooked =
                handshake.route.is_some() || handshake.identify.is_some() || session.hooks.any();
            if let Some(peer) = peer.filter(|_| hooked) {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
            }
            upgrade::upgrade(handshake, session, sessions, req, (kind, leg), peer).await
        }
    }
}

/// The server's own upgrade entry calls the handshake as the service does.
#[cfg(feature = "serve")]
impl crate::serve::direct::Entry for Source {
    fn upgrade(
        &self,
        req: Request<()>,
        kind: detect::Upgrade,
        leg: ClientLeg,
        peer: std::net::SocketAddr,
    ) -> crate::serve::direct::Answering {
        Box::pin(Source::upgrade(self, req, kind, Some(leg), Some(peer)))
    }
}

#[cfg(feature = "serve")]
impl From<Source> for crate::serve::DirectUpgrades {
    fn from(source: Source) -> Self {
        crate::serve::DirectUpgrades(std::sync::Arc::new(source))
    }
}

impl<S> WsProxy<S> {
    pub(crate) fn from_parts(inner: S, config: Arc<Config>) -> Self {
        Self {
            inner,
            config: Source::Fixed(config),
        }
    }

    pub(crate) fn reloadable(inner: S, live: Arc<Live>) -> Self {
        Self {
            inner,
            config: Source::Live(live),
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for WsProxy<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let Some(kind) = detect::upgrade(&req) else {
            return ResponseFuture::inner(self.inner.call(req));
        };
        let leg = req
            .extensions_mut()
            .remove::<OnUpgrade>()
            .map(ClientLeg::Hyper);
        ResponseFuture::proxy(Box::pin(self.config.upgrade(req, kind, leg, None)))
    }
}
