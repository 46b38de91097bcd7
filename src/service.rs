use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::BoxError;
use bytes::Bytes;
use http::{Request, Response};
use tower::Service;

use crate::config::Config;
use crate::{detect, proxy, ResponseFuture};

/// The service made by [`WsProxyLayer`](crate::WsProxyLayer): proxies WebSocket upgrades and
/// passes every other request to `S`.
#[derive(Clone, Debug)]
pub struct WsProxy<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> WsProxy<S> {
    pub(crate) fn from_parts(inner: S, config: Arc<Config>) -> Self {
        Self { inner, config }
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

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        if detect::is_websocket_upgrade(&req) {
            ResponseFuture::proxy(Box::pin(proxy::upgrade(self.config.clone(), req)))
        } else {
            ResponseFuture::inner(self.inner.call(req))
        }
    }
}
